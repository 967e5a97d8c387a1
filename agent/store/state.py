"""The smaller records the box keeps: settings, commands, alarms, camera outages and health,
and food references.

Each is a table of its own with a few reads and writes; none sends anything (what goes
to the platform goes through the outbox).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from agent.records import AlarmRecord, FoodRef, Outage
from agent.store.database import Database, WritableDatabase


class StateReads(Database):
    """Reading the settings, commands, alarms, outages, camera health and food references."""

    # ------------------------------------------------------------------ commands

    def commands(self, limit: int = 100) -> list[tuple[float, str | None, str, bool]]:
        """Recorded commands, newest first: (received_at, request id, command, ok)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT received_at, request_id, command, ok FROM commands"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], r[2], bool(r[3])) for r in rows]

    def command_log(self, limit: int = 100) -> list[dict[str, Any]]:
        """Recorded commands with who gave them and their payload, newest first.

        Each: ``received_at``, ``source`` (``platform`` or ``web:<client address>``),
        ``request_id``, ``command``, ``payload`` (text) and ``ok``.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT received_at, source, request_id, command, payload, ok FROM commands"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {
                "received_at": r[0],
                "source": r[1],
                "request_id": r[2],
                "command": r[3],
                "payload": bytes(r[4]).decode("utf-8", "replace"),
                "ok": bool(r[5]),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------ settings

    def settings(self, prefix: str = "") -> dict[str, Any]:
        """Stored run-time settings whose key starts with ``prefix``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(prefix), prefix),
            ).fetchall()
        return {key: json.loads(value) for key, value in rows}

    def settings_at(self, keys: Collection[str]) -> dict[str, tuple[str, float]]:
        """The stored JSON text of each of ``keys`` that is set, with when it was set."""
        out: dict[str, tuple[str, float]] = {}
        with self._read() as conn:
            for key in keys:
                row = conn.execute(
                    "SELECT value, updated_at FROM settings WHERE key = ?", (key,)
                ).fetchone()
                if row is not None:
                    out[key] = (str(row[0]), float(row[1]))
        return out

    # ------------------------------------------------------------------ alarms

    def alarms(self, limit: int = 100, since: float | None = None) -> list[AlarmRecord]:
        """The alarm's decisions, newest first (only those at or after ``since`` when given)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT ts, alert_id, camera, type, decision, reason, sounder, duration_ms"
                " FROM alarms WHERE ts >= ? ORDER BY ts DESC, id DESC LIMIT ?",
                (float("-inf") if since is None else since, limit),
            ).fetchall()
        return [AlarmRecord(*row) for row in rows]

    # ------------------------------------------------------------------ camera outages

    def outages(self, camera: str | None = None, limit: int = 100) -> list[Outage]:
        """Recorded outages, newest first (open ones have ``until`` None)."""
        sql = "SELECT camera, since, until, duration_s, reason, closed_by FROM camera_outages"
        args: tuple[Any, ...] = ()
        if camera is not None:
            sql += " WHERE camera = ?"
            args = (camera,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY since DESC LIMIT ?", (*args, limit))
            return [Outage(*row) for row in rows.fetchall()]

    # ------------------------------------------------------------------ food references

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
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY captured_at, id", args).fetchall()
        return [FoodRef(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6]), r[7]) for r in rows]

    def food_refs_version(self) -> tuple[int, int]:
        """A value that changes whenever references are added or deleted: (count, max id)."""
        with self._read() as conn:
            row = conn.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM food_refs")
            count, top = row.fetchone()
        return int(count), int(top)

    # ------------------------------------------------------------------ camera health

    def camera_health(self) -> dict[str, tuple[float, dict[str, Any]]]:
        """The latest saved health per camera, with the time it was saved."""
        with self._read() as conn:
            rows = conn.execute("SELECT camera, updated_at, health FROM camera_health")
            return {camera: (updated, json.loads(text)) for camera, updated, text in rows}


class StateWrites(StateReads, WritableDatabase):
    """Writing the settings, commands, alarms, outages, camera health and food references."""

    # ------------------------------------------------------------------ commands

    def record_command(
        self,
        request_id: str | None,
        command: str,
        payload: bytes,
        *,
        ok: bool,
        source: str = "platform",
    ) -> None:
        """Keep a record of a command (accepted or not): from the platform, or a change made
        on the installer page (``source`` ``web:<client address>``)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO commands (received_at, request_id, command, payload, ok, source)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), request_id, command, payload, int(ok), source),
            )

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

    # ------------------------------------------------------------------ alarms

    def record_alarm(self, record: AlarmRecord) -> None:
        """Store one decision of the on-site alarm.

        Raises:
            StoreError: the row cannot be written.
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

    def close_open_outages(self, until: float, closed_by: str) -> int:
        """Close every open outage (at start: the agent cannot know what happened while down)."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE camera_outages SET until = ?, duration_s = MAX(0, ? - since),"
                " closed_by = ? WHERE until IS NULL",
                (until, until, closed_by),
            )
            return cursor.rowcount

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
            StoreError: the write failed.
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

    def delete_food_refs(self, camera: str, zone: str, state: str | None = None) -> list[str]:
        """Remove a zone's references (of one state, or all); return their image paths.

        Raises:
            StoreError: the write failed.
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
