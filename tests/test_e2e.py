"""The whole slice, real at every step: RTSP camera -> PyAV -> ONNX -> rule -> SQLite -> MQTT.

The agent runs as a subprocess (``python -m agent run``) against a real mosquitto and a
real GStreamer RTSP server streaming H.264 made by the test. Until the project's trained
model lands, a tiny real ONNX model that reacts to a magenta square plays the detector.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from conftest import SmallDiskFactory
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.detect.model import load_model_package
from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.factories import ClipFactory, CollectorFactory, RtspServerFactory
from mclz_testkit.mqtt import MqttCollector, load_schema, mqtt_publish
from mclz_testkit.synthetic_model import build_pattern_model, build_slow_model

REPO = Path(__file__).resolve().parents[1]
ROOT = "mclz/hz/s-001/box-01"
MAGENTA = (255, 0, 255)
CAM_SECRET = "Cam-S3cret-9"


def magenta_after(first_frame: int) -> Any:
    """Squares function: a large magenta square from ``first_frame`` on."""

    def squares(i: int) -> list[tuple[float, float, float, tuple[int, int, int]]]:
        return [(0.5, 0.5, 0.35, MAGENTA)] if i >= first_frame else []

    return squares


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pattern_model(tmp_path_factory.mktemp("model") / "pattern")


def write_config(
    tmp_path: Path, broker: Broker, camera_url: str, model: Path, *, password_env: str | None = None
) -> Path:
    camera: dict[str, Any] = {"name": "后厨", "url": camera_url, "offline_after": 5}
    if password_env:
        camera["password"] = {"env": password_env}
    data = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"url": broker.url, "reconnect_min": 1, "reconnect_max": 2},
        "cameras": {"kitchen-1": camera},
        "model": {"path": str(model), "conf_threshold": 0.3},
        "rules": {
            "no_hat": {
                "labels": ["head_bare"],
                "min_duration": 1.0,
                "end_after": 3,
                "cooldown": 600,
            }
        },
        "storage": {"state_dir": str(tmp_path / "state")},
        "heartbeat": {"interval": 2},
        "logging": {"level": "debug"},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def payloads(collector: MqttCollector, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in collector.messages(f"{ROOT}/{suffix}")]


def db_rows(tmp_path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "state" / "agent.db") as conn:
        return conn.execute(sql).fetchall()


def stored_alerts(tmp_path: Path) -> int:
    """Alerts in the agent's database; 0 while it is still being created and migrated."""
    if not (tmp_path / "state" / "agent.db").exists():
        return 0
    try:
        return int(db_rows(tmp_path, "SELECT COUNT(*) FROM alerts")[0][0])
    except sqlite3.OperationalError:
        return 0


def test_alert_travels_the_whole_path(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A sustained violation on a real RTSP stream gives one alert over MQTT, with evidence."""
    clip = clip_factory(seconds=6, fps=10, gop=10, squares=magenta_after(10))
    server = rtsp_server_factory({"/kitchen": clip}, user="admin", password=CAM_SECRET)
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    config = write_config(
        tmp_path, broker, server.url("/kitchen", user="admin"), model_dir, password_env="CAM_PW"
    )
    agent = AgentProcess(config, {"CAM_PW": CAM_SECRET}).start()
    agents.append(agent)

    collector.wait_for(lambda ms: len(ms) >= 1, 40, topic_filter=f"{ROOT}/alert")
    collector.wait_for(lambda ms: len(ms) >= 1, 20, topic_filter=f"{ROOT}/evidence/+")
    collector.wait_for(lambda ms: len(ms) >= 2, 20, topic_filter=f"{ROOT}/heartbeat")
    time.sleep(3)  # the square stays: no second alert may follow (cooldown, one episode)
    code, took = agent.terminate()
    assert code == 0, agent.log
    assert took < 5.0, f"shutdown took {took:.1f} s"

    alerts = payloads(collector, "alert")
    assert [a["event"] for a in alerts] == ["start", "end"], alerts
    alert, end = alerts
    jsonschema.validate(alert, load_schema("alert"))
    jsonschema.validate(end, load_schema("alert"))
    assert end["alert_id"] == alert["alert_id"] == alert["id"]
    assert end["id"] == f"{alert['id']}:end"
    assert end["end_reason"] == "agent_stop"  # the square was still there at SIGTERM
    assert end["duration_s"] >= alert["duration_s"]
    assert alert["type"] == "no_hat"
    assert alert["camera"] == "kitchen-1"
    assert alert["camera_name"] == "后厨"
    assert alert["duration_s"] > 0  # min_duration counts the interval before the first hit in
    det = alert["detections"][0]
    assert det["label"] == "head_bare"
    cx, cy = (det["box"][0] + det["box"][2]) / 2, (det["box"][1] + det["box"][3]) / 2
    assert abs(cx - 0.5) < 0.1
    assert abs(cy - 0.5) < 0.1
    assert alert["evidence"]["topic"] == f"{ROOT}/evidence/{alert['id']}"
    images = collector.messages(alert["evidence"]["topic"])
    assert len(images) == 1
    jpeg = images[0].payload
    assert hashlib.sha256(jpeg).hexdigest() == alert["evidence"]["sha256"]
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape[:2] == (alert["evidence"]["height"], alert["evidence"]["width"])

    for beat in payloads(collector, "heartbeat"):
        jsonschema.validate(beat, load_schema("heartbeat"))
    last = payloads(collector, "heartbeat")[-1]
    assert last["cameras"]["kitchen-1"]["state"] == "online"
    assert last["cameras_online"] == 1
    assert last["detector"]["inferences"] > 0
    assert last["detector"]["model_sha256"] == load_model_package(model_dir).sha256
    assert last["system"]["agent_rss_mb"] > 10
    assert last["system"]["disk_free_gb"] > 0
    assert len(last["system"]["load"]) == 3

    statuses = payloads(collector, "camera/kitchen-1/status")
    jsonschema.validate(statuses[0], load_schema("camera_status"))
    assert statuses[0]["state"] == "online"
    availability = payloads(collector, "availability")
    assert availability[0]["state"] == "online"
    assert availability[-1] == {**availability[-1], "state": "offline", "reason": "shutdown"}

    stored = db_rows(tmp_path, "SELECT id, type, evidence_path FROM alerts")
    assert [(r[0], r[1]) for r in stored] == [(alert["id"], "no_hat")]
    assert Path(stored[0][2]).read_bytes() == jpeg
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM outbox WHERE kind = 'alert'") == [(0,)]
    assert CAM_SECRET not in agent.log
    everything = b"".join(m.payload for m in collector.messages())
    assert CAM_SECRET.encode() not in everything


def test_no_violation_no_alert(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """No pattern: heartbeats, status and command replies, never an alert; bad commands rejected."""
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=4)})
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(write_config(tmp_path, broker, server.url("/kitchen"), model_dir)).start()
    agents.append(agent)
    beats = collector.wait_for(lambda ms: len(ms) >= 3, 40, topic_filter=f"{ROOT}/heartbeat")
    assert json.loads(beats[-1].payload)["detector"]["frames"] >= 2

    command = f"{ROOT}/command"
    mqtt_publish(broker.url, command, json.dumps({"id": "r1", "command": "ping"}))
    mqtt_publish(broker.url, command, b"\xff not json")
    mqtt_publish(broker.url, command, json.dumps({"id": "r3", "command": "reboot-now"}))
    mqtt_publish(broker.url, command, json.dumps({"id": "r4", "command": "status"}))
    replies = collector.wait_for(lambda ms: len(ms) >= 4, 20, topic_filter=f"{ROOT}/command/reply")
    by_request = {}
    for reply in replies:
        body = json.loads(reply.payload)
        jsonschema.validate(body, load_schema("command_reply"))
        by_request[body["request_id"]] = body
    assert by_request["r1"]["ok"] is True
    assert by_request["r1"]["result"]["pong"] is True
    assert by_request[None]["ok"] is False
    assert "not JSON" in by_request[None]["error"]
    assert by_request["r3"]["ok"] is False
    assert "unknown command 'reboot-now'" in by_request["r3"]["error"]
    assert by_request["r4"]["result"]["cameras"]["kitchen-1"]["state"] == "online"
    code, _ = agent.terminate()
    assert code == 0, agent.log
    assert payloads(collector, "alert") == []


def test_alert_raised_while_broker_down_survives_shutdown_and_is_sent_later(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """Broker down: the alert is committed, SIGTERM loses nothing, the next start delivers it."""
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=4, squares=magenta_after(0))})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    broker.stop()
    agent = AgentProcess(config).start()
    agents.append(agent)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if stored_alerts(tmp_path):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no alert was committed:\n{agent.log[-3000:]}")
    code, took = agent.terminate()
    assert code == 0, agent.log
    assert took < 5.0
    alert_id = db_rows(tmp_path, "SELECT id FROM alerts")[0][0]
    assert db_rows(tmp_path, "SELECT id FROM outbox WHERE kind = 'alert' ORDER BY seq") == [
        (alert_id,),
        (f"{alert_id}:end",),  # SIGTERM ended the running alert
    ]

    broker.start()
    collector = mqtt_collector(broker.url, f"{ROOT}/alert")
    again = AgentProcess(config).start()
    agents.append(again)
    got = collector.wait_for(lambda ms: len(ms) >= 2, 30)
    assert [json.loads(m.payload)["id"] for m in got[:2]] == [alert_id, f"{alert_id}:end"]
    code, _ = again.terminate()
    assert code == 0


def test_kill_9_publishes_last_will_and_keeps_the_backlog(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """kill -9 of the agent: the broker publishes the 'offline' last will; the db is intact."""
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=4)})
    agent = AgentProcess(write_config(tmp_path, broker, server.url("/kitchen"), model_dir)).start()
    agents.append(agent)
    watcher = MqttCollector(broker.url, f"{ROOT}/availability")
    try:
        watcher.wait_for(lambda ms: any(json.loads(m.payload)["state"] == "online" for m in ms), 30)
        time.sleep(2.5)  # let a heartbeat be written
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(5)
        msgs = watcher.wait_for(
            lambda ms: json.loads(ms[-1].payload)["state"] == "offline" if ms else False, 60
        )
        assert json.loads(msgs[-1].payload)["reason"] == "connection_lost"
    finally:
        watcher.close()
    assert db_rows(tmp_path, "PRAGMA integrity_check") == [("ok",)]


def test_alert_running_at_kill_9_is_ended_at_the_next_start(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """kill -9 during an alert: the next start sends its end (agent_restart), none stays open."""
    # The square is on from frame 10 to the end of the 20 s clip: the alert runs for a while.
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=20, squares=magenta_after(10))})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    collector = mqtt_collector(broker.url, f"{ROOT}/alert")
    first = AgentProcess(config).start()
    agents.append(first)
    started = collector.wait_for(lambda ms: len(ms) >= 1, 40)
    start = json.loads(started[0].payload)
    assert start["event"] == "start"
    time.sleep(2.5)  # a heartbeat: the progress record that dates the end
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM alerts WHERE ended_at IS NULL") == [(1,)]
    killed_at = time.time()
    second = AgentProcess(config).start()
    agents.append(second)
    ends = collector.wait_for(
        lambda ms: any(json.loads(m.payload).get("end_reason") == "agent_restart" for m in ms), 40
    )
    end = next(
        json.loads(m.payload)
        for m in ends
        if json.loads(m.payload).get("end_reason") == "agent_restart"
    )
    jsonschema.validate(end, load_schema("alert"))
    assert (end["alert_id"], end["id"], end["event"]) == (
        start["alert_id"],
        f"{start['alert_id']}:end",
        "end",
    )
    ended = datetime.fromisoformat(end["ended_at"].replace("Z", "+00:00")).timestamp()
    raised = datetime.fromisoformat(start["raised_at"].replace("Z", "+00:00")).timestamp()
    assert raised <= ended <= killed_at  # when the killed run was last known alive
    code, _ = second.terminate()
    assert code == 0, second.log[-3000:]
    with sqlite3.connect(tmp_path / "state" / "agent.db") as conn:
        row = conn.execute(
            "SELECT end_reason FROM alerts WHERE id = ?", (start["alert_id"],)
        ).fetchone()
    assert row == ("agent_restart",)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_missing_model_is_a_clear_error(tmp_path: Path, broker: Broker) -> None:
    """A model path that does not exist exits 3 with one line naming it, no traceback."""
    config = write_config(tmp_path, broker, "rtsp://127.0.0.1:1/x", tmp_path / "no-such-model")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3, result.stderr
    assert "no-such-model" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_model_is_a_clear_error(tmp_path: Path, broker: Broker, model_dir: Path) -> None:
    """A model file that does not match its manifest's sha256 is refused at start."""
    copy = tmp_path / "model"
    copy.mkdir()
    for item in model_dir.iterdir():
        copy.joinpath(item.name).write_bytes(item.read_bytes())
    onnx = next(copy.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    config = write_config(tmp_path, broker, "rtsp://127.0.0.1:1/x", copy)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 3, result.stderr
    assert "sha256" in result.stderr
    assert "Traceback" not in result.stderr


def test_systemd_notify_ready_watchdog_stopping(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """Under systemd (NOTIFY_SOCKET, WATCHDOG_USEC) the agent says READY, pings, then STOPPING."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=4)})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    agent = AgentProcess(
        config, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"}
    ).start()
    agents.append(agent)
    received: list[str] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and received.count("WATCHDOG=1") < 2:
            try:
                received.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue
        code, _ = agent.terminate()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "STOPPING=1" not in received:
            try:
                received.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue
    finally:
        sock.close()
    assert code == 0, agent.log
    assert received[0] == "READY=1", received
    assert received.count("WATCHDOG=1") >= 2
    assert "STOPPING=1" in received


def notifications(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """Every line received on the notify socket until ``until``, with its arrival time."""
    out: list[tuple[float, str]] = []
    while time.monotonic() < until:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        now = time.monotonic()
        out.extend((now, line) for line in data.decode().splitlines())
    return out


def test_watchdog_pings_stop_while_the_detector_hangs(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A detector stuck in one inference: STATUS goes on (heartbeats), WATCHDOG=1 stops."""
    from agent.detect.detector import Detector  # noqa: PLC0415

    # Calibrate the busy loop on this machine: one inference on a bright frame takes ~30 s.
    probe_dir = build_slow_model(tmp_path / "probe", iterations=400)
    bright = np.zeros((360, 640, 3), np.uint8)
    bright[100:200, 100:200] = (255, 0, 255)
    detector = Detector(load_model_package(probe_dir), backend="onnxruntime", threads=1)
    started = time.perf_counter()
    detector.detect(bright)
    per_iteration = max(1e-5, (time.perf_counter() - started) / 400)
    model = build_slow_model(tmp_path / "slow", iterations=round(30 / per_iteration))

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    # Magenta from frame 20 (2 s in): before it, frames are dark and inference is quick.
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=30, squares=magenta_after(20))})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model)
    agent = AgentProcess(
        config, {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "4000000"}
    ).start()
    agents.append(agent)
    try:
        received = notifications(sock, time.monotonic() + 30)
    finally:
        sock.close()
    pings = [t for t, line in received if line == "WATCHDOG=1"]
    statuses = [t for t, line in received if line.startswith("STATUS=")]
    assert pings, agent.log[-3000:]
    assert any(line == "READY=1" for _, line in received)
    gaps = [(b - a, a, b) for a, b in zip(pings, [*pings[1:], time.monotonic()], strict=True)]
    longest, gap_start, gap_end = max(gaps)
    # systemd would have restarted the agent: no ping for over twice WatchdogSec (4 s) ...
    assert longest > 8, (gaps, agent.log[-3000:])
    # ... while the health thread went on (STATUS lines with each 2 s heartbeat).
    assert sum(1 for t in statuses if gap_start < t < gap_end) >= 2, statuses
    assert "withholding the watchdog ping" in agent.log
    agent.kill()


def test_full_disk_keeps_the_alert_until_space_returns(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    small_disk: SmallDiskFactory,
    agents: list[AgentProcess],
) -> None:
    """State disk full: the agent keeps running, holds the alert, sends it once space returns."""
    state = small_disk("state", "4m")
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=10, squares=magenta_after(60))})
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(write_config(tmp_path, broker, server.url("/kitchen"), model_dir))
    agents.append(agent.start())
    collector.wait_for(lambda ms: len(ms) >= 1, 30, topic_filter=f"{ROOT}/heartbeat")
    filler = state / "filler"
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, check=False
    )
    # The square appears 6 s into the (looping) clip: the alert is raised on a full disk.
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and "not stored yet" not in agent.log:
        time.sleep(0.5)
    assert "not stored yet" in agent.log, agent.log[-3000:]
    assert agent.proc is not None
    assert agent.proc.poll() is None, "the agent must keep running on a full disk"
    assert payloads(collector, "alert") == []
    filler.unlink()
    got = collector.wait_for(lambda ms: len(ms) >= 1, 30, topic_filter=f"{ROOT}/alert")
    assert json.loads(got[0].payload)["type"] == "no_hat"
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]


def test_camera_outage_is_reported_recorded_and_spares_other_cameras(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A camera dies: stalled, offline after offline_after, outage stored; others stay online."""
    clip = clip_factory(seconds=4)
    dying = rtsp_server_factory({"/kitchen": clip})
    steady = rtsp_server_factory({"/kitchen": clip})
    config = write_config(tmp_path, broker, dying.url("/kitchen"), model_dir)
    data = yaml.safe_load(config.read_text())
    data["cameras"]["kitchen-1"].update(stall_timeout=2, offline_after=4, open_timeout=2)
    data["cameras"]["kitchen-2"] = {"name": "备餐间", "url": steady.url("/kitchen")}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)

    def states(camera: str) -> list[str]:
        return [
            p["state"]
            for p in payloads(collector, f"camera/{camera}/status")
            if p["reason"] != "refresh"
        ]

    collector.wait_for(
        lambda _ms: states("kitchen-1") == ["online"] and states("kitchen-2") == ["online"], 30
    )
    dying.kill()
    collector.wait_for(lambda _ms: states("kitchen-1")[-1:] == ["offline"], 30)
    dying.restart()
    collector.wait_for(lambda _ms: states("kitchen-1")[-1:] == ["online"], 40)
    assert states("kitchen-1") == ["online", "stalled", "offline", "online"]
    assert states("kitchen-2") == ["online"]
    back = [p for p in payloads(collector, "camera/kitchen-1/status") if p["reason"] == "frames"][
        -1
    ]
    jsonschema.validate(back, load_schema("camera_status"))
    assert back["outage"]["reason"] in {"refused", "ended", "timeout", "stall"}
    assert back["outage"]["duration_s"] >= 4.0
    statuses = payloads(collector, "camera/kitchen-1/status")
    offline = next(p for p in statuses if p["state"] == "offline")
    assert offline["quality"] == "unusable"
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]
    rows = db_rows(
        tmp_path, "SELECT camera, until IS NOT NULL, duration_s, reason FROM camera_outages"
    )
    assert len(rows) == 1
    assert rows[0][0] == "kitchen-1"
    assert rows[0][1] == 1
    assert rows[0][2] >= 4.0
    beat = payloads(collector, "heartbeat")[-1]
    jsonschema.validate(beat, load_schema("heartbeat"))
    assert beat["cameras"]["kitchen-2"]["state"] == "online"
    assert beat["cameras"]["kitchen-1"]["reconnects"] >= 1
    # The healthy camera kept its pace through the other's outage.
    assert beat["cameras"]["kitchen-2"]["detect_fps"] >= 0.8
    assert beat["cameras"]["kitchen-2"]["reconnects"] == 0


def test_evidence_comes_from_the_main_stream_when_configured(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """Detection runs on the sub-stream; the evidence JPEG is the main stream's full resolution."""
    squares = magenta_after(10)
    sub = clip_factory("sub.mp4", width=640, height=360, seconds=6, squares=squares)
    main = clip_factory("main.mp4", width=1280, height=720, seconds=6, squares=squares)
    server = rtsp_server_factory({"/sub": sub, "/main": main})
    config = write_config(tmp_path, broker, server.url("/sub"), model_dir)
    data = yaml.safe_load(config.read_text())
    data["cameras"]["kitchen-1"]["main_url"] = server.url("/main")
    data["evidence"] = {"max_width": 1920}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)
    got = collector.wait_for(lambda ms: len(ms) >= 1, 40, topic_filter=f"{ROOT}/alert")
    alert = json.loads(got[0].payload)
    jsonschema.validate(alert, load_schema("alert"))
    assert alert["evidence"]["source"] == "main"
    assert (alert["evidence"]["width"], alert["evidence"]["height"]) == (1280, 720)
    beat = collector.wait_for(lambda ms: len(ms) >= 1, 20, topic_filter=f"{ROOT}/heartbeat")
    main_health = json.loads(beat[-1].payload)["cameras"]["kitchen-1"]["main_stream"]
    assert main_health["width"] == 1280
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]


def test_dead_main_stream_reads_offline_while_the_sub_stream_stays_online(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """The main stream's state is ticked like the sub-stream's: when only the main stream dies,
    the heartbeat's ``main_stream`` reads offline within ``offline_after`` (plus a tick and a
    beat), while the camera itself stays online (its status never reads stalled or offline)."""
    offline_after = 4.0
    sub = rtsp_server_factory({"/sub": clip_factory("sub.mp4", width=640, height=360)})
    main = rtsp_server_factory({"/main": clip_factory("main.mp4", width=1280, height=720)})
    config = write_config(tmp_path, broker, sub.url("/sub"), model_dir)
    data = yaml.safe_load(config.read_text())
    data["cameras"]["kitchen-1"].update(
        main_url=main.url("/main"), stall_timeout=2, offline_after=offline_after, open_timeout=2
    )
    data["heartbeat"] = {"interval": 1}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)

    def last_beat(ms: list[Any]) -> dict[str, Any] | None:
        return json.loads(ms[-1].payload)["cameras"]["kitchen-1"] if ms else None

    def main_state(wanted: str) -> Any:
        def check(ms: list[Any]) -> bool:
            camera = last_beat(ms)
            return camera is not None and camera["main_stream"]["state"] == wanted

        return check

    collector.wait_for(main_state("online"), 40, topic_filter=f"{ROOT}/heartbeat")
    main.kill()
    killed = time.monotonic()
    beats = collector.wait_for(main_state("offline"), 20, topic_filter=f"{ROOT}/heartbeat")
    took = time.monotonic() - killed
    # The last keyframe came up to a GOP (1 s) before the kill; the health loop ticks and
    # the heartbeat goes out once a second each.
    assert took <= offline_after + 3.0, took
    beat = json.loads(beats[-1].payload)
    jsonschema.validate(beat, load_schema("heartbeat"))
    camera = beat["cameras"]["kitchen-1"]
    assert camera["state"] == "online"
    assert camera["main_stream"]["last_error_class"] in {"refused", "ended", "timeout"}
    states = [p["state"] for p in payloads(collector, "camera/kitchen-1/status")]
    assert states[-1] == "online"
    assert not {"stalled", "offline"} & set(states), states
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]
    assert "camera kitchen-1/main: stalled -> offline" in agent.log


def test_black_picture_raises_a_camera_warning(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A camera streaming black is online but warns 'black' after warn_after, once."""
    black = clip_factory("black.mp4", seconds=3, squares=lambda _i: [(0.5, 0.5, 2.0, (0, 0, 0))])
    server = rtsp_server_factory({"/kitchen": black})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    data = yaml.safe_load(config.read_text())
    data["cameras"]["kitchen-1"]["picture"] = {"warn_after": 2, "clear_after": 2}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)
    warned = collector.wait_for(
        lambda ms: any(json.loads(m.payload)["reason"] == "picture:+black" for m in ms),
        30,
        topic_filter=f"{ROOT}/camera/kitchen-1/status",
    )
    status = next(json.loads(m.payload) for m in warned if b"picture:+black" in m.payload)
    jsonschema.validate(status, load_schema("camera_status"))
    assert status["state"] == "online"
    assert status["picture"] == ["black"]
    time.sleep(3)
    reasons = [p["reason"] for p in payloads(collector, "camera/kitchen-1/status")]
    assert reasons.count("picture:+black") == 1
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]
    assert "picture black" in agent.log


def test_mqtt5_commands_snapshot_and_resend(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """Replies go to the MQTT 5 response topic with its correlation data; snapshot, resend."""
    server = rtsp_server_factory({"/kitchen": clip_factory(seconds=4, squares=magenta_after(0))})
    collector = mqtt_collector(broker.url, f"{ROOT}/alert")
    collector_all = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(write_config(tmp_path, broker, server.url("/kitchen"), model_dir)).start()
    agents.append(agent)
    first = collector.wait_for(lambda ms: len(ms) >= 1, 40)
    alert_id = json.loads(first[0].payload)["id"]

    replies: list[tuple[dict[str, Any], bytes | None]] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: replies.append(
        (json.loads(m.payload), getattr(m.properties, "CorrelationData", None))
    )
    client.connect("127.0.0.1", broker.port)
    client.subscribe("platform/replies/#", qos=1)
    client.loop_start()
    try:
        time.sleep(0.5)
        for n, body in enumerate(
            [
                {"id": "s1", "command": "snapshot", "args": {"camera": "kitchen-1"}},
                {"id": "s2", "command": "snapshot", "args": {"camera": "nope"}},
                {"id": "s3", "command": "resend", "args": {"since": "2000-01-01T00:00:00Z"}},
            ]
        ):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = f"platform/replies/{n}"
            props.CorrelationData = f"corr-{n}".encode()
            client.publish(f"{ROOT}/command", json.dumps(body), qos=1, properties=props)
        deadline = time.monotonic() + 20
        while len(replies) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
    by_id = {body["request_id"]: (body, corr) for body, corr in replies}
    snap, corr = by_id["s1"]
    assert corr == b"corr-0"
    jsonschema.validate(snap, load_schema("command_reply"))
    image = cv2.imdecode(np.frombuffer(base64.b64decode(snap["result"]["data_b64"]), np.uint8), 1)
    assert image is not None
    assert image.shape == (360, 640, 3)
    assert by_id["s2"][0]["ok"] is False
    assert "unknown camera 'nope'" in by_id["s2"][0]["error"]
    assert by_id["s3"][0]["result"]["requeued"] >= 1
    again = collector.wait_for(
        lambda ms: [json.loads(m.payload)["id"] for m in ms].count(alert_id) >= 2, 20
    )
    assert again
    images = collector_all.wait_for(
        lambda ms: len(ms) >= 2, 20, topic_filter=f"{ROOT}/evidence/{alert_id}"
    )
    assert images[0].payload == images[1].payload, "the image is sent again from its file"
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]
    recorded = db_rows(tmp_path, "SELECT request_id, ok FROM commands ORDER BY seq")
    assert recorded == [("s1", 1), ("s2", 0), ("s3", 1)]


def test_static_violation_is_still_caught_with_change_gating(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A violation that never moves (think of an uncovered tray): gating skips the unchanged
    frames, forced checks still run every max_skip, and the alert is raised once."""
    # A still scene: a grey wall over the clip's drifting background, a magenta square on it.
    still = [(0.5, 0.5, 2.0, (90, 90, 90)), (0.5, 0.5, 0.35, MAGENTA)]
    clip = clip_factory(seconds=4, fps=10, gop=10, squares=lambda _i: still)
    server = rtsp_server_factory({"/kitchen": clip})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    data = yaml.safe_load(config.read_text())
    data["cameras"]["kitchen-1"].update({"detect_interval": 0.5, "gating": {"max_skip": 2}})
    data["rules"]["no_hat"]["min_duration"] = 3.0
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)
    collector.wait_for(lambda ms: len(ms) >= 1, 40, topic_filter=f"{ROOT}/alert")

    def gated(messages: list[Any]) -> bool:
        gating = [json.loads(m.payload)["cameras"]["kitchen-1"].get("gating") for m in messages]
        return any(g and g["skipped"] >= 4 and g["forced"] >= 2 for g in gating)

    beats = collector.wait_for(gated, 30, topic_filter=f"{ROOT}/heartbeat")
    gating = json.loads(beats[-1].payload)["cameras"]["kitchen-1"]["gating"]
    assert gating["analysed"] < gating["analysed"] + gating["skipped"]
    code, _ = agent.terminate()
    assert code == 0, agent.log
    starts = [a for a in payloads(collector, "alert") if a["event"] == "start"]
    assert len(starts) == 1
    # Skipped frames kept the episode going; the rule counts the frame interval before the first
    # hit in (rules.engine), so the first-seen-to-raised span can be up to ~1.5 intervals short.
    assert starts[0]["duration_s"] >= 3.0 - 1.5 * 0.5


def test_tiled_camera_catches_a_far_violation_the_whole_view_misses(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """One 720p stream read by two cameras: a small magenta square (a far-away bare head)
    is under the model's reach on the camera analysed whole, and raises one alert on the
    camera analysed in 2x2 tiles, with its box in whole-picture coordinates."""
    far = [(0.7, 0.65, 0.065, MAGENTA)]  # 47 px of 720: 12 px at the 320 px model input
    clip = clip_factory(width=1280, height=720, seconds=4, fps=10, gop=10, squares=lambda _i: far)
    server = rtsp_server_factory({"/kitchen": clip})
    config = write_config(tmp_path, broker, server.url("/kitchen"), model_dir)
    data = yaml.safe_load(config.read_text())
    whole = data["cameras"].pop("kitchen-1")
    data["cameras"] = {
        "whole": {**whole, "name": "整体"},
        "tiled": {**whole, "name": "分块", "view": {"tiles": [2, 2]}},
    }
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)
    collector.wait_for(lambda ms: len(ms) >= 1, 40, topic_filter=f"{ROOT}/alert")

    def both_analysed(messages: list[Any]) -> bool:
        cams = [json.loads(m.payload)["cameras"] for m in messages]
        return any(
            all(c.get(k, {}).get("analysed", 0) >= 8 for k in ("whole", "tiled")) for c in cams
        )

    collector.wait_for(both_analysed, 30, topic_filter=f"{ROOT}/heartbeat")
    code, _ = agent.terminate()
    assert code == 0, agent.log
    starts = [a for a in payloads(collector, "alert") if a["event"] == "start"]
    assert [a["camera"] for a in starts] == ["tiled"]
    box = starts[0]["detections"][0]["box"]
    half = 0.065 * 720 / 1280 / 2
    assert box[0] == pytest.approx(0.7 - half, abs=0.01)
    assert box[2] == pytest.approx(0.7 + half, abs=0.01)
    assert (box[1] + box[3]) / 2 == pytest.approx(0.65, abs=0.01)
