#!/usr/bin/env python3
"""Build the agent's YOLO-format training set ``data/mclz-v1`` from ``../shared/datasets``.

Two sources are merged into one dataset with the agent's own class names:

* ``facemask`` (Pascal VOC xml, absolute pixels): ``with_mask`` -> ``face_mask``;
  ``without_mask`` and ``mask_weared_incorrect`` -> ``face_no_mask``.
* ``headcover`` (YOLO txt): 0 ``helmet`` -> ``head_covered``, 1 ``no_helmet`` -> ``head_bare``,
  3 ``wear`` -> ``person_uniform``, 2 ``no_wear`` -> ``person_no_uniform``. Polygon lines are
  turned into the bounding box of their points; empty files stay as background images.

Both are read by ``agent/datasets.py`` (its ``CLASS_MAP`` is the mapping above), the same code
``mclz-agent model eval`` reads a dataset with, so training and evaluation agree on labels.

The train/val split is a pure function of the source name and file stem (sha1), so it never
changes between runs or machines and results of different runs stay comparable. Images are
symlinked (relative links into ``../shared``), labels are written as files. Rare-class images
are repeated in the training set (``--repeat-rare``, default 2) against the class imbalance.

Example::

    python3 scripts/train/prepare_data.py              # -> data/mclz-v1/dataset.yaml
    python3 scripts/train/prepare_data.py --repeat-rare 1  # no oversampling of rare classes
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agent.detect.datasets import AGENT_LABELS, Dataset, load_dataset, split_of
from agent.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]

DEFAULT_SHARED = REPO.parent / "shared" / "datasets"
DEFAULT_OUT = REPO / "data" / "mclz-v1"

#: The agent's classes, in model output order (agent.datasets owns the list and the mapping).
NAMES: tuple[str, ...] = AGENT_LABELS
#: Classes with few boxes; images that contain them can be repeated in the training list.
RARE = frozenset({NAMES.index("face_no_mask"), NAMES.index("head_bare")})
#: Source folders under ``--shared``, with the prefix their images get in the merged set.
SOURCES = {"facemask": "fm", "headcover": "hc"}


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

    @classmethod
    def of(cls, dataset: Dataset) -> Stats:
        """The counters of a loaded source; the first ten problems are kept for the report."""
        kinds = dataset.problem_counts()
        return cls(
            polygons=dataset.polygons,
            degenerate=kinds["degenerate"],
            malformed=kinds["malformed"],
            unknown_class=kinds["unknown_class"],
            missing=kinds["missing"],
            problems=[str(p) for p in dataset.problems[:10]],
        )


def _to_yolo_box(label: str, box: tuple[float, float, float, float]) -> Box:
    x0, y0, x1, y1 = box
    return NAMES.index(label), (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def iter_sources(shared: Path, stats: dict[str, Stats]) -> list[tuple[str, Path, list[Box]]]:
    """Return ``(source, image_path, boxes)`` for every usable image of both datasets.

    Reading, polygon handling and the class mapping are ``agent.detect.datasets``'s, the same code
    ``mclz-agent model eval`` reads a dataset with. Objects of unknown classes are counted and
    skipped. Fills ``stats`` per source.
    """
    items: list[tuple[str, Path, list[Box]]] = []
    for source in SOURCES:
        try:
            dataset = load_dataset(shared / source, ignore_unknown=True)
        except DatasetError as exc:
            raise SystemExit(f"error: {exc}") from None
        stats[source] = Stats.of(dataset)
        for sample in dataset.samples:
            boxes = [_to_yolo_box(b.label, b.box) for b in sample.boxes]
            items.append((source, sample.image_path, boxes))
    return items


def _link(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dst)
    else:
        dst.symlink_to(os.path.relpath(src, dst.parent))


def build(shared: Path, out: Path, *, repeat_rare: int, copy: bool) -> dict[str, Counter[int]]:
    """Write images, labels and ``dataset.yaml``; return per-split box counts by class."""
    stats: dict[str, Stats] = {}
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
            stem = f"{SOURCES[source]}_{img.stem}" + (f"__r{k}" if k else "")
            img_dir, lbl_dir = out / "images" / split, out / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            _link(img, img_dir / f"{stem}{img.suffix}", copy)
            (lbl_dir / f"{stem}.txt").write_text(label_text)
            counts[split].update(b[0] for b in boxes)
            if split == "train" and k == 0:
                unique.update(b[0] for b in boxes)
            n_images[split] += 1
            n_repeats += k > 0
    yaml_lines = [
        "# Generated by scripts/train/prepare_data.py; do not edit by hand.",
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
