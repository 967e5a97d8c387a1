"""Evaluation stage: run the agent's own detector over a labelled dataset and score it.

Why one file (about 640 lines): the report's records, the matching and metrics that fill
them, the run over the dataset and the report's text are one measurement, and a new figure
(recall by object size, the stage a report scores) changes all four together. The metrics
are small pure functions, tested on their own (tests/test_evaluate.py); apart, they would
be a module that only this one imports.

Every image goes through :meth:`agent.detect.detector.Detector.detect_batch`, the path the agent
runs on cameras (letterbox, onnxruntime or OpenVINO, NMS), so the figures are the box's figures,
not a training framework's. Build the detector with a very low ``conf_threshold`` (0.001):
AP needs the whole precision-recall curve; precision and recall at the operating point are
then read off at each class's threshold.

Matching, per image and class: detections in descending confidence each take the
highest-IoU ground-truth box of the same class not yet taken, if that IoU is at least
``iou``; otherwise they are false positives. Ground truth left untaken is a false negative.
Because matching goes in confidence order, counting only the detections at or above a
threshold gives exactly the result of matching those alone.

AP is the all-point interpolated area under the precision-recall curve (Pascal VOC since
2010; ultralytics' validator samples the same curve at 101 recall points by default, so its
figures differ in the third decimal). Detections with equal confidence form one point of the
curve, so the result does not depend on the order of tied detections.

Only the dataset's ``labelled_classes`` are scored: a face dataset says nothing about heads,
so head detections on it are neither true nor false positives.

Recall by object size shows where a detector loses objects, which one recall per class
hides: kitchen cameras see heads 20-80 px tall, a face dataset's close-ups are ten times
that. Each ground-truth box is put in a bucket by its size, sqrt(w * h) in the pixels of
the image as stored (not of the model's input, nor of a tile), with edges at
``SIZE_EDGES`` (16, 32, 64, 128 px; a lower edge belongs to its bucket), and counts as
found when the detection that took it in the matching reaches the class's threshold. So
per class the buckets' found boxes add up to its TP at the threshold.

Every figure belongs to one *stage*: the detector now; a face stage (face finder, then a
mask classifier per face) will be scored by the same matching on the same dataset, and
its report carries its own ``stage`` name.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.datasets import Dataset, LabelledBox, Sample, labels_of_source
from agent.detect.detector import Detector
from agent.detect.views import View
from agent.records import Detection
from agent.rules.engine import DEFAULT_MIN_CONFIDENCE

logger = logging.getLogger(__name__)

DEFAULT_IOU: Final = 0.5
DEFAULT_BATCH: Final = 8
#: Threshold for a label the manifest gives none: the one the rule engine applies then.
DEFAULT_THRESHOLD: Final = DEFAULT_MIN_CONFIDENCE

Progress = Callable[[int, int], None]  # (images done, images in all)

#: The stage a report scores when none is named: the agent's object detector.
DETECTOR_STAGE: Final = "detector"
#: Object-size bucket edges in pixels (sqrt of a ground-truth box's area in the image).
SIZE_EDGES: Final = (16, 32, 64, 128)
#: Bucket names, smallest first: one more than the edges. Stable keys of ``size_buckets``.
SIZE_BUCKETS: Final = ("<16", "16-32", "32-64", "64-128", ">=128")


def box_size(box: tuple[float, float, float, float], width: int, height: int) -> float:
    """sqrt(w * h) in pixels of a box normalised to 0..1 on a ``width`` x ``height`` image.

    Rounded to 0.01 px, so a box stored normalised lands in the bucket its pixel size says:
    YOLO labels keep 6 decimals, which makes a 16 px tall box on a 120 px image 15.99996 px.
    """
    w = (box[2] - box[0]) * width
    h = (box[3] - box[1]) * height
    return round(math.sqrt(max(0.0, w) * max(0.0, h)), 2)


def size_bucket(size: float) -> str:
    """The name of the bucket of an object ``size`` pixels big (lower edges inclusive)."""
    return SIZE_BUCKETS[bisect.bisect_right(SIZE_EDGES, size)]


@dataclass(frozen=True)
class SweepPoint:
    """Precision and recall of one class if its threshold were ``threshold``."""

    threshold: float
    tp: int
    fp: int
    precision: float | None  # None: no detection at this threshold
    recall: float | None  # None: no ground truth


#: Thresholds the sweep tries: 0.25 (the agent's detection floor) to 0.90 in steps of 0.05.
SWEEP_THRESHOLDS: Final = tuple(round(0.05 * i, 2) for i in range(5, 19))
#: Default precision a violation class's threshold must reach in :func:`suggest_threshold`.
DEFAULT_PRECISION_TARGET: Final = 0.75


@dataclass(frozen=True)
class ClassResult:
    """Scores of one agent class; ``None`` where a ratio has nothing to divide by."""

    label: str
    threshold: float
    gt: int  # ground-truth boxes
    detections: int  # detections at any confidence the detector returned
    tp: int  # at the threshold
    fp: int
    fn: int
    precision: float | None  # None: no detection at the threshold
    recall: float | None  # None: no ground truth
    ap: float | None  # None: no ground truth
    # The threshold with the best F0.5 (precision weighs twice recall: an alert reaches
    # regulators and parents) among detections at CALIBRATION_FLOOR or more; None: no TP.
    calibrated: float | None = None
    # Precision and recall at each of SWEEP_THRESHOLDS, to choose a threshold.
    sweep: tuple[SweepPoint, ...] = ()

    def suggest_threshold(self, precision_target: float) -> float | None:
        """The lowest swept threshold whose precision reaches ``precision_target``.

        None when no swept threshold does (or the class has no detections there).
        """
        for point in self.sweep:
            if point.precision is not None and point.precision >= precision_target:
                return point.threshold
        return None


@dataclass(frozen=True)
class SizeBucket:
    """Recall of one class on the ground-truth boxes of one size bucket, at its threshold."""

    bucket: str  # one of SIZE_BUCKETS
    gt: int
    tp: int  # boxes taken by a detection at or above the class's threshold
    recall: float | None  # None: no ground truth of this size


@dataclass(frozen=True)
class ViolationResult:
    """Pooled counts of the labels that are one violation type, each at its own threshold."""

    violation: str
    labels: tuple[str, ...]
    gt: int
    tp: int
    fp: int
    fn: int
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class EvalReport:
    """The result of :func:`evaluate`."""

    dataset: str
    layout: str
    model: str
    backend: str
    images: int
    iou: float
    classes: tuple[ClassResult, ...]
    violations: tuple[ViolationResult, ...]
    seconds: float  # the whole run: decoding, inference, matching
    detect_seconds: float  # inside Detector.detect_batch: pre-processing, inference, NMS
    batch: int
    problems: tuple[str, ...] = field(default=())
    view: str = "whole"  # or "2x2 tiles, overlap 0.15" (Detector.detect_views)
    # Per class (the classes' order): recall in each of SIZE_BUCKETS, smallest first.
    size_buckets: Mapping[str, tuple[SizeBucket, ...]] = field(default_factory=dict)
    stage: str = DETECTOR_STAGE  # what was scored (see the module docstring)

    @property
    def map(self) -> float | None:
        """Mean AP over the classes that have ground truth; None when none has."""
        aps = [c.ap for c in self.classes if c.ap is not None]
        return sum(aps) / len(aps) if aps else None

    @property
    def images_per_s(self) -> float:
        """Images per second over the whole run, decoding included."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def ms_per_image(self) -> float:
        """Milliseconds of detection per image (pre-processing, inference, NMS)."""
        return 1000.0 * self.detect_seconds / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: fields plus ``map``, ``images_per_s``, ``ms_per_image``.

        ``size_buckets`` is ``{class: {bucket: {"gt", "tp", "recall"}}}`` with every bucket
        of SIZE_BUCKETS present, and ``size_edges_px`` gives the edges.
        """
        data: dict[str, Any] = _plain(asdict(self))
        data["size_buckets"] = {
            label: {b.bucket: {"gt": b.gt, "tp": b.tp, "recall": b.recall} for b in buckets}
            for label, buckets in self.size_buckets.items()
        }
        data["size_edges_px"] = list(SIZE_EDGES)
        data["map"] = self.map
        data["images_per_s"] = self.images_per_s
        data["ms_per_image"] = self.ms_per_image
        return data


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively, so ``to_dict`` equals its own JSON round trip."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- metrics


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def box_iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of every box in ``a`` ([N, 4] x1 y1 x2 y2) with every box in ``b`` ([M, 4])."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_image(
    detections: Sequence[Detection], truth: Sequence[LabelledBox], label: str, *, iou: float
) -> list[tuple[float, bool]]:
    """Match one image's detections of ``label`` to its ground truth of ``label``.

    Returns (confidence, is true positive) per detection of the class, best first.
    """
    return match_truth(detections, truth, label, iou=iou)[0]


def match_truth(
    detections: Sequence[Detection], truth: Sequence[LabelledBox], label: str, *, iou: float
) -> tuple[list[tuple[float, bool]], list[float | None]]:
    """:func:`match_image`, plus for each ground-truth box of ``label`` (in ``truth``'s order)
    the confidence of the detection that took it, None when none did."""
    dets = sorted((d for d in detections if d.label == label), key=lambda d: -d.confidence)
    gts = [t.box for t in truth if t.label == label]
    taken_by: list[float | None] = [None] * len(gts)
    if not dets:
        return [], taken_by
    if not gts:
        return [(d.confidence, False) for d in dets], taken_by
    ious = box_iou(
        np.array([d.box for d in dets], dtype=np.float64), np.array(gts, dtype=np.float64)
    )
    taken = np.zeros(len(gts), dtype=bool)
    out: list[tuple[float, bool]] = []
    for i, det in enumerate(dets):
        candidates = np.flatnonzero(~taken & (ious[i] >= iou))
        if candidates.size:
            best = int(candidates[np.argmax(ious[i, candidates])])
            taken[best] = True
            taken_by[best] = det.confidence
        out.append((det.confidence, bool(candidates.size)))
    return out, taken_by


def size_recall(
    found: Sequence[tuple[float, float | None]], threshold: float
) -> tuple[SizeBucket, ...]:
    """Recall per size bucket of ground-truth boxes given as (size in px, confidence of the
    detection that took it or None), counting a box found at ``threshold`` or above."""
    gt = [0] * len(SIZE_BUCKETS)
    tp = [0] * len(SIZE_BUCKETS)
    for size, confidence in found:
        i = bisect.bisect_right(SIZE_EDGES, size)
        gt[i] += 1
        tp[i] += confidence is not None and confidence >= threshold
    return tuple(
        SizeBucket(name, g, t, _ratio(t, g))
        for name, g, t in zip(SIZE_BUCKETS, gt, tp, strict=True)
    )


def average_precision(confidences: Sequence[float], hits: Sequence[bool], n_truth: int) -> float:
    """All-point interpolated AP of detections (confidence, true positive) against ``n_truth``.

    Tied confidences are one point of the curve. Returns 0.0 without detections.

    Raises:
        ValueError: ``n_truth`` is not positive, or the sequences differ in length.
    """
    if n_truth <= 0:
        raise ValueError(f"n_truth must be positive, not {n_truth}")
    if len(confidences) != len(hits):
        raise ValueError("confidences and hits differ in length")
    if not confidences:
        return 0.0
    conf = np.asarray(confidences, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    conf = conf[order]
    tp = np.cumsum(np.asarray(hits, dtype=np.float64)[order])
    fp = np.arange(1, len(conf) + 1, dtype=np.float64) - tp
    # One point per distinct confidence: the last detection of each run of equal values.
    last = np.flatnonzero(np.append(conf[1:] != conf[:-1], True))
    recall = tp[last] / n_truth
    precision = tp[last] / (tp[last] + fp[last])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.concatenate(([0.0], recall)))
    return float(np.sum(steps * envelope))


CALIBRATION_FLOOR: Final = 0.25  # the agent's default model.conf_threshold
CALIBRATION_BETA: Final = 0.5


def calibrate(
    matches: Sequence[tuple[float, bool]], gt: int, beta: float = CALIBRATION_BETA
) -> float | None:
    """The confidence threshold that maximises F-beta over ``matches`` (confidence, hit).

    Candidates are the confidences of true positives at CALIBRATION_FLOOR or above; the
    result is rounded down to 0.01 so it keeps the detection it was taken from.
    """
    if gt <= 0:
        return None
    best: tuple[float, float] | None = None  # (F, threshold)
    tp = fp = 0
    b2 = beta * beta
    for conf, hit in sorted(matches, key=lambda m: -m[0]):
        if conf < CALIBRATION_FLOOR:
            break
        tp, fp = tp + hit, fp + (not hit)
        if not hit:
            continue
        precision, recall = tp / (tp + fp), tp / gt
        score = (1 + b2) * precision * recall / (b2 * precision + recall)
        if best is None or score > best[0]:
            best = (score, conf)
    return None if best is None else math.floor(best[1] * 100) / 100


def sweep_thresholds(
    matches: Sequence[tuple[float, bool]],
    gt: int,
    thresholds: Sequence[float] = SWEEP_THRESHOLDS,
) -> tuple[SweepPoint, ...]:
    """Precision and recall of ``matches`` (confidence, hit) at each of ``thresholds``."""
    points = []
    for threshold in thresholds:
        tp = sum(1 for conf, hit in matches if hit and conf >= threshold)
        fp = sum(1 for conf, hit in matches if not hit and conf >= threshold)
        points.append(SweepPoint(threshold, tp, fp, _ratio(tp, tp + fp), _ratio(tp, gt)))
    return tuple(points)


def _class_result(
    label: str, threshold: float, matches: list[tuple[float, bool]], gt: int
) -> ClassResult:
    (at,) = sweep_thresholds(matches, gt, (threshold,))
    ap = average_precision([c for c, _ in matches], [h for _, h in matches], gt) if gt else None
    return ClassResult(
        label=label,
        threshold=threshold,
        gt=gt,
        detections=len(matches),
        tp=at.tp,
        fp=at.fp,
        fn=gt - at.tp,
        precision=at.precision,
        recall=at.recall,
        ap=ap,
        calibrated=calibrate(matches, gt),
        sweep=sweep_thresholds(matches, gt),
    )


def _violation_results(
    classes: Sequence[ClassResult], violations: Mapping[str, str]
) -> tuple[ViolationResult, ...]:
    by_label = {c.label: c for c in classes}
    kinds: dict[str, list[ClassResult]] = {}
    for label, kind in violations.items():
        if label in by_label:
            kinds.setdefault(kind, []).append(by_label[label])
    results = []
    for kind, members in kinds.items():
        tp = sum(c.tp for c in members)
        fp = sum(c.fp for c in members)
        gt = sum(c.gt for c in members)
        results.append(
            ViolationResult(
                violation=kind,
                labels=tuple(c.label for c in members),
                gt=gt,
                tp=tp,
                fp=fp,
                fn=gt - tp,
                precision=_ratio(tp, tp + fp),
                recall=_ratio(tp, gt),
            )
        )
    return tuple(sorted(results, key=lambda r: r.violation))


# --------------------------------------------------------------------------- the run


def _read(sample: Sample, problems: list[str]) -> npt.NDArray[np.uint8] | None:
    image = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
    if image is None:
        problems.append(f"{sample.image_path}: cannot decode the image; left out")
        return None
    if sample.image_size is not None:
        height, width = image.shape[:2]
        if (width, height) != sample.image_size:
            stated = f"{sample.image_size[0]}x{sample.image_size[1]}"
            problems.append(
                f"{sample.image_path}: image is {width}x{height}, its annotation says {stated}"
            )
    return np.asarray(image, dtype=np.uint8)


def evaluate(
    detector: Detector,
    dataset: Dataset,
    *,
    thresholds: Mapping[str, float],
    violations: Mapping[str, str],
    iou: float = DEFAULT_IOU,
    default_threshold: float = DEFAULT_THRESHOLD,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    view: View | None = None,
    stage: str = DETECTOR_STAGE,
    per_source: bool = True,
) -> EvalReport:
    """Detect on every image of ``dataset`` and score the dataset's labelled classes.

    ``thresholds`` gives each label's operating threshold (``default_threshold`` for labels
    it lacks); ``violations`` maps labels to violation types for the pooled figures. Images
    that cannot be decoded are left out and listed in the report's problems. ``view``
    (crop and tiles) is applied to every image as the agent applies a camera's. ``stage``
    names what the report scores (the detector; later also the face stage). With
    ``per_source`` (the default), a picture of the merged data set is scored only on the
    labels its source labels (:data:`~agent.detect.datasets.SOURCE_LABELS`): the faces in a
    hard-hat picture are unlabelled, and a face stage finds them all, so counting them as
    false positives would measure the labelling, not the model.

    Raises:
        ValueError: ``iou`` is not in (0, 1] or ``batch`` is below 1.
        ModelError: inference failed.
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], not {iou!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, not {batch!r}")
    labelled = dataset.labelled_classes
    problems = [str(p) for p in dataset.problems]
    missing = [label for label in labelled if label not in detector.labels]
    if missing:
        problems.append(f"the model has no class {', '.join(missing)}: their AP is 0")
    matches: dict[str, list[tuple[float, bool]]] = {label: [] for label in labelled}
    # Per ground-truth box: (size in px, confidence of the detection that took it or None).
    found: dict[str, list[tuple[float, float | None]]] = {label: [] for label in labelled}
    gt_counts = dict.fromkeys(labelled, 0)
    done = 0
    detect_seconds = 0.0
    started = time.perf_counter()
    samples = dataset.samples
    for start in range(0, len(samples), batch):
        part: list[tuple[Sample, npt.NDArray[np.uint8]]] = []
        for sample in samples[start : start + batch]:
            image = _read(sample, problems)
            if image is not None:
                part.append((sample, image))
        t0 = time.perf_counter()
        images = [image for _, image in part]
        results = (
            detector.detect_batch(images)
            if view is None
            else detector.detect_views(images, [view] * len(images))
        )
        detect_seconds += time.perf_counter() - t0
        for (sample, image), detections in zip(part, results, strict=True):
            height, width = image.shape[:2]
            scored = labels_of_source(sample.image_path.name) if per_source else None
            for label in labelled:
                if scored is not None and label not in scored:
                    continue
                sizes = [box_size(b.box, width, height) for b in sample.boxes if b.label == label]
                gt_counts[label] += len(sizes)
                dets, taken_by = match_truth(detections, sample.boxes, label, iou=iou)
                matches[label].extend(dets)
                found[label].extend(zip(sizes, taken_by, strict=True))
        done += len(part)
        if progress is not None:
            progress(min(start + batch, len(samples)), len(samples))
    seconds = time.perf_counter() - started
    classes = tuple(
        _class_result(label, thresholds.get(label, default_threshold), matches[label], gt)
        for label, gt in gt_counts.items()
    )
    size_buckets = {c.label: size_recall(found[c.label], c.threshold) for c in classes}
    package = detector.package
    report = EvalReport(
        dataset=str(dataset.root),
        layout=dataset.layout,
        model=f"{package.name} {package.version} {detector.variant.name}",
        backend=detector.backend_name,
        images=done,
        iou=iou,
        classes=classes,
        violations=_violation_results(classes, violations),
        seconds=seconds,
        detect_seconds=detect_seconds,
        batch=batch,
        problems=tuple(problems),
        view=_describe(view),
        size_buckets=size_buckets,
        stage=stage,
    )
    logger.info(
        "evaluated %s on %d images of %s in %.1f s", report.model, done, report.dataset, seconds
    )
    return report


def _describe(view: View | None) -> str:
    if view is None or view.is_whole:
        return "whole"
    parts = [f"{view.cols}x{view.rows} tiles, overlap {view.overlap:g}"]
    if view.crop != (0.0, 0.0, 1.0, 1.0):
        parts.append("crop " + ",".join(f"{v:g}" for v in view.crop))
    return "; ".join(parts)


# --------------------------------------------------------------------------- text output


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_report(report: EvalReport, *, max_problems: int = 10) -> str:
    """The report as text tables: per class, per violation type, timing, problems."""
    ap_name = "AP50" if abs(report.iou - 0.5) < 1e-9 else f"AP@{report.iou:.2f}"
    lines = [
        f"dataset  {report.dataset} ({report.layout}, {report.images} images)",
        f"model    {report.model} ({report.backend}), match at IoU >= {report.iou:.2f}"
        + ("" if report.view == "whole" else f", {report.view}"),
        "",
        f"{'class':<18} {'thresh':>6} {'gt':>6} {'tp':>6} {'fp':>6} {'fn':>6} "
        f"{'precision':>9} {'recall':>6} {ap_name:>7} {'F0.5 thr':>8}",
    ]
    for c in report.classes:
        lines.append(
            f"{c.label:<18} {c.threshold:>6.2f} {c.gt:>6} {c.tp:>6} {c.fp:>6} {c.fn:>6} "
            f"{_fmt(c.precision):>9} {_fmt(c.recall):>6} {_fmt(c.ap):>7} "
            f"{'-' if c.calibrated is None else f'{c.calibrated:.2f}':>8}"
        )
    scored = sum(1 for c in report.classes if c.ap is not None)
    lines.append(f"{'mean ' + ap_name + f' ({scored} classes)':<72} {_fmt(report.map):>7}")
    lines.append("")
    lines.extend(render_sizes(report))
    lines.append("")
    if report.violations:
        lines.append(
            f"{'violation':<12} {'labels':<26} {'gt':>6} {'tp':>6} {'fp':>6} {'fn':>6} "
            f"{'precision':>9} {'recall':>6}"
        )
        for v in report.violations:
            lines.append(
                f"{v.violation:<12} {','.join(v.labels):<26} {v.gt:>6} {v.tp:>6} {v.fp:>6} "
                f"{v.fn:>6} {_fmt(v.precision):>9} {_fmt(v.recall):>6}"
            )
    else:
        lines.append(
            "violation types: none scored (the manifest maps no labelled class to a violation)"
        )
    lines.append("")
    lines.append(
        f"{report.images} images in {report.seconds:.1f} s: {report.images_per_s:.1f} images/s; "
        f"detection {report.ms_per_image:.1f} ms/image (batch {report.batch})"
    )
    if report.problems:
        lines.append(f"problems ({len(report.problems)}):")
        lines.extend(f"  {p}" for p in report.problems[:max_problems])
        if len(report.problems) > max_problems:
            lines.append(f"  ... and {len(report.problems) - max_problems} more (see --json)")
    return "\n".join(lines)


def render_sizes(report: EvalReport) -> list[str]:
    """Lines of the recall-by-size table: per class, found/ground truth and recall per bucket."""
    edges = ", ".join(str(e) for e in SIZE_EDGES)
    lines = [
        f"recall by object size (stage {report.stage}) at the thresholds above: found/gt, recall",
        f"size: sqrt(w*h) of the ground-truth box in image pixels, buckets split at {edges} px",
        f"{'class':<18} " + " ".join(f"{name:>13}" for name in SIZE_BUCKETS),
    ]
    for label, buckets in report.size_buckets.items():
        cells = ("-" if b.recall is None else f"{b.tp}/{b.gt} {b.recall:.2f}" for b in buckets)
        lines.append(f"{label:<18} " + " ".join(f"{cell:>13}" for cell in cells))
    return lines


def render_sweep(report: EvalReport, *, precision_target: float) -> str:
    """Precision / recall per class at each swept threshold, and the suggested threshold.

    The suggestion is the lowest threshold whose precision reaches ``precision_target``:
    what the shipped manifest's violation thresholds are chosen by (MODEL_CARD.md).
    """
    classes = [c for c in report.classes if c.sweep]
    if not classes:
        return "threshold sweep: no class to sweep"
    steps = [p.threshold for p in classes[0].sweep]
    lines = [
        f"threshold sweep: precision / recall at each threshold; 'suggest' is the lowest "
        f"with precision >= {precision_target:.2f}",
        f"{'class':<18} {'now':>5} {'suggest':>7}  " + " ".join(f"{s:>9.2f}" for s in steps),
    ]
    for c in classes:
        suggested = c.suggest_threshold(precision_target)
        cells = " ".join(f"{_fmt2(p.precision)}/{_fmt2(p.recall):>4}".rjust(9) for p in c.sweep)
        lines.append(
            f"{c.label:<18} {c.threshold:>5.2f} "
            f"{'-' if suggested is None else f'{suggested:.2f}':>7}  {cells}"
        )
    return "\n".join(lines)


def _fmt2(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
