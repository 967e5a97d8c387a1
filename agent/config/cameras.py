"""A camera's section: its stream, picture checks, zones, view (crop and tiles) and gating."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator

from agent.config.base import ID_PATTERN, ID_RE, ConfigModel, Duration, SecretRef
from agent.redact import with_password

#: Most decoder threads a camera may ask for: an edge box has a few cores for all its cameras.
MAX_DECODER_THREADS = 16


def _decoder_threads(value: object) -> object:
    """Accept ``auto`` or a whole number of threads; one message for anything else."""
    if value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DECODER_THREADS:
        return value
    raise ValueError(
        f"must be 'auto' or a whole number of threads from 1 to {MAX_DECODER_THREADS}, "
        f"not {value!r}"
    )


DecoderThreads = Annotated[int | Literal["auto"], BeforeValidator(_decoder_threads)]


class PictureConfig(ConfigModel):
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


class ZoneConfig(ConfigModel):
    """An area of a camera's picture, as a polygon in normalised coordinates (0..1)."""

    name: str = Field(default="", max_length=100, description="display name, e.g. 备餐区")
    polygon: tuple[Point, ...] = Field(
        min_length=3,
        max_length=100,
        description="corners [x, y], 0..1 from the top-left, in drawing order (3..100)",
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
        crossing = _crossing_edges(polygon)
        if crossing is not None:
            a, b = crossing
            n = len(polygon)
            raise ValueError(
                f"polygon edges cross (corner {a + 1} to {(a + 1) % n + 1} and corner {b + 1} "
                f"to {(b + 1) % n + 1}): list the corners in order around the area"
            )
        return polygon


def _orientation(p: Point, q: Point, r: Point) -> float:
    """Twice the signed area of the triangle p, q, r (> 0: counter-clockwise)."""
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


def _segments_meet(p1: Point, p2: Point, q1: Point, q2: Point) -> bool:
    """Whether the closed segments p1-p2 and q1-q2 have a point in common."""
    d1, d2 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    d3, d4 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True

    def on(a: Point, b: Point, c: Point, d: float) -> bool:  # c on segment a-b, collinear
        return (
            d == 0
            and min(a[0], b[0]) <= c[0] <= max(a[0], b[0])
            and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])
        )

    return on(q1, q2, p1, d1) or on(q1, q2, p2, d2) or on(p1, p2, q1, d3) or on(p1, p2, q2, d4)


def _crossing_edges(polygon: tuple[Point, ...]) -> tuple[int, int] | None:
    """The first two edges of ``polygon`` that are not neighbours and meet, by start corner.

    A crossing zone (a bow tie) has no clear inside: point-in-polygon tests disagree on it,
    and it is almost always corners typed or clicked out of order.
    """
    n = len(polygon)
    for a in range(n):
        for b in range(a + 2, n):
            if a == 0 and b == n - 1:
                continue  # the last edge ends where the first starts
            if _segments_meet(polygon[a], polygon[(a + 1) % n], polygon[b], polygon[(b + 1) % n]):
                return a, b
    return None


class GatingConfig(ConfigModel):
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


class ViewConfig(ConfigModel):
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


class CameraRuleConfig(ConfigModel):
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


class CameraConfig(ConfigModel):
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
    decoder_threads: DecoderThreads = Field(
        default=1,
        description="the decoder's threads: 1 (many cameras share few cores) or 'auto' "
        "(FFmpeg: one per core plus one, each with its own buffers)",
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
            if not ID_RE.match(name):
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
