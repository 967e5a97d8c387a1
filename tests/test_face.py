"""The face-first mask check (agent/detect/face.py) with the models in models/default/face.

Real inference: YuNet through OpenCV and the mask classifier through onnxruntime. The
pictures are held-out (val split) images of ``../shared/datasets/facemask``, chosen by their
ground truth only (the first by name with one face of the class, at least a quarter of the
picture tall), never by what a model makes of them; those tests skip without ``../shared``.
"""

from __future__ import annotations

import math
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from agent.config import RuleConfig
from agent.detect.datasets import AGENT_LABELS, split_of
from agent.detect.face import (
    CLASSIFIER_FILE,
    META_FILE,
    YUNET_DYNAMIC_FILE,
    YUNET_FILE,
    FaceDetector,
    FaceMaskStage,
    MaskClassifier,
    crop_face,
    look_regions,
    shrink,
)
from agent.errors import ModelError
from agent.records import Detection
from agent.rules.engine import RuleEngine

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models" / "default" / "face"
FACEMASK = REPO.parent / "shared" / "datasets" / "facemask"
UNMASKED = frozenset({"without_mask", "mask_weared_incorrect"})
MASKED = frozenset({"with_mask"})

Image = npt.NDArray[np.uint8]
Box = tuple[float, float, float, float]

needs_data = pytest.mark.skipif(
    not (FACEMASK / "annotations").is_dir(),
    reason=f"needs ../shared/datasets/facemask ({FACEMASK}) for held-out pictures",
)


def held_out_face(classes: frozenset[str]) -> tuple[Image, Box]:
    """The first val image by name with one face, of ``classes``, >= 1/4 of its height tall;
    returns the picture and the face's box in pixels."""
    for xml_path in sorted((FACEMASK / "annotations").glob("*.xml")):
        if split_of("facemask", xml_path.stem) != "val":
            continue
        root = ET.parse(xml_path).getroot()  # noqa: S314 - the project's own dataset
        objects = root.findall("object")
        if len(objects) != 1 or objects[0].findtext("name") not in classes:
            continue
        bnd = objects[0].find("bndbox")
        assert bnd is not None
        box = tuple(float(bnd.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        if (box[3] - box[1]) / float(root.findtext("size/height") or 1) < 0.25:
            continue
        pixels = cv2.imread(str(FACEMASK / "images" / f"{xml_path.stem}.jpg"))
        assert pixels is not None, xml_path
        return np.asarray(pixels, dtype=np.uint8), (box[0], box[1], box[2], box[3])
    raise AssertionError(f"no held-out single face of {sorted(classes)} in {FACEMASK}")


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def on_face(detections: list[Detection], face: Box, width: int, height: int) -> list[Detection]:
    """The detections whose box (normalised) overlaps ``face`` (pixels) at IoU >= 0.3."""
    norm = (face[0] / width, face[1] / height, face[2] / width, face[3] / height)
    return [d for d in detections if iou(d.box, norm) >= 0.3]


def close_up(picture: Image, face: Box, *, face_px: int = 400) -> tuple[Image, Box]:
    """The picture scaled so the face is ``face_px`` tall, in a 1280x720 frame centred on it
    (grey where the picture ends): staff right in front of a counter camera."""
    scale = face_px / (face[3] - face[1])
    big = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    cx, cy = (face[0] + face[2]) / 2 * scale, (face[1] + face[3]) / 2 * scale
    x0, y0 = round(cx - 640), round(cy - 360)  # frame origin in the scaled picture
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(big.shape[1], x0 + 1280), min(big.shape[0], y0 + 720)
    frame[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = big[sy0:sy1, sx0:sx1]
    moved = tuple(v * scale - o for v, o in zip(face, (x0, y0, x0, y0), strict=True))
    return frame, (moved[0], moved[1], moved[2], moved[3])


@pytest.fixture(scope="module")
def stage() -> FaceMaskStage:
    return FaceMaskStage.from_dir(MODELS)


# --------------------------------------------------------------------------- real pictures


@needs_data
def test_unmasked_held_out_face_is_found_and_decided_no_mask(stage: FaceMaskStage) -> None:
    """The held-out unmasked face gives a face_no_mask detection on it, with the detector's
    class id and a box normalised to 0..1, and no face_mask detection on it."""
    picture, face = held_out_face(UNMASKED)
    height, width = picture.shape[:2]
    detections = stage.detect(picture)
    hits = on_face(detections, face, width, height)
    assert [d.label for d in hits] == ["face_no_mask"], detections
    assert hits[0].class_id == AGENT_LABELS.index("face_no_mask")
    assert 0.5 < hits[0].confidence <= 1.0
    assert all(0.0 <= v <= 1.0 for d in detections for v in d.box)


@needs_data
def test_masked_held_out_face_is_found_and_decided_mask(stage: FaceMaskStage) -> None:
    """The held-out masked face gives a face_mask detection on it and no face_no_mask."""
    picture, face = held_out_face(MASKED)
    height, width = picture.shape[:2]
    hits = on_face(stage.detect(picture), face, width, height)
    assert [d.label for d in hits] == ["face_mask"], hits
    assert hits[0].class_id == AGENT_LABELS.index("face_mask")


@needs_data
@pytest.mark.parametrize(("classes", "label"), [(UNMASKED, "face_no_mask"), (MASKED, "face_mask")])
def test_large_close_up_face_is_found_and_decided(
    stage: FaceMaskStage, classes: frozenset[str], label: str
) -> None:
    """A face 400 px tall in a 1280x720 frame (where the YOLO detector finds nothing) is
    found and decided like the small original."""
    picture, face = held_out_face(classes)
    frame, moved = close_up(picture, face)
    hits = on_face(stage.detect(frame), moved, 1280, 720)
    assert [d.label for d in hits] == [label], hits


@needs_data
def test_face_stage_detections_drive_the_rules_engine_unchanged(stage: FaceMaskStage) -> None:
    """The stage's detections go into the rule engine as they are: the unmasked face raises
    the no_mask alert after min_duration, the masked one never does."""
    rule = RuleConfig.model_validate(
        {"labels": ["face_no_mask"], "min_duration": 3.0, "min_confidence": 0.5}
    )
    for classes, expected in ((UNMASKED, 1), (MASKED, 0)):
        picture, _ = held_out_face(classes)
        detections = stage.detect(picture)
        engine = RuleEngine({"no_mask": rule})
        started = [
            alert
            for t in range(6)
            for alert in engine.update("kitchen", detections, mono=float(t), wall=1e9 + t)
            if alert.phase == "start"
        ]
        assert len(started) == expected, (classes, detections)
        assert all(a.type == "no_mask" for a in started)


# --------------------------------------------------------------------------- crops and passes


def test_crop_is_a_square_around_the_face_with_the_margin() -> None:
    """A face box of a uniform patch on a different background gives a crop whose centre is
    the patch and whose border, at margin 0.5, is background."""
    frame = np.zeros((200, 300, 3), np.uint8)
    frame[80:120, 130:170] = 200  # a 40 px "face" at (150, 100)
    crop = crop_face(frame, (130.0, 80.0, 170.0, 120.0), size=64, margin=0.5)
    assert crop.shape == (64, 64, 3)
    assert crop.dtype == np.uint8
    assert crop[24:40, 24:40].min() == 200  # the middle half is the face
    assert crop[:4].max() == 0
    assert crop[:, -4:].max() == 0


def test_large_faces_are_shrunk_without_aliasing() -> None:
    """A 400 px face of fine stripes becomes a flat mid-grey at 64 px (area averaging), not
    a moire of black and white."""
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, ::2] = 255
    crop = crop_face(frame, (440.0, 160.0, 840.0, 560.0), size=64, margin=0.2)
    assert abs(float(crop.mean()) - 127.5) < 3
    assert float(crop.std()) < 10


@pytest.mark.parametrize("size", [(960, 540), (788, 443), (640, 360), (480, 270)])
def test_shrinking_a_frame_averages_fine_detail_away(size: tuple[int, int]) -> None:
    """A 1080p frame of one-pixel stripes shrunk to half its size or less for YuNet's native
    pass comes out the exact size asked and a flat mid-grey (area averaging first), not a
    moire of black and white."""
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, ::2] = 255
    small = shrink(frame, size)
    assert (small.shape[1], small.shape[0]) == size
    assert abs(float(small.mean()) - 127.5) < 3
    assert float(small.std()) < 10


def test_upscaled_pass_is_capped_by_pixels() -> None:
    """The small-face pass is 2x up to max_upscaled_pixels, smaller above, none under 1.25x."""
    detector = FaceDetector(MODELS / YUNET_FILE)
    assert detector.max_upscaled_pixels == 1_000_000
    assert detector.upscale_for(640, 360) == 2.0
    assert math.isclose(detector.upscale_for(960, 540), math.sqrt(1_000_000 / (960 * 540)))
    assert detector.upscale_for(1280, 720) == 1.0
    assert FaceDetector(MODELS / YUNET_FILE, upscale=1.0).upscale_for(320, 240) == 1.0


def test_a_frame_without_faces_gives_no_detections(stage: FaceMaskStage) -> None:
    """A flat grey frame has no face and so no detection."""
    assert stage.detect(np.full((480, 640, 3), 128, np.uint8)) == []


@pytest.mark.parametrize(
    "setting", [{"score_threshold": 0.0}, {"top_k": 0}, {"upscale": 0.5}, {"nms_threshold": 2.0}]
)
def test_out_of_range_settings_are_refused(setting: dict[str, float]) -> None:
    """Every face detector setting out of its range raises ValueError naming it."""
    with pytest.raises(ValueError, match=next(iter(setting))):
        FaceDetector(MODELS / YUNET_FILE, **setting)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- backends


@needs_data
def test_onnxruntime_and_opencv_find_the_same_faces() -> None:
    """YuNet run by onnxruntime (free input size, decoded here) gives OpenCV's faces: same
    boxes within 0.5 px and scores within 1e-3, on held-out pictures at native size and on a
    1280x720 close-up (upscaled and shrunk passes both used)."""
    options = {"upscale": 2.0, "max_upscaled_pixels": 500_000, "max_pixels": 350_000}
    opencv = FaceDetector(MODELS / YUNET_FILE, backend="opencv", **options)  # type: ignore[arg-type]
    fast = FaceDetector(MODELS / YUNET_DYNAMIC_FILE, backend="onnxruntime", **options)  # type: ignore[arg-type]
    picture, face = held_out_face(UNMASKED)
    frames = [picture, held_out_face(MASKED)[0], close_up(picture, face)[0]]
    compared = 0
    for frame in frames:
        expected, got = opencv.detect(frame), fast.detect(frame)
        assert len(got) == len(expected) >= 1
        for a, b in zip(expected, got, strict=True):
            assert max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) < 0.5
            assert abs(a.score - b.score) < 1e-3
            compared += 1
    assert compared >= 3


def test_default_face_folder_runs_yunet_with_onnxruntime() -> None:
    """The shipped face folder names YuNet with free input size, so the stage runs it with
    onnxruntime; backend="opencv" still runs the original file."""
    assert FaceMaskStage.from_dir(MODELS).detector.backend == "onnxruntime"
    opencv = FaceMaskStage.from_dir(MODELS, backend="opencv").detector
    assert (opencv.backend, opencv.path.name) == ("opencv", YUNET_FILE)


def test_fixed_size_yunet_is_refused_by_onnxruntime_naming_the_fix() -> None:
    """The original 640x640 YuNet given to the onnxruntime backend raises ModelError naming
    the file and the script that makes a runnable copy."""
    with pytest.raises(ModelError, match=r"yunet_n_640_640\.onnx.*yunet_dynamic\.py"):
        FaceDetector(MODELS / YUNET_FILE, backend="onnxruntime")


def test_unknown_face_backend_is_refused() -> None:
    """A backend name other than onnxruntime / opencv raises ValueError naming both."""
    with pytest.raises(ValueError, match="onnxruntime, opencv"):
        FaceDetector(MODELS / YUNET_FILE, backend="tensorrt")


# --------------------------------------------------------------------------- bad model files


def test_corrupt_classifier_in_model_folder_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A model folder whose classifier no longer matches its sha256 raises ModelError with
    the file's path, before anything runs."""
    folder = tmp_path / "face"
    shutil.copytree(MODELS, folder)
    onnx = folder / CLASSIFIER_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=re.escape(str(onnx))) as caught:
        FaceMaskStage.from_dir(folder)
    assert "sha256" in str(caught.value)


@pytest.mark.parametrize(
    ("backend", "name"), [("auto", YUNET_DYNAMIC_FILE), ("opencv", YUNET_FILE)]
)
def test_missing_face_detector_in_model_folder_is_refused_naming_the_file(
    tmp_path: Path, backend: str, name: str
) -> None:
    """A model folder without the YuNet file its backend runs raises ModelError with the
    file's path."""
    folder = tmp_path / "face"
    shutil.copytree(MODELS, folder)
    (folder / name).unlink()
    with pytest.raises(ModelError, match=re.escape(str(folder / name))):
        FaceMaskStage.from_dir(folder, backend=backend)


def test_missing_description_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A folder without mask_classifier.json raises ModelError with its path."""
    with pytest.raises(ModelError, match=re.escape(str(tmp_path / META_FILE))):
        FaceMaskStage.from_dir(tmp_path)


@pytest.mark.parametrize("load", [MaskClassifier, FaceDetector])
def test_garbage_onnx_is_refused_naming_the_file(tmp_path: Path, load: type) -> None:
    """A file that is no ONNX model raises ModelError with its path, for both models."""
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x08\x07not an onnx model" * 50)
    with pytest.raises(ModelError, match=re.escape(str(path))):
        load(path)


def test_missing_onnx_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A path with no file raises ModelError with the path, for both models."""
    for load in (MaskClassifier, FaceDetector):
        with pytest.raises(ModelError, match=re.escape(str(tmp_path / "absent.onnx"))):
            load(tmp_path / "absent.onnx")


def test_swapped_models_are_refused_naming_the_file() -> None:
    """YuNet given as the classifier, or the classifier as YuNet, raises ModelError naming
    the file: the input and output shapes do not match."""
    with pytest.raises(ModelError, match=re.escape(str(MODELS / YUNET_FILE))):
        MaskClassifier(MODELS / YUNET_FILE)
    with pytest.raises(ModelError, match=re.escape(str(MODELS / CLASSIFIER_FILE))):
        FaceDetector(MODELS / CLASSIFIER_FILE)


def test_classifier_with_other_labels_is_refused_naming_the_file() -> None:
    """The classifier loaded with two labels (its output has three) raises ModelError."""
    with pytest.raises(ModelError, match=re.escape(str(MODELS / CLASSIFIER_FILE))):
        MaskClassifier(MODELS / CLASSIFIER_FILE, labels=("mask", "no_mask"))


# --------------------------------------------------------------------------- in the model package

PACKAGE = REPO / "models" / "default"


def staged_copy(tmp_path: Path, **changes: object) -> Path:
    """A copy of the default package whose ``stages.face`` entry has ``changes`` applied."""
    import yaml  # noqa: PLC0415

    target = tmp_path / "package"
    shutil.copytree(PACKAGE, target)
    manifest = yaml.safe_load((target / "manifest.yaml").read_text())
    manifest["stages"]["face"].update(changes)
    (target / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return target


def test_default_package_carries_the_face_stage_pinned_by_sha256() -> None:
    """The shipped package is format 2 with a face stage that decides the face labels."""
    from agent.detect.model import load_model_package  # noqa: PLC0415

    package = load_model_package(PACKAGE)
    face = package.stages["face"]
    assert package.manifest["format"] == "mclz-model/2"
    assert face.path == PACKAGE / "face"
    assert set(face.replaces) == {"face_mask", "face_no_mask"}


def test_a_replaced_stage_description_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A stage whose description no longer matches the manifest's sha256 is refused."""
    from agent.detect.model import load_model_package  # noqa: PLC0415

    target = staged_copy(tmp_path)
    meta = target / "face" / "mask_classifier.json"
    meta.write_text(meta.read_text().replace('"margin": 0.2', '"margin": 0.3'))
    with pytest.raises(ModelError, match=re.escape(str(meta))):
        load_model_package(target)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"replaces": ["face_hat"]}, "stages.face.replaces"),
        ({"options": {"upscale": "big"}}, "stages.face.options"),
        ({"options": {"turbo": 1}}, "stages.face.options"),
        ({"options": {"look": "everywhere"}}, "stages.face.options.look"),
        ({"dir": "../face"}, "stages.face.dir"),
        ({"meta_sha256": "abc"}, "stages.face.meta_sha256"),
        ({"colour": "red"}, "unknown fields: colour"),
    ],
)
def test_bad_stage_entries_are_refused_with_the_field(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    """Each malformed stage entry gives a ModelError naming the manifest and the field."""
    from agent.detect.model import load_model_package  # noqa: PLC0415

    target = staged_copy(tmp_path, **changes)
    with pytest.raises(ModelError, match=re.escape(message)):
        load_model_package(target)


def test_stages_need_format_2(tmp_path: Path) -> None:
    """A format-1 manifest with stages is refused: an older agent would run it without them."""
    from agent.detect.model import load_model_package  # noqa: PLC0415

    target = staged_copy(tmp_path)
    text = (target / "manifest.yaml").read_text()
    (target / "manifest.yaml").write_text(text.replace("mclz-model/2", "mclz-model/1"))
    with pytest.raises(ModelError, match="needs format 'mclz-model/2'"):
        load_model_package(target)


@needs_data
def test_detector_with_a_face_stage_puts_the_stage_decision_in_place_of_its_own() -> None:
    """On a 400 px close-up, the Detector call the agent makes returns exactly one face
    detection on the face, and it is the face stage's (same label and confidence): the
    detector's own face classes are replaced, not added."""
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415

    picture, face = held_out_face(UNMASKED)
    frame, moved = close_up(picture, face)
    detector = Detector(load_model_package(PACKAGE), conf_threshold=0.25)
    assert detector.face_stage is not None
    staged = on_face(detector.detect(frame), moved, 1280, 720)
    own = on_face(detector.face_stage.detect(frame), moved, 1280, 720)
    assert [d.label for d in staged] == ["face_no_mask"], staged
    assert [(d.label, round(d.confidence, 6)) for d in own] == [
        (d.label, round(d.confidence, 6)) for d in staged
    ]


@needs_data
def test_face_stage_boxes_follow_the_view_crop() -> None:
    """With a view cropped to the right half, the face stage looks at that half only and
    its boxes come back in whole-frame coordinates, on the face."""
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.detect.views import View  # noqa: PLC0415

    picture, face = held_out_face(UNMASKED)
    height, width = picture.shape[:2]
    frame = np.full((height, 2 * width, 3), 90, np.uint8)
    frame[:, width:] = picture  # the face sits in the right half
    shifted = (face[0] + width, face[1], face[2] + width, face[3])
    detector = Detector(load_model_package(PACKAGE))
    right = detector.detect_views([frame], [View(crop=(0.5, 0.0, 1.0, 1.0))])[0]
    left = detector.detect_views([frame], [View(crop=(0.0, 0.0, 0.5, 1.0))])[0]
    assert [d.label for d in on_face(right, shifted, 2 * width, height)] == ["face_no_mask"]
    assert not [d for d in left if d.label.startswith("face_")], left


# --------------------------------------------------------------------------- a closer look


def test_look_regions_cover_heads_and_merge_and_fall_back_to_the_frame() -> None:
    """A person gives a square around its top; overlapping squares merge; too much -> None."""
    regions = look_regions([("person_no_uniform", (100.0, 100.0, 160.0, 300.0))], 1280, 720)
    assert regions is not None
    assert len(regions) == 1
    x1, y1, x2, y2 = regions[0]
    assert x1 < 100  # wider than the person: context
    assert x2 > 160
    assert y1 < 100  # the head, in the top of the box, is inside
    assert y2 > 190
    assert y2 < 260  # the legs are not looked at
    pair = look_regions(
        [("head_bare", (400.0, 100.0, 430.0, 130.0)), ("face_mask", (420.0, 110.0, 440.0, 135.0))],
        1280,
        720,
    )
    assert pair is not None
    assert len(pair) == 1  # overlapping squares merged
    assert look_regions([("head_bare", (0.0, 0.0, 700.0, 700.0))], 1280, 720) is None
    assert look_regions([("food_uncovered", (10.0, 10.0, 50.0, 50.0))], 1280, 720) == []
    tiny = look_regions([("head_bare", (500.0, 300.0, 503.0, 303.0))], 1280, 720)
    assert tiny is not None
    assert tiny[0][2] - tiny[0][0] >= 40  # a few pixels of head still get a usable crop


@needs_data
def test_a_closer_look_at_people_finds_a_small_face_the_whole_frame_misses() -> None:
    """A 20 px unmasked face in a 1920x1080 frame: the whole frame (shrunk to 0.35 MP, no
    upscaled pass) misses it; a region around the person, looked at 2x closer, finds it at
    the right place in frame pixels."""
    picture, face = held_out_face(UNMASKED)
    scale = 20.0 / (face[3] - face[1])
    small = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    frame = np.full((1080, 1920, 3), 90, np.uint8)
    left, top = 1300, 600
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    where = (
        left + face[0] * scale,
        top + face[1] * scale,
        left + face[2] * scale,
        top + face[3] * scale,
    )
    finder = FaceDetector(
        MODELS / YUNET_DYNAMIC_FILE,
        backend="onnxruntime",
        upscale=2.0,
        max_upscaled_pixels=500_000,
        max_pixels=350_000,
    )
    assert not [f for f in finder.detect(frame) if iou(f.box, where) >= 0.3]
    person = (where[0] - 20.0, where[1] - 10.0, where[2] + 20.0, where[3] + 120.0)
    regions = look_regions([("person_no_uniform", person)], 1920, 1080)
    assert regions
    found = [f for f in finder.detect(frame, regions) if iou(f.box, where) >= 0.3]
    assert len(found) == 1
