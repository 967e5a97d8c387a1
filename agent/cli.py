"""The ``mclz-agent`` command line: a thin layer over the library.

Library errors become one clear message and an exit code here, and only here:

====  ==========================================================
0     success
1     unexpected internal error (a bug: the traceback is logged)
2     bad usage, invalid configuration or an unusable dataset folder
3     the model package cannot be used
4     the local state (database, evidence directory) cannot be used
5     the uplink cannot be configured (TLS material, secrets)
6     a camera stream cannot be used
====  ==========================================================
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
import yaml

from agent import __version__
from agent.config import check_secrets, load_config, redacted_dict
from agent.errors import (
    AgentError,
    ConfigError,
    DatasetError,
    ModelError,
    OutboxError,
    StreamError,
    UplinkError,
)

DEFAULT_CONFIG = Path(os.environ.get("MCLZ_CONFIG", "/etc/mclz-agent/agent.yaml"))

EXIT_CODES: tuple[tuple[type[AgentError], int], ...] = (
    (ConfigError, 2),  # SecretError is a ConfigError
    (DatasetError, 2),
    (ModelError, 3),
    (OutboxError, 4),
    (UplinkError, 5),
    (StreamError, 6),
)

app = typer.Typer(
    name="mclz-agent",
    help="Edge agent for school-canteen kitchen cameras (互联网+明厨亮灶).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check and show the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
model_app = typer.Typer(help="Evaluate the detection model.", no_args_is_help=True)
app.add_typer(model_app, name="model")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $MCLZ_CONFIG or /etc/mclz-agent/agent.yaml).",
        show_default=False,
    ),
]


def fail(exc: AgentError) -> NoReturn:
    """Print ``exc`` (every listed problem) to stderr and exit with its code."""
    code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        typer.echo(f"error: {exc}", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
    else:
        typer.echo(f"error: {exc.problems[0] if isinstance(exc, ConfigError) else exc}", err=True)
    raise typer.Exit(code)


@app.command()
def run(
    config: ConfigOption = DEFAULT_CONFIG,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop after this many seconds (default: run until SIGTERM).", min=1),
    ] = None,
) -> None:
    """Run the agent: read the cameras, detect, alert, publish.

    Example: mclz-agent run --config /etc/mclz-agent/agent.yaml
    """
    from agent.service import run_agent, setup_logging  # noqa: PLC0415 - keeps --help fast

    try:
        cfg = load_config(config)
        problems = check_secrets(cfg)
        if problems:  # fail at start, not later in a camera thread's retry loop
            raise ConfigError(f"{config}: {len(problems)} secret(s) cannot be read", problems)
        setup_logging(cfg.logging)
        run_agent(cfg, duration)
    except AgentError as exc:
        fail(exc)


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The config file to check.")],
    secrets: Annotated[
        bool, typer.Option(help="Also check that every secret can be read here.")
    ] = True,
) -> None:
    """Validate a config file; list every problem and exit non-zero if there is any.

    Example: mclz-agent config check /etc/mclz-agent/agent.yaml
    """
    try:
        cfg = load_config(file)
    except ConfigError as exc:
        fail(exc)
    problems = check_secrets(cfg) if secrets else []
    if problems:
        fail(ConfigError(f"{file}: {len(problems)} secret(s) cannot be read", problems))
    typer.echo(f"{file}: OK ({len(cfg.cameras)} camera(s), topic root {cfg.topic_root})")


@config_app.command("show")
def config_show(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the effective config (defaults filled in, secrets shown only by source).

    Example: mclz-agent config show --config configs/example.yaml
    """
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(exc)
    data = redacted_dict(cfg)
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        typer.echo(yaml.safe_dump(data, allow_unicode=True, sort_keys=False).rstrip())


def _eval_model_path(model: Path | None, config: Path | None) -> tuple[Path, str, float]:
    """The model package, backend and NMS IoU to evaluate: from --model, --config or defaults."""
    from agent.config import ModelConfig  # noqa: PLC0415

    settings = load_config(config).model if config is not None else ModelConfig()
    return model or settings.path, settings.backend, settings.iou_threshold


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
) -> None:
    """Score the model on a labelled dataset: precision, recall and AP50 per class and type.

    Every image goes through the agent's own detector (onnxruntime or OpenVINO).
    Precision and recall are at each class's threshold from the model's manifest.
    Only the classes the dataset labels are scored (a face dataset says nothing of heads).
    Exit code 0 whatever the scores, 2 for an unusable dataset folder, 3 for a bad model.

    Example: mclz-agent model eval --data ../shared/datasets/facemask --limit 50
    """
    from agent.datasets import load_dataset  # noqa: PLC0415 - keeps --help fast
    from agent.detect import Detector, load_model_package  # noqa: PLC0415
    from agent.evaluate import DEFAULT_THRESHOLD, evaluate, render_report  # noqa: PLC0415

    def progress(done: int, total: int) -> None:
        typer.echo(f"\r{done}/{total} images", nl=done == total, err=True)

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
        )
        report = evaluate(
            detector,
            dataset,
            thresholds={} if conf is not None else package.thresholds,
            violations=package.violations,
            iou=iou,
            default_threshold=DEFAULT_THRESHOLD if conf is None else conf,
            progress=progress if sys.stderr.isatty() else None,
        )
    except AgentError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        typer.echo(render_report(report))


@app.command()
def version() -> None:
    """Print the agent's version and those of its key libraries.

    Example: mclz-agent version
    """
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415
    from importlib.metadata import version as dist_version  # noqa: PLC0415

    typer.echo(f"mclz-agent {__version__}")
    for dist in ("av", "onnxruntime", "paho-mqtt", "numpy", "opencv-python-headless", "pydantic"):
        try:
            typer.echo(f"  {dist} {dist_version(dist)}")
        except PackageNotFoundError:
            typer.echo(f"  {dist} (not installed)")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception:  # the edge of the program: a bug, not bad input
        logging.getLogger("agent").exception("internal error")
        sys.exit(1)
