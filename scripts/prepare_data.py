#!/usr/bin/env python3
"""Build the agent's YOLO-format training set ``data/mclz-v1`` from ``../shared/datasets``.

Two sources are merged into one dataset with the agent's own class names:

* ``facemask`` (Pascal VOC xml, absolute pixels): ``with_mask`` -> ``face_mask``;
  ``without_mask`` and ``mask_weared_incorrect`` -> ``face_no_mask``.
* ``headcover`` (YOLO txt): 0 ``helmet`` -> ``head_covered``, 1 ``no_helmet`` -> ``head_bare``,
  3 ``wear`` -> ``person_uniform``, 2 ``no_wear`` -> ``person_no_uniform``. Polygon lines are
  turned into the bounding box of their points; empty files stay as background images.

The train/val split is a pure function of the source name and file stem (sha1), so it never
changes between runs or machines and results of different runs stay comparable. Images are
symlinked (relative links into ``../shared``), labels are written as files. Rare-class images
are repeated in the training set (``--repeat-rare``, default 2) against the class imbalance.

Example::

    python3 scripts/prepare_data.py                    # -> data/mclz-v1/dataset.yaml
    python3 scripts/prepare_data.py --repeat-rare 1    # no oversampling of rare classes
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = REPO / "data" / "mclz-v1"

#: The agent's classes, in model output order. Never reorder: models and manifests depend on it.
NAMES: tuple[str, ...] = (
    "face_mask",
    "face_no_mask",
    "head_covered",
    "head_bare",
    "person_uniform",
    "person_no_uniform",
)
#: Classes with few boxes; images that contain them can be repeated in the training list.
RARE = frozenset({NAMES.index("face_no_mask"), NAMES.index("head_bare")})

FACEMASK_MAP = {"with_mask": 0, "without_mask": 1, "mask_weared_incorrect": 1}
HEADCOVER_MAP = {0: 2, 1: 3, 3: 4, 2: 5}

VAL_PERCENT = 15  # share of each source that goes to val, by hash of "<source>/<stem>"
MIN_BOX_PX = 1.0  # boxes narrower or lower than this (source pixels) are degenerate

Box = tuple[int, float, float, float, float]  # class, cx, cy, w, h (normalised)


@dataclass
class Stats:
    """Counters for one source, reported at the end."""

    images: int = 0
    boxes: int = 0
    background: int = 0
    polygons: int = 0
    degenerate: int = 0
    malformed: int = 0
    unknown_class: int = 0
    missing: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, msg: str) -> None:
        if len(self.problems) < 10:
            self.problems.append(msg)


def split_of(source: str, stem: str) -> str:
    """Return ``"val"`` or ``"train"`` for an image; stable across runs and machines."""
    digest = hashlib.sha1(f"{source}/{stem}".encode(), usedforsecurity=False).hexdigest()
    return "val" if int(digest[:8], 16) % 100 < VAL_PERCENT else "train"


def _clip_xyxy(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    x0, x1 = sorted((min(max(x0, 0.0), 1.0), min(max(x1, 0.0), 1.0)))
    y0, y1 = sorted((min(max(y0, 0.0), 1.0), min(max(y1, 0.0), 1.0)))
    return x0, y0, x1, y1


def _to_cxcywh(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def read_voc(xml_path: Path, stats: Stats) -> list[Box] | None:
    """Parse one VOC file into normalised boxes; ``None`` when the file is unusable."""
    try:
        root = ET.parse(xml_path).getroot()  # noqa: S314 - trusted local dataset
        size = root.find("size")
        if size is None:
            raise ValueError("no <size>")
        width = float(size.findtext("width", "0"))
        height = float(size.findtext("height", "0"))
        if width <= 0 or height <= 0:
            raise ValueError(f"bad image size {width}x{height}")
    except (ET.ParseError, ValueError) as exc:
        stats.malformed += 1
        stats.note(f"{xml_path.name}: {exc}")
        return None
    boxes: list[Box] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in FACEMASK_MAP:
            stats.unknown_class += 1
            stats.note(f"{xml_path.name}: unknown class {name!r}")
            continue
        bnd = obj.find("bndbox")
        try:
            if bnd is None:
                raise ValueError("no <bndbox>")
            x0, y0, x1, y1 = (
                float(bnd.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as exc:
            stats.malformed += 1
            stats.note(f"{xml_path.name}: {exc}")
            continue
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            stats.malformed += 1
            stats.note(f"{xml_path.name}: missing or non-finite coordinate")
            continue
        nx0, ny0, nx1, ny1 = _clip_xyxy(x0 / width, y0 / height, x1 / width, y1 / height)
        if (nx1 - nx0) * width < MIN_BOX_PX or (ny1 - ny0) * height < MIN_BOX_PX:
            stats.degenerate += 1
            stats.note(f"{xml_path.name}: degenerate box {x0},{y0},{x1},{y1}")
            continue
        boxes.append((FACEMASK_MAP[name], *_to_cxcywh(nx0, ny0, nx1, ny1)))
    return boxes


def read_yolo(txt_path: Path, stats: Stats) -> list[Box]:
    """Parse one headcover label file: boxes or polygons, remapped to the agent's classes."""
    boxes: list[Box] = []
    for lineno, line in enumerate(txt_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{txt_path.name}:{lineno}"
        try:
            src_cls = int(parts[0])
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            stats.malformed += 1
            stats.note(f"{where}: not numeric")
            continue
        if src_cls not in HEADCOVER_MAP:
            stats.unknown_class += 1
            stats.note(f"{where}: unknown class {src_cls}")
            continue
        if len(nums) == 4:
            cx, cy, w, h = nums
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(nums) >= 6 and len(nums) % 2 == 0:
            xs, ys = nums[0::2], nums[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            stats.polygons += 1
        else:
            stats.malformed += 1
            stats.note(f"{where}: {len(nums)} coordinates")
            continue
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            stats.malformed += 1
            stats.note(f"{where}: NaN or infinite coordinate")
            continue
        x0, y0, x1, y1 = _clip_xyxy(x0, y0, x1, y1)
        if x1 - x0 <= 1e-4 or y1 - y0 <= 1e-4:
            stats.degenerate += 1
            stats.note(f"{where}: degenerate box")
            continue
        boxes.append((HEADCOVER_MAP[src_cls], *_to_cxcywh(x0, y0, x1, y1)))
    return boxes


def iter_sources(shared: Path, stats: dict[str, Stats]) -> list[tuple[str, Path, list[Box]]]:
    """Return ``(source, image_path, boxes)`` for every usable image of both datasets."""
    items: list[tuple[str, Path, list[Box]]] = []
    fm = shared / "facemask"
    for xml_path in sorted((fm / "annotations").glob("*.xml")):
        st = stats["facemask"]
        img = fm / "images" / f"{xml_path.stem}.jpg"
        if not img.is_file():
            st.missing += 1
            st.note(f"{xml_path.name}: image missing")
            continue
        boxes = read_voc(xml_path, st)
        if boxes is not None:
            items.append(("facemask", img, boxes))
    hc = shared / "headcover"
    for img in sorted((hc / "images").glob("*.jpg")):
        st = stats["headcover"]
        txt = hc / "labels" / f"{img.stem}.txt"
        if not txt.is_file():
            st.missing += 1
            st.note(f"{img.name}: label file missing, kept as background")
            boxes = []
        else:
            boxes = read_yolo(txt, st)
        items.append(("headcover", img, boxes))
    return items


def _link(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dst)
    else:
        dst.symlink_to(os.path.relpath(src, dst.parent))


def build(shared: Path, out: Path, *, repeat_rare: int, copy: bool) -> dict[str, Counter[int]]:
    """Write images, labels and ``dataset.yaml``; return per-split box counts by class."""
    stats = {"facemask": Stats(), "headcover": Stats()}
    items = iter_sources(shared, stats)
    if not items:
        raise SystemExit(f"no images found under {shared}")
    for sub in ("images", "labels"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for f in out.glob("*.cache"):
        f.unlink()
    counts: dict[str, Counter[int]] = {"train": Counter(), "val": Counter()}
    unique: Counter[int] = Counter()  # train boxes without the rare-class repeats
    n_images: Counter[str] = Counter()
    n_repeats = 0
    prefix = {"facemask": "fm", "headcover": "hc"}
    for source, img, boxes in items:
        st = stats[source]
        st.images += 1
        st.boxes += len(boxes)
        st.background += not boxes
        split = split_of(source, img.stem)
        copies = 1
        if split == "train" and repeat_rare > 1 and any(b[0] in RARE for b in boxes):
            copies = repeat_rare
        label_text = "".join(
            f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes
        )
        for k in range(copies):
            stem = f"{prefix[source]}_{img.stem}" + (f"__r{k}" if k else "")
            img_dir, lbl_dir = out / "images" / split, out / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            _link(img, img_dir / f"{stem}.jpg", copy)
            (lbl_dir / f"{stem}.txt").write_text(label_text)
            counts[split].update(b[0] for b in boxes)
            if split == "train" and k == 0:
                unique.update(b[0] for b in boxes)
            n_images[split] += 1
            n_repeats += k > 0
    yaml_lines = [
        "# Generated by scripts/prepare_data.py; do not edit by hand.",
        f"path: {out.resolve()}",
        "train: images/train",
        "val: images/val",
        f"nc: {len(NAMES)}",
        "names:",
        *(f"  {i}: {n}" for i, n in enumerate(NAMES)),
        "",
    ]
    (out / "dataset.yaml").write_text("\n".join(yaml_lines))

    for source, st in stats.items():
        print(
            f"{source}: {st.images} images, {st.boxes} boxes, {st.background} background, "
            f"{st.polygons} polygons->bbox, {st.degenerate} degenerate skipped, "
            f"{st.malformed} malformed, {st.unknown_class} unknown class, {st.missing} missing"
        )
        for msg in st.problems:
            print(f"  - {msg}")
    print(
        f"\nimages: train {n_images['train']} (incl. {n_repeats} rare-class repeats), "
        f"val {n_images['val']}"
    )
    print(f"{'id':>2}  {'class':<18} {'train':>6} {'train*':>6} {'val':>6}   (*with repeats)")
    for i, name in enumerate(NAMES):
        print(f"{i:>2}  {name:<18} {unique[i]:>6} {counts['train'][i]:>6} {counts['val'][i]:>6}")
    print(
        f"    {'total':<18} {sum(unique.values()):>6} {sum(counts['train'].values()):>6} "
        f"{sum(counts['val'].values()):>6}"
    )
    print(f"\nwrote {out / 'dataset.yaml'}")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared datasets dir")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dataset dir")
    ap.add_argument(
        "--repeat-rare",
        type=int,
        default=2,
        help="list train images containing face_no_mask/head_bare this many times (1 = off)",
    )
    ap.add_argument("--copy", action="store_true", help="copy images instead of symlinking")
    args = ap.parse_args(argv)
    if args.repeat_rare < 1:
        ap.error("--repeat-rare must be >= 1")
    build(args.shared.resolve(), args.out, repeat_rare=args.repeat_rare, copy=args.copy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
