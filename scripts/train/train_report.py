"""Write the training report (markdown) from an ultralytics run's ``results.csv``.

    .venv/bin/python scripts/train/train_report.py runs/mclz-v1-n416 > models/default/TRAINING.md

The report lists every epoch (time, losses, overall val precision/recall/mAP) and the
command that continues or reproduces the run. It reads only the CSV and ``args.yaml``, so it
runs in the agent's venv.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

COLUMNS = (
    ("epoch", "epoch", "{:.0f}"),
    ("time", "s since (re)start", "{:.0f}"),
    ("train/box_loss", "box loss", "{:.3f}"),
    ("train/cls_loss", "cls loss", "{:.3f}"),
    ("train/dfl_loss", "dfl loss", "{:.3f}"),
    ("val/box_loss", "val box", "{:.3f}"),
    ("val/cls_loss", "val cls", "{:.3f}"),
    ("metrics/precision(B)", "P", "{:.3f}"),
    ("metrics/recall(B)", "R", "{:.3f}"),
    ("metrics/mAP50(B)", "mAP50", "{:.3f}"),
    ("metrics/mAP50-95(B)", "mAP50-95", "{:.3f}"),
)


def training_seconds(rows: list[dict[str, float]]) -> float:
    """Total training time: ``time`` counts from each (re)start, so it drops at a resume;
    add up each segment's last value."""
    total, previous = 0.0, 0.0
    for row in rows:
        now = row.get("time", 0.0)
        if now < previous:  # resumed: the previous segment ended at `previous`
            total += previous
        previous = now
    return total + previous


def read_rows(csv_path: Path) -> list[dict[str, float]]:
    """Rows of results.csv with the header's surrounding spaces stripped."""
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return [
            {k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")}
            for row in reader
        ]


def render(run_dir: Path, train_args: str = "") -> str:
    """The markdown report of ``run_dir``; ``train_args`` are the run's further ``train.py``
    options (``--model``, ``--partial-labels``: ultralytics' ``args.yaml`` of a resumed run
    names its own ``last.pt`` as the model and knows nothing of the project's options)."""
    rows = read_rows(run_dir / "results.csv")
    args_path = run_dir / "args.yaml"
    args = yaml.safe_load(args_path.read_text(encoding="utf-8")) if args_path.is_file() else {}
    lines = [
        f"# Training report: `{run_dir.name}`",
        "",
        f"Model `{args.get('model', '?')}` "
        f"{'fine-tuned from pretrained weights' if args.get('pretrained') else 'from scratch'}, "
        f"imgsz {args.get('imgsz', '?')}, "
        f"batch {args.get('batch', '?')}, {args.get('epochs', '?')} epochs planned, "
        f"{len(rows)} done, device `{args.get('device') or 'cpu'}`.",
        "",
        "Continue (re-running the same command resumes from `last.pt`):",
        "",
        "```sh",
        "source scripts/train-env",
        ".venv-train/bin/python scripts/train/prepare_data.py",
        f"nohup nice -n 19 .venv-train/bin/python scripts/train/train.py --name {run_dir.name} "
        f"--epochs {args.get('epochs', 100)}{' ' + train_args if train_args else ''} "
        f">> runs/train-{run_dir.name}.log 2>&1 &",
        f".venv-train/bin/python scripts/train/export_model.py runs/{run_dir.name}/weights/best.pt",
        "```",
        "",
        "| " + " | ".join(title for _key, title, _fmt in COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for key, _title, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        best = max(rows, key=lambda r: r.get("metrics/mAP50(B)", 0.0))
        lines += [
            "",
            f"Best overall val mAP50 so far: {best.get('metrics/mAP50(B)', 0):.3f} at epoch "
            f"{best['epoch']:.0f}; {training_seconds(rows) / 3600:.1f} h of training.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run directory (holds results.csv)")
    parser.add_argument(
        "--train-args",
        default="",
        help="the run's further train.py options, e.g. '--model X.pt --partial-labels'",
    )
    args = parser.parse_args(argv)
    if not (args.run / "results.csv").is_file():
        print(f"train_report: {args.run / 'results.csv'} not found", file=sys.stderr)
        return 2
    sys.stdout.write(render(args.run, args.train_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
