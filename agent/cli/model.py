"""``mclz-agent model eval``: the detection model scored on a labelled dataset."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.cli.app import fail, model_app
from agent.config import load_config
from agent.errors import AgentError

if TYPE_CHECKING:
    from agent.detect.views import View


def _eval_model_path(model: Path | None, config: Path | None) -> tuple[Path, str, float]:
    """The model package, backend and NMS IoU to evaluate: from --model, --config or defaults."""
    from agent.config import ModelConfig  # noqa: PLC0415

    settings = load_config(config).model if config is not None else ModelConfig()
    return model or settings.path, settings.backend, settings.iou_threshold


def _parse_tiles(text: str) -> View:
    """``COLSxROWS`` (1-4 each) as a whole-picture view; a usage error names the option."""
    from agent.detect.views import View, parse_tiles  # noqa: PLC0415

    try:
        cols, rows = parse_tiles(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tiles") from None
    return View(cols=cols, rows=rows)


@model_app.command("eval")
def model_eval(  # noqa: PLR0917 - typer passes each option by name
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Labelled folder: images/ with annotations/ (Pascal VOC) or labels/ (YOLO).",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model package directory (default: model.path of --config, else models/default).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Take the model, backend and NMS IoU from this config file."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Inference threads (default: all CPU cores)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N images (by file name).")
    ] = None,
    iou: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="IoU a detection needs to match a box.")
    ] = 0.5,
    split: Annotated[
        str | None,
        typer.Option(help="Subfolder of images/ and labels/ to use, e.g. val.", show_default=False),
    ] = None,
    conf: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=1.0,
            help="One threshold for every class instead of the manifest's thresholds.",
            show_default=False,
        ),
    ] = None,
    ignore_unknown: Annotated[
        bool,
        typer.Option(
            "--ignore-unknown", help="Skip objects of classes the agent has no label for."
        ),
    ] = False,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Also print precision/recall per class at thresholds 0.25-0.90 and the "
            "lowest threshold reaching --precision-target (the JSON always has the sweep).",
        ),
    ] = False,
    precision_target: Annotated[
        float,
        typer.Option(min=0.05, max=1.0, help="Precision the suggested threshold must reach."),
    ] = 0.75,
    tiles: Annotated[
        str,
        typer.Option(
            help="COLSxROWS tiles per image, as a camera's view.tiles (e.g. 2x2: small objects "
            "get twice the pixels, inference costs 4x)."
        ),
    ] = "1x1",
    stage: Annotated[
        str,
        typer.Option(
            help="What to score: 'all' (the detector with the package's further stages, as the "
            "agent runs it) or 'detector' (the detector alone).",
        ),
    ] = "all",
    precision: Annotated[
        str,
        typer.Option(
            help="Detector variant to score: 'auto' (the package's default_variant), 'fp32' "
            "(its main file) or a variant it lists, such as 'int8'.",
        ),
    ] = "auto",
    per_source: Annotated[
        bool,
        typer.Option(
            "--per-source/--all-labels",
            help="In the merged training set (fm_*, hc_* pictures), score each picture only on "
            "the labels its source labels (faces are unlabelled in hard-hat pictures).",
        ),
    ] = True,
) -> None:
    """Score the model on a labelled dataset: precision, recall and AP50 per class and type.

    Every image goes through the agent's own detector (onnxruntime or OpenVINO), with the
    package's further stages (the face-first mask check) unless --stage detector.
    In the merged training set, each picture is scored on the labels its source labels.
    Precision and recall are at each class's threshold from the model's manifest.
    Recall is also given per object size (sqrt(w*h) of the ground-truth box in image
    pixels: <16, 16-32, 32-64, 64-128, >=128 px; --json: size_buckets).
    Only the classes the dataset labels are scored (a face dataset says nothing of heads).
    Exit code 0 whatever the scores, 2 for an unusable dataset folder, 3 for a bad model.

    Example: mclz-agent model eval --data ../shared/datasets/facemask --limit 50
    """
    from agent.detect.datasets import load_dataset  # noqa: PLC0415 - keeps --help fast
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.evaluate import (  # noqa: PLC0415
        DEFAULT_THRESHOLD,
        evaluate,
        render_report,
        render_sweep,
    )
    from agent.detect.model import load_model_package  # noqa: PLC0415

    def progress(done: int, total: int) -> None:
        typer.echo(f"\r{done}/{total} images", nl=done == total, err=True)

    view = _parse_tiles(tiles)
    if stage not in ("all", "detector"):
        typer.echo(f"error: --stage must be 'all' or 'detector', not {stage!r}", err=True)
        raise typer.Exit(2)
    try:
        model_path, backend, nms_iou = _eval_model_path(model, config)
        dataset = load_dataset(data, split=split, limit=limit, ignore_unknown=ignore_unknown)
        package = load_model_package(model_path)
        detector = Detector(
            package,
            backend=backend,
            threads=threads or os.cpu_count() or 1,
            conf_threshold=0.001,  # AP needs the whole curve; thresholds are applied after
            iou_threshold=nms_iou,
            max_detections=300,
            stages=stage != "detector",
            precision=precision,
        )
        report = evaluate(
            detector,
            dataset,
            thresholds={} if conf is not None else package.thresholds,
            violations=package.violations,
            iou=iou,
            default_threshold=DEFAULT_THRESHOLD if conf is None else conf,
            progress=progress if sys.stderr.isatty() else None,
            view=None if view.is_whole else view,
            per_source=per_source,
            stage="+".join(["detector", *sorted(package.stages)]) if stage != "detector" else stage,
        )
    except AgentError as exc:
        fail(exc)
    if as_json:
        result = report.to_dict()
        result["precision_target"] = precision_target
        result["suggested_thresholds"] = {
            c.label: c.suggest_threshold(precision_target) for c in report.classes
        }
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        typer.echo(render_report(report))
        if sweep:
            typer.echo("")
            typer.echo(render_sweep(report, precision_target=precision_target))
