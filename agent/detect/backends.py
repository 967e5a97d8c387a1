"""Inference backends behind one Protocol: onnxruntime (always installed) and OpenVINO.

:class:`InferenceBackend` is what :class:`agent.detect.detector.Detector` needs from an
inference engine; pre- and post-processing stay in the detector, shared by every backend.
OpenVINO is an optional extra, imported only when asked for, and onnxruntime itself only when
a backend is made, so importing this module stays cheap. Nothing here imports torch,
ultralytics or onnx.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from agent.errors import ModelError

BACKENDS: Final = ("onnxruntime", "openvino")

FloatArray = npt.NDArray[np.float32]
Dim = int | None  # None: a dynamic (symbolic) dimension


class InferenceBackend(Protocol):
    """What :class:`agent.detect.detector.Detector` needs from an inference engine."""

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
        # A memory pattern is a planned block per input shape (batch 1-4 here), kept in the
        # session's arena: 2 detectors on 16 frames of 720p held 25 MB less without them (44 MB
        # with the face stage's), for 1-2 % more CPU per detect_batch (bench_decoder_memory.py
        # --detect-memory / --detect-cpu). The arena itself stays: without it every large
        # tensor is mapped afresh (agent.ingest.memory), +8 % CPU for this session.
        options.enable_mem_pattern = False
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


def make_backend(name: str, onnx_path: Path, threads: int) -> InferenceBackend:
    """Load ``onnx_path`` with the backend called ``name``, using ``threads`` intra-op threads.

    Raises:
        ModelError: unknown or missing backend, or the backend cannot load the model.
    """
    if name == "onnxruntime":
        return OnnxRuntimeBackend(onnx_path, threads=threads)
    if name == "openvino":
        return OpenVinoBackend(onnx_path, threads=threads)
    raise ModelError(f"{onnx_path}: unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
