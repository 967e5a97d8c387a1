"""Detectors sharing a turn's frames (agent.detect.pool) and the face stage chosen per frame."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.config import parse_config
from agent.detect.detector import Detector
from agent.detect.model import ModelPackage, load_model_package
from agent.detect.pool import DetectorPool, auto_workers
from agent.detect.views import View
from agent.errors import ConfigError
from agent.records import Detection

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "models" / "default"
VIDEO = REPO.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"
FACES = REPO.parent / "shared" / "datasets" / "facemask" / "images"
needs_video = pytest.mark.skipif(not VIDEO.is_file(), reason=f"needs {VIDEO}")
needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason=f"needs {FACES}")

Frame = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    return load_model_package(DEFAULT)


@pytest.fixture(scope="module")
def frames() -> list[Frame]:
    """Six frames of the shared video (people, faces), two seconds apart."""
    if not VIDEO.is_file():
        pytest.skip(f"needs {VIDEO}")
    out: list[Frame] = []
    with av.open(str(VIDEO)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 50 == 0:
                out.append(np.ascontiguousarray(frame.to_ndarray(format="bgr24")))
            if len(out) == 6:
                break
    return out


@pytest.fixture(scope="module")
def face_pictures() -> list[Frame]:
    """Six pictures of the facemask dataset (people with and without masks, close)."""
    if not FACES.is_dir():
        pytest.skip(f"needs {FACES}")
    out: list[Frame] = []
    for path in sorted(FACES.glob("*.jpg"))[:6]:
        picture = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert picture is not None, path
        out.append(np.ascontiguousarray(picture, dtype=np.uint8))
    assert len(out) == 6
    return out


def same(a: list[Detection], b: list[Detection]) -> bool:
    """Equal detections up to float noise from a different batch size."""
    if len(a) != len(b):
        return False
    return all(
        x.label == y.label
        and abs(x.confidence - y.confidence) < 2e-3
        and max(abs(p - q) for p, q in zip(x.box, y.box, strict=True)) < 2e-3
        for x, y in zip(
            sorted(a, key=lambda d: (d.label, d.box)),
            sorted(b, key=lambda d: (d.label, d.box)),
            strict=True,
        )
    )


@needs_video
def test_pool_gives_each_frame_what_one_detector_gives_in_order(
    package: ModelPackage, frames: list[Frame]
) -> None:
    """Two detectors on a turn of six frames: the same detections as one, frame by frame."""
    alone = Detector(package)
    pool = DetectorPool(lambda: Detector(package), 2)
    try:
        views = [View()] * len(frames)
        expected = alone.detect_views(frames, views)
        got = pool.detect_views(frames, views)
        assert pool.parallel_turns == 1
        assert any(expected), "the video shows people"
        assert all(same(e, g) for e, g in zip(expected, got, strict=True))
        single = pool.detect_views(frames[:1], views[:1])  # one frame: no hand-over
        assert pool.parallel_turns == 1
        assert same(single[0], expected[0])
    finally:
        pool.close()


@needs_faces
def test_face_stage_runs_only_on_the_frames_that_ask_for_it(
    package: ModelPackage, face_pictures: list[Frame]
) -> None:
    """faces=False gives the detector's own answer, faces=True the stage's, per frame."""
    frames = face_pictures
    assert package.stages.get("face") is not None, "the default package has a face stage"
    full = Detector(package)
    bare = Detector(package, stages=False)
    views = [View()] * len(frames)
    flags = [i % 2 == 0 for i in range(len(frames))]
    with_stage = full.detect_views(frames, views)
    without = bare.detect_views(frames, views)
    assert any(not same(a, b) for a, b in zip(with_stage, without, strict=True)), (
        "the face stage changes something on these frames"
    )
    mixed = full.detect_views(frames, views, flags)
    for i, flag in enumerate(flags):
        assert same(mixed[i], with_stage[i] if flag else without[i]), i
    cropped = [View(crop=(0.0, 0.0, 1.0, 0.8))] * len(frames)
    assert all(
        same(a, b)
        for a, b in zip(
            full.detect_views(frames, cropped, [False] * len(frames)),
            bare.detect_views(frames, cropped),
            strict=True,
        )
    )
    with pytest.raises(ValueError, match="face flag"):
        full.detect_views(frames, views, flags[:-1])


@needs_video
def test_an_error_in_one_share_is_raised_and_the_pool_goes_on(
    package: ModelPackage, frames: list[Frame]
) -> None:
    """A bad frame in the second share raises ValueError; the next turn works."""
    pool = DetectorPool(lambda: Detector(package), 2)
    try:
        bad = np.zeros((10, 10), dtype=np.uint8)  # not HxWx3
        with pytest.raises(ValueError, match="HxWx3"):
            pool.detect_views([frames[0], bad], [View(), View()])
        assert len(pool.detect_views(frames[:2], [View(), View()])) == 2
    finally:
        pool.close()


def test_workers_setting_is_validated_and_auto_follows_the_cores() -> None:
    """model.workers: an int 1..16 or auto; auto divides the cores by the threads, 1..4."""
    base = "identity: {city: c, school_id: s, box_id: b}\nmodel: {workers: %s}\n"
    assert parse_config(base % "auto").model.workers == "auto"
    assert parse_config(base % "3").model.workers == 3
    for bad in ("0", "17", "many"):
        with pytest.raises(ConfigError) as info:
            parse_config(base % bad)
        assert any("model.workers" in p for p in info.value.problems), info.value.problems
    assert auto_workers(1, cores=2) == 2
    assert auto_workers(2, cores=2) == 1
    assert auto_workers(1, cores=16) == 4
    assert auto_workers(4, cores=2) == 1
    with pytest.raises(ValueError, match="workers"):
        DetectorPool(lambda: pytest.fail("no detector is made"), 0)


def test_twins_share_the_onnxruntime_sessions_but_not_the_canvas(package: ModelPackage) -> None:
    """A worker's twin holds the sessions once (memory) and its own letterbox buffer."""
    first = Detector(package)
    twin = first.twin()
    assert twin._backend is first._backend  # what is shared is the point
    assert twin._canvas is not first._canvas
    assert first.face_stage is not None
    assert twin.face_stage is not None
    assert twin.face_stage is not first.face_stage  # its own last_ms
    assert twin.face_stage.detector is first.face_stage.detector
