#!/usr/bin/env python3
"""Train the agent's default detector (YOLO11n from scratch) on ``data/mclz-v1``; resumable.

Re-running the same command continues the run: when ``runs/<name>/weights/last.pt`` exists it
is resumed (ultralytics restores the epoch, optimizer, EMA and LR schedule from it, and keeps
the checkpoint's ``--epochs``), unless ``--fresh`` is given. Nothing is downloaded: the model is
built from its yaml, plots are off, the AMP check is skipped, ``YOLO_OFFLINE=1``.

Run it from ``.venv-train`` (see ``scripts/train-env``), niced, in the background::

    nohup nice -n 19 .venv-train/bin/python scripts/train/train.py --name mclz-v1-n416 \\
        > runs/train-mclz-v1-n416.log 2>&1 &

Same recipe on a GPU (minutes instead of hours)::

    .venv-train/bin/python scripts/train/train.py --name mclz-v1-n416-gpu --device 0 --batch 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Set before ultralytics is imported: no network, settings inside the repository (gitignored).
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".yolo" / "matplotlib"))  # not ~/.config

DEFAULT_DATA = REPO / "data" / "mclz-v1" / "dataset.yaml"
# Committed copies of a run's resumable state, so a later session (with a fresh work tree)
# can continue it: last.pt, results.csv, args.yaml.
CHECKPOINTS = REPO / "models" / "checkpoints"
CARRIED = ("weights/last.pt", "results.csv", "args.yaml")

# Augmentation, chosen for this data (see MODEL_CARD.md): small faces (median 6 % of the image
# width) and rare bare heads. Mosaic shows many small objects per image and mixes both sources;
# the +-50 % scale jitter covers the range of face and head sizes; mosaic is closed for the last
# 10 epochs so the model ends on whole, undistorted images. No vertical flip (cameras are
# upright), no rotation/shear (boxes of rotated objects get loose), no mixup (nano model).
AUGMENT: dict[str, Any] = {
    "mosaic": 1.0,
    "close_mosaic": 10,
    "scale": 0.5,
    "translate": 0.1,
    "fliplr": 0.5,
    "flipud": 0.0,
    "degrees": 0.0,
    "shear": 0.0,
    "perspective": 0.0,
    "mixup": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset.yaml")
    ap.add_argument(
        "--model",
        default="yolo11n.yaml",
        help="model yaml (built from scratch), or a .pt checkpoint to fine-tune from"
        " (e.g. ../shared/weights/yolo11n-coco/yolo11n_coco_rebuilt.pt)",
    )
    ap.add_argument(
        "--partial-labels",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="teach each source only the classes it labels (scripts/train/partial_labels.py)",
    )
    ap.add_argument("--imgsz", type=int, default=416, help="square train/val input size")
    ap.add_argument("--epochs", type=int, default=100, help="total epochs of the plan")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument(
        "--close-mosaic",
        type=int,
        default=AUGMENT["close_mosaic"],
        help="train the last N epochs on whole pictures (no mosaic)",
    )
    ap.add_argument("--device", default="cpu", help="'cpu', or a CUDA index such as '0'")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    ap.add_argument("--workers", type=int, help="dataloader workers (default 0 cpu, 8 gpu)")
    ap.add_argument("--project", type=Path, default=REPO / "runs")
    ap.add_argument("--name", default="mclz-v1-n416")
    ap.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from runs/<name>/weights/last.pt when it exists (default)",
    )
    ap.add_argument("--fresh", action="store_true", help="start over; moves an old run aside")
    ap.add_argument(
        "--time",
        type=float,
        help="hours cap; NOTE ultralytics then re-fits --epochs (and the LR schedule) to the time",
    )
    ap.add_argument("--fraction", type=float, default=1.0, help="train on this share (timing)")
    ap.add_argument("--cache", default="ram", choices=["ram", "disk", "none"])
    ap.add_argument("--patience", type=int, default=100, help="early stop after N flat epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--save-checkpoint",
        action="store_true",
        help="copy the run's last.pt, results.csv and args.yaml to models/checkpoints/<name>/"
        " (to commit) and exit",
    )
    return ap.parse_args(argv)


def save_checkpoint(run_dir: Path) -> Path:
    """Copy what resuming needs into models/checkpoints/<run>/ so it can be committed."""
    target = CHECKPOINTS / run_dir.name
    for item in CARRIED:
        src = run_dir / item
        if not src.is_file():
            raise SystemExit(f"train: {src} not found: nothing to save")
        dst = target / Path(item).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    print(f"train: saved {run_dir} state to {target}")
    return target


def restore_checkpoint(run_dir: Path) -> bool:
    """Put a committed checkpoint back into runs/<name>/ when the run directory lacks one."""
    source = CHECKPOINTS / run_dir.name
    if (run_dir / "weights" / "last.pt").exists() or not (source / "last.pt").is_file():
        return False
    for item in CARRIED:
        src = source / Path(item).name
        if src.is_file():
            dst = run_dir / item
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    print(f"train: restored {run_dir} from the committed checkpoint in {source}")
    return True


def _checkpoint_state(path: Path) -> str:
    """Return ``"ok"``, ``"finished"`` or ``"broken"`` for a ``last.pt``."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - heavy, only where needed

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means a torn or foreign file
        print(f"train: cannot load {path}: {exc}")
        return "broken"
    if not isinstance(ckpt, dict) or ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        return "finished"
    return "ok"


def pick_resume_checkpoint(weights: Path) -> Path | None:
    """Return the checkpoint to resume from, keeping a backup of the last good one.

    A kill while ``last.pt`` is written can leave a torn file; ``last.good.pt`` (copied
    here at every start) is the fallback. Exits when the run is already finished.
    """
    last, good = weights / "last.pt", weights / "last.good.pt"
    for candidate in (last, good):
        if not candidate.exists():
            continue
        state = _checkpoint_state(candidate)
        if state == "finished":
            print(f"train: {candidate} is a finished run, nothing to resume (use --fresh)")
            sys.exit(0)
        if state == "ok":
            if candidate == last:
                shutil.copy2(last, good)
            else:
                print(f"train: falling back to {good}")
            return candidate
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    on_cpu = args.device == "cpu"
    if args.save_checkpoint:
        save_checkpoint(args.project / args.name)
        return 0

    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - after the environment is set
    from ultralytics import YOLO, settings  # noqa: PLC0415
    from ultralytics.engine import trainer as yolo_trainer  # noqa: PLC0415
    from ultralytics.utils import torch_utils  # noqa: PLC0415

    if args.partial_labels:
        import partial_labels  # noqa: PLC0415 - next to this script; patches ultralytics

        partial_labels.install()
        print("train: partial labels: each source teaches only its own classes")
    settings.update({"sync": False})  # no analytics, even if YOLO_OFFLINE gets unset
    if on_cpu:
        # ultralytics resets torch to min(8, cpus - 1) threads in select_device(): 1 on a
        # 2-core box. 2 threads measured ~1.5x faster (../shared/TRAINING.md).
        torch_utils.NUM_THREADS = args.threads
        torch.set_num_threads(args.threads)
    else:
        # check_amp() downloads yolo11n.pt to compare outputs; AMP is fine on current GPUs.
        yolo_trainer.check_amp = lambda *_a, **_k: True

    run_dir = args.project / args.name
    weights = run_dir / "weights"
    if args.fresh and run_dir.exists():
        aside = run_dir.with_name(f"{args.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"train: moved old run to {aside}")
    if args.resume and not args.fresh:
        restore_checkpoint(run_dir)
    resume_from = pick_resume_checkpoint(weights) if args.resume else None

    train_kwargs: dict[str, Any] = {
        "data": str(args.data.resolve()),
        "imgsz": args.imgsz,
        "epochs": args.epochs,
        "batch": args.batch,
        "device": args.device,
        "workers": args.workers if args.workers is not None else (0 if on_cpu else 8),
        "project": str(args.project.resolve()),
        "name": args.name,
        "exist_ok": True,
        # A .pt model is a starting point: ultralytics 8.4 drops its weights when pretrained=False
        # (the log must say "Transferred 493/499 items" for the COCO checkpoint).
        "pretrained": str(args.model).endswith(".pt"),
        "plots": False,
        "cache": False if args.cache == "none" else args.cache,
        "patience": args.patience,
        "seed": args.seed,
        "deterministic": True,
        "fraction": args.fraction,
        "amp": not on_cpu,
        "val": True,
        "save_period": -1,
        **AUGMENT,
        "close_mosaic": args.close_mosaic,
    }
    if args.time:
        train_kwargs["time"] = args.time

    if resume_from is not None:
        print(f"train: resuming {resume_from} (the checkpoint's epochs and recipe win)")
        model = YOLO(str(resume_from))
        # The checkpoint stores absolute paths; keep writing here even if the repo moved.
        model.train(resume=True, save_dir=str(run_dir.resolve()), **train_kwargs)
    else:
        if not args.resume and weights.exists():
            print(f"train: --no-resume: overwriting {run_dir}")
        print(f"train: new run {run_dir} from {args.model}")
        model = YOLO(args.model)
        model.train(**train_kwargs)
    print(f"train: done; weights in {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
