"""Food zones (issue #7, 防尘防蝇): is the food in a zone covered, uncovered, or is it empty?

No public dataset of covered and uncovered food containers exists, so the installer marks
food zones (``food: true``) and records what each looks like in each state
(``mclz-agent food calibrate``); references can be added over days as the light changes.
A zone's crop is then compared with its references, nearest neighbour per state.

Features (``FEATURE_KIND``), on the zone's bounding-rect crop downscaled to 64x64 and
masked by the polygon (eroded by a pixel, so the border does not count):

* chroma: a hue x saturation histogram (12 x 3 bins) of the pixels with saturation > 40
  plus one bin for the grey ones. Brightness (V) is left out, so light level does not move it;
  it tells a colourful dish from a steel lid or an empty tray.
* texture: a histogram of gradient orientations (8 bins, weighted by magnitude) and a
  histogram of log gradient magnitude (10 bins) on the grey crop divided by its own mean,
  so it measures contrast, not light level. A lid is smooth with a handle, film is milky
  with specular streaks, food is busy, an empty tray is brushed steel.

Distance: the mean over the three histograms of the chi-square distance
(0.5 * sum (a - b)^2 / (a + b), 0..1 for normalised histograms).

Why these, measured with ``scripts/bench/bench_food.py`` on synthetic-from-real scenes (real
photographs as dishes, a stainless lid or cling film over them, empty steel trays,
brightness x0.7..1.3, noise, camera shifts of up to 4 px; references from 4 dishes x 3
states x 2 lighting variants per tray; 80 held-out crops with the same dishes and 80 with
dishes never seen at calibration), nearest-reference accuracy:

=========================  =============  ===========
features                   same dishes    new dishes
=========================  =============  ===========
hue-sat histogram          0.875          0.800
Lab a*b* histogram         0.975          0.800
texture (ori + contrast)   0.988          0.963
NCC of blurred grey 32x32  0.988          0.825
hue-sat + texture          1.000          0.975
Lab + texture              1.000          0.938
hue-sat + texture + NCC    1.000          0.963
=========================  =============  ===========

Texture carries most of it, chroma removes the remaining errors; NCC (an SSIM-like
comparison of the grey picture) breaks on new dishes and adds nothing. Cost: about 1.2 ms
for the features of a zone and 0.2 ms for 150 references, 1.3-1.9 ms per zone check on one
core of the development machine, whatever the zone's size.

Unknown instead of a guess: a detection box (person, face, head) over more than
``food.occlusion_overlap`` of the zone; the nearest reference farther than
``food.unknown_distance`` times the references' own state-to-state distance *and* no
state clearly nearest (margin < ``FAR_MARGIN``): something large over the zone, or a scene
nothing like the calibration; or fewer than two states with references. A new dish in an
uncovered tray is also far from every reference but clearly nearest "uncovered", so it
stays "uncovered". Measured (x1.0): 10 % of new-dish crops unknown, 0.986 of the rest
right; a person over a tray without a detection box is caught by distance alone in a third
of the cases and gives a wrong state in 12 % (with the box: always unknown). The detector's
boxes are the occlusion test that matters; the distance test is the fallback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import AgentConfig, FoodConfig
from agent.errors import ConfigError, StoreError
from agent.fsutil import write_atomic
from agent.records import FoodRef
from agent.rules.zones import overlap, polygon_area

logger = logging.getLogger(__name__)

STATES = ("covered", "uncovered", "empty")
UNKNOWN = "unknown"
FEATURE_KIND = "hs12x3g+ori8+lce10@64"
SIDE = 64  # the crop is compared at this size: cost is independent of the zone's size
_SAT_MIN = 40
_HUE_BINS, _SAT_BINS, _ORI_BINS, _LCE_BINS = 12, 3, 8, 10
_BLOCKS = (
    slice(0, _HUE_BINS * _SAT_BINS + 1),
    slice(_HUE_BINS * _SAT_BINS + 1, _HUE_BINS * _SAT_BINS + 1 + _ORI_BINS),
    slice(_HUE_BINS * _SAT_BINS + 1 + _ORI_BINS, _HUE_BINS * _SAT_BINS + 1 + _ORI_BINS + _LCE_BINS),
)
FEATURE_LENGTH = _BLOCKS[-1].stop
MIN_PIXELS = 32
# Far from every reference *and* not clearly one state: unknown. A new dish in an uncovered
# tray is far from every reference too, but clearly nearest to "uncovered" (margin > 0.5).
FAR_MARGIN = 0.5

Image = npt.NDArray[np.uint8]
Vector = npt.NDArray[np.float32]
Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class ZoneState:
    """A food zone's classification.

    ``margin`` (0..1) is how much nearer the best state's reference is than the runner-up's
    (0: a tie); ``distance`` is the nearest reference's feature distance (0..1).
    """

    state: str
    margin: float
    distance: float
    detail: str = ""
    distances: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON output."""
        return {
            "state": self.state,
            "margin": round(self.margin, 3),
            "distance": round(self.distance, 4),
            "detail": self.detail,
            "distances": {k: round(v, 4) for k, v in self.distances.items()},
        }


def zone_crop(frame_bgr: Image, polygon: Sequence[Point]) -> tuple[Image, Image]:
    """The bounding-rect crop of a normalised polygon and the polygon's mask (255 inside).

    Raises:
        ValueError: the polygon lies outside the frame.
    """
    height, width = frame_bgr.shape[:2]
    pts = np.array([(x * width, y * height) for x, y in polygon], dtype=np.float32)
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0 = max(0, int(x0)), max(0, int(y0))
    x1, y1 = min(width, int(x1)), min(height, int(y1))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError("the zone has no area in this frame")
    crop = np.ascontiguousarray(frame_bgr[y0:y1, x0:x1])
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts - (x0, y0)).astype(np.int32)], 255)
    return crop, mask


def _normalised(hist: npt.NDArray[np.float64]) -> Vector:
    total = float(hist.sum())
    return np.asarray(hist / total if total > 0 else hist, dtype=np.float32)


def features(crop: Image, mask: Image) -> Vector:
    """The zone's feature vector (``FEATURE_LENGTH`` floats: three normalised histograms).

    Raises:
        ValueError: the mask leaves fewer than ``MIN_PIXELS`` pixels at the compared size.
    """
    small = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    resized = cv2.resize(mask, (SIDE, SIDE), interpolation=cv2.INTER_NEAREST)
    inside = np.asarray(cv2.erode(resized, np.ones((3, 3), np.uint8)) > 0)
    if int(inside.sum()) < MIN_PIXELS:
        raise ValueError("the zone is too small to compare")
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    hue = hsv[..., 0][inside].astype(np.float32)
    sat = hsv[..., 1][inside].astype(np.float32)
    coloured = sat > _SAT_MIN
    hue_sat, _, _ = np.histogram2d(
        hue[coloured],
        sat[coloured],
        bins=(_HUE_BINS, _SAT_BINS),
        range=((0, 180), (_SAT_MIN, 256)),
    )
    chroma = _normalised(np.concatenate([hue_sat.ravel(), [float(np.sum(~coloured))]]))
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
    grey /= max(float(grey[inside].mean()), 1.0)  # contrast, not light level
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)[inside]
    angle = np.arctan2(gy, gx)[inside] % np.pi
    orientation, _ = np.histogram(angle, bins=_ORI_BINS, range=(0, np.pi), weights=magnitude)
    contrast, _ = np.histogram(np.log10(magnitude + 1e-3), bins=_LCE_BINS, range=(-2.5, 0.5))
    return np.concatenate(
        [chroma, _normalised(orientation), _normalised(contrast.astype(np.float64))]
    ).astype(np.float32)


def distances(vector: Vector, references: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Feature distance (0..1) from ``vector`` to each row of ``references``."""
    total = np.zeros(len(references), dtype=np.float64)
    for block in _BLOCKS:
        a = vector[block][None, :].astype(np.float64)
        b = references[:, block].astype(np.float64)
        s = a + b
        d = np.where(s > 0, (a - b) ** 2 / np.where(s > 0, s, 1.0), 0.0)
        total += 0.5 * d.sum(axis=1)
    return total / len(_BLOCKS)


def zone_share(box: Box, polygon: Sequence[Point]) -> float:
    """Share of the polygon's area that ``box`` (normalised) covers."""
    area = polygon_area(polygon)
    box_area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    if area <= 0 or box_area <= 0:
        return 0.0
    return min(1.0, overlap(box, polygon) * box_area / area)


class FoodClassifier:
    """Nearest-reference classifier of one camera zone."""

    def __init__(
        self,
        references: Sequence[tuple[str, Vector]],
        polygon: Sequence[Point] = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)),
        *,
        unknown_distance: float = 1.0,
        occlusion_overlap: float = 0.2,
    ) -> None:
        """Index ``references`` ((state, feature vector) pairs) of the zone ``polygon``.

        Raises:
            ValueError: a state is not one of ``STATES`` or a vector has the wrong length.
        """
        for state, vector in references:
            if state not in STATES:
                raise ValueError(f"unknown food state {state!r} (one of {', '.join(STATES)})")
            if vector.shape != (FEATURE_LENGTH,):
                raise ValueError(f"feature vector of shape {vector.shape}, not {FEATURE_LENGTH}")
        self.polygon = tuple(polygon)
        self.unknown_distance = unknown_distance
        self.occlusion_overlap = occlusion_overlap
        self._states = np.array([s for s, _ in references])
        self._matrix = (
            np.stack([v for _, v in references]).astype(np.float32)
            if references
            else np.zeros((0, FEATURE_LENGTH), np.float32)
        )
        self.counts = {s: int(np.sum(self._states == s)) for s in STATES}
        self.scale = self._separation()

    def _separation(self) -> float:
        """Median over references of the distance to the nearest reference of another state."""
        nearest = []
        for index in range(len(self._matrix)):
            other = self._states != self._states[index]
            if other.any():
                nearest.append(float(distances(self._matrix[index], self._matrix[other]).min()))
        return float(np.median(nearest)) if nearest else 0.0

    def classify(self, crop: Image, mask: Image, occluders: Sequence[Box] = ()) -> ZoneState:
        """The zone's state from its crop; ``occluders`` are normalised person/face/head boxes."""
        for box in occluders:
            share = zone_share(box, self.polygon)
            if share > self.occlusion_overlap:
                return ZoneState(UNKNOWN, 0.0, 0.0, f"occluded: a detection covers {share:.0%}")
        present = [s for s in STATES if self.counts[s]]
        if len(present) < 2:
            have = ", ".join(f"{s} {self.counts[s]}" for s in present) or "none"
            return ZoneState(UNKNOWN, 0.0, 0.0, f"needs references of 2+ states (has {have})")
        try:
            vector = features(crop, mask)
        except ValueError as exc:
            return ZoneState(UNKNOWN, 0.0, 0.0, str(exc))
        all_d = distances(vector, self._matrix)
        per_state = {s: float(all_d[self._states == s].min()) for s in present}
        ranked = sorted(per_state, key=per_state.__getitem__)
        best, second = per_state[ranked[0]], per_state[ranked[1]]
        margin = (second - best) / second if second > 0 else 0.0
        if self.scale > 0 and best > self.unknown_distance * self.scale and margin < FAR_MARGIN:
            return ZoneState(
                UNKNOWN,
                margin,
                best,
                f"unlike every reference ({best / self.scale:.2f}x the state separation):"
                " occluded or changed",
                per_state,
            )
        return ZoneState(ranked[0], margin, best, f"nearest {ranked[0]}", per_state)


# --------------------------------------------------------------------------- references


def stamp(wall: float) -> str:
    """A UTC file stem for ``wall`` (epoch s), to the millisecond."""
    moment = datetime.fromtimestamp(wall, timezone.utc)
    return f"{moment:%Y%m%dT%H%M%S}{moment.microsecond // 1000:03d}Z"


class FoodRefDatabase(Protocol):
    """Where reference rows live: the agent's database (``agent.store``'s ``Store``)."""

    def add_food_ref(self, ref: FoodRef, *, keep: int | None = None) -> tuple[int, list[str]]:
        """Store ``ref`` (its id is ignored); return its new id and the image paths of the
        references dropped to keep ``keep`` per camera, zone and state.

        Raises:
            StoreError: the write failed.
        """
        ...

    def food_refs(self, camera: str, zone: str | None = None) -> list[FoodRef]:
        """The references of a camera (or one of its zones), oldest first."""
        ...

    def delete_food_refs(self, camera: str, zone: str, state: str | None = None) -> list[str]:
        """Remove a zone's references (of one state, or all); return their image paths.

        Raises:
            StoreError: the write failed.
        """
        ...

    def food_refs_version(self) -> tuple[int, int]:
        """A value that changes whenever references are added or deleted."""
        ...

    def close(self) -> None:
        """Close the database (the CLI's food commands open one for a single command)."""
        ...


class FoodStore:
    """Food-zone references: rows in the agent's database, images under the state directory.

    An image is ``<state_dir>/food/<camera>/<zone>/<state>/<UTC stamp>.png``: the crop with
    the zone's mask as its alpha channel, so features can be recomputed when they change.
    """

    def __init__(self, database: FoodRefDatabase, state_dir: Path, *, keep: int = 50) -> None:
        """Keep rows in ``database``; keep at most ``keep`` references per zone and state."""
        self.database = database
        self.root = state_dir / "food"
        self.keep = keep

    def add(  # noqa: PLR0917 - a reference is these five things
        self,
        camera: str,
        zone: str,
        state: str,
        crop: Image,
        mask: Image,
        captured_at: float | None = None,
    ) -> FoodRef:
        """Store one reference: the image first (atomically), then its row.

        Raises:
            ValueError: ``state`` is not a food state, or the zone is too small.
            StoreError: the image or the row cannot be written.
        """
        if state not in STATES:
            raise ValueError(f"unknown food state {state!r} (one of {', '.join(STATES)})")
        vector = features(crop, mask)
        wall = time.time() if captured_at is None else captured_at
        folder = self.root / camera / zone / state
        path = folder / f"{stamp(wall)}.png"
        suffix = 1
        while path.exists():
            path = folder / f"{stamp(wall)}-{suffix}.png"
            suffix += 1
        ok, png = cv2.imencode(".png", np.dstack([crop, mask]))
        if not ok:
            raise StoreError(f"{path}: cannot encode the reference image")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, png.tobytes())
        except OSError as exc:
            raise StoreError(f"{path}: cannot write the reference: {exc.strerror}") from exc
        ref = FoodRef(0, camera, zone, state, wall, str(path), vector.tobytes(), FEATURE_KIND)
        try:
            new_id, dropped = self.database.add_food_ref(ref, keep=self.keep)
        except StoreError:
            path.unlink(missing_ok=True)
            raise
        self._remove_files(dropped)
        return FoodRef(new_id, camera, zone, state, wall, str(path), ref.features, FEATURE_KIND)

    def references(self, camera: str, zone: str | None = None) -> list[FoodRef]:
        """The stored references of a camera (or one zone), oldest first."""
        return self.database.food_refs(camera, zone)

    def forget(self, camera: str, zone: str, state: str | None = None) -> int:
        """Delete a zone's references (of one state, or all) and their images; return how many.

        Raises:
            StoreError: the database cannot be written.
        """
        paths = self.database.delete_food_refs(camera, zone, state)
        self._remove_files(paths)
        return len(paths)

    def vectors(self, camera: str, zone: str) -> list[tuple[str, Vector]]:
        """(state, features) of a zone's references; features of an older kind are recomputed
        from their image, and references whose image is gone are skipped."""
        out: list[tuple[str, Vector]] = []
        for ref in self.references(camera, zone):
            if ref.feature_kind == FEATURE_KIND:
                out.append((ref.state, np.frombuffer(ref.features, dtype=np.float32).copy()))
                continue
            image = cv2.imread(ref.path, cv2.IMREAD_UNCHANGED)
            if image is None or image.ndim != 3 or image.shape[2] != 4:
                logger.warning("food reference %s of %s/%s is unreadable", ref.path, camera, zone)
                continue
            try:
                out.append((ref.state, features(image[..., :3].copy(), image[..., 3].copy())))
            except ValueError:
                continue
        return out

    @staticmethod
    def _remove_files(paths: Sequence[str]) -> None:
        for name in paths:
            try:
                Path(name).unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("cannot delete food reference %s: %s", name, exc.strerror)


def food_zones(config: AgentConfig, camera: str) -> dict[str, tuple[Point, ...]]:
    """The food zones of ``camera``: id -> polygon.

    Raises:
        ConfigError: there is no such camera.
    """
    cam = config.cameras.get(camera)
    if cam is None:
        known = ", ".join(sorted(config.cameras)) or "none configured"
        raise ConfigError(f"no camera {camera!r} in the config ({known})")
    return {zone_id: zone.polygon for zone_id, zone in cam.zones.items() if zone.food}


def food_zone(config: AgentConfig, camera: str, zone: str) -> tuple[Point, ...]:
    """The polygon of one food zone.

    Raises:
        ConfigError: no such camera, no such zone, or the zone is not ``food: true``.
    """
    zones = food_zones(config, camera)
    if zone in zones:
        return zones[zone]
    if zone in config.cameras[camera].zones:
        raise ConfigError(f"cameras.{camera}.zones.{zone} is not a food zone (set food: true)")
    known = ", ".join(sorted(zones)) or "none has food: true"
    raise ConfigError(f"camera {camera!r} has no zone {zone!r} (food zones: {known})")


def build_classifier(
    store: FoodStore, settings: FoodConfig, camera: str, zone: str, polygon: Sequence[Point]
) -> FoodClassifier:
    """A zone's classifier from its stored references and the ``food:`` settings."""
    return FoodClassifier(
        store.vectors(camera, zone),
        polygon,
        unknown_distance=settings.unknown_distance,
        occlusion_overlap=settings.occlusion_overlap,
    )


class FoodMonitor:
    """Classifies each camera's food zones at most every ``food.check_interval`` seconds.

    Thread-safe. References are reloaded when the store changes (``food calibrate`` or
    ``food forget`` run while the agent runs), checked at most once per interval.
    """

    def __init__(self, config: AgentConfig, database: FoodRefDatabase, state_dir: Path) -> None:
        """Watch every ``food: true`` zone of ``config``'s cameras (references in ``database``)."""
        self.settings = config.food
        self.store = FoodStore(database, state_dir, keep=config.food.references_per_state)
        self.zones = {
            camera_id: {z: zone.polygon for z, zone in camera.zones.items() if zone.food}
            for camera_id, camera in config.cameras.items()
        }
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._classifiers: dict[tuple[str, str], FoodClassifier] = {}
        self._last_check: dict[tuple[str, str], float] = {}
        self._latest: dict[tuple[str, str], ZoneState] = {}

    def has_zones(self, camera: str) -> bool:
        """Whether ``camera`` has any food zone (the detect loop can skip the call if not)."""
        return bool(self.zones.get(camera))

    def _reload_if_changed(self) -> None:
        version = self.store.database.food_refs_version()
        if version == self._version:
            return
        self._classifiers = {
            (camera, zone): build_classifier(self.store, self.settings, camera, zone, polygon)
            for camera, zones in self.zones.items()
            for zone, polygon in zones.items()
        }
        self._version = version
        logger.info("food references loaded: %d reference(s) in all", version[0])

    def check(
        self,
        camera: str,
        frame: Image,
        mono: float,
        occluders: Sequence[Box] = (),
    ) -> list[tuple[str, ZoneState]]:
        """Classify the zones of ``camera`` that are due at ``mono`` (monotonic seconds).

        Returns (zone id, state) for the zones checked now; an empty list when none is due.
        ``occluders`` are the frame's person/face/head detection boxes (normalised).

        Raises:
            StoreError: the references cannot be read.
        """
        zones = self.zones.get(camera)
        if not zones:
            return []
        with self._lock:
            due = [
                zone
                for zone in zones
                if mono - self._last_check.get((camera, zone), -np.inf)
                >= self.settings.check_interval
            ]
            if not due:
                return []
            self._reload_if_changed()
            out = []
            for zone in due:
                self._last_check[(camera, zone)] = mono
                try:
                    crop, mask = zone_crop(frame, zones[zone])
                except ValueError as exc:
                    result = ZoneState(UNKNOWN, 0.0, 0.0, str(exc))
                else:
                    result = self._classifiers[(camera, zone)].classify(crop, mask, occluders)
                self._latest[(camera, zone)] = result
                logger.debug(
                    "camera %s food zone %s: %s (margin %.2f, %s)",
                    camera,
                    zone,
                    result.state,
                    result.margin,
                    result.detail,
                )
                out.append((zone, result))
            return out

    def latest(self, camera: str) -> dict[str, ZoneState]:
        """The last classification of each food zone of ``camera`` (zones checked so far)."""
        with self._lock:
            return {z: s for (c, z), s in self._latest.items() if c == camera}
