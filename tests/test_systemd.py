"""The systemd unit: valid for systemd, hardened, and wired for notify and the watchdog."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import ConfigError
from agent.install.unit import plan_service

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


def test_unit_lets_the_installer_page_listen() -> None:
    """The page's port (web.listen) is allowed: IPv4 and IPv6 sockets, and no address or
    socket-bind restriction that would have to name it; no capability for ports < 1024."""
    settings = [line.strip() for line in UNIT.read_text().splitlines() if "=" in line]
    families = next(s for s in settings if s.startswith("RestrictAddressFamilies="))
    assert {"AF_INET", "AF_INET6"} <= set(families.split("=", 1)[1].split())
    for setting in ("IPAddressDeny=", "IPAddressAllow=", "SocketBindDeny=", "SocketBindAllow="):
        assert not any(s.startswith(setting) for s in settings), setting
    assert "CapabilityBoundingSet=" in settings  # empty: 8080 and 8443, not 80 and 443


def test_service_install_opens_the_config_folder_only_with_the_page(tmp_path: Path) -> None:
    """With web.enabled the unit may write the config's folder (zones are saved there) and
    the plan gives the file to the service and the folder a sticky bit; without, neither."""
    base = "identity: {city: hz, school_id: s1, box_id: b1}\n"
    config_path = tmp_path / "etc" / "mclz-agent" / "agent.yaml"
    exe = Path(sys.executable)
    off = plan_service(parse_config(base), config_path, root=tmp_path / "img", executable=exe)
    assert f"ReadWritePaths={config_path.parent}" not in off.unit_text
    on_cfg = parse_config(base + "web: {enabled: true, listen: '192.168.1.20:8080'}\n")
    shared = tmp_path / "etc" / "agent.yaml"  # a shared folder is never opened to the service
    with pytest.raises(ConfigError, match="folder of its own"):
        plan_service(on_cfg, shared, root=tmp_path / "img", executable=exe)
    on = plan_service(on_cfg, config_path, root=tmp_path / "img", executable=exe)
    assert f"ReadWritePaths={config_path.parent}\n" in on.unit_text
    assert any("web.enabled" in note for note in on.notes)
    assert "LoadCredential=web-password:" in on.dropin_text
    assert "web-password" not in off.dropin_text
