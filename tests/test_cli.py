"""The command line: help with examples, exit codes, and clear messages for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from agent import __version__
from agent.cli import app

REPO = Path(__file__).resolve().parents[1]
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
