"""The training path, for real: prepare -> one-epoch train -> export -> the agent loads and infers.

Training needs the ``train`` extra (torch, ultralytics), which never goes on the box, so it
lives in its own venv, ``.venv-train`` (``scripts/train-env``; ``./scripts/test`` creates it).
Set ``MCLZ_SKIP_TRAIN_TESTS=1`` to skip these tests on purpose in a quick local run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from agent.detect.datasets import AGENT_LABELS as agent_labels
from agent.detect.detector import Detector
from agent.detect.model import load_model_package

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TRAIN_PYTHON = REPO / ".venv-train" / "bin" / "python"
AGENT_LABELS = list(agent_labels)


@pytest.fixture(scope="module")
def train_python() -> Path:
    if os.environ.get("MCLZ_SKIP_TRAIN_TESTS") == "1":
        pytest.skip("MCLZ_SKIP_TRAIN_TESTS=1")
    if not SHARED.is_dir():
        pytest.skip(f"../shared is absent: {SHARED} not found")
    if not TRAIN_PYTHON.exists():
        pytest.fail(f"{TRAIN_PYTHON} missing: run scripts/train-env (./scripts/test does)")
    return TRAIN_PYTHON


def mini_shared(root: Path, per_source: int = 6) -> Path:
    """A copy of ../shared/datasets with a handful of real files of each source (symlinks)."""
    for source, labels, suffix in (
        ("facemask", "annotations", ".xml"),
        ("headcover", "labels", ".txt"),
    ):
        for sub in ("images", labels):
            (root / source / sub).mkdir(parents=True)
        for label in sorted((SHARED / source / labels).glob(f"*{suffix}"))[:per_source]:
            image = SHARED / source / "images" / f"{label.stem}.jpg"
            if image.exists():
                (root / source / labels / label.name).symlink_to(label)
                (root / source / "images" / image.name).symlink_to(image)
    return root


def run(cmd: list[str], timeout: float = 600) -> str:
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(REPO / ".yolo")}
    result = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert result.returncode == 0, (
        f"{cmd[1]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout + result.stderr


def test_one_epoch_smoke_run_gives_a_loadable_model(train_python: Path, tmp_path: Path) -> None:
    """A one-epoch run on a few real images exports a package the agent verifies and runs."""
    shared = mini_shared(tmp_path / "shared")
    data = tmp_path / "data"
    out = run(
        [str(train_python), "scripts/train/prepare_data.py", "--shared", str(shared), "--out", str(data)]
    )
    assert "face_mask" in out
    dataset = yaml.safe_load((data / "dataset.yaml").read_text())
    assert list(dataset["names"].values()) == AGENT_LABELS

    run(
        [
            str(train_python),
            "scripts/train/train.py",
            "--data", str(data / "dataset.yaml"),
            "--imgsz", "64",
            "--epochs", "1",
            "--batch", "4",
            "--cache", "none",
            "--project", str(tmp_path / "runs"),
            "--name", "smoke",
        ]
    )  # fmt: skip
    weights = tmp_path / "runs" / "smoke" / "weights" / "last.pt"
    assert weights.is_file()

    package_dir = tmp_path / "pkg"
    run(
        [
            str(train_python),
            "scripts/train/export_model.py",
            str(weights),
            "--out",
            str(package_dir),
            "--no-val",
            "--no-verify",
        ]
    )
    package = load_model_package(package_dir)
    assert list(package.labels) == AGENT_LABELS
    assert (package.input_width, package.input_height) == (64, 64)
    assert package.violations["head_bare"] == "no_hat"
    assert package.violations["face_no_mask"] == "no_mask"

    image = cv2.imread(str(next((SHARED / "facemask" / "images").glob("*.jpg"))))
    assert image is not None
    detector = Detector(package, conf_threshold=0.001)
    detections = detector.detect(np.ascontiguousarray(image))
    assert all(d.label in AGENT_LABELS for d in detections)
    assert all(0.0 <= v <= 1.0 for d in detections for v in d.box)
