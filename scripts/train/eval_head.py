#!/usr/bin/env python3
"""Bare heads: the detector's own head class against "the detector finds, a classifier decides".

Two ways to decide ``head_bare``, with the same detector (``models/default``, run by the agent's
:class:`agent.detect.detector.Detector` with ``stages=False``, so exactly what the box runs):

* **detector alone**: its ``head_bare`` detections, scored as ``mclz-agent model eval`` scores
  them (``conf_threshold`` 0.001, 300 detections, IoU >= 0.5, the same matching, AP and size
  buckets from :mod:`agent.detect.evaluate`);
* **detector + head classifier**: the detector at ``conf_threshold`` 0.05; its boxes of
  either head class merged by NMS across the two classes (IoU 0.45, the detector's), each one
  a head of score = the detector's confidence; the classifier of
  ``scripts/train/head_classifier.py`` decides covered / bare on the head's crop
  (:func:`agent.detect.face.crop_face`); label = the likelier of covered and bare (a crop
  whose likeliest class is ``other`` is no head and left out), confidence = head score s x
  P(that class) p, as the face stage's (``agent/detect/face.py``); for comparison also
  sqrt(s) x p and p alone.

Data: the val split of ``../shared/datasets/headcover`` (``split_of("headcover", stem)``, the
262 hard-hat pictures of ``data/mclz-v1``'s val split; 753 heads, 77 bare), scored only on the
head classes. Also the bareheaded video ``../shared/videos/bareheaded_people_indoor.mp4``
(768x432, a fixed camera looking down at a room; unlabelled, everyone in it bareheaded): on
every ``--video-every``-th frame, how many head boxes each way calls bare. That is a proxy for
the transfer to an indoor camera, not a measurement of precision or recall: a head box may be
no head, and the same person is counted once per sampled frame.

Runs in ``.venv`` (no torch), one thread::

    nice .venv/bin/python scripts/train/eval_head.py [--classifier models/candidates/head]
        [--json out.json] [--sheet video_heads.png]

Measured (2026-12-06, ``models/candidates/head`` as trained by ``head_classifier.py``'s
defaults; the detector alone reproduces ``model eval``'s 0.760 / 0.247, AP50 0.419):

============================  ===========  ===========  ===========  ===========  =====
head_bare, precision/recall   0.25         0.45         0.50         0.60         AP50
============================  ===========  ===========  ===========  ===========  =====
detector alone                0.525/0.403  0.645/0.260  0.760/0.247  0.842/0.208  0.419
combined, s x p               0.536/0.390  0.769/0.260  0.864/0.247  0.923/0.156  0.408
combined, sqrt(s) x p         0.402/0.532  0.554/0.403  0.604/0.377  0.710/0.286  0.417
combined, p alone             0.268/0.584  0.277/0.571  0.289/0.571  0.341/0.558  0.394
============================  ===========  ===========  ===========  ===========  =====

The classifier is not better: on the same boxes the detector's class is right for 44/49 bare
and 569/577 covered heads, the classifier's for 45/49 and 554/577. What limits recall is
finding the head: 49 of 77 bare heads get a head box at score >= 0.05, 33 at >= 0.25, 21 at
>= 0.50 (covered: 0.85, 0.79, 0.70). Without the head score the false heads come through
(``p alone``); most of the highest-scored ones are heads the annotators left unlabelled
(bystanders, children), the rest hands, signs, and boxes on the face below a helmet. Per
head size at 0.50 the two are the same (recall 0/3, 3/19, 4/22, 9/24, 3/9). Cost, one thread
on the shared machine: detector 34 ms per val picture, classifier +2.2 ms (4.6 heads at >=
0.05); per 768x432 video frame 36.6 ms + 4.1 ms (+11 %).

Video (proxy, 140 frames, every 10th): 172 head boxes at >= 0.25 in 105 frames, 37 called
bare by the detector and 37 by the classifier (the same heads, seen from behind); 15 at >=
0.50, 12 called bare by both. Most boxes at 0.25-0.45 are the table top, its pole and a wall
corner, all called covered; blond or long hair seen from behind is called covered by both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from head_classifier import (  # noqa: E402 - next to this script: its labels and file names
    DEFAULT_OUT,
    HEAD_LABELS,
    META_FILE,
    META_FORMAT,
)

from agent.detect.datasets import AGENT_LABELS, LabelledBox, load_dataset, split_of  # noqa: E402
from agent.detect.detector import Detector, nms  # noqa: E402
from agent.detect.evaluate import (  # noqa: E402
    SIZE_BUCKETS,
    average_precision,
    box_iou,
    box_size,
    match_truth,
    size_bucket,
    size_recall,
)
from agent.detect.face import crop_face, crops_to_tensor  # noqa: E402
from agent.detect.model import load_model_package  # noqa: E402
from agent.errors import ModelError  # noqa: E402
from agent.records import Detection  # noqa: E402

DEFAULT_PACKAGE = REPO / "models" / "default"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "headcover"
DEFAULT_VIDEO = REPO.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"
SOURCE: Final = "headcover"
COVERED: Final = "head_covered"
BARE: Final = "head_bare"
HEAD_CLASSES: Final = (COVERED, BARE)
#: The candidate floor of the combined decision: heads the detector is this sure of (either
#: class) go to the classifier.
HEAD_FLOOR: Final = 0.05
#: NMS across the two head classes; the detector's own NMS (class-aware) uses the same IoU.
HEAD_NMS_IOU: Final = 0.45
MATCH_IOU: Final = 0.5  # model eval's
THRESHOLDS: Final = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8)
SHIPPED_BARE_THRESHOLD: Final = 0.5  # models/default/manifest.yaml thresholds.head_bare
#: Head-score floors the video counts head boxes at: the agent's detection floor and the
#: shipped head_bare threshold.
VIDEO_FLOORS: Final = (0.25, 0.5)

UInt8Array = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- the classifier


class HeadClassifier:
    """The head classifier (``head_classifier.onnx`` + ``.json``) with onnxruntime on the CPU.

    Raises:
        ModelError: the description or the ONNX file is missing, of another format, or its
            sha256 differs from the description's.
    """

    def __init__(self, folder: Path, *, threads: int = 1) -> None:
        meta_path = folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"{meta_path}: cannot read head classifier description: {exc}"
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise ModelError(f"{meta_path}: not a {META_FORMAT} description")
        labels = tuple(meta.get("labels", ()))
        if labels not in (HEAD_LABELS, HEAD_LABELS[:2]):
            raise ModelError(f"{meta_path}: labels {labels} are not {HEAD_LABELS} or its first two")
        path = folder / str(meta["file"])
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelError(f"{path}: cannot read head classifier: {exc}") from exc
        if digest != meta["sha256"]:
            raise ModelError(f"{path}: sha256 {digest} does not match {meta_path}")
        import onnxruntime as ort  # noqa: PLC0415

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.size = int(meta["input_size"])
        self.margin = float(meta["margin"])
        self.meta = meta
        self.path = path
        self.last_ms = 0.0

    def probabilities(self, frame: UInt8Array, boxes: Sequence[Box]) -> npt.NDArray[np.float32]:
        """P(covered), P(bare), P(other) for crops at ``boxes`` (frame pixels) of a BGR frame,
        all in one batch; P(other) is 0 for a two-class model."""
        started = time.perf_counter()
        out = np.zeros((len(boxes), len(HEAD_LABELS)), dtype=np.float32)
        if boxes:
            crops = [crop_face(frame, box, size=self.size, margin=self.margin) for box in boxes]
            outputs = self._session.run(None, {self._input: crops_to_tensor(crops)})
            probabilities = np.asarray(outputs[0], dtype=np.float32)
            out[:, : probabilities.shape[1]] = probabilities
        self.last_ms = (time.perf_counter() - started) * 1000.0
        return out


# --------------------------------------------------------------------------- the two decisions


@dataclass(frozen=True)
class Head:
    """A head box of the detector (either class, after NMS across them) and both verdicts."""

    box: Box  # normalised 0..1
    score: float  # the detector's confidence in its head class
    detector_label: str
    p_covered: float  # the classifier's
    p_bare: float
    p_other: float  # no head; 0 for a two-class classifier

    @property
    def label(self) -> str | None:
        """The classifier's verdict: ``head_bare``, ``head_covered``, or None (no head)."""
        if self.p_other > max(self.p_bare, self.p_covered):
            return None
        return BARE if self.p_bare > self.p_covered else COVERED


def heads_of(detections: Sequence[Detection], floor: float) -> list[tuple[Box, float, str]]:
    """Head boxes at ``floor`` or above, either class, NMS across the two; best first."""
    found = [d for d in detections if d.label in HEAD_CLASSES and d.confidence >= floor]
    if not found:
        return []
    boxes = np.array([d.box for d in found], dtype=np.float32)
    scores = np.array([d.confidence for d in found], dtype=np.float32)
    keep = nms(
        boxes,
        scores,
        np.zeros(len(found), dtype=np.intp),
        iou_threshold=HEAD_NMS_IOU,
        max_detections=len(found),
    )
    return [(found[i].box, found[i].confidence, found[i].label) for i in keep.tolist()]


def decide(
    classifier: HeadClassifier, frame: UInt8Array, detections: Sequence[Detection], floor: float
) -> list[Head]:
    """The detector's heads with the classifier's probabilities for each."""
    height, width = frame.shape[:2]
    candidates = heads_of(detections, floor)
    pixels = [(b[0] * width, b[1] * height, b[2] * width, b[3] * height) for b, _, _ in candidates]
    probabilities = classifier.probabilities(frame, pixels).tolist()
    return [
        Head(box, score, label, *p)
        for (box, score, label), p in zip(candidates, probabilities, strict=True)
    ]


#: How the combined decision's confidence is made from the detector's head score ``s`` and the
#: classifier's probability ``p`` of its label.
CONFIDENCES: Final[dict[str, Callable[[float, float], float]]] = {
    "s*p": lambda s, p: s * p,
    "sqrt(s)*p": lambda s, p: math.sqrt(s) * p,
    "p": lambda s, p: p,
}


DEFAULT_CONFIDENCE: Final = "s*p"


def as_detections(heads: Sequence[Head], confidence: str = DEFAULT_CONFIDENCE) -> list[Detection]:
    """Heads as detections labelled by the classifier (no head: left out)."""
    combine = CONFIDENCES[confidence]
    out = []
    for head in heads:
        label = head.label
        if label is None:
            continue
        p = head.p_bare if label == BARE else head.p_covered
        out.append(Detection(label, AGENT_LABELS.index(label), combine(head.score, p), head.box))
    return out


# --------------------------------------------------------------------------- scoring


@dataclass
class Tally:
    """Matches of one method and one label over the val pictures."""

    matches: list[tuple[float, bool, float]] = field(default_factory=list)  # conf, hit, size px
    found: list[tuple[float, float | None]] = field(default_factory=list)  # gt size, conf
    gt: int = 0

    def add(
        self,
        detections: Sequence[Detection],
        truth: Sequence[LabelledBox],
        label: str,
        width: int,
        height: int,
    ) -> None:
        """Match one picture's detections of ``label`` (as model eval does) and keep them."""
        dets, taken_by = match_truth(detections, truth, label, iou=MATCH_IOU)
        # match_truth's order: detections of the label by descending confidence, stable.
        ordered = sorted((d for d in detections if d.label == label), key=lambda d: -d.confidence)
        self.matches.extend(
            (conf, hit, box_size(d.box, width, height))
            for (conf, hit), d in zip(dets, ordered, strict=True)
        )
        sizes = [box_size(t.box, width, height) for t in truth if t.label == label]
        self.found.extend(zip(sizes, taken_by, strict=True))
        self.gt += len(sizes)

    def at(self, threshold: float) -> dict[str, Any]:
        """Precision and recall at ``threshold``; precision per bucket of the detection's size."""
        kept = [(hit, size) for conf, hit, size in self.matches if conf >= threshold]
        tp = sum(hit for hit, _ in kept)
        per_bucket = {}
        for name in SIZE_BUCKETS:
            inside = [hit for hit, size in kept if size_bucket(size) == name]
            per_bucket[name] = f"{sum(inside)}/{len(inside)}"
        return {
            "threshold": threshold,
            "tp": tp,
            "detections": len(kept),
            "precision": tp / len(kept) if kept else None,
            "recall": tp / self.gt if self.gt else None,
            "recall_by_size": {
                b.bucket: f"{b.tp}/{b.gt}" for b in size_recall(self.found, threshold)
            },
            "precision_by_size": per_bucket,
        }

    def ap(self) -> float:
        """All-point AP, as model eval computes it."""
        if not self.gt:
            return 0.0
        return average_precision(
            [c for c, _, _ in self.matches], [h for _, h, _ in self.matches], self.gt
        )

    def lowest_at_precision(self, floor: float) -> dict[str, Any] | None:
        """The lowest threshold (0.05 steps from 0.10) whose precision reaches ``floor``."""
        for step in range(2, 20):
            point = self.at(step / 20)
            if point["precision"] is not None and point["precision"] >= floor:
                return point
        return None


def same_boxes(heads: Sequence[Head], truth: Sequence[LabelledBox]) -> list[tuple[str, Head]]:
    """Heads matched to an annotated head (IoU >= 0.5, best head score first, each once)."""
    if not heads or not truth:
        return []
    ious = box_iou(
        np.array([h.box for h in heads], dtype=np.float64),
        np.array([t.box for t in truth], dtype=np.float64),
    )
    taken: set[int] = set()
    pairs = []
    for i in sorted(range(len(heads)), key=lambda k: -heads[k].score):
        free = [j for j in np.argsort(-ious[i]).tolist() if j not in taken]
        if free and ious[i, free[0]] >= MATCH_IOU:
            taken.add(free[0])
            pairs.append((truth[free[0]].label, heads[i]))
    return pairs


@dataclass
class ValResult:
    """What the val pictures gave, per method and label, plus costs."""

    tallies: dict[str, dict[str, Tally]]
    # Heads of each class found by a head box of either class, per head-score floor.
    head_found: dict[tuple[float, str], Tally]
    # On the same boxes: (true class, "detector" or "classifier", its verdict) -> heads.
    same_boxes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    pictures: int = 0
    ms_detector: list[float] = field(default_factory=list)
    ms_classifier: list[float] = field(default_factory=list)
    heads_per_picture: list[int] = field(default_factory=list)


#: The detector alone, and the combined decision with each way to make its confidence.
METHODS: Final = ("detector", *(f"combined {c}" for c in CONFIDENCES))


def run_val(
    baseline: Detector, detector: Detector, classifier: HeadClassifier, data: Path, floor: float
) -> ValResult:
    """Both decisions over the val pictures of ``data``."""
    dataset = load_dataset(data)
    result = ValResult(
        tallies={m: {label: Tally() for label in HEAD_CLASSES} for m in METHODS},
        head_found={(f, c): Tally() for f in (floor, 0.25, 0.5) for c in HEAD_CLASSES},
    )
    for sample in dataset.samples:
        if split_of(SOURCE, sample.image_path.stem) != "val":
            continue
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            print(f"warning: cannot decode {sample.image_path}: skipped", file=sys.stderr)
            continue
        frame = np.asarray(pixels, dtype=np.uint8)
        height, width = frame.shape[:2]
        truth = [b for b in sample.boxes if b.label in HEAD_CLASSES]
        alone = baseline.detect(frame)
        started = time.perf_counter()
        found = detector.detect(frame)
        result.ms_detector.append((time.perf_counter() - started) * 1000.0)
        heads = decide(classifier, frame, found, floor)
        result.ms_classifier.append(classifier.last_ms)
        result.heads_per_picture.append(len(heads))
        for label, head in same_boxes(heads, truth):
            result.same_boxes[(label, "detector", head.detector_label)] += 1
            result.same_boxes[(label, "classifier", head.label or "no head")] += 1
        per_method = {"detector": alone}
        per_method.update({f"combined {c}": as_detections(heads, c) for c in CONFIDENCES})
        for method, detections in per_method.items():
            for label in HEAD_CLASSES:
                result.tallies[method][label].add(detections, truth, label, width, height)
        for (head_floor, label), tally in result.head_found.items():
            of_class = [LabelledBox("head", t.box) for t in truth if t.label == label]
            boxes = [
                Detection("head", -1, score, box) for box, score, _ in heads_of(found, head_floor)
            ]
            tally.add(boxes, of_class, "head", width, height)
        result.pictures += 1
    return result


# --------------------------------------------------------------------------- the video


@dataclass
class VideoResult:
    """Head boxes on the sampled video frames and how each way labels them."""

    frames: int = 0
    frames_with_head: dict[float, int] = field(default_factory=dict)
    heads: dict[float, int] = field(default_factory=dict)
    detector_bare: dict[float, int] = field(default_factory=dict)
    classifier_bare: dict[float, int] = field(default_factory=dict)
    classifier_other: dict[float, int] = field(default_factory=dict)  # called no head
    # Bare decisions that pass each way's operating threshold.
    detector_alerts: int = 0
    combined_alerts: dict[float, int] = field(default_factory=dict)
    ms_detector: list[float] = field(default_factory=list)
    ms_classifier: list[float] = field(default_factory=list)
    tiles: list[UInt8Array] = field(default_factory=list)


def _tile(frame: UInt8Array, head: Head) -> UInt8Array:
    """A 96 px crop of a head with both verdicts written on it (for the contact sheet)."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = head.box
    crop = crop_face(frame, (x1 * width, y1 * height, x2 * width, y2 * height), size=96, margin=0.3)
    tile: Any = crop.copy()
    side = "B" if head.detector_label == BARE else "C"
    text = f"{head.score:.2f}{side} b{head.p_bare:.2f} o{head.p_other:.2f}"
    cv2.rectangle(tile, (0, 84), (96, 96), (0, 0, 0), -1)
    cv2.putText(tile, text, (1, 94), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (255, 255, 255), 1)
    return np.asarray(tile, dtype=np.uint8)


def run_video(
    detector: Detector,
    classifier: HeadClassifier,
    video: Path,
    *,
    every: int,
    floor: float,
    alert_thresholds: Sequence[float],
    confidence: str = DEFAULT_CONFIDENCE,
) -> VideoResult:
    """Both ways on every ``every``-th frame of ``video``."""
    capture = cv2.VideoCapture(str(video))
    if not capture.isOpened():
        raise SystemExit(f"error: {video}: cannot open")
    result = VideoResult(
        frames_with_head=dict.fromkeys(VIDEO_FLOORS, 0),
        heads=dict.fromkeys(VIDEO_FLOORS, 0),
        detector_bare=dict.fromkeys(VIDEO_FLOORS, 0),
        classifier_bare=dict.fromkeys(VIDEO_FLOORS, 0),
        classifier_other=dict.fromkeys(VIDEO_FLOORS, 0),
        combined_alerts=dict.fromkeys(alert_thresholds, 0),
    )
    index = -1
    try:
        while True:
            ok, pixels = capture.read()
            if not ok:
                break
            index += 1
            if index % every:
                continue
            frame = np.asarray(pixels, dtype=np.uint8)
            started = time.perf_counter()
            found = detector.detect(frame)
            result.ms_detector.append((time.perf_counter() - started) * 1000.0)
            heads = decide(classifier, frame, found, floor)
            result.ms_classifier.append(classifier.last_ms)
            result.frames += 1
            result.detector_alerts += sum(
                d.label == BARE and d.confidence >= SHIPPED_BARE_THRESHOLD for d in found
            )
            for threshold in alert_thresholds:
                result.combined_alerts[threshold] += sum(
                    d.label == BARE and d.confidence >= threshold
                    for d in as_detections(heads, confidence)
                )
            for head_floor in VIDEO_FLOORS:
                counted = [h for h in heads if h.score >= head_floor]
                result.frames_with_head[head_floor] += bool(counted)
                result.heads[head_floor] += len(counted)
                result.detector_bare[head_floor] += sum(h.detector_label == BARE for h in counted)
                result.classifier_bare[head_floor] += sum(h.label == BARE for h in counted)
                result.classifier_other[head_floor] += sum(h.label is None for h in counted)
            result.tiles.extend(_tile(frame, h) for h in heads if h.score >= VIDEO_FLOORS[0])
    finally:
        capture.release()
    return result


# --------------------------------------------------------------------------- report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pr(point: dict[str, Any]) -> str:
    return f"{_fmt(point['precision'])}/{_fmt(point['recall'])}"


def report_val(result: ValResult, floor: float, main: str) -> dict[str, Any]:
    """Print the val tables (``main``: the combined method of the size table); return them."""
    bare = {m: result.tallies[m][BARE] for m in METHODS}
    covered = {m: result.tallies[m][COVERED] for m in METHODS}
    print(
        f"val pictures {result.pictures}; heads {bare['detector'].gt + covered['detector'].gt} "
        f"({bare['detector'].gt} bare); match IoU >= {MATCH_IOU}"
    )
    print(
        "\nheads found by a head box of either class (the combined decision's ceiling), "
        "by the detector's head score floor:"
    )
    found: dict[str, Any] = {}
    for (head_floor, label), tally in result.head_found.items():
        point = tally.at(head_floor)
        found[f"{label}>={head_floor}"] = point
        sizes = "  ".join(f"{k} {v}" for k, v in point["recall_by_size"].items())
        print(f"  {label:>12} >= {head_floor:.2f}: recall {_fmt(point['recall'])}   {sizes}")

    print(
        f"\nthe same head boxes (score >= {floor}, IoU >= {MATCH_IOU} with an annotated head), "
        "decided by the detector's class and by the classifier:"
    )
    same: dict[str, dict[str, int]] = {}
    for truth in HEAD_CLASSES:
        for judge in ("detector", "classifier"):
            verdicts = {
                verdict: n
                for (t, j, verdict), n in result.same_boxes.items()
                if (t, j) == (truth, judge)
            }
            same[f"{truth} by {judge}"] = verdicts
            total = sum(verdicts.values())
            right = verdicts.get(truth, 0)
            print(
                f"  {truth:>12} heads, {judge:>10}: {right}/{total} right "
                f"({_share(right, total)}); "
                + ", ".join(f"{v} {n}" for v, n in sorted(verdicts.items()))
            )

    combined = [m for m in METHODS if m != "detector"]
    print(
        "\nhead_bare precision/recall by threshold (detector: its confidence; combined: the "
        "detector's head score s and the classifier's P(bare) p as named):"
    )
    print(f"  {'threshold':>9}" + "".join(f"{m:>22}" for m in METHODS) + f"   covered, {main}")
    sweep = []
    for threshold in THRESHOLDS:
        row = {m: bare[m].at(threshold) for m in METHODS}
        row_covered = {m: covered[m].at(threshold) for m in ("detector", main)}
        sweep.append({"threshold": threshold, "bare": row, "covered": row_covered})
        print(
            f"  {threshold:>9.2f}"
            + "".join(f"{_pr(row[m]):>22}" for m in METHODS)
            + f"   {_pr(row_covered[main])} (detector {_pr(row_covered['detector'])})"
        )
    aps = {m: {label: result.tallies[m][label].ap() for label in HEAD_CLASSES} for m in METHODS}
    print("\nAP50 (head_bare / head_covered):")
    for method in METHODS:
        print(f"  {method:>20}: {aps[method][BARE]:.3f} / {aps[method][COVERED]:.3f}")
    targets: dict[str, Any] = {}
    print("\nlowest threshold reaching a head_bare precision:")
    for precision in (0.75, 0.85):
        for method in ("detector", *combined):
            best = bare[method].lowest_at_precision(precision)
            targets[f"{method}@{precision}"] = best
            where = (
                "never"
                if best is None
                else f"{best['threshold']:.2f}: precision {_fmt(best['precision'])}, "
                f"recall {_fmt(best['recall'])}"
            )
            print(f"  {method:>20} >= {precision}: {where}")

    print(
        "\nhead_bare recall / precision by head size (recall: ground-truth size; precision: "
        "the detection's size):"
    )
    by_size: dict[str, Any] = {}
    picks = [("detector", SHIPPED_BARE_THRESHOLD), (main, SHIPPED_BARE_THRESHOLD)]
    target = targets[f"{main}@0.75"]
    if target is not None and target["threshold"] != SHIPPED_BARE_THRESHOLD:
        picks.append((main, target["threshold"]))
    print("  " + " " * 28 + "".join(f"{name:>10}" for name in SIZE_BUCKETS))
    for method, threshold in picks:
        point = bare[method].at(threshold)
        by_size[f"{method}@{threshold}"] = point
        print(
            f"  {method + ' @' + str(threshold):>26} R"
            + "".join(f"{point['recall_by_size'][n]:>10}" for n in SIZE_BUCKETS)
        )
        print(
            f"  {'':>26} P" + "".join(f"{point['precision_by_size'][n]:>10}" for n in SIZE_BUCKETS)
        )
    detector_ms = float(np.mean(result.ms_detector))
    classifier_ms = float(np.mean(result.ms_classifier))
    print(
        f"\ncost per val picture, one thread: detector {detector_ms:.1f} ms, classifier "
        f"{classifier_ms:.2f} ms ({np.mean(result.heads_per_picture):.1f} heads >= {floor})"
    )
    return {
        "pictures": result.pictures,
        "heads_found": found,
        "same_boxes": same,
        "sweep": sweep,
        "ap50": aps,
        "lowest_threshold_at_precision": targets,
        "by_size": by_size,
        "ms_per_picture": {"detector": detector_ms, "classifier": classifier_ms},
    }


def report_video(result: VideoResult, every: int) -> dict[str, Any]:
    """Print the video counts; return them."""
    print(
        f"\nvideo (PROXY for transfer, unlabelled; everyone in it bareheaded): {result.frames} "
        f"frames, every {every}th"
    )
    for head_floor in VIDEO_FLOORS:
        heads = result.heads[head_floor]
        print(
            f"  head boxes with score >= {head_floor}: {heads} in "
            f"{result.frames_with_head[head_floor]} frames; called bare by the detector "
            f"{result.detector_bare[head_floor]} "
            f"({_share(result.detector_bare[head_floor], heads)}), by the classifier "
            f"{result.classifier_bare[head_floor]} "
            f"({_share(result.classifier_bare[head_floor], heads)}; no head "
            f"{result.classifier_other[head_floor]})"
        )
    print(
        f"  bare decisions past the operating threshold: detector (head_bare >= "
        f"{SHIPPED_BARE_THRESHOLD}) {result.detector_alerts}; combined "
        + ", ".join(f">= {t}: {n}" for t, n in result.combined_alerts.items())
    )
    detector_ms = float(np.mean(result.ms_detector)) if result.ms_detector else 0.0
    classifier_ms = float(np.mean(result.ms_classifier)) if result.ms_classifier else 0.0
    print(
        f"  cost per 768x432 frame, one thread: detector {detector_ms:.1f} ms, classifier "
        f"{classifier_ms:.2f} ms"
    )
    return {
        "frames": result.frames,
        "every": every,
        "frames_with_head": result.frames_with_head,
        "heads": result.heads,
        "detector_bare": result.detector_bare,
        "classifier_bare": result.classifier_bare,
        "classifier_other": result.classifier_other,
        "detector_alerts": result.detector_alerts,
        "combined_alerts": result.combined_alerts,
        "ms_per_frame": {"detector": detector_ms, "classifier": classifier_ms},
    }


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.2f}" if whole else "-"


def _sheet(tiles: Sequence[UInt8Array], path: Path, columns: int = 12) -> None:
    """A contact sheet of the video's head crops."""
    if not tiles:
        return
    blank = np.zeros_like(tiles[0])
    padded = list(tiles) + [blank] * (-len(tiles) % columns)
    rows = [np.hstack(padded[i : i + columns]) for i in range(0, len(padded), columns)]
    cv2.imwrite(str(path), np.vstack(rows))


def main(argv: list[str] | None = None) -> int:
    """Evaluate both ways and print; the exit code is 0 when it ran."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="model package")
    ap.add_argument("--classifier", type=Path, default=DEFAULT_OUT, help="head classifier folder")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="headcover folder (YOLO)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="bareheaded video")
    ap.add_argument("--video-every", type=int, default=10, help="sample every N-th frame")
    ap.add_argument("--no-video", action="store_true", help="skip the video")
    ap.add_argument("--floor", type=float, default=HEAD_FLOOR, help="head score floor")
    ap.add_argument(
        "--confidence",
        choices=sorted(CONFIDENCES),
        default=DEFAULT_CONFIDENCE,
        help="the combined decision's confidence from head score s and class probability p",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--sheet", type=Path, default=None, help="write the video's head crops here")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    package = load_model_package(args.package)
    # model eval's settings: the whole precision-recall curve for AP.
    baseline = Detector(package, stages=False, conf_threshold=0.001, max_detections=300)
    detector = Detector(package, stages=False, conf_threshold=args.floor)
    try:
        classifier = HeadClassifier(args.classifier)
    except ModelError as exc:
        raise SystemExit(f"error: {exc} (train one: scripts/train/head_classifier.py)") from exc
    print(
        f"{package.name} {package.version}; classifier {classifier.path} "
        f"({classifier.size} px, margin {classifier.margin})"
    )
    val = run_val(baseline, detector, classifier, args.data, args.floor)
    main_method = f"combined {args.confidence}"
    figures: dict[str, Any] = {"val": report_val(val, args.floor, main_method)}
    if not args.no_video:
        target = figures["val"]["lowest_threshold_at_precision"][f"{main_method}@0.75"]
        thresholds = sorted({SHIPPED_BARE_THRESHOLD} | ({target["threshold"]} if target else set()))
        video = run_video(
            detector,
            classifier,
            args.video,
            every=args.video_every,
            floor=args.floor,
            alert_thresholds=thresholds,
            confidence=args.confidence,
        )
        figures["video"] = report_video(video, args.video_every)
        if args.sheet is not None:
            _sheet(video.tiles, args.sheet)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
