"""Tests for agent.detect: real ONNX inference on the synthetic pattern model, no mocks."""

from __future__ import annotations

import io
import itertools
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import ViewConfig
from agent.detect.detector import MAX_BATCH, Detector, Letterbox, letterbox, nms
from agent.detect.model import MANIFEST_FORMAT, ModelPackage, load_model_package, write_manifest
from agent.detect.views import View
from agent.errors import ModelError
from agent.records import Detection
from mclz_testkit.synthetic_model import DEFAULT_LABELS, build_pattern_model

FRAME_SIZES = [(640, 360), (768, 432)]
MAGENTA, CYAN = 0, 1  # class ids of the pattern model
HAS_X264 = "libx264" in av.codecs_available

Frame = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pattern_model(tmp_path_factory.mktemp("pattern-model"))


@pytest.fixture(scope="session")
def package(package_dir: Path) -> ModelPackage:
    return load_model_package(package_dir)


@pytest.fixture(scope="session")
def detector(package: ModelPackage) -> Detector:
    return Detector(package)


@pytest.fixture
def package_copy(package_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the package that a test may damage."""
    return Path(shutil.copytree(package_dir, tmp_path / "pkg"))


# --------------------------------------------------------------------------- helpers


def background(kind: int, width: int, height: int, seed: int) -> Frame:
    """A textured frame with no saturated magenta or cyan region (noise pixels may be)."""
    rng = np.random.default_rng(seed)
    if kind == 0:  # uniform RGB noise
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if kind == 1:  # grey stripes
        x = np.arange(width, dtype=np.float32)
        stripe = ((np.sin(x / rng.uniform(2, 12)) * 0.5 + 0.5) * 220 + 20).astype(np.uint8)
        return np.repeat(np.broadcast_to(stripe[None, :, None], (height, width, 1)), 3, axis=2)
    if kind == 2:  # checkerboard of warm tiles, like a kitchen wall
        yy, xx = np.mgrid[:height, :width]
        cell = int(rng.integers(6, 40))
        tiles = ((yy // cell + xx // cell) % 2).astype(bool)
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[tiles] = (200, 210, 220)
        frame[~tiles] = (40, 90, 140)
        return frame
    if kind == 3:  # red-blue gradient with mid green: min(R, B) - G stays below 0
        ramp = np.linspace(0, 255, width, dtype=np.float32)
        frame = np.empty((height, width, 3), dtype=np.uint8)
        frame[..., 0] = ramp[None, :]
        frame[..., 1] = 128
        frame[..., 2] = ramp[None, ::-1]
        return frame
    # grey noise blobs, blurred: smooth texture at many scales
    noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    grey = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), dtype=np.uint8)


def h264_round_trip(frames: list[Frame], crf: int = 28) -> list[Frame]:
    """Encode frames with libx264 (yuv420p) and decode them again, as a camera stream would."""
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as decoded:
        return [f.to_ndarray(format="bgr24") for f in decoded.decode(video=0)]


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def paint(frame: Frame, class_id: int, rect: tuple[int, int, int, int], jitter: int = 0) -> Box:
    """Paint a solid magenta (class 0) or cyan (class 1) rectangle x, y, w, h; return it as
    normalised x1, y1, x2, y2."""
    x, y, w, h = rect
    high, low = 255 - jitter, jitter
    frame[y : y + h, x : x + w] = (high, low, high) if class_id == MAGENTA else (high, high, low)
    fh, fw = frame.shape[:2]
    return (x / fw, y / fh, (x + w) / fw, (y + h) / fh)


def matches(detection: Detection, class_id: int, square: Box) -> bool:
    cx = (detection.box[0] + detection.box[2]) / 2
    cy = (detection.box[1] + detection.box[3]) / 2
    return (
        detection.class_id == class_id
        and detection.confidence >= 0.8
        and square[0] <= cx <= square[2]
        and square[1] <= cy <= square[3]
        and iou(detection.box, square) >= 0.3
    )


def video_keyframes(path: Path) -> Iterator[Frame]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="bgr24")


def numpy_greedy_nms(
    boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32], classes: list[int], thr: float
) -> list[int]:
    """Textbook greedy NMS, one box at a time: the oracle for agent.detect.detector.nms."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        box_i = tuple(float(v) for v in boxes[i])
        if all(
            classes[k] != classes[i] or iou(box_i, tuple(float(v) for v in boxes[k])) <= thr  # type: ignore[arg-type]
            for k in keep
        ):
            keep.append(i)
    return keep


# --------------------------------------------------------------------------- the detection property


@SETTINGS
@given(
    size=st.sampled_from(FRAME_SIZES),
    class_id=st.sampled_from([MAGENTA, CYAN]),
    side_fraction=st.floats(1 / 6, 1.0),
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
    kind=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    jitter=st.integers(0, 25),
    compress=st.booleans() if HAS_X264 else st.just(False),
)
def test_solid_square_is_detected(
    detector: Detector,
    *,
    size: tuple[int, int],
    class_id: int,
    side_fraction: float,
    fx: float,
    fy: float,
    kind: int,
    seed: int,
    jitter: int,
    compress: bool,
) -> None:
    """A solid magenta/cyan square of side >= h/6 anywhere in a textured frame, H.264 or not,
    gives its class with confidence >= 0.8, box centre inside the square, IoU >= 0.3, and
    nothing else fires at >= 0.25."""
    width, height = size
    side = max(math.ceil(height / 6), round(side_fraction * height))
    x = round(fx * (width - side))
    y = round(fy * (height - side))
    frame = background(kind, width, height, seed)
    square = paint(frame, class_id, (x, y, side, side), jitter)
    if compress:
        frame = h264_round_trip([frame])[0]
    detections = detector.detect(frame)
    assert any(matches(d, class_id, square) for d in detections), detections
    assert len(detections) == 1, detections


@SETTINGS
@given(
    size=st.sampled_from([*FRAME_SIZES, (320, 320), (1280, 720)]),
    kind=st.integers(0, 4),
    seed=st.integers(0, 2**16),
    compress=st.booleans() if HAS_X264 else st.just(False),
)
def test_texture_and_noise_give_no_detection(
    detector: Detector, size: tuple[int, int], kind: int, seed: int, compress: bool
) -> None:
    """Frames of noise, stripes, tiles and gradients (no solid magenta/cyan) give no detection
    at >= 0.25."""
    frame = background(kind, *size, seed)
    if compress:
        frame = h264_round_trip([frame])[0]
    assert detector.detect(frame) == []


def test_natural_video_frames_give_no_detection(detector: Detector, sample_video: Path) -> None:
    """Every keyframe (one a second) of the indoor people video gives no detection at >= 0.25."""
    frames = list(video_keyframes(sample_video))
    assert len(frames) > 100
    for start in range(0, len(frames), 8):
        for index, found in enumerate(detector.detect_batch(frames[start : start + 8])):
            assert found == [], f"keyframe {start + index}: {found}"


# --------------------------------------------------------------------------- letterbox geometry


@SETTINGS
@given(
    size=st.sampled_from([(640, 360), (768, 432), (360, 640), (1920, 1080), (500, 333), (97, 61)]),
    fw=st.floats(0.2, 0.9),
    fh=st.floats(0.2, 0.9),
    fx=st.floats(0.0, 1.0),
    fy=st.floats(0.0, 1.0),
)
def test_boxes_map_back_to_the_original_frame(
    detector: Detector, *, size: tuple[int, int], fw: float, fh: float, fx: float, fy: float
) -> None:
    """For non-square frames (landscape, portrait, odd sizes) a painted rectangle comes back in
    original-frame coordinates, within about one model-input pixel."""
    width, height = size
    w = max(2, round(fw * width))
    h = max(2, round(fh * height))
    x = round(fx * (width - w))
    y = round(fy * (height - h))
    frame = np.full((height, width, 3), 90, dtype=np.uint8)
    truth = paint(frame, MAGENTA, (x, y, w, h))
    found = detector.detect(frame)
    assert len(found) == 1, found
    ratio = min(320 / width, 320 / height)
    # one input pixel plus resampling blur, in normalised frame units per axis
    tol_x = 1.5 / (ratio * width)
    tol_y = 1.5 / (ratio * height)
    for got, want, tol in zip(found[0].box, truth, (tol_x, tol_y, tol_x, tol_y), strict=True):
        assert got == pytest.approx(want, abs=tol)


def test_letterbox_pads_grey_and_centres_the_frame() -> None:
    """A 640x360 frame becomes 320x180 centred in 320x320 with 70 grey rows above and below."""
    frame = np.full((360, 640, 3), 7, dtype=np.uint8)
    image, geometry = letterbox(frame, 320, 320)
    assert geometry == Letterbox(640, 360, 320, 180, 0, 70)
    assert (image[:70] == 114).all()
    assert (image[250:] == 114).all()
    assert (image[70:250] == 7).all()


def test_letterbox_rejects_non_bgr_frames(detector: Detector) -> None:
    """Grey or float frames are refused with ValueError, not misread."""
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((360, 640), dtype=np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((360, 640, 3), dtype=np.float32))


# --------------------------------------------------------------------------- NMS


def test_one_box_per_object(detector: Detector) -> None:
    """Hundreds of anchors fire on three patches; NMS leaves exactly one box per patch."""
    frame = background(4, 640, 360, seed=3)
    truths = [
        (MAGENTA, paint(frame, MAGENTA, (20, 20, 120, 120))),
        (MAGENTA, paint(frame, MAGENTA, (300, 200, 80, 80))),
        (CYAN, paint(frame, CYAN, (480, 40, 100, 150))),
    ]
    batch, _ = detector.preprocess([frame])
    raw = detector._backend.run(batch)[0]
    assert (raw[4:].max(axis=0) >= 0.25).sum() > 100  # many candidates before NMS
    found = detector.detect(frame)
    assert len(found) == 3, found
    for class_id, truth in truths:
        assert sum(matches(d, class_id, truth) for d in found) == 1


def test_nms_keeps_overlapping_boxes_of_different_classes(detector: Detector) -> None:
    """Two near-identical boxes: same class -> the better one survives; different classes ->
    both survive. Decoded from a raw [4 + nc, N] prediction as the model would emit it."""
    geometry = Letterbox(320, 320, 320, 320, 0, 0)
    nc = len(detector.labels)

    def raw(classes: list[int]) -> npt.NDArray[np.float32]:
        pred = np.zeros((4 + nc, len(classes)), dtype=np.float32)
        for i, class_id in enumerate(classes):
            pred[:4, i] = (100 + i, 100, 60, 60)  # cx, cy, w, h: IoU about 0.97
            pred[4 + class_id, i] = 0.9 - 0.1 * i
        return pred

    same = detector.postprocess(raw([0, 0]), geometry)
    assert [(d.class_id, round(d.confidence, 3)) for d in same] == [(0, 0.9)]
    mixed = detector.postprocess(raw([0, 1]), geometry)
    assert [d.label for d in mixed] == [DEFAULT_LABELS[0], DEFAULT_LABELS[1]]
    assert iou(mixed[0].box, mixed[1].box) > 0.9


@SETTINGS
@given(
    data=st.lists(
        st.tuples(
            st.floats(0, 300),
            st.floats(0, 300),
            st.floats(1, 80),
            st.floats(1, 80),
            st.floats(0.01, 1.0),
            st.integers(0, 3),
        ),
        min_size=0,
        max_size=60,
    ),
    thr=st.sampled_from([0.3, 0.45, 0.7]),
)
def test_nms_equals_textbook_greedy(
    data: list[tuple[float, float, float, float, float, int]], thr: float
) -> None:
    """agent.detect.detector.nms keeps the same boxes, best first, as a one-at-a-time greedy NMS."""
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h, _, _ in data], dtype=np.float32)
    boxes = boxes.reshape(-1, 4)
    scores = np.array([s for *_, s, _ in data], dtype=np.float32)
    classes = [c for *_, c in data]
    kept = nms(
        boxes, scores, np.array(classes, dtype=np.intp), iou_threshold=thr, max_detections=1000
    )
    expected = numpy_greedy_nms(boxes, scores, classes, thr)
    assert sorted(kept.tolist()) == sorted(expected)
    assert list(scores[kept]) == sorted(scores[kept], reverse=True)


def test_max_detections_caps_the_result(package: ModelPackage) -> None:
    """max_detections keeps the best N boxes."""
    frame = background(4, 640, 360, seed=5)
    for i in range(4):
        paint(frame, i % 2, (20 + 150 * i, 40 + 60 * i, 70, 70))
    assert len(Detector(package).detect(frame)) == 4
    assert len(Detector(package, max_detections=2).detect(frame)) == 2


# --------------------------------------------------------------------------- batches and options


def squares_frames() -> list[Frame]:
    frames = []
    for i, (width, height) in enumerate(
        [(640, 360), (768, 432), (320, 320), (360, 640), (640, 360)]
    ):
        frame = background(i % 5, width, height, seed=i)
        paint(frame, i % 2, (10 + 20 * i, 30 + 10 * i, height // 4, height // 4))
        if i == 4:
            frame[:] = 100  # a blank frame in the batch
        frames.append(frame)
    return frames


def assert_same(a: list[list[Detection]], b: list[list[Detection]]) -> None:
    assert len(a) == len(b)
    for one, two in zip(a, b, strict=True):
        assert [(d.label, d.class_id) for d in one] == [(d.label, d.class_id) for d in two]
        for d1, d2 in zip(one, two, strict=True):
            assert d1.confidence == pytest.approx(d2.confidence, abs=1e-5)
            assert d1.box == pytest.approx(d2.box, abs=1e-5)


class CountingBackend:
    """Wraps a real backend and counts inference calls and their batch sizes."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls = 0
        self.sizes: list[int] = []
        self.name = inner.name  # type: ignore[attr-defined]
        self.input_shape = inner.input_shape  # type: ignore[attr-defined]

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.sizes.append(len(batch))
        result: npt.NDArray[np.float32] = self.inner.run(batch)  # type: ignore[attr-defined]
        return result


def test_batch_equals_single_in_calls_of_at_most_max_batch(package: ModelPackage) -> None:
    """With a dynamic batch axis, detect_batch makes one inference call per max_batch frames,
    none padded, and returns, frame by frame, what detect returns; frames may differ in size."""
    detector = Detector(package, max_batch=4)
    assert detector.batch_size is None
    frames = squares_frames()
    assert len(frames) == 5
    singles = [detector.detect(f) for f in frames]
    counter = CountingBackend(detector._backend)
    detector._backend = counter
    batched = detector.detect_batch(frames)
    assert counter.calls == 2
    assert counter.sizes == [4, 1]
    assert_same(batched, singles)
    assert sum(len(d) for d in batched) == 4
    assert detector.detect_batch([]) == []
    default = Detector(package)  # MAX_BATCH: one frame per call (memory, no CPU lost)
    counter = CountingBackend(default._backend)
    default._backend = counter
    assert_same(default.detect_batch(frames), singles)
    assert counter.sizes == [MAX_BATCH] * len(frames)
    with pytest.raises(ValueError, match="max_batch"):
        Detector(package, max_batch=0)


@pytest.mark.parametrize(("fixed", "calls"), [(1, 5), (2, 3)])
def test_fixed_batch_models_loop_or_chunk(
    tmp_path: Path, detector: Detector, fixed: int, calls: int
) -> None:
    """A model with a fixed batch axis is fed chunks of that size (the last padded); results
    equal the dynamic model's."""
    fixed_detector = Detector(load_model_package(build_pattern_model(tmp_path, batch=fixed)))
    assert fixed_detector.batch_size == fixed
    counter = CountingBackend(fixed_detector._backend)
    fixed_detector._backend = counter
    frames = squares_frames()
    assert_same(fixed_detector.detect_batch(frames), [detector.detect(f) for f in frames])
    assert counter.calls == calls


def test_transposed_output_is_accepted(tmp_path: Path, detector: Detector) -> None:
    """An output laid out [B, N, 4 + nc] decodes to the same detections as [B, 4 + nc, N]."""
    transposed = Detector(load_model_package(build_pattern_model(tmp_path, transposed=True)))
    frames = squares_frames()
    assert_same(transposed.detect_batch(frames), detector.detect_batch(frames))


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_option_is_accepted(
    package: ModelPackage, detector: Detector, threads: int
) -> None:
    """threads=1 and 2 load and give the same detections."""
    frames = squares_frames()
    assert_same(
        Detector(package, threads=threads).detect_batch(frames), detector.detect_batch(frames)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads"),
        ({"conf_threshold": 1.5}, "conf_threshold"),
        ({"iou_threshold": 0.0}, "iou_threshold"),
        ({"max_detections": 0}, "max_detections"),
    ],
)
def test_bad_options_raise_value_error(
    package: ModelPackage, kwargs: dict[str, float], message: str
) -> None:
    """Out-of-range options are refused at construction with ValueError naming the option."""
    with pytest.raises(ValueError, match=message):
        Detector(package, **kwargs)  # type: ignore[arg-type]


def test_openvino_matches_onnxruntime(package: ModelPackage, detector: Detector) -> None:
    """The OpenVINO backend gives the same detections as onnxruntime."""
    pytest.importorskip("openvino")
    openvino = Detector(package, backend="openvino", threads=2)
    assert openvino.backend_name == "openvino"
    frames = squares_frames()
    assert_same(openvino.detect_batch(frames), detector.detect_batch(frames))


def test_openvino_missing_says_how_to_install(
    package: ModelPackage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the openvino package, choosing it raises ModelError with the pip command."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(ModelError, match=r"pip install mclz-agent\[openvino\]"):
        Detector(package, backend="openvino")


def test_unknown_backend(package: ModelPackage) -> None:
    """An unknown backend name is a ModelError naming the backend and the model file."""
    with pytest.raises(ModelError, match="unknown backend 'tensorrt'") as info:
        Detector(package, backend="tensorrt")
    assert str(package.onnx_path) in str(info.value)


# --------------------------------------------------------------------------- manifests and errors


def rewrite_manifest(package_dir: Path, change: Callable[[dict[str, object]], object]) -> Path:
    manifest = package_dir / "manifest.yaml"
    data = yaml.safe_load(manifest.read_text())
    change(data)
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return manifest


def test_package_loads_from_directory_or_manifest(package_dir: Path) -> None:
    """The directory and its manifest.yaml load the same verified package."""
    by_dir = load_model_package(package_dir)
    by_file = load_model_package(package_dir / "manifest.yaml")
    assert by_dir == by_file
    assert by_dir.labels == DEFAULT_LABELS
    assert (by_dir.input_width, by_dir.input_height) == (320, 320)
    assert by_dir.manifest["format"] == MANIFEST_FORMAT
    assert by_dir.manifest["output"] == "yolo"
    assert by_dir.onnx_path == package_dir / "model.onnx"


def test_write_manifest_round_trip(package_copy: Path) -> None:
    """write_manifest stores the file's sha256, the input spec and extra keys; load reads them
    back; extra keys may not overwrite manifest fields."""
    path = write_manifest(
        package_copy,
        name="kitchen",
        version="2026.11.26",
        onnx_file="model.onnx",
        labels=DEFAULT_LABELS,
        input_width=320,
        input_height=320,
        license="CC0",
        notes="test",
    )
    loaded = load_model_package(path)
    assert (loaded.name, loaded.version) == ("kitchen", "2026.11.26")
    assert loaded.manifest["license"] == "CC0"
    assert loaded.manifest["input"] == {
        "width": 320,
        "height": 320,
        "layout": "NCHW",
        "color": "RGB",
        "scale": 1 / 255,
    }
    with pytest.raises(ValueError, match="sha256"):
        write_manifest(
            package_copy,
            name="x",
            version="1",
            onnx_file="model.onnx",
            labels=["a", "b"],
            input_width=320,
            input_height=320,
            sha256="0" * 64,
        )


def test_missing_directory(tmp_path: Path) -> None:
    """A package directory that does not exist is a ModelError naming it."""
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match="model package directory not found") as info:
        load_model_package(missing)
    assert str(missing) in str(info.value)


def test_missing_manifest(package_copy: Path) -> None:
    """A directory without manifest.yaml is a ModelError naming the manifest path."""
    (package_copy / "manifest.yaml").unlink()
    with pytest.raises(ModelError, match="manifest not found") as info:
        load_model_package(package_copy)
    assert str(package_copy / "manifest.yaml") in str(info.value)


def test_bad_manifest_syntax_names_the_line(package_copy: Path) -> None:
    """An unparsable manifest is a ModelError with path:line:column."""
    manifest = package_copy / "manifest.yaml"
    manifest.write_text('{\n  "format": "mclz-model/1",\n  "name": "x"\n  "version": "1"\n}\n')
    with pytest.raises(ModelError, match="invalid YAML") as info:
        load_model_package(package_copy)
    assert f"{manifest}:4:3:" in str(info.value)


def test_manifest_must_be_an_object(package_copy: Path) -> None:
    """A list instead of a mapping of fields is refused."""
    (package_copy / "manifest.yaml").write_text("[1, 2]")
    with pytest.raises(ModelError, match="must be a mapping of fields"):
        load_model_package(package_copy)


def test_unknown_format(package_copy: Path) -> None:
    """A manifest of another format version is refused, naming the format."""
    manifest = rewrite_manifest(package_copy, lambda d: d.update(format="mclz-model/9"))
    with pytest.raises(ModelError, match="unknown format 'mclz-model/9'") as info:
        load_model_package(package_copy)
    assert str(manifest) in str(info.value)


@pytest.mark.parametrize(
    "field", ["format", "name", "version", "file", "sha256", "input", "output", "labels"]
)
def test_missing_field(package_copy: Path, field: str) -> None:
    """Each required manifest field, when missing, is named in the ModelError."""
    manifest = rewrite_manifest(package_copy, lambda d: d.pop(field))
    with pytest.raises(ModelError, match=f"missing field '{field}'") as info:
        load_model_package(package_copy)
    assert str(manifest) in str(info.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": []}, "'labels' must be a non-empty list"),
        ({"labels": ["a", "a"]}, "must not repeat"),
        ({"sha256": "xyz"}, "64 hexadecimal digits"),
        ({"file": "../model.onnx"}, "inside the package directory"),
        ({"output": "ssd"}, "unknown output convention 'ssd'"),
        ({"input": {"width": 0, "height": 320}}, "'input.width' must be an integer"),
        ({"input": {"height": 320}}, "missing field 'input.width'"),
        ({"input": {"width": 320, "height": 320, "layout": "NHWC"}}, "'input.layout'"),
    ],
)
def test_invalid_field(package_copy: Path, change: dict[str, object], message: str) -> None:
    """Fields of the wrong type or value are named in the ModelError."""
    rewrite_manifest(package_copy, lambda d: d.update(change))
    with pytest.raises(ModelError, match=message):
        load_model_package(package_copy)


def test_missing_onnx_file(package_copy: Path) -> None:
    """A manifest whose ONNX file is absent is a ModelError naming the file."""
    (package_copy / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model file not found") as info:
        load_model_package(package_copy)
    assert str(package_copy / "model.onnx") in str(info.value)


def test_sha256_mismatch(package_copy: Path, package: ModelPackage) -> None:
    """A changed ONNX file is caught by its sha256 before anything loads it."""
    onnx_path = package_copy / "model.onnx"
    with onnx_path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError) as info:
        load_model_package(package_copy)
    message = str(info.value)
    assert f"{onnx_path} sha256 is " in message
    assert f"manifest says {package.sha256}: the file is corrupt or was replaced" in message


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_onnx_with_matching_sha(package_copy: Path, damage: str) -> None:
    """A truncated or garbage ONNX file whose manifest was rewritten to match still fails,
    when the detector loads it, with a ModelError naming the file."""
    onnx_path = package_copy / "model.onnx"
    data = onnx_path.read_bytes()
    onnx_path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x08garbage" * 100)
    write_manifest(
        package_copy,
        name="broken",
        version="1",
        onnx_file="model.onnx",
        labels=DEFAULT_LABELS,
        input_width=320,
        input_height=320,
    )
    broken = load_model_package(package_copy)
    with pytest.raises(ModelError, match="onnxruntime cannot load the model") as info:
        Detector(broken)
    assert str(onnx_path) in str(info.value)
    if "openvino" in sys.modules or _has_openvino():
        with pytest.raises(ModelError, match="OpenVINO cannot load the model"):
            Detector(broken, backend="openvino")


def _has_openvino() -> bool:
    try:
        import openvino  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("labels", [("only_one",), ("a", "b", "c"), (*DEFAULT_LABELS, "extra")])
def test_label_count_mismatch(package_copy: Path, labels: tuple[str, ...]) -> None:
    """A manifest with more or fewer labels than the model's classes is a ModelError that
    gives both counts."""
    manifest = rewrite_manifest(package_copy, lambda d: d.update(labels=list(labels)))
    package = load_model_package(manifest)
    with pytest.raises(ModelError, match="label count does not match") as info:
        Detector(package)
    message = str(info.value)
    assert str(package.onnx_path) in message
    assert f"{len(labels)} labels" in message


def test_input_size_mismatch(package_copy: Path) -> None:
    """A manifest claiming 640x640 for a 320x320 model is a ModelError naming both sizes."""
    rewrite_manifest(package_copy, lambda d: d.update(input={"width": 640, "height": 640}))
    package = load_model_package(package_copy)
    with pytest.raises(ModelError, match="input height is 320 but the manifest says 640") as info:
        Detector(package)
    assert str(package.onnx_path) in str(info.value)


def test_violation_mapping_and_thresholds_are_read_and_checked(package_copy: Path) -> None:
    """violations and thresholds load as dicts; a mapping naming an unknown label is refused."""
    rewrite_manifest(
        package_copy,
        lambda d: d.update(violations={"head_bare": "no_hat"}, thresholds={"head_bare": 0.4}),
    )
    package = load_model_package(package_copy)
    assert package.violations == {"head_bare": "no_hat"}
    assert package.thresholds == {"head_bare": 0.4}
    rewrite_manifest(
        package_copy,
        lambda d: d.update(violations={"chef_hat_missing": "no_hat"}, thresholds={"head_bare": 2}),
    )
    with pytest.raises(ModelError) as info:
        load_model_package(package_copy)
    assert "'violations' names 'chef_hat_missing', which is not one of the labels" in str(
        info.value
    )
    assert "'thresholds.head_bare' must be a number in (0, 1], not 2" in str(info.value)


def test_default_model_sees_masks_on_a_real_face_mask_image() -> None:
    """The committed default model finds a face_mask on a real image of the facemask data."""
    repo = Path(__file__).resolve().parents[1]
    shared = repo.parent / "shared" / "datasets" / "facemask"
    if not shared.is_dir():
        pytest.skip(f"../shared is absent: {shared} not found")
    package = load_model_package(repo / "models" / "default")
    detector = Detector(package, conf_threshold=0.25)
    found = 0
    # A handful of images: a detector at this stage misses some faces, never all of them.
    for image_path in sorted((shared / "images").glob("*.jpg"))[:8]:
        image = cv2.imread(str(image_path))
        assert image is not None
        detections = detector.detect(np.ascontiguousarray(image, dtype=np.uint8))
        found += len([d for d in detections if d.label == "face_mask"])
    assert found >= 3


# --------------------------------------------------------------------------- views and tiles


def grey_frame(width: int = 1920, height: int = 1080) -> Frame:
    return np.full((height, width, 3), 90, dtype=np.uint8)


def test_tiles_find_a_small_object_the_whole_frame_misses(detector: Detector) -> None:
    """A 60 px patch in a 1080p frame is 10 px at the 320 px model input, too small to find;
    in 2x2 tiles it is 18 px and found, with its box mapped back to the whole frame."""
    frame = grey_frame()
    square = paint(frame, MAGENTA, (1300, 700, 60, 60))
    assert detector.detect(frame) == []
    (found,) = detector.detect_views([frame], [View(cols=2, rows=2)])
    assert len(found) == 1
    assert matches(found[0], MAGENTA, square)
    assert iou(found[0].box, square) > 0.9


@pytest.mark.parametrize("overlap", [0.0, 0.15, 0.3])
@pytest.mark.parametrize(("cols", "rows"), [(2, 1), (1, 2), (2, 2)])
def test_object_on_a_tile_edge_is_reported_once_and_whole(
    detector: Detector, cols: int, rows: int, overlap: float
) -> None:
    """A patch across the tile edges (the centre of the frame) is cut into parts, one per
    tile; they are merged back into one detection covering the whole patch."""
    frame = grey_frame()
    square = paint(frame, MAGENTA, (860, 440, 200, 200))
    (found,) = detector.detect_views([frame], [View(cols=cols, rows=rows, overlap=overlap)])
    assert len(found) == 1, found
    assert iou(found[0].box, square) > 0.9
    assert found[0].confidence >= 0.9


def test_separate_objects_in_neighbouring_tiles_stay_separate(detector: Detector) -> None:
    """Two patches of the same class on either side of a tile edge, a gap between them, and a
    patch of the other class overlapping the edge: three objects, three detections."""
    frame = grey_frame()
    left = paint(frame, MAGENTA, (700, 300, 200, 200))
    right = paint(frame, MAGENTA, (1000, 300, 200, 200))
    cyan = paint(frame, CYAN, (880, 700, 160, 160))
    (found,) = detector.detect_views([frame], [View(cols=2, rows=1, overlap=0.15)])
    assert len(found) == 3, found
    assert sum(matches(d, MAGENTA, left) for d in found) == 1
    assert sum(matches(d, MAGENTA, right) for d in found) == 1
    assert sum(matches(d, CYAN, cyan) for d in found) == 1


def test_crop_limits_detection_and_maps_boxes_to_the_frame(detector: Detector) -> None:
    """Only the crop is analysed: a patch outside it is not reported; one inside is, in
    whole-frame coordinates, and a small one becomes findable because the crop is enlarged."""
    frame = grey_frame()
    outside = paint(frame, MAGENTA, (100, 100, 300, 300))
    inside = paint(frame, CYAN, (1500, 800, 70, 70))  # too small for the whole frame
    assert [d.class_id for d in detector.detect(frame)] == [MAGENTA]
    view = View(crop=(0.6, 0.5, 1.0, 1.0))
    (found,) = detector.detect_views([frame], [view])
    assert len(found) == 1
    assert matches(found[0], CYAN, inside)
    assert not any(iou(d.box, outside) > 0 for d in found)


def test_views_differ_per_frame_in_one_call(detector: Detector) -> None:
    """Frames of several cameras go through together, each with its own view; whole views
    give exactly what detect_batch gives."""
    small = grey_frame()
    small_square = paint(small, MAGENTA, (300, 200, 60, 60))
    big = grey_frame(640, 360)
    big_square = paint(big, CYAN, (200, 100, 120, 120))
    tiled, whole = detector.detect_views([small, big], [View(cols=2, rows=2), View()])
    assert [matches(d, MAGENTA, small_square) for d in tiled] == [True]
    assert whole == detector.detect_batch([big])[0]
    assert matches(whole[0], CYAN, big_square)
    assert detector.detect_views([big], [View()]) == detector.detect_batch([big])
    with pytest.raises(ValueError, match="2 frame"):
        detector.detect_views([small, big], [View()])


def test_view_rejects_impossible_values() -> None:
    """An empty or inverted crop, zero tiles or an overlap of a whole tile are refused."""
    with pytest.raises(ValueError, match="crop"):
        View(crop=(0.5, 0.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="crop"):
        View(crop=(0.0, 0.0, 1.2, 1.0))
    with pytest.raises(ValueError, match="tiles"):
        View(cols=0)
    with pytest.raises(ValueError, match="overlap"):
        View(cols=2, overlap=1.0)


def test_view_from_config_keeps_crop_tiles_and_overlap() -> None:
    """A camera's ``view:`` section becomes the View the detector runs: the same crop,
    [columns, rows] as cols and rows, the same overlap; the default section is the whole frame."""
    section = ViewConfig(crop=(0.25, 0.1, 0.75, 0.9), tiles=(3, 2), overlap=0.2)
    assert View.from_config(section) == View((0.25, 0.1, 0.75, 0.9), cols=3, rows=2, overlap=0.2)
    assert View.from_config(ViewConfig()).is_whole


@SETTINGS
@given(
    width=st.integers(1, 4000),
    height=st.integers(1, 3000),
    corners=st.tuples(*[st.floats(0, 1)] * 4),
    cols=st.integers(1, 4),
    rows=st.integers(1, 4),
    overlap=st.floats(0, 0.5),
)
def test_tile_windows_cover_the_crop_inside_the_frame(
    width: int,
    height: int,
    corners: tuple[float, float, float, float],
    cols: int,
    rows: int,
    overlap: float,
) -> None:
    """For any frame, crop, tiling and overlap: cols x rows windows of at least one pixel,
    inside the frame, neighbours touching or overlapping, together spanning the crop."""
    x0, x1 = sorted(corners[:2])
    y0, y1 = sorted(corners[2:])
    if x1 - x0 < 1e-6 or y1 - y0 < 1e-6:
        return
    windows = View((x0, y0, x1, y1), cols, rows, overlap).windows(width, height)
    assert len(windows) == cols * rows
    for a, b, c, d in windows:
        assert 0 <= a < c <= width
        assert 0 <= b < d <= height
    xs = [(w[0], w[2]) for w in windows[:cols]]  # first row: the column spans
    ys = [(w[1], w[3]) for w in windows[::cols]]  # first column: the row spans
    for spans, start, end, size in ((xs, x0, x1, width), (ys, y0, y1, height)):
        # The crop rounded outwards to whole pixels, at least one pixel wide.
        first = min(size - 1, math.floor(start * size))
        assert spans[0][0] == first
        assert spans[-1][1] == max(first + 1, min(size, math.ceil(end * size)))
        for (_, prev_end), (next_start, _) in itertools.pairwise(spans):
            assert next_start <= prev_end  # no gap between neighbours
