"""The root of the file, :class:`AgentConfig`, and its small sections.

Identity, the MQTT uplink (with TLS), storage, evidence, heartbeat and logging live here;
the larger sections have their own modules (cameras, rules, detect, alarm, web).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from agent.config.alarm import AlarmConfig
from agent.config.base import ID_PATTERN, ID_RE, ConfigModel, Duration, SecretRef
from agent.config.cameras import CameraConfig
from agent.config.detect import CaptureConfig, FoodConfig, ModelConfig
from agent.config.rules import FOOD_ZONES, RuleConfig, ScheduleWindow, default_rules
from agent.config.web import WebConfig


class IdentityConfig(ConfigModel):
    """Who this box is; the ids form the MQTT topic, so they have no defaults on purpose."""

    city: str = Field(pattern=ID_PATTERN, description="city code, e.g. 'hangzhou' or '330100'")
    school_id: str = Field(pattern=ID_PATTERN, description="the platform's id of the school")
    box_id: str = Field(pattern=ID_PATTERN, description="id of this box within the school")
    school_name: str = Field(default="", max_length=200, description="display name, e.g. 某某小学")
    timezone: str = Field(
        default="Asia/Shanghai",
        description="IANA time zone of the kitchen: schedules and evidence captions use it",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r} (IANA name, e.g. Asia/Shanghai)"
            ) from None
        return name

    @property
    def tz(self) -> ZoneInfo:
        """The kitchen's time zone."""
        return ZoneInfo(self.timezone)


class TlsConfig(ConfigModel):
    """TLS towards the broker (used when the URL is mqtts://)."""

    ca_file: Path | None = Field(default=None, description="CA bundle; system CAs when unset")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="client private key (mutual TLS)")
    insecure: bool = Field(default=False, description="skip hostname verification (testing only)")

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttConfig(ConfigModel):
    """The uplink to the city platform's MQTT broker."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://host[:port]"
    )
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    client_id: str = Field(
        default="", max_length=128, description="client id; empty means '<city>-<school>-<box>'"
    )
    username: str = Field(default="", max_length=256, description="user name; empty for none")
    password: SecretRef | None = Field(default=None, description="where the password comes from")
    keepalive: int = Field(
        default=30,
        ge=4,
        le=600,
        description=(
            "a silent broker for this long means the link is dead, seconds; the box pings"
            " every keepalive/2 (the MQTT keepalive it sends), so the broker also publishes"
            " the last will about 0.75 x keepalive after the box vanished"
        ),
    )
    topic_prefix: str = Field(
        default="mclz",
        pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$",
        description="first topic levels, before <city>/<school>/<box>",
    )
    session_expiry: Duration = Field(
        default=7 * 86400.0,
        ge=0,
        le=30 * 86400,
        description="MQTT 5 session expiry: the broker keeps the box's session this long",
    )
    reconnect_min: Duration = Field(default=1.0, ge=0.1, le=60, description="first reconnect delay")
    reconnect_max: Duration = Field(default=120.0, ge=1, le=3600, description="reconnect delay cap")
    inflight: int = Field(default=20, ge=1, le=1000, description="QoS 1 messages awaiting PUBACK")
    max_rate: float = Field(
        default=20.0,
        ge=0,
        le=10000,
        description="messages per second at most, so a backlog cannot flood the platform (0: none)",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings for mqtts://")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise ValueError("URL has no host")
        if parts.password is not None:
            raise ValueError("URL contains a password: use mqtt.password (env or credential)")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return url

    @property
    def host(self) -> str:
        """Broker host name."""
        return urlsplit(self.url).hostname or ""

    @property
    def use_tls(self) -> bool:
        """Whether the URL asks for TLS."""
        return urlsplit(self.url).scheme in {"mqtts", "ssl"}

    @property
    def port(self) -> int:
        """Broker port, 1883 or 8883 when the URL names none."""
        return urlsplit(self.url).port or (8883 if self.use_tls else 1883)


class StorageConfig(ConfigModel):
    """Where the agent keeps its state: the SQLite database and evidence images."""

    state_dir: Path = Field(
        default=Path("/var/lib/mclz-agent"), description="database and evidence live here"
    )
    message_ttl: Duration = Field(
        default=7 * 86400.0, ge=60, le=90 * 86400, description="undelivered messages expire after"
    )
    max_db_mb: float = Field(
        default=1024.0,
        ge=1,
        le=1_000_000,
        description="cap on undelivered data: heartbeats and status go first, then the oldest "
        "evidence images, then the oldest alerts",
    )


class EvidenceConfig(ConfigModel):
    """Evidence snapshots attached to alerts."""

    enabled: bool = Field(default=True, description="save a JPEG with the boxes drawn per alert")
    max_width: int = Field(default=1280, ge=160, le=7680, description="downscale wider frames")
    jpeg_quality: int = Field(default=85, ge=30, le=100, description="JPEG quality")
    max_bytes: int = Field(
        default=900_000,
        ge=50_000,
        le=100_000_000,
        description="largest JPEG sent; quality is lowered to fit (EMQX's default limit: 1 MB)",
    )
    font: Path | None = Field(
        default=None,
        description="font file with Chinese glyphs for the caption (TTF/OTF/TTC); unset: the "
        "first found of WenQuanYi Micro Hei, Noto Sans CJK and a few other system fonts",
    )
    keep_days: int = Field(
        default=30, ge=1, le=3650, description="evidence images older than this are deleted, days"
    )
    max_total_mb: float = Field(
        default=2000.0,
        ge=1,
        le=10_000_000,
        description="evidence images above this total (MB) are deleted, oldest first",
    )


class HeartbeatConfig(ConfigModel):
    """Periodic health report."""

    interval: Duration = Field(default=60.0, ge=1, le=3600, description="seconds between beats")


class LoggingConfig(ConfigModel):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="level")
    timestamps: Literal["auto", "yes", "no"] = Field(
        default="auto", description="auto: none under systemd (journald adds them)"
    )


CameraId = Annotated[str, Field(pattern=ID_PATTERN)]


class AgentConfig(ConfigModel):
    """The whole configuration file."""

    identity: IdentityConfig = Field(description="who this box is")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="uplink to the platform")
    cameras: dict[CameraId, CameraConfig] = Field(
        default_factory=dict, description="cameras by id (lower-case, digits, - and _)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="detection model")
    rules: dict[str, RuleConfig] = Field(
        default_factory=default_rules, description="violation types by name"
    )
    schedules: dict[str, tuple[ScheduleWindow, ...]] = Field(
        default_factory=dict,
        description="named weekly time windows (e.g. preparation and serving hours) for rules",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="local state")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, description="snapshots")
    capture: CaptureConfig = Field(
        default_factory=CaptureConfig, description="frames kept for labelling (off by default)"
    )
    food: FoodConfig = Field(
        default_factory=FoodConfig, description="food zones: covered/uncovered/empty (issue #7)"
    )
    alarm: AlarmConfig = Field(
        default_factory=AlarmConfig, description="on-site alarm: beeps and voice prompts (issue #8)"
    )
    heartbeat: HeartbeatConfig = Field(default_factory=HeartbeatConfig, description="heartbeat")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="logging")
    web: WebConfig = Field(
        default_factory=WebConfig,
        description="the local installer page: zones, food references, health (issue #19)",
    )

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, rules: dict[str, RuleConfig]) -> dict[str, RuleConfig]:
        for name in rules:
            if not ID_RE.match(name):
                raise ValueError(f"rule name {name!r} must match {ID_PATTERN}")
        return rules

    def cross_check(self) -> list[tuple[tuple[int | str, ...], str]]:
        """References between sections that a single field cannot check: (where, problem)."""
        problems: list[tuple[tuple[int | str, ...], str]] = []
        known = ", ".join(sorted(self.schedules)) or "none defined"
        for name, rule in self.rules.items():
            if rule.schedule is not None and rule.schedule not in self.schedules:
                problems.append(
                    (("rules", name, "schedule"), f"unknown schedule {rule.schedule!r} ({known})")
                )
            for zone in rule.zones:
                if zone == FOOD_ZONES:
                    continue
                if not any(zone in cam.zones for cam in self.cameras.values()):
                    problems.append((("rules", name, "zones"), f"no camera has a zone {zone!r}"))
        for camera_id, camera in self.cameras.items():
            for name, own in camera.rules.items():
                where: tuple[int | str, ...] = ("cameras", camera_id, "rules", name)
                if name not in self.rules:
                    rules = ", ".join(sorted(self.rules))
                    problems.append((where, f"no rule {name!r} in rules ({rules})"))
                    continue
                if own.schedule is not None and own.schedule not in self.schedules:
                    problems.append(
                        ((*where, "schedule"), f"unknown schedule {own.schedule!r} ({known})")
                    )
                for zone in own.zones or ():
                    if zone != FOOD_ZONES and zone not in camera.zones:
                        zones = ", ".join(sorted(camera.zones)) or "none defined"
                        problems.append(
                            ((*where, "zones"), f"camera has no zone {zone!r} ({zones})")
                        )
        return problems

    @property
    def client_id(self) -> str:
        """The MQTT client id, derived from the identity when not set."""
        ident = self.identity
        return self.mqtt.client_id or f"{ident.city}-{ident.school_id}-{ident.box_id}"

    @property
    def topic_root(self) -> str:
        """``<prefix>/<city>/<school>/<box>``: every topic of this box starts here."""
        ident = self.identity
        return f"{self.mqtt.topic_prefix}/{ident.city}/{ident.school_id}/{ident.box_id}"

    def secret_refs(self) -> Iterable[tuple[str, SecretRef]]:
        """Every secret reference with its config path."""
        if self.mqtt.password is not None:
            yield "mqtt.password", self.mqtt.password
        for camera_id, camera in self.cameras.items():
            if camera.password is not None:
                yield f"cameras.{camera_id}.password", camera.password
        if self.alarm.sounder.password is not None:
            yield "alarm.sounder.password", self.alarm.sounder.password
        if self.web.enabled:  # the page's password hash is needed only when it is served
            yield "web.password", self.web.password
