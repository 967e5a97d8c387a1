"""``mclz-agent capture export`` and ``capture stats``: the frames kept for labelling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.app import DEFAULT_CONFIG, ConfigOption, capture_app, fail
from agent.config import load_config
from agent.errors import AgentError


@capture_app.command("export")
def capture_export(
    out: Annotated[
        Path,
        typer.Option("--out", help="New (or empty) folder for the dataset.", show_default=False),
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    since: Annotated[
        str | None,
        typer.Option(help="Only frames taken at or after this ISO-8601 time (or epoch seconds)."),
    ] = None,
    camera: Annotated[str | None, typer.Option(help="Only frames of this camera id.")] = None,
) -> None:
    """Write the captured frames as a YOLO dataset to review and label.

    The folder gets images/, labels/ (the model's predictions: they need human review),
    data.yaml with the model's class names, README.md and manifest.json (source box, time
    range). Exit code 2 for a bad --since, a non-empty --out or nothing to export.

    Example: mclz-agent capture export --out /tmp/kitchen-frames --since 2026-11-20
    """
    from agent.detect.sampling import capture_directory, export, parse_since  # noqa: PLC0415

    try:
        start = parse_since(since) if since is not None else None
    except ValueError as exc:
        typer.echo(f"error: --since: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        cfg = load_config(config)
        result = export(
            capture_directory(cfg), out, identity=cfg.identity, since=start, camera=camera
        )
    except AgentError as exc:
        fail(exc)
    boxes = ", ".join(f"{name} {count}" for name, count in result.boxes.items()) or "no boxes"
    typer.echo(f"{result.images} frame(s) written to {out} ({boxes})")
    typer.echo("the labels are model predictions: review them before training")


@capture_app.command("stats")
def capture_stats(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Frames kept for labelling: how many per camera, their size, boxes per class, time span.

    Example: mclz-agent capture stats --config /etc/mclz-agent/agent.yaml
    """
    from agent.detect.sampling import capture_directory, summarize  # noqa: PLC0415

    try:
        cfg = load_config(config)
        summary = summarize(capture_directory(cfg))
    except AgentError as exc:
        fail(exc)
    summary["enabled"] = cfg.capture.enabled
    summary["max_bytes"] = int(cfg.capture.max_mb * 1e6)
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    state = "on" if cfg.capture.enabled else "off (capture.enabled: false)"
    typer.echo(f"capture    {state}")
    typer.echo(f"directory  {summary['directory']}")
    typer.echo(
        f"frames     {summary['frames']}, {summary['bytes'] / 1e6:.1f} MB"
        f" of {cfg.capture.max_mb:.0f} MB"
    )
    if summary["frames"]:
        typer.echo(f"taken      {summary['first']} .. {summary['last']} (UTC)")
    for camera_id, row in summary["cameras"].items():
        typer.echo(f"  {camera_id:<16} {row['frames']:>6} frame(s) {row['bytes'] / 1e6:>8.1f} MB")
    for name, count in summary["boxes"].items():
        typer.echo(f"  {name:<16} {count:>6} box(es)")
