#!/usr/bin/env python3
"""Train the face stage's mask classifier on face crops and export it to ONNX with YuNet beside it.

The face-first mask check (``agent/detect/face.py``) finds faces with YuNet and asks this
classifier about each face crop: ``mask``, ``no_mask`` or ``mask_incorrect`` (the last counts
as no mask for the agent). Data: ``../shared/datasets/facemask`` (Pascal VOC), read with
``agent.detect.datasets.load_dataset``, split with ``split_of("facemask", stem)``, the same
split as the detector's data preparation. Only the train split is trained on; figures are
reported on val.

Crops come from two kinds of boxes of the train images, both labelled by the annotation:

* the annotator's box, jittered: YuNet's box is not the annotator's (measured on val: YuNet's
  centre sits 0.15 of the face size higher, median; its box is 1.0x as large, 5-95 %
  0.86-1.20x, and 1.15x taller relative to its width), so the jitter spans that range;
* YuNet's own boxes (native and 2x passes, score >= 0.5) matched to an annotated face at IoU
  >= 0.4, lightly jittered: the boxes the classifier sees at run time.

Each crop is :func:`agent.detect.face.crop_face` (a square around the box with ``--margin``
context), with augmentation for kitchen cameras: rotation, horizontal flip, low resolution,
blur, low light and gamma, colour cast, sensor noise, JPEG re-compression, grayscale.
No-mask faces are rare (540 of 2,890 train faces): each epoch samples faces with weight
``count(class) ** -0.5`` per face (classes end up 0.6 / 0.27 / 0.13 mask / no_mask /
incorrect), so rare classes are seen more without repeating 96 mask_incorrect crops 25 times.

The model: four conv blocks (24-48-96-192 channels, the first two strided) and a linear
layer, 64x64 RGB in, softmax out (0.22 M parameters, about 25 M multiply-adds per face,
under 1 ms a face with onnxruntime on one core). Chosen on the val split, end to end
(``scripts/train/eval_face.py``, average precision of the no-mask decisions ranked by face
score x P(no mask), 81 unmasked faces; recall / precision of faces >= 32 px at 0.7):

=========================================  =========  =====  ===============
recipe                                     training   AP     >= 32 px at 0.7
=========================================  =========  =====  ===============
width 16, 16 epochs                        121 s      0.854  0.83 / 0.89
width 16, 24 epochs                        201 s      0.857  0.90 / 0.90
width 16, 16 epochs, balance 0.3           156 s      0.809  0.62 / 0.86
width 24, 16 epochs (the default)          273 s      0.867  0.90 / 0.93
=========================================  =========  =====  ===============

Differences of 0.01 in AP are within the noise of 81 faces; balancing less clearly hurts.
Threads: one by default. On this 2-core machine, shared with a detector training job, a
training step took 575 ms on one thread and 1,316 ms on two (OpenMP threads waiting for
each other). Deterministic: fixed seeds, one process, the same thread count give the same
weights.

Run it from ``.venv-train`` (CPU, a few minutes)::

    nice .venv-train/bin/python scripts/train/mask_classifier.py --out models/default/face

It writes ``mask_classifier.onnx`` (opset 17, dynamic batch, input ``crops`` NCHW float32 RGB
0..1, output ``probabilities``), ``mask_classifier.json`` (labels, input size, margin, val
figures, sha256 of both files) and a copy of ``yunet_n_640_640.onnx`` checked against the
sha256 in ``../shared/weights/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.datasets import load_dataset, split_of
from agent.detect.face import (
    CLASSIFIER_FILE,
    CLASSIFIER_LABELS,
    META_FILE,
    META_FORMAT,
    NO_MASK_CLASSES,
    YUNET_FILE,
    FaceDetector,
    crop_face,
    crops_to_tensor,
)

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DEFAULT_DATA = SHARED / "datasets" / "facemask"
DEFAULT_YUNET = SHARED / "weights" / "yunet" / YUNET_FILE
WEIGHTS_README = SHARED / "weights" / "README.md"
DEFAULT_OUT = REPO / "models" / "default" / "face"
SOURCE = "facemask"  # split_of's source name, as in scripts/train/prepare_data.py

#: Source class name -> classifier class.
SOURCE_CLASSES = {
    "with_mask": "mask",
    "without_mask": "no_mask",
    "mask_weared_incorrect": "mask_incorrect",
}
#: Face size buckets (sqrt(w * h) of the annotated box, source pixels), as eval_face.py.
BUCKETS = ((0, 16), (16, 32), (32, 64), (64, 128), (128, math.inf))

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class FaceSample:
    """One face to crop: which image, which box (pixels), which class, and where the box is from."""

    image: int  # index into the image list
    box: Box
    label: int  # index into CLASSIFIER_LABELS
    source: str  # "annotation" or "yunet"
    gt_size: float  # sqrt(w * h) of the annotated box


def bucket_name(size: float) -> str:
    """``<16``, ``16-32``, ... ``>128`` for a face size in pixels."""
    for low, high in BUCKETS:
        if size < high:
            return f"<{high}" if low == 0 else (f">{low}" if math.isinf(high) else f"{low}-{high}")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- data


def _raw_objects(xml_path: Path) -> list[tuple[str, Box]]:
    root = ET.parse(xml_path).getroot()  # noqa: S314 - local dataset files, not network input
    objects = []
    for obj in root.iter("object"):
        bnd = obj.find("bndbox")
        if bnd is None:
            continue
        try:
            x1, y1, x2, y2 = (
                float(bnd.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            continue
        objects.append(((obj.findtext("name") or "").strip(), (x1, y1, x2, y2)))
    return objects


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def load_faces(
    data: Path, yunet: FaceDetector | None
) -> tuple[list[Image], dict[str, list[FaceSample]]]:
    """Images of ``data`` and their faces per split; YuNet's matched boxes added when given.

    The loader's boxes (agent labels, validated) are authoritative; the source class name that
    tells ``no_mask`` from ``mask_incorrect`` comes from the same xml, matched by box.
    """
    dataset = load_dataset(data)
    images: list[Image] = []
    faces: dict[str, list[FaceSample]] = {"train": [], "val": []}
    for sample in dataset.samples:
        if sample.label_path is None or not sample.boxes:
            continue
        pixels = cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR)
        if pixels is None:
            print(f"warning: cannot decode {sample.image_path}: skipped", file=sys.stderr)
            continue
        height, width = pixels.shape[:2]
        stated_w, stated_h = sample.image_size or (width, height)
        raw = [
            (name, (x1 / stated_w, y1 / stated_h, x2 / stated_w, y2 / stated_h))
            for name, (x1, y1, x2, y2) in _raw_objects(sample.label_path)
            if name in SOURCE_CLASSES
        ]
        split = split_of(SOURCE, sample.image_path.stem)
        index = len(images)
        images.append(np.asarray(pixels, dtype=np.uint8))
        annotated: list[tuple[Box, int, float]] = []
        for labelled in sample.boxes:
            # The raw object this loader box came from: the nearest box of a matching class.
            candidates = [
                (sum(abs(p - q) for p, q in zip(box, labelled.box, strict=True)), name)
                for name, box in raw
                if (SOURCE_CLASSES[name] == "mask") == (labelled.label == "face_mask")
            ]
            name = min(candidates)[1] if candidates else "with_mask"
            nx1, ny1, nx2, ny2 = labelled.box
            box = (nx1 * width, ny1 * height, nx2 * width, ny2 * height)
            size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
            label = CLASSIFIER_LABELS.index(SOURCE_CLASSES[name])
            annotated.append((box, label, size))
            faces[split].append(FaceSample(index, box, label, "annotation", size))
        if yunet is None:
            continue
        # YuNet's boxes, each labelled by the annotated face it overlaps most (IoU >= 0.4).
        for face in yunet.detect(images[index]):
            best = max(annotated, key=lambda a: _iou(a[0], face.box))
            if _iou(best[0], face.box) >= 0.4:
                faces[split].append(FaceSample(index, face.box, best[1], "yunet", best[2]))
    return images, faces


# --------------------------------------------------------------------------- augmentation


def _jitter(box: Box, rng: np.random.Generator, *, annotated: bool) -> Box:
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    size = math.sqrt(w * h)
    if annotated:  # towards where YuNet puts the box: higher, a little taller
        scale = rng.uniform(0.85, 1.25)
        dx, dy = rng.uniform(-0.12, 0.10), rng.uniform(-0.30, 0.08)
        aspect = rng.uniform(0.9, 1.35)
    else:
        scale = rng.uniform(0.9, 1.1)
        dx, dy = rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)
        aspect = rng.uniform(0.93, 1.07)
    cx, cy = (x1 + x2) / 2 + dx * size, (y1 + y2) / 2 + dy * size
    w, h = w * scale / math.sqrt(aspect), h * scale * math.sqrt(aspect)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def augment(
    image: Image, face: FaceSample, rng: np.random.Generator, *, size: int, margin: float
) -> Image:
    """A randomly altered crop of ``face``, as a kitchen camera might show it."""
    box = _jitter(face.box, rng, annotated=face.source == "annotation")
    # Any: OpenCV's stubs widen every result to "integer or floating" arrays.
    crop: Any = crop_face(image, box, size=size, margin=margin, angle=float(rng.uniform(-15, 15)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.25:  # a distant face: few pixels, upscaled
        low = int(rng.integers(10, 33))
        crop = cv2.resize(crop, (low, low), interpolation=cv2.INTER_AREA)
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    return camera_degrade(crop, rng)


def camera_degrade(crop: Any, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """What a kitchen camera and its uplink do to a crop: blur, exposure and low light,
    colour cast, sensor noise, JPEG, grey night mode (shared with head_classifier.py)."""
    if rng.random() < 0.3:  # focus or motion blur
        if rng.random() < 0.5:
            crop = cv2.GaussianBlur(crop, (0, 0), float(rng.uniform(0.5, 1.6)))
        else:
            length = int(rng.integers(3, 8))
            kernel: Any = np.zeros((length, length), np.float32)
            kernel[length // 2, :] = 1.0 / length
            rotation = cv2.getRotationMatrix2D(
                (length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0
            )
            kernel = cv2.warpAffine(kernel, rotation, (length, length))
            kernel /= max(float(kernel.sum()), 1e-6)
            crop = cv2.filter2D(crop, -1, kernel)
    pixels = crop.astype(np.float32) / 255.0
    if rng.random() < 0.6:  # exposure, gamma (low light), contrast
        pixels = np.power(pixels, rng.uniform(0.6, 2.2)) * rng.uniform(0.35, 1.25)
        mean = pixels.mean()
        pixels = (pixels - mean) * rng.uniform(0.7, 1.3) + mean
    if rng.random() < 0.3:  # warm or cold light
        pixels = pixels * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    if rng.random() < 0.4:  # sensor noise
        pixels = pixels + rng.normal(0.0, rng.uniform(0.01, 0.05), pixels.shape).astype(np.float32)
    crop = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:  # the camera's and the uplink's JPEG
        quality = int(rng.integers(20, 81))
        ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            crop = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if rng.random() < 0.15:  # night mode, grey cameras
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        crop = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(crop, dtype=np.uint8)


# --------------------------------------------------------------------------- model


def build_model(torch: Any, classes: int, width: int = 24) -> Any:
    """Four conv blocks and a linear layer; logits out (softmax is added for export)."""
    nn = torch.nn

    def block(c_in: int, c_out: int, *, stride: int = 1, pool: bool = False) -> list[Any]:
        conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        layers = [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
        return [*layers, nn.MaxPool2d(2)] if pool else layers

    # Strided first convs: a third cheaper to train than 2x2 pooling after full-size convs
    # (290 against 370 ms a batch of 64 on one busy core), with the same parameters.
    last = max(128, 8 * width)
    return nn.Sequential(
        *block(3, width, stride=2),  # 32x32
        *block(width, 2 * width, stride=2),  # 16x16
        *block(2 * width, 4 * width, pool=True),  # 8x8
        *block(4 * width, last),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(last, classes),
    )


def predict(
    torch: Any, model: Any, crops: list[Image], batch: int = 256
) -> npt.NDArray[np.float32]:
    """Softmax probabilities for BGR crops."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(crops), batch):
            x = torch.from_numpy(crops_to_tensor(crops[start : start + batch]))
            out.append(torch.softmax(model(x), dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------- metrics


def metrics(faces: list[FaceSample], probs: npt.NDArray[np.float32]) -> dict[str, Any]:
    """No-mask precision / recall at a few thresholds, overall and per face size, and accuracy."""
    no_mask_ids = [CLASSIFIER_LABELS.index(c) for c in sorted(NO_MASK_CLASSES)]
    p_no_mask = probs[:, no_mask_ids].sum(axis=1)
    truth = np.array([f.label in no_mask_ids for f in faces])
    labels = np.array([f.label for f in faces])
    result: dict[str, Any] = {
        "faces": len(faces),
        "no_mask_faces": int(truth.sum()),
        "accuracy_3class": round(float((probs.argmax(axis=1) == labels).mean()), 4),
        "accuracy_2class": round(float(((p_no_mask > 0.5) == truth).mean()), 4),
        "no_mask": {},
        "no_mask_recall_by_size_at_0.5": {},
    }
    for threshold in (0.5, 0.7, 0.9):
        decided = p_no_mask >= threshold
        tp = int((decided & truth).sum())
        result["no_mask"][f"{threshold}"] = {
            "precision": round(tp / max(1, int(decided.sum())), 4),
            "recall": round(tp / max(1, int(truth.sum())), 4),
        }
    sizes = np.array([bucket_name(f.gt_size) for f in faces])
    for name in dict.fromkeys(bucket_name(low + 0.5) for low, _ in BUCKETS):
        in_bucket = truth & (sizes == name)
        found = int((in_bucket & (p_no_mask > 0.5)).sum())
        result["no_mask_recall_by_size_at_0.5"][name] = f"{found}/{int(in_bucket.sum())}"
    return result


# --------------------------------------------------------------------------- main


def _expected_yunet_sha256(readme: Path) -> str:
    for line in readme.read_text(encoding="utf-8").splitlines():
        if f"`{YUNET_FILE}`" in line:
            for cell in line.split("|"):
                value = cell.strip().strip("`")
                if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
                    return value
    raise SystemExit(f"error: {readme}: no sha256 for {YUNET_FILE}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Recipe:
    """The training settings (the command line's)."""

    size: int = 64
    margin: float = 0.2
    epochs: int = 16
    batch: int = 64
    lr: float = 3e-3
    balance: float = 0.5  # per-face sampling weight count(class) ** -balance
    width: int = 24  # channels of the first block; doubled per block, the last 128 at least
    threads: int = 1
    seed: int = 0


def train(
    torch: Any, images: list[Image], faces: dict[str, list[FaceSample]], recipe: Recipe
) -> tuple[Any, dict[str, Any]]:
    """Train a classifier on ``faces["train"]``; return it and its figures on ``faces["val"]``."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    rng = np.random.default_rng(recipe.seed)
    started = time.monotonic()
    train_faces, val = faces["train"], faces["val"]
    counts = Counter(f.label for f in train_faces)
    weights = np.array([counts[f.label] for f in train_faces], dtype=np.float64) ** -recipe.balance
    weights /= weights.sum()
    model = build_model(torch, len(CLASSIFIER_LABELS), recipe.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=1e-3)
    steps = math.ceil(len(train_faces) / recipe.batch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps, pct_start=0.15
    )
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    val_crops = [
        crop_face(images[f.image], f.box, size=recipe.size, margin=recipe.margin) for f in val
    ]
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        order = rng.choice(len(train_faces), size=steps * recipe.batch, p=weights)
        total = 0.0
        for step in range(steps):
            chosen = [
                train_faces[i] for i in order[step * recipe.batch : (step + 1) * recipe.batch]
            ]
            crops = [
                augment(images[f.image], f, rng, size=recipe.size, margin=recipe.margin)
                for f in chosen
            ]
            x = torch.from_numpy(crops_to_tensor(crops))
            y = torch.tensor([f.label for f in chosen])
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item()
        if epoch % 4 == 0 or epoch == recipe.epochs:
            m = metrics(val, predict(torch, model, val_crops))
            print(
                f"epoch {epoch:2d}  loss {total / steps:.3f}  val acc {m['accuracy_2class']:.3f}  "
                + "  ".join(
                    f"no-mask P/R @{t} {pr['precision']:.3f}/{pr['recall']:.3f}"
                    for t, pr in m["no_mask"].items()
                )
                + f"  {time.monotonic() - started:.0f} s",
                flush=True,
            )
    probs = predict(torch, model, val_crops)
    sources = np.array([f.source for f in val])
    report = {
        "all": metrics(val, probs),
        "annotated_boxes": metrics(
            [f for f in val if f.source == "annotation"], probs[sources == "annotation"]
        ),
        "yunet_boxes": metrics([f for f in val if f.source == "yunet"], probs[sources == "yunet"]),
        "seconds": round(time.monotonic() - started),
    }
    return model, report


def export(torch: Any, model: Any, recipe: Recipe, onnx_path: Path, check: list[Image]) -> float:
    """Write the model with its softmax to ONNX and check it against torch; return the gap."""
    exported = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    dummy = torch.zeros(1, 3, recipe.size, recipe.size)
    torch.onnx.export(
        exported,
        (dummy,),
        str(onnx_path),
        opset_version=17,
        dynamo=False,  # the TorchScript exporter: no onnxscript in .venv-train
        input_names=["crops"],
        output_names=["probabilities"],
        dynamic_axes={"crops": {0: "batch"}, "probabilities": {0: "batch"}},
    )
    import onnx  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from onnx.reference import ReferenceEvaluator  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    onnx.checker.check_model(onnx.load(str(onnx_path)))
    sample = crops_to_tensor(check)
    outputs: Any = ReferenceEvaluator(str(onnx_path)).run(None, {"crops": sample})
    reference = np.asarray(outputs[0])
    with torch.no_grad():
        expected = exported(torch.from_numpy(sample)).numpy()
    gap = float(np.abs(reference - expected).max())
    if gap > 1e-4:
        raise SystemExit(f"error: {onnx_path}: ONNX and torch disagree by {gap:.2g}")
    return gap


def main(argv: list[str] | None = None) -> int:
    """Train, report on val, export; the exit code is 0 on success."""
    defaults = Recipe()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="facemask folder (VOC)")
    ap.add_argument(
        "--yunet",
        type=Path,
        default=DEFAULT_YUNET,
        help="YuNet ONNX to copy and to find faces with",
    )
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    ap.add_argument("--size", type=int, default=defaults.size, help="crop size in pixels")
    ap.add_argument(
        "--margin",
        type=float,
        default=defaults.margin,
        help="context margin per side, share of the face",
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
    ap.add_argument("--no-yunet-boxes", action="store_true", help="train on annotated boxes only")
    args = ap.parse_args(argv)
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
    expected = _expected_yunet_sha256(WEIGHTS_README)
    if _sha256(args.yunet) != expected:
        raise SystemExit(
            f"error: {args.yunet}: sha256 does not match {expected} ({WEIGHTS_README})"
        )

    started = time.monotonic()
    # Score 0.5: the boxes near the run-time threshold (0.6) are the hardest; keep them.
    yunet = None if args.no_yunet_boxes else FaceDetector(args.yunet, score_threshold=0.5)
    images, faces = load_faces(args.data, yunet)
    train_faces = faces["train"]
    counts = Counter(CLASSIFIER_LABELS[f.label] for f in train_faces)
    yunet_boxes = sum(f.source == "yunet" for f in train_faces)
    print(
        f"faces: train {len(train_faces)} ({dict(counts)}; {yunet_boxes} YuNet boxes), "
        f"val {len(faces['val'])}; {time.monotonic() - started:.0f} s"
    )
    model, report = train(torch, images, faces, recipe)
    print(json.dumps(report, indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / CLASSIFIER_FILE
    check = [
        crop_face(images[f.image], f.box, size=recipe.size, margin=recipe.margin)
        for f in faces["val"][:8]
    ]
    gap = export(torch, model, recipe, onnx_path, check)
    yunet_copy = args.out / YUNET_FILE
    if yunet_copy.resolve() != args.yunet.resolve():
        shutil.copyfile(args.yunet, yunet_copy)
    if _sha256(yunet_copy) != expected:
        raise SystemExit(f"error: {yunet_copy}: copy does not match sha256 {expected}")

    params = sum(p.numel() for p in model.parameters())
    meta = {
        "format": META_FORMAT,
        "file": CLASSIFIER_FILE,
        "sha256": _sha256(onnx_path),
        "labels": list(CLASSIFIER_LABELS),
        "no_mask_labels": sorted(NO_MASK_CLASSES),
        "input_size": recipe.size,
        "input": "crops: NCHW float32 RGB 0..1, dynamic batch",
        "output": "probabilities: softmax over labels",
        "margin": recipe.margin,
        "crop": "agent.detect.face.crop_face: a square around the face box, "
        "side = longer side x (1 + 2 margin)",
        "face_detector": {
            "file": YUNET_FILE,
            "sha256": expected,
            "source": "ShiqiYu/libfacedetection.train @ "
            "0047ac24afb1a50a0c6105001c89d1b5b805dbf1 : onnx/yunet_n_640_640.onnx",
            "license": "Apache-2.0",
        },
        "training": {
            "script": "scripts/train/mask_classifier.py",
            "data": "../shared/datasets/facemask (andrewmvd Face Mask Detection subset, CC0), "
            "train split of agent.detect.datasets.split_of",
            "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "train_faces": dict(counts),
            "train_yunet_boxes": yunet_boxes,
            "recipe": asdict(recipe),
            "parameters": params,
            "torch": torch.__version__,
            "onnx_torch_max_gap": gap,
        },
        "val_metrics": report,
        "license": "Classifier: trained by the mclz-agent project on CC0 data. "
        "YuNet: Apache-2.0 (Shiqi Yu, libfacedetection.train).",
    }
    (args.out / META_FILE).write_text(
        json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    print(
        f"wrote {onnx_path} ({params} parameters, {report['seconds']} s training), "
        f"{args.out / META_FILE}, {yunet_copy}"
    )
    # The agent runs YuNet with onnxruntime from a copy with free input size; onnxruntime
    # lives in the agent's venv, not here.
    python = REPO / ".venv" / "bin" / "python"
    script = Path(__file__).resolve().parent / "yunet_dynamic.py"
    cmd = [str(python if python.exists() else sys.executable), str(script), str(args.out)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
