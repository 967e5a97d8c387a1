"""The wiring: one process, named threads, one stop event.

Data flow::

    ingest-<camera> ──FrameSlot (newest wins)──> detect ──> rules ──> evidence ──> outbox ──> uplink
                                                                                    ▲
    health (1 s): camera debounce ──> camera status ─────────────────────────────────┤
                  heartbeat, TTL expiry, systemd watchdog ───────────────────────────┘

Threads: ``ingest-<camera>`` (one per camera), ``detect``, ``health``, ``uplink-drain``
plus paho's network thread. The main thread waits for SIGTERM/SIGINT, then stops the
threads in order so that everything committed stays committed and anything unsent is
still in the outbox for the next start. SIGHUP (``systemctl reload``) and the platform's
``reload`` command re-read the config file: rules, cameras, evidence and heartbeat apply
live, anything else is reported as needing a restart.

The per-camera dictionaries (readers, slots, pictures, ...) are replaced, never mutated,
when cameras change, so threads iterating over them never see one change size.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from agent import __version__, evidence
from agent.alarm.policy import Alarm
from agent.config import AgentConfig, CameraConfig, LoggingConfig, check_secrets, load_config
from agent.detect.detector import Detector
from agent.detect.food import FoodMonitor
from agent.detect.gate import ChangeGate, LoadGovernor
from agent.detect.model import load_model_package
from agent.detect.sampling import Capture, capture_directory
from agent.detect.views import View
from agent.errors import AgentError, ConfigError, StoreError
from agent.evidence import Evidence
from agent.ingest.frames import Frame, FrameRing, FrameSlot
from agent.ingest.picture import PictureMonitor
from agent.ingest.reader import CameraReader
from agent.records import (
    AlertEvent,
    CameraState,
    Detection,
    EvidenceInfo,
    Outage,
    Transition,
)
from agent.redact import RedactingFilter
from agent.rules.engine import Alert, RuleEngine
from agent.service.telemetry import ProcessCpu, clock_status, system_metrics
from agent.store.database import db_path
from agent.store.store import Store
from agent.uplink import messages as contract
from agent.uplink.client import Uplink
from agent.uplink.commands import CommandError, Commands, Handler
from agent.uplink.overrides import Mute, RuleOverrides, apply_live, diff_config, effective_rules

logger = logging.getLogger(__name__)
WHOLE = View()  # a camera analysed whole, in one piece

HEARTBEAT_TTL = 86400.0  # a heartbeat older than a day tells the platform nothing new
STATUS_TTL = 7 * 86400.0
EXPIRE_EVERY = 60.0  # TTL expiry and the size cap
RUN_KEY = "state.run"  # settings rows read by ``mclz-agent status``
PROGRESS_KEY = "state.progress"
WATCHDOG_STALE = 30.0  # the detect loop must have turned within this many seconds
MAX_UNSTORED_ALERTS = 1000
OCCLUDER_LABELS = ("person", "face", "head")  # detections that hide a food zone
MAIN_EVIDENCE_WITHIN = 1.0  # seconds between the detection and a usable main-stream keyframe


def setup_logging(config: LoggingConfig) -> None:
    """Log with secrets masked: under systemd to stdout without timestamps (journald adds
    them), elsewhere to stderr with timestamps."""
    under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    stamps = config.timestamps == "yes" or (config.timestamps == "auto" and not under_systemd)
    fmt = "%(levelname)s %(name)s: %(message)s"
    if stamps:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stdout if under_systemd else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    logging.getLogger("agent.uplink.client.paho").setLevel(logging.WARNING)
    logging.getLogger("libav").setLevel(logging.CRITICAL)


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd's notify socket; false if not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify(%s) failed: %s", state.split("=", maxsplit=1)[0], exc)
        return False
    return True


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2  # ping at half the timeout, as systemd recommends


class Agent:
    """The running agent: build it from a config, then :meth:`run` until stopped."""

    _analysed_rate = 0.0  # frames analysed per second over the last heartbeat interval
    # Per camera, rebuilt by _add_cameras / _remove_cameras (replaced, never mutated).
    pictures: dict[str, PictureMonitor]
    gates: dict[str, ChangeGate]
    views: dict[str, View]  # crop and tiles

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        """Open the store and load the model; ``config_path`` is what a reload re-reads.

        Raises:
            StoreError: the state directory or database cannot be used.
            ModelError: the model package is missing or invalid.
            SecretError, UplinkError: the uplink cannot be configured.
        """
        self.config = config
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.started = time.time()
        self.topics = contract.Topics(config)
        state_dir = config.storage.state_dir
        self.evidence_dir = state_dir / "evidence"
        self.outbox = _open_store(config, self.started)
        self.detector = _load_detector(config)
        package = self.detector.package
        self.model_id = f"{package.name}@{package.version}"
        self.capture = _open_capture(config, self.detector)
        self.food = FoodMonitor(config, self.outbox, config.storage.state_dir)
        self.overrides = RuleOverrides(self.outbox)
        self.mute = Mute(self.outbox)
        self.alarm = Alarm(config.alarm, self.outbox, self.mute, tz=config.identity.tz)
        self.rules = RuleEngine(
            effective_rules(config.rules, self.overrides.load()),
            package.thresholds,
            cameras=config.cameras,
            schedules=config.schedules,
            tz=config.identity.tz,
        )
        self._reload_lock = threading.Lock()
        self._reload_requested = threading.Event()
        self.reloaded_at: float | None = None
        self.restart_required: list[str] = []
        self.commands = Commands(self.outbox, self.topics.command_reply, self._command_handlers())
        self.uplink = Uplink(config, self.outbox, on_command=self.commands.handle)
        self.commands.on_reply = self.uplink.wake
        self._wake = threading.Event()
        self.pictures, self.gates, self.views = {}, {}, {}
        self._detections: dict[str, list[Detection]] = {}  # last analysed, per camera
        self.governor = LoadGovernor(config.model.max_slowdown)
        self.readers: dict[str, CameraReader] = {}
        self.slots: dict[str, FrameSlot] = {}
        # Main (full-resolution) streams, keyframes only, for evidence snapshots.
        self.main_readers: dict[str, CameraReader] = {}
        self.main_rings: dict[str, FrameRing] = {}
        self._camera_stops: dict[str, threading.Event] = {}
        self._add_cameras({cid: cam for cid, cam in config.cameras.items() if cam.enabled})
        # Alerts that could not be committed (disk full), oldest first, retried by health.
        # Alert writes (starts and ends) that could not be committed (disk full), oldest
        # first, retried by the health thread: (alert id, the write).
        self._unstored: list[tuple[str, Callable[[], None]]] = []
        self._unstored_lock = threading.Lock()
        self.alerts_dropped = 0
        self._heartbeat_now = threading.Event()
        self._last_frames: dict[str, Frame] = {}  # newest analysed frame per camera
        self._cpu = ProcessCpu()
        self._detect_turned = time.monotonic()
        self.inferences = 0
        self.inference_seconds = 0.0
        self.frames_analysed = 0
        self._rate_mark = (0, time.monotonic())  # frames analysed by then: for the rate
        self.alerts_by_type: dict[str, int] = {}
        self._detect_thread = threading.Thread(target=self._detect_loop, name="detect", daemon=True)
        self._health_thread = threading.Thread(target=self._health_loop, name="health", daemon=True)

    def _add_cameras(self, cameras: dict[str, CameraConfig]) -> list[CameraReader]:
        """Build readers for ``cameras`` (not started); return them."""
        slots, pictures, readers = dict(self.slots), dict(self.pictures), dict(self.readers)
        gates, views = dict(self.gates), dict(self.views)
        rings, mains, stops = (
            dict(self.main_rings),
            dict(self.main_readers),
            dict(self._camera_stops),
        )
        built = []
        for camera_id, camera in cameras.items():
            stop = stops[camera_id] = threading.Event()
            slot = slots[camera_id] = FrameSlot(self._wake)
            pictures[camera_id] = PictureMonitor(camera.picture)
            gates[camera_id] = ChangeGate(camera.gating)
            views[camera_id] = View.from_config(camera.view)
            readers[camera_id] = CameraReader(
                camera_id, camera, stop=stop, slot=slot, on_transition=self._on_transition
            )
            built.append(readers[camera_id])
            main = camera.main_stream()
            if main is not None:
                ring = rings[camera_id] = FrameRing()
                mains[camera_id] = CameraReader(camera_id, main, stop=stop, slot=ring, role="main")
                built.append(mains[camera_id])
        self.slots, self.pictures, self.readers = slots, pictures, readers
        self.gates, self.views = gates, views
        self.main_rings, self.main_readers, self._camera_stops = rings, mains, stops
        return built

    def _remove_cameras(self, camera_ids: list[str]) -> list[CameraReader]:
        """Stop and forget ``camera_ids``; return their readers (to be joined)."""
        gone = [
            r
            for cid in camera_ids
            for r in (self.readers.get(cid), self.main_readers.get(cid))
            if r
        ]
        for cid in camera_ids:
            if cid in self._camera_stops:
                self._camera_stops[cid].set()

        def without(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k not in camera_ids}

        self.slots, self.pictures, self.readers = (
            without(self.slots),
            without(self.pictures),
            without(self.readers),
        )
        self.main_rings, self.main_readers = without(self.main_rings), without(self.main_readers)
        self.gates, self.views = without(self.gates), without(self.views)
        self._detections = without(self._detections)
        self._camera_stops = without(self._camera_stops)
        self._last_frames = without(self._last_frames)
        return gone

    # ------------------------------------------------------------------ lifecycle

    def run(self, duration: float | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``duration`` seconds), then shut down cleanly."""
        self._install_signal_handlers()
        logger.info(
            "mclz-agent %s starting: box %s, %d camera(s), model %s",
            __version__,
            self.config.topic_root,
            len(self.readers),
            self.model_id,
        )
        self.uplink.start()
        self.alarm.start()
        for reader in (*self.readers.values(), *self.main_readers.values()):
            reader.start()
        self._detect_thread.start()
        self._health_thread.start()
        self._record_run()
        sd_notify(f"READY=1\nSTATUS={self._status_line()}")
        deadline = None if duration is None else time.monotonic() + duration
        while not self.stop_event.wait(0.5):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self._reload_from_signal()
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("run time of %.0f s reached", duration)
                self.stop_event.set()
        self._shutdown()

    def _record_run(self) -> None:
        """Note this run (pid, start, version) for ``mclz-agent status``."""
        try:
            self.outbox.put_setting(
                RUN_KEY,
                {
                    "pid": os.getpid(),
                    "started_at": self.started,
                    "version": __version__,
                    "model": self.model_id,
                    "cameras": len(self.readers),
                },
                "agent",
            )
        except StoreError as exc:
            logger.error("run record not saved: %s", exc)

    def _status_line(self) -> str:
        """One line for systemctl status: cameras online, uplink, backlog, analysis rate."""
        states = [reader.state for reader in self.readers.values()]
        online = sum(1 for s in states if s is CameraState.ONLINE)
        uplink = "connected" if self.uplink.connected else "not connected"
        try:
            backlog = sum(self.outbox.backlog().values())
        except StoreError:
            backlog = -1
        rate = self._analysed_rate
        return (
            f"{online}/{len(states)} camera(s) online; uplink {uplink}; backlog {backlog};"
            f" {rate:.1f} frame(s)/s analysed"
        )

    def _note_progress(self, now: float) -> None:
        """Refresh the analysis rate, systemd's STATUS= and the stored progress record."""
        frames, then = self._rate_mark
        if now > then:
            self._analysed_rate = (self.frames_analysed - frames) / (now - then)
        self._rate_mark = (self.frames_analysed, now)
        sd_notify(f"STATUS={self._status_line()}")
        try:
            self.outbox.put_setting(
                PROGRESS_KEY,
                {
                    "at": time.time(),
                    "analysed_per_s": round(self._analysed_rate, 3),
                    "frames": self.frames_analysed,
                    "inferences": self.inferences,
                    "uplink_connected": self.uplink.connected,
                    "uplink_last_error": self.uplink.last_error,
                    "detect_loop_age_s": round(time.monotonic() - self._detect_turned, 1),
                },
                "agent",
            )
        except StoreError as exc:
            logger.error("progress record not saved: %s", exc)

    def request_stop(self) -> None:
        """Ask the agent to stop (thread-safe, signal-safe)."""
        self.stop_event.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, _frame: FrameType | None) -> None:
            logger.info("received %s: stopping", signal.Signals(signum).name)
            self.stop_event.set()

        def reload(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested.set()  # the main loop does the work, not the handler

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, reload)

    def _shutdown(self) -> None:
        sd_notify("STOPPING=1")
        t0 = time.monotonic()
        for stop in self._camera_stops.values():
            stop.set()
        self._wake.set()
        self._detect_thread.join(timeout=1.5)
        self._health_thread.join(timeout=1.0)
        for event in self.rules.close_all():  # running alerts end with reason agent_stop
            self._store_alert_end(event)
        self._retry_unstored()
        self.alarm.stop(0.5)
        self.uplink.stop(drain_timeout=1.5)
        for reader in (*self.readers.values(), *self.main_readers.values()):
            reader.join(timeout=0.05)
        backlog = self.outbox.backlog()
        self.outbox.close()
        logger.info(
            "stopped in %.1f s; %d message(s) kept for the next start",
            time.monotonic() - t0,
            sum(backlog.values()),
        )

    # ------------------------------------------------------------------ detect thread

    def _detect_loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                self._detect_turned = time.monotonic()
                self._wake.wait(1.0)
                self._wake.clear()
                frames = [f for f in (slot.take() for slot in self.slots.values()) if f is not None]
                if frames:
                    self._analyse(frames)
                for event in self.rules.expire(time.monotonic()):  # also cameras without frames
                    self._store_alert_end(event)
        except Exception:
            logger.exception("detect thread crashed; stopping the agent so systemd restarts it")
            self.stop_event.set()

    def _analyse(self, frames: list[Frame]) -> None:
        """One batched inference over the frames that changed; rules for all of them."""
        started = time.perf_counter()
        gates = self.gates
        due = []
        for frame in frames:
            self._last_frames[frame.camera_id] = frame
            gate = gates.get(frame.camera_id)
            if gate is None or gate.should_analyse(frame.image, frame.mono):
                due.append(frame)
        if due:
            t0 = time.perf_counter()
            views = self.views
            results = self.detector.detect_views(
                [f.image for f in due], [views.get(f.camera_id, WHOLE) for f in due]
            )
            self.inference_seconds += time.perf_counter() - t0
            self.inferences += 1
            self.frames_analysed += len(due)
            for frame, detections in zip(due, results, strict=True):
                self._detections[frame.camera_id] = detections
        analysed = {id(f) for f in due}
        for frame in frames:
            # A skipped frame looks like the last analysed one: its detections stand.
            detections = self._detections.get(frame.camera_id, [])
            if self.food.has_zones(frame.camera_id):
                detections = [*detections, *self._food_detections(frame, detections)]
            self._check_picture(frame)
            if id(frame) in analysed:  # only frames the model looked at become labelling data
                self.capture.offer(frame.camera_id, frame.image, detections, frame.wall)
            for event in self.rules.update(
                frame.camera_id, detections, mono=frame.mono, wall=frame.wall, frame=frame.image
            ):
                if event.phase == "start":
                    self._store_alert(event)
                else:
                    self._store_alert_end(event)
        scale = self.governor.record(time.perf_counter() - started)
        for reader in self.readers.values():
            reader.interval_scale = scale

    def _food_detections(self, frame: Frame, detections: list[Detection]) -> list[Detection]:
        """Classify the camera's food zones when due; an uncovered zone is a detection.

        The zone's latest state stands between checks (every ``food.check_interval``): an
        ``uncovered`` zone gives a ``food_uncovered`` detection on every frame until a check
        says otherwise; ``unknown`` (a person over the tray, a large change from every
        reference) gives none, so it neither raises nor, within ``end_after``, ends an alert.
        """
        occluders = [d.box for d in detections if d.label.startswith(OCCLUDER_LABELS)]
        try:
            self.food.check(frame.camera_id, frame.image, frame.mono, occluders)
        except StoreError as exc:
            logger.error("camera %s: food references unreadable: %s", frame.camera_id, exc)
        found = []
        zones = self.food.zones.get(frame.camera_id, {})
        for zone_id, state in self.food.latest(frame.camera_id).items():
            if state.state != "uncovered" or zone_id not in zones:
                continue
            xs = [x for x, _ in zones[zone_id]]
            ys = [y for _, y in zones[zone_id]]
            found.append(
                Detection(
                    label="food_uncovered",
                    class_id=-1,
                    confidence=round(0.5 + 0.5 * state.margin, 4),
                    box=(min(xs), min(ys), max(xs), max(ys)),
                )
            )
        return found

    def _evidence_frame(self, alert: Alert) -> tuple[np.ndarray | None, str]:
        """The main stream's keyframe taken within a second of the detection, else the sub frame."""
        ring = self.main_rings.get(alert.camera_id)
        if ring is not None:
            main = ring.closest(alert.frame_wall, within=MAIN_EVIDENCE_WITHIN)
            if main is not None:
                return main.image, "main"
        return alert.frame, "sub"

    def _check_picture(self, frame: Frame) -> None:
        """Run the picture checks; a warning that starts or clears updates the camera status."""
        monitor = self.pictures.get(frame.camera_id)
        if monitor is None:  # the camera was removed by a reload meanwhile
            return
        events = monitor.update(frame.image, frame.mono)
        for event in events:
            if event.active:
                logger.warning(
                    "camera %s: picture %s: %s",
                    frame.camera_id,
                    event.condition.value,
                    event.detail,
                )
            else:
                logger.info("camera %s: picture %s cleared", frame.camera_id, event.condition.value)
        if events:
            changed = ",".join(f"{'+' if e.active else '-'}{e.condition.value}" for e in events)
            self._publish_status(frame.camera_id, reason=f"picture:{changed}")

    def _save_evidence(self, alert: Alert, file_id: str) -> Evidence | None:
        """Render and store the alert's evidence as ``<file_id>.jpg``; None when off or failed."""
        image, source = self._evidence_frame(alert)
        if not self.config.evidence.enabled or image is None:
            return None
        try:
            return evidence.save(
                replace(alert, id=file_id),
                image,
                self.config.evidence,
                self.evidence_dir,
                source,
                **self._drawing(alert),
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

    def _store_alert(self, alert: Alert) -> None:
        saved = self._save_evidence(alert, alert.id)
        event, info = alert_event(alert), evidence_info(saved)
        payload = contract.encode(contract.alert(self.config, event, info, model=self.model_id))
        attachment = (self.topics.evidence(alert.id), saved.jpeg) if saved is not None else None
        record = contract.alert_record(event, info)
        self.alerts_by_type[alert.type] = self.alerts_by_type.get(alert.type, 0) + 1
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

    def _drawing(self, alert: Alert) -> dict[str, Any]:
        """What the evidence image shows besides the boxes: name, zone, exclusions, time zone."""
        camera = self.config.cameras.get(alert.camera_id)
        zones = camera.zones if camera is not None else {}
        zone = zones.get(alert.zone) if alert.zone else None
        return {
            "camera_name": camera.name if camera is not None else "",
            "zone": zone.polygon if zone is not None else None,
            "excluded": [z.polygon for z in zones.values() if z.exclude],
            "tz": self.config.identity.tz,
        }

    def _store_alert_end(self, alert: Alert) -> None:
        """Commit an alert's end, with a better image when one came after the start."""
        # A file of its own: the start's image stays what the start message described.
        saved = self._save_evidence(alert, f"{alert.id}-end") if alert.frame is not None else None
        body = contract.alert(
            self.config, alert_event(alert), evidence_info(saved), model=self.model_id
        )
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
                self.alerts_dropped += 1
            logger.error(
                "camera %s: alert %s (%s) dropped: %d alert writes already wait for space",
                alert.camera_id,
                alert.id,
                alert.phase,
                MAX_UNSTORED_ALERTS,
            )
            return False
        self.uplink.wake()
        return True

    def _retry_unstored(self) -> None:
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
                self.uplink.wake()

    # ------------------------------------------------------------------ health thread

    def _on_transition(self, transition: Transition) -> None:
        camera_id = transition.camera_id
        outage = None
        try:
            if transition.new is CameraState.OFFLINE:
                since = transition.last_frame_wall or self.started
                self.outbox.open_outage(camera_id, since, transition.reason)
            elif transition.old is CameraState.OFFLINE:
                outage = self.outbox.close_outage(camera_id, transition.wall)
        except StoreError as exc:
            logger.error("camera %s: outage not recorded: %s", camera_id, exc)
        self._save_health()
        self._publish_status(camera_id, transition=transition, outage=outage)

    def _save_health(self) -> None:
        try:
            snapshots = {cid: reader.snapshot() for cid, reader in self.readers.items()}
            self.outbox.save_camera_health(snapshots, time.time())
        except StoreError as exc:
            logger.error("camera health not saved: %s", exc)

    def _publish_status(
        self,
        camera_id: str,
        *,
        transition: Transition | None = None,
        outage: Outage | None = None,
        reason: str = "refresh",
    ) -> None:
        """Commit a retained camera status: on a state change, a picture warning, or a refresh."""
        reader, monitor = self.readers.get(camera_id), self.pictures.get(camera_id)
        if reader is None or monitor is None:  # removed by a reload meanwhile
            return
        msg_id = uuid.uuid4().hex
        body = contract.camera_status(
            self.config,
            msg_id,
            camera_id,
            reader.snapshot(),
            now=time.time(),
            transition=transition,
            outage=outage,
            picture=sorted(c.value for c in monitor.active),
            reason=reason,
        )
        try:
            self.outbox.enqueue(
                self.topics.camera_status(camera_id),
                contract.encode(body),
                kind="camera_status",
                retain=True,
                msg_id=msg_id,
                ttl=STATUS_TTL,
                # A refresh only repeats the newest state: an unsent older refresh goes.
                supersede_key=f"refresh:{camera_id}" if reason == "refresh" else None,
            )
        except StoreError as exc:
            logger.error("camera %s: status not stored: %s", camera_id, exc)
            return
        self.uplink.wake()

    def _health_loop(self) -> None:
        next_beat = time.monotonic() + min(5.0, self.config.heartbeat.interval)
        next_expire = time.monotonic() + 5.0  # a full database is dealt with at start
        watchdog = _watchdog_interval()
        next_watchdog = time.monotonic()
        # A detect loop that has not turned for this long is hung: withhold the ping so
        # systemd restarts the agent (30 s, or the whole watchdog timeout when shorter).
        stale = min(WATCHDOG_STALE, max(5.0, 2 * watchdog)) if watchdog else WATCHDOG_STALE
        try:
            while not self.stop_event.wait(0.25 if self._heartbeat_now.is_set() else 1.0):
                now = time.monotonic()
                # The main streams too: untouched by tick, a dead one read "online" for ever.
                for reader in (*self.readers.values(), *self.main_readers.values()):
                    reader.tick(now)
                if self._unstored:
                    self._retry_unstored()
                if now >= next_beat or self._heartbeat_now.is_set():
                    self._heartbeat_now.clear()
                    self._save_health()
                    self.send_heartbeat()
                    self._note_progress(now)
                    for camera_id in self.readers:  # fresh fps, quality, frame age
                        self._publish_status(camera_id)
                    next_beat = now + self.config.heartbeat.interval  # a reload may change it
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY
                    self._housekeeping()
                if watchdog is not None and now >= next_watchdog:
                    next_watchdog = now + watchdog
                    if now - self._detect_turned < stale:
                        sd_notify("WATCHDOG=1")
                    else:
                        logger.error(
                            "detect loop stuck for %.0f s: withholding the watchdog ping",
                            now - self._detect_turned,
                        )
        except Exception:
            logger.exception("health thread crashed; stopping the agent so systemd restarts it")
            self.stop_event.set()

    def _housekeeping(self) -> None:
        """Expire messages past their TTL, keep the database under its size cap, and
        evidence images within their age and total size."""
        try:
            self.outbox.expire()
            self.outbox.enforce_cap(int(self.config.storage.max_db_mb * 1e6))
        except StoreError as exc:
            logger.error("outbox housekeeping failed: %s", exc)
        cfg = self.config.evidence
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

    def health(self) -> dict[str, Any]:
        """Everything the heartbeat reports, as plain data."""
        readers, pictures, mains = self.readers, self.pictures, self.main_readers
        cameras = {cid: r.snapshot() for cid, r in readers.items()}
        for cid, snap in cameras.items():
            snap["since"] = contract.utc_iso(readers[cid].since)
            monitor = pictures.get(cid)
            if monitor is not None:
                snap["picture"] = sorted(c.value for c in monitor.active)
                snap["picture_metrics"] = {
                    k: round(v, 2) for k, v in monitor.metrics().items() if math.isfinite(v)
                }
            gate = self.gates.get(cid)
            if gate is not None:
                snap["gating"] = gate.snapshot()
            food = self.food.latest(cid)
            if food:
                snap["food"] = {
                    zone: {"state": st.state, "margin": round(st.margin, 3)}
                    for zone, st in sorted(food.items())
                }
            main = mains.get(cid)
            if main is not None:
                main_snap = main.snapshot()
                snap["main_stream"] = {
                    k: main_snap[k] for k in ("state", "fps", "width", "height", "last_error_class")
                }
        avg_ms = 1000 * self.inference_seconds / self.inferences if self.inferences else 0.0
        muted_until = self.mute.until
        return {
            "cameras": cameras,
            "clock": clock_status(),
            "control": {
                "alarm_muted_until": contract.utc_iso(muted_until) if muted_until else None,
                "rule_overrides": self.overrides.load(),
                "config_reloaded_at": (
                    contract.utc_iso(self.reloaded_at) if self.reloaded_at else None
                ),
                "restart_required": list(self.restart_required),
            },
            "system": system_metrics(self.config.storage.state_dir, self._cpu),
            "detector": {
                "model": self.model_id,
                "model_sha256": self.detector.package.sha256,
                "backend": self.detector.backend_name,
                "inferences": self.inferences,
                "frames": self.frames_analysed,
                "avg_batch_ms": round(avg_ms, 2),
                **self.governor.snapshot(),
            },
            "uplink": self.uplink.snapshot(),
            "capture": self.capture.stats(),
            "alarm": self.alarm.stats(),
            "outbox": {"backlog": self.outbox.backlog(), "counters": self.outbox.counters()},
            "alerts": {
                **self.rules.stats(),
                "by_type": dict(self.alerts_by_type),
                "unstored": len(self._unstored),
                "dropped": self.alerts_dropped,
            },
        }

    def send_heartbeat(self) -> None:
        """Commit one heartbeat to the outbox."""
        msg_id = uuid.uuid4().hex
        h = self.health()
        body = contract.heartbeat(
            self.config, msg_id, now=time.time(), started=self.started, health=h
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
        self.uplink.wake()

    # ------------------------------------------------------------------ reload

    def reload(self, source: str) -> dict[str, Any]:
        """Re-read the config file and apply what can change live.

        Rules (with the stored overrides on top), cameras (added, removed, changed ones
        restarted), evidence and heartbeat settings apply at once; a change anywhere else
        (mqtt, storage, model, identity, logging) is reported in ``restart_required`` and
        in the heartbeat, and the running agent keeps its old values there.

        Raises:
            ConfigError: no config file, or the file is not valid: nothing is changed.
        """
        if self.config_path is None:
            raise ConfigError("the agent runs on embedded defaults: there is no file to reload")
        with self._reload_lock:
            new = load_config(self.config_path)
            problems = check_secrets(new)
            if problems:
                raise ConfigError(f"{self.config_path}: secrets cannot be read", problems)
            change = diff_config(self.config, new)
            self.restart_required = change.restart_required
            self.reloaded_at = time.time()
            self.config = apply_live(self.config, new)
            if {"rules", "cameras", "schedules"} & set(change.live):
                for event in self.rules.configure(
                    effective_rules(new.rules, self.overrides.load()),
                    cameras=new.cameras,
                    schedules=new.schedules,
                ):
                    self._store_alert_end(event)
            enabled = {cid: cam for cid, cam in new.cameras.items() if cam.enabled}
            gone = sorted(set(self.readers) - set(enabled))
            restarted = sorted(
                cid
                for cid in set(self.readers) & set(enabled)
                if self.readers[cid].config != enabled[cid]
            )
            added = sorted(set(enabled) - set(self.readers))
            for reader in self._remove_cameras(gone + restarted):
                reader.join(timeout=0.05)
            now = time.time()
            for cid in gone:
                try:
                    self.outbox.close_outage(cid, now)
                except StoreError as exc:
                    logger.error("camera %s: outage not closed: %s", cid, exc)
                self._clear_status(cid)
            for reader in self._add_cameras({cid: enabled[cid] for cid in added + restarted}):
                reader.start()
            if "cameras" in change.live or "food" in change.restart_required:
                self.food = FoodMonitor(self.config, self.outbox, self.config.storage.state_dir)
        result = {
            "source": source,
            "changed": change.live + change.restart_required,
            "applied": change.live,
            "restart_required": change.restart_required,
            "cameras_added": added,
            "cameras_removed": gone,
            "cameras_restarted": restarted,
        }
        logger.info(
            "config reloaded (%s): applied %s; needs a restart: %s; cameras +%s -%s ~%s",
            source,
            ",".join(change.live) or "nothing",
            ",".join(change.restart_required) or "nothing",
            ",".join(result["cameras_added"]) or "-",
            ",".join(result["cameras_removed"]) or "-",
            ",".join(result["cameras_restarted"]) or "-",
        )
        self._heartbeat_now.set()  # the platform sees the new state at once
        return result

    def _reload_from_signal(self) -> None:
        sd_notify("RELOADING=1")
        try:
            self.reload("SIGHUP")
        except ConfigError as exc:
            logger.error("reload refused, the running config stays: %s", exc)
            for problem in exc.problems:
                logger.error("  %s", problem)
        except Exception:  # the main loop's edge: a bug in reload must not stop the agent
            logger.exception("reload failed, the running config stays")
        sd_notify(f"READY=1\nSTATUS={self._status_line()}")

    def _clear_status(self, camera_id: str) -> None:
        """Delete a removed camera's retained status (an empty retained message)."""
        try:
            self.outbox.enqueue(
                self.topics.camera_status(camera_id),
                b"",
                kind="camera_status",
                retain=True,
                msg_id=uuid.uuid4().hex,
                ttl=STATUS_TTL,
            )
        except StoreError as exc:
            logger.error("camera %s: retained status not cleared: %s", camera_id, exc)
            return
        self.uplink.wake()

    # ------------------------------------------------------------------ commands

    def _command_handlers(self) -> dict[str, Handler]:
        return {
            "ping": lambda _args: {"pong": True, "agent_version": __version__},
            "heartbeat": self._cmd_heartbeat,
            "status": lambda _args: self.health(),
            "snapshot": self._cmd_snapshot,
            "resend": self._cmd_resend,
            "mute": self._cmd_mute,
            "set": self._cmd_set,
            "reload": self._cmd_reload,
        }

    def _cmd_heartbeat(self, _args: dict[str, Any]) -> dict[str, Any]:
        self._heartbeat_now.set()
        return {"scheduled": True}

    def _cmd_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """The camera's latest analysed frame as a JPEG (base64) in the reply."""
        camera_id = args.get("camera")
        if not isinstance(camera_id, str) or camera_id not in self.readers:
            raise CommandError(f"unknown camera {camera_id!r} (known: {', '.join(self.readers)})")
        frame = self._last_frames.get(camera_id)
        if frame is None:
            raise CommandError(
                f"camera {camera_id} has no frame yet ({self.readers[camera_id].state.value})"
            )
        # Base64 grows the JPEG by a third: keep the reply under a 1 MB packet limit.
        budget = self.config.evidence.model_copy(
            update={"max_bytes": min(self.config.evidence.max_bytes, 700_000)}
        )
        jpeg, width, height = evidence.encode_jpeg(frame.image, budget)
        return {
            "camera": camera_id,
            "taken_at": contract.utc_iso(frame.wall),
            "width": width,
            "height": height,
            "mime": "image/jpeg",
            "data_b64": base64.b64encode(jpeg).decode("ascii"),
        }

    def _cmd_resend(self, args: dict[str, Any]) -> dict[str, Any]:
        """Queue the stored alerts raised in [since, until] again (ISO-8601 or epoch seconds)."""
        since = parse_time(args.get("since"), "since")
        until = parse_time(args.get("until", time.time()), "until")
        count = self.outbox.requeue_alerts(since, until, self.topics.alert)
        self.uplink.wake()
        return {"requeued": count}

    def _cmd_mute(self, args: dict[str, Any]) -> dict[str, Any]:
        """Silence the on-site alarm for ``minutes`` (0 ends the mute); kept across restarts."""
        until = self.mute.set(args.get("minutes"), source="command:mute")
        self._heartbeat_now.set()
        return {"muted_until": contract.utc_iso(until) if until else None}

    def _cmd_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """Change a rule's threshold, durations, cooldown, severity or enabled; persisted."""
        name, rule, override = self.overrides.set(self.config.rules, args, self.config.schedules)
        for event in self.rules.configure(
            effective_rules(self.config.rules, self.overrides.load())
        ):
            self._store_alert_end(event)
        logger.info("rule %s changed by the platform: %s", name, override or "reset")
        self._heartbeat_now.set()
        return {
            "rule": name,
            "override": override,
            "effective": rule.model_dump(mode="json"),
        }

    def _cmd_reload(self, _args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.reload("command")
        except ConfigError as exc:
            raise CommandError("; ".join([str(exc), *exc.problems])) from None


def _open_store(config: AgentConfig, started: float) -> Store:
    """Open (or recover) the database and close the outages the previous run left open.

    Raises:
        StoreError: the state directory or database cannot be used.
    """
    outbox = Store(db_path(config.storage.state_dir), ttl=config.storage.message_ttl)
    closed = outbox.close_open_outages(started, "agent_restart")
    if closed:
        logger.info("closed %d camera outage(s) left open by the previous run", closed)
    _end_alerts_left_open(config, outbox)
    if outbox.recovered_from is not None:
        logger.error("started a fresh database; the corrupt one is at %s", outbox.recovered_from)
    return outbox


def _end_alerts_left_open(config: AgentConfig, outbox: Store) -> None:
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


def _open_capture(config: AgentConfig, detector: Detector) -> Capture:
    """The labelling capture, told which confidence counts for the rules, per label."""
    package = detector.package
    thresholds = dict(package.thresholds)
    for rule in config.rules.values():
        if rule.min_confidence is not None:
            for label in rule.labels:
                thresholds[label] = rule.min_confidence
    return Capture(config.capture, package.labels, thresholds, capture_directory(config))


def _load_detector(config: AgentConfig) -> Detector:
    """Load and verify the model package; warn about rule labels the model lacks.

    Raises:
        ModelError: the model package is missing or invalid.
    """
    package = load_model_package(config.model.path)
    detector = Detector(
        package,
        backend=config.model.backend,
        threads=config.model.threads,
        conf_threshold=config.model.conf_threshold,
        iou_threshold=config.model.iou_threshold,
    )
    labels = {label for rule in config.rules.values() for label in rule.labels}
    missing = sorted(labels - set(package.labels))
    if missing:
        logger.warning(
            "rules use labels the model %s@%s does not have: %s",
            package.name,
            package.version,
            ", ".join(missing),
        )
    return detector


def parse_time(value: object, name: str) -> float:
    """Epoch seconds from a number or an ISO-8601 string.

    Raises:
        CommandError: neither.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise CommandError(f"'{name}' is not a plausible time: too large") from None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise CommandError(f"'{name}' must be epoch seconds or an ISO-8601 time, not {value!r}")


def alert_event(alert: Alert) -> AlertEvent:
    """The rule engine's alert as the MQTT messages take it (agent.records): without its frame."""
    return AlertEvent(
        id=alert.id,
        type=alert.type,
        severity=alert.severity,
        camera_id=alert.camera_id,
        started_at=alert.started_at,
        raised_at=alert.raised_at,
        confidence=alert.confidence,
        detections=alert.detections,
        zone=alert.zone,
        phase=alert.phase,
        ended_at=alert.ended_at,
        end_reason=alert.end_reason,
        hits=alert.hits,
    )


def evidence_info(saved: Evidence | None) -> EvidenceInfo | None:
    """What the alert message says about a saved snapshot; None without one."""
    if saved is None:
        return None
    return EvidenceInfo(
        path=str(saved.path),
        width=saved.width,
        height=saved.height,
        size=len(saved.jpeg),
        sha256=saved.sha256,
        source=saved.source,
    )


def run_agent(
    config: AgentConfig, duration: float | None = None, config_path: Path | None = None
) -> None:
    """Build and run the agent (the body of ``mclz-agent run``).

    Raises:
        AgentError: a subclass naming what could not be started.
    """
    agent = Agent(config, config_path)
    try:
        agent.run(duration)
    except AgentError:
        agent.request_stop()
        raise
