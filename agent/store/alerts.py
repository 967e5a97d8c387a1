"""Alerts: the local record of every alert, its messages as sent, and sending them again.

An alert row and its outgoing message (and its image's) commit in one transaction: an
alert exists once it is committed here, whether or not the broker has it yet.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from agent.records import AlertRecord
from agent.store.database import Database
from agent.store.outbox import OutboxWrites

logger = logging.getLogger(__name__)


class AlertReads(Database):
    """The stored alerts and their payloads."""

    def alerts(self, limit: int = 100) -> list[AlertRecord]:
        """The most recent alerts, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, camera, type, severity, started_at, raised_at, confidence,"
                " detections, evidence_path FROM alerts ORDER BY raised_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            AlertRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "[]"), r[8])
            for r in rows
        ]

    def alert_spans(
        self, limit: int = 5
    ) -> list[tuple[str, str, str | None, float, float | None, float]]:
        """The most recent alerts, newest first, as (type, camera, zone, started_at,
        ended_at, raised_at); ``ended_at`` is None while an alert lasts."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT type, camera, zone, started_at, ended_at, raised_at FROM alerts"
                " ORDER BY raised_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def alert_payload(self, alert_id: str) -> dict[str, Any] | None:
        """The stored message of one alert, or None when there is no such alert."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT payload, evidence_path FROM alerts WHERE id = ?", (alert_id,)
            ).fetchone()
        if row is None:
            return None
        body: dict[str, Any] = json.loads(row[0]) if row[0] else {"id": alert_id}
        body["local_evidence_path"] = row[1]
        return body

    def open_alerts(self) -> list[tuple[str, str, float]]:
        """Alerts without an end: (id, start payload, raised_at), oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, payload, raised_at FROM alerts WHERE ended_at IS NULL"
                " ORDER BY raised_at"
            )
            return [(str(r[0]), str(r[1] or ""), float(r[2])) for r in rows.fetchall()]


class AlertWrites(AlertReads, OutboxWrites):
    """Committing alerts (start and end) with their messages, and queueing them again."""

    def record_alert(
        self,
        alert: AlertRecord,
        topic: str,
        payload: bytes,
        evidence: tuple[str, bytes] | None = None,
    ) -> None:
        """Commit an alert, its message and its evidence message (topic, JPEG) in one transaction.

        Raises:
            StoreError: the write failed; neither the alert nor its message is stored.
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
            StoreError: the write failed; nothing of it is stored.
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
