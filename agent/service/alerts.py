"""The alert writer: evidence, the store write, the retry on a full disk, the alarm hand-off.

For each alert the rule engine raises or ends, :class:`AlertWriter` picks the evidence
frame (the main stream's keyframe taken within a second of the detection, else the
analysed frame), saves the JPEG, hands a start to the on-site alarm, and commits the alert
with its outgoing message in one transaction. A write the disk refuses is kept in memory,
in order, and retried by the health thread (:meth:`AlertWriter.retry_unstored`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from agent import evidence
from agent.alarm.policy import Alarm
from agent.config import AgentConfig
from agent.errors import StoreError
from agent.evidence import Evidence
from agent.rules.engine import Alert
from agent.service.runtime import PROGRESS_KEY, Cameras, Runtime
from agent.store.store import Store
from agent.uplink import messages as contract

logger = logging.getLogger(__name__)

MAX_UNSTORED_ALERTS = 1000
MAIN_EVIDENCE_WITHIN = 1.0  # seconds between the detection and a usable main-stream keyframe


class AlertWriter:
    """Writes alert starts and ends: evidence first, then one committed transaction."""

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        outbox: Store,
        topics: contract.Topics,
        alarm: Alarm,
        *,
        model_id: str,
        evidence_dir: Path,
        on_commit: Callable[[], None],
    ) -> None:
        """``on_commit`` is called after each committed write (it wakes the uplink)."""
        self.runtime = runtime
        self.cameras = cameras
        self.outbox = outbox
        self.topics = topics
        self.alarm = alarm
        self.model_id = model_id
        self.evidence_dir = evidence_dir
        self.on_commit = on_commit
        # Alert writes (starts and ends) that could not be committed (disk full), oldest
        # first, retried by the health thread: (alert id, the write).
        self._unstored: list[tuple[str, Callable[[], None]]] = []
        self._unstored_lock = threading.Lock()
        self.dropped = 0
        self.by_type: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Alert writes waiting for the disk to take them."""
        return len(self._unstored)

    def stats(self) -> dict[str, Any]:
        """Alerts raised per type, writes waiting, writes dropped: for the heartbeat."""
        return {
            "by_type": dict(self.by_type),
            "unstored": len(self._unstored),
            "dropped": self.dropped,
        }

    def raised(self, alert: Alert) -> None:
        """Commit an alert's start with its evidence, after handing it to the alarm."""
        saved = self._save_evidence(alert, alert.id)
        event, info = alert.event(), saved.info() if saved is not None else None
        config = self.runtime.config
        payload = contract.encode(contract.alert(config, event, info, model=self.model_id))
        attachment = (self.topics.evidence(alert.id), saved.jpeg) if saved is not None else None
        record = contract.alert_record(event, info)
        self.by_type[alert.type] = self.by_type.get(alert.type, 0) + 1
        topic = self.topics.alert
        # The kitchen hears it at once, whether or not the disk took the alert yet.
        self.alarm.on_alert(alert)
        if self._commit(
            alert, lambda: self.outbox.record_alert(record, topic, payload, attachment)
        ):
            logger.warning(
                "camera %s: ALERT %s%s (%.2f) id=%s evidence=%s",
                alert.camera_id,
                alert.type,
                f" in {alert.zone}" if alert.zone else "",
                alert.confidence,
                alert.id,
                saved.path if saved is not None else "-",
            )

    def ended(self, alert: Alert) -> None:
        """Commit an alert's end, with a better image when one came after the start."""
        # A file of its own: the start's image stays what the start message described.
        saved = self._save_evidence(alert, f"{alert.id}-end") if alert.frame is not None else None
        info = saved.info() if saved is not None else None
        body = contract.alert(self.runtime.config, alert.event(), info, model=self.model_id)
        payload = contract.encode(body)
        attachment = (self.topics.evidence(alert.id), saved.jpeg) if saved is not None else None
        topic = self.topics.alert
        ended_at = alert.ended_at if alert.ended_at is not None else time.time()

        def write() -> None:
            self.outbox.record_alert_end(
                alert.id,
                ended_at=ended_at,
                reason=alert.end_reason,
                confidence=alert.confidence,
                topic=topic,
                payload=payload,
                evidence=attachment,
                evidence_path=str(saved.path) if saved is not None else None,
            )

        if self._commit(alert, write):
            logger.warning(
                "camera %s: alert %s %s ended (%s) after %.0f s",
                alert.camera_id,
                alert.type,
                alert.id,
                alert.end_reason,
                ended_at - alert.started_at,
            )

    def retry_unstored(self) -> None:
        """Commit the writes the disk refused, oldest first; stop at the first refused again."""
        with self._unstored_lock:
            while self._unstored:
                alert_id, write = self._unstored[0]
                try:
                    write()
                except StoreError as exc:
                    logger.error("%d alert write(s) still not stored: %s", len(self._unstored), exc)
                    return
                self._unstored.pop(0)
                logger.info("alert %s stored after a retry", alert_id)
                self.on_commit()

    # ------------------------------------------------------------------ evidence

    def _evidence_frame(self, alert: Alert) -> tuple[np.ndarray | None, str]:
        """The main stream's keyframe taken within a second of the detection, else the sub frame."""
        ring = self.cameras.main_rings.get(alert.camera_id)
        if ring is not None:
            main = ring.closest(alert.frame_wall, within=MAIN_EVIDENCE_WITHIN)
            if main is not None:
                return main.image, "main"
        return alert.frame, "sub"

    def _save_evidence(self, alert: Alert, file_id: str) -> Evidence | None:
        """Render and store the alert's evidence as ``<file_id>.jpg``; None when off or failed."""
        image, source = self._evidence_frame(alert)
        config = self.runtime.config
        if not config.evidence.enabled or image is None:
            return None
        try:
            return evidence.save(  # looked up at call time: scripts/bench/bench_latency.py times it
                replace(alert, id=file_id),
                image,
                config.evidence,
                self.evidence_dir,
                source,
                **self._drawing(config, alert),
            )
        except (StoreError, ValueError) as exc:
            logger.error(
                "camera %s: alert %s (%s) has no evidence: %s",
                alert.camera_id,
                alert.id,
                alert.phase,
                exc,
            )
            return None

    @staticmethod
    def _drawing(config: AgentConfig, alert: Alert) -> dict[str, Any]:
        """What the evidence image shows besides the boxes: name, zone, exclusions, time zone."""
        camera = config.cameras.get(alert.camera_id)
        zones = camera.zones if camera is not None else {}
        zone = zones.get(alert.zone) if alert.zone else None
        return {
            "camera_name": camera.name if camera is not None else "",
            "zone": zone.polygon if zone is not None else None,
            "excluded": [z.polygon for z in zones.values() if z.exclude],
            "tz": config.identity.tz,
        }

    # ------------------------------------------------------------------ the store write

    def _commit(self, alert: Alert, write: Callable[[], None]) -> bool:
        """Run an alert write now, or keep it for a retry when the disk refuses it."""
        with self._unstored_lock:
            if self._unstored:  # keep the order: earlier writes wait already
                self._unstored.append((alert.id, write))
                return False
        try:
            write()
        except StoreError as exc:
            logger.error(
                "camera %s: alert %s (%s) not stored yet, will retry: %s",
                alert.camera_id,
                alert.id,
                alert.phase,
                exc,
            )
            with self._unstored_lock:
                if len(self._unstored) < MAX_UNSTORED_ALERTS:
                    self._unstored.append((alert.id, write))
                    return False
                self.dropped += 1
            logger.error(
                "camera %s: alert %s (%s) dropped: %d alert writes already wait for space",
                alert.camera_id,
                alert.id,
                alert.phase,
                MAX_UNSTORED_ALERTS,
            )
            return False
        self.on_commit()
        return True


def end_alerts_left_open(config: AgentConfig, outbox: Store) -> None:
    """End (``agent_restart``) the alerts a killed run left running, so none stays open.

    Their end time is the previous run's last progress record (written each heartbeat),
    else the alert's own raise time: when it was last known to be going on.
    """
    last_alive = outbox.settings(PROGRESS_KEY).get(PROGRESS_KEY, {}).get("at")
    topic = contract.Topics(config).alert
    for alert_id, text, raised_at in outbox.open_alerts():
        try:
            start = json.loads(text)
            ended_at = max(raised_at, float(last_alive)) if last_alive else raised_at
            body = contract.alert_end_after_restart(start, ended_at)
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("alert %s left open: its stored start is unusable (%s)", alert_id, exc)
            continue
        outbox.record_alert_end(
            alert_id,
            ended_at=ended_at,
            reason="agent_restart",
            confidence=float(start.get("confidence", 0.0)),
            topic=topic,
            payload=contract.encode(body),
        )
        logger.warning(
            "alert %s (%s) left running by the previous run: ended", alert_id, start.get("type")
        )
