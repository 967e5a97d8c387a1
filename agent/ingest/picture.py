"""Picture checks on analysed frames: black, frozen, covered or defocused (画面遮挡).

Commercial kitchen boxes flag cameras whose picture is useless even though the stream is
online. Each analysed frame (about one a second per camera) is reduced to a 320 px grey
thumbnail (pixels picked down to 640 px, then 2 x 2 averaged, so the thumbnail looks the
same whatever the stream's resolution), and three cheap measures are taken from it: about
0.25 ms a frame for a 640 x 360 sub-stream, 0.5-0.6 ms for 720p to 4 MP, on one core.

* **luma**: the thumbnail's mean grey level (0-255). Below ``black_luma``: black (lens
  capped, infrared failure, a kitchen at night without light).
* **sharpness**: how much detail the picture has. The thumbnail is halved again to 160 px
  (fine sensor noise averages out there, edges of a real scene do not), split into a 4 x 8
  grid, and the Laplacian variance of each cell is taken; sharpness is the cell at the
  75th percentile. So it falls below ``sharpness_min`` only when at least three quarters
  of the picture is featureless: a cloth or a hand on the lens, steam, a smeared or
  defocused lens. A scene with a large blank wall keeps its detailed quarter.
* **difference**: the mean absolute difference between this thumbnail and the first
  thumbnail of the current unchanged stretch (not merely the previous frame, so a slow drift
  adds up to a change). Below :data:`FROZEN_DIFFERENCE` grey levels the picture counts as
  unchanged. A still picture re-encoded by H.264 is *not* bit-identical frame to frame (the
  encoder refines it and rate control moves), and a quiet real scene is not far from it:
  within a group of pictures its P-frames can be identical, but every keyframe carries a
  fresh pattern of sensor noise. The threshold sits between the two (see the constant).

Rules, debounced so that noise raises nothing and a real condition raises one warning:

* BLACK starts when every frame has been black for ``warn_after`` seconds and clears once
  no frame has been black for ``clear_after`` seconds.
* COVERED likewise, for frames that are not black but lack detail (black wins: a black
  picture has no detail either, and the black warning names the likelier cause).
* FROZEN starts when the picture has stayed unchanged for ``frozen_after`` seconds and
  clears at the first changed frame. Black or featureless frames are never counted as
  frozen: with nothing in the picture the encoder has nothing to change, so identical
  frames there prove nothing, and BLACK or COVERED already warns.

Times are the caller's monotonic seconds, so a monitor is deterministic and testable.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.config import PictureConfig

THUMB_WIDTH = 320
"""Width of the grey thumbnail behind luma and the frozen comparison, in pixels."""
DETAIL_WIDTH = 160
"""Width at which detail is measured: half the thumbnail, so sensor noise averages out."""
DETAIL_GRID = (4, 8)
"""Rows and columns of cells whose detail is measured separately."""
DETAIL_RANK = 23
"""Index, in ascending order, of the cell that gives the picture's sharpness: the 24th of
32, so at least 24 cells (three quarters of the picture) must lack detail to read as covered."""
FROZEN_DIFFERENCE = 0.45
"""Mean absolute grey-level difference below which two thumbnails show the same picture.

Measured on the thumbnails: a still picture encoded by libx264 (640 x 360 to 1080p, CRF 23,
CRF 30 or CBR) differs from the first frame of its stretch by at most 0.14 (CRF 23) to 0.42
(CBR) once rate control has settled; a quiet real scene with sensor noise of 0.5-1 grey
level differs at every keyframe by at least 0.53, and the shared real kitchen clip by at
least 0.93 from one second to the next. An on-screen clock still ticking on a frozen
picture changes a few digits: 0.01-0.02, so it does not hide the freeze.
"""


class Condition(str, enum.Enum):
    """A way in which a camera's picture is useless."""

    BLACK = "black"
    FROZEN = "frozen"
    COVERED = "covered"


@dataclass(frozen=True, slots=True)
class PictureEvent:
    """A picture warning that starts or clears on one frame."""

    condition: Condition
    active: bool  # True: the warning starts; False: it clears
    mono: float  # the frame's monotonic time, seconds
    detail: str  # for people, e.g. "mean luma 4.2 < 20 for 61 s"


@dataclass(frozen=True, slots=True)
class PictureStats:
    """What one frame looks like, measured on its thumbnail."""

    luma: float  # mean grey level, 0-255
    contrast: float  # standard deviation of the grey levels
    sharpness: float  # Laplacian variance of the 75th-percentile cell at 160 px
    thumbnail: np.ndarray = field(repr=False, compare=False)  # grey, 320 px wide, uint8


def measure(image_bgr: np.ndarray) -> PictureStats:
    """Measure a BGR frame's brightness, contrast and detail, and keep its thumbnail.

    Raises:
        ValueError: the image is not an HxWx3 uint8 array, or is empty.
    """
    if image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 uint8 BGR image, got {image_bgr.dtype} {image_bgr.shape}"
        )
    height, width = image_bgr.shape[:2]
    if height == 0 or width == 0:
        raise ValueError("empty image")
    rows, cols = DETAIL_GRID
    thumb_h = max(2 * rows, round(height * THUMB_WIDTH / width))
    if width > 2 * THUMB_WIDTH:
        # INTER_AREA straight from a large frame costs 2-20 ms (it reads every pixel, and
        # only 2x has a fast path); picking pixels down to twice the size first costs ~0.3 ms.
        image_bgr = cv2.resize(
            image_bgr, (2 * THUMB_WIDTH, 2 * thumb_h), interpolation=cv2.INTER_NEAREST
        )
    # Average 2x2 (noise halves), and only then drop colour: conversion costs per pixel.
    small = cv2.resize(image_bgr, (THUMB_WIDTH, thumb_h), interpolation=cv2.INTER_AREA)
    thumbnail: np.ndarray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(thumbnail)
    detail_img = cv2.resize(
        thumbnail, (DETAIL_WIDTH, max(rows, thumb_h // 2)), interpolation=cv2.INTER_AREA
    )
    laplacian = cv2.Laplacian(detail_img, cv2.CV_32F)
    cell_h, cell_w = laplacian.shape[0] // rows, laplacian.shape[1] // cols
    cells = laplacian[: cell_h * rows, : cell_w * cols].reshape(rows, cell_h, cols, cell_w)
    variances = cells.var(axis=(1, 3)).ravel()
    sharpness = float(np.partition(variances, DETAIL_RANK)[DETAIL_RANK])
    return PictureStats(
        luma=float(mean[0, 0]),
        contrast=float(std[0, 0]),
        sharpness=sharpness,
        thumbnail=thumbnail,
    )


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute grey-level difference of two thumbnails; infinite when sizes differ."""
    if a.shape != b.shape:
        return float("inf")
    return float(cv2.norm(a, b, cv2.NORM_L1)) / a.size


@dataclass(slots=True)
class _Debounce:
    """One condition's state: present since when, absent since when, warning or not."""

    present_since: float | None = None
    absent_since: float | None = None
    active: bool = False

    def step(
        self, present: bool, mono: float, warn_after: float, clear_after: float
    ) -> tuple[bool, float] | None:
        """Feed one frame; return (started, how long) when the warning starts or clears."""
        if present:
            self.absent_since = None
            if self.present_since is None:
                self.present_since = mono
            lasted = mono - self.present_since
            if not self.active and lasted >= warn_after:
                self.active = True
                return True, lasted
            return None
        self.present_since = None
        if not self.active:
            return None
        if self.absent_since is None:
            self.absent_since = mono
        gone = mono - self.absent_since
        if gone >= clear_after:
            self.active = False
            self.absent_since = None
            return False, gone
        return None


class PictureMonitor:
    """Watches one camera's analysed frames for black, frozen and covered pictures.

    Not thread-safe for ``update``: feed it from the one thread that analyses the camera.
    ``metrics`` and ``active`` only read values and may be called from another thread.
    """

    def __init__(self, config: PictureConfig) -> None:
        self.config = config
        self._black = _Debounce()
        self._covered = _Debounce()
        self._frozen = False
        self._reference: np.ndarray | None = None  # first thumbnail of the unchanged stretch
        self._reference_mono = 0.0
        self._last_mono: float | None = None
        self._last: PictureStats | None = None
        self._unchanged_s = 0.0
        self._active: frozenset[Condition] = frozenset()

    @property
    def active(self) -> frozenset[Condition]:
        """The conditions whose warning is on."""
        return self._active

    def metrics(self) -> dict[str, float]:
        """The last frame's luma, contrast, sharpness and seconds unchanged, for the heartbeat.

        Empty before the first frame and when the checks are disabled.
        """
        last = self._last
        if last is None:
            return {}
        return {
            "luma": round(last.luma, 1),
            "contrast": round(last.contrast, 1),
            "sharpness": round(last.sharpness, 1),
            "unchanged_s": round(self._unchanged_s, 1),
        }

    def update(self, image_bgr: np.ndarray, mono: float) -> list[PictureEvent]:
        """Check one analysed frame; return the warnings that start or clear on it.

        Raises:
            ValueError: ``mono`` is earlier than the previous frame's, or the image is not an
                HxWx3 uint8 array.
        """
        if not self.config.enabled:
            return []
        if self._last_mono is not None and mono < self._last_mono:
            raise ValueError(f"frame time went backwards: {mono} < {self._last_mono}")
        stats = measure(image_bgr)
        self._last_mono = mono
        self._last = stats
        cfg = self.config
        is_black = stats.luma < cfg.black_luma
        is_flat = not is_black and stats.sharpness < cfg.sharpness_min
        events: list[PictureEvent] = []

        change = self._black.step(is_black, mono, cfg.warn_after, cfg.clear_after)
        if change is not None:
            started, lasted = change
            sign = "<" if started else ">="
            events.append(
                PictureEvent(
                    Condition.BLACK,
                    started,
                    mono,
                    f"mean luma {stats.luma:.1f} {sign} {cfg.black_luma:g} for {lasted:.0f} s",
                )
            )
        change = self._covered.step(is_flat, mono, cfg.warn_after, cfg.clear_after)
        if change is not None:
            started, lasted = change
            if started:
                text = f"detail {stats.sharpness:.1f} < {cfg.sharpness_min:g} for {lasted:.0f} s"
            elif is_black:
                text = f"picture black (mean luma {stats.luma:.1f}) for {lasted:.0f} s"
            else:
                text = f"detail {stats.sharpness:.1f} >= {cfg.sharpness_min:g} for {lasted:.0f} s"
            events.append(PictureEvent(Condition.COVERED, started, mono, text))
        frozen_event = self._check_frozen(stats, mono, countable=not (is_black or is_flat))
        if frozen_event is not None:
            events.append(frozen_event)

        if events:
            states = (
                (Condition.BLACK, self._black.active),
                (Condition.COVERED, self._covered.active),
                (Condition.FROZEN, self._frozen),
            )
            self._active = frozenset(c for c, on in states if on)
        return events

    def _check_frozen(
        self, stats: PictureStats, mono: float, *, countable: bool
    ) -> PictureEvent | None:
        """Advance the unchanged stretch; return FROZEN's start or clear, if any."""
        limit = FROZEN_DIFFERENCE
        why: str | None = None  # why the unchanged stretch ends here, if it does
        diff = 0.0
        if not countable:
            why = "now black or featureless"
        elif self._reference is not None:
            diff = difference(stats.thumbnail, self._reference)
            if diff == float("inf"):
                why = "new frame size"
            elif diff >= limit:
                why = f"difference {diff:.2f} >= {limit:g}"
        if why is not None or self._reference is None:
            # A new stretch begins; featureless frames begin none (see the module docstring).
            self._reference = stats.thumbnail if countable else None
            self._reference_mono = mono
            self._unchanged_s = 0.0
            if self._frozen and why is not None:
                self._frozen = False
                return PictureEvent(Condition.FROZEN, False, mono, f"picture changed ({why})")
            return None
        self._unchanged_s = mono - self._reference_mono
        if not self._frozen and self._unchanged_s >= self.config.frozen_after:
            self._frozen = True
            return PictureEvent(
                Condition.FROZEN,
                True,
                mono,
                f"picture unchanged for {self._unchanged_s:.0f} s "
                f"(difference {diff:.2f} < {limit:g})",
            )
        return None
