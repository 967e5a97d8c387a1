"""The SQLite file under the store: its path, opening it, its migrations, and recovery.

Write first, send second: a message exists once its transaction has committed, and it
leaves the outbox only after the broker acknowledged it (PUBACK). The database runs in
WAL mode with ``synchronous=FULL``: a commit survives kill -9 and power loss, and an
alert box that raises a handful of alerts an hour can afford an fsync per commit.

Schema changes are named, transactional migrations recorded in the ``migrations`` table
(the way sqlite-utils' own projects do it): a migration either applies whole or not at all.
A database file that SQLite cannot read is moved aside and a fresh one started, so the
agent keeps working; the event is recorded and reported in the next heartbeat. Only
corruption moves a file: a lock held by another process (``database is locked``) is
:class:`~agent.errors.StoreBusyError`, never a reason to move a live database aside.

Two ways in: :class:`WritableDatabase` (the agent and the commands that write: creates,
migrates, recovers) and :class:`ReadOnlyDatabase` (``status``, ``check`` and the commands
that only read: a ``mode=ro`` connection that never creates, migrates or moves the file,
never takes a write lock, and waits a bounded time for a lock before it gives up).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import sqlite_utils

from agent.errors import StoreBusyError, StoreError

logger = logging.getLogger(__name__)

DB_FILENAME = "agent.db"

#: Seconds a read-only connection waits for another process's lock before
#: :class:`~agent.errors.StoreBusyError`. In WAL mode readers wait only on what blocks
#: readers (WAL recovery after a crash, an exclusive-mode connection), which normally
#: lasts milliseconds; 5 s is the wait ``status`` had before it used this opener.
READ_BUSY_TIMEOUT = 5.0
#: Seconds a read-write connection waits for the write lock (the agent commits in
#: milliseconds; a migration or a CLI write may wait for one of its commits).
WRITE_BUSY_TIMEOUT = 10.0

# SQLite's primary result codes (stable across versions; ``sqlite3`` names them only
# from Python 3.11 on).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


_D = TypeVar("_D", bound="Database")


def db_path(state_dir: Path) -> Path:
    """The agent's database file in ``state_dir`` (the one place its name is spelt)."""
    return state_dir / DB_FILENAME


Migration = Callable[[sqlite_utils.Database], None]


def _m001_outbox(db: sqlite_utils.Database) -> None:
    # Raw SQL here because sqlite-utils cannot declare AUTOINCREMENT, and it matters: a seq
    # is never reused, so the send order is total over the whole life of the file.
    db.execute(
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL,
            retain INTEGER NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0
        )"""
    )
    db.table("outbox").create_index(["next_attempt_at", "seq"], index_name="outbox_due")
    db.table("outbox").create_index(["kind"], index_name="outbox_kind")


def _m002_alerts(db: sqlite_utils.Database) -> None:
    db.table("alerts").create(
        {
            "id": str,
            "camera": str,
            "type": str,
            "severity": str,
            "started_at": float,
            "raised_at": float,
            "confidence": float,
            "detections": str,
            "evidence_path": str,
            "message_id": str,
        },
        pk="id",
        not_null=["camera", "type", "severity", "started_at", "raised_at", "confidence"],
    )
    db.table("alerts").create_index(["raised_at"], index_name="alerts_raised_at")


def _m003_counters(db: sqlite_utils.Database) -> None:
    db.table("counters").create({"name": str, "value": int}, pk="name", not_null=["value"])


def _m004_camera_outages(db: sqlite_utils.Database) -> None:
    db.table("camera_outages").create(
        {
            "id": int,
            "camera": str,
            "since": float,
            "until": float,
            "duration_s": float,
            "reason": str,
            "closed_by": str,
        },
        pk="id",
        not_null=["camera", "since", "reason"],
    )
    db.table("camera_outages").create_index(["camera", "since"], index_name="outages_camera")


def _m005_camera_health(db: sqlite_utils.Database) -> None:
    db.table("camera_health").create(
        {"camera": str, "state": str, "since": float, "updated_at": float, "health": str},
        pk="camera",
        not_null=["state", "since", "updated_at", "health"],
    )


def _m006_commands(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE outbox ADD COLUMN correlation BLOB")  # MQTT 5 correlation data
    db.table("commands").create(
        {
            "seq": int,
            "received_at": float,
            "request_id": str,
            "command": str,
            "payload": bytes,
            "ok": int,
        },
        pk="seq",
        not_null=["received_at", "payload", "ok"],
    )


def _m007_alert_payloads(db: sqlite_utils.Database) -> None:
    # The alert message as sent (its image is a separate message, the JPEG stays on disk),
    # so the platform can ask for alerts again ("resend") after the outbox row is gone.
    db.execute("ALTER TABLE alerts ADD COLUMN payload TEXT")


def _m008_settings(db: sqlite_utils.Database) -> None:
    # Run-time changes from the platform that must outlive a restart: rule overrides
    # ("set"), the alarm mute ("mute"). JSON values; ``source`` says who set them.
    db.table("settings").create(
        {"key": str, "value": str, "updated_at": float, "source": str},
        pk="key",
        not_null=["value", "updated_at", "source"],
    )


def _m009_alert_lifecycle(db: sqlite_utils.Database) -> None:
    # Alerts have a start and an end (issue #6): the zone they are in, when the violation
    # was last seen, why the alert ended, and the end message as sent (for resend).
    for column in ("zone TEXT", "ended_at REAL", "end_reason TEXT", "end_payload TEXT"):
        db.execute(f"ALTER TABLE alerts ADD COLUMN {column}")


def _m010_food_refs(db: sqlite_utils.Database) -> None:
    # What each food zone looks like covered, uncovered, empty (issue #7): one row per
    # reference image, its features beside it so the agent need not reread the image.
    # AUTOINCREMENT: an id is never reused, so (count, max id) changes on every change.
    db.execute(
        """CREATE TABLE food_refs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            camera TEXT NOT NULL,
            zone TEXT NOT NULL,
            state TEXT NOT NULL,
            captured_at REAL NOT NULL,
            path TEXT NOT NULL,
            features BLOB NOT NULL,
            feature_kind TEXT NOT NULL
        )"""
    )
    db.table("food_refs").create_index(["camera", "zone", "state"], index_name="food_refs_zone")


def _m011_alarms(db: sqlite_utils.Database) -> None:
    # The on-site alarm's decisions (issue #8): played, suppressed (and why) or failed.
    db.execute(
        """CREATE TABLE alarms (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            alert_id TEXT NOT NULL,
            camera TEXT NOT NULL,
            type TEXT NOT NULL,
            decision TEXT NOT NULL,
            reason TEXT NOT NULL,
            sounder TEXT NOT NULL,
            duration_ms INTEGER
        )"""
    )
    db.table("alarms").create_index(["ts"], index_name="alarms_ts")


def _m012_supersede(db: sqlite_utils.Database) -> None:
    # A message that only repeats the newest state (a camera status refresh) replaces an
    # unsent one with the same key: after an hour offline a box sends 16 statuses, not 960.
    db.execute("ALTER TABLE outbox ADD COLUMN supersede_key TEXT")
    db.execute(
        "CREATE INDEX outbox_supersede ON outbox (supersede_key) WHERE supersede_key IS NOT NULL"
    )


def _m013_command_source(db: sqlite_utils.Database) -> None:
    # Who gave a command (issue #19): the platform over MQTT, or the installer page as
    # "web:<client address>". Rows from before say "platform": nothing else could write them.
    db.execute("ALTER TABLE commands ADD COLUMN source TEXT NOT NULL DEFAULT 'platform'")


MIGRATIONS: tuple[tuple[str, Migration], ...] = (
    ("001_outbox", _m001_outbox),
    ("002_alerts", _m002_alerts),
    ("003_counters", _m003_counters),
    ("004_camera_outages", _m004_camera_outages),
    ("005_camera_health", _m005_camera_health),
    ("006_commands", _m006_commands),
    ("007_alert_payloads", _m007_alert_payloads),
    ("008_settings", _m008_settings),
    ("009_alert_lifecycle", _m009_alert_lifecycle),
    ("010_food_refs", _m010_food_refs),
    ("011_alarms", _m011_alarms),
    ("012_supersede", _m012_supersede),
    ("013_command_source", _m013_command_source),
)


class _QuickCheckFailed(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found the file damaged (SQLite itself opened it fine)."""


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds a lock (not that the file is bad)."""
    code = _primary_code(exc)
    if code is not None:
        return code in {_SQLITE_BUSY, _SQLITE_LOCKED}
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


def is_corrupt(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` says the file itself is damaged or not a database at all."""
    if isinstance(exc, _QuickCheckFailed):
        return True
    code = _primary_code(exc)
    if code is not None:
        return code in {_SQLITE_CORRUPT, _SQLITE_NOTADB}
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _busy_error(path: Path, exc: sqlite3.Error, waited: float) -> StoreBusyError:
    return StoreBusyError(
        f"{path}: database busy: another process held a lock on it for more than "
        f"{waited:g} s ({exc}); try again"
    )


class Database:
    """One SQLite connection, shared by the threads of a store under one lock."""

    path: Path
    _conn: sqlite3.Connection
    _lock: threading.Lock

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reading, while holding the lock."""
        with self._lock:
            yield self._conn

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()

    def integrity_check(self) -> list[str]:
        """SQLite's full integrity check: ``["ok"]``, or the problems it lists."""
        with self._read() as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        return [str(r[0]) for r in rows]

    def integrity_ok(self) -> bool:
        """Whether SQLite's full integrity check passes."""
        return self.integrity_check() == ["ok"]


class WritableDatabase(Database):
    """The database opened for writing: created, migrated, and recovered when corrupt."""

    def __init__(self, path: Path, *, ttl: float = 7 * 86400.0) -> None:
        """Open (creating, migrating or recovering) the database at ``path``.

        Raises:
            StoreBusyError: another process held a lock past the wait (nothing is moved).
            StoreError: the directory cannot be created or the file cannot be opened.
        """
        self.path = path
        self.ttl = ttl
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{path.parent}: cannot create state directory: {exc.strerror}"
            ) from exc
        self.recovered_from: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if is_busy(exc):
                raise _busy_error(path, exc, WRITE_BUSY_TIMEOUT) from exc
            if not is_corrupt(exc):
                raise StoreError(f"{path}: cannot open the database: {exc}") from exc
            self.recovered_from = self._move_aside(exc)
            try:
                self._conn = self._open()
            except sqlite3.Error as exc2:
                raise StoreError(f"{path}: cannot open a fresh database: {exc2}") from exc2

    # ------------------------------------------------------------------ opening

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=WRITE_BUSY_TIMEOUT
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced, so an acknowledged write survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise _QuickCheckFailed(f"quick_check: {result[0] if result else 'no answer'}")
            self._migrate(conn)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _move_aside(self, exc: sqlite3.DatabaseError) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        logger.error("database %s is unreadable (%s): moving it to %s", self.path, exc, target)
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(target.with_name(target.name + suffix))
        except OSError as move_exc:
            raise StoreError(
                f"{self.path}: database is corrupt and cannot be moved aside: {move_exc.strerror}"
            ) from move_exc
        return target

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations"
            " (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
        for name, migration in MIGRATIONS:
            if name in done:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                migration(db)
                conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time())
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            logger.info("database migration %s applied", name)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if is_busy(exc):
                    raise _busy_error(self.path, exc, WRITE_BUSY_TIMEOUT) from exc
                raise StoreError(f"{self.path}: cannot begin a transaction: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise StoreError(f"{self.path}: write failed: {exc}") from exc
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("WAL checkpoint of %s failed: %s", self.path, exc)
            self._conn.close()


class ReadOnlyDatabase(Database):
    """The database opened read-only: never created, migrated, moved or write-locked.

    The connection is SQLite's ``mode=ro``: it cannot write, so it takes no write lock and
    cannot checkpoint (the agent's own connection does that). A database whose schema is
    older than this code is read as it is; :attr:`missing_migrations` says what it lacks.
    """

    def __init__(self, path: Path, *, busy_timeout: float = READ_BUSY_TIMEOUT) -> None:
        """Open the existing database at ``path`` for reading.

        Raises:
            StoreBusyError: another process held a lock that blocks readers past
                ``busy_timeout`` seconds.
            StoreError: there is no file at ``path`` (none is created), or SQLite cannot
                read it.
        """
        self.path = path
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        #: Migrations this code knows that the file has not had (the agent applies them
        #: when it next starts; a read-only opener never does).
        self.missing_migrations: tuple[str, ...] = ()
        #: The tables the file has (a file that never saw a migration has none).
        self.tables: frozenset[str] = frozenset()
        if not path.is_file():
            raise StoreError(f"{path}: no database yet (the agent has not run with this config)")
        try:
            self._conn = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=busy_timeout,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the database read-only: {exc}") from exc
        try:
            with self._read() as conn:
                self.tables = frozenset(
                    str(r[0])
                    for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                )
                applied = (
                    {str(r[0]) for r in conn.execute("SELECT name FROM migrations")}
                    if "migrations" in self.tables
                    else set()
                )
        except StoreError:
            self._conn.close()
            raise
        self.missing_migrations = tuple(name for name, _ in MIGRATIONS if name not in applied)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection while holding the lock; SQLite errors become store errors.

        Raises:
            StoreBusyError: a lock blocked the read past the busy timeout.
            StoreError: SQLite cannot read the file (damaged, or a schema older than the
                query: the message names the missing migrations).
        """
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                if is_busy(exc):
                    raise _busy_error(self.path, exc, self.busy_timeout) from exc
                hint = ""
                if self.missing_migrations:
                    hint = (
                        f" (its schema is older than this mclz-agent: it lacks "
                        f"{', '.join(self.missing_migrations)}; the agent upgrades it when it "
                        "next starts)"
                    )
                raise StoreError(f"{self.path}: cannot read the database: {exc}{hint}") from exc
