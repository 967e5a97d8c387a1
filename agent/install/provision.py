"""Provisioning a box: ``init`` writes a validated config and keeps its secrets apart.

The installer's answers (asked, or read from a seed file) are checked one by one, rendered
into a commented config file, and the broker password goes into a credential store.

Every write is validated first: the new config text goes through the same parser as
``config check`` before it replaces the old file (atomically, keeping its permissions), so an
installer's typo never leaves a box with a config that does not start. Secrets go into a
credential store (``/etc/mclz-agent/credentials``, one 0600 file per secret), which the unit
hands to the agent with ``LoadCredential=`` and which the CLI reads directly when it is not
running under systemd.

The other installer writes live beside this module: :mod:`agent.install.config_edit` (``camera
add/remove``: edits that keep the file's comments, validated by :func:`validate_text` and
written by :func:`write_config` from here), :mod:`agent.install.snapshot` (``camera
snapshot``: the zones drawn on a live frame) and :mod:`agent.install.unit` (``service
install``: the systemd unit and its credentials drop-in).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.config import (
    DEFAULT_CREDENTIALS_DIR,
    ID_PATTERN,
    AgentConfig,
    MqttConfig,
    parse_config,
    with_base_dir,
)
from agent.errors import ConfigError, StoreError
from agent.fsutil import write_atomic
from agent.install.unit import UNIT_STATE_DIR

_ID_RE = re.compile(ID_PATTERN)
PACKAGED_MODEL = Path(__file__).resolve().parents[2] / "models" / "default"


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
    state_dir: str = str(UNIT_STATE_DIR)
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


def validate_text(text: str, path: Path) -> AgentConfig:
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


def write_config(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically with ``text`` and give it ``mode``.

    Run as root, the new file keeps the old one's owner and group: a config the service
    may rewrite (the installer page, ``web.enabled``) stays the service's after a CLI edit.

    Raises:
        StoreError: it cannot be written.
    """
    try:
        owner = path.stat() if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text.encode("utf-8"))
        os.chmod(path, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(path, owner.st_uid, owner.st_gid)
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
    validate_text(text, path)
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
    write_config(path, text, 0o640)
    return InitResult(path, tuple(stored), backup)
