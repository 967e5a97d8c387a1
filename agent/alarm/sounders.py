"""Where an alarm's sound goes: the :class:`Sounder` kinds and the one the config asks for.

The box's own audio output is driven by ``aplay`` (alsa-utils) in a child process rather
than a Python audio library: no extra compiled dependency (simpleaudio is unmaintained,
sounddevice/pyaudio need PortAudio), a wedged ALSA device can be killed at the timeout
without taking a thread of ours with it, and ``-D`` names any ALSA device or plug.
"""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from agent.config import SounderConfig
from agent.errors import SounderError
from agent.redact import MASK, redact_url


class Sounder:
    """Plays a WAV file somewhere; :class:`NullSounder` (kind none) plays nothing."""

    kind = "none"

    def play(self, wav: bytes, label: str) -> None:
        """Play ``wav`` and return when it has been played (or handed over).

        ``label`` names the alarm (``camera-type``) for file names and messages.

        Raises:
            SounderError: it could not be played.
        """

    def cancel(self) -> None:
        """Abandon a play in progress (at shutdown); a no-op where nothing can be abandoned."""

    def describe(self) -> str:
        """Where the sound goes, without secrets."""
        return self.kind


NullSounder = Sounder


class _ProcessSounder(Sounder):
    """A sounder that runs a program, killed when it takes longer than the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _run(self, argv: list[str], stdin: bytes | None) -> None:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise SounderError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        with self._lock:
            self._proc = proc
        try:
            _, stderr = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise SounderError(f"{argv[0]} took longer than {self.timeout:g} s") from None
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise SounderError(
                f"{argv[0]} exited with {proc.returncode}"
                + (f": {' | '.join(tail)}" if tail else "")
            )

    def cancel(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


class AlsaSounder(_ProcessSounder):
    """The box's own audio output: ``aplay`` reads the WAV from its standard input."""

    kind = "alsa"

    def __init__(self, device: str, timeout: float) -> None:
        super().__init__(timeout)
        self.device = device

    def play(self, wav: bytes, label: str) -> None:
        argv = ["aplay", "-q", *(["-D", self.device] if self.device else []), "-"]
        self._run(argv, wav)

    def describe(self) -> str:
        return f"alsa:{self.device or 'default'}"


class CommandSounder(_ProcessSounder):
    """Any program that plays a file: ``{file}`` in its arguments is the WAV's path."""

    kind = "command"

    def __init__(self, command: tuple[str, ...], timeout: float) -> None:
        super().__init__(timeout)
        self.command = command

    def play(self, wav: bytes, label: str) -> None:
        with tempfile.TemporaryDirectory(prefix="mclz-alarm-") as tmp:
            path = Path(tmp) / f"{_safe(label)}.wav"
            path.write_bytes(wav)
            argv = [part.replace("{file}", str(path)) for part in self.command]
            if not any("{file}" in part for part in self.command):
                argv.append(str(path))
            self._run(argv, None)

    def describe(self) -> str:
        return f"command:{self.command[0]}"


def display_url(url: str) -> str:
    """``url`` fit for logs: password and query string (tokens) masked."""
    parts = urlsplit(redact_url(url))
    return urlunsplit(parts._replace(query=MASK if parts.query else ""))


class HttpSounder(Sounder):
    """A network speaker or a camera's audio output that takes a WAV upload over HTTP."""

    kind = "http"

    def __init__(
        self,
        url: str,
        method: str,
        headers: dict[str, str],
        *,
        timeout: float,
        username: str = "",
        password: str | None = None,
    ) -> None:
        self.url = url
        self.method = method
        self.headers = {"Content-Type": "audio/wav", **headers}
        if username or password:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.timeout = timeout

    def play(self, wav: bytes, label: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in the config
            self.url, data=wav, method=self.method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            raise SounderError(f"{display_url(self.url)} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise SounderError(f"{display_url(self.url)} unreachable: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise SounderError(f"{display_url(self.url)} failed: {exc}") from None

    def describe(self) -> str:
        return f"http:{display_url(self.url)}"


class FileSounder(Sounder):
    """Writes each sound to a WAV file in a directory: what would have been played."""

    kind = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = 0

    def play(self, wav: bytes, label: str) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"{stamp}-{self._seq:04d}-{_safe(label)}.wav"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(wav)
        except OSError as exc:
            raise SounderError(f"cannot write {path}: {exc.strerror}") from exc

    def describe(self) -> str:
        return f"file:{self.directory}"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:100] or "alarm"


def make_sounder(config: SounderConfig) -> Sounder:
    """The sounder the config asks for.

    Raises:
        SecretError: the HTTP password cannot be resolved.
    """
    if config.kind == "alsa":
        return AlsaSounder(config.device, config.timeout)
    if config.kind == "command":
        return CommandSounder(config.command, config.timeout)
    if config.kind == "http":
        password = config.password.resolve("alarm.sounder.password") if config.password else None
        return HttpSounder(
            config.url,
            config.method,
            config.headers,
            timeout=config.timeout,
            username=config.username,
            password=password,
        )
    if config.kind == "file" and config.directory is not None:
        return FileSounder(config.directory)
    return NullSounder()
