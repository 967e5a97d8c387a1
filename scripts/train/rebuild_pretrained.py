#!/usr/bin/env python3
"""Rebuild the float COCO YOLO11n checkpoint from its two int8 exports (no official .pt here).

The official ``yolo11n.pt`` cannot be fetched on these machines; two int8 exports of it can
(``../shared/weights/README.md``: provenance and sha256). This script turns them back into a
float ultralytics checkpoint that ``YOLO(path)`` loads and ``train()`` fine-tunes:

1. build the ultralytics YOLO11n (80 classes) from ``yolo11n.yaml``;
2. read the dequantized conv weights of the OpenVINO IR (NNCF int8, per output channel) by
   parsing its XML and ``.bin`` with numpy (``Const(i8) -> Convert -> [Subtract zero point] ->
   Multiply scale``), and the conv biases of the onnxruntime int8 ONNX (weights uint8 per tensor,
   biases kept in fp32, so its biases are exact and its weights are coarse);
3. give each conv of the model its IR weight and ONNX bias. Both exporters name every conv after
   its torch module (IR ``__module.model.4.cv2.conv/aten::_convolution/...``, ONNX initializer
   ``model.4.cv2.conv.weight_quantized``) and the mapping goes by that name: plain graph order
   does not work, since both exports order the Detect head's and the neck's convs differently
   from torch's execution order (34 of 88 convs out of place in the IR). Every mapping is
   checked: the same 88 convs in the model and in both exports, equal weight shapes, equal
   stride/padding/dilation/groups, and the two exports' weights for the conv agree (cosine
   >= ``MIN_COSINE``; measured lowest 0.9965, median relative difference 2.2 %);
4. "unfold" every BatchNorm: with ``y = conv(x)`` (no bias) measured on calibration pictures in
   eval mode (the activations of the folded network, which do not depend on the statistics being
   measured), ``running_mean = mean(y)``, ``running_var = var(y)``, ``weight = sqrt(var + eps)``,
   ``bias = folded bias + mean``, so that eval mode gives ``y + folded bias`` exactly and train
   mode (batch statistics) starts near the folded network;
5. write the checkpoint in the layout of ultralytics' own (model in fp16, ``epoch=-1``,
   ``train_args``, no optimizer or EMA), so a 6-class model takes 493 of its 499 tensors.

Calibration pictures: ``--calib-images`` pictures of ``../shared/datasets`` (all ``*.jpg`` under
it, sorted by path, taken at even steps), letterboxed to ``--imgsz`` square with ultralytics'
``LetterBox`` (grey 114 padding), RGB, 0..1. The shared ``yolo11n_coco_rebuilt.pt`` used 200.

Run it from ``.venv-train``::

    nice .venv-train/bin/python scripts/train/rebuild_pretrained.py --out /tmp/yolo11n_coco.pt \\
        --compare ../shared/weights/yolo11n-coco/yolo11n_coco_rebuilt.pt

``--compare REF`` then runs both checkpoints on a few pictures and frames of the shared video
and prints how far their raw outputs and their detections are apart.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# Set before ultralytics is imported: no network, settings inside the repository (gitignored).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".yolo" / "matplotlib"))  # not ~/.config

SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "yolo11n-coco"
DEFAULT_IR = WEIGHTS / "yolo11n_int8_openvino.xml"
DEFAULT_ONNX = WEIGHTS / "yolo11n_int8.onnx"
DEFAULT_DATASETS = SHARED / "datasets"
DEFAULT_VIDEO = SHARED / "videos" / "bareheaded_people_indoor.mp4"
# From ../shared/weights/README.md: the exports this script was written and checked against.
PINNED_SHA256 = {
    "yolo11n_int8_openvino.xml": "fedac70f9389c55a2a604e957f66ed8195cda1dd6eb4eb7d8b98919d8c43753d",
    "yolo11n_int8_openvino.bin": "df1ce92b661e326a11e016ba380fde8cb7ddda528a920d0c4fcba98b69322a9b",
    "yolo11n_int8.onnx": "5ea9b19c6c4d89041175fd2d4f9d2e1581d16f37b817021d547278fc5e2f2b58",
}
# Lowest cosine between the two exports' weights of one conv: measured 0.9965 (the ONNX weights
# are uint8 per tensor, so the small-valued channels of a wide conv are coarse there).
MIN_COSINE = 0.99
NUM_CLASSES = 80
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LICENSE = "AGPL-3.0 (weights derived from Ultralytics yolo11n.pt)"
DOCS = (
    "float YOLO11n rebuilt from two int8 exports of Ultralytics yolo11n.pt; "
    "provenance in weights/README.md"
)
# Frames of the shared video where a person stands at the table (10 fps): --compare uses them.
COMPARE_FRAMES = (300, 750, 1050)

IR_DTYPES: dict[str, Any] = {
    "f32": np.float32,
    "f16": np.float16,
    "f64": np.float64,
    "i8": np.int8,
    "u8": np.uint8,
    "i32": np.int32,
    "i64": np.int64,
}
IR_CONV_NAME = re.compile(r"^__module\.(?P<module>.+?)/aten::_convolution/")


class RebuildError(ValueError):
    """The exports or the model do not fit together, or an input is missing or altered."""


@dataclass(frozen=True)
class IrConv:
    """One convolution of the OpenVINO IR: its torch module path, weight and geometry."""

    module: str
    weight: np.ndarray  # (out, in / groups, kh, kw), float32, dequantized
    stride: tuple[int, ...]
    pads: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


@dataclass(frozen=True)
class OnnxConv:
    """One convolution of the ONNX export: its torch module path, weight and bias."""

    module: str
    weight: np.ndarray  # float32, dequantized
    bias: np.ndarray | None  # float32, exactly as stored


# --- the OpenVINO IR, parsed with numpy -------------------------------------------------------


def _ints(text: str | None) -> tuple[int, ...]:
    return tuple(int(v) for v in (text or "").replace(" ", "").split(",") if v)


class _IrGraph:
    """The layers and edges of an IR ``.xml`` with the constants of its ``.bin``."""

    def __init__(self, xml_path: Path) -> None:
        root = ET.parse(xml_path).getroot()  # noqa: S314 - sha256-pinned input, see verify_inputs
        self.blob = xml_path.with_suffix(".bin").read_bytes()
        layers = root.find("layers")
        edges = root.find("edges")
        if layers is None or edges is None:
            raise RebuildError(f"{xml_path}: not an OpenVINO IR (no <layers>/<edges>)")
        self.layers = {layer.get("id", ""): layer for layer in layers}
        self.order = [layer.get("id", "") for layer in layers]
        self.inputs: dict[str, list[str]] = {}
        wired: dict[str, list[tuple[int, str]]] = {}
        for edge in edges:
            to = edge.get("to-layer", "")
            wired.setdefault(to, []).append(
                (int(edge.get("to-port", "0")), edge.get("from-layer", ""))
            )
        for layer_id, ports in wired.items():
            self.inputs[layer_id] = [source for _, source in sorted(ports)]
        self._values: dict[str, np.ndarray] = {}

    def data(self, layer_id: str) -> dict[str, str]:
        node = self.layers[layer_id].find("data")
        return dict(node.attrib) if node is not None else {}

    def value(self, layer_id: str) -> np.ndarray:
        """Evaluate a constant subgraph (the weight path of a quantized conv)."""
        if layer_id not in self._values:
            self._values[layer_id] = self._evaluate(layer_id)
        return self._values[layer_id]

    def _evaluate(self, layer_id: str) -> np.ndarray:
        kind = self.layers[layer_id].get("type")
        data = self.data(layer_id)
        args = [self.value(source) for source in self.inputs.get(layer_id, [])]
        if kind == "Const":
            dtype = IR_DTYPES.get(data.get("element_type", ""))
            if dtype is None:
                raise RebuildError(f"IR layer {layer_id}: constant type {data.get('element_type')}")
            offset, size = int(data["offset"]), int(data["size"])
            flat = np.frombuffer(self.blob[offset : offset + size], dtype=dtype)
            return flat.reshape(_ints(data.get("shape")))
        if kind == "Convert":
            dtype = IR_DTYPES.get(data.get("destination_type", ""))
            if dtype is None:
                raise RebuildError(
                    f"IR layer {layer_id}: convert to {data.get('destination_type')}"
                )
            return args[0].astype(dtype)
        binary: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
            "Multiply": np.multiply,
            "Subtract": np.subtract,
            "Add": np.add,
        }
        if kind in binary:
            return binary[kind](args[0], args[1])
        if kind == "Reshape":
            target = [int(v) for v in args[1].ravel()]
            if data.get("special_zero") == "true":
                target = [args[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
            return args[0].reshape(target)
        if kind == "FakeQuantize":  # a weight kept in float and quantized on the fly
            x, in_lo, in_hi, out_lo, out_hi = args
            steps = int(data["levels"]) - 1
            q = np.round((np.clip(x, in_lo, in_hi) - in_lo) / (in_hi - in_lo) * steps)
            return np.asarray(q / steps * (out_hi - out_lo) + out_lo, dtype=np.float32)
        raise RebuildError(f"IR layer {layer_id}: cannot evaluate a {kind} as a constant")


def read_ir_convs(xml_path: Path) -> list[IrConv]:
    """Return the IR's convolutions in graph order, weights dequantized to float32.

    Raises RebuildError when a conv's name or weight path is not one this parser knows.
    """
    graph = _IrGraph(xml_path)
    convs: list[IrConv] = []
    for layer_id in graph.order:
        layer = graph.layers[layer_id]
        kind = layer.get("type")
        if kind not in ("Convolution", "GroupConvolution"):
            continue
        name = IR_CONV_NAME.match(layer.get("name", ""))
        if name is None:
            raise RebuildError(f"IR conv {layer.get('name')!r}: no torch module path in its name")
        weight = graph.value(graph.inputs[layer_id][1]).astype(np.float32)
        groups = 1
        if kind == "GroupConvolution":  # (groups, out / groups, in / groups, kh, kw)
            groups = weight.shape[0]
            weight = weight.reshape(groups * weight.shape[1], *weight.shape[2:])
        data = graph.data(layer_id)
        pads = _ints(data.get("pads_begin"))
        if pads != _ints(data.get("pads_end")):
            raise RebuildError(f"IR conv {name['module']}: asymmetric padding")
        convs.append(
            IrConv(
                module=name["module"],
                weight=weight,
                stride=_ints(data.get("strides")),
                pads=pads,
                dilation=_ints(data.get("dilations")),
                groups=groups,
            )
        )
    return convs


# --- the ONNX export ---------------------------------------------------------------------------


def read_onnx_convs(onnx_path: Path) -> tuple[list[OnnxConv], dict[int, str]]:
    """Return the ONNX export's convolutions (weights dequantized) and its class names.

    Handles onnxruntime's dynamic quantization (``ConvInteger`` -> ``Cast`` -> ``Mul`` by input
    scale x weight scale -> ``Add`` bias) and float or ``DequantizeLinear`` weights of a ``Conv``.
    Raises RebuildError on any other layout.
    """
    import onnx  # noqa: PLC0415 - training venv only
    from onnx import numpy_helper  # noqa: PLC0415

    model = onnx.load(str(onnx_path))
    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(tensor: str, op: str) -> Any:
        nodes = consumers.get(tensor, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            raise RebuildError(f"ONNX {tensor}: expected one {op} after it")
        return nodes[0]

    def constant(tensor: str) -> tuple[np.ndarray, str]:
        """Value and initializer name of a constant input (an initializer, reshaped or DQ'd)."""
        if tensor in init:
            return init[tensor].astype(np.float32), tensor
        node = producer.get(tensor)
        if node is not None and node.op_type == "Reshape" and node.input[0] in init:
            return init[node.input[0]].astype(np.float32), node.input[0]
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in init:
            q = init[node.input[0]].astype(np.float32)
            scale = init[node.input[1]].astype(np.float32)
            zero = init[node.input[2]].astype(np.float32) if len(node.input) > 2 else 0.0
            if scale.ndim == 1:  # per output channel
                scale = scale.reshape(-1, *([1] * (q.ndim - 1)))
                zero = np.reshape(zero, scale.shape) if np.ndim(zero) else zero
            return (q - zero) * scale, node.input[0]
        raise RebuildError(f"ONNX {tensor}: not a constant this reader knows")

    def module_of(weight_name: str) -> str:
        base = weight_name.removesuffix("_quantized")
        if not base.endswith(".weight"):
            raise RebuildError(f"ONNX weight {weight_name!r}: no torch module path in its name")
        return base.removesuffix(".weight")

    convs: list[OnnxConv] = []
    for node in graph.node:
        if node.op_type == "ConvInteger":
            q = init[node.input[1]].astype(np.float32)
            zero = init[node.input[3]].astype(np.float32) if len(node.input) > 3 else 0.0
            scaled = only_consumer(only_consumer(node.output[0], "Cast").output[0], "Mul")
            scales = producer.get(scaled.input[1])  # input scale (dynamic) x weight scale
            weight_scales = [init[i] for i in (scales.input if scales else []) if i in init]
            if len(weight_scales) != 1:
                raise RebuildError(f"ONNX {node.name}: weight scale not found")
            scale = weight_scales[0].astype(np.float32)
            if scale.ndim == 1:
                scale = scale.reshape(-1, 1, 1, 1)
            weight = (q - (np.reshape(zero, scale.shape) if np.ndim(zero) else zero)) * scale
            after = consumers.get(scaled.output[0], [])
            bias = None  # the DFL projection has none
            if len(after) == 1 and after[0].op_type == "Add":
                other = next(i for i in after[0].input if i != scaled.output[0])
                bias = constant(other)[0].ravel()
            convs.append(OnnxConv(module_of(node.input[1]), weight, bias))
        elif node.op_type == "Conv":
            weight, weight_name = constant(node.input[1])
            has_bias = len(node.input) > 2 and node.input[2]
            conv_bias = constant(node.input[2])[0].ravel() if has_bias else None
            convs.append(OnnxConv(module_of(weight_name), weight, conv_bias))
    meta = {p.key: p.value for p in model.metadata_props}
    names = ast.literal_eval(meta.get("names", "{}"))
    if not isinstance(names, dict) or len(names) != NUM_CLASSES:
        raise RebuildError(f"{onnx_path}: metadata has no {NUM_CLASSES} class names")
    return convs, {int(k): str(v) for k, v in names.items()}


# --- mapping the exports onto the ultralytics model ---------------------------------------------


@dataclass
class Unit:
    """A conv of the model with its BatchNorm (None: a Detect output conv with a bias)."""

    name: str
    conv: Any
    bn: Any
    weight: np.ndarray
    bias: np.ndarray


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def map_exports(model: Any, ir: list[IrConv], onnx_convs: list[OnnxConv]) -> list[Unit]:
    """Pair every conv of ``model`` with its IR weight and ONNX bias; check every pairing.

    Raises RebuildError when the three do not hold the same convs, or a shape, the geometry or
    the agreement of the two exports is off.
    """
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    modules = dict(model.named_modules())
    convs = {n: m for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)}
    by_ir = {c.module: c for c in ir}
    by_onnx = {c.module: c for c in onnx_convs}
    for label, found in (("IR", by_ir), ("ONNX", by_onnx)):
        if len(found) != len(convs) or set(found) != set(convs):
            missing = sorted(set(convs) - set(found))[:5]
            extra = sorted(set(found) - set(convs))[:5]
            raise RebuildError(
                f"{label} holds {len(found)} convs, the model {len(convs)}: "
                f"missing {missing}, unknown {extra}"
            )
    dfl = [n for n, m in convs.items() if not m.weight.requires_grad]  # fixed 0..15 projection
    units: list[Unit] = []
    for name, conv in convs.items():
        a, b = by_ir[name], by_onnx[name]
        shape = tuple(conv.weight.shape)
        if a.weight.shape != shape or b.weight.shape != shape:
            raise RebuildError(f"{name}: model {shape}, IR {a.weight.shape}, ONNX {b.weight.shape}")
        geometry = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)
        if (a.stride, a.pads, a.dilation, a.groups) != geometry:
            raise RebuildError(f"{name}: IR stride/pads/dilation/groups differ from {geometry}")
        cosine = _cosine(a.weight, b.weight)
        if cosine < MIN_COSINE:
            raise RebuildError(f"{name}: the exports disagree (cosine {cosine:.4f})")
        if name in dfl:
            if _cosine(a.weight, conv.weight.detach().numpy()) < MIN_COSINE:
                raise RebuildError(f"{name}: the IR's DFL projection is not 0..15")
            continue
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else None
        bn = getattr(parent, "bn", None) if getattr(parent, "conv", None) is conv else None
        if (bn is None) == (conv.bias is None):
            raise RebuildError(f"{name}: expected a BatchNorm or a bias, not both or neither")
        if b.bias is None or b.bias.shape != (shape[0],):
            raise RebuildError(f"{name}: the ONNX export has no bias of {shape[0]} for it")
        units.append(Unit(name, conv, bn, a.weight, b.bias.astype(np.float32)))
    return units


# --- calibration -----------------------------------------------------------------------------


def calibration_images(root: Path, count: int, offset: float = 0.5) -> list[Path]:
    """``count`` pictures under ``root``, sorted by path and taken at even steps (deterministic).

    Raises RebuildError when there are fewer pictures than asked for.
    """
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if count < 1 or len(files) < count:
        raise RebuildError(f"{root}: {len(files)} pictures, {count} asked for")
    return [files[int((i + offset) * len(files) / count)] for i in range(count)]


def letterboxed(images: list[np.ndarray], imgsz: int) -> Any:
    """BGR pictures -> a float tensor (N, 3, imgsz, imgsz), letterboxed as ultralytics trains."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from ultralytics.data.augment import LetterBox  # noqa: PLC0415

    box = LetterBox(new_shape=(imgsz, imgsz), auto=False)
    batch = np.stack([box(image=img)[..., ::-1].transpose(2, 0, 1) for img in images])
    return torch.from_numpy(np.ascontiguousarray(batch)).float() / 255.0


def read_images(paths: list[Path]) -> Iterator[np.ndarray]:
    """Decode pictures with OpenCV (BGR). Raises RebuildError on an unreadable one."""
    import cv2  # noqa: PLC0415

    for path in paths:
        img = cv2.imread(str(path))
        if img is None:
            raise RebuildError(f"{path}: cannot decode")
        yield img


def load_folded(units: list[Unit]) -> None:
    """Put the folded weights in; BN statistics neutral (mean 0, var 1) until measured."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    with torch.no_grad():
        for unit in units:
            unit.conv.weight.copy_(torch.from_numpy(unit.weight))
            bias = torch.from_numpy(unit.bias)
            if unit.bn is None:
                unit.conv.bias.copy_(bias)
                continue
            set_bn(unit.bn, torch.zeros_like(bias, dtype=torch.float64), None, bias)


def set_bn(bn: Any, mean: Any, var: Any, folded_bias: Any) -> None:
    """Unfold: eval-mode BN gives ``y - mean + (folded bias + mean) = y + folded bias``."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    if var is None:
        var = torch.ones_like(mean)
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(folded_bias.double() + mean)
        bn.num_batches_tracked.zero_()


def calibrate(model: Any, units: list[Unit], paths: list[Path], imgsz: int, batch: int) -> float:
    """Measure each BN conv's output mean and variance on ``paths`` and unfold the BNs.

    Returns the largest change of the model's eval output on the first batch, relative to its
    largest value: the unfolding keeps eval mode equal to the folded network.
    """
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    sums: dict[str, list[Any]] = {}  # name -> [sum, sum of squares, count], float64

    def hook(name: str) -> Callable[[Any, Any, Any], None]:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            y = output.detach().double()
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0] = acc[0] + y.sum(dim=(0, 2, 3))
            acc[1] = acc[1] + (y * y).sum(dim=(0, 2, 3))
            acc[2] += y.numel() // y.shape[1]

        return record

    with_bn = [u for u in units if u.bn is not None]
    handles = [u.conv.register_forward_hook(hook(u.name)) for u in with_bn]
    model.eval()
    first: Any = None
    try:
        with torch.no_grad():
            for start in range(0, len(paths), batch):
                x = letterboxed(list(read_images(paths[start : start + batch])), imgsz)
                out = model(x)[0]
                if first is None:
                    first = (x, out)
                print(f"rebuild: calibrated on {min(start + batch, len(paths))}/{len(paths)}")
    finally:
        for handle in handles:
            handle.remove()
    for unit in with_bn:
        total, squares, count = sums[unit.name]
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0.0)
        set_bn(unit.bn, mean, var, torch.from_numpy(unit.bias))
    with torch.no_grad():
        again = model(first[0])[0]
    return float((again - first[1]).abs().max() / first[1].abs().max())


# --- the checkpoint ----------------------------------------------------------------------------


def build_model(names: dict[int, str]) -> Any:
    """The ultralytics YOLO11n with 80 classes, built from its yaml (random weights)."""
    from ultralytics.nn.tasks import DetectionModel  # noqa: PLC0415

    model = DetectionModel("yolo11n.yaml", nc=NUM_CLASSES, verbose=False)
    model.names = names
    return model


def save_checkpoint(model: Any, out: Path, imgsz: int) -> None:
    """Write ``model`` as ultralytics writes a finished run's weights (fp16, no optimizer)."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    import ultralytics  # noqa: PLC0415

    ckpt = {
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "version": ultralytics.__version__,
        "license": LICENSE,
        "docs": DOCS,
        "epoch": -1,
        "best_fitness": None,
        "model": model.eval().half(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "train_args": {"task": "detect", "data": "coco.yaml", "imgsz": imgsz},
        "train_metrics": {},
        "train_results": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    torch.save(ckpt, partial)
    partial.replace(out)
    model.float()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_inputs(paths: list[Path]) -> None:
    """Check the exports against the sha256 in ``../shared/weights/README.md``.

    Raises RebuildError when a file is missing or differs.
    """
    for path in paths:
        if not path.is_file():
            raise RebuildError(f"{path} not found")
        expected = PINNED_SHA256.get(path.name)
        if expected is not None and sha256(path) != expected:
            raise RebuildError(f"{path}: sha256 differs from weights/README.md (altered file?)")


def rebuild(args: argparse.Namespace) -> Any:
    """Steps 1-5 of the module docstring; returns the model (float32, eval)."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    if not args.skip_sha_check:
        verify_inputs([args.ir, args.ir.with_suffix(".bin"), args.onnx])
    ir = read_ir_convs(args.ir)
    onnx_convs, names = read_onnx_convs(args.onnx)
    model = build_model(names)
    units = map_exports(model, ir, onnx_convs)
    print(
        f"rebuild: {len(ir)} convs mapped by module path, shapes and geometry checked; "
        f"{sum(u.bn is not None for u in units)} BatchNorms to unfold"
    )
    load_folded(units)
    paths = calibration_images(args.datasets, args.calib_images)
    drift = calibrate(model, units, paths, args.imgsz, args.batch)
    print(f"rebuild: eval output after unfolding differs by {drift:.1e} (relative, fp32)")
    if drift > 1e-4:
        raise RebuildError(f"unfolding changed the eval output by {drift:.1e}")
    save_checkpoint(model, args.out, args.imgsz)
    print(f"rebuild: wrote {args.out} ({args.out.stat().st_size:,} B, sha256 {sha256(args.out)})")
    return model


# --- --compare ---------------------------------------------------------------------------------


def video_frames(video: Path, indices: tuple[int, ...]) -> list[np.ndarray]:
    """The frames at ``indices`` of ``video`` (BGR); missing ones are skipped."""
    import cv2  # noqa: PLC0415

    cap = cv2.VideoCapture(str(video))
    frames = []
    try:
        for index in indices:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
    finally:
        cap.release()
    return frames


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def compare(ours: Path, reference: Path, pictures: list[np.ndarray], imgsz: int) -> None:
    """Print how far two checkpoints' raw outputs and detections are apart on ``pictures``."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    from ultralytics import YOLO  # noqa: PLC0415

    a, b = YOLO(str(ours)), YOLO(str(reference))
    x = letterboxed(pictures, imgsz)
    with torch.no_grad():
        raw_a, raw_b = (m.model.eval()(x)[0].numpy() for m in (a, b))
    # Relative to the reference, with a 1-pixel floor for the box and 0.1 for the scores;
    # "where found": anchors whose best reference score is >= 0.25 (what detection keeps).
    box_rel = np.abs(raw_a[:, :4] - raw_b[:, :4]) / np.maximum(np.abs(raw_b[:, :4]), 1.0)
    score_rel = np.abs(raw_a[:, 4:] - raw_b[:, 4:]) / np.maximum(raw_b[:, 4:], 0.1)
    found = np.broadcast_to(raw_b[:, 4:].max(axis=1, keepdims=True) >= 0.25, box_rel.shape)
    print(f"compare: raw outputs (B, 4 + 80, anchors) on {len(pictures)} pictures at {imgsz}:")
    for label, diff, where in (
        ("box xywh, all anchors", box_rel, None),
        ("box xywh, where found", box_rel, found),
        ("class scores, all", score_rel, None),
    ):
        values = diff if where is None else diff[where]
        print(
            f"compare:   {label}: relative difference median {np.median(values):.2e}, "
            f"99th percentile {np.percentile(values, 99):.2e}, max {values.max():.2e}"
        )
    matched, total, ours_total, worst_iou, worst_conf = 0, 0, 0, 1.0, 0.0
    for picture in pictures:
        mine, theirs = (m.predict(picture, conf=0.25, verbose=False)[0].boxes for m in (a, b))
        ours_total += len(mine)
        candidates = list(
            zip(mine.cls.tolist(), mine.conf.tolist(), mine.xyxy.numpy(), strict=True)
        )
        for cls, conf, xyxy in zip(
            theirs.cls.tolist(), theirs.conf.tolist(), theirs.xyxy.numpy(), strict=True
        ):
            total += 1
            pairs = [(c, _iou(box, xyxy)) for k, c, box in candidates if k == cls]
            best = max(pairs, key=lambda pair: pair[1], default=(0.0, 0.0))
            if best[1] >= 0.5:
                matched += 1
                worst_iou = min(worst_iou, best[1])
                worst_conf = max(worst_conf, abs(best[0] - conf))
    print(
        f"compare: detections (conf >= 0.25): {matched}/{total} of the reference's found again "
        f"(same class, IoU >= 0.5; ours {ours_total} in all); lowest IoU {worst_iou:.3f}, "
        f"largest confidence difference {worst_conf:.3f}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    ap.add_argument("--ir", type=Path, default=DEFAULT_IR, help="OpenVINO IR .xml (.bin next)")
    ap.add_argument("--onnx", type=Path, default=DEFAULT_ONNX, help="onnxruntime int8 ONNX")
    ap.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS, help="calibration root")
    ap.add_argument("--calib-images", type=int, default=200, help="calibration pictures")
    ap.add_argument("--imgsz", type=int, default=640, help="calibration input size (square)")
    ap.add_argument("--batch", type=int, default=8, help="calibration pictures per forward")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument(
        "--skip-sha-check", action="store_true", help="accept exports other than the pinned ones"
    )
    ap.add_argument("--compare", type=Path, help="a checkpoint to compare the result with")
    ap.add_argument(
        "--compare-images", type=int, default=8, help="dataset pictures for --compare (+ frames)"
    )
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="frames for --compare")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        rebuild(args)
        print(f"rebuild: done in {time.monotonic() - started:.0f} s")
        if args.compare is not None:
            paths = calibration_images(args.datasets, args.compare_images, offset=0.0)
            pictures = list(read_images(paths)) + video_frames(args.video, COMPARE_FRAMES)
            compare(args.out, args.compare, pictures, args.imgsz)
    except RebuildError as exc:
        print(f"rebuild: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
