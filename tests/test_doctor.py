"""``mclz-agent check`` and ``status`` against real services: mosquitto, RTSP, SQLite, ONNX."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from agent.cli.app import CHECK_FAILED
from agent.cli.main import app
from agent.config import load_config
from agent.install.doctor import (
    MEMORY_BASE_MB,
    MEMORY_PER_CAMERA_MB,
    MEMORY_PER_MAIN_STREAM_MB,
    check_clock,
    check_memory,
    memory_estimate,
)
from agent.records import AlertRecord
from agent.store.database import db_path
from agent.store.store import Store
from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.common import free_port
from mclz_testkit.factories import BrokerFactory, ClipFactory, RtspServerFactory
from mclz_testkit.pki import Pki
from mclz_testkit.synthetic_model import build_pattern_model

CAM_SECRET = "Doctor-Cam-S3cret"
MQTT_SECRET = "Doctor-Mqtt-S3cret"
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pattern_model(tmp_path_factory.mktemp("model") / "pattern")


@pytest.fixture(autouse=True)
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTOR_CAM_PASSWORD", CAM_SECRET)
    monkeypatch.setenv("DOCTOR_MQTT_PASSWORD", MQTT_SECRET)


def write_config(
    tmp_path: Path,
    broker_url: str,
    model: Path,
    *,
    camera_url: str | None = None,
    mqtt_user: str = "",
    camera_password: bool = True,
) -> Path:
    mqtt: dict[str, Any] = {"url": broker_url, "reconnect_min": 1, "reconnect_max": 2}
    if mqtt_user:
        mqtt |= {"username": mqtt_user, "password": {"env": "DOCTOR_MQTT_PASSWORD"}}
    cameras: dict[str, Any] = {}
    if camera_url is not None:
        cameras["kitchen-1"] = {"url": camera_url, "offline_after": 5}
        if camera_password:
            cameras["kitchen-1"]["password"] = {"env": "DOCTOR_CAM_PASSWORD"}
    data = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": mqtt,
        "cameras": cameras,
        "model": {"path": str(model)},
        "storage": {"state_dir": str(tmp_path / "state")},
        "heartbeat": {"interval": 2},
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def run_check(config: Path, *extra: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Exit code, the checks by name, and all output."""
    result = runner.invoke(app, ["check", "--config", str(config), "--json", *extra])
    rows = json.loads(result.stdout)
    return result.exit_code, {r["name"]: r for r in rows}, result.output


def test_check_good_setup_passes(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    model_dir: Path,
    tmp_path: Path,
) -> None:
    """A working broker, camera and model: no FAIL, exit 0, fps measured, no secret shown."""
    server = rtsp_server_factory(
        {"/kitchen": clip_factory(fps=10, gop=10)}, user="admin", password=CAM_SECRET
    )
    config = write_config(
        tmp_path, broker.url, model_dir, camera_url=server.url("/kitchen", user="admin")
    )
    code, checks, output = run_check(config)
    assert code == 0, output
    assert {c["verdict"] for c in checks.values()} <= {"ok", "warn"}
    for name in ("config", "disk", "broker", "camera kitchen-1", "model", "audio"):
        assert checks[name]["verdict"] == "ok", checks[name]
    assert checks["database"]["detail"].endswith("no database yet (created on the first run)")
    assert not db_path(tmp_path / "state").exists(), "check must not create the database"
    assert "fps" in checks["camera kitchen-1"]["detail"]
    assert "keyframe every 1.0 s" in checks["camera kitchen-1"]["detail"]
    assert checks["audio"]["detail"] == "no speaker configured"
    assert CAM_SECRET not in output


def test_check_broker_down_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """A stopped broker: the broker line FAILs as refused and the exit code says so."""
    broker.stop()
    code, checks, _ = run_check(write_config(tmp_path, broker.url, model_dir), "--skip-cameras")
    assert code == CHECK_FAILED
    assert checks["broker"]["verdict"] == "FAIL"
    assert "connection refused" in checks["broker"]["detail"]
    assert [n for n, c in checks.items() if c["verdict"] == "FAIL"] == ["broker"]


def test_check_wrong_password_fails(
    broker_factory: BrokerFactory, model_dir: Path, tmp_path: Path
) -> None:
    """The broker rejects the password: 'bad credentials' from CONNACK, and no secret shown."""
    secured = broker_factory(users={"agent": "the-right-one"})
    config = write_config(tmp_path, secured.url, model_dir, mqtt_user="agent")
    code, checks, output = run_check(config, "--skip-cameras")
    assert code == CHECK_FAILED
    assert checks["broker"]["verdict"] == "FAIL"
    assert "bad credentials" in checks["broker"]["detail"]
    assert MQTT_SECRET not in output


def test_check_dead_camera_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """A camera nobody answers for: its line FAILs with the error class, password redacted."""
    url = f"rtsp://admin@127.0.0.1:{free_port()}/nothing"
    code, checks, output = run_check(write_config(tmp_path, broker.url, model_dir, camera_url=url))
    assert code == CHECK_FAILED
    assert checks["camera kitchen-1"]["verdict"] == "FAIL"
    assert "refused" in checks["camera kitchen-1"]["detail"]
    assert CAM_SECRET not in output


def test_check_corrupt_model_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """A model file that no longer matches its manifest's sha256: the model line FAILs."""
    bad = shutil.copytree(model_dir, tmp_path / "model")
    with (bad / "model.onnx").open("ab") as onnx:
        onnx.write(b"\0")
    code, checks, _ = run_check(write_config(tmp_path, broker.url, bad), "--skip-cameras")
    assert code == CHECK_FAILED
    assert checks["model"]["verdict"] == "FAIL"
    assert "sha256" in checks["model"]["detail"]


def test_check_disk_too_full_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """Less free space than --min-free-mb asks for: the disk line FAILs."""
    free_mb = shutil.disk_usage(tmp_path).free / 1024 / 1024
    config = write_config(tmp_path, broker.url, model_dir)
    code, checks, _ = run_check(config, "--skip-cameras", "--min-free-mb", str(int(free_mb * 2)))
    assert code == CHECK_FAILED
    assert checks["disk"]["verdict"] == "FAIL"
    assert [n for n, c in checks.items() if c["verdict"] == "FAIL"] == ["disk"]


def test_check_tls_with_the_wrong_ca_fails(
    broker_factory: BrokerFactory, test_pki: Pki, model_dir: Path, tmp_path: Path
) -> None:
    """A TLS broker whose certificate the configured CA did not sign: 'TLS error'."""
    secured = broker_factory(tls=test_pki)
    config = write_config(tmp_path, secured.url, model_dir)
    data = yaml.safe_load(config.read_text())
    data["mqtt"]["tls"] = {"ca_file": str(test_pki.other_ca_cert)}
    config.write_text(yaml.safe_dump(data))
    code, checks, _ = run_check(config, "--skip-cameras")
    assert code == CHECK_FAILED
    assert checks["broker"]["verdict"] == "FAIL"
    assert "TLS error" in checks["broker"]["detail"]
    assert "CERTIFICATE_VERIFY_FAILED" in checks["broker"]["detail"]
    data["mqtt"]["tls"] = {"ca_file": str(test_pki.ca_cert)}
    config.write_text(yaml.safe_dump(data))
    code, checks, output = run_check(config, "--skip-cameras")
    assert checks["broker"]["verdict"] == "ok", output
    assert "TLS" in checks["broker"]["detail"]


def test_check_silent_broker_times_out(model_dir: Path, tmp_path: Path) -> None:
    """A port that accepts TCP but never answers CONNACK: a timeout, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        url = f"mqtt://127.0.0.1:{listener.getsockname()[1]}"
        code, checks, _ = run_check(write_config(tmp_path, url, model_dir), "--skip-cameras")
    finally:
        listener.close()
    assert code == CHECK_FAILED
    assert checks["broker"]["verdict"] == "FAIL"
    assert "timeout: no CONNACK within 5 s" in checks["broker"]["detail"]


def test_check_clock_never_set_fails() -> None:
    """A box whose clock says 1970 (no RTC, no NTP yet): FAIL; today: ok or warn."""
    never_set = check_clock(now=86400.0 * 365)
    assert never_set.verdict == "FAIL"
    assert "the clock was never set" in never_set.detail
    assert check_clock().verdict in {"ok", "warn"}


def test_check_corrupt_database_fails(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """A database whose pages were overwritten: the database line FAILs, nothing else."""
    config = write_config(tmp_path, broker.url, model_dir)
    db = db_path(tmp_path / "state")
    with Store(db) as store:
        for i in range(200):
            store.enqueue("t/x", b"x" * 500, kind="heartbeat", msg_id=f"m{i}")
    with db.open("r+b") as handle:  # keep the header, wreck the b-tree pages after it
        handle.seek(4096)
        handle.write(os.urandom(16384))
    code, checks, _ = run_check(config, "--skip-cameras")
    assert code == CHECK_FAILED
    assert checks["database"]["verdict"] == "FAIL"
    assert "agent.db" in checks["database"]["detail"]
    assert [n for n, c in checks.items() if c["verdict"] == "FAIL"] == ["database"]


def test_check_text_table(broker: Broker, model_dir: Path, tmp_path: Path) -> None:
    """Without --json: one line per check, starting with its verdict."""
    config = write_config(tmp_path, broker.url, model_dir)
    result = runner.invoke(app, ["check", "--config", str(config), "--skip-cameras"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines][:3] == ["config", "clock", "disk"]
    assert all(line.split()[0] in {"ok", "warn", "FAIL"} for line in lines)


def test_status_without_database(tmp_path: Path, model_dir: Path) -> None:
    """No database yet: a clear message, exit code 4, and still no database file."""
    config = write_config(tmp_path, "mqtt://127.0.0.1:1", model_dir)
    result = runner.invoke(app, ["status", "--config", str(config)])
    assert result.exit_code == 4
    assert "no database yet" in result.output
    assert not db_path(tmp_path / "state").exists()


def test_status_of_a_stopped_agent(tmp_path: Path, model_dir: Path) -> None:
    """State last written 2 h ago reads 'stopped or hung'; cameras, backlog, alerts shown."""
    config = write_config(tmp_path, "mqtt://127.0.0.1:1", model_dir)
    db = db_path(tmp_path / "state")
    then = time.time() - 7200
    with Store(db) as store:
        store.save_camera_health(
            {
                "kitchen-1": {
                    "state": "offline",
                    "since": then - 60,
                    "fps": 0.0,
                    "last_error": "cannot open stream: refused",
                    "last_error_class": "refused",
                }
            },
            then,
        )
        store.record_alert(
            AlertRecord(
                "a-1", "kitchen-1", "no_hat", "warning", then - 30, then - 29, 0.9, [], None
            ),
            "mclz/hz/s-001/box-01/alert",
            b"{}",
        )
        store.enqueue("mclz/hz/s-001/box-01/heartbeat", b'{"uptime_s": 5}', kind="heartbeat")
        with sqlite3.connect(db) as conn:  # make every row as old as the health
            conn.execute("UPDATE outbox SET created_at = ?", (then,))
    for file in (db, db.with_name(db.name + "-wal")):
        if file.exists():
            os.utime(file, (then, then))
    before = db.stat().st_mtime

    result = runner.invoke(app, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert not state["running"]
    assert state["summary"].startswith("stopped (last update 2.0 h ago")
    assert state["uptime_s"] is None
    assert state["cameras"]["kitchen-1"]["state"] == "offline"
    assert state["cameras"]["kitchen-1"]["last_error_class"] == "refused"
    assert set(state["backlog"]) == {"alert", "heartbeat"}
    assert state["alerts"][0]["type"] == "no_hat"
    assert db.stat().st_mtime == before, "status must not write to the database"

    text = runner.invoke(app, ["status", "--config", str(config)])
    assert text.exit_code == 0, text.output
    assert "stopped (last update" in text.output
    assert "last error (refused)" in text.output


def test_status_tells_a_hung_agent_from_a_stopped_one(tmp_path: Path, model_dir: Path) -> None:
    """Old state but the recorded pid still alive: 'hung', not 'stopped'."""
    config = write_config(tmp_path, "mqtt://127.0.0.1:1", model_dir)
    db = db_path(tmp_path / "state")
    then = time.time() - 600
    with Store(db) as store:
        store.save_camera_health({"kitchen-1": {"state": "online", "since": then}}, then)
        store.put_setting(
            "state.run", {"pid": os.getpid(), "started_at": then - 60, "version": "x"}, "agent"
        )
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE settings SET updated_at = ?", (then,))
    for file in (db, db.with_name(db.name + "-wal")):
        if file.exists():
            os.utime(file, (then, then))
    result = runner.invoke(app, ["status", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    state = json.loads(result.stdout)
    assert not state["running"]
    assert state["summary"].startswith(f"hung: process {os.getpid()} alive")
    assert state["pid_alive"] is True


def test_status_of_a_running_agent(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """While the agent runs, status reads its state read-only and says 'running'."""
    server = rtsp_server_factory({"/kitchen": clip_factory(fps=10, gop=10)})
    config = write_config(
        tmp_path,
        broker.url,
        model_dir,
        camera_url=server.url("/kitchen"),
        camera_password=False,
    )
    agent = AgentProcess(config).start()
    agents.append(agent)
    db = db_path(tmp_path / "state")
    deadline = time.monotonic() + 20
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if db.exists():
            result = runner.invoke(app, ["status", "--config", str(config), "--json"])
            if result.exit_code == 0:
                state = json.loads(result.stdout)
                if state["cameras"].get("kitchen-1", {}).get("state") == "online":
                    break
        time.sleep(0.5)
    else:
        pytest.fail(f"agent never reported an online camera: {state}\n{agent.log[-2000:]}")
    assert state["running"], state
    assert state["summary"].startswith("running (state updated")
    assert state["cameras"]["kitchen-1"]["fps"] > 0
    assert agent.proc is not None
    assert state["pid"] == agent.proc.pid
    assert state["pid_alive"] is True
    assert state["uptime_s"] > 0
    deadline = time.monotonic() + 20  # the progress record comes with each heartbeat (2 s)
    while time.monotonic() < deadline and not state.get("analysed_per_s"):
        time.sleep(1)
        state = json.loads(runner.invoke(app, ["status", "-c", str(config), "--json"]).stdout)
    assert state["analysed_per_s"] > 0, state
    assert state["uplink_connected"] is True
    text = runner.invoke(app, ["status", "--config", str(config)]).output
    assert f"pid {agent.proc.pid}" in text
    assert "frame(s)/s analysed" in text
    code, _ = agent.terminate()
    assert code == 0, agent.log[-2000:]
    after = json.loads(runner.invoke(app, ["status", "-c", str(config), "--json"]).stdout)
    assert not after["running"]  # its pid is gone: stopped at once, not after 30 s
    assert after["summary"].startswith("stopped")


def test_check_capacity_compares_the_cameras_demand_with_this_box(
    broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    """The capacity line counts tiles per analysed frame over each camera's interval and
    warns when the measured inference rate cannot cover it (16 cameras in 4x4 tiles ten
    times a second: 2,560 inferences/s, beyond any CPU)."""
    config = write_config(tmp_path, broker.url, model_dir)
    data = yaml.safe_load(config.read_text())
    closed = f"rtsp://127.0.0.1:{free_port()}/x"
    data["cameras"] = {
        "wide": {"url": closed, "detect_interval": 0.5, "view": {"tiles": [2, 2]}},
        "door": {"url": closed},
        "off": {"url": closed, "enabled": False, "view": {"tiles": [4, 4]}},
    }
    config.write_text(yaml.safe_dump(data))
    code, checks, output = run_check(config, "--skip-cameras")
    assert code == 0, output
    detail = checks["capacity"]["detail"]
    assert detail.startswith("cameras ask for 9.0 inference(s)/s (2 camera(s), 1 in tiles)")
    assert checks["capacity"]["verdict"] == "ok", detail  # the pattern model takes milliseconds
    data["cameras"] = {
        f"c{i}": {"url": closed, "detect_interval": 0.1, "view": {"tiles": [4, 4]}}
        for i in range(16)
    }
    config.write_text(yaml.safe_dump(data))
    code, checks, output = run_check(config, "--skip-cameras")
    assert code == 0, output  # a warning, not a failure: the governor copes
    capacity = checks["capacity"]
    assert capacity["verdict"] == "warn"
    assert "cameras ask for 2560.0 inference(s)/s (16 camera(s), 16 in tiles)" in capacity["detail"]
    assert "expect detect intervals stretched about" in capacity["detail"]


def _meminfo(tmp_path: Path, available_kb: int, total_kb: int = 2_000_000) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(
        f"MemTotal:       {total_kb} kB\nMemFree:        {available_kb // 2} kB\n"
        f"MemAvailable:   {available_kb} kB\nHugePages_Total:       0\n"
    )
    return path


def test_check_memory_estimates_the_cameras_against_this_box(
    broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    """The memory line estimates the agent's RSS from the measured base and per-camera
    figures (main streams counted apart) and warns when that is more than half of what the
    box has available; on this machine, through the CLI, a 16-camera config fits."""
    config = write_config(tmp_path, broker.url, model_dir)
    data = yaml.safe_load(config.read_text())
    closed = f"rtsp://127.0.0.1:{free_port()}/x"
    data["cameras"] = {f"c{i}": {"url": closed} for i in range(16)}
    data["cameras"]["c0"]["main_url"] = closed
    data["cameras"]["off"] = {"url": closed, "enabled": False, "main_url": closed}
    config.write_text(yaml.safe_dump(data))
    cfg = load_config(config)
    estimate, cameras, mains = memory_estimate(cfg)
    assert (cameras, mains) == (16, 1)
    assert estimate == pytest.approx(
        MEMORY_BASE_MB + 16 * MEMORY_PER_CAMERA_MB + MEMORY_PER_MAIN_STREAM_MB
    )
    roomy = check_memory(cfg, _meminfo(tmp_path, available_kb=round(4 * estimate * 1024)))
    assert roomy.verdict == "ok", roomy
    assert roomy.detail.startswith(f"16 camera(s), 1 with a main stream: about {estimate:.0f} MB")
    assert "per 720p camera" in roomy.detail
    assert "measured 2026-12-06" in roomy.detail
    tight = check_memory(cfg, _meminfo(tmp_path, available_kb=round(1.5 * estimate * 1024)))
    assert tight.verdict == "warn", tight
    assert "more than 50 %" in tight.detail
    unknown = check_memory(cfg, tmp_path / "no-meminfo")
    assert unknown.verdict == "warn"
    assert "the box's memory is unknown" in unknown.detail
    code, checks, output = run_check(config, "--skip-cameras")
    assert code == 0, output
    assert checks["memory"]["verdict"] in {"ok", "warn"}, checks["memory"]  # the box decides
    assert checks["memory"]["detail"].startswith("16 camera(s), 1 with a main stream: about")
    assert " MB available of " in checks["memory"]["detail"]
    assert checks["capacity"]["detail"].startswith("cameras ask for 16.0 inference(s)/s")
