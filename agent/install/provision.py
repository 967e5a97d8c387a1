"""Provisioning a box: ``init`` writes the config and its secrets, ``camera add/remove`` edit
the config, ``camera snapshot`` draws the zones on a live frame, ``service install`` puts the
systemd unit in place.

Every write is validated first: the new config text goes through the same parser as
``config check`` before it replaces the old file (atomically, keeping its permissions), so an
installer's typo never leaves a box with a config that does not start. Secrets go into a
credential store (``/etc/mclz-agent/credentials``, one 0600 file per secret), which the unit
hands to the agent with ``LoadCredential=`` and which the CLI reads directly when it is not
running under systemd. Edits keep the file's comments (ruamel.yaml round trip).
"""

from __future__ import annotations

import grp
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import cv2
import numpy as np

from agent.config import (
    DEFAULT_CREDENTIALS_DIR,
    ID_PATTERN,
    AgentConfig,
    CameraConfig,
    MqttConfig,
    parse_config,
    with_base_dir,
)
from agent.detect.views import View
from agent.errors import ConfigError, StoreError
from agent.fsutil import write_atomic

UNIT_NAME = "mclz-agent.service"
SERVICE_USER = "mclz-agent"
_ID_RE = re.compile(ID_PATTERN)
PACKAGED_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"
_UNIT_TEMPLATE = Path(__file__).resolve().parents[2] / "systemd" / UNIT_NAME
_TEMPLATE_EXEC = "/opt/mclz-agent/.venv/bin/mclz-agent"
_TEMPLATE_CONFIG = "/etc/mclz-agent/agent.yaml"
_UNIT_STATE_DIR = Path("/var/lib/mclz-agent")


# --------------------------------------------------------------------------- answers


def check_id(value: str) -> str:
    """An id as topics need it (lower-case letters, digits, '-', '_').

    Raises:
        ValueError: it is not one.
    """
    if not _ID_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid id: lower-case letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters"
        )
    return value


def check_timezone(value: str) -> str:
    """An IANA time zone name.

    Raises:
        ValueError: the zone is unknown.
    """
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (IANA name, e.g. Asia/Shanghai)") from None
    return value


def check_broker_url(value: str) -> str:
    """A broker URL the agent accepts (mqtt:// or mqtts://, a host, no password).

    Raises:
        ValueError: it is not one; the message says why.
    """
    try:
        MqttConfig(url=value)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        detail = errors()[0]["msg"] if callable(errors) else str(exc)
        raise ValueError(f"{value!r}: {detail.removeprefix('Value error, ')}") from None
    return value


def check_readable_file(value: str) -> str:
    """A path to an existing, readable file (TLS material).

    Raises:
        ValueError: it is missing or unreadable.
    """
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(f"{value}: no such file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{value}: not readable")
    return str(path.resolve())


@dataclass(frozen=True, slots=True)
class InitSettings:
    """Everything ``mclz-agent init`` asks; ``password`` never reaches the config file."""

    city: str
    school_id: str
    box_id: str
    broker_url: str
    school_name: str = ""
    timezone: str = "Asia/Shanghai"
    username: str = ""
    password: str | None = field(default=None, repr=False)
    protocol: str = "5"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    state_dir: str = str(_UNIT_STATE_DIR)
    model_path: str = str(PACKAGED_MODEL)

    def problems(self) -> list[str]:
        """Every answer that is not acceptable, as ``key: why`` (empty when all are)."""
        checks: list[tuple[str, str | None, Callable[[str], str]]] = [
            ("city", self.city, check_id),
            ("school_id", self.school_id, check_id),
            ("box_id", self.box_id, check_id),
            ("timezone", self.timezone, check_timezone),
            ("broker_url", self.broker_url, check_broker_url),
            ("ca_file", self.ca_file, check_readable_file),
            ("cert_file", self.cert_file, check_readable_file),
            ("key_file", self.key_file, check_readable_file),
        ]
        out = []
        for key, value, check in checks:
            if value is None:
                continue
            try:
                check(value)
            except ValueError as exc:
                out.append(f"{key}: {exc}")
        if self.protocol not in {"5", "3.1.1"}:
            out.append(f"protocol: must be 5 or 3.1.1, not {self.protocol!r}")
        if (self.cert_file is None) != (self.key_file is None):
            out.append("cert_file, key_file: give both for mutual TLS, or neither")
        if self.password is not None and not self.username:
            out.append("password: a password needs a username")
        if self.password is not None and not self.password.strip():
            out.append("password: empty")
        return out


SEED_KEYS = frozenset(
    {
        "city",
        "school_id",
        "box_id",
        "broker_url",
        "school_name",
        "timezone",
        "username",
        "password",
        "password_file",
        "protocol",
        "ca_file",
        "cert_file",
        "key_file",
        "state_dir",
        "model_path",
    }
)


def read_seed(path: Path) -> dict[str, str]:
    """A seed file for mass provisioning: YAML or JSON mapping of ``init``'s answers.

    ``password_file`` (a file holding the password) is read here, so seed files can be
    generated without secrets in them.

    Raises:
        ConfigError: unreadable, not a mapping, an unknown key, or a non-text value.
    """
    import yaml  # noqa: PLC0415

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read seed file: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a YAML/JSON seed file: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a seed file is a mapping of answers (city: ..., ...)")
    problems = []
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in SEED_KEYS:
            problems.append(f"{path}: unknown key {key!r} (known: {', '.join(sorted(SEED_KEYS))})")
        elif value is None:
            continue
        elif not isinstance(value, str | int | float) or isinstance(value, bool):
            problems.append(f"{path}: {key}: must be text, got {type(value).__name__}")
        else:
            out[str(key)] = str(value)
    if "password_file" in out:
        secret_path = Path(out.pop("password_file"))
        if not secret_path.is_absolute():
            secret_path = path.parent / secret_path
        try:
            out["password"] = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{path}: password_file {secret_path}: {exc.strerror}")
    if problems:
        raise ConfigError(f"{path}: bad seed file", problems)
    return out


def _q(value: str) -> str:
    """A YAML scalar for ``value`` (JSON strings are YAML; Chinese kept readable)."""
    return json.dumps(value, ensure_ascii=False)


def render_config(s: InitSettings, credential: str | None) -> str:
    """The config file ``init`` writes: the answers, commented, with everything else default."""
    tls_lines = ""
    if s.ca_file or s.cert_file:
        tls_lines = "  tls:\n"
        if s.ca_file:
            tls_lines += f"    ca_file: {_q(s.ca_file)}\n"
        if s.cert_file and s.key_file:
            tls_lines += f"    cert_file: {_q(s.cert_file)}\n    key_file: {_q(s.key_file)}\n"
    password_line = (
        f"  password: {{credential: {credential}}}   # in the credential store, 0600\n"
        if credential
        else ""
    )
    return f"""\
# mclz-agent configuration, written by `mclz-agent init`.
# Every key and its default: configs/example.yaml. Check: mclz-agent config check <this file>
# Add cameras with `mclz-agent camera add NAME URL`; then `mclz-agent check`.

identity:
  city: {_q(s.city)}
  school_id: {_q(s.school_id)}
  box_id: {_q(s.box_id)}
  school_name: {_q(s.school_name)}
  timezone: {_q(s.timezone)}

mqtt:
  url: {_q(s.broker_url)}
  protocol: {_q(s.protocol)}
  username: {_q(s.username)}
{password_line}{tls_lines}
cameras: {{}}

model:
  path: {_q(s.model_path)}

storage:
  state_dir: {_q(s.state_dir)}
"""


@dataclass(frozen=True, slots=True)
class InitResult:
    """What ``init`` wrote."""

    config: Path
    credentials: tuple[Path, ...]
    backup: Path | None


def _validate_text(text: str, path: Path) -> AgentConfig:
    """Parse ``text`` as if it were the file at ``path`` (relative paths anchored there).

    Raises:
        ConfigError: it is not a valid config; every problem is listed.
    """
    return with_base_dir(parse_config(text, source=str(path)), path.absolute().parent)


def store_secret(directory: Path, name: str, value: str) -> Path:
    """Keep ``value`` as credential ``name``: a 0600 file in a 0700 directory.

    Raises:
        StoreError: the directory or file cannot be written.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"credential name {name!r}: letters, digits, '.', '_' and '-' only")
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        write_atomic(path, value.encode("utf-8") + b"\n", mode=0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot store the secret: {exc.strerror}") from exc
    return path


def _write_config(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically with ``text`` and give it ``mode``.

    Raises:
        StoreError: it cannot be written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode("utf-8"))
        os.chmod(path, mode)
    except OSError as exc:
        raise StoreError(f"{path}: cannot write the config: {exc.strerror}") from exc


def init_config(
    settings: InitSettings,
    path: Path,
    *,
    credentials_dir: Path = DEFAULT_CREDENTIALS_DIR,
    force: bool = False,
) -> InitResult:
    """Write a new config (and the broker password into the credential store).

    An existing config is replaced only with ``force``; it is kept as ``<name>.bak``.

    Raises:
        ConfigError: an answer is invalid (all are listed), or the file exists.
        StoreError: the config or the credential cannot be written.
    """
    problems = settings.problems()
    if problems:
        raise ConfigError("invalid answers", problems)
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists: use --force to replace it (the old file is kept as {path.name}.bak)"
        )
    credential = "mqtt-password" if settings.password else None
    text = render_config(settings, credential)
    _validate_text(text, path)
    stored: list[Path] = []
    if settings.password and credential:
        stored.append(store_secret(credentials_dir, credential, settings.password))
    backup = None
    if path.exists():
        backup = path.with_name(path.name + ".bak")
        try:
            shutil.copy2(path, backup)
        except OSError as exc:
            raise StoreError(f"{backup}: cannot keep the old config: {exc.strerror}") from exc
    _write_config(path, text, 0o640)
    return InitResult(path, tuple(stored), backup)


# --------------------------------------------------------------------------- editing


def _yaml() -> Any:
    from ruamel.yaml import YAML  # noqa: PLC0415

    yaml = YAML()  # round trip: comments, order and quoting are kept
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def edit_config(path: Path, change: Callable[[Any], None]) -> AgentConfig:
    """Apply ``change`` to the config's YAML document and save it if the result is valid.

    The file keeps its comments and permissions; it is replaced atomically and only when the
    changed text passes the same validation as ``config check``.

    Raises:
        ConfigError: the file cannot be read or parsed, ``change`` refuses, or the result is
            invalid (every problem listed, the file untouched).
        StoreError: the file cannot be written.
    """
    from ruamel.yaml.error import YAMLError  # noqa: PLC0415

    yaml = _yaml()
    try:
        original = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o7777
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        document = yaml.load(original)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    change(document)
    out = io.StringIO()
    yaml.dump(document, out)
    text = out.getvalue()
    try:
        config = _validate_text(text, path)
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: the change would make the config invalid", exc.problems
        ) from None
    _write_config(path, text, mode)
    return config


def split_password(url: str) -> tuple[str, str | None]:
    """``rtsp://admin:pw@host/p`` -> (``rtsp://admin@host/p``, ``pw``); no password: None."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, unquote(parts.password)


def camera_credential(camera_id: str) -> str:
    """The credential name of a camera's password."""
    return f"camera-{camera_id}"


def add_camera(
    path: Path,
    camera_id: str,
    url: str,
    *,
    main_url: str | None = None,
    name: str = "",
    credential: str | None = None,
    replace: bool = False,
) -> AgentConfig:
    """Add (or with ``replace``, redefine) camera ``camera_id`` in the config at ``path``.

    ``url`` is the stream detection reads (the sub-stream), ``main_url`` the full-resolution
    stream evidence comes from. Zones and rules of a replaced camera are kept.

    Raises:
        ConfigError: the id is invalid, the camera exists (without ``replace``) or the result
            is invalid.
        StoreError: the file cannot be written.
    """
    if not _ID_RE.match(camera_id):
        _bad_id(camera_id)

    def change(document: Any) -> None:
        cameras = document.get("cameras")
        if cameras is None or not isinstance(cameras, dict):
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            cameras = CommentedMap()
            document["cameras"] = cameras
        entry = cameras.get(camera_id)
        if entry is not None and not replace:
            raise ConfigError(
                f"{path}: camera {camera_id!r} exists: use --replace to change its streams, "
                "or camera remove first"
            )
        if entry is None or not isinstance(entry, dict):
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            entry = CommentedMap()
            cameras[camera_id] = entry
        if name or "name" not in entry:
            entry["name"] = name
        entry["url"] = url
        if main_url is not None:
            entry["main_url"] = main_url
        elif "main_url" in entry:
            del entry["main_url"]
        if credential is not None:
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            ref = CommentedMap()
            ref["credential"] = credential
            ref.fa.set_flow_style()
            entry["password"] = ref
        elif "password" in entry:
            del entry["password"]

    return edit_config(path, change)


def _bad_id(camera_id: str) -> None:
    raise ConfigError(
        f"camera id {camera_id!r}: lower-case letters, digits, '-' and '_' (it appears in topics)"
    )


def remove_camera(path: Path, camera_id: str) -> tuple[AgentConfig, str | None]:
    """Remove camera ``camera_id``; return the new config and its password credential's name.

    Raises:
        ConfigError: no such camera, or a rule still needs one of its zones.
        StoreError: the file cannot be written.
    """
    removed: list[str | None] = []

    def change(document: Any) -> None:
        cameras = document.get("cameras") or {}
        if camera_id not in cameras:
            known = ", ".join(sorted(cameras)) or "none"
            raise ConfigError(f"{path}: no camera {camera_id!r} (configured: {known})")
        ref = cameras[camera_id].get("password") if isinstance(cameras[camera_id], dict) else None
        removed.append(ref.get("credential") if isinstance(ref, dict) else None)
        del cameras[camera_id]

    config = edit_config(path, change)
    return config, removed[0] if removed else None


# --------------------------------------------------------------------------- snapshot


_ZONE_COLOURS = {"zone": (80, 200, 60), "exclude": (60, 60, 230), "food": (0, 200, 255)}
_VIEW_COLOUR = (255, 160, 0)  # BGR light blue: the crop and its tiles


def draw_zones(frame: np.ndarray, camera: CameraConfig, font: Path | None = None) -> np.ndarray:
    """A copy of ``frame`` with a 0.1 coordinate grid and the camera's zones drawn.

    Zones: green, exclusion areas red, food zones yellow, each labelled with its id and name,
    so an installer can read polygon coordinates (0..1 from the top-left) off the picture.
    A crop or tiles (``view``) are outlined in blue, and what lies outside the crop is dimmed.
    """
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    image = frame.copy()
    height, width = image.shape[:2]
    grid = image.copy()
    for i in range(1, 10):
        x, y = round(i * width / 10), round(i * height / 10)
        cv2.line(grid, (x, 0), (x, height), (255, 255, 255), 1)
        cv2.line(grid, (0, y), (width, y), (255, 255, 255), 1)
    image = cv2.addWeighted(grid, 0.35, image, 0.65, 0)
    thickness = max(2, width // 400)
    labels: list[tuple[tuple[int, int], str, tuple[int, int, int]]] = []
    for zone_id, zone in camera.zones.items():
        kind = "exclude" if zone.exclude else "food" if zone.food else "zone"
        colour = _ZONE_COLOURS[kind]
        points = np.array(
            [(round(x * width), round(y * height)) for x, y in zone.polygon], dtype=np.int32
        ).reshape(-1, 1, 2)
        overlay = image.copy()
        cv2.fillPoly(overlay, [points], colour)
        image = cv2.addWeighted(overlay, 0.2, image, 0.8, 0)
        cv2.polylines(image, [points], True, colour, thickness, cv2.LINE_AA)
        top_left = (int(points[:, 0, 0].min()) + 4, int(points[:, 0, 1].min()) + 4)
        text = (
            zone_id
            + (f" {zone.name}" if zone.name else "")
            + (" (excluded)" if zone.exclude else " (food)" if zone.food else "")
        )
        labels.append((top_left, text, colour))
    view = View.from_config(camera.view)
    if not view.is_whole:
        left, top, right, bottom = view.bounds(width, height)
        shaded = (image * 0.45).astype(np.uint8)  # outside the crop: not analysed
        shaded[top:bottom, left:right] = image[top:bottom, left:right]
        image = shaded
        for x0, y0, x1, y1 in view.windows(width, height):
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), _VIEW_COLOUR, max(1, thickness // 2))
        text = f"analysed: {view.cols}x{view.rows} tile(s)"
        labels.append(((left + 4, bottom - max(14, height // 36) - 8), text, _VIEW_COLOUR))
    size = max(14, height // 36)
    pil = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    draw = ImageDraw.Draw(pil)
    face: Any = ImageFont.truetype(str(font), size) if font else ImageFont.load_default()
    for i in range(1, 10):
        for at in ((round(i * width / 10) + 2, 2), (2, round(i * height / 10) + 2)):
            draw.rectangle(draw.textbbox(at, f"{i / 10:.1f}", font=face), fill=(0, 0, 0))
            draw.text(at, f"{i / 10:.1f}", fill=(255, 255, 255), font=face)
    for (x, y), text, (b, g, r) in labels:
        box = draw.textbbox((x, y), text, font=face)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(r, g, b), font=face)
    return cv2.cvtColor(np.asarray(pil), cv2.COLOR_RGB2BGR)


# --------------------------------------------------------------------------- systemd


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
    state_dir: Path = _UNIT_STATE_DIR,
    template: Path = _UNIT_TEMPLATE,
) -> str:
    """The unit file for this installation: the shipped template with its paths filled in.

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
    if state_dir != _UNIT_STATE_DIR:
        # ProtectSystem=strict makes everything else read-only: open the configured one.
        text = text.replace(
            "WorkingDirectory=", f"ReadWritePaths={state_dir}\nWorkingDirectory=", 1
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
    text = unit_text(
        config_path.absolute(), executable.absolute(), user=user, state_dir=config.storage.state_dir
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
                    str(_UNIT_STATE_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ]
            )
        if _group_exists("audio"):
            commands.append(["usermod", "--append", "--groups", "audio", user])
        commands.append(["chgrp", user, str(config_path.absolute())])
        commands.append(["systemctl", "daemon-reload"])
        if enable:
            commands.append(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME])
    else:
        notes.append(f"files written under {root}; user, enable and start happen on the box")
    if config.storage.state_dir.absolute() != _UNIT_STATE_DIR:
        notes.append(
            f"state_dir {config.storage.state_dir} is not {_UNIT_STATE_DIR}: the unit opens it "
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


def summarise(paths: Sequence[Path]) -> str:
    """Paths as one comma-separated line."""
    return ", ".join(str(p) for p in paths)
