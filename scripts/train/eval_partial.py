#!/usr/bin/env python3
"""Partial labels: does a detector still find the objects its training pictures left unlabelled?

The merged training set is labelled per source: hard-hat pictures (``hc_*``) carry no face
boxes and street pictures (``fm_*``) no head or person boxes. Trained plainly, the detector is
taught those faces and heads as background; ``train.py --partial-labels`` masks that loss.
The labelled classes are what ``mclz-agent model eval`` scores; this script measures the
unlabelled side, on the val split of ``data/mclz-v1``, with the detector alone (the agent's
:class:`agent.detect.detector.Detector`, ``stages=False``, onnxruntime, one thread):

* **faces in hard-hat pictures**: YuNet (the face stage's ``yunet_n_640_640.onnx``, the picture
  upscaled 2x, capped at 1 MP) finds faces; those at score >= ``--face-score`` (0.85) and at
  least ``--min-side`` (16) px are taken as truth. A face counts as found when a detector box of
  either face class at confidence >= ``--conf`` (0.25) overlaps it at IoU >= 0.3 (YuNet's box is
  tighter than the annotators'), or holds its centre and is at most 3x its side;
* **heads in street pictures**: every labelled face of a facemask picture lies in a head. It
  counts as found when a detector box of either head class at confidence >= ``--conf`` holds
  the face's centre and is 0.8-4x the face's side (a head box, not a whole person).

Recall of those two, with the labelled classes' AP50 from ``agent.detect.evaluate`` for
context, is printed per package, side by side::

    .venv/bin/python scripts/train/eval_partial.py /tmp/ab-plain /tmp/ab-masked \\
        [--data data/mclz-v1] [--json out.json]

Measured (2026-12-06, 405 YuNet faces in 262 hard-hat pictures, 452 labelled faces in 108
street pictures; A/B from COCO, 3 epochs each, models/default/MODEL_CARD.md): plain labels
11 faces / 6 heads found, ``--partial-labels`` 72 / 127; the from-scratch epoch 40 3 / 4.

The pseudo-truth is a proxy: YuNet misses faces and finds a few that are not (on the labelled
facemask val pictures it finds 84 % of faces), and a face centre inside a box does not prove
the box is that person's head. Both biases are the same for every package compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from agent.detect.datasets import Sample, labels_of_source, load_dataset  # noqa: E402
from agent.detect.detector import Detector  # noqa: E402
from agent.detect.evaluate import evaluate  # noqa: E402
from agent.detect.face import YUNET_FILE, FaceDetector  # noqa: E402
from agent.detect.model import load_model_package  # noqa: E402
from agent.records import Detection  # noqa: E402

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in picture pixels
FACE_CLASSES = ("face_mask", "face_no_mask")
HEAD_CLASSES = ("head_covered", "head_bare")
DEFAULT_DATA = REPO / "data" / "mclz-v1"
DEFAULT_YUNET = REPO / "models" / "default" / "face" / YUNET_FILE


@dataclass
class Result:
    """One package's figures."""

    package: str
    version: str
    faces_in_hardhat: int = 0
    faces_found: int = 0
    heads_in_street: int = 0
    heads_found: int = 0
    labelled_ap50: dict[str, float | None] = field(default_factory=dict)

    @property
    def face_recall(self) -> float:
        return self.faces_found / self.faces_in_hardhat if self.faces_in_hardhat else 0.0

    @property
    def head_recall(self) -> float:
        return self.heads_found / self.heads_in_street if self.heads_in_street else 0.0


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _side(box: Box) -> float:
    return float(np.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])))


def _holds_centre(outer: Box, inner: Box) -> bool:
    cx, cy = (inner[0] + inner[2]) / 2, (inner[1] + inner[3]) / 2
    return outer[0] <= cx <= outer[2] and outer[1] <= cy <= outer[3]


def face_found(face: Box, boxes: Sequence[Box]) -> bool:
    """A detector face box matches a YuNet face: IoU >= 0.3, or holds it and is <= 3x its side."""
    side = _side(face)
    return any(
        _iou(face, box) >= 0.3 or (_holds_centre(box, face) and _side(box) <= 3 * side)
        for box in boxes
    )


def head_found(face: Box, boxes: Sequence[Box]) -> bool:
    """A detector head box holds the labelled face's centre and is 0.8-4x the face's side."""
    side = _side(face)
    return any(_holds_centre(box, face) and 0.8 * side <= _side(box) <= 4 * side for box in boxes)


def _pixels(box: Box, width: int, height: int) -> Box:
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def _boxes(
    dets: Sequence[Detection], labels: Sequence[str], conf: float, w: int, h: int
) -> list[Box]:
    return [_pixels(d.box, w, h) for d in dets if d.label in labels and d.confidence >= conf]


def _read(path: Path) -> npt.NDArray[np.uint8] | None:
    frame = cv2.imread(str(path))
    return None if frame is None else np.ascontiguousarray(frame, dtype=np.uint8)


def pseudo_faces(
    yunet: FaceDetector, samples: Sequence[Sample], *, min_score: float, min_side: float
) -> dict[Path, list[Box]]:
    """YuNet's confident faces in each hard-hat picture: the truth the detector is scored on."""
    out: dict[Path, list[Box]] = {}
    for sample in samples:
        frame = _read(sample.image_path)
        if frame is None:
            continue
        out[sample.image_path] = [
            f.box for f in yunet.detect(frame) if f.score >= min_score and _side(f.box) >= min_side
        ]
    return out


def measure(
    package_dir: Path,
    *,
    hardhat: Sequence[Sample],
    street: Sequence[Sample],
    faces: dict[Path, list[Box]],
    data: Path,
    conf: float,
) -> Result:
    """Recall of unlabelled faces and heads for one package, and its labelled classes' AP50."""
    package = load_model_package(package_dir)
    detector = Detector(package, threads=1, conf_threshold=min(conf, 0.05), stages=False)
    result = Result(package=str(package_dir), version=package.version)
    for sample in hardhat:
        truth = faces.get(sample.image_path) or []
        if not truth:
            continue
        frame = _read(sample.image_path)
        if frame is None:
            continue
        h, w = frame.shape[:2]
        found = _boxes(detector.detect(frame), FACE_CLASSES, conf, w, h)
        result.faces_in_hardhat += len(truth)
        result.faces_found += sum(face_found(face, found) for face in truth)
    for sample in street:
        frame = _read(sample.image_path)
        if frame is None:
            continue
        h, w = frame.shape[:2]
        heads = _boxes(detector.detect(frame), HEAD_CLASSES, conf, w, h)
        for labelled in sample.boxes:
            if labelled.label in FACE_CLASSES:
                result.heads_in_street += 1
                result.heads_found += head_found(_pixels(labelled.box, w, h), heads)
    report = evaluate(
        Detector(package, threads=1, conf_threshold=0.001, max_detections=300, stages=False),
        load_dataset(data, split="val"),
        thresholds=package.thresholds,
        violations=package.violations,
    )
    result.labelled_ap50 = {c.label: c.ap for c in report.classes}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("packages", type=Path, nargs="+", help="model package directories")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset (val split)")
    ap.add_argument("--yunet", type=Path, default=DEFAULT_YUNET, help="YuNet ONNX file")
    ap.add_argument("--face-score", type=float, default=0.85, help="YuNet score for a true face")
    ap.add_argument("--min-side", type=float, default=16.0, help="smallest true face, px")
    ap.add_argument("--conf", type=float, default=0.25, help="detector confidence that counts")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    val = load_dataset(args.data, split="val")
    hardhat = [
        s for s in val.samples if "face_mask" not in (labels_of_source(s.image_path.name) or ())
    ]
    street = [s for s in val.samples if "face_mask" in (labels_of_source(s.image_path.name) or ())]
    yunet = FaceDetector(args.yunet, upscale=2.0, max_upscaled_pixels=1_000_000)
    faces = pseudo_faces(yunet, hardhat, min_score=args.face_score, min_side=args.min_side)
    print(
        f"val: {len(hardhat)} hard-hat pictures ({sum(map(len, faces.values()))} YuNet faces >= "
        f"{args.face_score}, >= {args.min_side:g} px), {len(street)} street pictures"
    )
    results = [
        measure(p, hardhat=hardhat, street=street, faces=faces, data=args.data, conf=args.conf)
        for p in args.packages
    ]
    labels = sorted({label for r in results for label in r.labelled_ap50})
    header = ["package", "faces in hard-hat pictures", "heads in street pictures"]
    print("| " + " | ".join(header + [f"{label} AP50" for label in labels]) + " |")
    print("|---" * (len(header) + len(labels)) + "|")
    for r in results:
        cells = [
            r.version,
            f"{r.faces_found}/{r.faces_in_hardhat} {r.face_recall:.3f}",
            f"{r.heads_found}/{r.heads_in_street} {r.head_recall:.3f}",
        ]
        cells += [
            "-" if r.labelled_ap50.get(label) is None else f"{r.labelled_ap50[label]:.3f}"
            for label in labels
        ]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        rows = [
            asdict(r) | {"face_recall": r.face_recall, "head_recall": r.head_recall}
            for r in results
        ]
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
