"""Views: the part of a frame the detector looks at, in how many tiles, and merging the tiles.

A camera's ``view`` (crop and tiles, :class:`agent.config.ViewConfig`) becomes a
:class:`View` here; :meth:`agent.detect.detector.Detector.detect_views` runs the model on its
tiles and :func:`merge_tiles` folds the parts of an object cut by a tile edge back into one
detection. Pure geometry: no numpy, no OpenCV, no inference, so the installer can draw a
camera's tiles without loading the detector.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from agent.records import Detection

if TYPE_CHECKING:
    from agent.config import ViewConfig

#: A detection within this share of a tile's inner edge may be a cut-off part of an object.
EDGE_MARGIN: Final = 0.01
#: Cross-tile merge: two same-class boxes are one object when the smaller lies this much
#: inside the larger and one of them touches an inner tile edge.
MERGE_INSIDE: Final = 0.5
#: Two parts of a cut object from tiles without overlap are at most this far apart (0..1).
TOUCH: Final = 0.002

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
MAX_TILES: Final = 4  # tiles per row or column a camera may ask for (config and CLIs)


@dataclass(frozen=True, slots=True)
class View:
    """The part of a frame the detector looks at, and in how many tiles.

    ``crop`` is x0, y0, x1, y1 in 0..1 of the frame; nothing outside it is detected.
    ``cols`` x ``rows`` tiles cover the crop, each letterboxed to the model's full input,
    neighbours overlapping by ``overlap`` of a tile, so an object cut by one tile's edge is
    whole in the next. A 1080p frame seen whole reaches a 416 model at a fifth of its size,
    and a face of 60 px becomes 13 px, below what the model finds reliably (MODEL_CARD.md);
    2x2 tiles double that at four times the inference.
    """

    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    cols: int = 1
    rows: int = 1
    overlap: float = 0.15

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.crop
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"crop must be x0 < x1 and y0 < y1 within 0..1, not {self.crop!r}")
        counts = (self.cols, self.rows)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in counts):
            raise ValueError(f"tiles must be integers >= 1, not {self.cols!r} x {self.rows!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap!r}")

    @classmethod
    def from_config(cls, config: ViewConfig) -> View:
        """A camera's ``view:`` section as the detector takes it."""
        cols, rows = config.tiles
        return cls(config.crop, cols, rows, config.overlap)

    @property
    def tiles(self) -> int:
        """Model inputs per frame."""
        return self.cols * self.rows

    @property
    def is_whole(self) -> bool:
        """The whole frame in one piece: plain detection."""
        return self.tiles == 1 and self.crop == (0.0, 0.0, 1.0, 1.0)

    def scale(self, width: int, height: int, input_width: int, input_height: int) -> float:
        """How large objects of a ``width`` x ``height`` frame reach a model input of the
        given size (the factor of the largest tile; letterboxing keeps the aspect ratio)."""
        return min(
            min(input_width / (x1 - x0), input_height / (y1 - y0))
            for x0, y0, x1, y1 in self.windows(width, height)
        )

    def bounds(self, width: int, height: int) -> Window:
        """The crop of a ``width`` x ``height`` frame in pixels, as its tiles cover it."""
        x0, y0, x1, y1 = self.crop
        left, right = _span(x0, x1, width)
        top, bottom = _span(y0, y1, height)
        return left, top, right, bottom

    def windows(self, width: int, height: int) -> list[Window]:
        """The tiles of a ``width`` x ``height`` frame in pixels, row by row.

        Each is at least one pixel; together they cover the crop exactly.
        """
        left, top, right, bottom = self.bounds(width, height)
        xs = _tile_spans(left, right, self.cols, self.overlap)
        ys = _tile_spans(top, bottom, self.rows, self.overlap)
        return [(a, b, c, d) for b, d in ys for a, c in xs]


def parse_tiles(text: str) -> tuple[int, int]:
    """``COLSxROWS`` (1-4 each, e.g. ``2x2``) as (columns, rows).

    Raises:
        ValueError: anything else, with the reason.
    """
    cols, sep, rows = text.lower().partition("x")
    if not sep or not cols.strip().isdigit() or not rows.strip().isdigit():
        raise ValueError(f"{text!r} is not COLSxROWS, e.g. 2x2")
    c, r = int(cols), int(rows)
    if not (1 <= c <= MAX_TILES and 1 <= r <= MAX_TILES):
        raise ValueError(f"{text!r}: columns and rows must be 1 to {MAX_TILES}")
    return c, r


def _span(start: float, end: float, size: int) -> tuple[int, int]:
    """``start``..``end`` (0..1) of ``size`` pixels, at least one pixel wide."""
    first = min(size - 1, max(0, math.floor(start * size)))
    last = max(first + 1, min(size, math.ceil(end * size)))
    return first, last


def _tile_spans(start: int, end: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` spans covering ``start``..``end``, neighbours sharing ``overlap`` of a span."""
    if count == 1:
        return [(start, end)]
    length = end - start
    tile = max(1.0, length / (count - (count - 1) * overlap))
    step = (length - tile) / (count - 1)  # = tile * (1 - overlap) unless the strip is tiny
    spans = []
    for i in range(count):
        a = min(end - 1, start + round(i * step))
        # Offsets rounded alike on both sides, so neighbours without overlap touch exactly.
        b = end if i == count - 1 else min(end, max(a + 1, start + round(i * step + tile)))
        spans.append((a, b))
    return spans


def touches_inner_edge(box: tuple[float, float, float, float], inner: tuple[bool, ...]) -> bool:
    """Whether ``box`` (0..1 of its tile) reaches a tile edge that lies inside the crop.

    ``inner``: left, top, right, bottom edge of the tile is inside the crop.
    """
    x1, y1, x2, y2 = box
    near = (x1 <= EDGE_MARGIN, y1 <= EDGE_MARGIN, x2 >= 1 - EDGE_MARGIN, y2 >= 1 - EDGE_MARGIN)
    return any(n and i for n, i in zip(near, inner, strict=True))


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _abut(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two boxes touch along an edge over at least half the shorter side."""
    gap_x = max(a[0], b[0]) - min(a[2], b[2])  # < 0: they overlap in x
    gap_y = max(a[1], b[1]) - min(a[3], b[3])
    shared_x = -gap_x / max(1e-12, min(a[2] - a[0], b[2] - b[0]))
    shared_y = -gap_y / max(1e-12, min(a[3] - a[1], b[3] - b[1]))
    return (0.0 <= gap_x <= TOUCH and shared_y >= MERGE_INSIDE) or (
        0.0 <= gap_y <= TOUCH and shared_x >= MERGE_INSIDE
    )


@dataclass(slots=True)
class TileDetection:
    """A detection of one tile, already in frame coordinates, for :func:`merge_tiles`."""

    detection: Detection
    tile: int
    cut: bool  # touches an inner tile edge: may be part of an object


def merge_tiles(found: Sequence[TileDetection], *, iou_threshold: float) -> list[Detection]:
    """One detection per object from detections of overlapping tiles (frame coordinates).

    Greedy by confidence: a detection of the same class as a kept one from another tile is
    the same object when their IoU exceeds ``iou_threshold``, or when one of them touches an
    inner tile edge and the smaller lies at least MERGE_INSIDE inside the larger; it is then
    folded into the kept one (union of the boxes, the higher confidence). Detections of one
    tile were already separated by that tile's NMS and never merge with each other.
    """
    kept: list[tuple[Detection, set[int], bool]] = []
    for item in sorted(found, key=lambda f: -f.detection.confidence):
        det = item.detection
        for k, (other, tiles, cut) in enumerate(kept):
            if other.class_id != det.class_id or item.tile in tiles:
                continue
            inter = _intersection(det.box, other.box)
            if inter <= 0.0:
                # Tiles without overlap: the two parts of a cut object only touch.
                same = cut and item.cut and _abut(det.box, other.box)
            else:
                a, b = _area(det.box), _area(other.box)
                iou = inter / (a + b - inter)
                inside = inter / max(1e-12, min(a, b))
                same = iou > iou_threshold or ((cut or item.cut) and inside >= MERGE_INSIDE)
            if same:
                union = (
                    min(det.box[0], other.box[0]),
                    min(det.box[1], other.box[1]),
                    max(det.box[2], other.box[2]),
                    max(det.box[3], other.box[3]),
                )
                kept[k] = (
                    Detection(other.label, other.class_id, other.confidence, union),
                    tiles | {item.tile},
                    cut and item.cut,
                )
                break
        else:
            kept.append((det, {item.tile}, item.cut))
    return [d for d, _, _ in kept]
