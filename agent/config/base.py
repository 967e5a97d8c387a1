"""What every section of the configuration shares: the strict base model, ids, durations, secrets.

Secrets never live in the YAML: a field of type :class:`SecretRef` names an environment
variable, a systemd credential or a file that holds the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from agent.errors import SecretError
from agent.redact import register_secret

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ID_RE = re.compile(ID_PATTERN)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
DEFAULT_CREDENTIALS_DIR = Path("/etc/mclz-agent/credentials")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """Turn ``"500ms"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"7d"`` or a number into seconds.

    Anything else is returned unchanged so that pydantic reports it as the wrong type.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"not a duration: a number of {len(str(value))} digits") from None
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30, '30s', '10m', '2h', '7d')")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigModel(BaseModel):
    """A section of the file: unknown keys rejected, frozen, defaults validated too."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SecretRef(ConfigModel):
    """Where a secret comes from: one of an environment variable, a systemd credential, a file."""

    env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="environment variable name"
    )
    credential: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="systemd credential name (LoadCredential=), read from $CREDENTIALS_DIRECTORY",
    )
    file: Path | None = Field(
        default=None, description="file whose content (stripped) is the secret"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        chosen = [name for name in ("env", "credential", "file") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of env, credential, file")
        return self

    def describe(self) -> str:
        """Say where the secret comes from, without its value."""
        if self.env is not None:
            return f"env:{self.env}"
        if self.credential is not None:
            return f"credential:{self.credential}"
        return f"file:{self.file}"

    def resolve(self, where: str) -> str:
        """Return the secret's value; ``where`` is the config path used in errors.

        Raises:
            SecretError: the variable is unset, or the credential or file is unreadable.
        """
        value: str | None
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise SecretError(f"{where}: environment variable {self.env} is not set")
        else:
            if self.credential is not None:
                path = credentials_directory() / self.credential
            else:
                path = self.file if self.file is not None else Path()
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SecretError(
                    f"{where}: cannot read secret file {path}: {exc.strerror}"
                ) from exc
        if not value:
            raise SecretError(f"{where}: secret from {self.describe()} is empty")
        register_secret(value)
        return value


def credentials_directory() -> Path:
    """Where ``{credential: NAME}`` secrets are read from.

    Under systemd, ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``); elsewhere (the installer
    running ``check`` or ``camera snapshot`` as root) the credential store ``init`` and
    ``camera add`` write, ``$MCLZ_CREDENTIALS_DIR`` or ``/etc/mclz-agent/credentials``.
    """
    return Path(
        os.environ.get("CREDENTIALS_DIRECTORY")
        or os.environ.get("MCLZ_CREDENTIALS_DIR")
        or DEFAULT_CREDENTIALS_DIR
    )
