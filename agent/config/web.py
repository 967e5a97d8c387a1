"""The ``web`` section: the local installer page (issue #19), off by default.

The page lets an installer draw zones on the live picture, record food references, read
health and alerts and mute the alarm, so it changes the box: it listens on one configured
LAN address (never every address unless ``allow_any_address`` says so), asks for a password
whose scrypt hash comes from the credential store (``mclz-agent web passwd``), and runs
HTTPS when ``tls`` names a certificate.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import (
    BeforeValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WrapSerializer,
    field_validator,
)

from agent.config.base import ConfigModel, Duration, SecretRef

#: Hosts that mean "every address of the box".
ANY_ADDRESSES = frozenset({"", "0.0.0.0", "::", "0:0:0:0:0:0:0:0"})  # noqa: S104 - refused below
WEB_PASSWORD_CREDENTIAL = "web-password"  # noqa: S105 - a credential name, not a secret


def split_listen(listen: str) -> tuple[str, int]:
    """``"192.168.1.20:8080"`` -> (``"192.168.1.20"``, 8080); ``"[::1]:8080"`` -> (``"::1"``, 8080).

    Raises:
        ValueError: not ``HOST:PORT``, or the port is not a number from 1 to 65535.
    """
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep:
        raise ValueError(f"{listen!r} is not HOST:PORT (e.g. 192.168.1.20:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. [fd00::20]:8080")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{listen!r}: bad port {port_text!r} (a number from 1 to 65535)")
    return host, int(port_text)


class WebTlsConfig(ConfigModel):
    """HTTPS for the page: the box's certificate and its private key (PEM files)."""

    cert_file: Path = Field(description="certificate (PEM), with its chain if any")
    key_file: Path = Field(description="private key (PEM) of the certificate")


def _tls_off(value: object) -> object:
    """``off`` (YAML 1.1 reads an unquoted ``off`` as false) is None; a mapping stays."""
    if value is None or value is False or value == "off":
        return None
    if not isinstance(value, dict | WebTlsConfig):
        raise ValueError("must be off or {cert_file: PATH, key_file: PATH}")  # noqa: TRY004 - pydantic reports ValueError
    return value


def _show_off(value: WebTlsConfig | None, handler: SerializerFunctionWrapHandler) -> object:
    """``config show`` writes no TLS as the file does: ``off``."""
    return "off" if value is None else handler(value)


#: ``off`` (None) or the certificate and key: optional rather than a union, so a mapping
#: with a mistake is reported once, at its key (``web.tls.key_file: required key is missing``).
WebTls = Annotated[WebTlsConfig | None, BeforeValidator(_tls_off), WrapSerializer(_show_off)]


class WebConfig(ConfigModel):
    """The local installer page: zones drawn on the picture, food references, health, alerts."""

    enabled: bool = Field(default=False, description="serve the installer page")
    # Before listen: its validator reads this one.
    allow_any_address: bool = Field(
        default=False,
        description="allow listen on 0.0.0.0 / [::] (every network of the box, the camera "
        "network and the uplink's included)",
    )
    listen: str = Field(
        default="127.0.0.1:8080",
        description="HOST:PORT the page listens on: an address of this box on the kitchen's LAN "
        "(e.g. 192.168.1.20:8080), [IPv6]:PORT, or 127.0.0.1 for an SSH tunnel",
    )
    tls: WebTls = Field(
        default=None,
        description="off (plain HTTP: the session cookie cannot be Secure) or "
        "{cert_file, key_file} for HTTPS",
    )
    password: SecretRef = Field(
        default_factory=lambda: SecretRef(credential=WEB_PASSWORD_CREDENTIAL),
        description="where the password's scrypt hash comes from (mclz-agent web passwd "
        "writes it); never the password itself",
    )
    session_timeout: Duration = Field(
        default=8 * 3600.0,
        ge=300,
        le=7 * 86400,
        description="a session unused this long ends (log in again)",
    )
    login_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="failed logins per client address within 15 minutes before it is locked "
        "out until the oldest of them is 15 minutes old",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str, info: ValidationInfo) -> str:
        host, _port = split_listen(listen)
        if host in ANY_ADDRESSES:
            if not info.data.get("allow_any_address", False):
                raise ValueError(
                    f"{listen!r} means every network of the box (the cameras' and the "
                    "uplink's too): give this box's LAN address, or set allow_any_address: true"
                )
        elif host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(
                    f"{listen!r}: the host must be an IP address of this box "
                    "(e.g. 192.168.1.20) or localhost"
                ) from None
        return listen

    @property
    def host(self) -> str:
        """The address to bind (IPv6 without brackets; empty means every address)."""
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The TCP port."""
        return split_listen(self.listen)[1]

    @property
    def use_tls(self) -> bool:
        """Whether the page is served over HTTPS (and its cookies are Secure)."""
        return self.tls is not None
