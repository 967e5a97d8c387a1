"""``service install``: the systemd unit, its credentials drop-in, and installing them.

The unit is the hardened template shipped in ``systemd/`` with this installation's paths
filled in; the drop-in has one ``LoadCredential=`` per credential the config names, so the
agent reads its secrets from the credential store at each start. :func:`plan_service` works
out what would be written and run (``--dry-run`` shows it), :func:`apply_service` does it,
and :func:`sync_credentials` rewrites the drop-in after ``camera add/remove``.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.config import DEFAULT_CREDENTIALS_DIR, AgentConfig
from agent.errors import ConfigError, StoreError
from agent.fsutil import write_atomic

UNIT_NAME = "mclz-agent.service"
SERVICE_USER = "mclz-agent"
UNIT_STATE_DIR = Path("/var/lib/mclz-agent")  # the unit's StateDirectory=, init's default
_UNIT_TEMPLATE = Path(__file__).resolve().parents[2] / "systemd" / UNIT_NAME
_TEMPLATE_EXEC = "/opt/mclz-agent/.venv/bin/mclz-agent"
_TEMPLATE_CONFIG = "/etc/mclz-agent/agent.yaml"


@dataclass(slots=True)
class ServicePlan:
    """What ``service install`` writes and runs, so ``--dry-run`` can show it."""

    unit_path: Path
    unit_text: str
    dropin_path: Path
    dropin_text: str
    commands: list[list[str]]
    notes: list[str]


def unit_text(
    config_path: Path,
    executable: Path,
    *,
    user: str = SERVICE_USER,
    state_dir: Path = UNIT_STATE_DIR,
    template: Path = _UNIT_TEMPLATE,
    config_writable: bool = False,
) -> str:
    """The unit file for this installation: the shipped template with its paths filled in.

    ``config_writable`` (``web.enabled``) opens the config file's folder to the service, so
    that the installer page can save zones.

    Raises:
        ConfigError: the template is missing.
    """
    try:
        text = template.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{template}: cannot read the unit template: {exc.strerror}") from None
    text = text.replace(_TEMPLATE_EXEC, str(executable)).replace(_TEMPLATE_CONFIG, str(config_path))
    text = re.sub(r"(?m)^User=.*$", f"User={user}", text)
    text = re.sub(r"(?m)^Group=.*$", f"Group={user}", text)
    state_dir = state_dir.absolute()
    if state_dir != UNIT_STATE_DIR:
        # ProtectSystem=strict makes everything else read-only: open the configured one.
        text = text.replace(
            "WorkingDirectory=", f"ReadWritePaths={state_dir}\nWorkingDirectory=", 1
        )
    if config_writable:
        # The installer page saves zones into the config file: its folder must be writable
        # (the file is replaced atomically, by a rename in that folder).
        text = text.replace(
            "WorkingDirectory=",
            f"ReadWritePaths={config_path.absolute().parent}\nWorkingDirectory=",
            1,
        )
    return text


def credentials_dropin(config: AgentConfig, credentials_dir: Path) -> str:
    """A drop-in with one ``LoadCredential=`` per credential the config names."""
    names = sorted(
        {ref.credential for _, ref in config.secret_refs() if ref.credential is not None}
    )
    lines = [
        "# Written by `mclz-agent service install` (and camera add/remove): the systemd",
        "# credentials the config names, loaded from the credential store at each start.",
        "[Service]",
    ]
    lines += [f"LoadCredential={name}:{credentials_dir / name}" for name in names]
    return "\n".join(lines) + "\n"


def plan_service(
    config: AgentConfig,
    config_path: Path,
    *,
    root: Path = Path("/"),
    executable: Path | None = None,
    user: str = SERVICE_USER,
    credentials_dir: Path = DEFAULT_CREDENTIALS_DIR,
    enable: bool = True,
    start: bool = False,
) -> ServicePlan:
    """Work out the unit, its credentials drop-in and the commands that install it.

    With ``root`` other than ``/`` (an image being built), files go under it and no command
    is run on this machine.

    Raises:
        ConfigError: the unit template or the agent's executable cannot be found.
    """
    if executable is None:
        found = Path(sys.executable).parent / "mclz-agent"
        which = shutil.which("mclz-agent")
        executable = found if found.exists() else Path(which) if which else found
    if not executable.exists():
        raise ConfigError(f"{executable}: the mclz-agent program is not there (--exec PATH)")
    unit_dir = root / "etc/systemd/system"
    folder = config_path.absolute().parent
    if config.web.enabled and not folder.name.startswith("mclz"):
        # With the page on, the config's folder becomes writable by the service (1770):
        # never a shared folder such as /etc.
        raise ConfigError(
            f"{config_path}: web.enabled needs the config file in a folder of its own, such as "
            f"/etc/mclz-agent/agent.yaml (its folder is opened to the service), not in {folder}"
        )
    text = unit_text(
        config_path.absolute(),
        executable.absolute(),
        user=user,
        state_dir=config.storage.state_dir,
        config_writable=config.web.enabled,
    )
    commands: list[list[str]] = []
    notes: list[str] = []
    live = root == Path("/")
    if live:
        try:
            pwd.getpwnam(user)
        except KeyError:
            commands.append(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--home-dir",
                    str(UNIT_STATE_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ]
            )
        if _group_exists("audio"):
            commands.append(["usermod", "--append", "--groups", "audio", user])
        commands.append(["chgrp", user, str(config_path.absolute())])
        if config.web.enabled:
            commands.extend(_writable_config(config_path.absolute(), user))
        commands.append(["systemctl", "daemon-reload"])
        if enable:
            commands.append(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME])
    else:
        notes.append(f"files written under {root}; user, enable and start happen on the box")
    if config.web.enabled:
        notes.append(
            f"web.enabled: the service may replace {config_path.absolute()} (zones saved on "
            f"the installer page): the file is {user}'s, its folder root:{user} 1770 (sticky: "
            "the service cannot touch the credentials or other files there)"
        )
    if config.storage.state_dir.absolute() != UNIT_STATE_DIR:
        notes.append(
            f"state_dir {config.storage.state_dir} is not {UNIT_STATE_DIR}: the unit opens it "
            "with ReadWritePaths=; create it owned by the service user"
        )
    return ServicePlan(
        unit_path=unit_dir / UNIT_NAME,
        unit_text=text,
        dropin_path=unit_dir / f"{UNIT_NAME}.d" / "credentials.conf",
        dropin_text=credentials_dropin(config, credentials_dir),
        commands=commands,
        notes=notes,
    )


def _writable_config(config_path: Path, user: str) -> list[list[str]]:
    """Commands that let the service replace its config file and nothing else in its folder.

    The folder becomes ``root:<user>`` ``1770``: the service may create the temporary file
    and rename it over the config, and the sticky bit keeps it from renaming or deleting
    what it does not own (the credential store, ``cameras.env``). The file becomes the
    service's, so the rename is allowed; :func:`~agent.install.provision.write_config` keeps
    that owner when root edits the file later.
    """
    folder = str(config_path.parent)
    return [
        ["chown", f"root:{user}", folder],
        ["chmod", "1770", folder],
        ["chown", f"{user}:{user}", str(config_path)],
    ]


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def apply_service(plan: ServicePlan) -> list[str]:
    """Write the plan's files and run its commands; return what was done, line by line.

    Raises:
        StoreError: a file cannot be written or a command fails (its output is quoted).
    """
    done = []
    for path, text in ((plan.unit_path, plan.unit_text), (plan.dropin_path, plan.dropin_text)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text.encode("utf-8"))
            os.chmod(path, 0o644)
        except OSError as exc:
            raise StoreError(f"{path}: cannot write: {exc.strerror}") from exc
        done.append(f"wrote {path}")
    for command in plan.commands:
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise StoreError(f"{' '.join(command)}: cannot run: {exc.strerror}") from exc
        if result.returncode != 0:
            raise StoreError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[:500]}"
            )
        done.append(f"ran {' '.join(command)}")
    return done


def sync_credentials(
    config: AgentConfig,
    *,
    root: Path = Path("/"),
    credentials_dir: Path = DEFAULT_CREDENTIALS_DIR,
) -> Path | None:
    """Rewrite the installed unit's credentials drop-in after a camera change.

    Returns the drop-in's path, or None when the unit is not installed (nothing to do).

    Raises:
        StoreError: the drop-in cannot be written.
    """
    unit_dir = root / "etc/systemd/system"
    if not (unit_dir / UNIT_NAME).exists():
        return None
    path = unit_dir / f"{UNIT_NAME}.d" / "credentials.conf"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, credentials_dropin(config, credentials_dir).encode("utf-8"))
        os.chmod(path, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write: {exc.strerror}") from exc
    return path
