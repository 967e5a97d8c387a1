"""Tests for agent.datasets: real files from ../shared, hand-made folders for the edge cases."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.detect.datasets import (
    AGENT_LABELS,
    HEADCOVER_NAMES,
    LabelledBox,
    agent_label,
    load_dataset,
    read_voc,
    read_yolo,
)
from agent.errors import DatasetError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FACEMASK = SHARED / "datasets" / "facemask"
HEADCOVER = SHARED / "datasets" / "headcover"

VOC_FILE = "maksssksksss0"  # 512x366, three faces (checked by hand against its xml below)
VOC_INCORRECT = "maksssksksss11"  # first object mask_weared_incorrect, then 15 with_mask
YOLO_POLYGON = "000041_jpg.rf.1a0f714eb69e6a351d6eb586e14bb378"  # line 2 is a polygon
YOLO_EMPTY = "001110_jpg.rf.5a06b29e3037505e2158e522c2e02e0b"  # an empty label file
YOLO_PLAIN = "000000_jpg.rf.0b56b5b65a2a2832e14fb0648a6bd70f"


@pytest.fixture(scope="module")
def shared() -> Path:
    """The shared datasets, or skip when ../shared is not checked out."""
    if not (FACEMASK / "annotations").is_dir() or not (HEADCOVER / "labels").is_dir():
        pytest.skip(f"../shared is absent: {FACEMASK} or {HEADCOVER} not found")
    return SHARED / "datasets"


def subset(src: Path, dst: Path, stems: list[str], label_dir: str, label_ext: str) -> Path:
    """A small dataset folder of symlinks to real files of ``src``."""
    (dst / "images").mkdir(parents=True)
    (dst / label_dir).mkdir()
    for stem in stems:
        (dst / "images" / f"{stem}.jpg").symlink_to(src / "images" / f"{stem}.jpg")
        (dst / label_dir / f"{stem}{label_ext}").symlink_to(src / label_dir / f"{stem}{label_ext}")
    return dst


def write_image(path: Path, width: int = 64, height: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, dtype=np.uint8))


def yolo_folder(root: Path, labels: dict[str, str], names: list[str] | None = None) -> Path:
    """A YOLO folder with one grey image per entry of ``labels`` (stem -> label file text)."""
    (root / "labels").mkdir(parents=True)
    for stem, text in labels.items():
        write_image(root / "images" / f"{stem}.png")
        (root / "labels" / f"{stem}.txt").write_text(text)
    if names is not None:
        (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def voc_xml(objects: list[tuple[str, int, int, int, int]], size: tuple[int, int] | None) -> str:
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        if size
        else ""
    )
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1 in objects
    )
    return f"<annotation><filename>x.jpg</filename>{size_xml}{objs}</annotation>"


def approx_box(box: tuple[float, float, float, float]) -> list[object]:
    return [pytest.approx(v, abs=1e-9) for v in box]


# --------------------------------------------------------------------------- real files


def test_voc_boxes_are_pixels_divided_by_the_stated_size(shared: Path) -> None:
    """maksssksksss0.xml (512x366): each box is its xml pixels / size, in file order, mapped."""
    labels = read_voc(shared / "facemask" / "annotations" / f"{VOC_FILE}.xml")
    assert labels.usable
    assert not labels.problems
    assert labels.image_size == (512, 366)
    # Numbers copied by hand from the xml: without_mask 79,105-109,142; with_mask 185,100-226,144;
    # without_mask 325,90-360,141.
    expected = [
        ("face_no_mask", (79 / 512, 105 / 366, 109 / 512, 142 / 366)),
        ("face_mask", (185 / 512, 100 / 366, 226 / 512, 144 / 366)),
        ("face_no_mask", (325 / 512, 90 / 366, 360 / 512, 141 / 366)),
    ]
    assert [b.label for b in labels.boxes] == [label for label, _ in expected]
    for got, (_, box) in zip(labels.boxes, expected, strict=True):
        assert list(got.box) == approx_box(box)


def test_mask_worn_incorrectly_counts_as_no_mask(shared: Path) -> None:
    """mask_weared_incorrect becomes face_no_mask; with_mask stays face_mask."""
    labels = read_voc(shared / "facemask" / "annotations" / f"{VOC_INCORRECT}.xml")
    assert labels.boxes[0].label == "face_no_mask"
    assert [b.label for b in labels.boxes[1:]] == ["face_mask"] * 15


def test_voc_folder_labels_the_face_classes_only(shared: Path, tmp_path: Path) -> None:
    """A facemask-like folder loads as VOC, pairs images by stem, labels only face classes."""
    root = subset(
        shared / "facemask", tmp_path / "fm", [VOC_FILE, VOC_INCORRECT], "annotations", ".xml"
    )
    dataset = load_dataset(root)
    assert dataset.layout == "voc"
    assert dataset.labelled_classes == ("face_mask", "face_no_mask")
    assert [s.image_path.name for s in dataset.samples] == [
        f"{VOC_FILE}.jpg",
        f"{VOC_INCORRECT}.jpg",
    ]
    assert dataset.box_counts() == {"face_mask": 16, "face_no_mask": 3}
    assert dataset.problems == []


def test_yolo_polygon_line_becomes_its_bounding_box(shared: Path) -> None:
    """headcover 000041 line 2 (class 3 = wear, six points) -> person_uniform, min/max box."""
    labels = read_yolo(shared / "headcover" / "labels" / f"{YOLO_POLYGON}.txt", HEADCOVER_NAMES)
    assert labels.polygons >= 1
    box = labels.boxes[1]
    assert box.label == "person_uniform"
    # Points (x, y) from the file: .4888,.3173 .4176,.4051 .3940,.4831 .4554,.5806 .5961,.3954
    assert list(box.box) == approx_box(
        (0.393964146, 0.3173460720720721, 0.596126622, 0.5805663633633633)
    )


def test_headcover_folder_maps_ids_and_keeps_empty_files_as_background(
    shared: Path, tmp_path: Path
) -> None:
    """headcover ids map to head/person classes; an empty label file is a background sample."""
    root = subset(
        shared / "headcover",
        tmp_path / "hc",
        [YOLO_PLAIN, YOLO_POLYGON, YOLO_EMPTY],
        "labels",
        ".txt",
    )
    dataset = load_dataset(root)
    assert dataset.layout == "yolo"
    assert dataset.names == HEADCOVER_NAMES
    assert dataset.labelled_classes == (
        "head_covered",
        "head_bare",
        "person_uniform",
        "person_no_uniform",
    )
    by_name = {s.image_path.stem: s for s in dataset.samples}
    assert by_name[YOLO_EMPTY].boxes == []
    assert by_name[YOLO_POLYGON].boxes[0].label == "head_covered"  # line 1: class 0 helmet
    assert dataset.polygons >= 1
    assert dataset.problems == []


def test_prepare_data_writes_the_same_boxes_in_yolo_form(shared: Path, tmp_path: Path) -> None:
    """scripts/train/prepare_data.py reads through agent.datasets: the VOC boxes come out as
    ``class cx cy w h`` of the hand-checked numbers, the polygon as its bounding box."""
    src = tmp_path / "shared"
    subset(shared / "facemask", src / "facemask", [VOC_FILE], "annotations", ".xml")
    subset(shared / "headcover", src / "headcover", [YOLO_POLYGON, YOLO_EMPTY], "labels", ".txt")
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train" / "prepare_data.py"),
            "--shared",
            str(src),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": ""},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "headcover: 2 images" in result.stdout
    assert "1 background" in result.stdout
    labels = {p.stem: p.read_text() for p in out.glob("labels/*/*.txt")}
    first = labels[f"fm_{VOC_FILE}"].splitlines()[0].split()
    x0, y0, x1, y1 = 79 / 512, 105 / 366, 109 / 512, 142 / 366
    assert first[0] == "1"  # face_no_mask
    assert [float(v) for v in first[1:]] == [
        pytest.approx(v, abs=1e-6) for v in ((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0)
    ]
    assert labels[f"hc_{YOLO_EMPTY}"] == ""
    assert "names:" in (out / "dataset.yaml").read_text()


# --------------------------------------------------------------------------- hand-made folders


def test_hand_made_polygon_and_plain_box(tmp_path: Path) -> None:
    """A polygon line gives the bounding box of its points; a plain line gives centre +- half."""
    txt = tmp_path / "a.txt"
    txt.write_text("1 0.2 0.3 0.6 0.1 0.5 0.7 0.3 0.5\n0 0.5 0.5 0.2 0.4\n")
    labels = read_yolo(txt, HEADCOVER_NAMES)
    assert labels.polygons == 1
    assert labels.boxes == [
        LabelledBox("head_bare", (0.2, 0.1, 0.6, 0.7)),
        LabelledBox("head_covered", (0.4, 0.3, 0.6, 0.7)),
    ]


def test_boxes_are_clipped_to_the_image(tmp_path: Path) -> None:
    """Coordinates outside 0..1 are clipped, so a box never leaves the image."""
    txt = tmp_path / "a.txt"
    txt.write_text("0 0.95 0.05 0.2 0.2\n")
    (box,) = read_yolo(txt, HEADCOVER_NAMES).boxes
    assert list(box.box) == approx_box((0.85, 0.0, 1.0, 0.15))


def test_malformed_lines_are_reported_with_file_and_line(tmp_path: Path) -> None:
    """Bad lines are skipped and listed as file:line; the good lines of the file still count."""
    root = yolo_folder(
        tmp_path / "ds",
        {
            "a": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5\nx 0.1 0.1 0.1 0.1\n\n1 0.5 0.5 0 0.3\n",
            "b": "3 0.5 0.5 0.4 0.8\n",
        },
    )
    dataset = load_dataset(root)
    assert [str(p) for p in dataset.problems] == [
        "a.txt:2: 2 coordinates",
        "a.txt:3: not numeric",
        "a.txt:5: degenerate box",
    ]
    assert dataset.problem_counts() == {"malformed": 2, "degenerate": 1}
    assert dataset.box_counts() == {"head_covered": 1, "person_uniform": 1}


def test_a_broken_voc_file_is_left_out_and_reported(tmp_path: Path) -> None:
    """An unparseable xml drops its image (reported with file:line); the others still load."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    write_image(root / "images" / "good.jpg")
    write_image(root / "images" / "bad.jpg")
    (root / "annotations" / "good.xml").write_text(voc_xml([("with_mask", 8, 8, 40, 30)], (64, 48)))
    (root / "annotations" / "bad.xml").write_text("<annotation>\n<size>\n</annotation>\n")
    dataset = load_dataset(root)
    assert [s.image_path.name for s in dataset.samples] == ["good.jpg"]
    assert len(dataset.problems) == 1
    assert str(dataset.problems[0]).startswith("bad.xml:3: invalid XML")


def test_voc_without_size_takes_the_size_of_the_image(tmp_path: Path) -> None:
    """A VOC file lacking <size> is normalised by the real image size when the image is read."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    write_image(root / "images" / "a.png", width=64, height=48)
    (root / "annotations" / "a.xml").write_text(voc_xml([("without_mask", 16, 12, 32, 24)], None))
    assert not read_voc(root / "annotations" / "a.xml").usable
    (sample,) = load_dataset(root).samples
    assert sample.boxes == [LabelledBox("face_no_mask", (0.25, 0.25, 0.5, 0.5))]


def test_nothing_readable_is_an_error(tmp_path: Path) -> None:
    """A folder whose every label file is unusable raises DatasetError, not an empty dataset."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    write_image(root / "images" / "a.jpg")
    (root / "annotations" / "a.xml").write_text("not xml")
    with pytest.raises(DatasetError, match=r"no usable labelled image.*a\.xml:1"):
        load_dataset(root)


def test_unknown_voc_class_names_the_file_and_class(tmp_path: Path) -> None:
    """An unknown VOC class stops loading, naming file and class; ignore_unknown skips it."""
    root = tmp_path / "voc"
    (root / "annotations").mkdir(parents=True)
    write_image(root / "images" / "a.jpg")
    (root / "annotations" / "a.xml").write_text(
        voc_xml([("with_mask", 8, 8, 40, 30), ("cat", 1, 1, 20, 20)], (64, 48))
    )
    with pytest.raises(DatasetError, match=r"a\.xml: unknown class 'cat'"):
        load_dataset(root)
    dataset = load_dataset(root, ignore_unknown=True)
    assert dataset.box_counts() == {"face_mask": 1}
    assert dataset.problem_counts() == {"unknown_class": 1}


def test_yolo_names_file_overrides_the_headcover_names(tmp_path: Path) -> None:
    """classes.txt names the ids: agent labels map to themselves, headcover names as usual,
    and labelled_classes are exactly what those names produce."""
    root = yolo_folder(
        tmp_path / "ds",
        {"a": "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n2 0.7 0.7 0.1 0.1\n"},
        names=["face_mask", "no_helmet", "head_bare"],
    )
    dataset = load_dataset(root)
    assert dataset.names == ("face_mask", "no_helmet", "head_bare")
    assert [b.label for b in dataset.samples[0].boxes] == ["face_mask", "head_bare", "head_bare"]
    assert dataset.labelled_classes == ("face_mask", "head_bare")


def test_data_yaml_names_and_unnamed_ids(tmp_path: Path) -> None:
    """data.yaml ``names:`` as a mapping is read; an id past the names is an unknown class."""
    root = yolo_folder(tmp_path / "ds", {"a": "1 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n"})
    (root / "data.yaml").write_text("nc: 2\nnames:\n  0: face_no_mask\n  1: wear\n")
    with pytest.raises(DatasetError, match=r"a\.txt:2: class id 5 is not named"):
        load_dataset(root)
    dataset = load_dataset(root, ignore_unknown=True)
    assert dataset.labelled_classes == ("face_no_mask", "person_uniform")
    assert dataset.box_counts() == {"person_uniform": 1}


def test_missing_label_file_is_background_and_reported(tmp_path: Path) -> None:
    """A YOLO image without a label file is a background sample, and the gap is reported."""
    root = yolo_folder(tmp_path / "ds", {"a": "0 0.5 0.5 0.2 0.2\n"})
    write_image(root / "images" / "b.jpg")
    dataset = load_dataset(root)
    assert [len(s.boxes) for s in dataset.samples] == [1, 0]
    assert dataset.problem_counts() == {"missing": 1}


def test_limit_keeps_the_first_samples_by_name(tmp_path: Path) -> None:
    """limit=N keeps the first N samples in file-name order."""
    root = yolo_folder(tmp_path / "ds", dict.fromkeys(("c", "a", "b"), ""))
    assert [s.image_path.stem for s in load_dataset(root, limit=2).samples] == ["a", "b"]


def test_split_subfolders(tmp_path: Path) -> None:
    """Images in images/<split>/ need split; with it, labels/<split>/ and the root names apply."""
    root = tmp_path / "ds"
    for split in ("train", "val"):
        write_image(root / "images" / split / f"{split}1.jpg")
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / f"{split}1.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    (root / "dataset.yaml").write_text(
        "names:\n" + "".join(f"  {i}: {n}\n" for i, n in enumerate(AGENT_LABELS))
    )
    with pytest.raises(DatasetError, match=r"subfolders \(train, val\).*--split"):
        load_dataset(root)
    dataset = load_dataset(root, split="val")
    assert [s.image_path.name for s in dataset.samples] == ["val1.jpg"]
    assert dataset.samples[0].boxes[0].label == "head_bare"
    assert dataset.labelled_classes == AGENT_LABELS


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: None, "dataset folder not found"),
        (
            lambda root: (root / "images").mkdir(parents=True),
            "expected images/ next to annotations/",
        ),
        (
            lambda root: [(root / d).mkdir(parents=True) for d in ("annotations", "labels")],
            "both annotations/",
        ),
        (lambda root: (root / "labels").mkdir(parents=True), "images: image folder not found"),
        (
            lambda root: [(root / d).mkdir(parents=True) for d in ("images", "labels")],
            "images: no images",
        ),
    ],
    ids=["missing", "no-labels", "both", "no-images-dir", "empty-images"],
)
def test_layout_errors_name_the_folder_and_what_was_expected(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    """A folder that is neither layout (or lacks images) raises DatasetError saying why."""
    root = tmp_path / "ds"
    make(root)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(root)
    assert str(root) in str(info.value)


def test_agent_label_mapping() -> None:
    """Source names map as documented; agent labels map to themselves; others to None."""
    assert agent_label("with_mask") == "face_mask"
    assert agent_label("without_mask") == "face_no_mask"
    assert agent_label("mask_weared_incorrect") == "face_no_mask"
    assert [agent_label(n) for n in HEADCOVER_NAMES] == [
        "head_covered",
        "head_bare",
        "person_no_uniform",
        "person_uniform",
    ]
    assert all(agent_label(n) == n for n in AGENT_LABELS)
    assert agent_label("person") is None
