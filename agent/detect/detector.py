"""Detection stage: load a model package, letterbox frames, run ONNX inference, decode boxes.

A model package is a directory with ``manifest.yaml`` and the ONNX file it names. The
manifest pins the file's sha256, the input size and preprocessing, the output convention and
the class labels, so a box never runs a model other than the one that was shipped; it also
says which labels are violations of which type and each label's default threshold::

    format: mclz-model/1
    name: mclz-default
    version: 2026.11.26-e30
    file: model.onnx
    sha256: <64 hex digits>
    input: {width: 416, height: 416, layout: NCHW, color: RGB, scale: 0.00392156862745098}
    output: yolo
    labels: [face_mask, face_no_mask, head_covered, head_bare, person_uniform, person_no_uniform]
    violations: {face_no_mask: no_mask, head_bare: no_hat}     # optional: label -> violation type
    thresholds: {face_no_mask: 0.4, head_bare: 0.4}            # optional: label -> confidence
    license: ...

A ``manifest.json`` with the same fields is read too (JSON is YAML).

Output convention ``yolo`` is the ultralytics YOLOv8/YOLO11 ONNX export: one output
``[B, 4 + nc, N]`` whose rows are cx, cy, w, h in input pixels followed by ``nc`` class scores
already in 0..1 (no objectness). The transposed ``[B, N, 4 + nc]`` is accepted when the shape
says unambiguously which axis is which.

Backends sit behind :class:`InferenceBackend`: onnxruntime (always installed) and OpenVINO
(optional extra, imported only when asked for). Nothing here imports torch, ultralytics or onnx.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt
import yaml

from agent.errors import ModelError
from agent.records import Detection

logger = logging.getLogger(__name__)

MANIFEST_NAME: Final = "manifest.yaml"
MANIFEST_NAMES: Final = (MANIFEST_NAME, "manifest.json")
MANIFEST_FORMAT: Final = "mclz-model/1"
OUTPUT_CONVENTIONS: Final = ("yolo",)
BACKENDS: Final = ("onnxruntime", "openvino")
PAD_VALUE: Final = 114
DEFAULT_SCALE: Final = 1.0 / 255.0

# Candidates kept for NMS after the confidence threshold, highest first. Bounds NMS cost when a
# badly chosen threshold lets thousands of anchors through.
MAX_NMS_CANDIDATES: Final = 2048
#: Images per inference call for a model with a dynamic batch axis. On a CPU a larger batch
#: buys almost nothing per image (0.91-1.08x, scripts/bench_detect.py) but the runtime keeps
#: the activations of the largest batch it ever ran: 24 tiles in one call held about 670 MB
#: more than 6 (scripts/bench.py --tiles 2x2).
MAX_BATCH: Final = 4

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_FIELDS: Final = (
    "format",
    "name",
    "version",
    "file",
    "sha256",
    "input",
    "output",
    "labels",
)
_RESERVED_FIELDS: Final = frozenset((*_REQUIRED_FIELDS, "violations", "thresholds"))
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

FloatArray = npt.NDArray[np.float32]
UInt8Array = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ModelPackage:
    """A verified model package: manifest fields plus the resolved ONNX path."""

    path: Path
    name: str
    version: str
    onnx_path: Path
    sha256: str
    input_width: int
    input_height: int
    labels: tuple[str, ...]
    manifest: dict[str, Any] = field(repr=False, compare=False)
    violations: dict[str, str] = field(default_factory=dict)  # label -> violation type
    thresholds: dict[str, float] = field(default_factory=dict)  # label -> default confidence

    @property
    def color(self) -> str:
        """Channel order the model expects, ``RGB`` or ``BGR``."""
        return str(self.manifest.get("input", {}).get("color", "RGB"))

    @property
    def scale(self) -> float:
        """Factor applied to 0..255 pixel values before inference."""
        return float(self.manifest.get("input", {}).get("scale", DEFAULT_SCALE))


# --------------------------------------------------------------------------- model packages


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _format_problems(value: object) -> list[str]:
    if value != MANIFEST_FORMAT:
        return [f"unknown format {value!r} (this agent reads {MANIFEST_FORMAT!r})"]
    return []


def _text_problems(key: str) -> Callable[[object], list[str]]:
    def check(value: object) -> list[str]:
        if not isinstance(value, str) or not value.strip():
            return [f"'{key}' must be a non-empty string"]
        return []

    return check


def _file_problems(value: object) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return ["'file' must be a non-empty string"]
    if Path(value).is_absolute() or ".." in Path(value).parts:
        return [f"'file' must be a path inside the package directory, not {value!r}"]
    return []


def _sha256_problems(value: object) -> list[str]:
    if not isinstance(value, str) or not _SHA256_RE.match(value.lower()):
        return ["'sha256' must be 64 hexadecimal digits"]
    return []


def _output_problems(value: object) -> list[str]:
    if value not in OUTPUT_CONVENTIONS:
        supported = ", ".join(OUTPUT_CONVENTIONS)
        return [f"unknown output convention {value!r} (supported: {supported})"]
    return []


def _labels_problems(value: object) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, str) and x.strip() for x in value)
    ):
        return ["'labels' must be a non-empty list of non-empty strings"]
    if len(set(value)) != len(value):
        return ["'labels' must not repeat a name"]
    return []


def _mapping_problems(data: dict[str, Any]) -> list[str]:
    raw_labels = data.get("labels")
    labels: list[Any] = raw_labels if isinstance(raw_labels, list) else []
    problems: list[str] = []
    violations = data.get("violations", {})
    if not isinstance(violations, dict):
        problems.append("'violations' must map labels to violation types")
    else:
        for label, kind in violations.items():
            if label not in labels:
                problems.append(f"'violations' names {label!r}, which is not one of the labels")
            if not isinstance(kind, str) or not _TYPE_RE.match(kind):
                problems.append(f"'violations.{label}' must be a type id like no_hat, not {kind!r}")
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict):
        problems.append("'thresholds' must map labels to confidences")
    else:
        for label, value in thresholds.items():
            if label not in labels:
                problems.append(f"'thresholds' names {label!r}, which is not one of the labels")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                problems.append(f"'thresholds.{label}' must be a number in (0, 1], not {value!r}")
    return problems


def _manifest_problems(data: object) -> list[str]:
    """Return every problem with a parsed manifest, each phrased for a person; empty when valid."""
    if not isinstance(data, dict):
        return [f"must be a mapping of fields (format, name, ...), not {type(data).__name__}"]
    checks: dict[str, Callable[[object], list[str]]] = {
        "format": _format_problems,
        "name": _text_problems("name"),
        "version": _text_problems("version"),
        "file": _file_problems,
        "sha256": _sha256_problems,
        "input": _input_problems,
        "output": _output_problems,
        "labels": _labels_problems,
    }
    problems: list[str] = []
    for key in _REQUIRED_FIELDS:
        if key not in data:
            problems.append(f"missing field '{key}'")
        else:
            problems.extend(checks[key](data[key]))
    problems.extend(_mapping_problems(data))
    return problems


def _input_problems(spec: object) -> list[str]:
    if not isinstance(spec, dict):
        return ["'input' must be an object with width and height"]
    problems: list[str] = []
    for key in ("width", "height"):
        value = spec.get(key)
        if value is None:
            problems.append(f"missing field 'input.{key}'")
        elif not _is_int(value) or not 0 < value <= 8192:
            problems.append(f"'input.{key}' must be an integer in 1..8192, not {value!r}")
    if spec.get("layout", "NCHW") != "NCHW":
        problems.append(f"'input.layout' must be 'NCHW', not {spec['layout']!r}")
    if spec.get("color", "RGB") not in ("RGB", "BGR"):
        problems.append(f"'input.color' must be 'RGB' or 'BGR', not {spec['color']!r}")
    scale = spec.get("scale", DEFAULT_SCALE)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1:
        problems.append(f"'input.scale' must be a number in (0, 1], not {scale!r}")
    return problems


def load_model_package(path: Path) -> ModelPackage:
    """Read and verify a model package directory (or its manifest file).

    Checks the manifest's format and fields, that the ONNX file exists inside the package and
    that its sha256 matches the manifest. Does not load the ONNX graph: :class:`Detector` does.

    Raises:
        ModelError: the directory, manifest or ONNX file is missing, the manifest is not valid
            YAML or lacks a field, or the file's sha256 differs. The message names the path.
    """
    path = Path(path)
    if path.is_file() or path.suffix in {".json", ".yaml", ".yml"}:
        manifest_path = path
    else:
        manifest_path = next(
            (path / n for n in MANIFEST_NAMES if (path / n).is_file()), path / MANIFEST_NAME
        )
    package_dir = manifest_path.parent
    if not package_dir.is_dir():
        raise ModelError(f"{package_dir}: model package directory not found")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{manifest_path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path}: cannot read manifest: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{manifest_path}:{mark.line + 1}:{mark.column + 1}" if mark else str(manifest_path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelError(f"{where}: invalid YAML: {problem}") from None
    problems = _manifest_problems(data)
    if problems:
        raise ModelError(f"{manifest_path}: " + "; ".join(problems))

    onnx_path = package_dir / data["file"]
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found (named by {manifest_path})")
    expected = data["sha256"].lower()
    try:
        actual = _sha256_of(onnx_path)
    except OSError as exc:
        raise ModelError(f"{onnx_path}: cannot read model file: {exc}") from exc
    if actual != expected:
        raise ModelError(
            f"{onnx_path} sha256 is {actual}, manifest says {expected}: "
            "the file is corrupt or was replaced"
        )
    return ModelPackage(
        path=package_dir,
        name=data["name"],
        version=data["version"],
        onnx_path=onnx_path,
        sha256=actual,
        input_width=data["input"]["width"],
        input_height=data["input"]["height"],
        labels=tuple(data["labels"]),
        manifest=data,
        violations={str(k): str(v) for k, v in data.get("violations", {}).items()},
        thresholds={str(k): float(v) for k, v in data.get("thresholds", {}).items()},
    )


def write_manifest(
    package_dir: Path,
    *,
    name: str,
    version: str,
    onnx_file: str,
    labels: Sequence[str],
    input_width: int,
    input_height: int,
    color: str = "RGB",
    scale: float = DEFAULT_SCALE,
    output: str = "yolo",
    violations: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
    **extra: Any,
) -> Path:
    """Hash ``package_dir/onnx_file`` and write ``package_dir/manifest.yaml`` atomically.

    ``extra`` keys (``license``, ``notes``, metrics, provenance) are stored at the top level.
    Returns the manifest's path.

    Raises:
        ModelError: the ONNX file is missing or the fields do not make a valid manifest.
        ValueError: an ``extra`` key would overwrite one of the manifest's own fields.
    """
    package_dir = Path(package_dir)
    clashes = sorted(_RESERVED_FIELDS.intersection(extra))
    if clashes:
        raise ValueError(f"extra manifest keys clash with reserved fields: {', '.join(clashes)}")
    manifest_path = package_dir / MANIFEST_NAME
    onnx_path = package_dir / onnx_file
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found")
    data: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "file": onnx_file,
        "sha256": _sha256_of(onnx_path),
        "input": {
            "width": input_width,
            "height": input_height,
            "layout": "NCHW",
            "color": color,
            "scale": scale,
        },
        "output": output,
        "labels": list(labels),
        "violations": dict(violations or {}),
        "thresholds": dict(thresholds or {}),
        **extra,
    }
    problems = _manifest_problems(data)
    if problems:
        raise ModelError(f"{manifest_path}: " + "; ".join(problems))
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", suffix=".yaml", dir=package_dir)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the agent may run as another user
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# mclz-agent model package manifest, written by write_manifest\n")
            yaml.safe_dump(data, fh, allow_unicode=True, sort_keys=False)
        Path(tmp_name).replace(manifest_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return manifest_path


# --------------------------------------------------------------------------- backends


Dim = int | None  # None: a dynamic (symbolic) dimension


class InferenceBackend(Protocol):
    """What :class:`Detector` needs from an inference engine."""

    name: str
    input_shape: tuple[Dim, ...]

    def run(self, batch: FloatArray) -> FloatArray:
        """Run the model on an NCHW float32 batch and return its first output."""
        ...


def _dims(shape: Sequence[object]) -> tuple[Dim, ...]:
    """Static dimensions as ints; symbolic names, None and non-positive values as None."""
    return tuple(
        d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in shape
    )


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """Exception classes onnxruntime raises; its pybind errors derive from Exception directly."""
    errors: list[type[BaseException]] = [RuntimeError, ValueError, OSError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state  # noqa: PLC0415
    except ImportError:  # pragma: no cover - layout of onnxruntime's private module changed
        return tuple(errors)
    for name in (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    ):
        cls = getattr(state, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


class OnnxRuntimeBackend:
    """CPU inference with onnxruntime."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, *, threads: int) -> None:
        import onnxruntime as ort  # noqa: PLC0415 - keep import time off the CLI's fast paths

        self._errors = _onnxruntime_errors()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Idle worker threads spin by default; on a 2-4 core box that steals CPU from decoding.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except self._errors as exc:
            raise ModelError(f"{onnx_path}: onnxruntime cannot load the model: {exc}") from exc
        self._path = onnx_path
        model_input = self._session.get_inputs()[0]
        self._input_name: str = model_input.name
        self.input_shape: tuple[Dim, ...] = _dims(model_input.shape)
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_name: str = self._session.get_outputs()[0].name

    def run(self, batch: FloatArray) -> FloatArray:
        """Run the session on ``batch``; raises ModelError when onnxruntime fails."""
        try:
            outputs = self._session.run(
                [self._output_name], {self._input_name: batch.astype(self._input_dtype, copy=False)}
            )
        except self._errors as exc:
            raise ModelError(f"{self._path}: inference failed: {exc}") from exc
        return np.asarray(outputs[0], dtype=np.float32)


class OpenVinoBackend:
    """CPU inference with OpenVINO (the ``openvino`` extra). Not safe to share across threads."""

    name = "openvino"

    def __init__(self, onnx_path: Path, *, threads: int) -> None:
        try:
            import openvino as ov  # noqa: PLC0415 - optional extra, imported only when chosen
        except ImportError:
            raise ModelError(
                f"{onnx_path}: backend 'openvino' is not installed: "
                "pip install mclz-agent[openvino]"
            ) from None
        try:
            core = ov.Core()
            model = core.read_model(str(onnx_path))
            self._compiled = core.compile_model(
                model,
                "CPU",
                {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"{onnx_path}: OpenVINO cannot load the model: {exc}") from exc
        self._path = onnx_path
        self._request = self._compiled.create_infer_request()
        shape = model.inputs[0].get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)

    def run(self, batch: FloatArray) -> FloatArray:
        """Run one inference request on ``batch``; raises ModelError when OpenVINO fails."""
        try:
            self._request.infer({0: batch})
            output = self._request.get_output_tensor(0).data
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{self._path}: inference failed: {exc}") from exc
        # The request reuses its output buffer on the next call.
        return np.array(output, dtype=np.float32, copy=True)


def _make_backend(name: str, onnx_path: Path, threads: int) -> InferenceBackend:
    if name == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path, threads=threads)
    if name == "openvino":
        return OpenVinoBackend(onnx_path, threads=threads)
    raise ModelError(f"{onnx_path}: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")


# --------------------------------------------------------------------------- pre/post-processing


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a frame was placed in the model input: resized size and top-left padding."""

    frame_width: int
    frame_height: int
    resized_width: int
    resized_height: int
    pad_left: int
    pad_top: int


def check_frame(frame_bgr: UInt8Array) -> None:
    """Raise ValueError unless ``frame_bgr`` is an HxWx3 uint8 array."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 BGR frame, got shape {frame_bgr.shape} {frame_bgr.dtype}"
        )


def letterbox(
    frame_bgr: UInt8Array, width: int, height: int, out: UInt8Array | None = None
) -> tuple[UInt8Array, Letterbox]:
    """Resize ``frame_bgr`` into ``width`` x ``height`` keeping its aspect ratio, pad with grey.

    The resized frame is centred; the rest is (114, 114, 114). Returns the HWC BGR image and the
    geometry needed to map boxes back to the frame.

    Raises:
        ValueError: the frame is not an HxWx3 uint8 array.
    """
    check_frame(frame_bgr)
    fh, fw = frame_bgr.shape[:2]
    if fh == 0 or fw == 0:
        raise ValueError(f"empty frame of shape {frame_bgr.shape}")
    ratio = min(width / fw, height / fh)
    rw = min(width, max(1, round(fw * ratio)))
    rh = min(height, max(1, round(fh * ratio)))
    left = (width - rw) // 2
    top = (height - rh) // 2
    geometry = Letterbox(fw, fh, rw, rh, left, top)
    resized = (
        frame_bgr
        if (rw, rh) == (fw, fh)
        else cv2.resize(frame_bgr, (rw, rh), interpolation=cv2.INTER_LINEAR)
    )
    if out is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
    if (rw, rh) != (width, height):
        # Only the borders are filled; the resized frame overwrites the middle.
        out[:top] = PAD_VALUE
        out[top + rh :] = PAD_VALUE
        out[top : top + rh, :left] = PAD_VALUE
        out[top : top + rh, left + rw :] = PAD_VALUE
    out[top : top + rh, left : left + rw] = resized
    return out, geometry


def _to_tensor(image_bgr: UInt8Array, out: FloatArray, *, scale: float, rgb: bool) -> None:
    """Write an HWC BGR uint8 image into a CHW float32 slot, scaled and in the model's order."""
    # cv2.split gives contiguous planes; scaling those is faster than a strided transpose.
    planes = cv2.split(image_bgr)
    if rgb:
        planes = planes[::-1]
    factor = np.float32(scale)
    for channel, plane in enumerate(planes):
        np.multiply(plane, factor, out=out[channel], casting="unsafe")


def nms(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: npt.NDArray[np.intp],
    *,
    iou_threshold: float,
    max_detections: int,
) -> npt.NDArray[np.intp]:
    """Greedy class-aware non-maximum suppression; returns kept indices, best score first.

    Boxes are x1, y1, x2, y2. A box is dropped when it overlaps a kept, higher-scoring box of
    the same class by IoU above ``iou_threshold``; boxes of different classes never suppress
    each other. Uses OpenCV's batched NMS: at the tens to hundreds of candidates a frame
    gives, it is 10-50 times faster than a numpy loop (see scripts/bench_detect.py).
    """
    if len(scores) == 0:
        return np.empty(0, dtype=np.intp)
    xywh = np.empty((len(boxes), 4), dtype=np.float64)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    # score_threshold -1: candidates are already thresholded; OpenCV keeps only score > it.
    # Python lists convert faster than arrays here, and floats select the Rect2d overload.
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.tolist(), class_ids.tolist(), -1.0, float(iou_threshold)
    )
    indices = np.asarray(kept, dtype=np.intp).reshape(-1)
    # OpenCV already returns best first; sort again so ties and versions cannot reorder.
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    return indices[:max_detections]


# --------------------------------------------------------------------------- views and tiles

#: A detection within this share of a tile's inner edge may be a cut-off part of an object.
EDGE_MARGIN: Final = 0.01
#: Cross-tile merge: two same-class boxes are one object when the smaller lies this much
#: inside the larger and one of them touches an inner tile edge.
MERGE_INSIDE: Final = 0.5
#: Two parts of a cut object from tiles without overlap are at most this far apart (0..1).
TOUCH: Final = 0.002

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels
MAX_TILES: Final = 4  # tiles per row or column a camera may ask for (config and CLIs)


@dataclass(frozen=True, slots=True)
class View:
    """The part of a frame the detector looks at, and in how many tiles.

    ``crop`` is x0, y0, x1, y1 in 0..1 of the frame; nothing outside it is detected.
    ``cols`` x ``rows`` tiles cover the crop, each letterboxed to the model's full input,
    neighbours overlapping by ``overlap`` of a tile, so an object cut by one tile's edge is
    whole in the next. A 1080p frame seen whole reaches a 416 model at a fifth of its size,
    and a face of 60 px becomes 13 px, below what the model finds reliably (MODEL_CARD.md);
    2x2 tiles double that at four times the inference.
    """

    crop: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    cols: int = 1
    rows: int = 1
    overlap: float = 0.15

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.crop
        if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
            raise ValueError(f"crop must be x0 < x1 and y0 < y1 within 0..1, not {self.crop!r}")
        if not (_is_int(self.cols) and _is_int(self.rows) and self.cols >= 1 and self.rows >= 1):
            raise ValueError(f"tiles must be integers >= 1, not {self.cols!r} x {self.rows!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), not {self.overlap!r}")

    @property
    def tiles(self) -> int:
        """Model inputs per frame."""
        return self.cols * self.rows

    @property
    def is_whole(self) -> bool:
        """The whole frame in one piece: plain detection."""
        return self.tiles == 1 and self.crop == (0.0, 0.0, 1.0, 1.0)

    def scale(self, width: int, height: int, input_width: int, input_height: int) -> float:
        """How large objects of a ``width`` x ``height`` frame reach a model input of the
        given size (the factor of the largest tile; letterboxing keeps the aspect ratio)."""
        return min(
            min(input_width / (x1 - x0), input_height / (y1 - y0))
            for x0, y0, x1, y1 in self.windows(width, height)
        )

    def bounds(self, width: int, height: int) -> Window:
        """The crop of a ``width`` x ``height`` frame in pixels, as its tiles cover it."""
        x0, y0, x1, y1 = self.crop
        left, right = _span(x0, x1, width)
        top, bottom = _span(y0, y1, height)
        return left, top, right, bottom

    def windows(self, width: int, height: int) -> list[Window]:
        """The tiles of a ``width`` x ``height`` frame in pixels, row by row.

        Each is at least one pixel; together they cover the crop exactly.
        """
        left, top, right, bottom = self.bounds(width, height)
        xs = _tile_spans(left, right, self.cols, self.overlap)
        ys = _tile_spans(top, bottom, self.rows, self.overlap)
        return [(a, b, c, d) for b, d in ys for a, c in xs]


def parse_tiles(text: str) -> tuple[int, int]:
    """``COLSxROWS`` (1-4 each, e.g. ``2x2``) as (columns, rows).

    Raises:
        ValueError: anything else, with the reason.
    """
    cols, sep, rows = text.lower().partition("x")
    if not sep or not cols.strip().isdigit() or not rows.strip().isdigit():
        raise ValueError(f"{text!r} is not COLSxROWS, e.g. 2x2")
    c, r = int(cols), int(rows)
    if not (1 <= c <= MAX_TILES and 1 <= r <= MAX_TILES):
        raise ValueError(f"{text!r}: columns and rows must be 1 to {MAX_TILES}")
    return c, r


def _span(start: float, end: float, size: int) -> tuple[int, int]:
    """``start``..``end`` (0..1) of ``size`` pixels, at least one pixel wide."""
    first = min(size - 1, max(0, math.floor(start * size)))
    last = max(first + 1, min(size, math.ceil(end * size)))
    return first, last


def _tile_spans(start: int, end: int, count: int, overlap: float) -> list[tuple[int, int]]:
    """``count`` spans covering ``start``..``end``, neighbours sharing ``overlap`` of a span."""
    if count == 1:
        return [(start, end)]
    length = end - start
    tile = max(1.0, length / (count - (count - 1) * overlap))
    step = (length - tile) / (count - 1)  # = tile * (1 - overlap) unless the strip is tiny
    spans = []
    for i in range(count):
        a = min(end - 1, start + round(i * step))
        # Offsets rounded alike on both sides, so neighbours without overlap touch exactly.
        b = end if i == count - 1 else min(end, max(a + 1, start + round(i * step + tile)))
        spans.append((a, b))
    return spans


def _touches_inner_edge(box: tuple[float, float, float, float], inner: tuple[bool, ...]) -> bool:
    """Whether ``box`` (0..1 of its tile) reaches a tile edge that lies inside the crop.

    ``inner``: left, top, right, bottom edge of the tile is inside the crop.
    """
    x1, y1, x2, y2 = box
    near = (x1 <= EDGE_MARGIN, y1 <= EDGE_MARGIN, x2 >= 1 - EDGE_MARGIN, y2 >= 1 - EDGE_MARGIN)
    return any(n and i for n, i in zip(near, inner, strict=True))


def _area(box: tuple[float, float, float, float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _intersection(
    a: tuple[float, float, float, float], b: tuple[float, float, float, float]
) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _abut(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two boxes touch along an edge over at least half the shorter side."""
    gap_x = max(a[0], b[0]) - min(a[2], b[2])  # < 0: they overlap in x
    gap_y = max(a[1], b[1]) - min(a[3], b[3])
    shared_x = -gap_x / max(1e-12, min(a[2] - a[0], b[2] - b[0]))
    shared_y = -gap_y / max(1e-12, min(a[3] - a[1], b[3] - b[1]))
    return (0.0 <= gap_x <= TOUCH and shared_y >= MERGE_INSIDE) or (
        0.0 <= gap_y <= TOUCH and shared_x >= MERGE_INSIDE
    )


@dataclass(slots=True)
class _TileDetection:
    detection: Detection
    tile: int
    cut: bool  # touches an inner tile edge: may be part of an object


def merge_tiles(found: Sequence[_TileDetection], *, iou_threshold: float) -> list[Detection]:
    """One detection per object from detections of overlapping tiles (frame coordinates).

    Greedy by confidence: a detection of the same class as a kept one from another tile is
    the same object when their IoU exceeds ``iou_threshold``, or when one of them touches an
    inner tile edge and the smaller lies at least MERGE_INSIDE inside the larger; it is then
    folded into the kept one (union of the boxes, the higher confidence). Detections of one
    tile were already separated by that tile's NMS and never merge with each other.
    """
    kept: list[tuple[Detection, set[int], bool]] = []
    for item in sorted(found, key=lambda f: -f.detection.confidence):
        det = item.detection
        for k, (other, tiles, cut) in enumerate(kept):
            if other.class_id != det.class_id or item.tile in tiles:
                continue
            inter = _intersection(det.box, other.box)
            if inter <= 0.0:
                # Tiles without overlap: the two parts of a cut object only touch.
                same = cut and item.cut and _abut(det.box, other.box)
            else:
                a, b = _area(det.box), _area(other.box)
                iou = inter / (a + b - inter)
                inside = inter / max(1e-12, min(a, b))
                same = iou > iou_threshold or ((cut or item.cut) and inside >= MERGE_INSIDE)
            if same:
                union = (
                    min(det.box[0], other.box[0]),
                    min(det.box[1], other.box[1]),
                    max(det.box[2], other.box[2]),
                    max(det.box[3], other.box[3]),
                )
                kept[k] = (
                    Detection(other.label, other.class_id, other.confidence, union),
                    tiles | {item.tile},
                    cut and item.cut,
                )
                break
        else:
            kept.append((det, {item.tile}, item.cut))
    return [d for d, _, _ in kept]


# --------------------------------------------------------------------------- detector


class Detector:
    """Runs a model package on BGR frames and returns detections in frame coordinates.

    One instance per thread: the OpenVINO backend reuses a single inference request.
    """

    def __init__(
        self,
        package: ModelPackage,
        *,
        backend: str = "onnxruntime",
        threads: int = 1,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
    ) -> None:
        """Load the package's ONNX file with ``backend`` and check it against the manifest.

        Raises:
            ModelError: unknown or missing backend, the ONNX file cannot be loaded, or its input
                or output shape does not match the manifest (size, channels, label count).
            ValueError: a threshold, ``threads`` or ``max_detections`` is out of range.
        """
        if not _is_int(threads) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, not {threads!r}")
        if not 0.0 <= conf_threshold <= 1.0:
            raise ValueError(f"conf_threshold must be in 0..1, not {conf_threshold!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold!r}")
        if not _is_int(max_detections) or max_detections < 1:
            raise ValueError(f"max_detections must be an integer >= 1, not {max_detections!r}")
        self._package = package
        self._conf = float(conf_threshold)
        self._iou = float(iou_threshold)
        self._max_det = int(max_detections)
        self._width = package.input_width
        self._height = package.input_height
        self._scale = package.scale
        self._rgb = package.color == "RGB"
        self._labels = package.labels
        self._backend = _make_backend(backend, package.onnx_path, threads)
        self._batch_size = self._check_input()
        self._transposed = self._check_output()
        self._canvas = np.empty((self._height, self._width, 3), dtype=np.uint8)
        logger.info(
            "loaded model %s %s (%dx%d, %d labels) on %s with %d thread(s)",
            package.name,
            package.version,
            self._width,
            self._height,
            len(self._labels),
            self._backend.name,
            threads,
        )

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, indexed by class id."""
        return self._labels

    @property
    def package(self) -> ModelPackage:
        """The model package this detector runs."""
        return self._package

    @property
    def backend_name(self) -> str:
        """``onnxruntime`` or ``openvino``."""
        return self._backend.name

    @property
    def batch_size(self) -> int | None:
        """Fixed batch size of the model, or None when its batch axis is dynamic."""
        return self._batch_size

    def _check_input(self) -> int | None:
        path = self._package.onnx_path
        shape = self._backend.input_shape
        if len(shape) != 4:
            raise ModelError(f"{path}: input has shape {list(shape)}, expected [batch, 3, H, W]")
        batch, channels, height, width = shape
        if channels not in (None, 3):
            raise ModelError(f"{path}: input has {channels} channels, expected 3 (NCHW)")
        for axis, got, want in (("height", height, self._height), ("width", width, self._width)):
            if got is not None and got != want:
                raise ModelError(
                    f"{path}: input {axis} is {got} but the manifest says {want}: "
                    "model and manifest do not belong together"
                )
        return batch

    def _check_output(self) -> bool:
        """Run a blank batch once: warms the backend up and reveals the real output layout."""
        path = self._package.onnx_path
        blank = np.full(
            (self._batch_size or 1, 3, self._height, self._width),
            PAD_VALUE * self._scale,
            dtype=np.float32,
        )
        output = self._backend.run(blank)
        if output.ndim != 3:
            raise ModelError(
                f"{path}: output has shape {list(output.shape)}, "
                "expected [batch, 4 + classes, boxes]"
            )
        rows = 4 + len(self._labels)
        if output.shape[1] == rows:
            transposed = False
        elif output.shape[2] == rows:
            transposed = True
        else:
            raise ModelError(
                f"{path}: output has shape {list(output.shape)}, which does not fit the manifest's "
                f"{len(self._labels)} labels (expected {rows} = 4 box values + one score per label "
                "on axis 1 or 2): the label count does not match the model"
            )
        scores = output[0, :, 4:] if transposed else output[0, 4:]
        if scores.size and (float(scores.min()) < -1e-3 or float(scores.max()) > 1 + 1e-3):
            raise ModelError(
                f"{path}: class scores range {float(scores.min()):.3g}..{float(scores.max()):.3g}, "
                "expected 0..1: export the model with its final sigmoid (ultralytics does)"
            )
        return transposed

    def detect(self, frame_bgr: UInt8Array) -> list[Detection]:
        """Detect objects in one BGR frame.

        Raises:
            ValueError: the frame is not an HxWx3 uint8 array.
            ModelError: inference failed.
        """
        return self.detect_batch([frame_bgr])[0]

    def detect_batch(self, frames_bgr: Sequence[UInt8Array]) -> list[list[Detection]]:
        """Detect objects in several frames, batched: calls of the model's fixed batch size, or
        of up to MAX_BATCH frames when its batch axis is dynamic (memory stays bounded).

        Frames may differ in size. Returns one list per frame, in order.

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array.
            ModelError: inference failed.
        """
        if not frames_bgr:
            return []
        chunk = self._batch_size or min(len(frames_bgr), MAX_BATCH)
        results: list[list[Detection]] = []
        for start in range(0, len(frames_bgr), chunk):
            part = frames_bgr[start : start + chunk]
            # A fixed batch axis needs the last chunk padded; a dynamic one takes it as it is.
            batch, geometries = self.preprocess(part, batch_size=self._batch_size)
            output = self._backend.run(batch)
            results.extend(self.postprocess(output[i], geometries[i]) for i in range(len(part)))
        return results

    def detect_views(
        self, frames_bgr: Sequence[UInt8Array], views: Sequence[View]
    ) -> list[list[Detection]]:
        """Detect in each frame's view (crop and tiles); boxes are 0..1 of the whole frame.

        All tiles of all frames go through the model together (in batches where the batch
        axis allows). Frames whose view is whole take the plain path.

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array, or views and frames differ in number.
            ModelError: inference failed.
        """
        if len(views) != len(frames_bgr):
            raise ValueError(f"{len(frames_bgr)} frame(s) but {len(views)} view(s)")
        if all(v.is_whole for v in views):
            return self.detect_batch(frames_bgr)
        crops: list[UInt8Array] = []
        owners: list[tuple[int, Window, tuple[bool, ...]]] = []
        for i, (frame, view) in enumerate(zip(frames_bgr, views, strict=True)):
            check_frame(frame)
            height, width = frame.shape[:2]
            windows = view.windows(width, height)
            left, top, right, bottom = view.bounds(width, height)
            for x0, y0, x1, y1 in windows:
                crops.append(frame[y0:y1, x0:x1])
                inner = (x0 > left, y0 > top, x1 < right, y1 < bottom)
                owners.append((i, (x0, y0, x1, y1), inner))
        results = self.detect_batch(crops)
        per_frame: list[list[_TileDetection]] = [[] for _ in frames_bgr]
        for tile, ((i, (x0, y0, x1, y1), edges), found) in enumerate(
            zip(owners, results, strict=True)
        ):
            height, width = frames_bgr[i].shape[:2]
            tw, th = x1 - x0, y1 - y0
            for det in found:
                bx1, by1, bx2, by2 = det.box
                box = (
                    (x0 + bx1 * tw) / width,
                    (y0 + by1 * th) / height,
                    (x0 + bx2 * tw) / width,
                    (y0 + by2 * th) / height,
                )
                per_frame[i].append(
                    _TileDetection(
                        Detection(det.label, det.class_id, det.confidence, box),
                        tile,
                        _touches_inner_edge(det.box, edges),
                    )
                )
        merged = []
        for view, tiled in zip(views, per_frame, strict=True):
            detections = (
                [f.detection for f in tiled]
                if view.tiles == 1
                else merge_tiles(tiled, iou_threshold=self._iou)
            )
            detections.sort(key=lambda d: -d.confidence)
            merged.append(detections[: self._max_det])
        return merged

    def preprocess(
        self, frames_bgr: Sequence[UInt8Array], *, batch_size: int | None = None
    ) -> tuple[FloatArray, list[Letterbox]]:
        """Letterbox frames into an NCHW float32 batch; slots past the frames stay grey.

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array.
        """
        size = max(batch_size or len(frames_bgr), len(frames_bgr))
        batch = np.empty((size, 3, self._height, self._width), dtype=np.float32)
        geometries: list[Letterbox] = []
        for i, frame in enumerate(frames_bgr):
            image, geometry = letterbox(frame, self._width, self._height, out=self._canvas)
            _to_tensor(image, batch[i], scale=self._scale, rgb=self._rgb)
            geometries.append(geometry)
        if size > len(frames_bgr):
            batch[len(frames_bgr) :] = np.float32(PAD_VALUE * self._scale)
        return batch, geometries

    def postprocess(self, prediction: FloatArray, geometry: Letterbox) -> list[Detection]:
        """Decode one image's raw output: best class per box, threshold, NMS, map to the frame."""
        pred = prediction.T if self._transposed else prediction  # -> [4 + nc, N]
        scores = pred[4:]
        best = scores.max(axis=0)
        candidates = np.flatnonzero(best >= self._conf)
        if candidates.size == 0:
            return []
        if candidates.size > MAX_NMS_CANDIDATES:
            top = np.argpartition(-best[candidates], MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
            candidates = candidates[top]
        conf = best[candidates]
        class_ids = scores[:, candidates].argmax(axis=0)
        cx, cy, w, h = pred[:4, candidates]
        boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1)
        keep = nms(boxes, conf, class_ids, iou_threshold=self._iou, max_detections=self._max_det)
        boxes = boxes[keep]
        # Input pixels -> 0..1 of the original frame: undo the padding, divide by resized size.
        boxes[:, (0, 2)] = (boxes[:, (0, 2)] - geometry.pad_left) / geometry.resized_width
        boxes[:, (1, 3)] = (boxes[:, (1, 3)] - geometry.pad_top) / geometry.resized_height
        np.clip(boxes, 0.0, 1.0, out=boxes)
        labels = self._labels
        return [
            Detection(
                label=labels[cid],
                class_id=cid,
                confidence=score,
                box=(x1, y1, x2, y2),
            )
            for cid, score, (x1, y1, x2, y2) in zip(
                class_ids[keep].tolist(), conf[keep].tolist(), boxes.tolist(), strict=True
            )
        ]

    def __repr__(self) -> str:
        return (
            f"Detector({self._package.name} {self._package.version}, backend={self.backend_name}, "
            f"input={self._width}x{self._height}, labels={len(self._labels)})"
        )
