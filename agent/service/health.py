"""The health thread: camera debounce, heartbeat, housekeeping and the systemd watchdog.

Every second (every 0.25 s while a heartbeat is asked for) it ticks every camera reader,
the main streams included, so a camera that stops sending turns ``stalled`` then
``offline``; retries alert writes the disk refused; every ``heartbeat.interval`` it saves
the cameras' health, commits a heartbeat and a status refresh per camera and notes the
progress record; every minute it expires old messages and prunes evidence; and it pings
the systemd watchdog while the detect loop keeps turning.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from agent import __version__, evidence
from agent.alarm.policy import Alarm
from agent.errors import StoreError
from agent.records import CameraState
from agent.rules.engine import RuleEngine
from agent.service.alerts import AlertWriter
from agent.service.pipeline import Pipeline
from agent.service.runtime import PROGRESS_KEY, RUN_KEY, Cameras, Runtime
from agent.service.status import CameraStatus
from agent.service.systemd import sd_notify, watchdog_interval
from agent.service.telemetry import ProcessCpu, clock_status, system_metrics
from agent.store.store import Store
from agent.uplink import messages as contract
from agent.uplink.client import Uplink
from agent.uplink.overrides import Mute, RuleOverrides

logger = logging.getLogger(__name__)

HEARTBEAT_TTL = 86400.0  # a heartbeat older than a day tells the platform nothing new
EXPIRE_EVERY = 60.0  # TTL expiry and the size cap
WATCHDOG_STALE = 30.0  # the detect loop must have turned within this many seconds


class Health:
    """The health thread's work (:meth:`run`) and the heartbeat's contents (:meth:`report`)."""

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        status: CameraStatus,
        pipeline: Pipeline,
        writer: AlertWriter,
        *,
        outbox: Store,
        topics: contract.Topics,
        uplink: Uplink,
        alarm: Alarm,
        rules: RuleEngine,
        mute: Mute,
        overrides: RuleOverrides,
        model_id: str,
        started: float,
        evidence_dir: Path,
        heartbeat_now: threading.Event,
    ) -> None:
        """``heartbeat_now``: set to have the next turn send a heartbeat (commands, reload)."""
        self.runtime = runtime
        self.cameras = cameras
        self.status = status
        self.pipeline = pipeline
        self.writer = writer
        self.outbox = outbox
        self.topics = topics
        self.uplink = uplink
        self.alarm = alarm
        self.rules = rules
        self.mute = mute
        self.overrides = overrides
        self.model_id = model_id
        self.started = started
        self.evidence_dir = evidence_dir
        self.heartbeat_now = heartbeat_now
        self._cpu = ProcessCpu()
        self.analysed_rate = 0.0  # frames analysed per second over the last heartbeat interval
        self._rate_mark = (0, time.monotonic())  # frames analysed by then: for the rate
        #: The last heartbeat committed (the installer page shows it); None before the first.
        self.last_heartbeat: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the thread

    def run(self, stop: threading.Event) -> None:
        """The health thread, until ``stop`` is set; a crash sets ``stop`` too."""
        config = self.runtime.config
        next_beat = time.monotonic() + min(5.0, config.heartbeat.interval)
        next_expire = time.monotonic() + 5.0  # a full database is dealt with at start
        watchdog = watchdog_interval()
        next_watchdog = time.monotonic()
        # A detect loop that has not turned for this long is hung: withhold the ping so
        # systemd restarts the agent (30 s, or the whole watchdog timeout when shorter).
        stale = min(WATCHDOG_STALE, max(5.0, 2 * watchdog)) if watchdog else WATCHDOG_STALE
        try:
            while not stop.wait(0.25 if self.heartbeat_now.is_set() else 1.0):
                now = time.monotonic()
                # The main streams too: untouched by tick, a dead one read "online" for ever.
                for reader in self.cameras.all_readers():
                    reader.tick(now)
                if self.writer.pending:
                    self.writer.retry_unstored()
                if now >= next_beat or self.heartbeat_now.is_set():
                    self.heartbeat_now.clear()
                    self.status.save_health()
                    self.send_heartbeat()
                    self.note_progress(now)
                    for camera_id in self.cameras.readers:  # fresh fps, quality, frame age
                        self.status.publish(camera_id)
                    # A reload may change the interval.
                    next_beat = now + self.runtime.config.heartbeat.interval
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY
                    self.housekeeping()
                if watchdog is not None and now >= next_watchdog:
                    next_watchdog = now + watchdog
                    turned = self.pipeline.turned
                    if now - turned < stale:
                        sd_notify("WATCHDOG=1")
                    else:
                        logger.error(
                            "detect loop stuck for %.0f s: withholding the watchdog ping",
                            now - turned,
                        )
        except Exception:
            logger.exception("health thread crashed; stopping the agent so systemd restarts it")
            stop.set()

    def housekeeping(self) -> None:
        """Expire messages past their TTL, keep the database under its size cap, and
        evidence images within their age and total size."""
        config = self.runtime.config
        try:
            self.outbox.expire()
            self.outbox.enforce_cap(int(config.storage.max_db_mb * 1e6))
        except StoreError as exc:
            logger.error("outbox housekeeping failed: %s", exc)
        cfg = config.evidence
        try:
            pruned = evidence.prune(
                self.evidence_dir,
                keep_days=cfg.keep_days,
                max_total_bytes=int(cfg.max_total_mb * 1e6),
                now=time.time(),
            )
        except StoreError as exc:
            logger.error("evidence retention failed: %s", exc)
            return
        if pruned.files_removed:
            logger.info(
                "evidence retention removed %d image(s), %.1f MB",
                pruned.files_removed,
                pruned.bytes_removed / 1e6,
            )

    # ------------------------------------------------------------------ heartbeat

    def send_heartbeat(self) -> None:
        """Commit one heartbeat to the outbox."""
        msg_id = uuid.uuid4().hex
        h = self.report()
        body = contract.heartbeat(
            self.runtime.config, msg_id, now=time.time(), started=self.started, health=h
        )
        try:
            self.outbox.enqueue(
                self.topics.heartbeat,
                contract.encode(body),
                kind="heartbeat",
                msg_id=msg_id,
                ttl=HEARTBEAT_TTL,
            )
        except StoreError as exc:
            logger.error("heartbeat not stored: %s", exc)
            return
        self.last_heartbeat = body
        self.uplink.wake()

    def report(self) -> dict[str, Any]:
        """Everything the heartbeat reports, as plain data."""
        cameras_ = self.cameras
        readers, pictures, mains = cameras_.readers, cameras_.pictures, cameras_.main_readers
        gates, food = cameras_.gates, self.runtime.food
        cameras = {cid: r.snapshot() for cid, r in readers.items()}
        for cid, snap in cameras.items():
            snap["since"] = contract.utc_iso(readers[cid].since)
            monitor = pictures.get(cid)
            if monitor is not None:
                snap["picture"] = sorted(c.value for c in monitor.active)
                snap["picture_metrics"] = {
                    k: round(v, 2) for k, v in monitor.metrics().items() if math.isfinite(v)
                }
            gate = gates.get(cid)
            if gate is not None:
                snap["gating"] = gate.snapshot()
            latest = food.latest(cid)
            if latest:
                snap["food"] = {
                    zone: {"state": st.state, "margin": round(st.margin, 3)}
                    for zone, st in sorted(latest.items())
                }
            main = mains.get(cid)
            if main is not None:
                main_snap = main.snapshot()
                snap["main_stream"] = {
                    k: main_snap[k] for k in ("state", "fps", "width", "height", "last_error_class")
                }
        muted_until = self.mute.until
        reloaded_at = self.runtime.reloaded_at
        return {
            "cameras": cameras,
            "clock": clock_status(),
            "control": {
                "alarm_muted_until": contract.utc_iso(muted_until) if muted_until else None,
                "rule_overrides": self.overrides.load(),
                "config_reloaded_at": contract.utc_iso(reloaded_at) if reloaded_at else None,
                "restart_required": list(self.runtime.restart_required),
            },
            "system": system_metrics(self.runtime.config.storage.state_dir, self._cpu),
            "detector": {"model": self.model_id, **self.pipeline.stats()},
            "uplink": self.uplink.snapshot(),
            "capture": self.pipeline.capture.stats(),
            "alarm": self.alarm.stats(),
            "outbox": {"backlog": self.outbox.backlog(), "counters": self.outbox.counters()},
            "alerts": {**self.rules.stats(), **self.writer.stats()},
        }

    # ------------------------------------------------------------------ status records

    def record_run(self) -> None:
        """Note this run (pid, start, version) for ``mclz-agent status``."""
        try:
            self.outbox.put_setting(
                RUN_KEY,
                {
                    "pid": os.getpid(),
                    "started_at": self.started,
                    "version": __version__,
                    "model": self.model_id,
                    "cameras": len(self.cameras.readers),
                },
                "agent",
            )
        except StoreError as exc:
            logger.error("run record not saved: %s", exc)

    def status_line(self) -> str:
        """One line for systemctl status: cameras online, uplink, backlog, analysis rate."""
        states = [reader.state for reader in self.cameras.readers.values()]
        online = sum(1 for s in states if s is CameraState.ONLINE)
        uplink = "connected" if self.uplink.connected else "not connected"
        try:
            backlog = sum(self.outbox.backlog().values())
        except StoreError:
            backlog = -1
        rate = self.analysed_rate
        return (
            f"{online}/{len(states)} camera(s) online; uplink {uplink}; backlog {backlog};"
            f" {rate:.1f} frame(s)/s analysed"
        )

    def note_progress(self, now: float) -> None:
        """Refresh the analysis rate, systemd's STATUS= and the stored progress record."""
        analysed = self.pipeline.frames_analysed
        frames, then = self._rate_mark
        if now > then:
            self.analysed_rate = (analysed - frames) / (now - then)
        self._rate_mark = (analysed, now)
        sd_notify(f"STATUS={self.status_line()}")
        try:
            self.outbox.put_setting(
                PROGRESS_KEY,
                {
                    "at": time.time(),
                    "analysed_per_s": round(self.analysed_rate, 3),
                    "frames": analysed,
                    "inferences": self.pipeline.inferences,
                    "uplink_connected": self.uplink.connected,
                    "uplink_last_error": self.uplink.last_error,
                    "detect_loop_age_s": round(time.monotonic() - self.pipeline.turned, 1),
                },
                "agent",
            )
        except StoreError as exc:
            logger.error("progress record not saved: %s", exc)
