"""The wiring: one process, named threads, one stop event.

Data flow::

    ingest-<camera> ──FrameSlot (newest wins)──> detect ──> rules ──> evidence ──> outbox ──> uplink
                                                                                    ▲
    health (1 s): camera debounce ──> camera status ─────────────────────────────────┤
                  heartbeat, TTL expiry, systemd watchdog ───────────────────────────┘

The parts, each a module of this package, composed here with explicit collaborators:
:class:`~agent.service.pipeline.Pipeline` (the detect thread: gate, detect, food, rules),
:class:`~agent.service.alerts.AlertWriter` (evidence, the store write and its retry, the
alarm hand-off), :class:`~agent.service.status.CameraStatus` (outages, retained camera
status), :class:`~agent.service.health.Health` (the health thread and the heartbeat),
:class:`~agent.service.handlers.Handlers` (commands and the config reload); what they share
is in :mod:`agent.service.runtime` (the per-camera parts, and the config in force).

Threads, who starts them, and what stops them (the names are relied on by tests and docs):

* ``ingest-<camera>``, ``ingest-<camera>/main``: started by the service, never by the
  reader: :meth:`Cameras.start <agent.service.runtime.Cameras.start>` runs
  ``CameraReader.run`` for each reader, from :meth:`Agent.run` and from a reload that adds
  or restarts a camera. Each camera has its own stop event (set when it is removed, and
  for all at shutdown).
* ``detect`` (``Pipeline.run``) and ``health`` (``Health.run``): started by
  :meth:`Agent.run`, stopped by :attr:`Agent.stop_event`; each sets it when it crashes,
  so the agent exits and systemd restarts it.
* ``uplink-drain`` and paho's network thread: started by ``Uplink.start`` and ended by
  ``Uplink.stop``, both called only here: the uplink keeps them because its stop must wait
  for PUBACKs, stop the drain, publish ``offline`` and disconnect in that order.
* ``alarm``: started by ``Alarm.start`` (only with a sounder) and ended by ``Alarm.stop``,
  both called only here: its stop also cancels a play in progress.
* ``web`` (the installer page, only with ``web.enabled``): started by :meth:`Agent.run`
  through :func:`~agent.service.web.start_page`, stopped first at shutdown (within 2 s).

Building an :class:`Agent` starts no thread (tests/test_fuzz.py checks it); nothing but
:meth:`Agent.run` and a reload does. The main thread waits for SIGTERM/SIGINT, then stops
the threads in order so that everything committed stays committed and anything unsent is
still in the outbox for the next start. SIGHUP (``systemctl reload``) and the platform's
``reload`` command re-read the config file: rules, cameras, evidence and heartbeat apply
live, anything else is reported as needing a restart.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.alarm.policy import Alarm
from agent.config import AgentConfig
from agent.detect.detector import Detector
from agent.detect.food import FoodMonitor
from agent.detect.gate import LoadGovernor
from agent.detect.model import load_model_package
from agent.detect.pool import DetectorPool, resolve_workers
from agent.detect.sampling import Capture, capture_directory
from agent.errors import AgentError, WebError
from agent.ingest.memory import map_large_buffers
from agent.rules.engine import RuleEngine
from agent.service.alerts import AlertWriter, end_alerts_left_open
from agent.service.handlers import Handlers, parse_time
from agent.service.health import Health
from agent.service.pipeline import Pipeline
from agent.service.runtime import Cameras, Runtime
from agent.service.status import CameraStatus
from agent.service.systemd import sd_notify, setup_logging
from agent.service.web import AgentWebBackend, start_page
from agent.store.database import db_path
from agent.store.store import Store
from agent.uplink import messages as contract
from agent.uplink.client import Uplink
from agent.uplink.commands import Commands
from agent.uplink.overrides import Mute, RuleOverrides, effective_rules

if TYPE_CHECKING:
    from agent.web.server import WebServer

# parse_time and setup_logging live in handlers and systemd; the CLI imports them from here.
__all__ = ["Agent", "parse_time", "run_agent", "sd_notify", "setup_logging"]

logger = logging.getLogger(__name__)


class Agent:
    """The running agent: build it from a config, then :meth:`run` until stopped."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None) -> None:
        """Open the store and load the model; ``config_path`` is what a reload re-reads.

        Raises:
            StoreError: the state directory or database cannot be used.
            ModelError: the model package is missing or invalid.
            SecretError, UplinkError: the uplink cannot be configured.
        """
        # Before any thread: freed frames go back to the system, not to an arena per thread.
        map_large_buffers()
        self.config_path = config_path
        self.stop_event = threading.Event()
        self.started = time.time()
        self.topics = contract.Topics(config)
        evidence_dir = config.storage.state_dir / "evidence"
        self.outbox = _open_store(config, self.started)
        self.detector = _load_detector(config)
        package = self.detector.package
        self.model_id = f"{package.name}@{package.version}"
        capture = _open_capture(config, self.detector)
        food = FoodMonitor(config, self.outbox, config.storage.state_dir)
        self.runtime = Runtime(config, food)
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
        self.uplink = Uplink(config, self.outbox)  # its command handler is set below
        self._wake = threading.Event()  # a frame arrived: the detect loop turns
        self._heartbeat_now = threading.Event()
        self._reload_requested = threading.Event()  # SIGHUP: the main loop reloads
        self.cameras = Cameras(self._wake)
        self.alerts = AlertWriter(
            self.runtime,
            self.cameras,
            self.outbox,
            self.topics,
            self.alarm,
            model_id=self.model_id,
            evidence_dir=evidence_dir,
            on_commit=self.uplink.wake,
        )
        self.status = CameraStatus(
            self.runtime,
            self.cameras,
            self.outbox,
            self.topics,
            started=self.started,
            on_commit=self.uplink.wake,
        )
        self.pipeline = Pipeline(
            self.runtime,
            self.cameras,
            self.detector,
            self.rules,
            self.alerts,
            capture=capture,
            status=self.status,
            governor=LoadGovernor(config.model.max_slowdown),
            wake=self._wake,
        )
        self.health = Health(
            self.runtime,
            self.cameras,
            self.status,
            self.pipeline,
            self.alerts,
            outbox=self.outbox,
            topics=self.topics,
            uplink=self.uplink,
            alarm=self.alarm,
            rules=self.rules,
            mute=self.mute,
            overrides=self.overrides,
            model_id=self.model_id,
            started=self.started,
            evidence_dir=evidence_dir,
            heartbeat_now=self._heartbeat_now,
        )
        self.handlers = Handlers(
            self.runtime,
            self.cameras,
            self.status,
            self.health,
            self.alerts,
            outbox=self.outbox,
            topics=self.topics,
            uplink=self.uplink,
            rules=self.rules,
            overrides=self.overrides,
            mute=self.mute,
            config_path=config_path,
            heartbeat_now=self._heartbeat_now,
        )
        self.commands = Commands(
            self.outbox, self.topics.command_reply, self.handlers.table(), self.uplink.wake
        )
        self.uplink.on_command = self.commands.handle
        self.web_backend = AgentWebBackend(
            self.runtime,
            self.cameras,
            self.handlers,
            self.health,
            mute=self.mute,
            store=self.outbox,
            config_path=config_path,
            evidence_dir=evidence_dir,
            heartbeat_now=self._heartbeat_now,
        )
        self.web: WebServer | None = None  # the installer page, while it is served
        enabled = {cid: cam for cid, cam in config.cameras.items() if cam.enabled}
        self.cameras.add(enabled, self.status.on_transition)
        self._detect_thread = threading.Thread(
            target=self.pipeline.run, args=(self.stop_event,), name="detect", daemon=True
        )
        self._health_thread = threading.Thread(
            target=self.health.run, args=(self.stop_event,), name="health", daemon=True
        )

    @property
    def config(self) -> AgentConfig:
        """The config in force (a reload replaces it)."""
        return self.runtime.config

    def reload(self, source: str) -> dict[str, Any]:
        """Re-read the config file and apply what can change live (see :meth:`Handlers.reload`).

        Raises:
            ConfigError: no config file, or the file is not valid: nothing is changed.
        """
        return self.handlers.reload(source)

    # ------------------------------------------------------------------ lifecycle

    def run(self, duration: float | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``duration`` seconds), then shut down cleanly."""
        self._install_signal_handlers()
        logger.info(
            "mclz-agent %s starting: box %s, %d camera(s), model %s",
            __version__,
            self.config.topic_root,
            len(self.cameras.readers),
            self.model_id,
        )
        self.uplink.start()
        self.alarm.start()
        self.cameras.start(self.cameras.all_readers())
        self._detect_thread.start()
        self._health_thread.start()
        self.health.record_run()
        if self.config.web.enabled:
            self._start_web()
        sd_notify(f"READY=1\nSTATUS={self.health.status_line()}")
        deadline = None if duration is None else time.monotonic() + duration
        while not self.stop_event.wait(0.5):
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.handlers.reload_from_signal()
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("run time of %.0f s reached", duration)
                self.stop_event.set()
        self._shutdown()

    def _start_web(self) -> None:
        """Serve the installer page; one that cannot start is logged and the agent goes on.

        The page is the installer's tool: a port taken by another program must not stop the
        kitchen's alerts (systemd would restart the agent into the same failure for ever).
        """
        try:
            self.web = start_page(self.web_backend, self.config.web)
        except WebError as exc:
            logger.error("installer page not served: %s", exc)

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
        if self.web is not None:  # first: no change from the page while the parts stop
            self.web.stop()
            self.web = None
        self.cameras.stop_all()
        self._wake.set()
        self._detect_thread.join(timeout=1.5)
        self.detector.close()
        self._health_thread.join(timeout=1.0)
        for event in self.rules.close_all():  # running alerts end with reason agent_stop
            self.alerts.ended(event)
        self.alerts.retry_unstored()
        self.alarm.stop(0.5)
        self.uplink.stop(drain_timeout=1.5)
        self.cameras.join(self.cameras.all_readers(), timeout=0.05)
        backlog = self.outbox.backlog()
        self.outbox.close()
        logger.info(
            "stopped in %.1f s; %d message(s) kept for the next start",
            time.monotonic() - t0,
            sum(backlog.values()),
        )


def _open_store(config: AgentConfig, started: float) -> Store:
    """Open (or recover) the database and close the outages the previous run left open.

    Raises:
        StoreError: the state directory or database cannot be used.
    """
    outbox = Store(db_path(config.storage.state_dir), ttl=config.storage.message_ttl)
    closed = outbox.close_open_outages(started, "agent_restart")
    if closed:
        logger.info("closed %d camera outage(s) left open by the previous run", closed)
    end_alerts_left_open(config, outbox)
    if outbox.recovered_from is not None:
        logger.error("started a fresh database; the corrupt one is at %s", outbox.recovered_from)
    return outbox


def _open_capture(config: AgentConfig, detector: DetectorPool) -> Capture:
    """The labelling capture, told which confidence counts for the rules, per label."""
    package = detector.package
    thresholds = dict(package.thresholds)
    for rule in config.rules.values():
        if rule.min_confidence is not None:
            for label in rule.labels:
                thresholds[label] = rule.min_confidence
    return Capture(config.capture, package.labels, thresholds, capture_directory(config))


def _load_detector(config: AgentConfig) -> DetectorPool:
    """Load and verify the model package, once per detect worker; warn about rule labels the
    model lacks.

    Raises:
        ModelError: the model package is missing or invalid.
    """
    package = load_model_package(config.model.path)
    model = config.model
    workers = resolve_workers(model.workers, model.threads)

    def make() -> Detector:
        return Detector(
            package,
            backend=model.backend,
            threads=model.threads,
            conf_threshold=model.conf_threshold,
            iou_threshold=model.iou_threshold,
            precision=model.precision,
        )

    pool = DetectorPool(make, workers)
    labels = {label for rule in config.rules.values() for label in rule.labels}
    missing = sorted(labels - set(package.labels))
    if missing:
        logger.warning(
            "rules use labels the model %s@%s does not have: %s",
            package.name,
            package.version,
            ", ".join(missing),
        )
    return pool


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
