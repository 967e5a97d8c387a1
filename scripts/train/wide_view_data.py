#!/usr/bin/env python3
"""Make a "wide view" copy of a YOLO dataset split: each picture shrunk into a larger canvas.

A kitchen camera sees people from afar: a 1080p frame reaches a 416 px model at a fifth of
its size, and faces that are 60 px on the sensor become 13 px. The training and validation
pictures are close-ups by comparison. This script puts every picture of a split, at its own
size, at a random (seeded) place on a grey canvas ``1 / shrink`` times as wide and high, and
moves its boxes with it; the model, which letterboxes the whole canvas, then sees every object
at ``shrink`` times the size it saw in the plain split. Evaluating the copy whole and in tiles
shows what ``view.tiles`` gives back (MODEL_CARD.md, docs/performance.md)::

    .venv/bin/python scripts/train/wide_view_data.py data/mclz-v1 --split val --out /tmp/wide
    mclz-agent model eval --data /tmp/wide --split val              # the wide view, whole
    mclz-agent model eval --data /tmp/wide --split val --tiles 2x2  # the same in 2x2 tiles

Only YOLO label files (``labels/<split>/*.txt``, class cx cy w h normalised) are read; the
copy keeps the class ids and the dataset's ``dataset.yaml``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
GREY = 114


class WideViewError(Exception):
    """The source is not a YOLO split this script can read."""


def shrink_labels(text: str, *, left: int, top: int, w: int, h: int, cw: int, ch: int) -> str:
    """YOLO lines of a ``w`` x ``h`` picture placed at (``left``, ``top``) in a ``cw`` x ``ch``
    canvas, normalised to the canvas. Lines that are not five numbers are dropped."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        try:
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError:
            continue
        out.append(
            f"{parts[0]} {(left + cx * w) / cw:.6f} {(top + cy * h) / ch:.6f} "
            f"{bw * w / cw:.6f} {bh * h / ch:.6f}"
        )
    return "\n".join(out) + ("\n" if out else "")


def make_wide_view(source: Path, split: str, out: Path, shrink: float, seed: int) -> int:
    """Write the wide-view copy of ``source``'s ``split`` into ``out``; return the picture count.

    Raises:
        WideViewError: no ``images/<split>`` folder, or ``shrink`` not in (0, 1].
    """
    if not 0.0 < shrink <= 1.0:
        raise WideViewError(f"--shrink must be in (0, 1], not {shrink}")
    images, labels = source / "images" / split, source / "labels" / split
    if not images.is_dir():
        raise WideViewError(f"{images}: no such folder (expected a YOLO dataset split)")
    out_images, out_labels = out / "images" / split, out / "labels" / split
    out_images.mkdir(parents=True, exist_ok=True)
    out_labels.mkdir(parents=True, exist_ok=True)
    for name in ("dataset.yaml", "classes.txt"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    rng = random.Random(seed)
    count = 0
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if picture is None:
            print(f"skipped {path}: cannot decode", file=sys.stderr)
            continue
        h, w = picture.shape[:2]
        cw, ch = round(w / shrink), round(h / shrink)
        left, top = rng.randint(0, cw - w), rng.randint(0, ch - h)
        canvas = np.full((ch, cw, 3), GREY, dtype=np.uint8)
        canvas[top : top + h, left : left + w] = picture
        cv2.imwrite(str(out_images / f"{path.stem}{path.suffix.lower()}"), canvas)
        label = labels / f"{path.stem}.txt"
        text = label.read_text(encoding="utf-8") if label.exists() else ""
        (out_labels / f"{path.stem}.txt").write_text(
            shrink_labels(text, left=left, top=top, w=w, h=h, cw=cw, ch=ch), encoding="utf-8"
        )
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="YOLO dataset folder (images/, labels/)")
    parser.add_argument(
        "--split", default="val", help="subfolder of images/ and labels/ ('' for none)"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the copy")
    parser.add_argument("--shrink", type=float, default=0.5, help="object size factor (0.5)")
    parser.add_argument("--seed", type=int, default=0, help="placement seed")
    args = parser.parse_args(argv)
    try:
        count = make_wide_view(args.source, args.split, args.out, args.shrink, args.seed)
    except WideViewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{count} pictures at {args.shrink:g}x their size -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
