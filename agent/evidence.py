"""Evidence snapshots: the alert's frame with its boxes drawn, saved as a JPEG; and their retention.

Files are written atomically (temporary file, fsync, rename) under
``<state_dir>/evidence/<YYYY-MM-DD>/<alert id>.jpg`` before the alert is committed, so a
stored alert never points at a half-written image. :func:`prune` deletes old images by age
and total size; an alert whose image was pruned keeps its ``evidence_path`` and is simply
resent without an image.

The caption names the camera by its display name, often Chinese (后厨操作间). OpenCV's
Hershey fonts have no Chinese glyphs, so the caption is drawn with Pillow and a CJK font
found on the system (``evidence.font``, else :data:`FONT_PATHS`); without one, the camera id
is drawn with OpenCV instead and that is logged once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.config import EvidenceConfig
from agent.errors import StoreError
from agent.records import Detection, EvidenceInfo
from agent.rules.engine import Alert

logger = logging.getLogger(__name__)

_RED = (0, 0, 255)
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_YELLOW = (0, 255, 255)  # the alert's zone
_GREY = (110, 110, 110)  # excluded zones: visible on white tiles and dark floors alike

#: Fonts with Chinese glyphs tried in order when ``evidence.font`` is unset or unusable.
#: scripts/bootstrap installs the first (Debian ``fonts-wqy-microhei``, 5 MB).
FONT_PATHS: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),  # fonts-wqy-microhei
    Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),  # fonts-noto-cjk
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),  # fonts-wqy-zenhei
    Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),  # fonts-droid-fallback
    Path("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc"),  # Fedora
    Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"),  # Arch
)

TMP_GRACE = 3600.0  # a *.tmp younger than this may still be written: prune leaves it alone

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Evidence:
    """A saved snapshot."""

    path: Path
    jpeg: bytes
    sha256: str
    width: int
    height: int
    source: str = "sub"  # which stream the picture came from: "sub" (detection) or "main"

    def info(self) -> EvidenceInfo:
        """What the alert message says about the snapshot (agent.records)."""
        return EvidenceInfo(
            path=str(self.path),
            width=self.width,
            height=self.height,
            size=len(self.jpeg),
            sha256=self.sha256,
            source=self.source,
        )


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune` deleted, and how old the oldest image left is."""

    files_removed: int
    bytes_removed: int
    oldest_kept: float | None  # modification time (epoch s) of the oldest file kept; None: none


def _downscale(frame: np.ndarray, max_width: int) -> np.ndarray:
    """``frame`` shrunk to ``max_width`` (aspect kept), or ``frame`` itself when narrow enough."""
    height, width = frame.shape[:2]
    if width <= max_width:
        return frame
    size = (max_width, round(height * max_width / width))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(frame: np.ndarray, config: EvidenceConfig) -> tuple[bytes, int, int]:
    """``frame`` (downscaled to ``max_width``) as JPEG bytes, with its width and height.

    Raises:
        ValueError: OpenCV could not encode it.
    """
    frame = _downscale(frame, config.max_width)
    height, width = frame.shape[:2]
    return _fit(frame, config), width, height


# --------------------------------------------------------------------------- caption


def _local(timestamp: float, tz: tzinfo | None) -> datetime:
    """``timestamp`` as an aware datetime in ``tz`` (None: the system's local time zone)."""
    if tz is None:
        return datetime.fromtimestamp(timestamp).astimezone()
    return datetime.fromtimestamp(timestamp, tz)


def format_stamp(timestamp: float, tz: tzinfo | None = None) -> str:
    """``2026-11-26 08:15:02 +08:00``: ``timestamp`` in ``tz`` (None: system local time)."""
    moment = _local(timestamp, tz)
    offset = moment.strftime("%z")  # +0800
    return f"{moment:%Y-%m-%d %H:%M:%S} {offset[:3]}:{offset[3:]}"


def caption_text(
    camera_id: str,
    camera_name: str,
    violation: str,
    raised_at: float,
    tz: tzinfo | None = None,
    *,
    ascii_only: bool = False,
) -> str:
    """The caption: camera display name (else id), violation type, local date and time.

    ``ascii_only`` (no Chinese font) puts the camera id in place of a non-ASCII name.
    """
    name = camera_name.strip() or camera_id
    if ascii_only and not name.isascii():
        name = camera_id
    return f"{name}  {violation}  {format_stamp(raised_at, tz)}"


def caption_size(width: int) -> int:
    """Caption font size in pixels for a picture ``width`` wide: legible from 640 px up."""
    return max(16, round(width / 40))


@functools.lru_cache(maxsize=32)
def _load_font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    """The font at ``path``; of a collection (.ttc), the Simplified Chinese face if it has one.

    Raises:
        OSError: the file is missing or not a font.
    """
    if path.suffix.lower() != ".ttc":
        return ImageFont.truetype(str(path), size)
    first: ImageFont.FreeTypeFont | None = None
    for index in range(16):
        try:
            font = ImageFont.truetype(str(path), size, index=index)
        except OSError:
            break
        family = font.getname()[0] or ""
        if family.endswith(" SC"):  # Noto Sans CJK's faces: JP, KR, SC, TC, HK
            return font
        first = first or font
    if first is None:
        raise OSError(f"{path}: not a font collection")
    return first


def _draws_chinese(path: Path) -> bool:
    """Whether ``path`` is a font with Chinese glyphs (a font without draws the same box twice)."""
    try:
        font = _load_font(path, 24)
    except OSError:
        return False
    glyphs = []
    for char in ("后", "厨"):
        canvas = Image.new("L", (32, 32))
        ImageDraw.Draw(canvas).text((2, 0), char, font=font, fill=255)
        glyphs.append(canvas.tobytes())
    return glyphs[0] != glyphs[1] and any(glyphs[0])


@functools.lru_cache(maxsize=8)
def _find_font(configured: Path | None, candidates: tuple[Path, ...]) -> Path | None:
    if configured is not None:
        if _draws_chinese(configured):
            return configured
        logger.warning(
            "evidence.font %s is missing, unreadable or has no Chinese glyphs; "
            "trying the system fonts",
            configured,
        )
    for path in candidates:
        if path.is_file() and _draws_chinese(path):
            return path
    logger.warning(
        "no font with Chinese glyphs found (install fonts-wqy-microhei or set evidence.font): "
        "evidence captions show the camera id"
    )
    return None


def find_font(configured: Path | None = None) -> Path | None:
    """The caption font: ``configured`` if it draws Chinese, else the first of :data:`FONT_PATHS`.

    The result is cached; a missing font is logged once per ``configured`` value.
    """
    return _find_font(configured, FONT_PATHS)


def _caption_cjk(image: np.ndarray, text: str, font_path: Path) -> None:
    """Draw ``text`` white on black at the bottom left of ``image`` (in place) with Pillow."""
    height, width = image.shape[:2]
    size = caption_size(width)
    pad = max(3, size // 4)
    font = _load_font(font_path, size)
    left, _, right, _ = font.getbbox(text)
    if right - left > width - 2 * pad:  # a long name: shrink to fit rather than cut it off
        size = max(10, int(size * (width - 2 * pad) / (right - left)))
        font = _load_font(font_path, size)
        left, _, right, _ = font.getbbox(text)
    ascent, descent = font.getmetrics()
    top = max(0, height - (ascent + descent + 2 * pad))
    box_right = min(width, round(right - left) + 2 * pad)
    band = Image.new("RGB", (box_right, height - top), _BLACK)
    ImageDraw.Draw(band).text((pad - left, pad), text, font=font, fill=_WHITE)
    image[top:height, :box_right] = np.asarray(band)[:, :, ::-1]


def _caption_hershey(image: np.ndarray, text: str) -> None:
    """Draw ASCII ``text`` white on black at the bottom left of ``image`` with OpenCV."""
    height, width = image.shape[:2]
    scale = max(0.5, width / 1280)
    thick = max(1, round(width / 900))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(3, th // 3)
    cv2.rectangle(image, (0, height - th - base - 2 * pad), (tw + 2 * pad, height), _BLACK, -1)
    cv2.putText(
        image,
        text,
        (pad, height - base - pad),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        _WHITE,
        thick,
        cv2.LINE_AA,
    )


# --------------------------------------------------------------------------- drawing


def _pixels(polygon: Sequence[Point], width: int, height: int) -> np.ndarray:
    """Normalised ``polygon`` as an int32 point array in pixels, as OpenCV wants it."""
    points = [(round(x * width), round(y * height)) for x, y in polygon]
    return np.array(points, dtype=np.int32).reshape(-1, 1, 2)


def _hatch(image: np.ndarray, polygon: np.ndarray, thickness: int) -> None:
    """Hatch ``polygon`` (pixels) with diagonal grey lines and outline it, in place."""
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.fillPoly(mask, [polygon], 255)
    ys, xs = np.nonzero(mask)
    step = max(8, 5 * thickness)
    stripe = (xs + ys) % step < thickness
    image[ys[stripe], xs[stripe]] = _GREY
    cv2.polylines(image, [polygon], True, _GREY, thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, detections: Sequence[Detection]) -> None:
    """Draw each detection's box and its label with confidence in red on ``image``, in place.

    Line and text sizes follow the picture's width, so a box reads the same at 640 and 1920
    pixels. The evidence and the installer page's snapshot draw them the same way.
    """
    height, width = image.shape[:2]
    thickness = max(2, width // 400)
    font_scale = max(0.5, width / 1280)
    text_thick = max(1, round(width / 900))
    for det in detections:
        x1, y1, x2, y2 = det.box
        p1 = (round(x1 * width), round(y1 * height))
        p2 = (round(x2 * width), round(y2 * height))
        cv2.rectangle(image, p1, p2, _RED, thickness)
        label = f"{det.label} {det.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_thick)
        ty = max(p1[1], th + base + 2)
        cv2.rectangle(image, (p1[0], ty - th - base - 2), (p1[0] + tw + 4, ty), _RED, -1)
        cv2.putText(
            image,
            label,
            (p1[0] + 2, ty - base),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _WHITE,
            text_thick,
            cv2.LINE_AA,
        )


def render(
    alert: Alert,
    frame: np.ndarray,
    config: EvidenceConfig,
    *,
    camera_name: str = "",
    zone: Sequence[Point] | None = None,
    excluded: Sequence[Sequence[Point]] = (),
    tz: tzinfo | None = None,
) -> tuple[bytes, int, int]:
    """Draw the alert on a copy of ``frame``; return JPEG bytes, width and height.

    Drawn: excluded zones hatched grey, the alert's ``zone`` outlined yellow (polygons in
    normalised 0..1 points), each detection's box and label in red, and a caption with
    ``camera_name`` (else the camera id), the violation type and the time the alert was
    raised in ``tz`` (None: the system's local time).

    Raises:
        ValueError: OpenCV could not encode the JPEG.
    """
    image = _downscale(frame, config.max_width)
    if image is frame:
        image = frame.copy()  # drawing must not touch the caller's frame
    height, width = image.shape[:2]
    thickness = max(2, width // 400)
    for polygon in excluded:
        _hatch(image, _pixels(polygon, width, height), thickness)
    if zone is not None:
        cv2.polylines(image, [_pixels(zone, width, height)], True, _YELLOW, thickness, cv2.LINE_AA)
    draw_detections(image, alert.detections)
    font = find_font(config.font)
    text = caption_text(
        alert.camera_id, camera_name, alert.type, alert.raised_at, tz, ascii_only=font is None
    )
    if font is not None:
        _caption_cjk(image, text, font)
    else:
        _caption_hershey(image, text)
    return _fit(image, config), width, height


def _fit(image: np.ndarray, config: EvidenceConfig) -> bytes:
    """JPEG bytes at the configured quality, lowered step by step until under max_bytes."""
    quality = config.jpeg_quality
    while True:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if buffer.nbytes <= config.max_bytes or quality <= 30:
            return bytes(buffer.tobytes())
        quality -= 10


def save(
    alert: Alert,
    frame: np.ndarray,
    config: EvidenceConfig,
    directory: Path,
    source: str = "sub",
    *,
    camera_name: str = "",
    zone: Sequence[Point] | None = None,
    excluded: Sequence[Sequence[Point]] = (),
    tz: tzinfo | None = None,
) -> Evidence:
    """Render (see :func:`render`) and durably write the evidence of ``alert``.

    The day folder is the alert's date in ``tz`` (None: the system's local time).

    Raises:
        StoreError: the file cannot be written (disk full, permissions).
        ValueError: OpenCV could not encode the JPEG.
    """
    jpeg, width, height = render(
        alert, frame, config, camera_name=camera_name, zone=zone, excluded=excluded, tz=tz
    )
    day = f"{_local(alert.raised_at, tz):%Y-%m-%d}"
    path = directory / day / f"{alert.id}.jpg"
    tmp = path.with_suffix(".jpg.tmp")
    try:
        try:
            handle = _create(tmp)
        except FileNotFoundError:  # prune removed the empty day folder meanwhile: once more
            handle = _create(tmp)
        with handle:
            handle.write(jpeg)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write evidence: {exc.strerror}") from exc
    return Evidence(path, jpeg, hashlib.sha256(jpeg).hexdigest(), width, height, source)


def _create(path: Path) -> BinaryIO:
    """``path`` opened for writing, its folder created first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


# --------------------------------------------------------------------------- retention


def _files(directory: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every regular file under ``directory``; symlinks are skipped.

    Raises:
        OSError: ``directory`` itself cannot be listed.
    """
    found: list[tuple[float, int, Path]] = []
    pending = [directory]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue  # removed meanwhile
        except OSError:
            if folder == directory:
                raise
            logger.warning("evidence folder %s cannot be listed; skipped", folder)
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(Path(entry.path))
            elif stat.S_ISREG(info.st_mode):
                found.append((info.st_mtime, info.st_size, Path(entry.path)))
    return found


def _remove(path: Path) -> bool:
    """Delete ``path``; True when it is gone (also when it vanished meanwhile)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.warning("evidence %s cannot be deleted: %s", path, exc.strerror)
        return False
    return True


def _remove_empty_folders(directory: Path) -> None:
    """Remove the empty folders under ``directory`` (deepest first), never ``directory``."""
    for folder, _subdirs, _names in os.walk(directory, topdown=False):
        if Path(folder) != directory:
            with contextlib.suppress(OSError):  # not empty, or gone already
                os.rmdir(folder)


def prune(directory: Path, *, keep_days: float, max_total_bytes: int, now: float) -> PruneResult:
    """Delete evidence older than ``keep_days``, then the oldest until under ``max_total_bytes``.

    Age is the file's modification time against ``now`` (epoch seconds). A ``*.tmp`` younger
    than :data:`TMP_GRACE` may still be being written and is neither counted nor deleted; an
    older one is a leftover and goes. Day folders left empty are removed. A file that vanished
    meanwhile is skipped; one that cannot be deleted is logged and kept. A missing
    ``directory`` holds nothing to prune.

    Raises:
        StoreError: ``directory`` exists but cannot be listed.
    """
    try:
        files = _files(directory)
    except OSError as exc:
        raise StoreError(f"{directory}: cannot list evidence: {exc.strerror}") from exc
    cutoff = now - keep_days * 86400
    removed = removed_bytes = 0
    kept: list[tuple[float, int, Path]] = []
    for mtime, size, path in files:
        if path.name.endswith(".tmp"):
            if now - mtime < TMP_GRACE:
                continue
        elif mtime >= cutoff:
            kept.append((mtime, size, path))
            continue
        if _remove(path):
            removed += 1
            removed_bytes += size
    kept.sort()
    total = sum(size for _, size, _ in kept)
    left: list[tuple[float, int, Path]] = []
    for index, (mtime, size, path) in enumerate(kept):
        if total <= max_total_bytes:
            left.extend(kept[index:])
            break
        if _remove(path):
            removed += 1
            removed_bytes += size
            total -= size
        else:
            left.append((mtime, size, path))
    _remove_empty_folders(directory)
    if removed:
        logger.info(
            "evidence: deleted %d file(s), %.1f MB; %d kept, %.1f MB",
            removed,
            removed_bytes / 1e6,
            len(left),
            total / 1e6,
        )
    return PruneResult(removed, removed_bytes, min((m for m, _, _ in left), default=None))
