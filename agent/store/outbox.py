"""The local SQLite store: every alert and every outgoing message is committed here first.

Write first, send second: a message exists once its transaction has committed, and it
leaves the outbox only after the broker acknowledged it (PUBACK). The database runs in
WAL mode with ``synchronous=FULL``: a commit survives kill -9 and power loss, and an
alert box that raises a handful of alerts an hour can afford an fsync per commit.

Schema changes are named, transactional migrations recorded in the ``migrations`` table
(the way sqlite-utils' own projects do it): a migration either applies whole or not at all.
A database file that SQLite cannot read is moved aside and a fresh one started, so the
agent keeps working; the event is recorded and reported in the next heartbeat.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from agent.errors import OutboxError
from agent.records import AlarmRecord, AlertRecord, FoodRef, Outage, OutMessage

logger = logging.getLogger(__name__)

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
)


class Outbox:
    """Thread-safe store for alerts and outgoing messages, backed by one SQLite file."""

    def __init__(self, path: Path, *, ttl: float = 7 * 86400.0) -> None:
        """Open (creating, migrating or recovering) the database at ``path``.

        Raises:
            OutboxError: the directory cannot be created or the file cannot be opened.
        """
        self.path = path
        self.ttl = ttl
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(
                f"{path.parent}: cannot create state directory: {exc.strerror}"
            ) from exc
        self.recovered_from: Path | None = None
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self.recovered_from = self._move_aside(exc)
            try:
                self._conn = self._open()
            except sqlite3.Error as exc2:
                raise OutboxError(f"{path}: cannot open a fresh database: {exc2}") from exc2
            self.bump("db_recovered")
        self._db = sqlite_utils.Database(self._conn)

    # ------------------------------------------------------------------ opening

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced, so an acknowledged write survives power loss.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
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
            raise OutboxError(
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
                raise OutboxError(f"{self.path}: cannot begin a transaction: {exc}") from exc
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise OutboxError(f"{self.path}: write failed: {exc}") from exc
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        with self._lock:
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                logger.warning("WAL checkpoint of %s failed: %s", self.path, exc)
            self._conn.close()

    # ------------------------------------------------------------------ writing

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        topic: str,
        payload: bytes,
        *,
        kind: str,
        qos: int,
        retain: bool,
        msg_id: str,
        now: float,
        ttl: float,
        correlation: bytes | None = None,
        supersede_key: str | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO outbox (id, topic, payload, qos, retain, kind, created_at, expires_at,"
            " correlation, supersede_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                msg_id,
                topic,
                payload,
                qos,
                int(retain),
                kind,
                now,
                now + ttl,
                correlation,
                supersede_key,
            ),
        )

    def enqueue(
        self,
        topic: str,
        payload: bytes,
        *,
        kind: str,
        qos: int = 1,
        retain: bool = False,
        msg_id: str | None = None,
        ttl: float | None = None,
        correlation: bytes | None = None,
        supersede_key: str | None = None,
    ) -> str:
        """Commit one outgoing message and return its id.

        With ``supersede_key``, earlier messages of the same key still in the outbox are
        deleted in the same transaction: for messages that only repeat the newest state.
        Messages without a key are never superseded.

        Raises:
            OutboxError: the write failed (disk full, I/O error).
        """
        msg_id = msg_id or uuid.uuid4().hex
        now = time.time()
        with self._transaction() as conn:
            if supersede_key is not None:
                gone = conn.execute(
                    "DELETE FROM outbox WHERE supersede_key = ?", (supersede_key,)
                ).rowcount
                if gone:
                    self._bump_in(conn, "superseded", gone)
            self._insert(
                conn,
                topic,
                payload,
                kind=kind,
                qos=qos,
                retain=retain,
                msg_id=msg_id,
                now=now,
                ttl=self.ttl if ttl is None else ttl,
                correlation=correlation,
                supersede_key=supersede_key,
            )
        return msg_id

    def record_alert(
        self,
        alert: AlertRecord,
        topic: str,
        payload: bytes,
        evidence: tuple[str, bytes] | None = None,
    ) -> None:
        """Commit an alert, its message and its evidence message (topic, JPEG) in one transaction.

        Raises:
            OutboxError: the write failed; neither the alert nor its message is stored.
        """
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO alerts (id, camera, type, severity, started_at, raised_at,"
                " confidence, detections, evidence_path, message_id, payload, zone)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.id,
                    alert.camera,
                    alert.type,
                    alert.severity,
                    alert.started_at,
                    alert.raised_at,
                    alert.confidence,
                    json.dumps(alert.detections),
                    alert.evidence_path,
                    alert.id,
                    payload.decode("utf-8", errors="replace"),
                    alert.zone,
                ),
            )
            self._insert_alert(
                conn,
                topic,
                payload,
                msg_id=alert.id,
                evidence=evidence,
                evidence_id=f"{alert.id}:evidence",
                now=now,
            )

    def record_alert_end(
        self,
        alert_id: str,
        *,
        ended_at: float,
        reason: str,
        confidence: float,
        topic: str,
        payload: bytes,
        evidence: tuple[str, bytes] | None = None,
        evidence_path: str | None = None,
    ) -> None:
        """Commit an alert's end, its message (id ``<alert id>:end``) and a better image.

        Raises:
            OutboxError: the write failed; nothing of it is stored.
        """
        now = time.time()
        with self._transaction() as conn:
            conn.execute(
                "UPDATE alerts SET ended_at = ?, end_reason = ?, end_payload = ?,"
                " confidence = MAX(confidence, ?),"
                " evidence_path = COALESCE(?, evidence_path) WHERE id = ?",
                (
                    ended_at,
                    reason,
                    payload.decode("utf-8", errors="replace"),
                    confidence,
                    evidence_path,
                    alert_id,
                ),
            )
            self._insert_alert(
                conn,
                topic,
                payload,
                msg_id=f"{alert_id}:end",
                evidence=evidence,
                evidence_id=f"{alert_id}:evidence:end",
                now=now,
            )

    def _insert_alert(
        self,
        conn: sqlite3.Connection,
        topic: str,
        payload: bytes,
        *,
        msg_id: str,
        evidence: tuple[str, bytes] | None,
        evidence_id: str,
        now: float,
    ) -> None:
        """Queue an alert message and, after it, its image (inside the caller's transaction)."""
        self._insert(
            conn,
            topic,
            payload,
            kind="alert",
            qos=1,
            retain=False,
            msg_id=msg_id,
            now=now,
            ttl=self.ttl,
        )
        if evidence is not None:
            self._insert(
                conn,
                evidence[0],
                evidence[1],
                kind="evidence",
                qos=1,
                retain=False,
                msg_id=evidence_id,
                now=now,
                ttl=self.ttl,
            )

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to a persistent counter (survives restarts; reported in heartbeats)."""
        with self._transaction() as conn:
            self._bump_in(conn, name, by)

    # ------------------------------------------------------------------ sending

    def due(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[OutMessage]:
        """Up to ``limit`` messages ready to send, oldest first, skipping seqs in ``exclude``."""
        now = time.time()
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, id, topic, payload, qos, retain, kind, created_at, attempts,"
                " correlation FROM outbox WHERE next_attempt_at <= ? AND expires_at > ?"
                " ORDER BY seq LIMIT ?",
                (now, now, limit + len(exclude)),
            ).fetchall()
        out = [
            OutMessage(
                r[0],
                r[1],
                r[2],
                bytes(r[3]),
                r[4],
                bool(r[5]),
                r[6],
                r[7],
                r[8],
                bytes(r[9]) if r[9] is not None else None,
            )
            for r in rows
            if r[0] not in exclude
        ]
        return out[:limit]

    def ack(self, seq: int) -> None:
        """The broker acknowledged message ``seq``: remove it."""
        self.ack_many([seq])

    def ack_many(self, seqs: list[int]) -> None:
        """Remove acknowledged messages in one transaction (one fsync for a whole window)."""
        if not seqs:
            return
        with self._transaction() as conn:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def defer(self, seq: int, delay: float) -> None:
        """The broker refused message ``seq``: try it again after ``delay`` seconds."""
        with self._transaction() as conn:
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, attempts = attempts + 1 WHERE seq = ?",
                (time.time() + delay, seq),
            )

    def expire(self) -> int:
        """Delete messages past their TTL, count them per kind, and return how many."""
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT kind, COUNT(*) FROM outbox WHERE expires_at <= ? GROUP BY kind", (now,)
            ).fetchall()
            conn.execute("DELETE FROM outbox WHERE expires_at <= ?", (now,))
            for kind, count in rows:
                self._bump_in(conn, f"expired_{kind}", count)
        total = int(sum(count for _kind, count in rows))
        if total:
            logger.warning("%d undelivered message(s) expired after their TTL", total)
        return total

    # ------------------------------------------------------------------ size cap

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages on the freelist are reused, not counted)."""
        with self._lock:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def enforce_cap(self, max_bytes: int, batch: int = 200) -> dict[str, int]:
        """Evict undelivered data until the database uses at most ``max_bytes``.

        The order is explicit: heartbeats, camera status and command replies first (they
        describe a moment that has passed); then the evidence images of the oldest alerts
        (the alerts themselves stay); then the oldest alerts.
        Every eviction is counted (``evicted_<what>``) for the next heartbeat.

        Raises:
            OutboxError: the database cannot be written.
        """
        evicted = {"telemetry": 0, "evidence": 0, "alert": 0}
        while self.used_bytes() > max_bytes:
            if self._evict_rows("kind NOT IN ('alert', 'evidence')", batch, evicted, "telemetry"):
                continue
            if self._evict_rows("kind = 'evidence'", batch, evicted, "evidence"):
                continue
            if self._evict_rows("kind = 'alert'", batch, evicted, "alert"):
                continue
            break  # nothing left to evict: the rest is the alerts table and the schema
        if any(evicted.values()):
            logger.warning(
                "outbox over its %.0f MB cap: evicted %d telemetry message(s), %d evidence "
                "image(s), %d alert(s)",
                max_bytes / 1e6,
                evicted["telemetry"],
                evicted["evidence"],
                evicted["alert"],
            )
        return evicted

    def _evict_rows(self, where: str, batch: int, evicted: dict[str, int], what: str) -> int:
        with self._transaction() as conn:
            count = conn.execute(
                f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE {where}"  # noqa: S608 - fixed clauses
                " ORDER BY seq LIMIT ?)",
                (batch,),
            ).rowcount
            if count:
                self._bump_in(conn, f"evicted_{what}", count)
        evicted[what] += count
        return int(count)

    @staticmethod
    def _bump_in(conn: sqlite3.Connection, name: str, by: int) -> None:
        conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    # ------------------------------------------------------------------ reading

    def backlog(self) -> dict[str, int]:
        """Undelivered messages per kind."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        return dict(rows)

    def stats(self) -> dict[str, Any]:
        """Backlog per kind with the age of its oldest message, counters, and the size in use."""
        now = time.time()
        with self._lock:
            rows = self._conn.execute(
                "SELECT kind, COUNT(*), MIN(created_at), SUM(LENGTH(payload)) FROM outbox"
                " GROUP BY kind ORDER BY kind"
            ).fetchall()
        return {
            "backlog": {
                kind: {
                    "messages": count,
                    "oldest_age_s": round(now - oldest, 1),
                    "bytes": int(size or 0),
                }
                for kind, count, oldest, size in rows
            },
            "counters": self.counters(),
            "used_bytes": self.used_bytes(),
        }

    def alert_payload(self, alert_id: str) -> dict[str, Any] | None:
        """The stored message of one alert, or None when there is no such alert."""
        with self._lock:
            row = self._conn.execute(
                "SELECT payload, evidence_path FROM alerts WHERE id = ?", (alert_id,)
            ).fetchone()
        if row is None:
            return None
        body: dict[str, Any] = json.loads(row[0]) if row[0] else {"id": alert_id}
        body["local_evidence_path"] = row[1]
        return body

    def counters(self) -> dict[str, int]:
        """All persistent counters."""
        with self._lock:
            rows = self._conn.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        return dict(rows)

    def alerts(self, limit: int = 100) -> list[AlertRecord]:
        """The most recent alerts, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, camera, type, severity, started_at, raised_at, confidence,"
                " detections, evidence_path FROM alerts ORDER BY raised_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            AlertRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "[]"), r[8])
            for r in rows
        ]

    def requeue_alerts(self, since: float, until: float, topic: str) -> int:
        """Queue the stored alerts raised in [since, until] again on ``topic``; return how many.

        Both messages of an alert that has ended (its start, then its end) go again.

        Alerts still waiting in the outbox are not doubled. The evidence image is sent again
        from its file when the file is still there.
        """
        now = time.time()
        count = 0
        with self._transaction() as conn:
            ends = conn.execute(
                "SELECT id, end_payload FROM alerts WHERE raised_at BETWEEN ? AND ?"
                " AND end_payload IS NOT NULL AND id || ':end' NOT IN (SELECT id FROM outbox)"
                " ORDER BY raised_at",
                (since, until),
            ).fetchall()
            rows = conn.execute(
                "SELECT id, payload, evidence_path FROM alerts WHERE raised_at BETWEEN ? AND ?"
                " AND payload IS NOT NULL AND id NOT IN (SELECT id FROM outbox)"
                " ORDER BY raised_at",
                (since, until),
            ).fetchall()
            for alert_id, text, evidence_path in rows:
                body = json.loads(text)
                self._insert(
                    conn,
                    topic,
                    text.encode(),
                    kind="alert",
                    qos=1,
                    retain=False,
                    msg_id=alert_id,
                    now=now,
                    ttl=self.ttl,
                )
                evidence = body.get("evidence")
                if isinstance(evidence, dict) and evidence.get("topic") and evidence_path:
                    try:
                        image = Path(evidence_path).read_bytes()
                    except OSError:
                        logger.warning("alert %s: evidence %s is gone", alert_id, evidence_path)
                    else:
                        self._insert(
                            conn,
                            str(evidence["topic"]),
                            image,
                            kind="evidence",
                            qos=1,
                            retain=False,
                            msg_id=uuid.uuid4().hex,
                            now=now,
                            ttl=self.ttl,
                        )
                count += 1
            for alert_id, text in ends:  # after the starts: per topic order is kept
                self._insert(
                    conn,
                    topic,
                    text.encode(),
                    kind="alert",
                    qos=1,
                    retain=False,
                    msg_id=f"{alert_id}:end",
                    now=now,
                    ttl=self.ttl,
                )
        return count

    # ------------------------------------------------------------------ commands

    def record_command(
        self, request_id: str | None, command: str, payload: bytes, *, ok: bool
    ) -> None:
        """Keep a record of a command from the platform (accepted or not)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO commands (received_at, request_id, command, payload, ok)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), request_id, command, payload, int(ok)),
            )

    def commands(self, limit: int = 100) -> list[tuple[float, str | None, str, bool]]:
        """Recorded commands, newest first: (received_at, request id, command, ok)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT received_at, request_id, command, ok FROM commands"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    # ------------------------------------------------------------------ settings

    def put_setting(self, key: str, value: Any, source: str) -> None:
        """Store a run-time setting (JSON-serialisable) durably, replacing any earlier value."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO settings (key, value, updated_at, source) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at, source = excluded.source",
                (key, json.dumps(value, ensure_ascii=False), time.time(), source),
            )

    def delete_setting(self, key: str) -> bool:
        """Remove a run-time setting; return whether there was one."""
        with self._transaction() as conn:
            return conn.execute("DELETE FROM settings WHERE key = ?", (key,)).rowcount > 0

    def settings(self, prefix: str = "") -> dict[str, Any]:
        """Stored run-time settings whose key starts with ``prefix``."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    # ------------------------------------------------------------------ alarms

    def record_alarm(self, record: AlarmRecord) -> None:
        """Store one decision of the on-site alarm.

        Raises:
            OutboxError: the row cannot be written.
        """
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO alarms (ts, alert_id, camera, type, decision, reason, sounder,"
                " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.ts,
                    record.alert_id,
                    record.camera,
                    record.type,
                    record.decision,
                    record.reason,
                    record.sounder,
                    record.duration_ms,
                ),
            )

    def alarms(self, limit: int = 100, since: float | None = None) -> list[AlarmRecord]:
        """The alarm's decisions, newest first (only those at or after ``since`` when given)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT ts, alert_id, camera, type, decision, reason, sounder, duration_ms"
                " FROM alarms WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
                (float("-inf") if since is None else since, limit),
            ).fetchall()
        return [AlarmRecord(*row) for row in rows]

    # ------------------------------------------------------------------ camera outages

    def open_outage(self, camera: str, since: float, reason: str) -> None:
        """Record that ``camera`` went offline (its last frame was at ``since``)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO camera_outages (camera, since, reason) VALUES (?, ?, ?)",
                (camera, since, reason),
            )

    def close_outage(self, camera: str, until: float, closed_by: str = "frames") -> Outage | None:
        """Close the open outage of ``camera`` at ``until``; return it, or None if none was open."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id, since, reason FROM camera_outages"
                " WHERE camera = ? AND until IS NULL ORDER BY since DESC LIMIT 1",
                (camera,),
            ).fetchone()
            if row is None:
                return None
            duration = max(0.0, until - row[1])
            conn.execute(
                "UPDATE camera_outages SET until = ?, duration_s = ?, closed_by = ? WHERE id = ?",
                (until, duration, closed_by, row[0]),
            )
        return Outage(camera, row[1], until, duration, row[2], closed_by)

    def open_alerts(self) -> list[tuple[str, str, float]]:
        """Alerts without an end: (id, start payload, raised_at), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, payload, raised_at FROM alerts WHERE ended_at IS NULL"
                " ORDER BY raised_at"
            )
            return [(str(r[0]), str(r[1] or ""), float(r[2])) for r in rows.fetchall()]

    def close_open_outages(self, until: float, closed_by: str) -> int:
        """Close every open outage (at start: the agent cannot know what happened while down)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE camera_outages SET until = ?, duration_s = MAX(0, ? - since),"
                " closed_by = ? WHERE until IS NULL",
                (until, until, closed_by),
            )
            return cursor.rowcount

    def outages(self, camera: str | None = None, limit: int = 100) -> list[Outage]:
        """Recorded outages, newest first (open ones have ``until`` None)."""
        sql = "SELECT camera, since, until, duration_s, reason, closed_by FROM camera_outages"
        args: tuple[Any, ...] = ()
        if camera is not None:
            sql += " WHERE camera = ?"
            args = (camera,)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY since DESC LIMIT ?", (*args, limit))
            return [Outage(*row) for row in rows.fetchall()]

    # ------------------------------------------------------------------ food references

    def add_food_ref(
        self,
        ref: FoodRef,
        *,
        keep: int | None = None,
    ) -> tuple[int, list[str]]:
        """Store a food-zone reference (its ``id`` is ignored) and return its new id.

        With ``keep``, only the newest ``keep`` references of the same camera, zone and
        state stay; the image paths of those dropped are returned for the caller to delete.

        Raises:
            OutboxError: the write failed.
        """
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO food_refs (camera, zone, state, captured_at, path, features,"
                " feature_kind) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    ref.camera,
                    ref.zone,
                    ref.state,
                    ref.captured_at,
                    ref.path,
                    ref.features,
                    ref.feature_kind,
                ),
            )
            new_id = int(cursor.lastrowid or 0)
            dropped: list[str] = []
            if keep is not None:
                rows = conn.execute(
                    "SELECT id, path FROM food_refs WHERE camera = ? AND zone = ? AND state = ?"
                    " ORDER BY captured_at DESC, id DESC LIMIT -1 OFFSET ?",
                    (ref.camera, ref.zone, ref.state, keep),
                ).fetchall()
                conn.executemany("DELETE FROM food_refs WHERE id = ?", [(r[0],) for r in rows])
                dropped = [r[1] for r in rows]
        return new_id, dropped

    def food_refs(self, camera: str, zone: str | None = None) -> list[FoodRef]:
        """The references of a camera (or one of its zones), oldest first."""
        sql = (
            "SELECT id, camera, zone, state, captured_at, path, features, feature_kind"
            " FROM food_refs WHERE camera = ?"
        )
        args: tuple[Any, ...] = (camera,)
        if zone is not None:
            sql += " AND zone = ?"
            args = (camera, zone)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY captured_at, id", args).fetchall()
        return [FoodRef(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7]) for r in rows]

    def delete_food_refs(self, camera: str, zone: str, state: str | None = None) -> list[str]:
        """Remove a zone's references (of one state, or all); return their image paths.

        Raises:
            OutboxError: the write failed.
        """
        where = "camera = ? AND zone = ?" + (" AND state = ?" if state is not None else "")
        args: tuple[Any, ...] = (camera, zone) if state is None else (camera, zone, state)
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT path FROM food_refs WHERE {where}",  # noqa: S608 - fixed clauses
                args,
            ).fetchall()
            conn.execute(f"DELETE FROM food_refs WHERE {where}", args)  # noqa: S608
        return [r[0] for r in rows]

    def food_refs_version(self) -> tuple[int, int]:
        """A value that changes whenever references are added or deleted: (count, max id)."""
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM food_refs")
            count, top = row.fetchone()
        return int(count), int(top)

    # ------------------------------------------------------------------ camera health

    def save_camera_health(self, snapshots: dict[str, dict[str, Any]], now: float) -> None:
        """Keep each camera's latest health, so ``camera list`` and ``status`` can read it."""
        with self._transaction() as conn:
            conn.executemany(
                "INSERT INTO camera_health (camera, state, since, updated_at, health)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(camera) DO UPDATE SET"
                " state = excluded.state, since = excluded.since,"
                " updated_at = excluded.updated_at, health = excluded.health",
                [
                    (camera, snap["state"], snap["since"], now, json.dumps(snap))
                    for camera, snap in snapshots.items()
                ],
            )

    def camera_health(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """The latest saved health per camera, with the time it was saved."""
        with self._lock:
            rows = self._conn.execute("SELECT camera, updated_at, health FROM camera_health")
            return {camera: (updated, json.loads(text)) for camera, updated, text in rows}

    def integrity_ok(self) -> bool:
        """Whether SQLite's full integrity check passes."""
        with self._lock:
            row = self._conn.execute("PRAGMA integrity_check").fetchone()
        return row is not None and row[0] == "ok"
