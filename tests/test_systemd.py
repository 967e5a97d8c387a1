"""The systemd unit: valid for systemd, hardened, and wired for notify and the watchdog."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "mclz-agent.service"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script, so verify can run it."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    agent = Path(sys.executable).parent / "mclz-agent"
    text = UNIT.read_text().replace("/opt/mclz-agent/.venv/bin/mclz-agent", str(agent))
    path = tmp_path / "mclz-agent.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(unit_copy: Path) -> None:
    """systemd-analyze verify finds nothing wrong with the unit."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit_copy)],
        capture_output=True,
        text=True,
        check=False,
        cwd=unit_copy.parent,
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "mclz-agent" in line
    ]
    assert result.returncode == 0, problems
    assert problems == []


def test_unit_exposure_is_low(unit_copy: Path) -> None:
    """systemd's own security assessment rates the unit's exposure 2.5 or better."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_copy)],
        capture_output=True,
        text=True,
        check=False,
        cwd=unit_copy.parent,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    assert float(match.group(1)) <= 2.5


def test_unit_runs_as_notify_with_watchdog_and_restart() -> None:
    """Type=notify, a watchdog, restart always, and credentials rather than secrets in files."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "mclz-agent.service.d/credentials.conf",  # LoadCredential= lines, by service install
        "StateDirectory=mclz-agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ):
        assert line in text, line
