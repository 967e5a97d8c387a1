#!/usr/bin/env python3
"""Evaluate the face-first mask check (``agent/detect/face.py``) on the val split of facemask.

For every held-out image (``split_of("facemask", stem) == "val"``, never trained on), the
stage finds faces and decides mask / no mask; each found face is matched to at most one
annotated face (IoU >= 0.3, best YuNet score first: YuNet's box sits higher than the
annotator's, see ``scripts/train/mask_classifier.py``). A face is decided no mask when
P(no mask) > 0.5; the stage's confidence is YuNet's face score x P(no mask). Then, at each
threshold on that confidence:

* **recall**: annotated unmasked faces (``without_mask`` and ``mask_weared_incorrect``) whose
  found face was decided no mask at that threshold, out of all of them;
* **precision**: no-mask decisions on an unmasked face, out of all no-mask decisions (one on
  a masked face or on something that is no annotated face counts against it);

overall and per face size (sqrt(w * h) of the annotated box in source pixels; an unmatched
decision is put in the bucket of its own box). It also prints how a confidence of the class
probability alone compares with face score x class probability (average precision), and the
cost per frame on one thread (OpenCV and onnxruntime), for the val images and for a frame of
camera size. Runs in ``.venv`` (no torch)::

    nice .venv/bin/python scripts/train/eval_face.py [--models DIR] [--json out.json]

Targets (the model issue): unmasked face recall >= 0.85 at precision >= 0.90, and >= 0.80
recall in every size bucket above 32 px. Measured with the committed models (2026-12-06):
met for faces >= 32 px at confidence 0.6 (recall 0.93, precision 0.90); not for all faces
(precision 0.90 from 0.76 on, recall 0.74 there). See ``models/default/face/MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from agent.detect.datasets import load_dataset, split_of  # noqa: E402
from agent.detect.face import (  # noqa: E402
    DEFAULT_MAX_UPSCALED_PIXELS,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_UPSCALE,
    FaceDecision,
    FaceMaskStage,
    UInt8Array,
)

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "facemask"
DEFAULT_MODELS = REPO / "models" / "default" / "face"
SOURCE = "facemask"
MATCH_IOU = 0.3
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # on the stage's confidence
BUCKETS: tuple[tuple[float, float, str], ...] = (
    (0.0, 16.0, "<16"),
    (16.0, 32.0, "16-32"),
    (32.0, 64.0, "32-64"),
    (64.0, 128.0, "64-128"),
    (128.0, math.inf, ">128"),
)
LARGE = ("32-64", "64-128", ">128")  # the buckets the issue asks >= 0.80 recall of
CAMERA_FRAMES = ((1280, 720), (1920, 1080))
Box = tuple[float, float, float, float]


def bucket_of(size: float) -> str:
    """The size bucket of a face ``size`` px (sqrt of its box area) tall."""
    return next(name for low, high, name in BUCKETS if low <= size < high)


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _size(box: Box) -> float:
    return math.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


@dataclass
class Outcome:
    """One no-mask candidate: a found face's P(no mask), face score, truth and size bucket."""

    no_mask: float
    face_score: float
    unmasked: bool  # matched to an annotated unmasked face
    bucket: str
    annotated: bool  # matched to an annotated face, masked or not


@dataclass
class Tally:
    """What the val images gave: every found face and every annotated unmasked face."""

    found: list[Outcome] = field(default_factory=list)
    unmasked_gt: dict[str, int] = field(default_factory=dict)  # bucket -> count
    # For each annotated unmasked face: (bucket, P(no mask) of its found face or -1, face score).
    unmasked_hits: list[tuple[str, float, float]] = field(default_factory=list)
    faces_gt: dict[str, int] = field(default_factory=dict)
    faces_found: dict[str, int] = field(default_factory=dict)
    masked_right: int = 0
    masked_gt: int = 0
    images: int = 0
    ms_detect: list[float] = field(default_factory=list)
    ms_classify: list[float] = field(default_factory=list)


def score_image(tally: Tally, decisions: list[FaceDecision], truth: list[tuple[bool, Box]]) -> None:
    """Match one image's decisions to its annotated faces and add them to ``tally``."""
    matched: dict[int, int] = {}  # truth index -> decision index
    for d_index in sorted(range(len(decisions)), key=lambda i: -decisions[i].face_score):
        best, best_iou = -1, MATCH_IOU
        for t_index, (_, box) in enumerate(truth):
            if t_index in matched:
                continue
            overlap = _iou(decisions[d_index].box, box)
            if overlap >= best_iou:
                best, best_iou = t_index, overlap
        if best >= 0:
            matched[best] = d_index
    by_decision = {d: t for t, d in matched.items()}
    for index, decision in enumerate(decisions):
        truth_index = by_decision.get(index)
        if truth_index is None:
            tally.found.append(
                Outcome(
                    decision.no_mask,
                    decision.face_score,
                    unmasked=False,
                    bucket=bucket_of(_size(decision.box)),
                    annotated=False,
                )
            )
        else:
            unmasked, box = truth[truth_index]
            tally.found.append(
                Outcome(
                    decision.no_mask,
                    decision.face_score,
                    unmasked=unmasked,
                    bucket=bucket_of(_size(box)),
                    annotated=True,
                )
            )
    for index, (unmasked, box) in enumerate(truth):
        bucket = bucket_of(_size(box))
        tally.faces_gt[bucket] = tally.faces_gt.get(bucket, 0) + 1
        found = matched.get(index)
        if found is not None:
            tally.faces_found[bucket] = tally.faces_found.get(bucket, 0) + 1
        if unmasked:
            tally.unmasked_gt[bucket] = tally.unmasked_gt.get(bucket, 0) + 1
            if found is None:
                tally.unmasked_hits.append((bucket, -1.0, 0.0))
            else:
                d = decisions[found]
                tally.unmasked_hits.append((bucket, d.no_mask, d.face_score))
        else:
            tally.masked_gt += 1
            tally.masked_right += found is not None and decisions[found].no_mask <= 0.5


def run(stage: FaceMaskStage, data: Path, limit: int | None = None) -> Tally:
    """Run the stage over the val images of ``data`` and tally the outcomes."""
    dataset = load_dataset(data)
    tally = Tally()
    for sample in dataset.samples:
        if split_of(SOURCE, sample.image_path.stem) != "val":
            continue
        if limit is not None and tally.images >= limit:
            break
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            print(f"warning: cannot decode {sample.image_path}: skipped", file=sys.stderr)
            continue
        frame = np.asarray(pixels, dtype=np.uint8)
        height, width = frame.shape[:2]
        truth = [
            (
                b.label == "face_no_mask",
                (b.box[0] * width, b.box[1] * height, b.box[2] * width, b.box[3] * height),
            )
            for b in sample.boxes
        ]
        decisions = stage.analyse(frame)
        tally.ms_detect.append(stage.last_ms[0])
        tally.ms_classify.append(stage.last_ms[1])
        score_image(tally, decisions, truth)
        tally.images += 1
    return tally


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.2f}" if den else "-"


def at_threshold(tally: Tally, threshold: float, *, product: bool = True) -> dict[str, Any]:
    """Recall and precision of the no-mask decision at ``threshold``, overall and per bucket."""

    def confidence(no_mask: float, face_score: float) -> float:
        return no_mask * face_score if product else no_mask

    # A face is decided no mask when P(no mask) > 0.5 (the label), and counted at ``threshold``.
    def decided(no_mask: float, face_score: float) -> bool:
        return no_mask > 0.5 and confidence(no_mask, face_score) >= threshold

    result: dict[str, Any] = {"threshold": threshold, "buckets": {}}
    groups = {"all": {name for _, _, name in BUCKETS}, ">=32": set(LARGE)}
    groups.update({name: {name} for _, _, name in BUCKETS})
    for name, members in groups.items():
        hits = [h for h in tally.unmasked_hits if h[0] in members]
        recalled = sum(decided(p, s) for _, p, s in hits)
        calls = [o for o in tally.found if o.bucket in members and decided(o.no_mask, o.face_score)]
        right = sum(o.unmasked for o in calls)
        on_faces = sum(o.annotated for o in calls)
        entry = {
            "recall": recalled / len(hits) if hits else None,
            "precision": right / len(calls) if calls else None,
            "unmasked": len(hits),
            "recalled": recalled,
            "decisions": len(calls),
            "right": right,
            # Leaving out decisions on no annotated face (some are faces the annotators skipped).
            "precision_annotated": right / on_faces if on_faces else None,
        }
        if name == "all":
            result.update(entry)
        else:
            result["buckets"][name] = entry
    return result


def average_precision(tally: Tally, *, product: bool) -> float:
    """Area under the no-mask precision-recall curve, ranking by the chosen confidence."""
    total = len(tally.unmasked_hits)
    ranked = sorted(
        (o for o in tally.found if o.no_mask > 0.5),
        key=lambda o: -(o.no_mask * o.face_score if product else o.no_mask),
    )
    ap, tp, last_recall = 0.0, 0, 0.0
    for rank, outcome in enumerate(ranked, 1):
        if outcome.unmasked:
            tp += 1
            recall = tp / total
            ap += (recall - last_recall) * tp / rank
            last_recall = recall
    return ap


def best_at_precision(tally: Tally, floor: float) -> dict[str, Any] | None:
    """The lowest threshold whose precision reaches ``floor`` (the most recall there)."""
    for step in range(30, 100):
        result = at_threshold(tally, step / 100)
        if result["precision"] is not None and result["precision"] >= floor:
            return result
    return None


def _frame_cost(
    stage: FaceMaskStage, picture: UInt8Array, width: int, height: int
) -> tuple[float, int]:
    frame = np.asarray(
        cv2.resize(picture, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.uint8
    )
    stage.analyse(frame)  # warm-up at this input size
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        found = stage.analyse(frame)
        runs.append((time.perf_counter() - started) * 1000)
    return float(np.median(runs)), len(found)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(tally: Tally, stage: FaceMaskStage, picture: UInt8Array | None) -> dict[str, Any]:
    """Print the tables; return the figures."""
    print(
        f"val images {tally.images}, annotated faces {sum(tally.faces_gt.values())}, "
        f"unmasked {sum(tally.unmasked_gt.values())}; {stage.detector!r}, {stage.classifier!r}"
    )
    names = [name for _, _, name in BUCKETS]
    print("\nfaces found (any class, IoU >= 0.3):")
    print("  " + "  ".join(f"{n:>8}" for n in ["all", *names]))
    found_row = [_ratio(sum(tally.faces_found.values()), sum(tally.faces_gt.values()))]
    found_row += [_ratio(tally.faces_found.get(n, 0), tally.faces_gt.get(n, 0)) for n in names]
    print("  " + "  ".join(f"{v:>8}" for v in found_row))
    print(f"masked faces found and decided mask: {_ratio(tally.masked_right, tally.masked_gt)}")
    print(
        "\nno-mask decision, recall of unmasked faces / precision, by face size; confidence "
        "= face score x P(no mask); last column: precision on annotated faces only"
    )
    header = f"  {'confidence>=':>12}  {'all':>11}  {'>=32':>11}"
    header += "".join(f"  {n:>11}" for n in names) + "  P(annotated)"
    print(header)
    rows = []
    for threshold in THRESHOLDS:
        result = at_threshold(tally, threshold)
        rows.append(result)
        cells = [f"{_fmt(result['recall'])}/{_fmt(result['precision'])}"]
        large = result["buckets"].pop(">=32")
        cells.append(f"{_fmt(large['recall'])}/{_fmt(large['precision'])}")
        cells += [f"{_fmt(b['recall'])}/{_fmt(b['precision'])}" for b in result["buckets"].values()]
        cells.append(_fmt(result["precision_annotated"]))
        print(f"  {threshold:>12.2f}  " + "  ".join(f"{c:>11}" for c in cells))
    counts = "  ".join(f"{tally.unmasked_gt.get(n, 0):>11}" for n in names)
    large_count = sum(tally.unmasked_gt.get(n, 0) for n in LARGE)
    print(f"  {'unmasked':>12}  {sum(tally.unmasked_gt.values()):>11}  {large_count:>11}  {counts}")

    ap_class = average_precision(tally, product=False)
    ap_product = average_precision(tally, product=True)
    print(
        f"\nconfidence: AP of the no-mask ranking, class probability {ap_class:.3f}, "
        f"face score x class probability {ap_product:.3f}"
    )
    for threshold in (0.5, 0.7, 0.9):
        p = at_threshold(tally, threshold, product=False)
        print(
            f"  P(no mask) alone >= {threshold}: "
            f"recall {_fmt(p['recall'])}, precision {_fmt(p['precision'])}"
        )

    target = best_at_precision(tally, 0.90)
    if target is None:
        print("\ntarget: no threshold reaches precision 0.90")
    else:
        above = {
            n: b["recall"] for n, b in target["buckets"].items() if n in {"32-64", "64-128", ">128"}
        }
        ok = target["recall"] >= 0.85 and all(r is None or r >= 0.80 for r in above.values())
        print(
            f"\ntarget (recall >= 0.85 at precision >= 0.90, >= 0.80 per bucket above 32 px): "
            f"{'met' if ok else 'NOT met'} at confidence >= {target['threshold']:.2f}: recall "
            f"{target['recall']:.2f}, precision {target['precision']:.2f}, above 32 px "
            + ", ".join(f"{n} {_fmt(r)}" for n, r in above.items())
        )
    detect_ms, classify_ms = float(np.mean(tally.ms_detect)), float(np.mean(tally.ms_classify))
    print(f"\ncost per val image, 1 thread: faces {detect_ms:.1f} ms + masks {classify_ms:.1f} ms")
    camera: dict[str, Any] = {}
    if picture is not None:
        for width, height in CAMERA_FRAMES:
            ms, faces = _frame_cost(stage, picture, width, height)
            factor = stage.detector.upscale_for(width, height)
            camera[f"{width}x{height}"] = {
                "ms": round(ms, 1),
                "upscale": round(factor, 2),
                "faces": faces,
            }
            print(
                f"cost per {width}x{height} frame, 1 thread: {ms:.0f} ms "
                f"(upscaled pass {factor:.2f}x, {faces} faces)"
            )
    return {
        "images": tally.images,
        "faces_found": {
            n: _ratio(tally.faces_found.get(n, 0), tally.faces_gt.get(n, 0)) for n in names
        },
        "no_mask": rows,
        "ap_class_probability": ap_class,
        "ap_face_score_x_probability": ap_product,
        "target": target,
        "ms_per_val_image": {"faces": detect_ms, "masks": classify_ms},
        "ms_per_camera_frame": camera,
    }


def main(argv: list[str] | None = None) -> int:
    """Evaluate and print; the exit code is 0 when it ran."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", type=Path, default=DEFAULT_MODELS, help="face model folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="facemask folder (VOC)")
    ap.add_argument(
        "--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, help="YuNet score"
    )
    ap.add_argument(
        "--upscale", type=float, default=DEFAULT_UPSCALE, help="second pass factor (1: none)"
    )
    ap.add_argument("--max-upscaled-pixels", type=int, default=DEFAULT_MAX_UPSCALED_PIXELS)
    ap.add_argument("--min-face-px", type=float, default=0.0, help="decide faces this large only")
    ap.add_argument(
        "--keep-cut-faces", action="store_true", help="decide faces without a mouth too"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N val images only")
    ap.add_argument("--no-camera-cost", action="store_true", help="skip the 720p/1080p timing")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    stage = FaceMaskStage.from_dir(
        args.models,
        threads=1,
        skip_cut_faces=not args.keep_cut_faces,
        min_face_px=args.min_face_px,
        score_threshold=args.score_threshold,
        upscale=args.upscale,
        max_upscaled_pixels=args.max_upscaled_pixels,
    )
    tally = run(stage, args.data, args.limit)
    picture: UInt8Array | None = None
    if not args.no_camera_cost:
        val = [
            p
            for p in sorted((args.data / "images").glob("*.jpg"))
            if split_of(SOURCE, p.stem) == "val"
        ]
        pixels = cv2.imread(str(val[0]), cv2.IMREAD_COLOR) if val else None
        picture = None if pixels is None else np.asarray(pixels, dtype=np.uint8)
    figures = report(tally, stage, picture)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
