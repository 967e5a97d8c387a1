"""Soak the agent: many cameras, rates 10x the defaults, random faults, then a verdict.

    .venv/bin/python scripts/bench/soak.py [--duration 3600] [--cameras 8] [--seed N] [--json OUT]

Everything runs on loopback: a mosquitto with persistence (sessions and queued QoS 1
messages survive a restart, even kill -9), one GStreamer RTSP server per camera looping a
clip in which a magenta square shows for five seconds every 24-36 s (the synthetic
pattern model calls it ``head_bare``, so every camera raises an alert per pass), the agent
as ``mclz-agent run`` (heartbeat every 6 s, cameras offline after 12 s), and a platform
subscriber: a persistent MQTT 5 session (fixed client id, clean start off) that records
every alert, evidence image, camera status and heartbeat it receives.

For ``--duration`` seconds a fault injector, seeded, fires a fault every ``--fault-every``
seconds on average (exponential gaps), never two at once on the same component, and the
kinds come in shuffled rounds so that every kind shows up early:

* ``broker``: mosquitto kill -9, restarted on the same port 2-20 s later;
* ``camera``: one camera's RTSP server kill -9, restarted 0.5-2 s (blip), 5-15 s (mid)
  or 15-40 s (long) later;
* ``stall``: one camera's RTSP server SIGSTOP'ed for 1-2.5 s (blip) or 15-25 s (long),
  then SIGCONT: the socket stays open and nothing flows;
* ``agent``: the agent kill -9, a new one started on the same config and state 1-5 s later.

Then injection stops, the cameras are given time to come back, every committed alert
is given time to arrive, and the agent is stopped with SIGTERM (a last run with every
camera disabled drains what the stop left in the outbox). The checks, each a row of the
verdict table (PASS, FAIL, or SKIP when the run was too short to tell):

* every alert message committed (the ``alerts`` table: the start, and ``<id>:end`` for
  each ended alert) reached the subscriber (at least once; duplicates are counted), with
  its evidence image; nothing arrived that the database does not hold; alerts left
  without an end were all raised by an agent that was then killed -9;
* ``PRAGMA integrity_check`` is ``ok``, no ``agent.db.corrupt-*`` file, no recovery
  counted, nothing left in the outbox;
* the longest-lived agent process: RSS growth from the first to the last fifth of its
  life (after a 20 s warm-up) under 20 % or 30 MB; thread and descriptor counts of its
  last fifth no higher than the highest of its first half (+2 threads, +4 descriptors);
* the agent exited only by our kill -9s and, at the end, with 0 within 10 s of SIGTERM;
  its log holds no traceback, "internal error" or "crashed";
* offline episodes (``camera_outages``) match the injected outages: an episode for each
  long one, none for a blip, none without a cause (see :func:`expectation`,
  :func:`explained_by` and :func:`cause_of`);
* every recorded episode was announced (an ``offline`` camera status); heartbeats were
  never missing for long except across an agent kill; alerts kept coming.

Exit status 0 when no check failed, 1 otherwise, 2 when the soak could not be set up.
The work directory (config, state, logs, broker) is kept unless every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import CameraConfig
from agent.ingest.reader import BACKOFF_MIN
from agent.store.database import db_path
from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.clips import Square, SquaresFn, make_clip
from mclz_testkit.common import ServiceError
from mclz_testkit.rtsp import RtspServer
from mclz_testkit.synthetic_model import build_pattern_model

REPO = Path(__file__).resolve().parents[2]

logger = logging.getLogger("soak")

ROOT = "mclz/soak/s-001/box-01"
FAULT_KINDS = ("broker", "camera", "stall", "agent")

# The agent's rates, 10x its defaults (heartbeat 60 s, ...), and its camera timeouts.
HEARTBEAT_S = 6.0
OFFLINE_AFTER_S = 12.0
STALL_TIMEOUT_S = 5.0
OPEN_TIMEOUT_S = 3.0
MIN_DURATION_S = 1.0
END_AFTER_S = 3.0
COOLDOWN_S = 8.0

# Clips: (period, second at which the magenta square appears); it stays SQUARE_S.
CLIP_VARIANTS = ((24.0, 6.0), (30.0, 14.0), (36.0, 22.0))
SQUARE_S = 5.0
CLIP_FPS = 10
MAGENTA = (255, 0, 255)

# Matching rules (see expectation() and explained_by()).
TOLERANCE_S = 3.0  # clock slack around a fault window: the last frame is up to ~1 s old
MARGIN_S = 2.0  # distance from offline_after for an outcome to be certain
RECONNECT_OVERHEAD_S = 2.0  # RTSP setup, first keyframe, the health thread's 1 s tick
AGENT_STARTUP_S = 6.0  # spawn to cameras being read (imports, model, RTSP setup)

# Thresholds of the resource checks.
WARMUP_S = 20.0
MIN_SPAN_S = 90.0  # less of the longest life after warm-up: too short to tell (SKIP)
RSS_GROWTH_RATIO = 0.20
RSS_GROWTH_MB = 30.0
THREAD_SLACK = 2
FD_SLACK = 4
HEARTBEAT_GAP_FACTOR = 2.5
MIN_ALERT_SHARE = 0.3  # of the alerts the clips would give with no fault at all
SAMPLE_EVERY_S = 2.0
PROGRESS_EVERY_S = 60.0
LOG_MARKERS = ("Traceback", "internal error", "crashed")
SUBSCRIBER_SESSION_S = 7 * 86400


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SoakOptions:
    """What to run: how long, how many cameras, which faults and how often."""

    duration: float = 3600.0
    cameras: int = 8
    seed: int = 0
    fault_every: float = 60.0
    kinds: tuple[str, ...] = FAULT_KINDS
    max_outage: float = 40.0  # longest camera kill / stall / broker outage, seconds
    recovery_timeout: float = 90.0  # after injection: wait this long at most for cameras
    workdir: Path | None = None  # None: a temporary directory, removed when all passed


@dataclass
class Fault:
    """One injected fault: what, on which component, and when it was in force (wall clock)."""

    kind: str
    target: str  # "broker", "agent" or a camera id
    planned_s: float
    band: str = "-"  # camera and stall faults: blip, mid or long
    start: float = 0.0  # just before the component was hit
    end: float | None = None  # when it was back (READY, SIGCONT, the new agent spawned)
    error: str = ""

    @property
    def duration(self) -> float:
        """How long the component was out (planned, when the end was never reached)."""
        return (self.end if self.end is not None else self.start + self.planned_s) - self.start


@dataclass
class AgentRun:
    """One agent process from spawn to exit, with its resource samples."""

    index: int
    pid: int
    started: float
    role: str = "soak"  # soak, or drain (the last run, every camera disabled)
    ended: float | None = None
    exit_code: int | None = None
    how: str = "running"  # killed (our kill -9), stopped (our SIGTERM), died (by itself)
    stop_seconds: float | None = None
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, kB, thr, fds


@dataclass(frozen=True)
class Episode:
    """A row of the agent's ``camera_outages`` table."""

    camera: str
    since: float
    until: float | None
    duration_s: float | None
    reason: str
    closed_by: str | None


@dataclass(frozen=True)
class StoredAlert:
    """A row of the agent's ``alerts`` table (what the checks need of it)."""

    id: str
    camera: str
    raised_at: float
    ended_at: float | None
    end_reason: str | None
    has_evidence: bool


@dataclass
class Received:
    """What the platform subscriber got, message by message (wall clock of arrival)."""

    alerts: list[tuple[float, str, str, str]] = field(default_factory=list)  # at, id, alert, ev
    evidence: Counter[str] = field(default_factory=Counter)  # alert id -> images
    statuses: list[tuple[float, str, str, float]] = field(
        default_factory=list
    )  # at, cam, st, since
    heartbeats: dict[str, float] = field(default_factory=dict)  # message id -> ts
    connects: int = 0
    sessions_present: int = 0


@dataclass
class Observations:
    """Everything the checks look at, gathered after the run."""

    options: SoakOptions
    faults: list[Fault]
    runs: list[AgentRun]
    received: Received
    alerts: list[StoredAlert]
    episodes: list[Episode]
    outbox_left: dict[str, int]
    integrity: list[str]
    corrupt_files: list[str]
    counters: dict[str, int]
    log_problems: list[str]
    harness_errors: list[str]
    injection: tuple[float, float]  # wall clock of the first agent start and the final stop


@dataclass(frozen=True)
class Verdict:
    """One row of the verdict table."""

    check: str
    expected: str
    measured: str
    outcome: str  # PASS, FAIL or SKIP
    details: tuple[str, ...] = ()


@dataclass
class SoakReport:
    """The verdicts and the numbers behind them."""

    verdicts: list[Verdict]
    observations: Observations
    workdir: Path
    wall_s: float

    @property
    def ok(self) -> bool:
        """Whether no check failed (SKIP is not a failure)."""
        return all(v.outcome != "FAIL" for v in self.verdicts)

    def table(self) -> str:
        """The verdict table in markdown."""
        lines = ["| check | expected | measured | verdict |", "|---|---|---|---|"]
        for v in self.verdicts:
            cells = (v.check, v.expected, v.measured, v.outcome)
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines)

    def failure_details(self, limit: int = 12) -> str:
        """The details of every failed check, ``limit`` lines each."""
        out = []
        for v in self.verdicts:
            if v.outcome == "FAIL" and v.details:
                out.append(f"{v.check}:")
                out.extend(f"  {line}" for line in v.details[:limit])
                if len(v.details) > limit:
                    out.append(f"  ... {len(v.details) - limit} more")
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        """Everything as plain data, for ``--json``."""
        obs = self.observations
        return {
            "ok": self.ok,
            "wall_s": round(self.wall_s, 1),
            "workdir": str(self.workdir),
            "options": {
                k: str(v) if isinstance(v, Path) else v for k, v in asdict(obs.options).items()
            },
            "verdicts": [asdict(v) for v in self.verdicts],
            "faults": [asdict(f) for f in obs.faults],
            "runs": [asdict(r) for r in obs.runs],
            "alerts_stored": len(obs.alerts),
            "alert_messages_received": len(obs.received.alerts),
            "episodes": [asdict(e) for e in obs.episodes],
            "outbox_left": obs.outbox_left,
            "counters": obs.counters,
            "log_problems": obs.log_problems,
            "harness_errors": obs.harness_errors,
            "subscriber": {
                "connects": obs.received.connects,
                "sessions_present": obs.received.sessions_present,
                "heartbeats": len(obs.received.heartbeats),
                "statuses": len(obs.received.statuses),
            },
        }


# --------------------------------------------------------------------------- services


class PersistentBroker(Broker):
    """mosquitto that keeps sessions and queued QoS 1 messages on disk across restarts."""

    def _write_config(self) -> None:
        super()._write_config()
        persistence = "\n".join(
            [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
                # Save after every change (a queued message, a subscription): a kill -9 then
                # loses at most what came in during the last loop turn, as close to durable
                # as mosquitto gets. The soak's rates make that a few small writes a second.
                "autosave_on_changes true",
                "autosave_interval 1",
                "max_queued_messages 100000",
            ]
        )
        text = self.conf_path.read_text()
        self.conf_path.write_text(text.replace("persistence false", persistence))


def parse_ts(text: str) -> float:
    """Epoch seconds of the contract's UTC timestamps (``2026-11-26T13:45:00.123Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class PlatformSubscriber:
    """The platform's side: a persistent MQTT 5 session that records what it receives.

    Fixed client id, clean start off and a week of session expiry: across a broker restart
    (with persistence) the broker keeps its subscriptions and queues QoS 1 messages for it.
    paho reconnects forever; the subscriptions are renewed on every connect all the same.
    """

    def __init__(self, broker: Broker, root: str, client_id: str) -> None:
        self.broker = broker
        self.root = root
        self.received = Received()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=True,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; return once the broker acknowledged the subscriptions.

        Raises:
            ServiceError: the broker did not accept the connection or the subscriptions.
        """
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SUBSCRIBER_SESSION_S
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=10,
                clean_start=False,
                properties=properties,
            )
        except OSError as exc:
            raise ServiceError(f"subscriber cannot connect to {self.broker.url}: {exc}") from exc
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise ServiceError(f"subscriber not subscribed on {self.broker.url} within {timeout} s")

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.warning("subscriber: connection refused: %s", reason_code)
            return
        with self._lock:
            self.received.connects += 1
            self.received.sessions_present += int(bool(flags.session_present))
        topics = ("alert", "evidence/+", "camera/+/status", "heartbeat")
        client.subscribe([(f"{self.root}/{t}", 1) for t in topics])

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if any(rc.is_failure for rc in reason_codes):
            logger.error("subscriber: subscription refused: %s", [str(r) for r in reason_codes])
            return
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        topic = msg.topic[len(self.root) + 1 :]
        if topic.startswith("evidence/"):
            with self._lock:
                self.received.evidence[topic.split("/", 1)[1]] += 1
            return
        if not msg.payload:  # the empty retained message of a removed camera
            return
        try:
            body = json.loads(msg.payload)
        except ValueError:
            logger.error("subscriber: %s is not JSON: %r", msg.topic, msg.payload[:80])
            return
        with self._lock:
            if topic == "alert":
                self.received.alerts.append(
                    (now, str(body["id"]), str(body["alert_id"]), str(body["event"]))
                )
            elif topic.startswith("camera/"):
                self.received.statuses.append(
                    (now, str(body["camera"]), str(body["state"]), parse_ts(body["since"]))
                )
            elif topic == "heartbeat":
                self.received.heartbeats[str(body["id"])] = parse_ts(body["ts"])

    def alert_ids(self) -> set[str]:
        """Message ids of the alert messages received so far."""
        with self._lock:
            return {msg_id for _at, msg_id, _alert, _event in self.received.alerts}

    def latest_states(self, after: float) -> dict[str, str]:
        """Each camera's last state received after ``after`` (wall clock)."""
        with self._lock:
            return {cam: state for at, cam, state, _since in self.received.statuses if at > after}

    def counts(self) -> tuple[int, int]:
        """Alert messages and heartbeats received so far."""
        with self._lock:
            return len(self.received.alerts), len(self.received.heartbeats)

    def close(self) -> None:
        """Disconnect (the session stays on the broker) and stop paho's thread."""
        self._client.disconnect()
        self._client.loop_stop()


def read_status(pid: int) -> tuple[int, int, int] | None:
    """RSS (kB), threads and open descriptors of process ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmRSS" not in fields:  # a zombie: exited, not yet reaped
        return None
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"]), fds


class AgentSupervisor:
    """Starts, kills, stops and samples the agent processes, one at a time."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runs: list[AgentRun] = []
        self._agent: AgentProcess | None = None
        self._lock = threading.Lock()
        self._logs = {config.with_suffix(".log")}

    def start(self, config: Path | None = None, role: str = "soak") -> AgentRun:
        """Spawn ``mclz-agent run`` on the config (the soak's unless given)."""
        with self._lock:
            self._logs.add((config or self.config).with_suffix(".log"))
            agent = AgentProcess(config or self.config).start()
            if agent.proc is None:
                raise ServiceError("the agent process did not start")
            run = AgentRun(len(self.runs), agent.proc.pid, time.time(), role=role)
            self.runs.append(run)
            self._agent = agent
            return run

    @property
    def running(self) -> bool:
        """Whether an agent process is meant to be running now."""
        with self._lock:
            return self._agent is not None

    def kill9(self) -> AgentRun | None:
        """kill -9 the running agent; return its run (None when none ran)."""
        with self._lock:
            if self._agent is None or self._agent.proc is None:
                return None
            proc, run = self._agent.proc, self.runs[-1]
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait(10)
            run.ended, run.exit_code = time.time(), code
            run.how = "killed" if code == -signal.SIGKILL else "died"
            self._agent = None
            return run

    def stop(self, timeout: float = 15.0) -> AgentRun | None:
        """SIGTERM the running agent and wait for it (kill -9 after ``timeout``)."""
        with self._lock:
            if self._agent is None or self._agent.proc is None:
                return None
            proc, run = self._agent.proc, self.runs[-1]
            t0 = time.monotonic()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout)
                run.how = "stopped"
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(10)
                run.how = "hung"
            run.ended, run.exit_code = time.time(), code
            run.stop_seconds = round(time.monotonic() - t0, 2)
            self._agent = None
            return run

    def reap(self) -> AgentRun | None:
        """If the agent exited by itself, record it and return its run."""
        with self._lock:
            if self._agent is None or self._agent.proc is None:
                return None
            code = self._agent.proc.poll()
            if code is None:
                return None
            run = self.runs[-1]
            run.ended, run.exit_code, run.how = time.time(), code, "died"
            self._agent = None
            return run

    def sample(self) -> None:
        """Record the running agent's RSS, threads and descriptors."""
        with self._lock:
            if self._agent is None:
                return
            run = self.runs[-1]
            got = read_status(run.pid)
            if got is not None:
                run.samples.append((time.time(), *got))

    def log_paths(self) -> list[Path]:
        """The log files of every config used (one per config, appended by each run)."""
        return sorted(self._logs)


# --------------------------------------------------------------------------- matching rules


BACKOFF_MAX = float(CameraConfig.model_fields["reconnect_max"].default)  # the soak keeps it


def worst_reconnect(downtime: float) -> float:
    """Latest time after its camera died that a reader has frames again, if it was out
    ``downtime`` seconds: the reader retries after 0.5-1 s, then 1-2 s, 2-4 s, ... (the
    agent's capped exponential backoff with jitter on the upper half, reset by the frames
    of the session that failed). The first attempt that cannot come before the camera is
    back is the latest that can bring it back."""
    base, lower, upper = BACKOFF_MIN, 0.0, 0.0
    while True:
        lower += base / 2
        upper += base
        if lower >= downtime:
            return upper + RECONNECT_OVERHEAD_S
        base = min(BACKOFF_MAX, base * 2)


def agent_up(runs: Sequence[AgentRun], start: float, end: float) -> bool:
    """Whether one agent process read the cameras from ``start`` to ``end`` (wall clock)."""
    return any(
        r.role == "soak"
        and r.started + AGENT_STARTUP_S <= start
        and (r.ended is None or r.ended >= end)
        for r in runs
    )


def expectation(fault: Fault, runs: Sequence[AgentRun]) -> str:
    """What the agent must record for a camera or stall fault: ``offline``, ``online`` or
    ``either``.

    ``offline`` (an episode must be recorded): the camera was out at least offline_after +
    MARGIN_S and one agent process watched it from before the fault until offline_after +
    MARGIN_S into it. ``online`` (no episode): a killed camera whose worst-case reconnect
    (see :func:`worst_reconnect`) still comes MARGIN_S before offline_after, or a stall
    short enough that the reader never gives up the session (under stall_timeout -
    MARGIN_S), with one agent process watching from before until offline_after after the
    fault. Anything between, or with an agent kill in the way, is ``either``.
    """
    d = fault.duration
    start = fault.start - TOLERANCE_S
    if d >= OFFLINE_AFTER_S + MARGIN_S and agent_up(
        runs, start, fault.start + OFFLINE_AFTER_S + MARGIN_S
    ):
        return "offline"
    back = worst_reconnect(d) if fault.kind == "camera" else d + RECONNECT_OVERHEAD_S
    short = d <= STALL_TIMEOUT_S - MARGIN_S if fault.kind == "stall" else True
    if (
        short
        and back <= OFFLINE_AFTER_S - MARGIN_S
        and agent_up(runs, start, (fault.end or fault.start) + OFFLINE_AFTER_S)
    ):
        return "online"
    return "either"


def explained_by(episode: Episode, fault: Fault) -> bool:
    """Whether an injected fault explains a recorded offline episode: same camera, and the
    episode's ``since`` (the last frame before it, or the start of an agent that never got
    a frame) within the fault's window, give or take TOLERANCE_S. Broker faults never
    explain one; an agent kill alone does not either: the next start closes the open
    episodes (``agent_restart``) and a camera that is up gives frames at once."""
    if fault.kind not in {"camera", "stall"} or fault.target != episode.camera:
        return False
    end = fault.end if fault.end is not None else fault.start + fault.planned_s
    return fault.start - TOLERANCE_S <= episode.since <= end + TOLERANCE_S


def cause_of(episode: Episode, faults: Sequence[Fault]) -> Fault | None:
    """The fault an episode is put down to: of those that explain it, the one that began
    last (a blip followed within seconds by a kill of the same camera explains the kill's
    episode too, by the tolerance; the kill is its cause). None: unexplained."""
    causes = [f for f in faults if explained_by(episode, f)]
    return max(causes, key=lambda f: f.start) if causes else None


# --------------------------------------------------------------------------- the soak


def square_at(shown_from: float) -> SquaresFn:
    """Squares function: a magenta square from ``shown_from`` s on, for SQUARE_S."""
    first = round(shown_from * CLIP_FPS)
    last = first + round(SQUARE_S * CLIP_FPS)

    def squares(i: int) -> list[Square]:
        return [(0.5, 0.5, 0.35, MAGENTA)] if first <= i < last else []

    return squares


class Soak:
    """The services, the agent, the injector and the observations of one soak run."""

    def __init__(self, options: SoakOptions, workdir: Path) -> None:
        self.options = options
        self.workdir = workdir
        self.rng = random.Random(options.seed)
        self.faults: list[Fault] = []
        self.harness_errors: list[str] = []
        self.clips = [workdir / f"clip-{i}.mp4" for i in range(len(CLIP_VARIANTS))]
        self.cameras = {
            f"cam-{i + 1:02d}": RtspServer({"/cam": self.clips[i % len(self.clips)]})
            for i in range(options.cameras)
        }
        self.broker = PersistentBroker(workdir / "broker")
        self.subscriber = PlatformSubscriber(self.broker, ROOT, "platform-soak")
        self.config_path = workdir / "agent.yaml"
        self.agent = AgentSupervisor(self.config_path)
        self.db_path = db_path(workdir / "state")
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._workers: list[threading.Thread] = []
        self._bag: list[str] = []
        self._t0 = time.time()
        self.injection = (0.0, 0.0)

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        """Model, clips, broker, cameras, config, subscriber, agent; wait for all online.

        Raises:
            ServiceError: a service did not start, or the cameras never came online.
        """
        opts = self.options
        model = build_pattern_model(self.workdir / "model")
        for i, (period, shown) in enumerate(CLIP_VARIANTS[: opts.cameras]):
            make_clip(
                self.clips[i],
                seconds=period,
                fps=CLIP_FPS,
                gop=CLIP_FPS,
                squares=square_at(shown),
                seed=i,
            )
        self.broker.start()
        for server in self.cameras.values():
            server.start()
        self.write_config(model)
        self.subscriber.start()
        self.agent.start()
        self.injection = (time.time(), 0.0)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = self.subscriber.latest_states(0.0)
            if len(states) == opts.cameras and set(states.values()) == {"online"}:
                self.log("all %d cameras online", opts.cameras)
                return
            time.sleep(1)
        states = self.subscriber.latest_states(0.0)
        raise ServiceError(f"cameras not all online within 90 s: {states}")

    def write_config(self, model: Path, *, enabled: bool = True, name: str = "agent") -> Path:
        """Write the agent's config (``enabled=False``: every camera off, for the drain)."""
        cameras = {
            camera_id: {
                "name": f"后厨 {camera_id}",
                "url": server.url("/cam"),
                "enabled": enabled,
                "offline_after": OFFLINE_AFTER_S,
                "stall_timeout": STALL_TIMEOUT_S,
                "open_timeout": OPEN_TIMEOUT_S,
            }
            for camera_id, server in self.cameras.items()
        }
        data = {
            "identity": {"city": "soak", "school_id": "s-001", "box_id": "box-01"},
            "mqtt": {"url": self.broker.url, "reconnect_min": 0.5, "reconnect_max": 5},
            "cameras": cameras,
            "model": {"path": str(model), "conf_threshold": 0.3},
            "rules": {
                "no_hat": {
                    "labels": ["head_bare"],
                    "min_duration": MIN_DURATION_S,
                    "end_after": END_AFTER_S,
                    "cooldown": COOLDOWN_S,
                }
            },
            "storage": {"state_dir": str(self.workdir / "state")},
            "heartbeat": {"interval": HEARTBEAT_S},
            "logging": {"level": "info"},
        }
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        return path

    def log(self, message: str, *args: object) -> None:
        """A progress line with the seconds since the soak began."""
        logger.info("+%5.0fs %s", time.time() - self._t0, message % args if args else message)

    # ---------------------------------------------------------------- injection

    def inject(self) -> None:
        """Inject faults for ``duration`` seconds while sampling the agent."""
        opts = self.options
        start = time.monotonic()
        deadline = start + opts.duration
        next_fault = start + self._gap()
        next_sample = next_progress = start
        while (now := time.monotonic()) < deadline:
            if now >= next_fault:
                self._launch(deadline)
                next_fault = now + self._gap()
            if now >= next_sample:
                next_sample = now + SAMPLE_EVERY_S
                self._watch()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                alerts, beats = self.subscriber.counts()
                self.log(
                    "%d fault(s) so far, %d agent run(s), %d alert message(s) and %d heartbeat(s)"
                    " received",
                    len(self.faults),
                    len(self.agent.runs),
                    alerts,
                    beats,
                )
            time.sleep(max(0.05, min(next_fault, next_sample, deadline) - time.monotonic()))
        for worker in self._workers:
            while worker.is_alive():
                worker.join(SAMPLE_EVERY_S)
                self._watch()
        self.log("injection over: %d fault(s)", len(self.faults))

    def _gap(self) -> float:
        mean = self.options.fault_every
        return min(3 * mean, max(0.25 * mean, self.rng.expovariate(1 / mean)))

    def _watch(self) -> None:
        """Sample the agent; restart it (and note it) if it died by itself."""
        self.agent.sample()
        dead = self.agent.reap()
        if dead is not None and not self._is_busy("agent"):
            self.harness_errors.append(
                f"agent run {dead.index} (pid {dead.pid}) exited by itself with {dead.exit_code}"
            )
            logger.error("agent exited by itself with %s: restarting it", dead.exit_code)
            self.agent.start()

    def _is_busy(self, component: str) -> bool:
        with self._lock:
            return component in self._busy

    def _next_kind(self) -> list[str]:
        """Kinds to try, in order: the next of a shuffled round, then the rest of it."""
        if not self._bag:
            self._bag = list(self.options.kinds)
            self.rng.shuffle(self._bag)
        return list(self._bag)

    def _plan(self, kind: str) -> tuple[float, str]:
        """Draw a fault's duration and band (blip, mid, long for the camera kinds)."""
        rng, longest = self.rng, self.options.max_outage
        long_from = OFFLINE_AFTER_S + MARGIN_S + 1
        # kind -> ((share, band, lowest, highest), ...): the first band whose share covers
        # the draw is taken.
        bands = {
            "broker": ((1.0, "-", 2.0, min(20.0, longest)),),
            "agent": ((1.0, "-", 1.0, 5.0),),
            "camera": (
                (0.25, "blip", 0.5, 2.0),
                (0.5, "mid", 5.0, long_from),
                (1.0, "long", long_from, max(long_from, longest)),
            ),
            "stall": (
                (0.4, "blip", 1.0, STALL_TIMEOUT_S - MARGIN_S - 0.5),
                (1.0, "long", long_from, max(long_from, min(25.0, longest))),
            ),
        }[kind]
        draw = rng.random()
        _share, band, low, high = next(b for b in bands if draw < b[0])
        return rng.uniform(low, high), band

    def _launch(self, deadline: float) -> None:
        """Start the next fault in its own thread, if a component is free and it fits."""
        for kind in self._next_kind():
            planned, band = self._plan(kind)
            if time.monotonic() + planned + 1 > deadline:
                continue
            with self._lock:
                if kind in {"camera", "stall"}:
                    free = sorted(set(self.cameras) - self._busy)
                    if not free:
                        continue
                    target = self.rng.choice(free)
                else:
                    target = kind
                    if target in self._busy:
                        continue
                self._busy.add(target)
            self._bag.remove(kind)
            fault = Fault(kind, target, round(planned, 2), band)
            self.faults.append(fault)
            worker = threading.Thread(
                target=self._run_fault, args=(fault,), name=f"fault-{len(self.faults)}"
            )
            self._workers.append(worker)
            worker.start()
            return

    def _run_fault(self, fault: Fault) -> None:
        """Hit the component, wait, bring it back; record when (a fault worker thread)."""
        what = {
            "broker": "broker kill -9",
            "camera": f"camera {fault.target} RTSP server kill -9",
            "stall": f"camera {fault.target} RTSP server SIGSTOP",
            "agent": "agent kill -9",
        }[fault.kind]
        band = f" ({fault.band})" if fault.band != "-" else ""
        self.log("fault %d: %s for %.1f s%s", len(self.faults), what, fault.planned_s, band)
        try:
            fault.start = time.time()
            if fault.kind == "broker":
                self.broker.kill()
                time.sleep(fault.planned_s)
                self.broker.start()
            elif fault.kind == "camera":
                server = self.cameras[fault.target]
                server.kill()
                time.sleep(fault.planned_s)
                server.start()
            elif fault.kind == "stall":
                server = self.cameras[fault.target]
                server.pause()
                time.sleep(fault.planned_s)
                server.resume()
            else:
                run = self.agent.kill9()
                if run is not None and run.how != "killed":
                    self.harness_errors.append(
                        f"agent run {run.index} had already exited ({run.exit_code}) when killed"
                    )
                time.sleep(fault.planned_s)
                self.agent.start()
            fault.end = time.time()
            self.log("%s over after %.1f s", what, fault.duration)
        except Exception as exc:
            fault.error = f"{type(exc).__name__}: {exc}"
            self.harness_errors.append(f"{what}: {fault.error}")
            logger.exception("fault injection failed: %s", what)
        finally:
            with self._lock:
                self._busy.discard(fault.target)

    # ---------------------------------------------------------------- the end

    def recover(self) -> None:
        """Give the cameras time to come back and the committed alerts time to arrive."""
        deadline = time.monotonic() + self.options.recovery_timeout
        waiting = sorted(self.cameras)
        while time.monotonic() < deadline:
            self._watch()
            states = self.subscriber.latest_states(0.0)
            waiting = [c for c in sorted(self.cameras) if states.get(c) != "online"]
            if not waiting:
                break
            time.sleep(SAMPLE_EVERY_S)
        self.log("recovery: cameras not online yet: %s", ", ".join(waiting) or "none")
        deadline = time.monotonic() + 60
        missing: set[str] = set()
        while time.monotonic() < deadline:
            self._watch()
            try:
                missing = committed_alert_messages(self.db_path) - self.subscriber.alert_ids()
            except sqlite3.Error:
                missing = {"(database busy)"}
            if not missing:
                break
            time.sleep(SAMPLE_EVERY_S)
        self.log("alert messages committed but not received yet: %d", len(missing))

    def finish(self) -> None:
        """SIGTERM the agent; drain what it left in the outbox with every camera disabled."""
        run = self.agent.stop()
        if run is not None:
            self.log("agent stopped: exit %s in %.1f s", run.exit_code, run.stop_seconds or 0.0)
        self.injection = (self.injection[0], time.time())
        left = pending_alert_rows(self.db_path)
        if left:
            self.log("%d alert/evidence message(s) left in the outbox: a drain run", left)
            drain = self.write_config(self.workdir / "model", enabled=False, name="drain")
            self.agent.start(drain, role="drain")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and pending_alert_rows(self.db_path):
                time.sleep(1)
            time.sleep(1)
            self.agent.stop()
        time.sleep(2)  # let the last messages reach the subscriber

    def close(self) -> None:
        """Stop everything that still runs; never raises."""
        if self.agent.running:
            with contextlib.suppress(Exception):
                self.agent.kill9()
        with contextlib.suppress(Exception):
            self.subscriber.close()
        for server in self.cameras.values():
            with contextlib.suppress(Exception):
                server.close()
        with contextlib.suppress(Exception):
            self.broker.stop()

    def observe(self) -> Observations:
        """Gather what the checks need: the database, the logs, what was received."""
        alerts, episodes, outbox, integrity, counters = read_database(self.db_path)
        state = self.db_path.parent
        corrupt = sorted(p.name for p in state.glob(f"{self.db_path.name}.corrupt-*"))
        return Observations(
            options=self.options,
            faults=self.faults,
            runs=self.agent.runs,
            received=self.subscriber.received,
            alerts=alerts,
            episodes=episodes,
            outbox_left=outbox,
            integrity=integrity,
            corrupt_files=corrupt,
            counters=counters,
            log_problems=log_problems(self.agent.log_paths()),
            harness_errors=self.harness_errors,
            injection=self.injection,
        )


# --------------------------------------------------------------------------- the database


def _connect_ro(path: Path) -> sqlite3.Connection:
    """A read-only connection (a plain one if SQLite cannot open a WAL file read-only)."""
    if not path.exists():
        raise sqlite3.OperationalError(f"{path} does not exist")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn = sqlite3.connect(path, timeout=10)
    return conn


def committed_alert_messages(path: Path) -> set[str]:
    """Message ids of every alert message the database says was committed.

    Raises:
        sqlite3.Error: the database cannot be read (yet).
    """
    conn = _connect_ro(path)
    try:
        rows = conn.execute("SELECT id, ended_at FROM alerts").fetchall()
    finally:
        conn.close()
    return {r[0] for r in rows} | {f"{r[0]}:end" for r in rows if r[1] is not None}


def pending_alert_rows(path: Path) -> int:
    """Alert and evidence messages still in the outbox (-1 when unreadable)."""
    try:
        conn = _connect_ro(path)
    except sqlite3.Error:
        return -1
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind IN ('alert', 'evidence')"
        ).fetchone()
    except sqlite3.Error:
        return -1
    finally:
        conn.close()
    return int(row[0])


def read_database(
    path: Path,
) -> tuple[list[StoredAlert], list[Episode], dict[str, int], list[str], dict[str, int]]:
    """Alerts, outages, outbox rows per kind, the integrity check and the counters."""
    try:
        conn = _connect_ro(path)
    except sqlite3.Error as exc:
        return [], [], {}, [f"cannot open: {exc}"], {}
    try:
        integrity = [str(r[0]) for r in conn.execute("PRAGMA integrity_check").fetchall()]
        alerts = [
            StoredAlert(r[0], r[1], r[2], r[3], r[4], r[5] is not None)
            for r in conn.execute(
                "SELECT id, camera, raised_at, ended_at, end_reason, evidence_path FROM alerts"
            )
        ]
        episodes = [
            Episode(*r)
            for r in conn.execute(
                "SELECT camera, since, until, duration_s, reason, closed_by FROM camera_outages"
                " ORDER BY since"
            )
        ]
        outbox = {
            str(k): int(n)
            for k, n in conn.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind")
        }
        counters = {str(k): int(v) for k, v in conn.execute("SELECT name, value FROM counters")}
    except sqlite3.Error as exc:
        return [], [], {}, [f"unreadable: {exc}"], {}
    finally:
        conn.close()
    return alerts, episodes, outbox, integrity, counters


def log_problems(paths: Iterable[Path]) -> list[str]:
    """Log lines (with the file name and line number) that carry a LOG_MARKERS word."""
    found = []
    for path in paths:
        if not path.exists():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(marker in line for marker in LOG_MARKERS):
                found.append(f"{path.name}:{n}: {line.strip()[:200]}")
    return found


# --------------------------------------------------------------------------- checks


def _stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 10)}"


def _verdict(
    check: str, expected: str, measured: str, passed: bool | None, details: Iterable[str] = ()
) -> Verdict:
    outcome = "SKIP" if passed is None else "PASS" if passed else "FAIL"
    return Verdict(check, expected, measured, outcome, tuple(details))


def check_faults(obs: Observations) -> Verdict:
    """Every asked-for kind was injected at least once, and no injection failed."""
    kinds = Counter(f.kind for f in obs.faults)
    missing = [k for k in obs.options.kinds if not kinds[k]]
    measured = ", ".join(f"{k} {kinds[k]}" for k in obs.options.kinds)
    return _verdict(
        "faults injected",
        "each kind at least once, no harness error",
        f"{measured}; harness errors {len(obs.harness_errors)}",
        not missing and not obs.harness_errors,
        [f"never injected: {k}" for k in missing] + obs.harness_errors,
    )


def check_alerts(obs: Observations) -> list[Verdict]:
    """Committed alerts and their ends arrived; nothing arrived that was not committed."""
    expected = {a.id for a in obs.alerts} | {f"{a.id}:end" for a in obs.alerts if a.ended_at}
    got = Counter(msg_id for _at, msg_id, _alert, _event in obs.received.alerts)
    missing = sorted(expected - set(got))
    duplicates = sum(n - 1 for n in got.values())
    by_id = {a.id: a for a in obs.alerts}
    details = []
    for msg_id in missing[:50]:
        alert = by_id[msg_id.removesuffix(":end")]
        near = [f for f in obs.faults if f.kind == "broker" and abs(f.start - alert.raised_at) < 60]
        hint = f"; broker kill -9 at {_stamp(near[0].start)}" if near else ""
        details.append(f"{msg_id} (camera {alert.camera}, raised {_stamp(alert.raised_at)}{hint})")
    verdicts = [
        _verdict(
            "alerts delivered",
            "every committed alert message (start, and end when ended) received",
            f"{len(expected) - len(missing)}/{len(expected)} received"
            f" ({len(obs.alerts)} alerts); {duplicates} duplicate(s)",
            bool(expected) and not missing,
            details or ([] if expected else ["no alert was committed at all"]),
        )
    ]
    received_alerts = {alert for _at, _id, alert, _event in obs.received.alerts}
    phantoms = sorted(received_alerts - set(by_id))
    verdicts.append(
        _verdict(
            "platform sees every alert",
            "distinct alert ids received >= alerts in the database, none unknown to it",
            f"{len(received_alerts)} received, {len(by_id)} stored, {len(phantoms)} unknown",
            len(received_alerts) >= len(by_id) and not phantoms,
            [f"received but not stored: {p}" for p in phantoms],
        )
    )
    with_image = [a for a in obs.alerts if a.has_evidence]
    no_image = sorted(a.id for a in with_image if not obs.received.evidence[a.id])
    verdicts.append(
        _verdict(
            "evidence delivered",
            "an image received for every stored alert that has one",
            f"{len(with_image) - len(no_image)}/{len(with_image)}",
            not no_image,
            no_image,
        )
    )
    killed = [r for r in obs.runs if r.how == "killed"]
    open_alerts = [a for a in obs.alerts if a.ended_at is None]
    unexplained = [
        a
        for a in open_alerts
        if not any(r.started <= a.raised_at <= (r.ended or math.inf) for r in killed)
    ]
    verdicts.append(
        _verdict(
            "alerts left without an end",
            "only alerts raised by an agent that was then killed -9",
            f"{len(open_alerts)} open, {len(open_alerts) - len(unexplained)} of them"
            " raised by a killed agent",
            not unexplained,
            [f"{a.id} camera {a.camera} raised {_stamp(a.raised_at)}" for a in unexplained],
        )
    )
    return verdicts


def check_database(obs: Observations) -> Verdict:
    """The database passed integrity_check; nothing was moved aside or left undelivered."""
    recovered = obs.counters.get("db_recovered", 0)
    left = {k: n for k, n in obs.outbox_left.items() if k in {"alert", "evidence"}}
    ok = obs.integrity == ["ok"] and not obs.corrupt_files and not recovered and not left
    return _verdict(
        "database intact",
        "integrity_check ok; no agent.db.corrupt-*; no recovery; no alert left in the outbox",
        f"integrity {'; '.join(obs.integrity[:3])}; {len(obs.corrupt_files)} corrupt file(s);"
        f" {recovered} recovery(ies); outbox left {obs.outbox_left or 'empty'}",
        ok,
        [*obs.integrity[1:20], *obs.corrupt_files],
    )


def check_resources(obs: Observations) -> list[Verdict]:
    """RSS, threads and descriptors of the longest-lived agent process."""
    soak_runs = [r for r in obs.runs if r.role == "soak" and r.samples]
    names = ("agent RSS growth", "agent threads", "agent file descriptors")
    expected = (
        f"< {RSS_GROWTH_RATIO:.0%} or < {RSS_GROWTH_MB:.0f} MB, first to last fifth",
        f"last fifth max <= first half max + {THREAD_SLACK}",
        f"last fifth max <= first half max + {FD_SLACK}",
    )
    if not soak_runs:
        return [_verdict(n, e, "no samples", False) for n, e in zip(names, expected, strict=True)]
    run = max(soak_runs, key=lambda r: r.samples[-1][0] - r.samples[0][0])
    samples = [s for s in run.samples if s[0] >= run.started + WARMUP_S]
    span = samples[-1][0] - samples[0][0] if samples else 0.0
    life = f"run {run.index}, {span:.0f} s after warm-up, {len(samples)} samples"
    if span < MIN_SPAN_S or len(samples) < 10:
        return [
            _verdict(n, e, f"{life}: too short to tell", None)
            for n, e in zip(names, expected, strict=True)
        ]
    fifth = max(1, len(samples) // 5)
    first, last, first_half = samples[:fifth], samples[-fifth:], samples[: len(samples) // 2]
    rss0 = statistics.median(s[1] for s in first) / 1024
    rss1 = statistics.median(s[1] for s in last) / 1024
    growth = rss1 - rss0
    verdicts = [
        _verdict(
            names[0],
            expected[0],
            f"{rss0:.0f} -> {rss1:.0f} MB ({growth:+.1f} MB, {growth / rss0:+.1%}); {life}",
            growth < RSS_GROWTH_MB or growth < RSS_GROWTH_RATIO * rss0,
        )
    ]
    for index, name, slack in ((2, names[1], THREAD_SLACK), (3, names[2], FD_SLACK)):
        early = max(s[index] for s in first_half)
        late = max(s[index] for s in last)
        half = [s[index] for s in samples[len(samples) // 2 :]]
        verdicts.append(
            _verdict(
                name,
                expected[1 if index == 2 else 2],
                f"first half max {early}, last fifth max {late}; last half {min(half)}-{max(half)}",
                late <= early + slack,
            )
        )
    return verdicts


def check_exits(obs: Observations) -> list[Verdict]:
    """The agent died only by our kill -9; it stopped cleanly on SIGTERM; its log is clean."""
    hows = Counter(r.how for r in obs.runs)
    bad = [
        r
        for r in obs.runs
        if (r.how == "killed" and r.exit_code != -signal.SIGKILL)
        or (r.how == "stopped" and r.exit_code != 0)
        or r.how in {"died", "hung", "running"}
    ]
    slow = [r for r in obs.runs if r.how == "stopped" and (r.stop_seconds or 0) > 10]
    stopped = [
        f"{r.stop_seconds:.1f} s"
        for r in obs.runs
        if r.how == "stopped" and r.stop_seconds is not None
    ]
    return [
        _verdict(
            "agent exits",
            "only our kill -9s, and SIGTERM: exit 0 within 10 s",
            f"{len(obs.runs)} run(s): {dict(hows)}; SIGTERM took {', '.join(stopped) or '-'}",
            not bad and not slow and hows["stopped"] >= 1,
            [f"run {r.index} pid {r.pid}: {r.how}, exit {r.exit_code}" for r in bad + slow],
        ),
        _verdict(
            "agent log",
            f"no line with {' / '.join(LOG_MARKERS)}",
            f"{len(obs.log_problems)} line(s)",
            not obs.log_problems,
            obs.log_problems,
        ),
    ]


def check_offline(obs: Observations) -> list[Verdict]:
    """Offline episodes against the injected camera outages and stalls."""
    camera_faults = [f for f in obs.faults if f.kind in {"camera", "stall"} and not f.error]
    wanted: dict[str, list[Fault]] = {"offline": [], "online": [], "either": []}
    for fault in camera_faults:
        wanted[expectation(fault, obs.runs)].append(fault)

    causes = [(e, cause_of(e, obs.faults)) for e in obs.episodes]

    def episodes_of(fault: Fault) -> list[Episode]:
        return [e for e, cause in causes if cause is fault]

    def describe(fault: Fault) -> str:
        return (
            f"{fault.kind} {fault.target} {fault.band} {_stamp(fault.start)}"
            f" for {fault.duration:.1f} s"
        )

    missed = [f for f in wanted["offline"] if not episodes_of(f)]
    false = [f for f in wanted["online"] if episodes_of(f)]
    unexplained = [e for e, cause in causes if cause is None]
    either = sum(1 for f in wanted["either"] if episodes_of(f))
    verdicts = [
        _verdict(
            "offline episode per long outage",
            f">= {OFFLINE_AFTER_S + MARGIN_S:.0f} s out (agent watching): an episode",
            f"{len(wanted['offline']) - len(missed)}/{len(wanted['offline'])} recorded"
            f" ({either} of {len(wanted['either'])} in-between faults gave one)",
            not missed if wanted["offline"] else None,
            [describe(f) for f in missed],
        ),
        _verdict(
            "no offline episode for blips",
            f"back {MARGIN_S:.0f} s before offline_after ({OFFLINE_AFTER_S:.0f} s): no episode",
            f"{len(false)} of {len(wanted['online'])} blips recorded offline",
            not false if wanted["online"] else None,
            [describe(f) for f in false],
        ),
        _verdict(
            "no unexplained offline episode",
            "every episode within a fault window on its camera",
            f"{len(unexplained)} of {len(obs.episodes)} unexplained",
            not unexplained,
            [
                f"{e.camera} since {_stamp(e.since)} until"
                f" {_stamp(e.until) if e.until else 'open'} ({e.reason}, {e.closed_by})"
                for e in unexplained
            ],
        ),
    ]
    offline = [
        (cam, since) for _at, cam, state, since in obs.received.statuses if state == "offline"
    ]
    unannounced = [
        e
        for e in obs.episodes
        if not any(
            cam == e.camera and e.since - 1 <= since <= (e.until or math.inf) + 1
            for cam, since in offline
        )
    ]
    verdicts.append(
        _verdict(
            "offline episodes announced",
            "an 'offline' camera status received for every episode",
            f"{len(obs.episodes) - len(unannounced)}/{len(obs.episodes)}",
            not unannounced,
            [f"{e.camera} since {_stamp(e.since)} ({e.reason})" for e in unannounced],
        )
    )
    return verdicts


def check_liveness(obs: Observations) -> list[Verdict]:
    """Heartbeats kept coming (gaps only across agent kills); alerts kept being raised."""
    beats = sorted(obs.received.heartbeats.values())
    limit = HEARTBEAT_GAP_FACTOR * HEARTBEAT_S
    ends = [r.ended for r in obs.runs if r.ended is not None]
    gaps = [
        (a, b)
        for a, b in itertools.pairwise(beats)
        if b - a > limit and not any(a <= t <= b for t in ends)
    ]
    begin, end = obs.injection
    span = max(0.0, end - begin)
    periods = [CLIP_VARIANTS[i % len(CLIP_VARIANTS)][0] for i in range(obs.options.cameras)]
    ideal = sum(span / p for p in periods)
    return [
        _verdict(
            "heartbeats",
            f"no gap over {limit:.0f} s except across an agent exit",
            f"{len(beats)} received; {len(gaps)} unexplained gap(s)",
            bool(beats) and not gaps,
            [f"{_stamp(a)} -> {_stamp(b)} ({b - a:.0f} s)" for a, b in gaps],
        ),
        _verdict(
            "alerts raised",
            f">= {MIN_ALERT_SHARE:.0%} of the {ideal:.0f} a fault-free run would give",
            f"{len(obs.alerts)} ({len(obs.alerts) / ideal:.0%})" if ideal else "-",
            len(obs.alerts) >= MIN_ALERT_SHARE * ideal if ideal else None,
        ),
    ]


def evaluate(obs: Observations) -> list[Verdict]:
    """Every check, in table order."""
    return [
        check_faults(obs),
        *check_alerts(obs),
        check_database(obs),
        *check_resources(obs),
        *check_exits(obs),
        *check_offline(obs),
        *check_liveness(obs),
    ]


# --------------------------------------------------------------------------- entry points


def run_soak(options: SoakOptions) -> SoakReport:
    """Run one soak and return its report; the work directory stays.

    Raises:
        ServiceError: the services or the agent could not be set up.
    """
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="mclz-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    soak = Soak(options, workdir)
    logger.info(
        "soak in %s: %d camera(s), %.0f s of faults every ~%.0f s, seed %d",
        workdir,
        options.cameras,
        options.duration,
        options.fault_every,
        options.seed,
    )
    try:
        soak.setup()
        soak.inject()
        soak.recover()
        soak.finish()
    finally:
        soak.close()
    observations = soak.observe()
    return SoakReport(evaluate(observations), observations, workdir, time.monotonic() - started)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of faults (3600)")
    parser.add_argument("--cameras", type=int, default=8, help="cameras (8)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--fault-every", type=float, default=60.0, help="mean seconds between faults (60)"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help="kinds to inject, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--max-outage",
        type=float,
        default=40.0,
        help="longest broker, camera or stall outage, s (40; a long camera outage lasts 15 s at"
        " least)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep everything here (default: temporary)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown or not kinds:
        parser.error(f"--faults: unknown kind(s) {unknown}; choose from {', '.join(FAULT_KINDS)}")
    if args.cameras < 1 or args.duration <= 0 or args.fault_every <= 0:
        parser.error("--cameras, --duration and --fault-every must be positive")
    args.kinds = kinds
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak from the command line; 0 when every check passed (or was skipped)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    options = SoakOptions(
        duration=args.duration,
        cameras=args.cameras,
        seed=seed,
        fault_every=args.fault_every,
        kinds=args.kinds,
        max_outage=args.max_outage,
        workdir=args.workdir,
    )
    try:
        report = run_soak(options)
    except ServiceError as exc:
        print(f"soak: cannot set up: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    details = report.failure_details()
    if details:
        print(details)
    print(
        f"\n{len(report.observations.faults)} fault(s), {len(report.observations.runs)} agent"
        f" run(s), seed {seed}, {report.wall_s:.0f} s wall; work directory {report.workdir}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    if report.ok and args.workdir is None:
        shutil.rmtree(report.workdir, ignore_errors=True)
        print("(all passed: the work directory was removed)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
