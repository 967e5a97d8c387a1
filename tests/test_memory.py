"""Process memory settings: what the onnxruntime sessions keep (bench_decoder_memory.py)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from agent.detect.backends import OnnxRuntimeBackend
from agent.detect.face import session_options
from mclz_testkit.synthetic_model import build_pattern_model


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pattern_model(tmp_path_factory.mktemp("model")) / "model.onnx"


def test_detector_session_keeps_no_memory_patterns(onnx_file: Path) -> None:
    """The detector's session, as onnxruntime reports it, plans no memory pattern per input
    shape but keeps its arena (without it every large tensor is mapped afresh)."""
    backend = OnnxRuntimeBackend(onnx_file, threads=1)
    applied = backend._session.get_session_options()
    assert applied.enable_mem_pattern is False
    assert applied.enable_cpu_mem_arena is True


def test_face_sessions_keep_no_memory_patterns(onnx_file: Path) -> None:
    """A session opened with the face stage's options (YuNet, the mask classifier) plans no
    memory pattern per input shape and keeps its arena."""
    session = ort.InferenceSession(
        str(onnx_file), session_options(1), providers=["CPUExecutionProvider"]
    )
    applied = session.get_session_options()
    assert applied.enable_mem_pattern is False
    assert applied.enable_cpu_mem_arena is True
    assert applied.intra_op_num_threads == 1
