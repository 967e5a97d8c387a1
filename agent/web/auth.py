"""Who may use the installer page: the password hash, sessions, and the login rate limit.

The box keeps only an scrypt hash of the page's password (``mclz-agent web passwd`` writes it
into the credential store), compared in constant time. A login opens a session: a random
32-byte token in an HttpOnly cookie, with its own CSRF token that every change must carry;
it ends after ``web.session_timeout`` unused, at logout, or when the agent restarts
(sessions live in memory only). Failed logins are counted per client address in a sliding
window; past the limit that address is refused until its oldest failure leaves the window.

Standard library only (hashlib, hmac, secrets), so ``web passwd`` loads no web stack.
Passwords and tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.errors import PasswordHashError

SCHEME = "scrypt"
#: scrypt cost: 2**14 x 8 x 1 takes about 50 ms and 16 MiB per check on a box core, which
#: makes guessing slow (and the login limit makes it slower still) without stalling the page.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
#: Memory a stored hash's cost may ask for: 64 MiB (N = 2**16 at r = 8). More would starve
#: the detector on a 1 GiB box for every login.
_MAX_MEMORY = 64 * 2**20
TOKEN_BYTES = 32
LOGIN_WINDOW = 15 * 60.0  # seconds in which ``web.login_attempts`` failures lock an address out
MAX_SESSIONS = 64  # the page has an installer or two; the oldest session goes first
MAX_TRACKED_ADDRESSES = 4096  # a flood of addresses cannot grow the limiter without bound
MIN_PASSWORD_LENGTH = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """``scrypt$16384$8$1$<base64 salt>$<base64 hash>`` of ``password`` with a fresh salt.

    Raises:
        ValueError: the password is empty.
    """
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=HASH_BYTES,
        maxmem=2 * _MAX_MEMORY,
    )
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """The cost parameters, salt and hash of a stored value.

    Raises:
        PasswordHashError: it is not ``scrypt$N$r$p$salt$hash``; the message says which part.
    """
    parts = stored.strip().split("$")
    if len(parts) != 6:
        raise PasswordHashError(
            f"the stored password hash has {len(parts)} '$'-separated part(s), not 6 "
            "(scrypt$N$r$p$salt$hash): write it with mclz-agent web passwd"
        )
    scheme, n_text, r_text, p_text, salt_text, hash_text = parts
    if scheme != SCHEME:
        raise PasswordHashError(f"the stored password hash is not scrypt (it says {scheme!r})")
    try:
        n, r, p = int(n_text), int(r_text), int(p_text)
    except ValueError:
        raise PasswordHashError(
            "the stored password hash's cost parameters N, r, p are not whole numbers"
        ) from None
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or 128 * n * r > _MAX_MEMORY:
        raise PasswordHashError(
            f"the stored password hash's cost N={n}, r={r}, p={p} is out of range "
            "(N a power of two, at most 64 MiB of memory)"
        )
    try:
        salt = base64.b64decode(salt_text, validate=True)
        digest = base64.b64decode(hash_text, validate=True)
    except (binascii.Error, ValueError):
        raise PasswordHashError("the stored password hash's salt or hash is not base64") from None
    if len(salt) < 8 or len(digest) < 16:
        raise PasswordHashError(
            f"the stored password hash's salt ({len(salt)} bytes) or hash ({len(digest)} "
            "bytes) is too short"
        )
    return n, r, p, salt, digest


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches ``stored`` (a :func:`hash_password` value), in constant time.

    Raises:
        PasswordHashError: ``stored`` is malformed; the message names what is wrong (never
            the value).
    """
    n, r, p, salt, digest = _parse(stored)
    candidate = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(digest),
        maxmem=2 * _MAX_MEMORY,
    )
    return hmac.compare_digest(candidate, digest)


def check_password_hash(stored: str) -> None:
    """Raise when ``stored`` is not a usable hash (at start, so the installer hears of it early).

    Raises:
        PasswordHashError: it is malformed.
    """
    _parse(stored)


def new_token() -> str:
    """A random URL-safe token of :data:`TOKEN_BYTES` bytes."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a token from a request with the one kept."""
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(slots=True)
class Session:
    """One logged-in browser: its cookie token, its CSRF token, and when it was last used."""

    token: str
    csrf: str
    client: str
    created: float
    last_seen: float


class Sessions:
    """The open sessions, in memory: a restart logs everyone out (nothing to steal on disk).

    Thread-safe. A session unused for ``timeout`` seconds is gone; at most
    :data:`MAX_SESSIONS` are kept, the least recently used going first.
    """

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Sessions end after ``timeout`` seconds unused; ``clock`` is for tests."""
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self, client: str) -> Session:
        """Open a session for ``client`` (its address, for the record)."""
        now = self._clock()
        session = Session(new_token(), new_token(), client, now, now)
        with self._lock:
            self._expire(now)
            self._sessions[session.token] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle time restarts), or None."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            self._expire(now)
            session = self._sessions.get(token)
            if session is None:
                return None
            session.last_seen = now
            self._sessions.move_to_end(token)
            return session

    def end(self, token: str | None) -> bool:
        """Log out: forget ``token``'s session; whether there was one."""
        if not token:
            return False
        with self._lock:
            return self._sessions.pop(token, None) is not None

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        # Least recently used first: stop at the first one still fresh.
        while self._sessions:
            token, session = next(iter(self._sessions.items()))
            if now - session.last_seen < self.timeout:
                break
            del self._sessions[token]


class LoginLimiter:
    """Failed logins per client address in a sliding window of :data:`LOGIN_WINDOW` seconds.

    An address with ``attempts`` failures in the window is locked out until the oldest of
    them leaves it; a successful login clears its count. Thread-safe; at most
    :data:`MAX_TRACKED_ADDRESSES` addresses are tracked (the longest quiet go first).
    """

    def __init__(
        self,
        attempts: int,
        window: float = LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Lock an address out after ``attempts`` failures within ``window`` seconds."""
        self.attempts = attempts
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may try now."""
        now = self._clock()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.attempts:
                return None
            return max(1.0, times[0] + self.window - now)

    def failure(self, client: str) -> None:
        """Count a failed login of ``client``."""
        now = self._clock()
        with self._lock:
            times = self._recent(client, now)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)

    def success(self, client: str) -> None:
        """Forget ``client``'s failures (it knew the password)."""
        with self._lock:
            self._failures.pop(client, None)

    def _recent(self, client: str, now: float) -> collections.deque[float]:
        times = self._failures.get(client, collections.deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            self._failures.pop(client, None)
        return times
