"""Simulate a fleet of boxes' uplinks against one MQTT broker: what one broker node takes.

    .venv/bin/python scripts/bench/fleet_sim.py                  # ramp 10..400 boxes, then a burst
    .venv/bin/python scripts/bench/fleet_sim.py --ramp 10,50 --seconds 20 --json fleet.json
    .venv/bin/python scripts/bench/fleet_sim.py --ramp 10 --burst-boxes 200 --backlog-minutes 60
    .venv/bin/python scripts/bench/fleet_sim.py --accel 30 --alerts-per-day 50 --max-boxes 200
    .venv/bin/python scripts/bench/fleet_sim.py --workdir /dev/shm  # outboxes on tmpfs: no fsync
    .venv/bin/python scripts/bench/fleet_sim.py --broker mqtt://10.0.0.5:1883 --broker-pid 4242

Each simulated box is the agent's real store-and-forward path without cameras: a real
``agent.store.outbox.Store`` (its own SQLite file, WAL, synchronous=FULL) drained by a real
``agent.uplink.client.Uplink`` (its own client id, MQTT 5, QoS 1, persistent session, retained
availability with a last will, ``mqtt.max_rate`` and ``mqtt.inflight`` from the config).
A producer thread per box stands in for the agent's health and detect threads and commits
real payloads built with ``agent.uplink.messages``:

* a heartbeat every ``heartbeat.interval`` (60 s) with a health snapshot of 16 online
  cameras shaped like ``Agent.health()`` (the uplink, outbox, system and clock parts are
  the real ones of the simulated box), then the 16 cameras' retained status refreshes;
* alerts during kitchen hours (default 20 per box per day, all within 6 hours): the start
  message with its evidence JPEG, then the end message. The JPEGs are frames of
  ``../shared/videos/bareheaded_people_indoor.mp4`` (768x432) resized to
  ``--evidence-width`` (1280, a main-stream snapshot at evidence.max_width), drawn and
  encoded by ``agent.evidence.render`` with the default settings (quality 85).

``--accel`` multiplies every rate, so K simulated boxes offer the load of K x accel real
ones. Boxes are spread over ``--processes`` worker processes, each running its boxes in
threads: three per box (paho's network loop, the uplink's drain thread, the producer).
A platform side of ``--consumers`` paho clients shares the load through MQTT 5 shared
subscriptions (``$share/platform/<prefix>/+/+/+/...``), de-duplicates on the message id and
measures the end-to-end latency from the payload's ``ts`` to its arrival.

For every step of the ramp: messages and bytes per second offered (committed by the boxes)
and delivered (received by the platform), the share delivered after a grace period,
latency percentiles, the broker process's CPU (utime+stime from /proc) and RSS, and the
CPU of the simulator's own processes. The ramp stops when delivery falls more than 10 %
behind, the broker drops messages queued for the platform, the p95 latency passes
``--max-p95``, the boxes cannot produce their load (the machine, not the broker, is the
limit), or ``--max-boxes`` is reached.

Then the power-on after an outage (``--burst-boxes``, 0 to skip): each box starts with what
it queues in ``--backlog-minutes`` without a broker (at the real rates, committed in one
setup transaction per box), all connect at once and drain at ``mqtt.max_rate``: the
fleet's recovery peak. With its own broker the script counts mosquitto's "Outgoing
messages are being dropped" notices: a consumer's queue (max_queued_messages, 1000)
overflowed.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import hashlib
import heapq
import json
import logging
import multiprocessing as mp
import os
import platform as host
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent import evidence
from agent.config import AgentConfig, EvidenceConfig, MqttConfig, parse_config
from agent.ingest.reader import grade
from agent.records import Detection, EvidenceInfo
from agent.rules.engine import Alert
from agent.service.telemetry import ProcessCpu, clock_status, system_metrics
from agent.store.database import db_path
from agent.store.store import Store
from agent.uplink import messages as contract
from agent.uplink.client import Uplink
from mclz_testkit.broker import Broker
from mclz_testkit.mqtt import load_schema, parse_mqtt_url

REPO = Path(__file__).resolve().parents[2]

logger = logging.getLogger("fleet_sim")

VIDEO = REPO.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"
MANIFEST = REPO / "models" / "default" / "manifest.yaml"
CAMERAS = 16
CAMERA_NAMES = (
    "后厨操作间", "切配间", "备餐间", "烹饪区", "面点间", "凉菜间", "洗消间", "粗加工区",
    "主食库", "副食库", "留样间", "售卖窗口", "餐厅大厅", "冷库门口", "收货区", "垃圾暂存间",
)  # fmt: skip
KINDS = ("heartbeat", "camera_status", "alert", "evidence")
HEARTBEAT_TTL = 86400.0  # as agent.service
STATUS_TTL = 7 * 86400.0
STOP_BEHIND = 0.9  # delivered (or produced) under this share of the target: stop the ramp
# mosquitto's notice when a client's queue is over max_queued_messages (1000 by default)
DROP_NOTICE = "Outgoing messages are being dropped"


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Rates:
    """What one real box sends, and how much faster the simulated boxes send it."""

    heartbeat_interval: float = 60.0
    alerts_per_day: float = 20.0
    kitchen_hours: float = 6.0  # alerts happen in this many hours of the day
    alert_duration: float = 30.0  # start to end of an alert, real seconds
    accel: float = 10.0

    @property
    def heartbeat_period(self) -> float:
        """Simulated seconds between two heartbeats of one box."""
        return self.heartbeat_interval / self.accel

    @property
    def alert_rate(self) -> float:
        """Alerts per simulated second of one box (during kitchen hours)."""
        return self.alerts_per_day / (self.kitchen_hours * 3600.0) * self.accel

    def target_per_box(self) -> dict[str, float]:
        """Messages per simulated second of one box, per kind."""
        beats = 1.0 / self.heartbeat_period
        return {
            "heartbeat": beats,
            "camera_status": CAMERAS * beats,
            "alert": 2 * self.alert_rate,  # start and end
            "evidence": self.alert_rate,
        }


@dataclass(frozen=True)
class Material:
    """Payload ingredients made once in the main process and handed to the workers."""

    jpegs: tuple[bytes, ...]
    jpeg_width: int
    jpeg_height: int
    model: str
    model_sha256: str


@dataclass(frozen=True)
class WorkerPlan:
    """The boxes one worker process runs in one step."""

    indices: tuple[int, ...]
    broker_url: str
    state_root: str
    city: str
    prefix: str
    rates: Rates
    material: Material
    seed: int
    connect_timeout: float = 60.0
    backlog_minutes: float = 0.0  # > 0: a power-on burst (see SimBox.prefill), no producing


# --------------------------------------------------------------------------- payloads


def box_yaml(index: int, broker_url: str, state_dir: Path, city: str, prefix: str) -> str:
    """The config of simulated box ``index``: identity, uplink defaults, 16 cameras."""
    net = f"10.{index // 250}.{index % 250}"
    cameras = {
        f"cam-{c + 1:02d}": {
            "name": CAMERA_NAMES[c % len(CAMERA_NAMES)],
            "url": f"rtsp://admin@{net}.{c + 11}:554/Streaming/Channels/102",
            "main_url": f"rtsp://admin@{net}.{c + 11}:554/Streaming/Channels/101",
        }
        for c in range(CAMERAS)
    }
    config = {
        "identity": {
            "city": city,
            "school_id": school_id(index),
            "box_id": "box-01",
            "school_name": f"某某区第{index + 1}实验小学",
        },
        "mqtt": {"url": broker_url, "topic_prefix": prefix},
        "storage": {"state_dir": str(state_dir)},
        "cameras": cameras,
    }
    return yaml.safe_dump(config, allow_unicode=True, sort_keys=False)


def school_id(index: int) -> str:
    """A school id as a city platform numbers them (district code and a serial)."""
    return f"330106-{index:04d}"


def camera_snapshot(rng: random.Random, booted: float, now: float, camera: int) -> dict[str, Any]:
    """One online camera's health as ``CameraReader.snapshot()`` gives it (``since``: epoch)."""
    uptime = max(1.0, now - booted)
    snap: dict[str, Any] = {
        "state": "online",
        "since": booted + 15.0 + camera,
        "last_frame_age_s": round(rng.uniform(0.0, 0.08), 2),
        "fps": round(rng.uniform(24.6, 25.0), 2),
        "expected_fps": 25.0,
        "detect_fps": round(rng.uniform(0.95, 1.0), 3),
        "codec": "h264",
        "width": 704,
        "height": 576,
        "packets": int(25 * uptime),
        "keyframes": int(uptime / 2),
        "decoded": int(uptime / 2),
        "analysed": int(uptime * 0.98),
        "dropped": rng.randint(0, 5),
        "reconnects": rng.choice((0, 0, 0, 1, 2)),
        "reconnects_1h": 0,
        "stalls": rng.choice((0, 0, 1)),
        "stalls_1h": 0,
        "blips": rng.choice((0, 0, 1)),
        "decode_errors": 0,
        "decode_mode": "keyframes",
        "gop_seconds": 2.0,
        "last_error": "",
        "last_error_class": "",
    }
    snap["quality"] = grade(snap).value
    return snap


def heartbeat_health(
    snapshots: dict[str, dict[str, Any]],
    rng: random.Random,
    *,
    uplink: Uplink,
    outbox: Store,
    state_dir: Path,
    cpu: ProcessCpu,
    material: Material,
    alerts: dict[str, int],
) -> dict[str, Any]:
    """The health dict ``Agent.health()`` builds, for 16 online cameras with main streams.

    The camera, detector, alarm and capture parts are plausible values in the real shapes;
    uplink, outbox, system and clock are read from the simulated box and this machine.
    """
    cameras: dict[str, Any] = {}
    for cid, base in snapshots.items():
        snap = dict(base)
        snap["since"] = contract.utc_iso(base["since"])
        snap["picture"] = []
        snap["picture_metrics"] = {
            "luma": round(rng.uniform(105, 140), 1),
            "contrast": round(rng.uniform(38, 60), 1),
            "sharpness": round(rng.uniform(900, 2400), 1),
            "unchanged_s": round(rng.uniform(0, 3), 1),
        }
        analysed = int(base["analysed"])
        snap["gating"] = {
            "analysed": analysed // 3,
            "skipped": analysed - analysed // 3,
            "forced": analysed // 40,
            "last_change": round(rng.uniform(0, 0.02), 4),
        }
        snap["main_stream"] = {
            "state": "online",
            "fps": round(rng.uniform(24.6, 25.0), 2),
            "width": 1920,
            "height": 1080,
            "last_error_class": "",
        }
        cameras[cid] = snap
    frames = sum(int(s["analysed"]) for s in snapshots.values())
    raised = alerts["raised"]
    return {
        "cameras": cameras,
        "clock": clock_status(),
        "control": {
            "alarm_muted_until": None,
            "rule_overrides": {},
            "config_reloaded_at": None,
            "restart_required": [],
        },
        "system": system_metrics(state_dir, cpu),
        "detector": {
            "model": material.model,
            "model_sha256": material.model_sha256,
            "backend": "onnxruntime",
            "inferences": frames // 8,
            "frames": frames,
            "avg_batch_ms": round(rng.uniform(180, 260), 2),
            "busy_share": round(rng.uniform(0.3, 0.6), 3),
            "interval_scale": 1.0,
            "stretches": 0,
            "degraded_s": 0.0,
        },
        "uplink": uplink.snapshot(),
        "capture": {
            "enabled": False,
            "frames": 0,
            "bytes": 0,
            "max_bytes": 500_000_000,
            "kept": 0,
            "kept_uncertain": 0,
            "kept_random": 0,
            "evicted": 0,
            "errors": 0,
        },
        "alarm": {
            "played": raised,
            "muted": 0,
            "quiet_hours": 0,
            "cooldown": raised // 4,
            "hourly_cap": 0,
            "queue_full": 0,
            "sounder_failed": 0,
            "queued": 0,
        },
        "outbox": {"backlog": outbox.backlog(), "counters": outbox.counters()},
        "alerts": {
            "raised": raised,
            "ended": alerts["ended"],
            "running": raised - alerts["ended"],
            "suppressed_by_cooldown": raised // 3,
            "outside_schedule": 0,
            "excluded": 0,
            "implausible_size": 0,
            "by_type": {"no_hat": raised - raised // 3, "no_mask": raised // 3},
            "unstored": 0,
            "dropped": 0,
        },
    }


def make_alert(rng: random.Random, now: float) -> Alert:
    """An alert as the rules engine raises it: one to three detections on a camera."""
    hits = tuple(
        Detection(
            "head_bare",
            3,
            round(rng.uniform(0.4, 0.95), 4),
            (x := rng.uniform(0.1, 0.8), y := rng.uniform(0.05, 0.6), x + 0.06, y + 0.12),
        )
        for _ in range(rng.randint(1, 3))
    )
    return Alert(
        id=uuid.uuid4().hex,
        type=rng.choice(("no_hat", "no_hat", "no_mask")),
        severity="warning",
        camera_id=f"cam-{rng.randint(1, CAMERAS):02d}",
        started_at=now - rng.uniform(3.0, 8.0),
        raised_at=now,
        confidence=max(d.confidence for d in hits),
        detections=hits,
        frame=None,
        hits=rng.randint(3, 12),
    )


# --------------------------------------------------------------------------- evidence


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` frames spread over the clip (BGR)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 1000
        step = max(1, total // count)
        frames: list[np.ndarray] = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) >= count:
                break
    return frames


def make_material(width: int, count: int) -> Material:
    """Evidence JPEGs of real frames, drawn and encoded by the agent's renderer.

    ``width`` 0 keeps the clip's own size; otherwise the frame is resized to that width
    first (a main-stream snapshot at evidence.max_width).
    """
    config = EvidenceConfig()  # the defaults: max_width 1280, quality 85, max_bytes 900 kB
    rng = random.Random(1)
    jpegs: list[bytes] = []
    w = h = 0
    for frame in read_frames(VIDEO, count):
        image = frame
        if width:
            height = round(frame.shape[0] * width / frame.shape[1])
            image = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        alert = replace(make_alert(rng, time.time()), frame=image)
        jpeg, w, h = evidence.render(alert, image, config, camera_name="后厨操作间")
        jpegs.append(jpeg)
    model, sha = "mclz-default@unknown", "0" * 64
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        manifest = yaml.safe_load(MANIFEST.read_text(encoding="utf-8"))
        model, sha = f"{manifest['name']}@{manifest['version']}", str(manifest["sha256"])
    return Material(tuple(jpegs), w, h, model, sha)


# --------------------------------------------------------------------------- one box


@dataclass
class Produced:
    """What a box committed to its outbox during the window, per kind."""

    count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    nbytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def add(self, kind: str, size: int) -> None:
        """Count one message of ``size`` bytes."""
        self.count[kind] += 1
        self.nbytes[kind] += size


class SimBox:
    """One box: a real Store and Uplink, and a producer standing in for the agent."""

    def __init__(self, index: int, plan: WorkerPlan) -> None:
        """Open the box's outbox and build its uplink (nothing connects yet).

        Raises:
            StoreError: the state directory cannot be used.
            ConfigError: the generated config is invalid (a bug here).
        """
        self.index = index
        self.plan = plan
        self.rng = random.Random(plan.seed * 100_003 + index)
        self.state_dir = Path(plan.state_root) / f"box-{index:04d}"
        self.config: AgentConfig = parse_config(
            box_yaml(index, plan.broker_url, self.state_dir, plan.city, plan.prefix),
            f"box-{index}",
        )
        self.topics = contract.Topics(self.config)
        self.outbox = Store(db_path(self.state_dir), ttl=self.config.storage.message_ttl)
        self.uplink = Uplink(self.config, self.outbox)
        self.cpu = ProcessCpu()
        now = time.time()
        self.booted = now - 6 * 3600.0 - self.rng.uniform(0, 1800)  # powered on this morning
        self.started = self.booted + 40.0
        self.alerts = {"raised": self.rng.randint(0, 8), "ended": 0}
        self.alerts["ended"] = self.alerts["raised"]
        self.produced = Produced()

    # -------------------------------------------------------------- producing

    def snapshot_health(self, at: float) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
        """The cameras' snapshots at ``at`` and the heartbeat health built from them."""
        snapshots = {
            cid: camera_snapshot(self.rng, self.booted, at, i)
            for i, cid in enumerate(self.config.cameras)
        }
        health = heartbeat_health(
            snapshots,
            self.rng,
            uplink=self.uplink,
            outbox=self.outbox,
            state_dir=self.state_dir,
            cpu=self.cpu,
            material=self.plan.material,
            alerts=self.alerts,
        )
        return snapshots, health

    def heartbeat(self) -> None:
        """Commit a heartbeat and the 16 cameras' status refreshes, as the health loop does."""
        now = time.time()
        snapshots, health = self.snapshot_health(now)
        self.outbox.save_camera_health(snapshots, now)
        msg_id = uuid.uuid4().hex
        body = contract.heartbeat(
            self.config, msg_id, now=time.time(), started=self.started, health=health
        )
        payload = contract.encode(body)
        self.outbox.enqueue(
            self.topics.heartbeat, payload, kind="heartbeat", msg_id=msg_id, ttl=HEARTBEAT_TTL
        )
        self.produced.add("heartbeat", len(payload))
        self.uplink.wake()
        for cid, snap in snapshots.items():
            msg_id = uuid.uuid4().hex
            body = contract.camera_status(self.config, msg_id, cid, snap, now=time.time())
            payload = contract.encode(body)
            self.outbox.enqueue(
                self.topics.camera_status(cid),
                payload,
                kind="camera_status",
                retain=True,
                msg_id=msg_id,
                ttl=STATUS_TTL,
            )
            self.produced.add("camera_status", len(payload))
            self.uplink.wake()

    def alert_start(self) -> Alert:
        """Commit an alert with its evidence JPEG in one transaction, as ``AlertWriter.raised``."""
        material = self.plan.material
        alert = make_alert(self.rng, time.time())
        jpeg = self.rng.choice(material.jpegs)
        saved = EvidenceInfo(
            path=str(self.state_dir / "evidence" / f"{alert.id}.jpg"),
            width=material.jpeg_width,
            height=material.jpeg_height,
            size=len(jpeg),
            sha256=_sha256(jpeg),
            source="main",
        )
        event = alert.event()
        payload = contract.encode(contract.alert(self.config, event, saved, model=material.model))
        record = contract.alert_record(event, saved)
        self.outbox.record_alert(
            record, self.topics.alert, payload, (self.topics.evidence(alert.id), jpeg)
        )
        self.alerts["raised"] += 1
        self.produced.add("alert", len(payload))
        self.produced.add("evidence", len(jpeg))
        self.uplink.wake()
        return alert

    def alert_end(self, alert: Alert) -> None:
        """Commit the alert's end (no better frame: no new image)."""
        now = time.time()
        ended = replace(alert, phase="end", ended_at=now - 1.0, end_reason="cleared")
        body = contract.alert(self.config, ended.event(), None, model=self.plan.material.model)
        payload = contract.encode(body)
        self.outbox.record_alert_end(
            alert.id,
            ended_at=now - 1.0,
            reason="cleared",
            confidence=alert.confidence,
            topic=self.topics.alert,
            payload=payload,
        )
        self.alerts["ended"] += 1
        self.produced.add("alert", len(payload))
        self.uplink.wake()

    def prefill(self, minutes: float) -> None:
        """Queue what a box commits in ``minutes`` (real rates) while its broker is away.

        Setup only: one transaction for the whole backlog (the agent commits each message
        on its own), with the payloads of one snapshot given fresh ids and times.
        """
        rates = self.plan.rates
        material = self.plan.material
        now = time.time()
        start = now - minutes * 60.0
        snapshots, health = self.snapshot_health(start)
        beat = contract.heartbeat(self.config, "x", now=start, started=self.started, health=health)
        statuses = {
            cid: contract.camera_status(self.config, "x", cid, snap, now=start)
            for cid, snap in snapshots.items()
        }
        beats = int(minutes * 60.0 / rates.heartbeat_interval)
        alerts = round(minutes * 60.0 * rates.alerts_per_day / (rates.kitchen_hours * 3600.0))
        every = max(1, beats // max(1, alerts)) if alerts else 0
        with self.outbox._transaction() as conn:  # setup only, as scripts/bench/bench_outbox.py
            for b in range(beats):
                at = start + b * rates.heartbeat_interval
                items = [(self.topics.heartbeat, beat, "heartbeat", False, HEARTBEAT_TTL)]
                items += [
                    (self.topics.camera_status(cid), body, "camera_status", True, STATUS_TTL)
                    for cid, body in statuses.items()
                ]
                for topic, body, kind, retain, ttl in items:
                    body["id"], body["ts"] = uuid.uuid4().hex, contract.utc_iso(at)
                    payload = contract.encode(body)
                    Store._insert(
                        conn,
                        topic,
                        payload,
                        kind=kind,
                        qos=1,
                        retain=retain,
                        msg_id=body["id"],
                        now=at,
                        ttl=ttl,
                    )
                    self.produced.add(kind, len(payload))
                if every and b % every == 0 and self.produced.count["evidence"] < alerts:
                    alert = make_alert(self.rng, at)
                    jpeg = self.rng.choice(material.jpegs)
                    saved = EvidenceInfo(
                        path="x.jpg",
                        width=material.jpeg_width,
                        height=material.jpeg_height,
                        size=len(jpeg),
                        sha256=_sha256(jpeg),
                        source="main",
                    )
                    payload = contract.encode(
                        contract.alert(self.config, alert.event(), saved, model=material.model)
                    )
                    self.outbox._insert_alert(
                        conn,
                        self.topics.alert,
                        payload,
                        msg_id=alert.id,
                        evidence=(self.topics.evidence(alert.id), jpeg),
                        evidence_id=f"{alert.id}:evidence",
                        now=at,
                    )
                    self.produced.add("alert", len(payload))
                    self.produced.add("evidence", len(jpeg))

    def produce(self, t0: float, t1: float, abort: threading.Event) -> None:
        """Commit this box's messages on its schedule from ``t0`` until ``t1`` (epoch s)."""
        rates = self.plan.rates
        events: list[tuple[float, int, str, Alert | None]] = []
        serial = 0

        def push(when: float, kind: str, alert: Alert | None = None) -> None:
            nonlocal serial
            serial += 1
            heapq.heappush(events, (when, serial, kind, alert))

        # Boxes were switched on at different moments: their beats are spread over a period.
        push(t0 + self.rng.uniform(0, rates.heartbeat_period), "beat")
        if rates.alert_rate > 0:
            push(t0 + self.rng.expovariate(rates.alert_rate), "alert")
        try:
            while events and events[0][0] < t1:
                when, _, kind, alert = heapq.heappop(events)
                if abort.wait(max(0.0, when - time.time())):
                    return
                if kind == "beat":
                    self.heartbeat()
                    push(when + rates.heartbeat_period, "beat")
                elif kind == "alert":
                    started = self.alert_start()
                    push(when + rates.alert_duration / rates.accel, "end", started)
                    push(when + self.rng.expovariate(rates.alert_rate), "alert")
                elif alert is not None:
                    self.alert_end(alert)
        except Exception:
            logger.exception("box %d: producer failed", self.index)

    def close(self, *, stop_uplink: bool = True) -> int:
        """Stop the uplink (it drains briefly and says offline) and close the outbox; return
        the messages left undelivered."""
        if stop_uplink:
            self.uplink.stop(drain_timeout=3.0)
        left = sum(self.outbox.backlog().values())
        self.outbox.close()
        return left


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- worker process


def _proc_status(field_name: str, pid: int | str = "self") -> int:
    """An integer field of /proc/<pid>/status (kB for memory fields); 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _connect_all(boxes: list[SimBox], started: set[int], timeout: float) -> int:
    """Start every box's uplink at once; return how many connected within ``timeout``."""
    for box in boxes:
        box.uplink.start()
        started.add(box.index)
    deadline = time.monotonic() + timeout
    for box in boxes:
        box.uplink.wait_connected(max(0.0, deadline - time.monotonic()))
    return sum(1 for b in boxes if b.uplink.connected)


def _run_window(boxes: list[SimBox], t0: float, t1: float) -> int:
    """Every box produces on its schedule from ``t0`` to ``t1``; return the process's
    threads at the end of the window."""
    abort = threading.Event()
    threads = [
        threading.Thread(
            target=box.produce, args=(t0, t1, abort), name=f"produce-{box.index}", daemon=True
        )
        for box in boxes
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, t1 - time.time()))
    threads_now = _proc_status("Threads")
    abort.set()  # a producer still committing finishes its current message
    for thread in threads:
        thread.join(timeout=10.0)
    return threads_now


def _drain_window(boxes: list[SimBox], started: set[int], t1: float) -> float:
    """Connect every box at once and wait until their backlogs are gone (or ``t1``); return
    when the last outbox emptied (epoch s)."""
    _connect_all(boxes, started, max(1.0, t1 - time.time()))
    while time.time() < t1:
        if not any(box.outbox.backlog() for box in boxes):
            break
        time.sleep(0.25)
    return time.time()


def worker_main(plan: WorkerPlan, conn: Connection) -> None:
    """Run ``plan``'s boxes: connect (or fill a backlog), report ready, produce (or drain)
    on "go", report, close on "stop"."""
    logging.basicConfig(level=logging.WARNING, format="%(processName)s %(name)s: %(message)s")
    boxes: list[SimBox] = []
    started: set[int] = set()
    burst = plan.backlog_minutes > 0
    try:
        with ThreadPoolExecutor(max_workers=16, thread_name_prefix="open") as pool:
            boxes = list(pool.map(lambda i: SimBox(i, plan), plan.indices))
            if burst:
                list(pool.map(lambda b: b.prefill(plan.backlog_minutes), boxes))
        ready = len(boxes) if burst else _connect_all(boxes, started, plan.connect_timeout)
        conn.send(("ready", ready))
        command, t0, t1 = conn.recv()
        if command != "go":
            return
        time.sleep(max(0.0, t0 - time.time()))
        cpu0 = _self_cpu()
        if burst:
            drained = _drain_window(boxes, started, t1)
            threads_now = _proc_status("Threads")
        else:
            drained = t1
            threads_now = _run_window(boxes, t0, t1)
        cpu1 = _self_cpu()
        totals = Produced()
        for box in boxes:
            for kind in KINDS:
                totals.count[kind] += box.produced.count[kind]
                totals.nbytes[kind] += box.produced.nbytes[kind]
        conn.send(
            (
                "produced",
                {
                    "count": totals.count,
                    "bytes": totals.nbytes,
                    "cpu_s": cpu1 - cpu0,
                    "threads": threads_now,
                    "rss_kb": _proc_status("VmRSS"),
                    "connected": sum(1 for b in boxes if b.uplink.connected),
                    "drained_at": drained,
                },
            )
        )
        conn.recv()  # "stop": the platform has what it will get
    finally:
        with ThreadPoolExecutor(max_workers=64, thread_name_prefix="close") as pool:
            left = sum(pool.map(lambda b: b.close(stop_uplink=b.index in started), boxes))
        with contextlib.suppress(OSError, EOFError):
            conn.send(("closed", left))
        conn.close()


# --------------------------------------------------------------------------- platform side


def _epoch(ts: str) -> float:
    """``2026-11-26T13:45:00.123Z`` as epoch seconds."""
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


def topic_filters(prefix: str, group: str) -> list[str]:
    """What the platform subscribes to: every box-to-platform topic, shared by ``group``."""
    root = f"$share/{group}/{prefix}/+/+/+"
    return [
        f"{root}/availability",
        f"{root}/heartbeat",
        f"{root}/camera/+/status",
        f"{root}/alert",
        f"{root}/evidence/+",
        f"{root}/command/reply",
    ]


@dataclass
class Received:
    """What the platform got since the last reset."""

    records: list[tuple[float, str, int, str, float]] = field(default_factory=list)
    alert_ts: dict[str, float] = field(default_factory=dict)
    availability: int = 0


class Platform:
    """``consumers`` MQTT 5 clients in one shared-subscription group, like platform workers."""

    def __init__(self, url: str, consumers: int, prefix: str, levels: int) -> None:
        """Connect and subscribe every consumer.

        Raises:
            RuntimeError: a consumer could not connect or subscribe within 10 s.
        """
        self._lock = threading.Lock()
        self._got = Received()
        self._levels = levels  # topic levels before the box's own topics
        host_name, port, user, password = parse_mqtt_url(url)
        self.clients: list[mqtt.Client] = []
        for n in range(consumers):
            ready = threading.Event()
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=f"platform-ingest-{n}",
                protocol=mqtt.MQTTv5,
            )
            if user is not None:
                client.username_pw_set(user, password)
            client.on_message = self._on_message
            client.on_subscribe = lambda *_args, ev=ready: ev.set()
            filters = [(f, 1) for f in topic_filters(prefix, "platform")]
            client.on_connect = lambda c, *_args, fs=filters: c.subscribe(fs)
            client.connect(host_name, port, keepalive=30)
            client.loop_start()
            self.clients.append(client)
            if not ready.wait(10.0):
                self.close()
                raise RuntimeError(f"platform consumer {n} did not subscribe within 10 s")

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        levels = msg.topic.split("/")[self._levels :]
        payload = msg.payload
        try:
            if levels[0] == "evidence":
                record = (now, "evidence", len(payload), levels[1], 0.0)
            elif levels[0] == "availability":
                with self._lock:
                    self._got.availability += 1
                return
            else:
                body = json.loads(payload)
                kind = {"heartbeat": "heartbeat", "alert": "alert", "camera": "camera_status"}.get(
                    levels[0], "other"
                )
                ts = _epoch(body["ts"])
                record = (now, kind, len(payload), str(body["id"]), ts)
                if kind == "alert" and body.get("event") == "start":
                    with self._lock:
                        self._got.alert_ts[str(body["alert_id"])] = ts
        except (ValueError, KeyError, IndexError, TypeError):
            logger.warning("platform: cannot read a message on %s", msg.topic)
            return
        with self._lock:
            self._got.records.append(record)

    def take(self) -> Received:
        """What arrived since the last call; starts a new collection."""
        with self._lock:
            got, self._got = self._got, Received()
        return got

    def peek_count(self) -> int:
        """Messages (availability aside) received since the last ``take``."""
        with self._lock:
            return len(self._got.records)

    def close(self) -> None:
        """Disconnect every consumer."""
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


# --------------------------------------------------------------------------- measuring


def find_pid(needle: str) -> int | None:
    """The pid of a process whose command line contains ``needle``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            return int(entry.name)
    return None


def proc_cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat; niced work (a background
    training) does not count as busy, since it yields to everything else."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[1] + values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


@dataclass
class StepResult:
    """One step of the ramp."""

    boxes: int
    equivalent_boxes: float
    connected: int
    seconds: float
    target_msgs_s: float
    produced: int
    offered_msgs_s: float
    offered_kb_s: float
    delivered_msgs_s: float
    delivered_kb_s: float
    delivered_share: float  # unique messages received by the end of the grace / produced
    duplicates: int
    latency_ms: dict[str, float | None]
    latency_ms_by_kind: dict[str, dict[str, float | None]]
    offered_by_kind: dict[str, dict[str, float]]
    broker_cpu_pct: float | None
    broker_rss_mb: float | None
    broker_us_per_msg: float | None  # broker CPU per message delivered (in and out)
    sim_cpu_cores: float
    platform_cpu_cores: float
    machine_busy_pct: float
    worker_threads: int
    worker_rss_mb: float
    setup_s: float
    left_in_outboxes: int
    availability_msgs: int
    peak_msgs_s: int = 0  # the busiest second at the platform
    drop_notices: int | None = None  # DROP_NOTICE lines the broker logged (own broker only)
    mode: str = "ramp"  # "ramp": steady production; "burst": power-on with a backlog
    backlog_minutes: float = 0.0
    stop: str = ""


def run_step(
    boxes: int,
    args: argparse.Namespace,
    *,
    url: str,
    state_root: Path,
    platform: Platform,
    broker_pid: int | None,
    material: Material,
    rates: Rates,
    backlog_minutes: float = 0.0,
    broker: Broker | None = None,
) -> StepResult:
    """Run ``boxes`` simulated boxes for ``args.seconds`` and measure what got through.

    With ``backlog_minutes`` it is the morning power-on instead: each box starts with what
    it queued in that many minutes without a broker, all connect at once, and the window
    lasts until every outbox is empty.

    Raises:
        RuntimeError: a worker died or did not report in time.
    """
    ctx = mp.get_context("spawn")  # the platform's paho threads must not be forked
    processes = max(1, min(args.processes, boxes))
    shares = [tuple(range(p, boxes, processes)) for p in range(processes)]
    pipes: list[Connection] = []
    workers = []
    burst = backlog_minutes > 0
    platform.take()  # whatever the previous step left (its "offline" availability)
    drops_before = broker.log.count(DROP_NOTICE) if broker is not None else 0
    t_setup = time.monotonic()
    try:
        for p, indices in enumerate(shares):
            parent, child = ctx.Pipe()
            plan = WorkerPlan(
                indices,
                url,
                str(state_root),
                args.city,
                args.prefix,
                rates,
                material,
                args.seed,
                backlog_minutes=backlog_minutes,
            )
            worker = ctx.Process(
                target=worker_main, args=(plan, child), name=f"boxes-{p}", daemon=True
            )
            worker.start()
            child.close()
            pipes.append(parent)
            workers.append(worker)
        connected = sum(int(_expect(pipe, "ready", 180.0)[1]) for pipe in pipes)
        setup_s = time.monotonic() - t_setup
        time.sleep(1.0)  # the "online" availability burst lands before the window
        online = platform.take().availability
        t0 = time.time() + 0.5
        t1 = t0 + (args.burst_timeout if burst else args.seconds)
        for pipe in pipes:
            pipe.send(("go", t0, t1))
        time.sleep(max(0.0, t0 - time.time()))
        broker0 = proc_cpu_s(broker_pid) if broker_pid else 0.0
        self0, ticks0 = _self_cpu(), machine_ticks()
        if burst:  # the workers report when their outboxes are empty
            reports = [_expect(pipe, "produced", t1 - time.time() + 60.0)[1] for pipe in pipes]
            end = max(float(r["drained_at"]) for r in reports)
        else:
            time.sleep(max(0.0, t1 - time.time()))
            end = t1
        broker1 = proc_cpu_s(broker_pid) if broker_pid else 0.0
        self1, ticks1 = _self_cpu(), machine_ticks()
        broker_rss = _proc_status("VmRSS", broker_pid) / 1024 if broker_pid else None
        if not burst:
            reports = [_expect(pipe, "produced", 60.0)[1] for pipe in pipes]
        produced_total = sum(sum(r["count"].values()) for r in reports)
        deadline = time.monotonic() + args.grace
        while platform.peek_count() < produced_total and time.monotonic() < deadline:
            time.sleep(0.2)
        got = platform.take()
        for pipe in pipes:
            pipe.send(("stop",))
        left = sum(int(_expect(pipe, "closed", 120.0)[1]) for pipe in pipes)
        for worker in workers:
            worker.join(timeout=30.0)
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
                worker.join(timeout=5.0)
        for pipe in pipes:
            pipe.close()
    result = summarise(
        boxes,
        args,
        rates=rates,
        connected=connected,
        window=(t0, end),
        reports=reports,
        got=got,
        broker_cpu=(broker1 - broker0) if broker_pid else None,
        broker_rss=broker_rss,
        platform_cpu=self1 - self0,
        ticks=(ticks1[0] - ticks0[0], ticks1[1] - ticks0[1]),
        setup_s=setup_s,
        left=left,
    )
    result.availability_msgs = online
    if broker is not None:
        result.drop_notices = broker.log.count(DROP_NOTICE) - drops_before
    if burst:
        result.mode, result.backlog_minutes = "burst", backlog_minutes
        result.availability_msgs = got.availability
        result.connected = sum(int(r["connected"]) for r in reports)
        result.target_msgs_s = boxes * MqttConfig().max_rate  # each box's drain is capped
    return result


def _expect(pipe: Connection, what: str, timeout: float) -> tuple[Any, ...]:
    if not pipe.poll(timeout):
        raise RuntimeError(f"a worker did not report {what!r} within {timeout:.0f} s")
    message: tuple[Any, ...] = pipe.recv()
    if message[0] != what:
        raise RuntimeError(f"a worker reported {message[0]!r} instead of {what!r}")
    return message


def summarise(
    boxes: int,
    args: argparse.Namespace,
    *,
    rates: Rates,
    connected: int,
    window: tuple[float, float],
    reports: list[dict[str, Any]],
    got: Received,
    broker_cpu: float | None,
    broker_rss: float | None,
    platform_cpu: float,
    ticks: tuple[int, int],
    setup_s: float,
    left: int,
) -> StepResult:
    """Turn the workers' reports and the platform's receipts into one step's figures."""
    t0, t1 = window
    seconds = t1 - t0
    count = {k: sum(r["count"][k] for r in reports) for k in KINDS}
    nbytes = {k: sum(r["bytes"][k] for r in reports) for k in KINDS}
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    in_window = [0, 0]
    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    for recv, kind, size, key, ts in got.records:
        if (kind, key) in seen:
            duplicates += 1
            continue
        seen.add((kind, key))
        if recv <= t1:
            in_window[0] += 1
            in_window[1] += size
        sent = got.alert_ts.get(key, 0.0) if kind == "evidence" else ts
        if sent >= t0 - 1.0 and kind in latencies:
            latencies[kind].append(recv - sent)
    every = [v for values in latencies.values() for v in values]
    per_second: dict[int, int] = {}
    for recv, *_rest in got.records:
        per_second[int(recv)] = per_second.get(int(recv), 0) + 1
    produced = sum(count.values())
    target = sum(rates.target_per_box().values()) * boxes
    return StepResult(
        boxes=boxes,
        equivalent_boxes=boxes * rates.accel,
        connected=connected,
        seconds=round(seconds, 1),
        target_msgs_s=round(target, 1),
        produced=produced,
        offered_msgs_s=round(produced / seconds, 1),
        offered_kb_s=round(sum(nbytes.values()) / seconds / 1000, 1),
        delivered_msgs_s=round(in_window[0] / seconds, 1),
        delivered_kb_s=round(in_window[1] / seconds / 1000, 1),
        delivered_share=round(len(seen) / produced, 4) if produced else 0.0,
        duplicates=duplicates,
        latency_ms={
            "p50": _ms(percentile(every, 0.50)),
            "p95": _ms(percentile(every, 0.95)),
            "p99": _ms(percentile(every, 0.99)),
            "max": _ms(max(every) if every else None),
        },
        latency_ms_by_kind={
            k: {"p50": _ms(percentile(v, 0.5)), "p95": _ms(percentile(v, 0.95))}
            for k, v in latencies.items()
        },
        offered_by_kind={
            k: {
                "msgs_s": round(count[k] / seconds, 2),
                "kb_s": round(nbytes[k] / seconds / 1000, 1),
            }
            for k in KINDS
        },
        broker_cpu_pct=round(100 * broker_cpu / seconds, 1) if broker_cpu is not None else None,
        broker_rss_mb=round(broker_rss, 1) if broker_rss is not None else None,
        broker_us_per_msg=(
            round(1e6 * broker_cpu / in_window[0], 1)
            if broker_cpu is not None and in_window[0]
            else None
        ),
        sim_cpu_cores=round(sum(r["cpu_s"] for r in reports) / seconds, 2),
        platform_cpu_cores=round(platform_cpu / seconds, 2),
        machine_busy_pct=round(100 * ticks[0] / ticks[1], 1) if ticks[1] else 0.0,
        worker_threads=sum(int(r["threads"]) for r in reports),
        worker_rss_mb=round(sum(r["rss_kb"] for r in reports) / 1024, 1),
        setup_s=round(setup_s, 1),
        left_in_outboxes=left,
        availability_msgs=got.availability,
        peak_msgs_s=max(per_second.values(), default=0),
    )


def verdict(result: StepResult, args: argparse.Namespace) -> str:
    """Why the ramp stops after this step; empty to go on."""
    p95 = result.latency_ms["p95"]
    reasons = [
        (
            result.connected < result.boxes,
            f"only {result.connected} of {result.boxes} boxes connected",
        ),
        (
            result.offered_msgs_s < STOP_BEHIND * result.target_msgs_s,
            f"the boxes committed {result.offered_msgs_s:.0f} of {result.target_msgs_s:.0f}"
            " msg/s: this machine, not the broker, is the limit",
        ),
        (
            result.delivered_msgs_s < STOP_BEHIND * result.offered_msgs_s,
            "delivery fell more than 10 % behind the offered rate",
        ),
        (
            bool(result.drop_notices),
            "the broker dropped messages queued for the platform's consumers",
        ),
        (
            result.delivered_share < STOP_BEHIND,
            f"only {100 * result.delivered_share:.1f} % delivered by the end of the grace",
        ),
        (
            p95 is not None and p95 > args.max_p95 * 1000,
            f"p95 latency {(p95 or 0) / 1000:.1f} s over {args.max_p95} s",
        ),
    ]
    return next((why for hit, why in reasons if hit), "")


# --------------------------------------------------------------------------- sizes


def payload_sizes(material: Material, city: str, prefix: str, samples: int) -> dict[str, Any]:
    """Median, min and max bytes per message kind, from payloads built like the boxes build
    them, each validated against its schema in docs/mqtt/ when jsonschema is installed."""
    try:
        import jsonschema  # noqa: PLC0415 - a dev dependency, optional here
    except ImportError:
        jsonschema = None
    with tempfile.TemporaryDirectory(prefix="mclz-fleet-sizes-") as tmp:
        plan = WorkerPlan((0,), "mqtt://127.0.0.1:1", tmp, city, prefix, Rates(), material, 7)
        box = SimBox(0, plan)
        now = time.time()
        beats: list[bytes] = []
        statuses: list[bytes] = []
        for _ in range(samples):
            snapshots, health = box.snapshot_health(now)
            beats.append(
                contract.encode(
                    contract.heartbeat(
                        box.config, uuid.uuid4().hex, now=now, started=box.started, health=health
                    )
                )
            )
            statuses += [
                contract.encode(
                    contract.camera_status(box.config, uuid.uuid4().hex, cid, s, now=now)
                )
                for cid, s in snapshots.items()
            ]
        starts, ends = [], []
        for jpeg in material.jpegs:
            alert = make_alert(box.rng, now)
            saved = EvidenceInfo(
                path="x.jpg",
                width=material.jpeg_width,
                height=material.jpeg_height,
                size=len(jpeg),
                sha256=_sha256(jpeg),
                source="main",
            )
            event = alert.event()
            starts.append(
                contract.encode(contract.alert(box.config, event, saved, model=material.model))
            )
            end = replace(event, phase="end", ended_at=now, end_reason="cleared")
            ends.append(
                contract.encode(contract.alert(box.config, end, None, model=material.model))
            )
        online = contract.availability_payload("online", "connected", now)
        will = contract.availability_payload("offline", "connection_lost", None)
        box.outbox.close()
    validated = False
    if jsonschema is not None:
        checks = [
            ("heartbeat", beats),
            ("camera_status", statuses),
            ("alert", starts + ends),
            ("availability", [online, will]),
        ]
        for name, payloads in checks:
            schema = load_schema(name)
            for payload in payloads:
                jsonschema.validate(json.loads(payload), schema)
        validated = True
    kinds = {
        "heartbeat": beats,
        "camera_status": statuses,
        "alert_start": starts,
        "alert_end": ends,
        "evidence": list(material.jpegs),
        "availability": [online],
        "last_will": [will],
    }
    return {
        "validated_against_schemas": validated,
        "evidence_size": f"{material.jpeg_width}x{material.jpeg_height}",
        "kinds": {
            kind: {
                "median": int(statistics.median(len(p) for p in payloads)),
                "min": min(len(p) for p in payloads),
                "max": max(len(p) for p in payloads),
                "samples": len(payloads),
            }
            for kind, payloads in kinds.items()
        },
    }


# --------------------------------------------------------------------------- output


def sizes_table(sizes: dict[str, Any], rates: Rates) -> list[str]:
    """Markdown: bytes per message kind and what one real box sends a day."""
    kinds = sizes["kinds"]
    per_day = {
        "heartbeat": 86400 / rates.heartbeat_interval,
        "camera_status": CAMERAS * 86400 / rates.heartbeat_interval,
        "alert_start": rates.alerts_per_day,
        "alert_end": rates.alerts_per_day,
        "evidence": rates.alerts_per_day,
        "availability": 1,
    }
    lines = [
        "| message | median bytes | min | max | per real box per day | MB per box per day |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    for kind, stats in kinds.items():
        count = per_day.get(kind)
        mb = count * stats["median"] / 1e6 if count is not None else None
        total += mb or 0.0
        lines.append(
            f"| {kind} | {stats['median']:,} | {stats['min']:,} | {stats['max']:,} | "
            f"{'' if count is None else f'{count:,.0f}'} | {'' if mb is None else f'{mb:.2f}'} |"
        )
    lines.append(f"| **total** | | | | | **{total:.1f}** |")
    return lines


def results_table(results: list[StepResult]) -> list[str]:
    """Markdown: one row per step of the ramp."""
    lines = [
        "| boxes (x accel = real) | target msg/s | offered msg/s | offered kB/s | delivered msg/s"
        " | delivered kB/s | delivered % | p50 / p95 / max ms | mosquitto CPU % of a core"
        " | mosquitto µs/msg | mosquitto RSS MB | sim CPU cores | platform CPU cores"
        " | machine busy % (not niced) | threads |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lat = r.latency_ms
        lines.append(
            f"| {r.boxes} ({r.equivalent_boxes:,.0f}) | {r.target_msgs_s:,.0f} | "
            f"{r.offered_msgs_s:,.0f} | {r.offered_kb_s:,.0f} | {r.delivered_msgs_s:,.0f} | "
            f"{r.delivered_kb_s:,.0f} | {100 * r.delivered_share:.1f} | "
            f"{lat['p50']} / {lat['p95']} / {lat['max']} | {r.broker_cpu_pct} | "
            f"{r.broker_us_per_msg} | {r.broker_rss_mb} | {r.sim_cpu_cores} | "
            f"{r.platform_cpu_cores} | {r.machine_busy_pct} | {r.worker_threads} |"
        )
    return lines


def burst_table(results: list[StepResult]) -> list[str]:
    """Markdown: the power-on steps (every box connects at once with a backlog)."""
    lines = [
        "| boxes | backlog per box | drained in s | offered msg/s | delivered msg/s"
        " | peak msg/s | delivered kB/s"
        " | delivered % | mosquitto CPU % of a core | mosquitto µs/msg | sim CPU cores"
        " | platform CPU cores | availability msgs | broker drop notices |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.mode != "burst":
            continue
        per_box = r.produced / max(1, r.boxes)
        lines.append(
            f"| {r.boxes} | {per_box:,.0f} messages ({r.backlog_minutes:g} min) | {r.seconds} | "
            f"{r.offered_msgs_s:,.0f} | {r.delivered_msgs_s:,.0f} | {r.peak_msgs_s:,} | "
            f"{r.delivered_kb_s:,.0f} | "
            f"{100 * r.delivered_share:.1f} | {r.broker_cpu_pct} | {r.broker_us_per_msg} | "
            f"{r.sim_cpu_cores} | {r.platform_cpu_cores} | {r.availability_msgs} | "
            f"{r.drop_notices} |"
        )
    return lines


def machine() -> dict[str, Any]:
    """Where the figures come from."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        binary = shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/usr/bin") or "mosquitto"
        done = subprocess.run([binary, "-h"], capture_output=True, timeout=5, check=False)
        version = done.stdout.decode(errors="replace").splitlines()[0]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "load_at_start": [round(v, 2) for v in os.getloadavg()],
        "kernel": host.release(),
        "python": host.python_version(),
        "mosquitto": version,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring for examples)."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ramp", default="10,50,100,200,400", help="box counts to step through")
    parser.add_argument("--max-boxes", type=int, default=1000, help="never run more boxes")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per step")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for stragglers")
    parser.add_argument("--accel", type=float, default=10.0, help="rate multiplier (default 10)")
    parser.add_argument("--heartbeat", type=float, default=60.0, help="heartbeat interval, s")
    parser.add_argument("--alerts-per-day", type=float, default=20.0, help="alerts per box a day")
    parser.add_argument(
        "--kitchen-hours", type=float, default=6.0, help="hours a day the alerts fall in"
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes for the boxes")
    parser.add_argument("--consumers", type=int, default=2, help="platform clients in the group")
    parser.add_argument("--broker", help="mqtt://host:port of a running broker (default: own)")
    parser.add_argument("--broker-pid", type=int, help="pid of --broker, to measure its CPU")
    parser.add_argument(
        "--workdir", type=Path, help="where the boxes' outboxes go (default: the temp dir)"
    )
    parser.add_argument(
        "--evidence-width",
        type=int,
        default=1280,
        help="resize the clip's frames to this width before encoding (0: the clip's 768)",
    )
    parser.add_argument("--max-p95", type=float, default=5.0, help="stop above this p95, s")
    parser.add_argument(
        "--burst-boxes",
        type=int,
        default=100,
        help="after the ramp, this many boxes power on at once with a backlog (0: skip)",
    )
    parser.add_argument(
        "--backlog-minutes",
        type=float,
        default=30.0,
        help="the burst's backlog: what a box queues in this many minutes offline",
    )
    parser.add_argument(
        "--burst-timeout", type=float, default=180.0, help="give up the burst after this, s"
    )
    parser.add_argument("--city", default="hangzhou", help="identity.city of the boxes")
    parser.add_argument("--prefix", default="mclz", help="mqtt.topic_prefix of the boxes")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.ramp_list = sorted({int(v) for v in args.ramp.split(",") if v.strip()})
    if not args.ramp_list or min(args.ramp_list) < 1:
        parser.error("--ramp needs positive box counts, e.g. 10,50,100")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure payload sizes, then ramp the fleet until the broker or the machine gives."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    rates = Rates(
        heartbeat_interval=args.heartbeat,
        alerts_per_day=args.alerts_per_day,
        kitchen_hours=args.kitchen_hours,
        accel=args.accel,
    )
    about = machine()
    print(f"# fleet_sim {about['date']}: {about['cpus']} x {about['cpu']}, {about['mosquitto']}")
    material = make_material(args.evidence_width, 8)
    sizes = payload_sizes(material, args.city, args.prefix, samples=5)
    print()
    print("\n".join(sizes_table(sizes, rates)))
    print(
        f"\nevidence: {sizes['evidence_size']} JPEG; payloads validated against docs/mqtt: "
        f"{sizes['validated_against_schemas']}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="mclz-fleet-", dir=args.workdir))
    broker: Broker | None = None
    platform: Platform | None = None
    results: list[StepResult] = []
    try:
        if args.broker:
            url, broker_pid = args.broker, args.broker_pid
        else:
            broker = Broker(workdir / "broker").start()
            url, broker_pid = broker.url, find_pid(str(broker.conf_path))
        levels = len(args.prefix.split("/")) + 3
        platform = Platform(url, args.consumers, args.prefix, levels)
        print()
        for boxes in args.ramp_list:
            if boxes > args.max_boxes:
                break
            result = run_step(
                boxes,
                args,
                url=url,
                state_root=workdir / "boxes",
                platform=platform,
                broker_pid=broker_pid,
                material=material,
                rates=rates,
                broker=broker,
            )
            result.stop = verdict(result, args)
            results.append(result)
            print("\n".join(results_table([result])[2:]), flush=True)
            if result.stop:
                print(f"stop: {result.stop}")
                break
        if args.burst_boxes > 0:
            result = run_step(
                min(args.burst_boxes, args.max_boxes),
                args,
                url=url,
                state_root=workdir / "boxes",
                platform=platform,
                broker_pid=broker_pid,
                material=material,
                rates=rates,
                backlog_minutes=args.backlog_minutes,
                broker=broker,
            )
            results.append(result)
    finally:
        if platform is not None:
            platform.close()
        if broker is not None:
            broker.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("\n".join(results_table([r for r in results if r.mode == "ramp"])))
    if any(r.mode == "burst" for r in results):
        print()
        print("\n".join(burst_table(results)))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": about,
                    "rates": asdict(rates),
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "payload_sizes": sizes,
                    "steps": [asdict(r) for r in results],
                },
                indent=2,
                ensure_ascii=False,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
