"""The alarm's policy: which starting alerts sound the alarm, played on a worker thread.

When an alert **starts**, :class:`Alarm` decides whether to sound it (mute, quiet hours,
a cooldown per camera and violation type, a cap per hour, in that order), and a worker
thread plays it through the configured :class:`~agent.alarm.sounders.Sounder`; the caller
only enqueues, so a slow or broken speaker never holds up the pipeline. A full queue drops
the alarm and counts it. Every decision, played or not and why, is a row in the ``alarms``
table.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Protocol

from agent.alarm.sounders import Sounder, make_sounder
from agent.alarm.sounds import SoundBank
from agent.config import AlarmConfig
from agent.errors import SounderError, StoreError
from agent.records import AlarmRecord
from agent.rules.engine import Alert
from agent.store.store import Store

logger = logging.getLogger(__name__)

REASONS = ("muted", "quiet_hours", "cooldown", "hourly_cap", "queue_full", "sounder_failed")
_HOUR = 3600.0


class MuteSwitch(Protocol):
    """The alarm mute as the policy reads it.

    ``agent.uplink.overrides.Mute`` is the one the agent runs with: it keeps the mute in the
    database, where the ``mute`` command and ``mclz-agent alarm mute`` set it. The alarm
    only reads it, so it does not depend on the MQTT side.
    """

    def refresh(self) -> None:
        """Re-read the mute where another process may have set it.

        Raises:
            StoreError: it cannot be read.
        """

    def muted(self, now: float | None = None) -> bool:
        """Whether the alarm is silenced at ``now``."""


@dataclass(frozen=True, slots=True)
class _Job:
    alert_id: str
    camera: str
    type: str
    severity: str
    zone: str | None


class Alarm:
    """Decides which starting alerts sound the alarm, and plays them on a worker thread."""

    def __init__(
        self,
        config: AlarmConfig,
        outbox: Store,
        mute: MuteSwitch,
        *,
        tz: tzinfo,
        clock: Callable[[], float] = time.time,
        sounder: Sounder | None = None,
    ) -> None:
        """Load the sounds and the recent plays (cooldowns and the hourly cap outlive a restart).

        Raises:
            ConfigError: a configured recording cannot be read.
            SecretError: the sounder's password cannot be resolved.
            StoreError: the database cannot be read.
        """
        self.config = config
        self.outbox = outbox
        self.mute = mute
        self.tz = tz
        self.clock = clock
        self.sounder = sounder if sounder is not None else make_sounder(config.sounder)
        self.active = config.enabled and (sounder is not None or config.sounder.kind != "none")
        self.sounds = SoundBank(config)
        # None wakes the worker at stop; it is put only when there is room.
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._last: dict[tuple[str, str], float] = {}  # (camera, type) -> last alarm queued
        self._recent: collections.deque[float] = collections.deque()  # alarms of the last hour
        now = clock()
        for row in reversed(outbox.alarms(limit=10000, since=now - max(config.cooldown, _HOUR))):
            if row.decision == "played":
                self._last[(row.camera, row.type)] = row.ts
                self._recent.append(row.ts)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread that plays queued alarms (``alarm``; only with a sounder).

        The alarm starts and ends (:meth:`stop`) its own thread, as stopping also cancels a
        play in progress; the agent's service calls both.
        """
        if self._thread is None and self.active:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="alarm", daemon=True)
            self._thread.start()
            logger.info("on-site alarm ready: %s", self.sounder.describe())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: a play in progress is abandoned, queued alarms are dropped."""
        self._stop.set()
        self.sounder.cancel()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("alarm thread did not stop within %.1f s", timeout)
            self._thread = None

    # ------------------------------------------------------------------ deciding

    def on_alert(self, alert: Alert) -> str | None:
        """Decide on a committed alert; return "queued", the reason it is not, or None.

        Never blocks on the sounder and never raises for a database or sounder problem:
        the alarm must not hold up the pipeline. None: not the alarm's business (an end
        event, or the alarm is off or has no sounder).
        """
        if alert.phase != "start" or not self.active:
            return None
        now = self.clock()
        key = (alert.camera_id, alert.type)
        try:
            self.mute.refresh()  # `mclz-agent alarm mute` writes it from another process
        except StoreError as exc:
            logger.warning("cannot re-read the alarm mute: %s", exc)
        job = _Job(alert.id, alert.camera_id, alert.type, alert.severity, alert.zone)
        with self._lock:
            while self._recent and self._recent[0] <= now - _HOUR:
                self._recent.popleft()
            reason = self._suppress_reason(key, now)
            if reason is None:
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    reason = "queue_full"
                else:
                    self._last[key] = now
                    self._recent.append(now)
            if reason is not None:
                self._counts[reason] += 1
        if reason is None:
            return "queued"
        logger.info("alarm for %s on camera %s not played: %s", alert.type, alert.camera_id, reason)
        self._record(job, "suppressed", reason, now)
        return reason

    def _suppress_reason(self, key: tuple[str, str], now: float) -> str | None:
        if self.mute.muted(now):
            return "muted"
        local = datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        if any(w.contains(local.weekday(), minute) for w in self.config.quiet_hours):
            return "quiet_hours"
        last = self._last.get(key)
        if last is not None and now - last < self.config.cooldown:
            return "cooldown"
        if len(self._recent) >= self.config.max_per_hour:
            return "hourly_cap"
        return None

    # ------------------------------------------------------------------ playing

    def play_now(
        self, kind: str | None, severity: str = "warning", camera: str = "", zone: str | None = None
    ) -> float:
        """Play an alarm's sound synchronously (``mclz-agent alarm test``); return seconds taken.

        Raises:
            SounderError: the sounder failed.
        """
        wav = self.sounds.render(severity, kind, camera, zone)
        started = time.monotonic()
        self.sounder.play(wav, f"{camera or 'test'}-{kind or severity}")
        return time.monotonic() - started

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None or self._stop.is_set():
                break
            try:
                self._play(job)
            except Exception:  # the top of the thread: a bug must not end the alarm
                logger.exception("alarm for %s on camera %s failed", job.type, job.camera)
                with self._lock:
                    self._counts["sounder_failed"] += 1
        dropped = self._queue.qsize()
        if dropped:
            logger.info("%d queued alarm(s) dropped at stop", dropped)

    def _play(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            self.play_now(job.type, job.severity, job.camera, job.zone)
        except SounderError as exc:
            ms = round(1000 * (time.monotonic() - started))
            with self._lock:
                self._counts["sounder_failed"] += 1
            logger.warning(
                "alarm for %s on camera %s: %s failed: %s",
                job.type,
                job.camera,
                self.sounder.kind,
                exc,
            )
            self._record(job, "failed", "sounder_failed", self.clock(), ms)
            return
        ms = round(1000 * (time.monotonic() - started))
        with self._lock:
            self._counts["played"] += 1
        logger.info("alarm played for %s on camera %s (%d ms)", job.type, job.camera, ms)
        self._record(job, "played", "", self.clock(), ms)

    def _record(
        self, job: _Job, decision: str, reason: str, ts: float, duration_ms: int | None = None
    ) -> None:
        record = AlarmRecord(
            ts, job.alert_id, job.camera, job.type, decision, reason, self.sounder.kind, duration_ms
        )
        try:
            self.outbox.record_alarm(record)
        except StoreError as exc:
            logger.warning("cannot record the alarm decision for camera %s: %s", job.camera, exc)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat: played, each suppression reason, and waiting alarms."""
        with self._lock:
            out = {"played": self._counts["played"]}
            out.update({reason: self._counts[reason] for reason in REASONS})
        out["queued"] = self._queue.qsize()
        return out
