"""The command line: help with examples, exit codes, and clear messages for bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import typer.main
from typer.testing import CliRunner

from agent import __version__
from agent.cli.main import app
from mclz_testkit.common import free_port
from mclz_testkit.factories import ClipFactory, RtspServerFactory

REPO = Path(__file__).resolve().parents[1]
SECRET = "Probe-S3cret!"
runner = CliRunner()


def leaf_commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        subcommands = getattr(command, "commands", None)  # typer may vendor its own click
        if subcommands is not None:
            for name, sub in subcommands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            out.append((prefix, command))

    walk("", root)
    return out


@pytest.mark.parametrize(("name", "command"), leaf_commands(), ids=[n for n, _ in leaf_commands()])
def test_every_command_has_help_with_an_example(name: str, command: Any) -> None:
    """Each command's help has a summary and an 'Example: mclz-agent ...' line."""
    help_text = command.help or ""
    assert help_text.strip(), f"{name} has no help"
    assert f"Example: mclz-agent {name}" in help_text, f"{name} help lacks an example"


def test_every_command_group_has_help() -> None:
    """Each group (config, camera, ...) has a summary and lists only commands with help."""
    groups = {
        name: command
        for name, command in typer.main.get_command(app).commands.items()  # type: ignore[attr-defined]
        if getattr(command, "commands", None) is not None
    }
    assert len(groups) == 10, sorted(groups)
    for name, group in groups.items():
        assert (group.help or "").strip(), f"{name} has no help"
        assert group.commands, f"{name} has no commands"


def test_top_level_help_lists_commands_in_their_order() -> None:
    """mclz-agent --help lists the commands in registration order (agent.cli.main's imports)."""
    root = typer.main.get_command(app)
    listed = root.list_commands(typer.Context(root))  # type: ignore[attr-defined]
    expected = ["run", "check", "status", "version", "init", "config", "model", "camera"]
    expected += ["outbox", "alerts", "capture", "food", "alarm", "service", "web"]
    assert listed == expected


def test_the_shared_cli_module_imports_no_command_module() -> None:
    """agent.cli.app is imported by every command module and imports none (no import loop):
    alone it has no command, and agent.cli.main brings them all."""
    code = (
        "import sys, agent.cli.app as a\n"
        "mods = sorted(m for m in sys.modules if m.startswith('agent.cli.'))\n"
        "print(mods, len(a.app.registered_commands))\n"
        "import agent.cli.main\n"
        "print(len(a.app.registered_commands))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
        check=True,
    )  # fmt: skip
    alone, assembled = result.stdout.splitlines()
    assert alone == "['agent.cli.app'] 0"
    assert assembled == "5"  # run, check, status, version, init; the rest are in groups


def test_version() -> None:
    """version prints the agent's version."""
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0
    assert f"mclz-agent {__version__}" in result.output


def test_config_check_good_file(tmp_path: Path) -> None:
    """A valid file exits 0 and says OK."""
    result = runner.invoke(app, ["config", "check", str(REPO / "configs" / "demo.yaml")])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_config_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    """A bad file exits 2 with one line per problem, each with file:line and path."""
    bad = tmp_path / "agent.yaml"
    bad.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        "mqtt:\n  url: http://broker\n  keepalive: 1\n"
        "cameras:\n  k1:\n    url: rtsp://u:hunter2@cam/x\n"
    )
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    assert len(lines) == 3, result.output
    assert lines[0].startswith(f"{bad}:3 mqtt.url:")
    assert lines[1].startswith(f"{bad}:4 mqtt.keepalive:")
    assert lines[2].startswith(f"{bad}:7 cameras.k1.url:")
    assert "hunter2" not in result.output


def test_config_check_reports_unreadable_secrets(tmp_path: Path) -> None:
    """check fails when a secret the config names cannot be read on this machine."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        "cameras:\n  k1:\n    url: rtsp://u@cam/x\n    password: {env: MCLZ_TEST_UNSET}\n"
    )
    result = runner.invoke(app, ["config", "check", str(cfg)], env={"MCLZ_TEST_UNSET": None})
    assert result.exit_code == 2
    assert "cameras.k1.password: environment variable MCLZ_TEST_UNSET is not set" in result.output
    assert runner.invoke(app, ["config", "check", "--no-secrets", str(cfg)]).exit_code == 0


def test_config_show_redacts_secrets(tmp_path: Path) -> None:
    """show prints the effective config with defaults, and secrets only by their source."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        "cameras:\n  k1:\n    url: rtsp://u@cam/x\n    password: {env: CAM_PW}\n"
    )
    result = runner.invoke(
        app, ["config", "show", "--json", "--config", str(cfg)], env={"CAM_PW": "sekrit"}
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["cameras"]["k1"]["password"] == "<secret from env:CAM_PW>"
    assert data["mqtt"]["keepalive"] == 30
    assert "sekrit" not in result.output


def test_missing_config_exit_code_and_message() -> None:
    """A missing config file is one line on stderr and exit code 2, with no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", "/nonexistent/agent.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: /nonexistent/agent.yaml: config file not found"


def test_unknown_command_is_a_usage_error() -> None:
    """Typos in commands exit 2 (usage), as for any CLI."""
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_run_refuses_to_start_with_an_unreadable_secret(tmp_path: Path) -> None:
    """run checks every secret first: exit 2 naming the config path, before opening anything."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        f"storage: {{state_dir: {tmp_path / 'state'}}}\n"
        "cameras:\n  k1:\n    url: rtsp://u@cam/x\n    password: {env: MCLZ_TEST_UNSET}\n"
    )
    result = runner.invoke(app, ["run", "--config", str(cfg)], env={"MCLZ_TEST_UNSET": None})
    assert result.exit_code == 2
    assert "cameras.k1.password: environment variable MCLZ_TEST_UNSET is not set" in result.output
    assert not (tmp_path / "state").exists()


def test_camera_probe_measures_a_real_stream(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, tmp_path: Path
) -> None:
    """probe reports codec, size, fps and keyframe interval, and writes a PNG snapshot."""
    server = rtsp_server_factory(
        {"/cam": clip_factory(seconds=4, fps=10, gop=20)}, user="admin", password=SECRET
    )
    shot = tmp_path / "shot.png"
    result = runner.invoke(
        app,
        ["camera", "probe", server.url("/cam", user="admin"), "--password-env", "CAM_PW",
         "--seconds", "3", "--snapshot", str(shot)],
        env={"CAM_PW": SECRET},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    fields = dict(line.split(None, 1) for line in result.output.splitlines() if line.strip())
    assert fields["codec"].strip() == "h264"
    assert fields["resolution"].strip() == "640x360"
    assert result.output.count("keyframe interval") == 1
    assert "2.00 s" in result.output  # GOP 20 at 10 fps
    image = cv2.imread(str(shot))
    assert image is not None
    assert image.shape == (360, 640, 3)
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("refused", "refused"), ("auth", "auth_failed"), ("not_found", "not_found")],
)
def test_camera_probe_classifies_failures(
    rtsp_server_factory: RtspServerFactory, clip_factory: ClipFactory, kind: str, expected: str
) -> None:
    """A refused port, a wrong password and a wrong path each exit 6 with their class."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=2)}, user="admin", password=SECRET)
    url = {
        "refused": f"rtsp://127.0.0.1:{free_port()}/cam",
        "auth": server.url("/cam", user="admin", password="wrong-" + SECRET),
        "not_found": server.url("/nope", user="admin", password=SECRET),
    }[kind]
    result = runner.invoke(app, ["camera", "probe", url, "--timeout", "5", "--seconds", "1"])
    assert result.exit_code == 6, result.output
    assert f"({expected})" in result.output
    assert SECRET not in result.output


def test_camera_probe_survives_garbage_on_the_port() -> None:
    """A port that answers with garbage bytes gives a clear error, no hang, no leaked thread."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(os.urandom(4096) + b"\r\n\r\n" + os.urandom(4096))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    before = threading.active_count()
    try:
        result = runner.invoke(
            app,
            ["camera", "probe", f"rtsp://127.0.0.1:{port}/x", "--timeout", "3", "--seconds", "1"],
        )
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    assert result.exit_code == 6, result.output
    assert "error: rtsp://127.0.0.1" in result.output
    assert threading.active_count() <= before


def test_camera_list_shows_saved_health_and_redacts(tmp_path: Path) -> None:
    """camera list reads each camera's last saved health from the database, URLs redacted."""
    from agent.store.store import Store  # noqa: PLC0415

    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        f"storage: {{state_dir: {tmp_path / 'state'}}}\n"
        "cameras:\n  k1:\n    url: rtsp://admin@cam1/x\n"
        "  k2:\n    url: rtsp://cam2/y\n    enabled: false\n"
    )
    store = Store(tmp_path / "state" / "agent.db")
    store.save_camera_health(
        {"k1": {"state": "online", "since": 1.0, "fps": 12.5, "quality": "fair"}}, now=time.time()
    )
    store.close()
    result = runner.invoke(app, ["camera", "list", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["camera"]: row for row in json.loads(result.output)}
    assert rows["k1"]["state"] == "online"
    assert rows["k1"]["fps"] == 12.5
    assert rows["k1"]["quality"] == "fair"
    assert rows["k2"]["state"] == "unknown"
    assert rows["k2"]["enabled"] is False
    text = runner.invoke(app, ["camera", "list", "--config", str(cfg)]).output
    assert "disabled" in text
    assert "rtsp://admin@cam1/x" in text


def test_outbox_stats_and_alerts_commands(tmp_path: Path) -> None:
    """outbox stats shows the backlog by kind; alerts list/show/export read the local store."""
    from agent.records import AlertRecord  # noqa: PLC0415
    from agent.store.store import Store  # noqa: PLC0415

    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        f"storage: {{state_dir: {tmp_path / 'state'}}}\n"
    )
    assert runner.invoke(app, ["outbox", "stats", "--config", str(cfg)]).exit_code == 4
    store = Store(tmp_path / "state" / "agent.db")
    for i in range(2):
        record = AlertRecord(f"a{i}", "k1", "no_hat", "warning", 1.0, 2.0 + i, 0.8, [], None)
        store.record_alert(
            record, "t/alert", json.dumps({"id": f"a{i}", "type": "no_hat"}).encode()
        )
    store.ack(store.due(1)[0].seq)  # a0 delivered, a1 waiting
    store.enqueue("t/heartbeat", b"{}", kind="heartbeat")
    store.close()

    stats = json.loads(
        runner.invoke(app, ["outbox", "stats", "--config", str(cfg), "--json"]).output
    )
    assert {k: v["messages"] for k, v in stats["backlog"].items()} == {"alert": 1, "heartbeat": 1}
    listed = json.loads(
        runner.invoke(app, ["alerts", "list", "--config", str(cfg), "--json"]).output
    )
    assert [(r["id"], r["delivered"]) for r in listed] == [("a1", False), ("a0", True)]
    shown = runner.invoke(app, ["alerts", "show", "a0", "--config", str(cfg)])
    assert json.loads(shown.output)["type"] == "no_hat"
    assert runner.invoke(app, ["alerts", "show", "zz", "--config", str(cfg)]).exit_code == 2
    out = tmp_path / "alerts.jsonl"
    result = runner.invoke(app, ["alerts", "export", str(out), "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a1", "a0"]
    replay = runner.invoke(app, ["outbox", "replay", "--since", "0", "--config", str(cfg)])
    assert replay.exit_code == 0, replay.output
    assert "1 alert(s) queued again" in replay.output  # a1 still waits: not doubled
    bad = runner.invoke(app, ["outbox", "replay", "--since", "yesterday", "--config", str(cfg)])
    assert bad.exit_code == 2
    assert "'since' must be epoch seconds or an ISO-8601 time" in bad.output
