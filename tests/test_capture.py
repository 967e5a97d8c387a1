"""Frames kept for labelling: what ``Capture.offer`` keeps, the files it writes, the export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import CaptureConfig, IdentityConfig, load_config
from agent.detect.datasets import AGENT_LABELS, load_dataset
from agent.detect.sampling import (
    Capture,
    capture_directory,
    export,
    parse_since,
    stamp_of,
    stored_frames,
    wall_of,
)
from agent.errors import DatasetError
from agent.records import Detection

LABELS = AGENT_LABELS  # face_mask, face_no_mask, head_covered, head_bare, ...
THRESHOLDS = {"head_bare": 0.5, "face_no_mask": 0.6}
WALL = 1_764_115_502.0  # 2025-11-26T00:05:02Z
IDENTITY = IdentityConfig(city="hz", school_id="s1", box_id="b1", school_name="某某小学")
runner = CliRunner()


def frame(seed: int = 0, width: int = 640, height: int = 360) -> np.ndarray:
    """A picture with structure (gradient, shapes) and some noise, like a decoded frame."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)
    image = np.repeat(np.tile(x, (height, 1))[:, :, None], 3, axis=2)
    image += rng.normal(0, 12, image.shape).astype(np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    cv2.rectangle(out, (100, 80), (220, 300), (30, 60, 200), -1)
    cv2.circle(out, (450, 150), 50, (240, 240, 240), -1)
    return out


def det(label: str, confidence: float, box: tuple[float, float, float, float]) -> Detection:
    return Detection(label, LABELS.index(label), confidence, box)


def make(tmp_path: Path, rng_seed: int = 1, **settings: object) -> Capture:
    config = CaptureConfig.model_validate({"enabled": True, "random_rate": 0.0, **settings})
    return Capture(config, LABELS, THRESHOLDS, tmp_path / "capture", rng=random.Random(rng_seed))


def test_uncertain_detection_is_kept_with_a_correct_yolo_label(tmp_path: Path) -> None:
    """A detection just below its threshold keeps the frame: JPEG plus 'class cx cy w h'."""
    capture = make(tmp_path)
    picture = frame()
    detections = [
        det("head_bare", 0.42, (0.2, 0.3, 0.4, 0.7)),  # 0.5 - 0.08: uncertain
        det("face_mask", 0.95, (0.5, 0.1, 0.6, 0.25)),  # confident: labelled too
    ]
    assert capture.offer("kitchen-1", picture, detections, WALL)
    image = tmp_path / "capture" / "kitchen-1" / f"{stamp_of(WALL)}.jpg"
    label = image.with_suffix(".txt")
    assert label.read_text().splitlines() == [
        "3 0.300000 0.500000 0.200000 0.400000",
        "0 0.550000 0.175000 0.100000 0.150000",
    ]
    decoded = cv2.imread(str(image))
    assert decoded is not None
    assert decoded.shape == picture.shape
    assert (tmp_path / "capture" / "classes.txt").read_text().split() == list(LABELS)
    stats = capture.stats()
    assert (stats["kept"], stats["kept_uncertain"], stats["frames"]) == (1, 1, 1)
    assert stats["bytes"] == image.stat().st_size + label.stat().st_size


def test_uncertainty_band_reaches_above_and_below_the_labels_threshold(tmp_path: Path) -> None:
    """Within the band on either side of the label's own threshold: kept; outside: declined."""
    capture = make(tmp_path, min_interval=0)
    offers = {
        0.34: False,  # head_bare threshold 0.5, band 0.15: 0.35 .. 0.65
        0.36: True,
        0.64: True,
        0.66: False,
    }
    for i, (confidence, expected) in enumerate(offers.items()):
        kept = capture.offer("k1", frame(), [det("head_bare", confidence, (0, 0, 1, 1))], WALL + i)
        assert kept is expected, confidence
    # face_no_mask has its own threshold (0.6): 0.72 is uncertain for it, not for head_bare
    assert capture.offer("k1", frame(), [det("face_no_mask", 0.72, (0, 0, 1, 1))], WALL + 10)
    assert not capture.offer("k1", frame(), [det("head_bare", 0.72, (0, 0, 1, 1))], WALL + 11)


def test_confident_frames_are_kept_at_the_random_rate(tmp_path: Path) -> None:
    """Frames with only confident (or no) detections are kept at random_rate: never at 0,
    always at 1, and about a tenth at 0.1 (seeded)."""
    confident = [det("head_covered", 0.97, (0.1, 0.1, 0.3, 0.3))]
    never = make(tmp_path / "a", random_rate=0.0, min_interval=0)
    assert not any(never.offer("k1", frame(), confident, WALL + i) for i in range(50))
    assert not (tmp_path / "a" / "capture" / "k1").exists()
    always = make(tmp_path / "b", random_rate=1.0, min_interval=0)
    assert all(always.offer("k1", frame(), [], WALL + i) for i in range(5))
    assert always.stats()["kept_random"] == 5
    empty_labels = list((tmp_path / "b" / "capture" / "k1").glob("*.txt"))
    assert len(empty_labels) == 5
    assert all(p.read_text() == "" for p in empty_labels)
    tenth = make(tmp_path / "c", rng_seed=7, random_rate=0.1, min_interval=0)
    small = frame(width=64, height=36)
    kept = sum(tenth.offer("k1", small, confident, WALL + i) for i in range(150))
    assert 5 <= kept <= 30  # binomial(150, 0.1): mean 15


def test_min_interval_is_kept_per_camera(tmp_path: Path) -> None:
    """After a kept frame, the same camera keeps nothing for min_interval; others are free."""
    capture = make(tmp_path, min_interval="30s")
    uncertain = [det("head_bare", 0.5, (0.1, 0.1, 0.2, 0.2))]
    assert capture.offer("k1", frame(), uncertain, WALL)
    assert not capture.offer("k1", frame(), uncertain, WALL + 10)
    assert not capture.offer("k1", frame(), uncertain, WALL + 29.9)
    assert capture.offer("k2", frame(), uncertain, WALL + 10)
    assert capture.offer("k1", frame(), uncertain, WALL + 30)
    assert len(stored_frames(tmp_path / "capture")) == 3


def test_max_mb_evicts_the_oldest_frames_first(tmp_path: Path) -> None:
    """Over max_mb, the oldest frames (image and label) are deleted, across cameras; a
    restart with a lower cap evicts at once."""
    capture = make(tmp_path, max_mb=1, min_interval=0, random_rate=1.0)
    for i in range(8):
        big = frame(seed=i, width=1280, height=720)  # noisy: about 0.3 MB as JPEG
        assert capture.offer(f"k{i % 2}", big, [], WALL + i)
    frames = stored_frames(tmp_path / "capture")
    total = sum(f.size for f in frames)
    assert total <= 1_000_000
    assert 1 < len(frames) < 8
    assert [f.wall for f in frames] == [WALL + i for i in range(8 - len(frames), 8)]
    assert capture.stats()["evicted"] == 8 - len(frames)
    leftovers = {p.stem for p in (tmp_path / "capture").glob("*/*")}
    assert len(leftovers) == len(frames)  # no label left behind without its image
    again = make(tmp_path, max_mb=1, min_interval=0)
    assert again.stats()["frames"] == len(frames)
    smaller = Capture(
        CaptureConfig(enabled=True, max_mb=1), LABELS, THRESHOLDS, tmp_path / "capture"
    )
    assert smaller.stats()["bytes"] <= 1_000_000


def test_disabled_capture_touches_nothing(tmp_path: Path) -> None:
    """Off (the default): offer declines and no directory is created."""
    capture = Capture(CaptureConfig(), LABELS, THRESHOLDS, tmp_path / "capture")
    assert not capture.offer("k1", frame(), [det("head_bare", 0.5, (0, 0, 1, 1))], WALL)
    assert not (tmp_path / "capture").exists()
    assert capture.stats()["enabled"] is False


def test_changed_model_labels_rewrite_the_stored_class_ids(tmp_path: Path) -> None:
    """A new model with other labels: stored label lines are mapped to the new ids by name
    and classes that no longer exist are dropped, so the dataset stays consistent."""
    capture = make(tmp_path)
    capture.offer(
        "k1",
        frame(),
        [det("head_bare", 0.5, (0.1, 0.1, 0.3, 0.3)), det("face_mask", 0.9, (0.5, 0.5, 0.6, 0.6))],
        WALL,
    )
    new_labels = ("head_bare", "person_uniform")
    Capture(CaptureConfig(enabled=True), new_labels, THRESHOLDS, tmp_path / "capture")
    (label,) = (tmp_path / "capture" / "k1").glob("*.txt")
    assert label.read_text().splitlines() == ["0 0.200000 0.200000 0.200000 0.200000"]
    assert (tmp_path / "capture" / "classes.txt").read_text().split() == list(new_labels)


def test_stamps_round_trip_and_since_parses() -> None:
    """File stems give back the frame's time; --since takes ISO-8601 or epoch seconds."""
    assert wall_of(stamp_of(WALL + 0.123)) == pytest.approx(WALL + 0.123)
    assert wall_of(stamp_of(WALL) + "-2") == WALL
    assert wall_of("not-a-stamp") is None
    assert parse_since("2025-11-26T00:05:02Z") == WALL
    assert parse_since("2025-11-26T08:05:02+08:00") == WALL
    assert parse_since(str(WALL)) == WALL
    for bad in ("yesterday", "nan", "2025-13-01"):
        with pytest.raises(ValueError, match="ISO-8601"):
            parse_since(bad)


def fill(tmp_path: Path) -> Path:
    """Three captured frames: k1 at WALL and WALL+100, k2 at WALL+50."""
    capture = make(tmp_path, min_interval=0)
    capture.offer("k1", frame(1), [det("head_bare", 0.45, (0.2, 0.3, 0.4, 0.7))], WALL)
    capture.offer("k2", frame(2), [det("face_no_mask", 0.55, (0.6, 0.2, 0.7, 0.4))], WALL + 50)
    capture.offer(
        "k1",
        frame(3),
        [
            det("head_bare", 0.6, (0.1, 0.1, 0.2, 0.3)),
            det("head_covered", 0.9, (0.5, 0.1, 0.6, 0.3)),
        ],
        WALL + 100,
    )
    return tmp_path / "capture"


def test_export_writes_a_yolo_dataset_that_a_yolo_reader_accepts(tmp_path: Path) -> None:
    """The export has images/ and labels/ paired by name, data.yaml with the model's names in
    class-id order, README and manifest; the agent's YOLO reader loads it with every box."""
    directory = fill(tmp_path)
    out = tmp_path / "dataset"
    result = export(directory, out, identity=IDENTITY)
    assert result.images == 3
    assert result.boxes == {"head_bare": 2, "face_no_mask": 1, "head_covered": 1}
    images = sorted(p.stem for p in (out / "images").iterdir())
    assert images == sorted(p.stem for p in (out / "labels").iterdir())
    assert all(name.startswith(("k1_", "k2_")) for name in images)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == dict(enumerate(LABELS))
    assert data["nc"] == len(LABELS)
    assert (out / data["train"]).is_dir()
    assert (out / data["val"]).is_dir()
    for label in (out / "labels").iterdir():
        for line in label.read_text().splitlines():
            class_id, *coords = line.split()
            assert 0 <= int(class_id) < len(LABELS)
            assert len(coords) == 4
            assert all(0 <= float(c) <= 1 for c in coords)
    dataset = load_dataset(out)
    assert len(dataset.samples) == 3
    assert not dataset.problems
    assert dataset.box_counts() == {"head_bare": 2, "face_no_mask": 1, "head_covered": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["box_id"] == "b1"
    assert manifest["first"] == "2025-11-26T00:05:02+00:00"
    assert manifest["last"] == "2025-11-26T00:06:42+00:00"
    readme = (out / "README.md").read_text()
    assert "hz/s1/b1" in readme
    assert "model's own predictions" in readme
    assert "consent" in readme


def test_export_filters_by_time_and_camera_and_refuses_a_used_folder(tmp_path: Path) -> None:
    """--since and --camera select frames; nothing selected or a non-empty --out is an error."""
    directory = fill(tmp_path)
    assert export(directory, tmp_path / "a", identity=IDENTITY, since=WALL + 50).images == 2
    assert export(directory, tmp_path / "b", identity=IDENTITY, camera="k1").images == 2
    both = export(directory, tmp_path / "c", identity=IDENTITY, since=WALL + 1, camera="k1")
    assert both.images == 1
    assert both.first == WALL + 100
    with pytest.raises(DatasetError, match="no captured frames of camera 'k9'"):
        export(directory, tmp_path / "d", identity=IDENTITY, camera="k9")
    with pytest.raises(DatasetError, match="not an empty folder"):
        export(directory, tmp_path / "a", identity=IDENTITY)
    with pytest.raises(DatasetError, match="no captured frames"):
        export(tmp_path / "nothing", tmp_path / "e", identity=IDENTITY)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "identity: {city: hz, school_id: s1, box_id: b1}\n"
        "storage: {state_dir: state}\n"
        "capture: {enabled: true}\n"
    )
    return path


def test_capture_cli_export_and_stats(tmp_path: Path) -> None:
    """capture export writes the dataset (exit 0); stats counts frames and boxes per class."""
    config_path = write_config(tmp_path)
    directory = capture_directory(load_config(config_path))
    assert directory == tmp_path / "state" / "capture"
    empty = runner.invoke(app, ["capture", "stats", "--config", str(config_path), "--json"])
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.output)["frames"] == 0
    fill(tmp_path / "state")
    stats = runner.invoke(app, ["capture", "stats", "--config", str(config_path), "--json"])
    assert stats.exit_code == 0, stats.output
    summary = json.loads(stats.output)
    assert summary["frames"] == 3
    assert summary["enabled"] is True
    assert summary["cameras"]["k1"]["frames"] == 2
    assert summary["boxes"] == {"head_bare": 2, "face_no_mask": 1, "head_covered": 1}
    text = runner.invoke(app, ["capture", "stats", "--config", str(config_path)])
    assert text.exit_code == 0
    assert "head_bare" in text.output
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["capture", "export", "--config", str(config_path), "--out", str(out), "--camera", "k2"],
    )
    assert result.exit_code == 0, result.output
    assert "1 frame(s) written" in result.output
    assert len(list((out / "images").iterdir())) == 1


def test_capture_cli_errors_have_clear_messages_and_exit_codes(tmp_path: Path) -> None:
    """A bad --since, an unknown camera and a used --out exit 2 with a one-line reason; a
    missing config exits 2 too."""
    config_path = write_config(tmp_path)
    fill(tmp_path / "state")
    base = ["capture", "export", "--config", str(config_path)]
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "o1"), "--since", "last week"])
    assert bad.exit_code == 2
    assert "--since: not a time: 'last week'" in bad.output
    assert not (tmp_path / "o1").exists()
    none = runner.invoke(app, [*base, "--out", str(tmp_path / "o2"), "--camera", "k9"])
    assert none.exit_code == 2
    assert "no captured frames of camera 'k9'" in none.output
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    used = runner.invoke(app, [*base, "--out", str(tmp_path / "used")])
    assert used.exit_code == 2
    assert "not an empty folder" in used.output
    missing = runner.invoke(app, ["capture", "stats", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2
    assert "config file not found" in missing.output
