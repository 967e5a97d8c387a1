"""The outbox: outgoing messages, committed before they are sent and kept until acknowledged.

Enqueue, due, ack, defer, expire, the size cap and its eviction order, the backlog, and the
persistent counters the heartbeat reports. Reading (:class:`OutboxReads`) is apart from
writing (:class:`OutboxWrites`) so the read-only view offers no write by mistake.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from typing import Any

from agent.records import OutMessage
from agent.store.database import Database, WritableDatabase

logger = logging.getLogger(__name__)


class OutboxReads(Database):
    """What is waiting to be sent, and the counters."""

    def due(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[OutMessage]:
        """Up to ``limit`` messages ready to send, oldest first, skipping seqs in ``exclude``."""
        now = time.time()
        with self._read() as conn:
            rows = conn.execute(
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

    def used_bytes(self) -> int:
        """Bytes of the database in use (pages on the freelist are reused, not counted)."""
        with self._read() as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def backlog(self) -> dict[str, int]:
        """Undelivered messages per kind."""
        with self._read() as conn:
            rows = conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall()
        return dict(rows)

    def backlog_span(self) -> dict[str, tuple[int, float, float]]:
        """Undelivered messages per kind: (how many, oldest created_at, newest created_at)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT kind, COUNT(*), MIN(created_at), MAX(created_at) FROM outbox"
                " GROUP BY kind ORDER BY kind"
            ).fetchall()
        return {
            kind: (int(count), float(oldest), float(newest)) for kind, count, oldest, newest in rows
        }

    def newest(self, kind: str) -> tuple[float, bytes] | None:
        """The newest undelivered message of ``kind``: (created_at, payload), or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT created_at, payload FROM outbox WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                (kind,),
            ).fetchone()
        return None if row is None else (float(row[0]), bytes(row[1]))

    def stats(self) -> dict[str, Any]:
        """Backlog per kind with the age of its oldest message, counters, and the size in use."""
        now = time.time()
        with self._read() as conn:
            rows = conn.execute(
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

    def counters(self) -> dict[str, int]:
        """All persistent counters."""
        with self._read() as conn:
            rows = conn.execute("SELECT name, value FROM counters ORDER BY name").fetchall()
        return dict(rows)


class OutboxWrites(OutboxReads, WritableDatabase):
    """Committing, acknowledging, deferring, expiring and evicting outgoing messages."""

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
            StoreError: the write failed (disk full, I/O error).
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

    def bump(self, name: str, by: int = 1) -> None:
        """Add ``by`` to a persistent counter (survives restarts; reported in heartbeats)."""
        with self._transaction() as conn:
            self._bump_in(conn, name, by)

    # ------------------------------------------------------------------ sending

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

    def enforce_cap(self, max_bytes: int, batch: int = 200) -> dict[str, int]:
        """Evict undelivered data until the database uses at most ``max_bytes``.

        The order is explicit: heartbeats, camera status and command replies first (they
        describe a moment that has passed); then the evidence images of the oldest alerts
        (the alerts themselves stay); then the oldest alerts.
        Every eviction is counted (``evicted_<what>``) for the next heartbeat.

        Raises:
            StoreError: the database cannot be written.
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
