"""A tiny real ONNX detector that finds solid magenta and cyan patches, for end-to-end tests.

Until the project's trained model lands, tests need a model that really detects something so an
alert can travel the whole path (ingest -> detect -> rules -> outbox -> MQTT). This one is built
with ``onnx.helper`` from plain operators and follows the ``yolo`` output convention of
``agent.detect.detector``: input ``images`` float32 ``[B, 3, S, S]`` (RGB, 0..1, dynamic batch),
output
``output0`` float32 ``[B, 4 + nc, N]``.

How it works, per detected colour (class 0 ``head_bare`` = magenta, class 1 ``face_no_mask`` =
cyan; further labels never fire):

* colour match per pixel: magenta is ``min(R, B) - G``, cyan ``min(G, B) - R``. Both are about 1
  for the saturated colour, 0 for grey (the letterbox padding), white and black, and rarely
  above 0.5 in natural footage. H.264 shifts saturated colours by a few percent and blurs
  edges over a pixel or two; the thresholds leave room for both.
* score on a stride-8 grid: the mean soft match over a 16x16 window around the cell, ramped so
  a filled window scores 0.95, times the smallest match within 2 pixels of the cell's centre.
  Patches smaller than the window never reach a high score, so texture and noise stay quiet,
  and cells on a pattern's blurred edge (whose row would give a sliver of a box) score ~0.
* box per cell, fitted to the pattern: along the cell's row and column, the distance to the
  nearest non-matching pixel on each side (position ramp times "not matching", then a MaxPool
  as wide as the image). For a cell inside a solid rectangle this is exactly the rectangle, so
  every cell of one patch predicts the same box and NMS keeps one.

Each colour has its own set of anchors (the convention allows one box per anchor), so
``N = 2 * (S / 8) ** 2``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.detect.model import write_manifest

OPSET = 17
IR_VERSION = 8  # onnxruntime >= 1.14 and OpenVINO >= 2023 read it
STRIDE = 8
WINDOW = 16

DEFAULT_LABELS = ("head_bare", "face_no_mask", "head_covered", "face_mask")

# (first, second, minus): score = min(channel first, channel second) - channel minus; RGB order.
_COLOURS = {"magenta": (0, 2, 1), "cyan": (1, 2, 0)}
_CLASS_COLOURS = ("magenta", "cyan")  # class 0, class 1

MATCH_OFFSET = 0.5  # soft match = clip((score - 0.5) * 4, 0, 1): full at 0.75, none below 0.5
MATCH_GAIN = 4.0
BINARY_THRESHOLD = 0.55  # a pixel belongs to the pattern for box fitting above this score
FILL_OFFSET = 0.35  # confidence ramps from window fill 0.35 (0) to 0.9 and above (0.95)
FILL_GAIN = 0.95 / 0.55
MAX_CONFIDENCE = 0.95
ERODE = 2  # the centre match is the minimum over +-2 pixels


class _Graph:
    """Collects nodes and initialisers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, value: np.ndarray | float | Sequence[int], prefix: str = "c") -> str:
        array = np.asarray(value)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def slice(
        self,
        x: str,
        starts: Sequence[int],
        ends: Sequence[int],
        axes: Sequence[int],
        steps: Sequence[int] | None = None,
    ) -> str:
        inputs = [x, self.const(list(starts)), self.const(list(ends)), self.const(list(axes))]
        if steps is not None:
            inputs.append(self.const(list(steps)))
        return self.op("Slice", inputs)


def _colour_branch(g: _Graph, images: str, colour: str, size: int) -> tuple[str, str]:
    """Return (boxes [B, 4, G*G], confidence [B, 1, G*G]) for one colour."""
    first, second, minus = _COLOURS[colour]
    channel = [g.slice(images, [c], [c + 1], [1]) for c in range(3)]
    score = g.op("Sub", [g.op("Min", [channel[first], channel[second]]), channel[minus]])
    zero, one = g.const(0.0), g.const(1.0)

    # Confidence: window fill around the cell times the match at its centre pixel.
    soft = g.op(
        "Clip",
        [
            g.op("Mul", [g.op("Sub", [score, g.const(MATCH_OFFSET)]), g.const(MATCH_GAIN)]),
            zero,
            one,
        ],
    )
    pad = (WINDOW - STRIDE) // 2
    fill = g.op(
        "AveragePool",
        [soft],
        kernel_shape=[WINDOW, WINDOW],
        strides=[STRIDE, STRIDE],
        pads=[pad, pad, pad, pad],
        count_include_pad=0,
    )
    ramp = g.op(
        "Clip",
        [
            g.op("Mul", [g.op("Sub", [fill, g.const(FILL_OFFSET)]), g.const(FILL_GAIN)]),
            zero,
            g.const(MAX_CONFIDENCE),
        ],
    )
    half = STRIDE // 2
    # The match at the centre, eroded over 5x5 (a min as -max(-x)): a cell within two pixels of
    # the pattern's edge scores ~0, because its row or column runs along a blurred edge where
    # the fitted box would be a sliver.
    near = g.slice(soft, [half - ERODE, half - ERODE], [size, size], [2, 3])
    eroded = g.op(
        "MaxPool",
        [g.op("Neg", [near])],
        kernel_shape=[2 * ERODE + 1, 2 * ERODE + 1],
        strides=[STRIDE, STRIDE],
    )
    confidence = g.op("Mul", [ramp, g.op("Neg", [eroded])])  # [B, 1, G, G]

    # Box: run of matching pixels through the cell centre, left/right along its row and
    # up/down along its column. "not matching" x position ramp, max over the side -> the
    # nearest edge. Where the whole side matches the max is 0, which is the image border.
    binary = g.op(
        "Cast", [g.op("Greater", [score, g.const(BINARY_THRESHOLD)])], to=TensorProto.FLOAT
    )
    outside = g.op("Sub", [one, binary])
    positions = np.arange(size, dtype=np.float32)
    edges: list[str] = []
    for axis in (3, 2):  # x then y
        other = 2 if axis == 3 else 3
        line = g.slice(outside, [half], [size], [other], [STRIDE])  # rows (or columns) of cells
        shape = [1, 1, 1, size] if axis == 3 else [1, 1, size, 1]
        kernel = [1, size] if axis == 3 else [size, 1]
        strides = [1, STRIDE] if axis == 3 else [STRIDE, 1]
        # Lower edge: max of (p + 1) over non-matching p <= centre; that is the run's first pixel.
        lower_ramp = g.const((positions + 1).reshape(shape))
        lower_pads = [0, size - half - 1, 0, 0] if axis == 3 else [size - half - 1, 0, 0, 0]
        lower = g.op(
            "MaxPool",
            [g.op("Mul", [line, lower_ramp])],
            kernel_shape=kernel,
            strides=strides,
            pads=lower_pads,
        )
        # Upper edge: size - max of (size - p) over non-matching p >= centre; the run's end.
        tail = g.slice(line, [half], [size], [axis])
        tail_shape = [1, 1, 1, size - half] if axis == 3 else [1, 1, size - half, 1]
        upper_ramp = g.const((size - positions[half:]).reshape(tail_shape))
        upper_pads = [0, 0, 0, size - 1] if axis == 3 else [0, 0, size - 1, 0]
        upper_max = g.op(
            "MaxPool",
            [g.op("Mul", [tail, upper_ramp])],
            kernel_shape=kernel,
            strides=strides,
            pads=upper_pads,
        )
        upper = g.op("Sub", [g.const(float(size)), upper_max])
        edges.extend((lower, upper))
    x1, x2, y1, y2 = edges
    half_const = g.const(0.5)
    cx = g.op("Mul", [g.op("Add", [x1, x2]), half_const])
    cy = g.op("Mul", [g.op("Add", [y1, y2]), half_const])
    w = g.op("Relu", [g.op("Sub", [x2, x1])])
    h = g.op("Relu", [g.op("Sub", [y2, y1])])
    flat = g.const([0, 0, -1])
    boxes = g.op("Reshape", [g.op("Concat", [cx, cy, w, h], axis=1), flat])
    return boxes, g.op("Reshape", [confidence, flat])


def build_pattern_graph(
    labels: Sequence[str], input_size: int, *, batch: int | None = None, transposed: bool = False
) -> onnx.ModelProto:
    """Return the pattern detector as an ONNX model (not yet saved).

    ``batch`` fixes the batch axis (default: dynamic). ``transposed`` emits ``[B, N, 4 + nc]``
    instead of ``[B, 4 + nc, N]``, like some third-party exports.

    Raises:
        ValueError: ``input_size`` is not a multiple of 8 of at least 32, or fewer than two labels.
    """
    if input_size < 32 or input_size % STRIDE:
        raise ValueError(f"input_size must be a multiple of {STRIDE} and >= 32, not {input_size}")
    if len(labels) < 2:
        raise ValueError("the pattern model needs at least two labels (magenta, cyan)")
    g = _Graph()
    blocks: list[str] = []
    for class_id, colour in enumerate(_CLASS_COLOURS):
        boxes, confidence = _colour_branch(g, "images", colour, input_size)
        silent = g.op("Mul", [confidence, g.const(0.0)])
        rows = [confidence if i == class_id else silent for i in range(len(labels))]
        blocks.append(g.op("Concat", [boxes, *rows], axis=1))
    anchors = len(_CLASS_COLOURS) * (input_size // STRIDE) ** 2
    batch_dim: int | str = "batch" if batch is None else batch
    output_shape: list[int | str] = [batch_dim, 4 + len(labels), anchors]
    if transposed:
        joined = g.op("Concat", blocks, axis=2)
        g.nodes.append(helper.make_node("Transpose", [joined], ["output0"], perm=[0, 2, 1]))
        output_shape = [batch_dim, anchors, 4 + len(labels)]
    else:
        g.nodes.append(helper.make_node("Concat", blocks, ["output0"], axis=2))
    graph = helper.make_graph(
        g.nodes,
        "mclz_pattern_detector",
        [
            helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [batch_dim, 3, input_size, input_size]
            )
        ],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output_shape)],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="mclz-agent mclz_testkit/synthetic_model.py",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def build_pattern_model(
    out_dir: Path,
    *,
    labels: Sequence[str] = DEFAULT_LABELS,
    input_size: int = 320,
    batch: int | None = None,
    transposed: bool = False,
) -> Path:
    """Write ``model.onnx`` and ``manifest.yaml`` for the pattern detector into ``out_dir``.

    Class 0 fires on solid magenta (RGB 1, 0, 1), class 1 on solid cyan (RGB 0, 1, 1); any
    further labels never fire. ``batch`` and ``transposed`` as in :func:`build_pattern_graph`.
    Returns ``out_dir``.
    """
    model = build_pattern_graph(labels, input_size, batch=batch, transposed=transposed)
    return _save_package(
        out_dir,
        model,
        "mclz-synthetic-pattern",
        labels,
        input_size,
        "Synthetic test model from mclz_testkit/synthetic_model.py: class 0 fires on solid "
        "magenta, class 1 on solid cyan patches; not a trained detector",
    )


def _save_package(
    out_dir: Path,
    model: onnx.ModelProto,
    name: str,
    labels: Sequence[str],
    input_size: int,
    notes: str,
) -> Path:
    """Write ``model.onnx`` and its manifest into ``out_dir``; return ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    write_manifest(
        out_dir,
        name=name,
        version="0.0.1",
        onnx_file="model.onnx",
        labels=labels,
        input_width=input_size,
        input_height=input_size,
        license="Apache-2.0",
        notes=notes,
    )
    return out_dir


def build_slow_model(
    out_dir: Path, *, iterations: int, labels: Sequence[str] = DEFAULT_LABELS, input_size: int = 320
) -> Path:
    """The pattern detector plus a busy loop that runs only on pictures with a bright pixel.

    The agent's warm-up batch is grey, so loading stays fast; a real frame with a saturated
    patch (any channel above 0.9) makes each inference run ``iterations`` 256x256 matrix
    products first: a detector that hangs on real input, for the watchdog test. The loop's
    result is added as ``0 * sum`` to the output, so no optimiser can drop it.
    """
    model = build_pattern_graph(labels, input_size)
    graph = model.graph
    (output,) = [o for o in graph.output if o.name == "output0"]
    (last,) = [n for n in graph.node if "output0" in n.output]
    last.output[0] = "pattern_output"
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight, "slow_w"),
            numpy_helper.from_array(np.ones((256, 256), np.float32), "slow_v0"),
            numpy_helper.from_array(np.array(0.9, np.float32), "slow_bright"),
            numpy_helper.from_array(np.array(iterations, np.int64), "slow_iterations"),
            numpy_helper.from_array(np.array(True), "slow_true"),
            numpy_helper.from_array(np.array(0.0, np.float32), "slow_zero"),
        ]
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["v_in", "slow_w"], ["v_mm"]),
            helper.make_node("Tanh", ["v_mm"], ["v_out"]),
        ],
        "slow_body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [256, 256]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [256, 256]),
        ],
    )
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["images"], ["slow_max"], keepdims=0),
            helper.make_node("Greater", ["slow_max", "slow_bright"], ["slow_is_bright"]),
            helper.make_node("Cast", ["slow_is_bright"], ["slow_flag"], to=TensorProto.INT64),
            helper.make_node("Mul", ["slow_flag", "slow_iterations"], ["slow_trips"]),
            helper.make_node("Loop", ["slow_trips", "slow_true", "slow_v0"], ["slow_v"], body=body),
            helper.make_node("ReduceSum", ["slow_v"], ["slow_sum"], keepdims=0),
            helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
            helper.make_node("Add", ["pattern_output", "slow_nothing"], [output.name]),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return _save_package(
        out_dir,
        model,
        "mclz-synthetic-slow",
        labels,
        input_size,
        "Synthetic test model: the pattern detector, slowed down on bright pictures",
    )
