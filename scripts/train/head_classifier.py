#!/usr/bin/env python3
"""Train a head-crop classifier (covered / bare / no head) on the hard-hat proxy data; export ONNX.

An experiment for the model issue's bare-head target, not a stage of the agent: the default
detector's ``head_bare`` is precision 0.760 / recall 0.247 at 0.50 on val. This asks whether a
small CNN on the detector's head crops decides covered / bare better than the detector's own
class; ``scripts/train/eval_head.py`` compares the two end to end. **Answer: no** (below).

Data: ``../shared/datasets/headcover`` (YOLO txt, read by ``agent.detect.datasets.load_dataset``:
``helmet`` -> ``head_covered``, ``no_helmet`` -> ``head_bare``), the **train** split of
``split_of("headcover", stem)`` only (4,107 heads, 463 bare); the figures are on the val
split (753 heads, 77 bare), which neither the detector nor this classifier trained on.

Crops are :func:`agent.detect.face.crop_face` (a square around the box, ``--margin`` of
context per side), the face stage's crop, so the same code would crop at run time. The
annotated box is jittered to where the detector puts it (measured on val, the detector's head
boxes matched at IoU >= 0.3, 5-95 %: centre within +-0.10 of the head size, size 0.83-1.21x,
aspect 0.75-1.24x). Kitchen-camera augmentation as in ``scripts/train/mask_classifier.py``:
rotation, horizontal flip, low resolution, blur, low light and gamma, colour cast, sensor
noise, JPEG re-compression, grayscale. Bare heads are 11 % of the train heads: each step
samples crops with weight ``count(class) ** -balance`` (1.0: every class equally often).

A third class, ``other`` (``--negatives``, 2 a picture plus one per annotated person, see
:func:`negative_boxes`): a two-class classifier calls the detector's false heads (hands,
signs, machinery at head scores 0.05-0.2) "bare", since they show no helmet; with ``other``
90 % of val negatives are called no head, 3.9 % of val heads too.

The model is ``mask_classifier.build_model`` (four conv blocks and a linear layer, 64x64 RGB
in, softmax out; 98 k parameters at width 16). Measured (one thread on the shared 2-core
machine beside the detector's training job; "crops": val heads at their annotated boxes, AP
of P(bare) over the 753 heads, bare precision / recall at P(bare) >= 0.5; "end to end":
``eval_head.py``, head_bare AP50 and the lowest threshold with precision >= 0.75, where the
detector alone gives AP 0.419 and 0.760 / 0.247 at 0.50):

==========================================  =====  =====  ===========  =====  ================
recipe                                      train  crops  crops        end    end to end
                                                   AP     P / R @0.5   AP     P >= 0.75
==========================================  =====  =====  ===========  =====  ================
width 16, 24 epochs, 2 classes              159 s  0.942  0.706/0.935  0.392  0.760/0.247 @.50
width 24, 24 epochs, 2 classes              300 s  0.937  0.720/0.935  -      -
width 16, 24 epochs, 3 classes (default)    140 s  0.921  0.810/0.831  0.408  0.769/0.260 @.45
the same, margin 0.35                       130 s  0.909  0.808/0.818  0.398  0.857/0.234 @.50
==========================================  =====  =====  ===========  =====  ================

Why it does not help: on the heads the detector does box (either class, score >= 0.05, IoU
>= 0.5), its own class is already right for 44 of 49 bare and 569 of 577 covered heads (the
classifier: 45 of 49, 554 of 577). The bare heads are lost before any decision: only 49 of
77 get a head box at any score >= 0.05, 21 at >= 0.50, and the combined confidence needs the
detector's head score to reject false heads. Deterministic: fixed seeds, one process, the
same thread count give the same weights.

Run it from ``.venv-train`` (CPU, one thread, under 3 minutes)::

    nice .venv-train/bin/python scripts/train/head_classifier.py --out models/candidates/head

It writes ``head_classifier.onnx`` (opset 17, dynamic batch, input ``crops`` NCHW float32
RGB 0..1, output ``probabilities`` over ``covered``, ``bare``, ``other``) and
``head_classifier.json`` (format ``mclz-head/1``: labels, input size, margin, sha256, recipe,
val figures). Not for ``models/default``: nothing in the agent reads it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from mask_classifier import (  # noqa: E402 - next to this script: the same model and export
    Recipe,
    _sha256,
    build_model,
    camera_degrade,
    export,
    predict,
)

from agent.detect.datasets import load_dataset, split_of  # noqa: E402
from agent.detect.face import crop_face, crops_to_tensor  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "headcover"
DEFAULT_OUT = REPO / "models" / "candidates" / "head"
SOURCE: Final = "headcover"  # split_of's source name, as in scripts/train/prepare_data.py

#: Classifier classes, in output order: a head's two, and ``other`` for a crop that is no
#: head (trained with ``--negatives`` > 0; see :func:`negative_boxes`).
HEAD_LABELS: Final = ("covered", "bare", "other")
COVERED: Final = HEAD_LABELS.index("covered")
BARE: Final = HEAD_LABELS.index("bare")
OTHER: Final = HEAD_LABELS.index("other")
#: Agent label -> classifier class.
AGENT_TO_HEAD: Final = {"head_covered": COVERED, "head_bare": BARE}
PERSONS: Final = frozenset({"person_uniform", "person_no_uniform"})
#: No-head crops per picture, besides one per annotated person.
DEFAULT_NEGATIVES: Final = 2
CLASSIFIER_FILE: Final = "head_classifier.onnx"
META_FILE: Final = "head_classifier.json"
META_FORMAT: Final = "mclz-head/1"
#: Head size buckets (sqrt(w * h) of the annotated box, picture pixels), as ``model eval``.
BUCKETS: Final = ((0.0, 16.0, "<16"), (16.0, 32.0, "16-32"), (32.0, 64.0, "32-64"))
BUCKETS_LARGE: Final = ((64.0, 128.0, "64-128"), (128.0, math.inf, ">=128"))
#: Training heads are kept as patches of this size around the head (memory: 4,107 heads of
#: 160x160x3 are 315 MB, the decoded pictures 2.5 GB), with this much context per side: room
#: for a crop of margin 0.4 around a box jittered 1.22x larger and 1.3x taller.
PATCH: Final = 160
PATCH_MARGIN: Final = 0.9

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]


def bucket_name(size: float) -> str:
    """``<16``, ``16-32``, ``32-64``, ``64-128`` or ``>=128`` for a head ``size`` px big."""
    return next(name for low, high, name in (*BUCKETS, *BUCKETS_LARGE) if low <= size < high)


@dataclass(frozen=True)
class Head:
    """One crop, an annotated head or a negative: its source (a patch or a whole picture),
    its box there, its class."""

    patch: int  # index into the patch list
    box: Box  # in the patch's pixels
    label: int  # index into HEAD_LABELS
    size: float  # sqrt(w * h) of the box in picture pixels


# --------------------------------------------------------------------------- data


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (a negative may not hold much of a head)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller if smaller > 0 else 0.0


def negative_boxes(
    heads: list[Box],
    persons: list[Box],
    size: tuple[int, int],
    rng: np.random.Generator,
    count: int,
) -> list[Box]:
    """Boxes of a picture that hold no annotated head: what the detector's false heads look like.

    ``count`` anywhere in the picture, the size of one of its heads x 0.6-1.6, plus one per
    annotated person inside the person's box below the head (shoulders, hands, tools: the
    detector's false heads on val are mostly such parts, besides unlabelled heads). None may
    cover over 10 % of a head, nor a head over 10 % of it. Heads the annotators skipped are
    not known: a few negatives show one.
    """
    width, height = size
    sizes = [math.sqrt((b[2] - b[0]) * (b[3] - b[1])) for b in heads]
    wanted: list[tuple[float, float, float, float]] = []  # x range, y range to draw from
    wanted += [(0.0, float(width), 0.0, float(height))] * count
    wanted += [(p[0], p[2], p[1] + 0.2 * (p[3] - p[1]), p[3]) for p in persons]
    boxes: list[Box] = []
    for x0, x1, y0, y1 in wanted:
        for _ in range(10):
            side = float(rng.choice(sizes)) * rng.uniform(0.6, 1.6)
            aspect = rng.uniform(0.8, 1.25)
            w, h = side / math.sqrt(aspect), side * math.sqrt(aspect)
            cx, cy = rng.uniform(x0, max(x0, x1)), rng.uniform(y0, max(y0, y1))
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            inside = box[0] >= 0 and box[1] >= 0 and box[2] <= width and box[3] <= height
            if inside and all(_overlap(box, head) < 0.1 for head in heads):
                boxes.append(box)
                break
    return boxes


def _pixels(box: Box, width: int, height: int) -> Box:
    return (box[0] * width, box[1] * height, box[2] * width, box[3] * height)


def load_heads(
    data: Path, *, negatives: int, seed: int = 0
) -> tuple[list[Image], list[Head], list[Image], list[Head]]:
    """Train patches and crops, val pictures and crops, from a headcover folder.

    Crops are the annotated heads and, with ``negatives`` > 0, :func:`negative_boxes` of the
    same pictures (class ``other``). A train crop is kept as a :data:`PATCH`-pixel square
    around it (jitter and rotation stay inside it); a val crop keeps its whole picture, so it
    is cut exactly as at run time.
    """
    dataset = load_dataset(data)
    rng = np.random.default_rng(seed)
    patches: list[Image] = []
    train: list[Head] = []
    pictures: list[Image] = []
    val: list[Head] = []
    for sample in dataset.samples:
        heads = [b for b in sample.boxes if b.label in AGENT_TO_HEAD]
        if not heads:
            continue
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            print(f"warning: cannot decode {sample.image_path}: skipped", file=sys.stderr)
            continue
        image = np.asarray(pixels, dtype=np.uint8)
        height, width = image.shape[:2]
        crops = [(_pixels(b.box, width, height), AGENT_TO_HEAD[b.label]) for b in heads]
        if negatives > 0:
            persons = [_pixels(b.box, width, height) for b in sample.boxes if b.label in PERSONS]
            found = negative_boxes([c[0] for c in crops], persons, (width, height), rng, negatives)
            crops += [(box, OTHER) for box in found]
        is_val = split_of(SOURCE, sample.image_path.stem) == "val"
        if is_val:
            pictures.append(image)
        for box, label in crops:
            size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            if is_val:
                val.append(Head(len(pictures) - 1, box, label, size))
                continue
            # The patch's geometry is crop_face's: a square of the longer side x (1 + 2 margin).
            side = max(box[2] - box[0], box[3] - box[1], 1.0) * (1.0 + 2.0 * PATCH_MARGIN)
            scale = PATCH / side
            w, h = (box[2] - box[0]) * scale, (box[3] - box[1]) * scale
            centre = PATCH / 2.0
            patches.append(crop_face(image, box, size=PATCH, margin=PATCH_MARGIN))
            train.append(
                Head(
                    len(patches) - 1,
                    (centre - w / 2, centre - h / 2, centre + w / 2, centre + h / 2),
                    label,
                    size,
                )
            )
    return patches, train, pictures, val


# --------------------------------------------------------------------------- augmentation


def _jitter(box: Box, rng: np.random.Generator) -> Box:
    """The annotated box moved to where the detector might put it (see the docstring)."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    size = math.sqrt(w * h)
    scale = rng.uniform(0.82, 1.22)
    dx, dy = rng.uniform(-0.12, 0.12, size=2)
    aspect = rng.uniform(0.75, 1.3)
    cx, cy = (x1 + x2) / 2 + dx * size, (y1 + y2) / 2 + dy * size
    w, h = w * scale / math.sqrt(aspect), h * scale * math.sqrt(aspect)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def augment(
    patch: Image, head: Head, rng: np.random.Generator, *, size: int, margin: float
) -> Image:
    """A randomly altered crop of ``head``, as a kitchen camera might show it."""
    box = _jitter(head.box, rng)
    # Any: OpenCV's stubs widen every result to "integer or floating" arrays.
    crop: Any = crop_face(patch, box, size=size, margin=margin, angle=float(rng.uniform(-12, 12)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    # A distant head: few pixels, upscaled. More often than for faces: half the val heads
    # are under 45 px, and a ceiling camera's heads are small.
    if rng.random() < 0.3:
        low = int(rng.integers(8, 33))
        crop = cv2.resize(crop, (low, low), interpolation=cv2.INTER_AREA)
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return camera_degrade(crop, rng)


# --------------------------------------------------------------------------- metrics


def ranking_ap(scores: npt.NDArray[np.float32], truth: npt.NDArray[np.bool_]) -> float:
    """All-point interpolated average precision of ``truth`` ranked by ``scores``."""
    if not truth.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = truth[order].astype(np.float64)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float((envelope * hits).sum() / hits.sum())


def metrics(crops: list[Head], probs: npt.NDArray[np.float32]) -> dict[str, Any]:
    """Bare precision / recall at a few thresholds of P(bare), AP and recall per size, on the
    heads; with negatives, how many of them are called bare or ``other``."""
    is_head = np.array([c.label != OTHER for c in crops])
    heads = [c for c, head in zip(crops, is_head, strict=True) if head]
    p_bare = probs[is_head, BARE]
    truth = np.array([h.label == BARE for h in heads])
    result: dict[str, Any] = {
        "heads": len(heads),
        "bare_heads": int(truth.sum()),
        "accuracy": round(float(((p_bare >= 0.5) == truth).mean()), 4),
        "covered_right": round(float((p_bare[~truth] < 0.5).mean()), 4),
        "bare_ap": round(ranking_ap(p_bare, truth), 4),
        "bare": {},
        "bare_recall_by_size_at_0.5": {},
    }
    for threshold in (0.3, 0.5, 0.7, 0.9):
        decided = p_bare >= threshold
        tp = int((decided & truth).sum())
        result["bare"][f"{threshold}"] = {
            "precision": round(tp / max(1, int(decided.sum())), 4),
            "recall": round(tp / max(1, int(truth.sum())), 4),
        }
    sizes = np.array([bucket_name(h.size) for h in heads])
    for _, _, name in (*BUCKETS, *BUCKETS_LARGE):
        in_bucket = truth & (sizes == name)
        found = int((in_bucket & (p_bare >= 0.5)).sum())
        result["bare_recall_by_size_at_0.5"][name] = f"{found}/{int(in_bucket.sum())}"
    if probs.shape[1] > OTHER and not is_head.all():
        other = probs[~is_head]
        result["negatives"] = int((~is_head).sum())
        result["negatives_called_other"] = round(float((other.argmax(axis=1) == OTHER).mean()), 4)
        result["negatives_p_bare_over_0.5"] = round(float((other[:, BARE] >= 0.5).mean()), 4)
        heads_other = probs[is_head].argmax(axis=1) == OTHER
        result["heads_called_other"] = round(float(heads_other.mean()), 4)
        # Bare precision at 0.5 when the negatives count too (a detector's false heads).
        decided = probs[:, BARE] >= 0.5
        bare_all = np.array([c.label == BARE for c in crops])
        result["bare_precision_at_0.5_with_negatives"] = round(
            int((decided & bare_all).sum()) / max(1, int(decided.sum())), 4
        )
    return result


# --------------------------------------------------------------------------- training


def train(
    torch: Any,
    patches: list[Image],
    heads: list[Head],
    *,
    val_crops: list[Image],
    val: list[Head],
    recipe: Recipe,
    classes: int,
) -> tuple[Any, dict[str, Any]]:
    """Train a classifier of ``classes`` classes on ``heads`` (negatives included); return it
    and its figures on ``val``. An epoch draws as many crops as there are heads."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    rng = np.random.default_rng(recipe.seed)
    started = time.monotonic()
    counts = Counter(h.label for h in heads)
    weights = np.array([counts[h.label] for h in heads], dtype=np.float64) ** -recipe.balance
    weights /= weights.sum()
    model = build_model(torch, classes, recipe.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-3)
    steps = math.ceil(sum(h.label != OTHER for h in heads) / recipe.batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps, pct_start=0.15
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = rng.choice(len(heads), size=steps * recipe.batch, p=weights)
        total = 0.0
        for step in range(steps):
            chosen = [heads[i] for i in order[step * recipe.batch : (step + 1) * recipe.batch]]
            crops = [
                augment(patches[h.patch], h, rng, size=recipe.size, margin=recipe.margin)
                for h in chosen
            ]
            x = torch.from_numpy(crops_to_tensor(crops))
            y = torch.tensor([h.label for h in chosen])
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        if epoch % 4 == 0 or epoch == recipe.epochs:
            m = metrics(val, predict(torch, model, val_crops))
            print(
                f"epoch {epoch:2d}  loss {total / steps:.3f}  val acc {m['accuracy']:.3f}  "
                f"bare AP {m['bare_ap']:.3f}  "
                + "  ".join(
                    f"bare P/R @{t} {pr['precision']:.3f}/{pr['recall']:.3f}"
                    for t, pr in m["bare"].items()
                )
                + f"  {time.monotonic() - started:.0f} s",
                flush=True,
            )
    report = metrics(val, predict(torch, model, val_crops))
    report["seconds"] = round(time.monotonic() - started)
    return model, report


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Train, report on val, export; the exit code is 0 on success."""
    defaults = Recipe(margin=0.2, epochs=24, balance=1.0, width=16)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="headcover folder (YOLO)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--size", type=int, default=defaults.size, help="crop size in pixels")
    ap.add_argument(
        "--margin",
        type=float,
        default=defaults.margin,
        help="context margin per side, share of the head (at most 0.4)",
    )
    ap.add_argument("--epochs", type=int, default=defaults.epochs)
    ap.add_argument("--batch", type=int, default=defaults.batch)
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument(
        "--balance", type=float, default=defaults.balance, help="sampling weight count ** -balance"
    )
    ap.add_argument(
        "--width", type=int, default=defaults.width, help="channels of the first conv block"
    )
    ap.add_argument("--threads", type=int, default=defaults.threads, help="torch threads")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument(
        "--negatives",
        type=int,
        default=DEFAULT_NEGATIVES,
        help="no-head crops per picture (plus one per person); 0: two classes, no 'other'",
    )
    args = ap.parse_args(argv)
    if not 0.0 <= args.margin <= 0.4:
        # Jittered (1.22x) and rotated, a wider crop would leave the training patch.
        ap.error("--margin must be in 0..0.4")
    recipe = Recipe(
        size=args.size,
        margin=args.margin,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        balance=args.balance,
        width=args.width,
        threads=args.threads,
        seed=args.seed,
    )

    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - .venv-train only

    cv2.setNumThreads(1)
    cv2.setRNGSeed(args.seed)
    started = time.monotonic()
    patches, heads, pictures, val = load_heads(args.data, negatives=args.negatives, seed=args.seed)
    labels = HEAD_LABELS if args.negatives > 0 else HEAD_LABELS[:OTHER]
    counts = Counter(HEAD_LABELS[h.label] for h in heads)
    val_counts = Counter(HEAD_LABELS[h.label] for h in val)
    print(
        f"crops: train {len(heads)} {dict(counts)}, val {len(val)} {dict(val_counts)}; "
        f"{time.monotonic() - started:.0f} s"
    )
    val_crops = [
        crop_face(pictures[h.patch], h.box, size=recipe.size, margin=recipe.margin) for h in val
    ]
    del pictures
    model, report = train(
        torch, patches, heads, val_crops=val_crops, val=val, recipe=recipe, classes=len(labels)
    )
    print(json.dumps(report, indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / CLASSIFIER_FILE
    gap = export(torch, model, recipe, onnx_path, val_crops[:8])
    params = sum(p.numel() for p in model.parameters())
    meta = {
        "format": META_FORMAT,
        "file": CLASSIFIER_FILE,
        "sha256": _sha256(onnx_path),
        "labels": list(labels),
        "input_size": recipe.size,
        "input": "crops: NCHW float32 RGB 0..1, dynamic batch",
        "output": "probabilities: softmax over labels",
        "margin": recipe.margin,
        "crop": "agent.detect.face.crop_face: a square around the head box, "
        "side = longer side x (1 + 2 margin)",
        "training": {
            "script": "scripts/train/head_classifier.py",
            "data": "../shared/datasets/headcover (relabelled SFCHD subset, hard hats on "
            "building sites; no licence stated upstream: research and evaluation only), "
            "train split of agent.detect.datasets.split_of",
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "train_crops": dict(counts),
            "recipe": asdict(recipe),
            "negatives_per_picture": args.negatives,
            "parameters": params,
            "torch": torch.__version__,
            "onnx_torch_max_gap": gap,
        },
        "val_metrics": {"annotated_boxes": report},
        "license": "Trained by the mclz-agent project on SFCHD-derived data (no licence "
        "stated upstream): research and evaluation only.",
    }
    (args.out / META_FILE).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(f"wrote {onnx_path} ({params} parameters, {report['seconds']} s training), {META_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
