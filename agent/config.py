"""The agent's configuration: one YAML file validated by pydantic models, loaded once.

Unknown keys are rejected, every field has limits and a description, and every error
names the file, the line and the YAML path, for example
``agent.yaml:42 cameras.kitchen-1.detect_interval: must be >= 0.1 s``.
Secrets never live in the YAML: a field of type :class:`SecretRef` names an environment
variable, a systemd credential or a file that holds the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError, SecretError
from agent.redact import register_secret, with_password

if TYPE_CHECKING:
    from agent.detect.detector import View

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_ID_RE = re.compile(ID_PATTERN)
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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SecretRef(_Model):
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


class IdentityConfig(_Model):
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


class TlsConfig(_Model):
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


class MqttConfig(_Model):
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


class PictureConfig(_Model):
    """Picture checks on the analysed frames: black, frozen, covered or defocused (画面遮挡)."""

    enabled: bool = Field(default=True, description="run the picture checks on this camera")
    black_luma: float = Field(
        default=20.0,
        ge=0,
        le=255,
        description="mean luma (0-255) below this: black picture (a lit kitchen reads 100-150)",
    )
    frozen_after: Duration = Field(
        default=300.0,
        ge=1,
        le=86400,
        description="picture unchanged this long: frozen (set well above the keyframe interval)",
    )
    sharpness_min: float = Field(
        default=250.0,
        ge=0,
        le=100000,
        description="detail below this: covered or defocused (Laplacian variance at 160 px, "
        "75th-percentile cell of a 4x8 grid; lit kitchens read > 1000)",
    )
    warn_after: Duration = Field(
        default=60.0, ge=0, le=86400, description="black/covered this long before a warning"
    )
    clear_after: Duration = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="black/covered gone this long before it clears (frozen clears at once)",
    )


Point = tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]]


class ZoneConfig(_Model):
    """An area of a camera's picture, as a polygon in normalised coordinates (0..1)."""

    name: str = Field(default="", max_length=100, description="display name, e.g. 备餐区")
    polygon: tuple[Point, ...] = Field(
        min_length=3, description="corners [x, y], 0..1 from the top-left, in drawing order"
    )
    exclude: bool = Field(
        default=False,
        description="ignore detections here (a poster, a TV, a mirror): half a box inside is out",
    )
    food: bool = Field(
        default=False,
        description="a food zone: its state (covered, uncovered, empty) is classified against "
        "references the installer recorded with 'mclz-agent food calibrate'",
    )

    @field_validator("polygon")
    @classmethod
    def _has_area(cls, polygon: tuple[Point, ...]) -> tuple[Point, ...]:
        area = 0.0
        for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1], strict=True):
            area += x1 * y2 - x2 * y1
        if abs(area) / 2 < 1e-4:
            raise ValueError("polygon has no area (points on a line, or repeated)")
        return polygon


class GatingConfig(_Model):
    """Skip inference on frames that have not changed, with a forced check now and then."""

    enabled: bool = Field(default=True, description="skip unchanged frames")
    threshold: float = Field(
        default=0.002,
        ge=0,
        le=1,
        description=(
            "share of the picture that must change (by more than 12 grey levels) since the"
            " last analysed frame; less: the frame is unchanged and skipped"
        ),
    )
    max_skip: Duration = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="run inference at least this often anyway (an uncovered tray does not move)",
    )


class ViewConfig(_Model):
    """What part of the picture the detector sees, and in how many tiles."""

    crop: tuple[
        Annotated[float, Field(ge=0, le=1)],
        Annotated[float, Field(ge=0, le=1)],
        Annotated[float, Field(ge=0, le=1)],
        Annotated[float, Field(ge=0, le=1)],
    ] = Field(
        default=(0.0, 0.0, 1.0, 1.0),
        description=(
            "[x0, y0, x1, y1], 0..1 from the top-left: the part of the picture analysed,"
            " at the model's full input size (a serving line in a third of a wide view gets"
            " three times the detail); nothing outside it is detected"
        ),
    )
    tiles: tuple[Annotated[int, Field(ge=1, le=4)], Annotated[int, Field(ge=1, le=4)]] = Field(
        default=(1, 1),
        description=(
            "[columns, rows] of overlapping tiles over the crop, each analysed at the model's"
            " full input size: [2, 2] doubles the pixels of small, far faces and heads and"
            " costs 4x the inference (docs/performance.md)"
        ),
    )
    overlap: float = Field(
        default=0.15, ge=0, le=0.5, description="share of a tile its neighbour also covers"
    )

    def detector_view(self) -> View:
        """This view as the detector takes it."""
        from agent.detect.detector import View  # noqa: PLC0415 - keeps config light to import

        cols, rows = self.tiles
        return View(self.crop, cols, rows, self.overlap)

    @model_validator(mode="after")
    def _crop_has_area(self) -> ViewConfig:
        x0, y0, x1, y1 = self.crop
        if x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"crop must be [x0, y0, x1, y1] with x0 < x1 and y0 < y1, not {list(self.crop)}"
            )
        if (x1 - x0) * (y1 - y0) < 0.01:
            raise ValueError("crop is smaller than 1 % of the picture")
        return self


class CameraRuleConfig(_Model):
    """A camera's own values for a rule; anything unset comes from ``rules.<name>``."""

    enabled: bool | None = Field(default=None, description="rule on/off on this camera")
    min_confidence: float | None = Field(default=None, ge=0.01, le=1, description="threshold")
    min_duration: Duration | None = Field(default=None, ge=0, le=86400, description="seconds")
    end_after: Duration | None = Field(default=None, ge=0, le=86400, description="seconds")
    cooldown: Duration | None = Field(default=None, ge=0, le=7 * 86400, description="seconds")
    zones: tuple[str, ...] | None = Field(default=None, description="zone names of this camera")
    schedule: str | None = Field(default=None, description="name in schedules")
    box_height: tuple[float, float] | None = Field(
        default=None, description="plausible box heights [min, max], fractions of the picture"
    )


class CameraConfig(_Model):
    """One camera: where its stream is and how often to look at it."""

    name: str = Field(default="", max_length=100, description="display name, e.g. 后厨操作间")
    url: str = Field(
        description="rtsp://[user@]host[:port]/path, rtsps://..., or a video file path"
    )
    password: SecretRef | None = Field(
        default=None, description="RTSP password (env or credential)"
    )
    main_url: str | None = Field(
        default=None,
        description="main (full-resolution) stream for evidence snapshots; detection uses url",
    )
    enabled: bool = Field(default=True, description="read and analyse this camera")
    transport: Literal["tcp", "udp"] = Field(default="tcp", description="RTSP transport")
    detect_interval: Duration = Field(
        default=1.0, ge=0.1, le=3600, description="seconds between analysed frames"
    )
    decode: Literal["auto", "keyframes", "all"] = Field(
        default="auto",
        description="auto: keyframes only when they arrive at least every detect_interval",
    )
    open_timeout: Duration = Field(default=10.0, ge=1, le=120, description="connect/read timeout")
    stall_timeout: Duration = Field(
        default=20.0, ge=1, le=600, description="no frame this long: reconnect"
    )
    offline_after: Duration = Field(
        default=60.0, ge=0, le=3600, description="no frame this long: report the camera offline"
    )
    reconnect_max: Duration = Field(
        default=30.0,
        ge=1,
        le=3600,
        description=(
            "cap of the reconnect backoff (1 s doubling, jittered): a camera back from a"
            " reboot is read again within about this long"
        ),
    )
    loop: bool = Field(default=False, description="file sources only: replay from the start at end")
    picture: PictureConfig = Field(
        default_factory=PictureConfig, description="black / frozen / covered picture checks"
    )
    zones: dict[str, ZoneConfig] = Field(
        default_factory=dict, description="named areas of the picture (by id)"
    )
    rules: dict[str, CameraRuleConfig] = Field(
        default_factory=dict, description="this camera's own values for rules (by rule name)"
    )
    gating: GatingConfig = Field(
        default_factory=GatingConfig,
        description="skip unchanged frames, force a check now and then",
    )
    view: ViewConfig = Field(
        default_factory=ViewConfig,
        description="crop and tiles: more detail for small, far faces and heads",
    )

    @field_validator("zones")
    @classmethod
    def _zone_ids(cls, zones: dict[str, ZoneConfig]) -> dict[str, ZoneConfig]:
        for name in zones:
            if not _ID_RE.match(name):
                raise ValueError(f"zone id {name!r} must match {ID_PATTERN}")
        return zones

    @field_validator("url", "main_url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        if "://" not in url:
            if not url.strip():
                raise ValueError("empty URL")
            return url  # a local file; existence is checked when the camera opens
        parts = urlsplit(url)
        if parts.scheme == "file":
            return url
        if parts.scheme not in {"rtsp", "rtsps"}:
            raise ValueError(f"must be rtsp://, rtsps:// or a file path, got {parts.scheme}://")
        if not parts.hostname:
            raise ValueError("RTSP URL has no host")
        if parts.password is not None:
            raise ValueError(
                "URL contains a password: remove it and set password: {env: NAME} "
                "or {credential: NAME} instead"
            )
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return url

    @property
    def is_file(self) -> bool:
        """Whether the source is a local file rather than a network stream."""
        return "://" not in self.url or self.url.startswith("file://")

    def source_url(self, camera_id: str) -> str:
        """The URL to open, with the password inserted. Never log its result unredacted.

        Raises:
            SecretError: the password cannot be resolved.
        """
        if self.password is None or self.is_file:
            return self.url
        secret = self.password.resolve(f"cameras.{camera_id}.password")
        return with_password(self.url, secret)

    def main_stream(self) -> CameraConfig | None:
        """A config that reads the main stream (keyframes only, for evidence), if one is set."""
        if self.main_url is None:
            return None
        return self.model_copy(
            update={
                "url": self.main_url,
                "main_url": None,
                "decode": "keyframes",
                "detect_interval": 0.1,
            }
        )


class ModelConfig(_Model):
    """The detection model package and how to run it."""

    path: Path = Field(default=Path("models/default"), description="model package directory")
    backend: Literal["onnxruntime", "openvino"] = Field(
        default="onnxruntime", description="inference backend"
    )
    threads: int = Field(default=1, ge=1, le=64, description="intra-op threads for inference")
    conf_threshold: float = Field(
        default=0.25, ge=0.01, le=1, description="detections below this are discarded"
    )
    iou_threshold: float = Field(default=0.45, ge=0.05, le=1, description="NMS IoU threshold")
    max_slowdown: float = Field(
        default=4.0,
        ge=1,
        le=20,
        description=(
            "when inference cannot keep up, every camera's detect_interval is stretched"
            " together up to this factor (counted in the heartbeat) instead of dropping"
            " frames at random"
        ),
    )


Consensus = tuple[int, int]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _parse_days(value: object) -> object:
    """``[mon, wed-fri]`` -> ``(0, 2, 3, 4)``; ranges may wrap (``sat-mon``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return value
    days: set[int] = set()
    for item in value:
        if not isinstance(item, str):
            return value  # let pydantic report the type
        first, _, last = item.strip().lower().partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown day {item!r} (mon, tue, ... sun, or a range mon-fri)")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return tuple(sorted(days))


def _minutes(text: str) -> int:
    match = _HHMM.match(text)
    if match is None or (match.group(1) == "24" and match.group(2) != "00"):
        raise ValueError(f"time {text!r} must be HH:MM (00:00 .. 24:00)")
    return int(match.group(1)) * 60 + int(match.group(2))


class ScheduleWindow(_Model):
    """A weekly time window in the box's time zone; end <= start runs past midnight."""

    days: Annotated[tuple[int, ...], BeforeValidator(_parse_days)] = Field(
        default=(0, 1, 2, 3, 4, 5, 6),
        description="days the window starts on: [mon, ..., sun] or ranges like mon-fri",
    )
    start: str = Field(description="HH:MM local time")
    end: str = Field(description="HH:MM local time; at or before start: ends the next day")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, text: str) -> str:
        _minutes(text)
        return text

    def contains(self, weekday: int, minute: int) -> bool:
        """Whether local ``weekday`` (0 = Monday) at ``minute`` of the day is in the window."""
        start, end = _minutes(self.start), _minutes(self.end)
        if start < end:
            return weekday in self.days and start <= minute < end
        # Past midnight (or a whole day when start == end): the tail belongs to the day before.
        return (weekday in self.days and minute >= start) or (
            (weekday - 1) % 7 in self.days and minute < end
        )


class RuleConfig(_Model):
    """One violation type: which detections count, for how long, and how often to alert."""

    enabled: bool = Field(default=True, description="raise alerts of this type")
    labels: tuple[str, ...] = Field(min_length=1, description="model labels that count as this")
    min_confidence: float | None = Field(
        default=None,
        ge=0.01,
        le=1,
        description="per-detection threshold; unset: the model's threshold for the label, else 0.5",
    )
    min_duration: Duration = Field(
        default=3.0, ge=0, le=86400, description="seen this long before an alert is raised"
    )
    end_after: Duration = Field(
        default=10.0,
        ge=0,
        le=86400,
        description="unseen this long ends the episode (and ends a raised alert)",
    )
    consensus: Consensus | None = Field(
        default=None,
        description="also require [hits, of]: at least hits of the last `of` checks saw it",
    )
    cooldown: Duration = Field(
        default=600.0,
        ge=0,
        le=7 * 86400,
        description="no new alert of this type in this camera zone within this after one started",
    )
    severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="how urgent the platform should treat it"
    )
    zones: tuple[str, ...] = Field(
        default=(),
        description=(
            "only in these zones (ids of the camera's zones; '@food': all its food zones);"
            " empty: the whole picture"
        ),
    )
    zone_anchor: Literal["bottom_center", "overlap"] = Field(
        default="bottom_center",
        description=(
            "bottom_center: the box's bottom-centre point must be in the zone (where a person"
            " stands or an object rests); overlap: at least min_overlap of the box is in it"
        ),
    )
    min_overlap: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="share of the box inside the zone (zone_anchor overlap)",
    )
    schedule: str | None = Field(
        default=None, description="name in schedules: alert only then; unset: always"
    )
    box_height: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="plausible box heights [min, max] as fractions of the picture height",
    )

    @field_validator("consensus")
    @classmethod
    def _consensus(cls, value: Consensus | None) -> Consensus | None:
        if value is not None and not 1 <= value[0] <= value[1] <= 1000:
            raise ValueError("consensus must be [hits, of] with 1 <= hits <= of <= 1000")
        return value

    @field_validator("box_height")
    @classmethod
    def _box_height(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 1:
            raise ValueError("box_height must be [min, max] with 0 <= min < max <= 1")
        return value


FOOD_ZONES = "@food"  # in a rule's zones: every food zone (food: true) of the camera


def _default_rules() -> dict[str, RuleConfig]:
    return {
        "no_hat": RuleConfig(labels=("head_bare",)),
        "no_mask": RuleConfig(labels=("face_no_mask",)),
        # Food is uncovered for a moment whenever a dish is served or refilled: minutes, not
        # seconds, before it is a violation; a person reaching over the tray (unknown) for
        # up to a minute does not end the episode.
        "food_uncovered": RuleConfig(
            labels=("food_uncovered",),
            min_duration=300.0,
            end_after=60.0,
            cooldown=1800.0,
            zones=(FOOD_ZONES,),
            zone_anchor="overlap",
            min_overlap=0.4,
        ),
    }


class StorageConfig(_Model):
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


class EvidenceConfig(_Model):
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


class CaptureConfig(_Model):
    """Frames kept with the model's detections as YOLO labels, to label and improve the model.

    The frames show children and staff: personal data. Turn this on only where the school's
    consent and data policy allow it.
    """

    enabled: bool = Field(
        default=False, description="keep sample frames (personal data: the school's policy rules)"
    )
    uncertain_band: float = Field(
        default=0.15,
        ge=0,
        le=1,
        description="keep a frame when a detection's confidence is within this of its threshold",
    )
    random_rate: float = Field(
        default=0.001, ge=0, le=1, description="share of analysed frames kept at random"
    )
    max_mb: float = Field(
        default=500.0, ge=1, le=10_000_000, description="size cap (MB); the oldest frames go first"
    )
    min_interval: Duration = Field(
        default=30.0, ge=0, le=86400, description="at most one frame per camera this often"
    )
    directory: Path | None = Field(
        default=None, description="where the frames go; unset: <storage.state_dir>/capture"
    )


class FoodConfig(_Model):
    """Food zones (防尘防蝇): each zone's state classified against the installer's references."""

    check_interval: Duration = Field(
        default=5.0, ge=0.5, le=3600, description="seconds between two checks of a food zone"
    )
    unknown_distance: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="farther than this times the references' own state-to-state distance from "
        "every reference: unknown (something covers the zone, or the scene changed)",
    )
    occlusion_overlap: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="a person, face or head detection over more than this share of a food zone: "
        "unknown (the zone cannot be seen)",
    )
    references_per_state: int = Field(
        default=50,
        ge=1,
        le=1000,
        description="references kept per camera, zone and state; the oldest go first",
    )


class HeartbeatConfig(_Model):
    """Periodic health report."""

    interval: Duration = Field(default=60.0, ge=1, le=3600, description="seconds between beats")


class LoggingConfig(_Model):
    """Log output."""

    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="level")
    timestamps: Literal["auto", "yes", "no"] = Field(
        default="auto", description="auto: none under systemd (journald adds them)"
    )


# --------------------------------------------------------------------------- alarm


class BeepConfig(_Model):
    """One severity's beep pattern: ``count`` tones of ``frequency`` Hz, ``gap`` apart."""

    frequency: float = Field(default=1000.0, ge=100, le=8000, description="tone pitch, Hz")
    duration: Duration = Field(default=0.15, ge=0.02, le=2, description="length of one tone")
    count: int = Field(default=1, ge=1, le=10, description="tones in the pattern")
    gap: Duration = Field(default=0.1, ge=0.02, le=2, description="silence between two tones")


class BeepsConfig(_Model):
    """Beep patterns by alert severity, so staff hear how urgent it is before the words."""

    info: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=880.0, duration=0.15, count=1),
        description="info alerts (default one 880 Hz beep of 150 ms)",
    )
    warning: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=1000.0, duration=0.15, count=2),
        description="warning alerts (default two 1 kHz beeps)",
    )
    critical: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=1500.0, duration=0.15, count=3),
        description="critical alerts (default three 1.5 kHz beeps)",
    )


class SounderConfig(_Model):
    """What plays the alarm: the box's audio output, a network speaker, a program, or files."""

    kind: Literal["none", "alsa", "http", "command", "file"] = Field(
        default="none",
        description="none: no alarm sound (a box without a speaker); alsa: the box's audio "
        "output via aplay; http: upload the WAV to a network speaker; command: run a program "
        "with the WAV file; file: write WAV files to a directory (testing, demo)",
    )
    device: str = Field(
        default="",
        max_length=200,
        description="alsa: ALSA device for aplay -D (e.g. plughw:1,0); empty: the default device",
    )
    url: str = Field(
        default="", max_length=2000, description="http: http(s):// URL the WAV is sent to"
    )
    method: Literal["POST", "PUT"] = Field(default="POST", description="http: request method")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="http: extra request headers (no secrets here: use username/password)",
    )
    username: str = Field(default="", max_length=256, description="http: basic-auth user name")
    password: SecretRef | None = Field(
        default=None, description="http: basic-auth password (env, credential or file)"
    )
    command: tuple[str, ...] = Field(
        default=(),
        description="command: program and arguments; '{file}' is replaced by the WAV file's "
        "path (appended when absent)",
    )
    directory: Path | None = Field(default=None, description="file: where the WAV files go")
    timeout: Duration = Field(
        default=15.0, ge=1, le=120, description="longest one play may take before it is abandoned"
    )

    @model_validator(mode="after")
    def _needs(self) -> SounderConfig:
        if self.kind == "http":
            parts = urlsplit(self.url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("kind http needs url: http(s)://host/path")
            if parts.password is not None:
                raise ValueError("url contains a password: use username and password instead")
        if self.kind == "command" and not self.command:
            raise ValueError("kind command needs command: [program, arg, ...]")
        if self.kind == "file" and self.directory is None:
            raise ValueError("kind file needs directory")
        return self


class AlarmConfig(_Model):
    """The on-site alarm: beeps and Mandarin voice prompts for kitchen staff (issue #8)."""

    enabled: bool = Field(default=True, description="sound the alarm when an alert starts")
    sounder: SounderConfig = Field(
        default_factory=SounderConfig, description="what plays the sound (default none)"
    )
    cooldown: Duration = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="no second alarm for the same camera and violation type within this",
    )
    max_per_hour: int = Field(
        default=12, ge=1, le=3600, description="alarms played in any hour at most"
    )
    quiet_hours: tuple[ScheduleWindow, ...] = Field(
        default=(), description="weekly windows (identity.timezone) in which the alarm is silent"
    )
    beeps: BeepsConfig = Field(default_factory=BeepsConfig, description="beep pattern per severity")
    prompts: dict[str, Path] = Field(
        default_factory=dict,
        description="voice prompt WAV per violation type, replacing the built-in Mandarin one",
    )
    place_prompts: dict[str, Path] = Field(
        default_factory=dict,
        description="WAV naming a place, played after the prompt; key 'camera' or 'camera/zone'",
    )
    volume: float = Field(default=1.0, ge=0, le=1, description="loudness of the sound, 0..1")
    queue_size: int = Field(
        default=4, ge=1, le=100, description="alarms waiting to play; more are dropped and counted"
    )


CameraId = Annotated[str, Field(pattern=ID_PATTERN)]


class AgentConfig(_Model):
    """The whole configuration file."""

    identity: IdentityConfig = Field(description="who this box is")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="uplink to the platform")
    cameras: dict[CameraId, CameraConfig] = Field(
        default_factory=dict, description="cameras by id (lower-case, digits, - and _)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="detection model")
    rules: dict[str, RuleConfig] = Field(
        default_factory=_default_rules, description="violation types by name"
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

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, rules: dict[str, RuleConfig]) -> dict[str, RuleConfig]:
        for name in rules:
            if not _ID_RE.match(name):
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


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key must be a plain value, not {type(key).__name__}",
                key_node.start_mark,
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node of ``root`` that ``loc`` reaches."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    node = value_node
                    line = key_node.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts:
            parts.append(f".{part}")
        else:
            parts.append(str(part))
    return "".join(parts) or "(top level)"


def _clean_loc(loc: tuple[int | str, ...], data: object = None) -> tuple[int | str, ...]:
    """``loc`` without what pydantic adds (validator names like ``function-after[...]``,
    union branches). A part that names a key or index of ``data`` (the parsed file) at that
    depth is always kept, so a camera called ``functional-kitchen`` stays in the path."""
    out: list[int | str] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]  # type: ignore[index]
        elif not (isinstance(part, str) and ("[" in part or part.startswith("function-"))):
            out.append(part)
            node = None
    return tuple(out)


def _message(error: Any) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == ID_PATTERN:
        return (
            "must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit"
        )
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return msg


def describe_validation(exc: ValidationError, prefix: str = "") -> list[str]:
    """One readable line per problem of a pydantic error, located under ``prefix``."""
    out = []
    for error in exc.errors():
        loc = (prefix, *_clean_loc(tuple(error["loc"]))) if prefix else _clean_loc(error["loc"])
        out.append(f"{_format_loc(loc)}: {_message(error)}")
    return out


def parse_config(text: str, source: str = "<config>") -> AgentConfig:
    """Validate YAML text; ``source`` names the file in error messages.

    Raises:
        ConfigError: with every problem listed in ``problems``.
    """
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}:1: the file must be a mapping of sections (identity, mqtt, ...)"
        )
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _clean_loc(tuple(error["loc"]), data)
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line is not None else source
            problems.append(f"{where} {_format_loc(loc)}: {_message(error)}")
        summary = f"{source}: {len(problems)} problem(s) in the configuration"
        raise ConfigError(summary, problems) from None
    problems = []
    for loc, message in config.cross_check():
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line is not None else source
        problems.append(f"{where} {_format_loc(loc)}: {message}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the configuration", problems)
    return config


def _anchor(path: Path | None, base: Path) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return base / path


def _anchor_secret(ref: SecretRef | None, base: Path) -> SecretRef | None:
    if ref is None or ref.file is None:
        return ref
    return ref.model_copy(update={"file": _anchor(ref.file, base)})


def with_base_dir(config: AgentConfig, base: Path) -> AgentConfig:
    """Resolve the config's relative paths against ``base`` (the config file's directory)."""
    cameras = {}
    for camera_id, camera in config.cameras.items():
        update: dict[str, Any] = {"password": _anchor_secret(camera.password, base)}
        if camera.is_file and not camera.url.startswith("file://"):
            update["url"] = str(_anchor(Path(camera.url), base))
        if camera.main_url is not None and "://" not in camera.main_url:
            update["main_url"] = str(_anchor(Path(camera.main_url), base))
        cameras[camera_id] = camera.model_copy(update=update)
    tls = config.mqtt.tls.model_copy(
        update={
            "ca_file": _anchor(config.mqtt.tls.ca_file, base),
            "cert_file": _anchor(config.mqtt.tls.cert_file, base),
            "key_file": _anchor(config.mqtt.tls.key_file, base),
        }
    )
    mqtt = config.mqtt.model_copy(
        update={"tls": tls, "password": _anchor_secret(config.mqtt.password, base)}
    )
    return config.model_copy(
        update={
            "cameras": cameras,
            "mqtt": mqtt,
            "model": config.model.model_copy(update={"path": _anchor(config.model.path, base)}),
            "storage": config.storage.model_copy(
                update={"state_dir": _anchor(config.storage.state_dir, base)}
            ),
            "evidence": config.evidence.model_copy(
                update={"font": _anchor(config.evidence.font, base)}
            ),
            "capture": config.capture.model_copy(
                update={"directory": _anchor(config.capture.directory, base)}
            ),
            "alarm": config.alarm.model_copy(
                update={
                    "sounder": config.alarm.sounder.model_copy(
                        update={
                            "directory": _anchor(config.alarm.sounder.directory, base),
                            "password": _anchor_secret(config.alarm.sounder.password, base),
                        }
                    ),
                    "prompts": {k: _anchor(v, base) for k, v in config.alarm.prompts.items()},
                    "place_prompts": {
                        k: _anchor(v, base) for k, v in config.alarm.place_prompts.items()
                    },
                }
            ),
        }
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file at ``path``.

    Relative paths in the file (model, state directory, TLS and secret files, video
    files) are taken relative to the file's own directory, so a config means the same
    whatever the working directory of the process.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or not valid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return with_base_dir(parse_config(text, source=str(path)), path.resolve().parent)


def check_secrets(config: AgentConfig) -> list[str]:
    """Resolve every secret reference and return the problems found (empty when all resolve)."""
    problems = []
    for where, ref in config.secret_refs():
        try:
            ref.resolve(where)
        except SecretError as exc:
            problems.append(str(exc))
    return problems


def redacted_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data, secrets shown only as where they come from."""
    data = config.model_dump(mode="json")
    for where, ref in config.secret_refs():
        node: Any = data
        *parents, leaf = where.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = f"<secret from {ref.describe()}>"
    return data
