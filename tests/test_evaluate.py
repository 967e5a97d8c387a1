"""Tests for agent.evaluate: real inference with the synthetic pattern model on drawn images.

The pattern model fires on solid magenta (head_bare) and cyan (face_no_mask) squares; a dimmer
magenta gives a lower confidence (255 -> 0.95, 178 -> ~0.60, 168 -> ~0.31), which lets a test
lay out a precision-recall curve whose AP can be worked out by hand.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.cli.main import app
from agent.detect.datasets import LabelledBox, load_dataset
from agent.detect.detector import Detector
from agent.detect.evaluate import (
    SIZE_BUCKETS,
    EvalReport,
    average_precision,
    box_size,
    calibrate,
    evaluate,
    match_image,
    render_report,
    render_sweep,
    size_bucket,
    sweep_thresholds,
)
from agent.detect.model import load_model_package, write_manifest
from agent.detect.views import View
from agent.records import Detection
from mclz_testkit.synthetic_model import DEFAULT_LABELS, build_pattern_model

Image = npt.NDArray[np.uint8]
WIDTH, HEIGHT = 400, 300
SQUARE = (150, 100, 230, 180)  # x0, y0, x1, y1 in pixels
SQUARE_BOX = (150 / WIDTH, 100 / HEIGHT, 230 / WIDTH, 180 / HEIGHT)
THRESHOLDS = {"head_bare": 0.5, "face_no_mask": 0.5}
VIOLATIONS = {"head_bare": "no_hat", "face_no_mask": "no_mask"}

runner = CliRunner()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pattern model with per-label thresholds and violation types in its manifest."""
    out = build_pattern_model(tmp_path_factory.mktemp("pattern-model"))
    write_manifest(
        out,
        name="mclz-synthetic-pattern",
        version="0.0.1",
        onnx_file="model.onnx",
        labels=DEFAULT_LABELS,
        input_width=320,
        input_height=320,
        violations=VIOLATIONS,
        thresholds=THRESHOLDS,
    )
    return out


@pytest.fixture(scope="module")
def detector(package_dir: Path) -> Detector:
    return Detector(load_model_package(package_dir), conf_threshold=0.001, max_detections=300)


def background(seed: int, width: int = WIDTH, height: int = HEIGHT) -> Image:
    """Grey texture with a little colour noise: nothing the pattern model reacts to."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (height // 10 + 1, width // 10 + 1), dtype=np.uint8)
    smooth = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
    noisy = smooth[:, :, None].astype(np.int16) + noise
    image: Image = np.clip(noisy, 0, 255).astype(np.uint8)
    return image


def draw(seed: int, colour_bgr: tuple[int, int, int] | None) -> Image:
    image = background(seed)
    if colour_bgr is not None:
        x0, y0, x1, y1 = SQUARE
        image[y0:y1, x0:x1] = colour_bgr
    return image


def magenta(level: int) -> tuple[int, int, int]:
    return (level, 0, level)


CYAN = (255, 255, 0)
YOLO_LINE = "{cls} 0.475 0.466667 0.2 0.266667\n"  # SQUARE as centre and size


@pytest.fixture
def yolo_dataset(tmp_path: Path) -> Path:
    """A YOLO folder counted by hand (classes.txt: the model's own labels, ids 0-3).

    a: bright magenta, labelled head_bare          -> head_bare TP at 0.95
    b: dim magenta, no label                       -> head_bare FP at ~0.60
    c: faint magenta, labelled head_bare           -> head_bare TP at ~0.31 (below 0.5)
    d: nothing drawn, labelled head_bare           -> head_bare FN
    e: background, empty label file                -> nothing
    f: cyan labelled face_no_mask, plus head_covered and face_mask labels with nothing drawn
                                                   -> face_no_mask TP; head_covered, face_mask FN
    """
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in DEFAULT_LABELS))
    head_bare, face_no_mask, head_covered, face_mask = range(4)
    cases = {
        "a": (magenta(255), YOLO_LINE.format(cls=head_bare)),
        "b": (magenta(178), ""),
        "c": (magenta(168), YOLO_LINE.format(cls=head_bare)),
        "d": (None, YOLO_LINE.format(cls=head_bare)),
        "e": (None, ""),
        "f": (
            CYAN,
            YOLO_LINE.format(cls=face_no_mask)
            + f"{head_covered} 0.2 0.2 0.1 0.1\n{face_mask} 0.8 0.8 0.1 0.1\n",
        ),
    }
    for seed, (stem, (colour, label)) in enumerate(cases.items()):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), draw(seed, colour))
        (root / "labels" / f"{stem}.txt").write_text(label)
    return root


@pytest.fixture
def voc_dataset(tmp_path: Path) -> Path:
    """A VOC folder (JPEG images) counted by hand; only the face classes are labelled.

    v1: cyan, without_mask                       -> face_no_mask TP
    v2: cyan, mask_weared_incorrect              -> face_no_mask TP
    v3: magenta (not a labelled class), with_mask elsewhere -> face_mask FN; magenta ignored
    v4: nothing drawn, without_mask              -> face_no_mask FN
    v5: cyan, no object                          -> face_no_mask FP
    """
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cases: dict[str, tuple[tuple[int, int, int] | None, list[tuple[str, tuple[int, ...]]]]] = {
        "v1": (CYAN, [("without_mask", SQUARE)]),
        "v2": (CYAN, [("mask_weared_incorrect", SQUARE)]),
        "v3": (magenta(255), [("with_mask", (10, 10, 60, 60))]),
        "v4": (None, [("without_mask", SQUARE)]),
        "v5": (CYAN, []),
    }
    for seed, (stem, (colour, objects)) in enumerate(cases.items()):
        cv2.imwrite(
            str(root / "images" / f"{stem}.jpg"),
            draw(seed, colour),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        objs = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
            f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for name, b in objects
        )
        (root / "annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{WIDTH}</width>"
            f"<height>{HEIGHT}</height><depth>3</depth></size>{objs}</annotation>"
        )
    return root


def by_label(report: EvalReport) -> dict[str, tuple[object, ...]]:
    return {c.label: (c.gt, c.tp, c.fp, c.fn, c.precision, c.recall, c.ap) for c in report.classes}


# --------------------------------------------------------------------------- hand counts


def test_yolo_folder_scores_match_the_hand_count(detector: Detector, yolo_dataset: Path) -> None:
    """TP/FP/FN, precision and recall at the thresholds, and AP50, equal the hand count.

    head_bare, gt 3: detections 0.95 TP, 0.60 FP, 0.31 TP. At 0.5: TP 1, FP 1, FN 2.
    Curve points (R, P): (1/3, 1), (1/3, 1/2), (2/3, 2/3) -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    """
    report = evaluate(
        detector, load_dataset(yolo_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS
    )
    assert report.images == 6
    assert [c.label for c in report.classes] == [
        "face_mask",
        "face_no_mask",
        "head_covered",
        "head_bare",
    ]
    got = by_label(report)
    assert got["head_bare"] == (3, 1, 1, 2, 0.5, pytest.approx(1 / 3), pytest.approx(5 / 9))
    assert got["face_no_mask"] == (1, 1, 0, 0, 1.0, 1.0, pytest.approx(1.0))
    assert got["head_covered"] == (1, 0, 0, 1, None, 0.0, 0.0)
    assert got["face_mask"] == (1, 0, 0, 1, None, 0.0, 0.0)
    assert report.map == pytest.approx((5 / 9 + 1) / 4)
    assert {c.label: c.detections for c in report.classes}["head_bare"] == 3
    violations = {v.violation: (v.labels, v.gt, v.tp, v.fp, v.fn) for v in report.violations}
    assert violations == {
        "no_hat": (("head_bare",), 3, 1, 1, 2),
        "no_mask": (("face_no_mask",), 1, 1, 0, 0),
    }


def test_thresholds_move_the_operating_point_not_the_ap(
    detector: Detector, yolo_dataset: Path
) -> None:
    """At 0.3 the faint square counts too (TP 2, FP 1, FN 1); AP does not depend on it."""
    report = evaluate(
        detector, load_dataset(yolo_dataset), thresholds={"head_bare": 0.3}, violations={}
    )
    got = by_label(report)["head_bare"]
    assert got == (3, 2, 1, 1, pytest.approx(2 / 3), pytest.approx(2 / 3), pytest.approx(5 / 9))
    assert report.violations == ()
    # Labels without a threshold use the default (0.5): the 0.95 cyan square still counts.
    assert {c.label: c.threshold for c in report.classes}["face_no_mask"] == 0.5


def test_voc_folder_counts_only_the_face_classes(detector: Detector, voc_dataset: Path) -> None:
    """VOC names map to face classes; the magenta head on v3 is neither TP nor FP.

    face_no_mask, gt 3 (v1, v2, v4): three detections all at 0.95, v1 and v2 TP, v5 FP: one
    curve point (2/3, 2/3) -> AP = 4/9. face_mask: gt 1, no detection -> AP 0.
    """
    report = evaluate(
        detector, load_dataset(voc_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS
    )
    got = by_label(report)
    assert list(got) == ["face_mask", "face_no_mask"]
    assert got["face_no_mask"] == (
        3,
        2,
        1,
        1,
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        pytest.approx(4 / 9),
    )
    assert got["face_mask"] == (1, 0, 0, 1, None, 0.0, 0.0)
    assert [v.violation for v in report.violations] == ["no_mask"]  # no_hat: heads unlabelled
    assert report.problems == ()


def test_report_renders_as_tables(detector: Detector, yolo_dataset: Path) -> None:
    """The text report has a row per class and per violation type, and the timing line."""
    report = evaluate(
        detector, load_dataset(yolo_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS
    )
    text = render_report(report)
    assert "AP50" in text
    head = next(line for line in text.splitlines() if line.startswith("head_bare "))
    assert head.split() == [
        "head_bare",
        "0.50",
        "3",
        "1",
        "1",
        "2",
        "0.500",
        "0.333",
        "0.556",
        "0.94",
    ]  # last: the F0.5-best threshold
    assert any(line.startswith("no_hat ") for line in text.splitlines())
    assert "6 images in" in text
    assert report.images_per_s > 0
    assert report.ms_per_image > 0


# --------------------------------------------------------------------------- object sizes

# (label, x0, y0, w, h, drawn) in the image's pixels. Drawn objects are solid magenta
# (head_bare) or cyan (face_no_mask) and at least 24 px in the model's 320 px input, which
# the pattern model finds at 0.95; undrawn ones it cannot find.
SizedObject = tuple[str, int, int, int, int, bool]
SIZED: dict[str, tuple[int, int, list[SizedObject]]] = {
    # 160x120, scaled 2x into the model: a 12 px head is 24 px there.
    "small": (
        160,
        120,
        [
            ("head_bare", 20, 20, 12, 12, True),
            ("head_bare", 100, 20, 10, 10, False),
            ("head_bare", 100, 70, 16, 16, False),  # on an edge: the upper bucket
        ],
    ),
    "small2": (160, 120, [("head_bare", 30, 40, 20, 20, True)]),
    # 320x240, 1x: a 24x96 head is 48 px (sqrt of its area), not 96 (its long side).
    "mid": (
        320,
        240,
        [
            ("head_bare", 40, 60, 24, 96, True),
            ("head_bare", 200, 20, 10, 40, False),
            ("face_no_mask", 200, 120, 40, 40, True),
        ],
    ),
    # 640x480, 0.5x: 100x60 is 77 px in the image, 39 px in the model.
    "large": (640, 480, [("head_bare", 100, 100, 100, 60, True)]),
    # 800x600, 0.4x: buckets use the image's pixels (150 px), not the model's (60 px).
    "huge": (
        800,
        600,
        [("head_bare", 300, 200, 150, 150, True), ("head_bare", 50, 50, 128, 128, True)],
    ),
}
PATTERN_SCORE = 0.95  # the pattern model's confidence for a solid patch filling its window
SIZE_THRESHOLDS = {"head_bare": 0.5, "face_no_mask": 0.99}  # 0.99: above PATTERN_SCORE


def reference_bucket(w: int, h: int) -> str:
    """The bucket of a w x h pixel box, worked out without agent code."""
    size = math.sqrt(w * h)
    for name, upper in (("<16", 16), ("16-32", 32), ("32-64", 64), ("64-128", 128)):
        if size < upper:
            return name
    return ">=128"


@pytest.fixture
def sized_dataset(tmp_path: Path) -> Path:
    """A YOLO folder of images of several sizes with the objects of SIZED."""
    root = tmp_path / "sized"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in DEFAULT_LABELS))
    colours = {"head_bare": magenta(255), "face_no_mask": CYAN}
    for seed, (stem, (width, height, objects)) in enumerate(SIZED.items()):
        image = background(seed, width, height)
        lines = []
        for label, x0, y0, w, h, drawn in objects:
            if drawn:
                image[y0 : y0 + h, x0 : x0 + w] = colours[label]
            cx, cy = (x0 + w / 2) / width, (y0 + h / 2) / height
            cls = DEFAULT_LABELS.index(label)
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}\n")
        cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        (root / "labels" / f"{stem}.txt").write_text("".join(lines))
    return root


def expected_sizes(label: str) -> dict[str, tuple[int, int]]:
    """(gt, found) per bucket for ``label``, from SIZED: found when drawn and the model's
    0.95 reaches the class's threshold."""
    found_when_drawn = SIZE_THRESHOLDS[label] <= PATTERN_SCORE
    counts = dict.fromkeys(SIZE_BUCKETS, (0, 0))
    for _w, _h, objects in SIZED.values():
        for name, _x, _y, w, h, drawn in objects:
            if name == label:
                bucket = reference_bucket(w, h)
                gt, tp = counts[bucket]
                counts[bucket] = (gt + 1, tp + (drawn and found_when_drawn))
    return counts


def test_recall_per_object_size_matches_the_drawn_objects(
    detector: Detector, sized_dataset: Path
) -> None:
    """Each ground-truth box falls in the bucket of sqrt(w*h) in its image's pixels, and
    counts as found when a detection at the class's threshold took it: per class and
    bucket the counts are those worked out from the drawn objects, the buckets add up to
    the class's gt and TP, and the JSON gives them under size_buckets."""
    report = evaluate(
        detector, load_dataset(sized_dataset), thresholds=SIZE_THRESHOLDS, violations={}
    )
    classes = {c.label: c for c in report.classes}
    for label in ("head_bare", "face_no_mask"):
        got = {b.bucket: (b.gt, b.tp) for b in report.size_buckets[label]}
        assert got == expected_sizes(label), label
        assert sum(b.gt for b in report.size_buckets[label]) == classes[label].gt
        assert sum(b.tp for b in report.size_buckets[label]) == classes[label].tp
    assert expected_sizes("head_bare")["<16"] == (2, 1)  # the worked example is not empty
    assert expected_sizes("head_bare")[">=128"] == (2, 2)
    assert classes["face_no_mask"].detections == 1  # found by the model, below 0.99
    data = json.loads(json.dumps(report.to_dict()))
    assert data["size_buckets"]["head_bare"]["16-32"] == {"gt": 3, "tp": 1, "recall": 1 / 3}
    assert data["size_buckets"]["face_no_mask"]["32-64"] == {"gt": 1, "tp": 0, "recall": 0.0}
    assert data["size_buckets"]["face_no_mask"]["<16"] == {"gt": 0, "tp": 0, "recall": None}
    assert list(data["size_buckets"]["head_bare"]) == list(SIZE_BUCKETS)
    assert data["size_edges_px"] == [16, 32, 64, 128]
    assert data["stage"] == "detector"


def test_size_table_is_printed_per_class(detector: Detector, sized_dataset: Path) -> None:
    """The text report has the size table: per class, found/gt and recall per bucket, '-'
    where the class has no ground truth of that size; it names the stage scored."""
    report = evaluate(
        detector,
        load_dataset(sized_dataset),
        thresholds=SIZE_THRESHOLDS,
        violations={},
        stage="faces",
    )
    assert report.stage == "faces"
    text = render_report(report)
    table = text.split("recall by object size (stage faces)", 1)[1].splitlines()
    assert table[2].split() == ["class", *SIZE_BUCKETS]
    head = next(line for line in table if line.startswith("head_bare "))
    cells = [
        f"{tp}/{gt} {tp / gt:.2f}" if gt else "-" for gt, tp in expected_sizes("head_bare").values()
    ]
    assert head.split() == ["head_bare", *" ".join(cells).split()]
    face = next(line for line in table if line.startswith("face_no_mask "))
    assert face.split() == ["face_no_mask", "-", "-", "0/1", "0.00", "-", "-"]


def test_box_size_and_bucket_edges() -> None:
    """sqrt(w*h) in pixels, a lower edge in its own bucket, and a box stored normalised
    (16 px as 0.133333 of 120, YOLO's 6 decimals) is 16 px, not a hair under."""
    assert box_size((0.0, 0.0, 0.1, 0.133333), 160, 120) == 16.0
    assert size_bucket(box_size((0.0, 0.0, 0.1, 0.1), 160, 160)) == "16-32"
    assert box_size((0.0, 0.0, 0.25, 1.0), 40, 40) == 20.0  # 10 x 40
    assert [size_bucket(s) for s in (0.0, 15.99, 16, 31.99, 32, 64, 127.99, 128, 4000)] == [
        "<16",
        "<16",
        "16-32",
        "16-32",
        "32-64",
        "64-128",
        "64-128",
        ">=128",
        ">=128",
    ]


# --------------------------------------------------------------------------- the CLI


def test_cli_json_gives_the_same_numbers(
    package_dir: Path, detector: Detector, yolo_dataset: Path
) -> None:
    """model eval --json prints only JSON, with the figures evaluate() gives."""
    result = runner.invoke(
        app,
        [
            *("model", "eval", "--data", str(yolo_dataset), "--model", str(package_dir)),
            *("--json", "--threads", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = evaluate(
        detector, load_dataset(yolo_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS
    ).to_dict()
    assert data["classes"] == expected["classes"]
    assert data["violations"] == expected["violations"]
    assert data["size_buckets"] == expected["size_buckets"]
    assert data["stage"] == "detector"
    assert data["map"] == pytest.approx(expected["map"])
    assert data["images"] == 6


def test_cli_table_and_conf_override(package_dir: Path, voc_dataset: Path) -> None:
    """The text output has the class table; --conf applies one threshold to every class."""
    result = runner.invoke(
        app,
        [
            *("model", "eval", "--data", str(voc_dataset), "--model", str(package_dir)),
            *("--conf", "0.99"),
        ],
    )
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith("face_no_mask "))
    assert row.split()[:6] == ["face_no_mask", "0.99", "3", "0", "0", "3"]


def test_cli_bad_folder_exits_2(package_dir: Path, tmp_path: Path) -> None:
    """A folder that is no dataset exits 2 with a message naming it and the expected layout."""
    (tmp_path / "images").mkdir()
    result = runner.invoke(
        app, ["model", "eval", "--data", str(tmp_path), "--model", str(package_dir)]
    )
    assert result.exit_code == 2
    assert f"error: {tmp_path}: not a labelled dataset" in result.stderr
    assert "annotations/" in result.stderr
    assert "labels/" in result.stderr


def test_cli_bad_model_exits_3(yolo_dataset: Path, tmp_path: Path) -> None:
    """A missing model package exits 3."""
    result = runner.invoke(
        app, ["model", "eval", "--data", str(yolo_dataset), "--model", str(tmp_path / "none")]
    )
    assert result.exit_code == 3
    assert "model package directory not found" in result.stderr


# --------------------------------------------------------------------------- metric functions


def test_average_precision_of_a_worked_example() -> None:
    """Ranks T F T F T against 4 ground truths: (1/4)*1 + (1/4)*(2/3) + (1/4)*(3/5)."""
    ap = average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [True, False, True, False, True], 4)
    assert ap == pytest.approx(0.25 + 0.25 * 2 / 3 + 0.25 * 3 / 5)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.2, 0.4, 0.6, 0.8]), st.booleans()), min_size=1, max_size=12
    ),
    st.integers(0, 5),
    st.randoms(use_true_random=False),
)
def test_average_precision_ignores_input_order(
    detections: list[tuple[float, bool]], extra_truth: int, rnd: random.Random
) -> None:
    """AP depends on the detections, not their order (ties included), and lies in 0..1."""
    n_truth = sum(hit for _, hit in detections) + extra_truth or 1
    shuffled = detections[:]
    rnd.shuffle(shuffled)
    first = average_precision([c for c, _ in detections], [h for _, h in detections], n_truth)
    second = average_precision([c for c, _ in shuffled], [h for _, h in shuffled], n_truth)
    assert first == pytest.approx(second)
    assert 0.0 <= first <= 1.0


def test_perfect_ranking_gives_ap_equal_to_recall() -> None:
    """All hits above all misses: AP is the recall reached (1.0 when every box is found)."""
    assert average_precision([0.9, 0.8, 0.1], [True, True, False], 2) == pytest.approx(1.0)
    assert average_precision([0.9, 0.8, 0.1], [True, True, False], 4) == pytest.approx(0.5)


def test_matching_takes_the_highest_iou_box_not_yet_taken() -> None:
    """The best detection takes its highest-IoU box; the next takes the one left, if >= IoU."""
    truth = [
        LabelledBox("head_bare", (0.0, 0.0, 0.4, 0.4)),
        LabelledBox("head_bare", (0.1, 0.0, 0.5, 0.4)),
        LabelledBox("face_mask", (0.1, 0.0, 0.5, 0.4)),
    ]
    dets = [
        Detection("head_bare", 3, 0.7, (0.0, 0.0, 0.4, 0.4)),  # IoU 0.6 with the second box
        Detection("head_bare", 3, 0.9, (0.1, 0.0, 0.5, 0.4)),  # exactly the second box
        Detection("head_bare", 3, 0.5, (0.1, 0.0, 0.5, 0.4)),  # second box already taken
    ]
    assert match_image(dets, truth, "head_bare", iou=0.5) == [
        (0.9, True),
        (0.7, True),
        (0.5, False),
    ]
    assert match_image(dets, truth, "face_mask", iou=0.5) == []


def test_calibrate_picks_the_best_f_half_threshold() -> None:
    """F0.5 favours precision: the cut goes above the false positive at 0.6 when the
    recall lost is small, and never below the 0.25 floor; no ground truth gives None."""
    matches = [(0.9, True), (0.8, True), (0.7, True), (0.6, False), (0.5, True), (0.3, False)]
    assert calibrate(matches, gt=5) == 0.7
    assert calibrate([(0.2, True), (0.1, True)], gt=2) is None  # under the floor
    assert calibrate(matches, gt=0) is None
    # A threshold is rounded down so the detection it came from still passes it.
    assert calibrate([(0.876, True)], gt=1) == 0.87


def test_sweep_counts_each_threshold_and_suggests_the_lowest_precise_one() -> None:
    """The sweep gives TP/FP, precision and recall at each threshold, counted by hand; the
    suggestion is the lowest threshold that reaches the precision target, or None."""
    from agent.detect.evaluate import ClassResult  # noqa: PLC0415

    matches = [(0.92, True), (0.81, True), (0.66, False), (0.58, True), (0.41, False), (0.3, True)]
    points = sweep_thresholds(matches, gt=5, thresholds=(0.3, 0.45, 0.6, 0.7, 0.95))
    assert [(p.threshold, p.tp, p.fp) for p in points] == [
        (0.3, 4, 2),
        (0.45, 3, 1),
        (0.6, 2, 1),
        (0.7, 2, 0),
        (0.95, 0, 0),
    ]
    assert points[0].precision == pytest.approx(4 / 6)
    assert points[1].recall == pytest.approx(3 / 5)
    assert points[4].precision is None  # nothing detected at 0.95
    result = ClassResult("face_no_mask", 0.5, 5, 6, 3, 1, 2, 0.75, 0.6, 0.7, sweep=points)
    assert result.suggest_threshold(0.75) == 0.45
    assert result.suggest_threshold(0.9) == 0.7
    assert result.suggest_threshold(1.01) is None
    assert sweep_thresholds(matches, gt=0, thresholds=(0.5,))[0].recall is None


def test_cli_sweep_prints_the_table_and_json_suggests(
    package_dir: Path, detector: Detector, yolo_dataset: Path
) -> None:
    """--sweep adds a table row per class with the suggestion the JSON also carries, and
    both agree with evaluate()'s own sweep."""
    args = ["model", "eval", "--data", str(yolo_dataset), "--model", str(package_dir)]
    text = runner.invoke(app, [*args, "--sweep", "--precision-target", "0.9"])
    assert text.exit_code == 0, text.output
    as_json = runner.invoke(app, [*args, "--json", "--precision-target", "0.9"])
    data = json.loads(as_json.stdout)
    report = evaluate(
        detector, load_dataset(yolo_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS
    )
    assert "lowest with precision >= 0.90" in text.stdout
    sweep_lines = text.stdout.split("threshold sweep:", 1)[1].splitlines()
    assert data["precision_target"] == 0.9
    for c in report.classes:
        suggested = c.suggest_threshold(0.9)
        assert data["suggested_thresholds"][c.label] == suggested
        row = next(line for line in sweep_lines if line.startswith(f"{c.label} "))
        assert row.split()[2] == ("-" if suggested is None else f"{suggested:.2f}")
        assert len(row.split()) == 3 + len(c.sweep)
    assert render_sweep(report, precision_target=0.9) in text.stdout
    assert any(c.suggest_threshold(0.9) is not None for c in report.classes)


def test_wide_view_copy_keeps_every_box_on_its_object(
    detector: Detector, yolo_dataset: Path, tmp_path: Path
) -> None:
    """scripts/train/wide_view_data.py puts each picture on a canvas twice as wide and high and
    moves its boxes with it: whole and in 2x2 tiles, the copy scores like the original."""
    out = tmp_path / "wide"
    script = Path(__file__).resolve().parents[1] / "scripts" / "train" / "wide_view_data.py"
    done = subprocess.run(
        [sys.executable, str(script), str(yolo_dataset), "--split", "", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "6 pictures at 0.5x" in done.stdout
    canvas = cv2.imread(str(out / "images" / "a.png"))
    assert canvas is not None
    assert canvas.shape[:2] == (2 * HEIGHT, 2 * WIDTH)
    plain = by_label(
        evaluate(detector, load_dataset(yolo_dataset), thresholds=THRESHOLDS, violations=VIOLATIONS)
    )
    for view in (None, View(cols=2, rows=2)):
        wide = evaluate(
            detector, load_dataset(out), thresholds=THRESHOLDS, violations=VIOLATIONS, view=view
        )
        assert by_label(wide) == plain
    bad = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "none"), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "no such folder" in bad.stderr


def test_cli_tiles_option_is_checked(package_dir: Path, yolo_dataset: Path) -> None:
    """--tiles takes COLSxROWS with 1-4 each; anything else is a usage error naming it."""
    args = ["model", "eval", "--data", str(yolo_dataset), "--model", str(package_dir)]
    ok = runner.invoke(app, [*args, "--tiles", "2x2"])
    assert ok.exit_code == 0, ok.output
    assert "2x2 tiles, overlap 0.15" in ok.stdout
    for bad in ("2", "0x1", "5x1", "axb"):
        result = runner.invoke(app, [*args, "--tiles", bad])
        assert result.exit_code == 2, bad
        assert "--tiles" in result.output


FACEMASK_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facemask"
DEFAULT_PACKAGE = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.mark.skipif(not FACEMASK_DATA.is_dir(), reason="needs ../shared/datasets/facemask")
def test_model_eval_scores_the_stages_it_is_told_to() -> None:
    """--stage all runs the package's face stage (reported as detector+face) and finds at
    least the faces the detector alone finds on the same pictures; --stage detector does not
    run it; another value is refused."""
    runner = CliRunner()
    base = ["model", "eval", "--data", str(FACEMASK_DATA), "--limit", "12", "--json"]
    base += ["--model", str(DEFAULT_PACKAGE), "--threads", "1"]
    combined = json.loads(runner.invoke(app, [*base, "--stage", "all"]).stdout)
    alone = json.loads(runner.invoke(app, [*base, "--stage", "detector"]).stdout)
    assert combined["stage"] == "detector+face"
    assert alone["stage"] == "detector"
    faces = {c["label"]: c for c in combined["classes"]}
    plain = {c["label"]: c for c in alone["classes"]}
    assert faces["face_no_mask"]["gt"] == plain["face_no_mask"]["gt"] > 0
    assert faces["face_no_mask"]["tp"] >= plain["face_no_mask"]["tp"]
    refused = runner.invoke(app, [*base, "--stage", "face"])
    assert refused.exit_code == 2
