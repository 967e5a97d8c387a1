"""Frames kept for labelling: a sample of analysed frames with the model's detections.

The city improves the model on real kitchens from these. A frame is kept when one of its
detections is uncertain (its confidence within ``uncertain_band`` of the label's alert
threshold) or, rarely, at random (``random_rate``, so confident and empty scenes are
represented too), at most once per ``min_interval`` per camera. The frames show children and
staff: capture is off by default and the school's consent and data policy decide whether it
is turned on.

Layout of the capture directory::

    classes.txt                          the model's labels, one a line, by class id
    <camera id>/<UTC stamp>.txt          YOLO label: "class cx cy w h" per detection, 0..1
    <camera id>/<UTC stamp>.jpg          the analysed frame as decoded (no drawing)

The stamp is the frame's wall-clock time, e.g. ``20261126T001502123Z``. The label file is
written (atomically) before the image, and an image is deleted before its label, so every
image has its label; an empty label file is a frame with no detection. When the model's
labels change, the stored label files are rewritten to the new class ids.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from agent.config import AgentConfig, CaptureConfig, IdentityConfig
from agent.errors import DatasetError, StoreError
from agent.fsutil import write_atomic
from agent.records import Detection
from agent.rules.engine import DEFAULT_MIN_CONFIDENCE

logger = logging.getLogger(__name__)

CLASSES_FILE = "classes.txt"
JPEG_QUALITY = 92  # training material: a little better than evidence
_STAMP_FORMAT = "%Y%m%dT%H%M%S"


def capture_directory(config: AgentConfig) -> Path:
    """Where the captured frames are: ``capture.directory``, else ``<state_dir>/capture``."""
    return config.capture.directory or config.storage.state_dir / "capture"


def stamp_of(wall: float) -> str:
    """The file stem for a frame taken at ``wall`` (epoch s): UTC to the millisecond."""
    moment = datetime.fromtimestamp(wall, timezone.utc)
    return f"{moment:{_STAMP_FORMAT}}{moment.microsecond // 1000:03d}Z"


def wall_of(stem: str) -> float | None:
    """The epoch seconds a stem from :func:`stamp_of` stands for (a ``-n`` suffix allowed)."""
    head = stem.split("-", 1)[0]
    if len(head) != 19 or not head.endswith("Z"):
        return None
    try:
        moment = datetime.strptime(head[:15], _STAMP_FORMAT).replace(tzinfo=timezone.utc)
        millis = int(head[15:18])
    except ValueError:
        return None
    return moment.timestamp() + millis / 1000


def parse_since(text: str) -> float:
    """Epoch seconds from ``text``: epoch seconds or ISO-8601 (no offset: local time).

    Raises:
        ValueError: neither; the message says what is accepted.
    """
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO-8601 like 2026-11-26T08:00:00+08:00, "
            "a date like 2026-11-26, or epoch seconds)"
        ) from None


def yolo_lines(detections: Iterable[Detection], class_ids: Mapping[str, int]) -> list[str]:
    """``class cx cy w h`` lines (normalised, clipped to the picture) for ``detections``.

    Detections of labels not in ``class_ids`` and boxes with no area are left out.
    """
    lines = []
    for det in detections:
        class_id = class_ids.get(det.label)
        if class_id is None:
            continue
        x1, y1, x2, y2 = (min(1.0, max(0.0, v)) for v in det.box)
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        lines.append(f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def read_classes(directory: Path) -> tuple[str, ...] | None:
    """The class names stored with the captures, or None when nothing was captured yet.

    Raises:
        StoreError: the file exists but cannot be read.
    """
    path = directory / CLASSES_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read the class names: {exc}") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@dataclass(frozen=True, slots=True)
class StoredFrame:
    """One captured frame on disk."""

    camera_id: str
    wall: float
    image: Path
    label: Path
    size: int  # bytes of image and label together


def stored_frames(directory: Path) -> list[StoredFrame]:
    """Every complete captured frame (image and label) under ``directory``, oldest first.

    Files of other names are ignored; a missing ``directory`` holds none.

    Raises:
        StoreError: ``directory`` exists but cannot be listed.
    """
    frames = []
    try:
        cameras = sorted(p for p in directory.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"{directory}: cannot list captured frames: {exc.strerror}") from exc
    for folder in cameras:
        try:
            images = list(folder.glob("*.jpg"))
        except OSError as exc:
            logger.warning("capture folder %s cannot be listed: %s", folder, exc.strerror)
            continue
        for image in images:
            wall = wall_of(image.stem)
            label = image.with_suffix(".txt")
            if wall is None:
                continue
            try:
                size = image.stat().st_size + label.stat().st_size
            except FileNotFoundError:
                continue  # evicted meanwhile, or an image without a label: not a sample
            frames.append(StoredFrame(folder.name, wall, image, label, size))
    frames.sort(key=lambda f: (f.wall, f.camera_id, f.image.name))
    return frames


class Capture:
    """Decides which analysed frames to keep and writes them with their YOLO labels.

    ``labels`` are the model's labels in class-id order; ``thresholds`` the alert threshold
    per label (a label without one uses 0.5, as the rules do). ``offer`` runs on the detect
    thread; ``stats`` may be called from any thread.
    """

    def __init__(
        self,
        config: CaptureConfig,
        labels: Sequence[str],
        thresholds: Mapping[str, float],
        directory: Path,
        *,
        rng: random.Random | None = None,
    ) -> None:
        """Open the capture directory when capture is enabled (nothing is touched otherwise).

        Raises:
            StoreError: the directory cannot be created, listed or its files rewritten.
        """
        self.config = config
        self.labels = tuple(labels)
        self.directory = directory
        self._class_ids = {name: index for index, name in enumerate(self.labels)}
        self._thresholds = dict(thresholds)
        self._rng = rng or random.Random()  # noqa: S311 - sampling, not security
        self._max_bytes = int(config.max_mb * 1e6)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._frames: deque[StoredFrame] = deque()
        self._bytes = 0
        self._counts: Counter[str] = Counter()
        if config.enabled:
            self._open()

    # ------------------------------------------------------------------ start-up

    def _open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._sync_classes()
            self._clean_leftovers()
        except OSError as exc:
            raise StoreError(f"{self.directory}: cannot use the capture directory: {exc}") from exc
        self._frames = deque(stored_frames(self.directory))
        self._bytes = sum(f.size for f in self._frames)
        self._evict()
        logger.info(
            "capture on: %d frame(s), %.1f MB of %.0f MB in %s",
            len(self._frames),
            self._bytes / 1e6,
            self.config.max_mb,
            self.directory,
        )

    def _sync_classes(self) -> None:
        """Write classes.txt; rewrite stored labels to the new ids when the model's changed."""
        old = read_classes(self.directory)
        if old != self.labels:
            if old:
                changed = self._relabel(old)
                logger.warning(
                    "capture: the model's labels changed; %d label file(s) rewritten to the "
                    "new class ids (classes no longer known are dropped)",
                    changed,
                )
            text = "".join(f"{name}\n" for name in self.labels)
            write_atomic(self.directory / CLASSES_FILE, text.encode())

    def _relabel(self, old: Sequence[str]) -> int:
        """Map every stored label line from ``old`` class ids to the current ones."""
        mapping = {i: self._class_ids.get(name) for i, name in enumerate(old)}
        changed = 0
        for label in self.directory.glob("*/*.txt"):
            lines = []
            for line in label.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if not parts or not parts[0].isdigit():
                    continue
                new_id = mapping.get(int(parts[0]))
                if new_id is not None:
                    lines.append(" ".join([str(new_id), *parts[1:]]))
            write_atomic(label, "".join(f"{line}\n" for line in lines).encode())
            changed += 1
        return changed

    def _clean_leftovers(self) -> None:
        """Delete temporary files and labels whose image never came (a crash between)."""
        for path in self.directory.glob("*/*"):
            orphan = path.suffix == ".txt" and not path.with_suffix(".jpg").exists()
            if path.name.endswith(".tmp") or orphan:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ runtime

    def _reason(self, detections: Sequence[Detection]) -> str | None:
        band = self.config.uncertain_band
        for det in detections:
            threshold = self._thresholds.get(det.label, DEFAULT_MIN_CONFIDENCE)
            if threshold - band <= det.confidence <= threshold + band:
                return "uncertain"
        rate = self.config.random_rate
        if rate > 0 and self._rng.random() < rate:
            return "random"
        return None

    def offer(
        self, camera_id: str, frame_bgr: np.ndarray, detections: Sequence[Detection], wall: float
    ) -> bool:
        """Keep this analysed frame if it is worth labelling; return whether it was kept.

        Cheap when it declines (no copy, no encoding). A frame that cannot be written (disk
        full) is logged and counted, never raised: capture must not disturb detection.
        """
        if not self.config.enabled:
            return False
        last = self._last.get(camera_id)
        if last is not None and 0 <= wall - last < self.config.min_interval:
            return False
        reason = self._reason(detections)
        if reason is None:
            return False
        try:
            stored = self._write(camera_id, frame_bgr, detections, wall)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._counts["errors"] += 1
            logger.warning("camera %s: frame not captured: %s", camera_id, exc)
            return False
        self._last[camera_id] = wall
        with self._lock:
            self._counts["kept"] += 1
            self._counts[f"kept_{reason}"] += 1
            self._frames.append(stored)
            self._bytes += stored.size
            self._evict()
        logger.debug("camera %s: frame kept for labelling (%s)", camera_id, reason)
        return True

    def _write(
        self, camera_id: str, frame: np.ndarray, detections: Sequence[Detection], wall: float
    ) -> StoredFrame:
        """Write the label, then the image, each atomically.

        Raises:
            OSError: a file cannot be written.
            ValueError: the frame cannot be encoded.
        """
        ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ValueError("JPEG encoding failed")
        jpeg = buffer.tobytes()
        folder = self.directory / camera_id
        folder.mkdir(parents=True, exist_ok=True)
        stem = stamp_of(wall)
        image = folder / f"{stem}.jpg"
        suffix = 1
        while image.exists():  # two frames in one millisecond (min_interval 0)
            image = folder / f"{stem}-{suffix}.jpg"
            suffix += 1
        label = image.with_suffix(".txt")
        text = "".join(f"{line}\n" for line in yolo_lines(detections, self._class_ids))
        write_atomic(label, text.encode())
        try:
            write_atomic(image, jpeg)
        except OSError:
            label.unlink(missing_ok=True)
            raise
        return StoredFrame(camera_id, wall, image, label, len(jpeg) + len(text.encode()))

    def _evict(self) -> None:
        """Delete the oldest frames until under ``max_mb`` (the newest one always stays)."""
        while self._bytes > self._max_bytes and len(self._frames) > 1:
            oldest = self._frames.popleft()
            try:
                oldest.image.unlink(missing_ok=True)  # image first: never an image without label
                oldest.label.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("capture %s cannot be deleted: %s", oldest.image, exc.strerror)
            self._bytes -= oldest.size
            self._counts["evicted"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters since start and what is on disk, as plain data (for health and the CLI)."""
        with self._lock:
            return {
                "enabled": self.config.enabled,
                "frames": len(self._frames),
                "bytes": self._bytes,
                "max_bytes": self._max_bytes,
                "kept": self._counts["kept"],
                "kept_uncertain": self._counts["kept_uncertain"],
                "kept_random": self._counts["kept_random"],
                "evicted": self._counts["evicted"],
                "errors": self._counts["errors"],
            }


# --------------------------------------------------------------------------- CLI helpers


def _box_counts(frames: Iterable[StoredFrame], names: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for frame in frames:
        try:
            lines = frame.label.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            head = line.split(maxsplit=1)[0] if line.strip() else ""
            if head.isdigit() and int(head) < len(names):
                counts[names[int(head)]] += 1
    return counts


def _utc_iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="seconds")


def summarize(directory: Path) -> dict[str, Any]:
    """What is captured in ``directory``: frames and bytes per camera, boxes per class, span.

    Raises:
        StoreError: the directory or its class names cannot be read.
    """
    frames = stored_frames(directory)
    names = read_classes(directory) or ()
    cameras: dict[str, dict[str, int]] = {}
    for frame in frames:
        row = cameras.setdefault(frame.camera_id, {"frames": 0, "bytes": 0})
        row["frames"] += 1
        row["bytes"] += frame.size
    return {
        "directory": str(directory),
        "frames": len(frames),
        "bytes": sum(f.size for f in frames),
        "first": _utc_iso(frames[0].wall) if frames else None,
        "last": _utc_iso(frames[-1].wall) if frames else None,
        "cameras": cameras,
        "classes": list(names),
        "boxes": dict(_box_counts(frames, names)),
    }


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`export` wrote."""

    images: int
    boxes: dict[str, int]
    first: float
    last: float


_README = """\
# Kitchen frames captured by mclz-agent for labelling

- Source box: {source}
- Exported: {exported}
- Frames: {images}, taken {first} .. {last} (UTC)
- Cameras: {cameras}
- Filter: {filter}
- Boxes per class: {boxes}

**The labels are the model's own predictions, not ground truth.** A frame was kept because
one of its detections was close to its alert threshold (uncertain) or at random. Review and
correct every label (for example in CVAT or Label Studio) before training on it: boxes may be
wrong, and objects the model missed are not labelled at all.

Layout: YOLO. `images/` and `labels/` (one `class cx cy w h` line per object, normalised to
0..1; an empty file is a frame with no detection), class names in `data.yaml` (the model's
labels in class-id order). `train` and `val` both point at `images/`: make the split after
review. `manifest.json` says the same as this file, for programs.

These pictures show children and kitchen staff: personal data. Keep, share and delete them
only as the school's consent and data policy allow.
"""


def export(
    directory: Path,
    out: Path,
    *,
    identity: IdentityConfig,
    since: float | None = None,
    camera: str | None = None,
) -> ExportResult:
    """Copy the captured frames (taken at or after ``since``, of ``camera``) as a YOLO dataset.

    ``out`` gets ``images/``, ``labels/``, ``data.yaml``, ``README.md`` and ``manifest.json``.

    Raises:
        DatasetError: nothing matches, or ``out`` exists and is not an empty folder.
        StoreError: the capture directory cannot be read or ``out`` cannot be written.
    """
    names = read_classes(directory)
    frames = [
        f
        for f in stored_frames(directory)
        if (since is None or f.wall >= since) and (camera is None or f.camera_id == camera)
    ]
    if not names or not frames:
        wanted = []
        if camera is not None:
            wanted.append(f"of camera {camera!r}")
        if since is not None:
            wanted.append(f"since {_utc_iso(since)}")
        raise DatasetError(
            f"{directory}: no captured frames {' '.join(wanted)}".rstrip()
            + " (is capture.enabled on?)"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; export into a new one")
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
        copied = [frame for frame in frames if _copy_frame(frame, out)]
    except OSError as exc:
        raise StoreError(f"{out}: cannot write the dataset: {exc.strerror}") from exc
    if not copied:
        raise DatasetError(f"{directory}: every frame was deleted during the export")
    boxes = _box_counts(copied, names)
    cameras = Counter(f.camera_id for f in copied)
    source = f"{identity.city}/{identity.school_id}/{identity.box_id}"
    filters = {"since": _utc_iso(since) if since is not None else None, "camera": camera}
    manifest = {
        "source": {
            "city": identity.city,
            "school_id": identity.school_id,
            "box_id": identity.box_id,
            "school_name": identity.school_name,
        },
        "exported_at": _utc_iso(time.time()),
        "first": _utc_iso(copied[0].wall),
        "last": _utc_iso(copied[-1].wall),
        "filter": filters,
        "images": len(copied),
        "cameras": dict(cameras),
        "classes": list(names),
        "boxes": dict(boxes),
        "labels": "model predictions: review and correct before training",
        "personal_data": "children and staff: the school's consent and data policy apply",
    }
    data_yaml = {
        "train": "images",
        "val": "images",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    readme = _README.format(
        source=f"{source} {identity.school_name}".strip(),
        exported=manifest["exported_at"],
        images=len(copied),
        first=manifest["first"],
        last=manifest["last"],
        cameras=", ".join(f"{c} ({n})" for c, n in sorted(cameras.items())),
        filter=", ".join(f"{k}={v}" for k, v in filters.items() if v) or "none",
        boxes=", ".join(f"{n} {boxes[n]}" for n in names if boxes[n]) or "none",
    )
    header = f"# mclz-agent capture from {source}: labels are model predictions, review them\n"
    try:
        (out / "data.yaml").write_text(
            header + yaml.safe_dump(data_yaml, allow_unicode=True, sort_keys=False),
            encoding="utf-8",
        )
        (out / "README.md").write_text(readme, encoding="utf-8")
        (out / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise StoreError(f"{out}: cannot write the dataset: {exc.strerror}") from exc
    return ExportResult(len(copied), dict(boxes), copied[0].wall, copied[-1].wall)


def _copy_frame(frame: StoredFrame, out: Path) -> bool:
    """Copy one frame into the dataset ``out``; False when the agent evicted it meanwhile.

    Raises:
        OSError: a file cannot be written.
    """
    stem = f"{frame.camera_id}_{frame.image.stem}"
    label = out / "labels" / f"{stem}.txt"
    try:
        shutil.copyfile(frame.label, label)
        shutil.copyfile(frame.image, out / "images" / f"{stem}.jpg")
    except FileNotFoundError as exc:
        if exc.filename not in {str(frame.label), str(frame.image)}:
            raise
        label.unlink(missing_ok=True)
        return False
    return True
