"""The ``mclz-agent`` command line: a thin layer over the library.

Library errors become one clear message and an exit code here, and only here:

====  ==========================================================
0     success
1     unexpected internal error (a bug: the traceback is logged)
2     bad usage, invalid configuration or an unusable dataset folder
3     the model package cannot be used
4     the local state (database, evidence directory) cannot be used
5     the uplink cannot be configured (TLS material, secrets)
6     a camera stream cannot be used, or camera discovery cannot use the network
7     the alarm's sounder failed to play (``alarm test``)
8     one or more checks failed (``check``)
9     the agent's database stayed locked by another process past the wait (try again)
====  ==========================================================
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer
import yaml

from agent import __version__
from agent.config import check_secrets, load_config, redacted_dict
from agent.errors import (
    AgentError,
    ConfigError,
    DatasetError,
    DiscoveryError,
    ModelError,
    SounderError,
    StoreBusyError,
    StoreError,
    StreamError,
    UplinkError,
)

if TYPE_CHECKING:
    import numpy as np

    from agent.config import AgentConfig
    from agent.detect.food import FoodStore, ZoneState
    from agent.detect.views import View
    from agent.store.store import Store, StoreView

DEFAULT_CONFIG = Path(os.environ.get("MCLZ_CONFIG", "/etc/mclz-agent/agent.yaml"))

EXIT_CODES: tuple[tuple[type[AgentError], int], ...] = (
    (ConfigError, 2),  # SecretError is a ConfigError
    (DatasetError, 2),
    (ModelError, 3),
    (StoreBusyError, 9),  # before StoreError: it is one
    (StoreError, 4),
    (UplinkError, 5),
    (StreamError, 6),
    (DiscoveryError, 6),
    (SounderError, 7),
)
CHECK_FAILED = 8  # ``check``: a FAIL line is a verdict, not an error, so no exception maps here

T = TypeVar("T")

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
camera_app = typer.Typer(
    help="Add, remove, probe, snapshot, discover and list cameras.", no_args_is_help=True
)
app.add_typer(camera_app, name="camera")
outbox_app = typer.Typer(help="Inspect the local store-and-forward outbox.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
alerts_app = typer.Typer(
    help="List, show and export the alerts kept locally.", no_args_is_help=True
)
app.add_typer(alerts_app, name="alerts")
capture_app = typer.Typer(
    help="Export and count the frames kept for labelling (capture.enabled).", no_args_is_help=True
)
app.add_typer(capture_app, name="capture")
food_app = typer.Typer(
    help="Calibrate and test food zones: covered, uncovered or empty (防尘防蝇).",
    no_args_is_help=True,
)
app.add_typer(food_app, name="food")
alarm_app = typer.Typer(
    help="Mute, test and review the on-site alarm (beeps and voice prompts).",
    no_args_is_help=True,
)
app.add_typer(alarm_app, name="alarm")

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
    from agent.service.agent import run_agent, setup_logging  # noqa: PLC0415 - keeps --help fast

    try:
        cfg = load_config(config)
        problems = check_secrets(cfg)
        if problems:  # fail at start, not later in a camera thread's retry loop
            raise ConfigError(f"{config}: {len(problems)} secret(s) cannot be read", problems)
        setup_logging(cfg.logging)
        run_agent(cfg, duration, config_path=config)
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
) -> None:
    """Score the model on a labelled dataset: precision, recall and AP50 per class and type.

    Every image goes through the agent's own detector (onnxruntime or OpenVINO).
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
            view=None if view.is_whole else view,
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


@camera_app.command("probe")
def camera_probe(  # noqa: PLR0917 - typer passes each option by name
    url: Annotated[str, typer.Argument(help="rtsp://[user@]host[:port]/path or a video file.")],
    password_env: Annotated[
        str | None,
        typer.Option(help="Environment variable holding the password (keeps it out of ps)."),
    ] = None,
    transport: Annotated[str, typer.Option(help="RTSP transport: tcp or udp.")] = "tcp",
    seconds: Annotated[float, typer.Option(min=1, max=120, help="How long to measure.")] = 5.0,
    timeout: Annotated[float, typer.Option(min=1, max=120, help="Open/read timeout.")] = 10.0,
    snapshot: Annotated[
        Path | None,
        typer.Option(help="Where to write the snapshot PNG (default: a new file in /tmp)."),
    ] = None,
) -> None:
    """Measure a stream: codec, resolution, fps, keyframe interval, time to first frame.

    Writes a snapshot PNG and prints its path, so an installer can check the framing.
    Exit code 6 when the stream cannot be used (the message says why: auth_failed,
    not_found, refused, timeout, ...).

    Example: mclz-agent camera probe rtsp://admin@192.168.1.64/Streaming/Channels/102
    """
    import tempfile  # noqa: PLC0415

    import cv2  # noqa: PLC0415

    from agent.ingest.probe import probe  # noqa: PLC0415
    from agent.redact import register_secret, with_password  # noqa: PLC0415

    if transport not in {"tcp", "udp"}:
        typer.echo(f"error: --transport must be tcp or udp, not {transport!r}", err=True)
        raise typer.Exit(2)
    if password_env is not None:
        secret = os.environ.get(password_env)
        if not secret:
            fail(ConfigError(f"--password-env: environment variable {password_env} is not set"))
        register_secret(secret)
        url = with_password(url, secret)
    try:
        result = probe(url, transport=transport, seconds=seconds, timeout=timeout)
    except StreamError as exc:
        fail(exc)
    if snapshot is None:
        fd, name = tempfile.mkstemp(prefix="mclz-probe-", suffix=".png")
        os.close(fd)
        snapshot = Path(name)
    if not cv2.imwrite(str(snapshot), result.snapshot):
        typer.echo(f"error: cannot write {snapshot}", err=True)
        raise typer.Exit(4)
    gop = f"{result.keyframe_interval_s:.2f} s" if result.keyframe_interval_s else "unknown"
    expected = f"{result.expected_fps:.2f}" if result.expected_fps else "unknown"
    lines = [
        ("stream", result.url),
        ("codec", result.codec),
        ("resolution", f"{result.width}x{result.height}"),
        (
            "fps",
            f"{result.measured_fps:.2f} over {result.seconds:.1f} s (stream says {expected})",
        ),
        ("keyframe interval", gop),
        ("first frame after", f"{result.first_frame_s:.2f} s"),
        ("bitrate", f"{result.bitrate_kbps:.0f} kbit/s"),
        ("snapshot", str(snapshot)),
    ]
    for key, value in lines:
        typer.echo(f"{key:<18} {value}")


@camera_app.command("list")
def camera_list(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the configured cameras with their last known state, read from the agent's database.

    Works whether the agent runs or not; 'updated' says how old the figures are.

    Example: mclz-agent camera list --config /etc/mclz-agent/agent.yaml
    """
    import time  # noqa: PLC0415

    from agent.redact import redact_url  # noqa: PLC0415
    from agent.store.database import db_path  # noqa: PLC0415

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(exc)
    health: dict[str, tuple[float, dict[str, object]]] = {}
    if db_path(cfg.storage.state_dir).exists():
        health = _read_store(config, lambda store: store.camera_health())
    now = time.time()
    rows = []
    for camera_id, camera in cfg.cameras.items():
        updated, snap = health.get(camera_id, (None, {}))
        rows.append(
            {
                "camera": camera_id,
                "name": camera.name,
                "url": redact_url(camera.url),
                "enabled": camera.enabled,
                "state": snap.get("state", "unknown"),
                "fps": snap.get("fps"),
                "quality": snap.get("quality"),
                "updated_s_ago": round(now - updated, 1) if updated is not None else None,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    typer.echo(f"{'camera':<16} {'state':<11} {'fps':>6} {'quality':<10} {'updated':>9}  url")
    for row in rows:
        state = row["state"] if row["enabled"] else "disabled"
        fps = f"{row['fps']:.1f}" if isinstance(row["fps"], float | int) else "-"
        age = f"{row['updated_s_ago']:.0f} s ago" if row["updated_s_ago"] is not None else "never"
        quality = row["quality"] or "-"
        typer.echo(f"{row['camera']:<16} {state:<11} {fps:>6} {quality:<10} {age:>9}  {row['url']}")


def _open_store(config: Path) -> StoreView:
    """A read-only view of the agent's database (it works while the agent runs).

    It never creates, migrates or moves the file and never takes a write lock. Exits with a
    clear message on a bad config, no database yet, or a lock held past the wait (code 9).
    """
    from agent.store.database import db_path  # noqa: PLC0415
    from agent.store.store import StoreView  # noqa: PLC0415

    try:
        cfg = load_config(config)
        return StoreView(db_path(cfg.storage.state_dir))
    except AgentError as exc:
        fail(exc)


def _read_store(config: Path, read: Callable[[StoreView], T]) -> T:
    """``read`` applied to a read-only view of the agent's database, closed afterwards.

    Exits with a clear message when the view cannot be opened or read (see ``_open_store``).
    """
    store = _open_store(config)
    try:
        return read(store)
    except AgentError as exc:
        fail(exc)
    finally:
        store.close()


def _open_writable_store(config: Path) -> Store:
    """The agent's database for a command that writes; exits when there is none yet."""
    from agent.store.database import db_path  # noqa: PLC0415
    from agent.store.store import Store  # noqa: PLC0415

    try:
        cfg = load_config(config)
        path = db_path(cfg.storage.state_dir)
        if not path.exists():
            raise StoreError(f"{path}: no database yet (the agent has not run with this config)")
        return Store(path)
    except AgentError as exc:
        fail(exc)


@outbox_app.command("stats")
def outbox_stats(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Undelivered messages by kind with the oldest one's age, evictions and expiries.

    Example: mclz-agent outbox stats --config /etc/mclz-agent/agent.yaml
    """
    stats = _read_store(config, lambda store: store.stats())
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    typer.echo(f"{'kind':<14} {'messages':>9} {'oldest':>10} {'bytes':>12}")
    for kind, row in stats["backlog"].items():
        typer.echo(
            f"{kind:<14} {row['messages']:>9} {row['oldest_age_s']:>8.0f} s {row['bytes']:>12}"
        )
    if not stats["backlog"]:
        typer.echo("(nothing waiting: everything was delivered)")
    typer.echo(f"database in use: {stats['used_bytes'] / 1e6:.1f} MB")
    for name, value in stats["counters"].items():
        typer.echo(f"{name:<24} {value}")


@outbox_app.command("replay")
def outbox_replay(
    since: Annotated[str, typer.Option(help="ISO-8601 time (or epoch seconds) to start from.")],
    until: Annotated[
        str | None, typer.Option(help="ISO-8601 time (or epoch seconds); default now.")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Queue the alerts raised in a time range again; the running agent sends them.

    Alerts still waiting are not doubled; images are sent again from their files.

    Example: mclz-agent outbox replay --since 2026-11-26T08:00:00+08:00
    """
    import time  # noqa: PLC0415

    from agent.service.agent import parse_time  # noqa: PLC0415
    from agent.uplink.messages import Topics  # noqa: PLC0415

    try:
        start = parse_time(float(since) if since.replace(".", "", 1).isdigit() else since, "since")
        end = (
            time.time()
            if until is None
            else parse_time(float(until) if until.replace(".", "", 1).isdigit() else until, "until")
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # Exits with a clear message on a bad config or no database.
    store = _open_writable_store(config)
    cfg = load_config(config)
    count = store.requeue_alerts(start, end, Topics(cfg).alert)
    store.close()
    typer.echo(f"{count} alert(s) queued again")


@alerts_app.command("list")
def alerts_list(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The alerts raised on this box, newest first, whether delivered or not.

    Example: mclz-agent alerts list --limit 50
    """
    import time  # noqa: PLC0415

    alerts, waiting = _read_store(
        config, lambda store: (store.alerts(limit), {m.id for m in store.due(100000)})
    )
    rows = [
        {
            "id": a.id,
            "raised_at": a.raised_at,
            "camera": a.camera,
            "type": a.type,
            "confidence": round(a.confidence, 3),
            "delivered": a.id not in waiting,
            "evidence": a.evidence_path,
        }
        for a in alerts
    ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for a in alerts:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a.raised_at))
        state = "waiting" if a.id in waiting else "sent"
        typer.echo(f"{when}  {a.id}  {a.camera:<14} {a.type:<10} {a.confidence:.2f}  {state}")


@alerts_app.command("show")
def alerts_show(
    alert_id: Annotated[str, typer.Argument(help="The alert's id.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """One alert as it was sent, with where its evidence JPEG is on this box.

    Example: mclz-agent alerts show 3f2a9c0e1b7d4c55a0e6f1d2c3b4a596
    """
    body = _read_store(config, lambda store: store.alert_payload(alert_id))
    if body is None:
        typer.echo(f"error: no alert {alert_id!r} on this box", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(body, ensure_ascii=False, indent=2))


@alerts_app.command("export")
def alerts_export(
    output: Annotated[Path, typer.Argument(help="JSON Lines file to write.")],
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 100000,
) -> None:
    """Write the stored alerts as JSON Lines (one alert message per line), for an inspector.

    Example: mclz-agent alerts export /tmp/alerts.jsonl
    """
    bodies = _read_store(
        config, lambda store: [store.alert_payload(a.id) for a in store.alerts(limit)]
    )
    try:
        with output.open("w", encoding="utf-8") as fh:
            for body in bodies:
                fh.write(json.dumps(body, ensure_ascii=False) + "\n")
    except OSError as exc:
        typer.echo(f"error: cannot write {output}: {exc.strerror}", err=True)
        raise typer.Exit(4) from None
    typer.echo(f"{len(bodies)} alert(s) written to {output}")


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


def _food_store(cfg: AgentConfig) -> FoodStore:
    """The agent's reference store (the database is created when there is none yet)."""
    from agent.detect.food import FoodStore  # noqa: PLC0415
    from agent.store.database import db_path  # noqa: PLC0415
    from agent.store.store import Store  # noqa: PLC0415

    store = Store(db_path(cfg.storage.state_dir), ttl=cfg.storage.message_ttl)
    return FoodStore(store, cfg.storage.state_dir, keep=cfg.food.references_per_state)


def _grab(cfg: AgentConfig, camera: str, count: int, seconds: float) -> list[np.ndarray]:
    """Frames of ``camera``'s live stream (its detection stream, as the agent sees it).

    Raises:
        ConfigError: no such camera, or its password cannot be read.
        StreamError: the stream cannot be used.
    """
    from agent.ingest.probe import grab_frames  # noqa: PLC0415

    cam = cfg.cameras.get(camera)
    if cam is None:
        raise ConfigError(f"no camera {camera!r} in the config")
    return grab_frames(
        cam.source_url(camera),
        count=count,
        seconds=seconds,
        transport=cam.transport,
        timeout=cam.open_timeout,
    )


StateOption = Annotated[
    str, typer.Option("--state", "-s", help="covered, uncovered or empty.", show_default=False)
]


def _check_state(state: str) -> None:
    from agent.detect.food import STATES  # noqa: PLC0415

    if state not in STATES:
        typer.echo(f"error: --state must be one of {', '.join(STATES)}, not {state!r}", err=True)
        raise typer.Exit(2)


@food_app.command("calibrate")
def food_calibrate(  # noqa: PLR0917 - typer passes each option by name
    camera: Annotated[str, typer.Argument(help="Camera id.")],
    zone: Annotated[str, typer.Argument(help="Food zone id (food: true in the config).")],
    state: StateOption,
    frames: Annotated[int, typer.Option(min=1, max=100, help="Frames to keep.")] = 5,
    seconds: Annotated[
        float, typer.Option(min=0, max=600, help="Spread the frames over this long.")
    ] = 5.0,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Record what a food zone looks like now (covered, uncovered or empty) as references.

    Grabs frames of the camera's live stream, crops the zone and stores each crop with its
    features in the agent's database and under <state_dir>/food/. Record every state, and
    add references at other times of day as the light changes; the running agent picks
    them up. Exit code 2 for an unknown camera or zone, or one without food: true.

    Example: mclz-agent food calibrate kitchen-1 rice-tray --state covered --frames 5
    """
    from agent.detect.food import food_zone, zone_crop  # noqa: PLC0415

    _check_state(state)
    try:
        cfg = load_config(config)
        polygon = food_zone(cfg, camera, zone)
        grabbed = _grab(cfg, camera, frames, seconds)
        store = _food_store(cfg)
        try:
            for frame in grabbed:
                crop, mask = zone_crop(frame, polygon)
                store.add(camera, zone, state, crop, mask)
            counts = dict.fromkeys(("covered", "uncovered", "empty"), 0)
            for ref in store.references(camera, zone):
                counts[ref.state] = counts.get(ref.state, 0) + 1
        finally:
            store.database.close()
    except ValueError as exc:
        fail(ConfigError(f"cameras.{camera}.zones.{zone}: {exc}"))
    except AgentError as exc:
        fail(exc)
    summary = ", ".join(f"{s} {n}" for s, n in counts.items())
    typer.echo(f"{len(grabbed)} reference(s) of {camera}/{zone} stored as {state} ({summary})")
    if sum(1 for n in counts.values() if n) < 2:
        typer.echo("record at least one other state before the zone can be classified")


def _classify_now(
    config: Path, camera: str
) -> tuple[np.ndarray, dict[str, tuple[ZoneState, dict[str, int]]]]:
    """One frame of ``camera`` and each food zone's state and reference counts."""
    from agent.detect.food import build_classifier, food_zones, zone_crop  # noqa: PLC0415

    cfg = load_config(config)
    zones = food_zones(cfg, camera)
    frame = _grab(cfg, camera, 1, 0.0)[0]
    store = _food_store(cfg)
    out: dict[str, tuple[ZoneState, dict[str, int]]] = {}
    try:
        for zone, polygon in zones.items():
            classifier = build_classifier(store, cfg.food, camera, zone, polygon)
            crop, mask = zone_crop(frame, polygon)
            out[zone] = (classifier.classify(crop, mask), classifier.counts)
    finally:
        store.database.close()
    return frame, out


@food_app.command("test")
def food_test(
    camera: Annotated[str, typer.Argument(help="Camera id.")],
    zone: Annotated[str, typer.Argument(help="Food zone id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Classify a food zone on a fresh frame: state, margin (0..1) and distance.

    No person detection runs here: keep people away from the zone while testing.

    Example: mclz-agent food test kitchen-1 rice-tray --json
    """
    from agent.detect.food import food_zone  # noqa: PLC0415

    try:
        food_zone(load_config(config), camera, zone)
        _frame, results = _classify_now(config, camera)
    except ValueError as exc:
        fail(ConfigError(f"cameras.{camera}.zones.{zone}: {exc}"))
    except AgentError as exc:
        fail(exc)
    result, counts = results[zone]
    body = {"camera": camera, "zone": zone, **result.to_dict(), "references": counts}
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    typer.echo(f"{'state':<10} {result.state}")
    typer.echo(f"{'margin':<10} {result.margin:.2f}")
    typer.echo(f"{'distance':<10} {result.distance:.4f}")
    typer.echo(f"{'detail':<10} {result.detail}")
    typer.echo(f"{'references':<10} " + ", ".join(f"{s} {n}" for s, n in counts.items()))


_STATE_COLOURS = {
    "covered": (60, 200, 60),
    "uncovered": (40, 40, 230),
    "empty": (200, 160, 60),
    "unknown": (160, 160, 160),
}


@food_app.command("show")
def food_show(
    camera: Annotated[str, typer.Argument(help="Camera id.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="PNG to write (default: a new file in /tmp).", show_default=False
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Draw the camera's zones and each food zone's classification on a fresh snapshot PNG.

    Example: mclz-agent food show kitchen-1 --out /tmp/food.png
    """
    import tempfile  # noqa: PLC0415

    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    try:
        cfg = load_config(config)
        frame, results = _classify_now(config, camera)
    except ValueError as exc:
        fail(ConfigError(f"cameras.{camera}: {exc}"))
    except AgentError as exc:
        fail(exc)
    height, width = frame.shape[:2]
    canvas = frame.copy()
    for zone_id, zone in cfg.cameras[camera].zones.items():
        pts = np.array([(x * width, y * height) for x, y in zone.polygon], dtype=np.int32)
        found = results.get(zone_id)
        label, colour = zone_id, (200, 200, 200)
        if found is not None:
            state = found[0]
            colour = _STATE_COLOURS[state.state]
            label = f"{zone_id}: {state.state} {state.margin:.2f}"
        cv2.polylines(canvas, [pts], isClosed=True, color=colour, thickness=2)
        x, y = int(pts[:, 0].min()), max(12, int(pts[:, 1].min()) - 4)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3)
        cv2.putText(canvas, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    if out is None:
        fd, name = tempfile.mkstemp(prefix="mclz-food-", suffix=".png")
        os.close(fd)
        out = Path(name)
    if not cv2.imwrite(str(out), canvas):
        typer.echo(f"error: cannot write {out}", err=True)
        raise typer.Exit(4)
    for zone_id, (state, _counts) in results.items():
        typer.echo(f"{zone_id:<16} {state.state:<10} margin {state.margin:.2f}")
    typer.echo(f"snapshot {out}")


@food_app.command("refs")
def food_refs(
    camera: Annotated[str, typer.Argument(help="Camera id.")],
    zone: Annotated[str | None, typer.Argument(help="Only this zone.")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the stored references of a camera's food zones, oldest first.

    Example: mclz-agent food refs kitchen-1 rice-tray
    """
    import time  # noqa: PLC0415

    try:
        cfg = load_config(config)
        store = _food_store(cfg)
        refs = store.references(camera, zone)
        store.database.close()
    except AgentError as exc:
        fail(exc)
    rows = [
        {
            "id": r.id,
            "zone": r.zone,
            "state": r.state,
            "captured_at": r.captured_at,
            "path": r.path,
        }
        for r in refs
    ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in refs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.captured_at))
        typer.echo(f"{r.id:>6}  {r.zone:<16} {r.state:<10} {when}  {r.path}")
    typer.echo(f"{len(refs)} reference(s)")


@food_app.command("forget")
def food_forget(
    camera: Annotated[str, typer.Argument(help="Camera id.")],
    zone: Annotated[str, typer.Argument(help="Food zone id.")],
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="Only this state (default: all).")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Delete a food zone's references (of one state, or all) and their images.

    Example: mclz-agent food forget kitchen-1 rice-tray --state empty
    """
    if state is not None:
        _check_state(state)
    try:
        cfg = load_config(config)
        store = _food_store(cfg)
        count = store.forget(camera, zone, state)
        store.database.close()
    except AgentError as exc:
        fail(exc)
    typer.echo(f"{count} reference(s) of {camera}/{zone} deleted")


@alarm_app.command("mute")
def alarm_mute(
    minutes: Annotated[
        float, typer.Argument(help="Minutes of silence, up to 1440; 0 ends the mute.")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Silence the on-site alarm for MINUTES; a running agent sees it before its next alarm.

    The mute is the one the platform's mute command sets, kept in the database, so it
    outlives a restart.

    Example: mclz-agent alarm mute 30 --config /etc/mclz-agent/agent.yaml
    """
    import time  # noqa: PLC0415

    from agent.store.database import db_path  # noqa: PLC0415
    from agent.store.store import Store  # noqa: PLC0415
    from agent.uplink.commands import CommandError  # noqa: PLC0415
    from agent.uplink.overrides import Mute  # noqa: PLC0415

    try:
        cfg = load_config(config)
        with Store(db_path(cfg.storage.state_dir)) as store:
            until = Mute(store).set(minutes, source="cli")
    except CommandError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except AgentError as exc:
        fail(exc)
    if until is None:
        typer.echo("alarm unmuted")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
        typer.echo(f"alarm muted until {when}")


@alarm_app.command("test")
def alarm_test(
    kind: Annotated[
        str | None,
        typer.Argument(help="Violation type whose prompt to play (e.g. no_mask); none: beeps."),
    ] = None,
    severity: Annotated[
        str | None,
        typer.Option(help="info, warning or critical; default: the rule's severity."),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Play an alarm through the configured sounder now, and say whether it worked.

    Exit code 7 when the sounder fails (no audio device, speaker unreachable, ...).

    Example: mclz-agent alarm test no_mask --config /etc/mclz-agent/agent.yaml
    """
    import time  # noqa: PLC0415

    from agent.alarm.sounders import make_sounder  # noqa: PLC0415
    from agent.alarm.sounds import PROMPT_TEXTS, SoundBank  # noqa: PLC0415

    try:
        cfg = load_config(config)
        if cfg.alarm.sounder.kind == "none":
            raise ConfigError(f"{config}: alarm.sounder.kind is none: there is nothing to play on")
        if severity not in (None, "info", "warning", "critical"):
            raise ConfigError(f"--severity must be info, warning or critical, not {severity!r}")
        known = set(cfg.rules) | set(PROMPT_TEXTS) | set(cfg.alarm.prompts)
        if kind is not None and kind not in known:
            raise ConfigError(f"unknown violation type {kind!r} ({', '.join(sorted(known))})")
        if severity is None:
            rule = cfg.rules.get(kind or "")
            severity = rule.severity if rule is not None else "warning"
        sounds = SoundBank(cfg.alarm)
        sounder = make_sounder(cfg.alarm.sounder)
        started = time.monotonic()
        sounder.play(sounds.render(severity, kind), f"test-{kind or severity}")
        seconds = time.monotonic() - started
    except AgentError as exc:
        fail(exc)
    typer.echo(f"played {kind or 'beeps'} ({severity}) via {sounder.describe()} in {seconds:.2f} s")


@alarm_app.command("log")
def alarm_log(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, max=100000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The on-site alarm's recent decisions: played, suppressed (and why) or failed.

    Example: mclz-agent alarm log --limit 50 --config /etc/mclz-agent/agent.yaml
    """
    import time  # noqa: PLC0415
    from dataclasses import asdict  # noqa: PLC0415

    rows = _read_store(config, lambda store: store.alarms(limit))
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        typer.echo("(no alarm decisions yet)")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.ts))
        took = f"{r.duration_ms} ms" if r.duration_ms is not None else ""
        typer.echo(
            f"{when}  {r.camera:<14} {r.type:<15} {r.decision:<10} {r.reason:<14} "
            f"{r.sounder:<8} {took}  {r.alert_id}"
        )


@app.command()
def check(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    skip_cameras: Annotated[
        bool, typer.Option("--skip-cameras", help="Do not open the cameras.")
    ] = False,
    min_free_mb: Annotated[
        float | None,
        typer.Option(
            "--min-free-mb",
            min=0,
            help="Free space the state directory needs (default: 1 GiB or 5 %, the smaller).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check that this box is ready: config, clock, disk, database, broker, cameras, model.

    Also the alarm's sounder and the systemd unit. One line per check: ok, warn or FAIL
    with a short detail. Exit code 0 when nothing FAILs, 8 otherwise.

    Example: mclz-agent check --config /etc/mclz-agent/agent.yaml
    """
    from agent.install.doctor import FAIL, run_checks  # noqa: PLC0415

    checks = run_checks(config, min_free_mb=min_free_mb, skip_cameras=skip_cameras)
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in checks], ensure_ascii=False, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            typer.echo(f"{c.verdict:<5} {c.name:<{width}}  {c.detail}")
    failed = [c.name for c in checks if c.verdict == FAIL]
    if failed:
        if not as_json:
            typer.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        raise typer.Exit(CHECK_FAILED)


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the agent is doing, read from its database without disturbing it.

    Works while the agent runs and after it stopped: whether it is alive (from how fresh
    its saved state is), cameras, the outbox backlog, the last 5 alerts and camera errors.
    Exit code 4 when there is no database yet, 9 when another process keeps it locked for
    longer than a 5 s wait (it reads without a write lock, so a running agent never does).

    Example: mclz-agent status --config /etc/mclz-agent/agent.yaml
    """
    import time  # noqa: PLC0415

    from agent.install.doctor import ago, read_status  # noqa: PLC0415

    try:
        cfg = load_config(config)
        state = read_status(cfg)
    except AgentError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(state, ensure_ascii=False, indent=2))
        return
    now = time.time()

    def when(ts: float | None) -> str:
        return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) if ts is not None else "-"

    typer.echo(f"agent     {state['summary']}")
    uptime = state["uptime_s"]
    typer.echo(f"uptime    {ago(uptime) if uptime is not None else 'unknown'}")
    if state["pid"] is not None:
        typer.echo(f"process   pid {state['pid']}, mclz-agent {state['version']}, {state['model']}")
    rate = state["analysed_per_s"]
    if rate is not None:
        typer.echo(f"detect    {rate:.2f} frame(s)/s analysed")
    if state["uplink_connected"] is not None:
        link = "connected" if state["uplink_connected"] else "NOT connected"
        error = f" (last error: {state['uplink_last_error']})" if state["uplink_last_error"] else ""
        typer.echo(f"uplink    {link}{error}")
    typer.echo(f"database  {state['database']}")
    typer.echo("cameras" if state["cameras"] else "cameras   (no saved health yet)")
    for cid, cam in state["cameras"].items():
        fps = f"{cam['fps']:.1f} fps" if cam["fps"] is not None else "- fps"
        typer.echo(
            f"  {cid:<16} {cam['state']:<9} {fps:>9}  since {when(cam['since'])}"
            f" ({ago(now - cam['since'])})"
        )
        if cam["last_error"]:
            typer.echo(f"  {'':<16} last error ({cam['last_error_class']}): {cam['last_error']}")
    backlog = state["backlog"]
    typer.echo(
        "outbox    "
        + (
            ", ".join(
                f"{kind} {b['messages']} (oldest {ago(b['oldest_age_s'])})"
                for kind, b in backlog.items()
            )
            or "empty"
        )
    )
    typer.echo("alerts" if state["alerts"] else "alerts    (none yet)")
    for a in state["alerts"]:
        typer.echo(
            f"  {a['type']:<15} {a['camera']:<14} {a['zone'] or '-':<12}"
            f" started {when(a['started'])}  ended {when(a['ended'])}"
        )


@app.command()
def version() -> None:
    """Print the agent's version and those of its key libraries.

    Example: mclz-agent version
    """
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415
    from importlib.metadata import version as dist_version  # noqa: PLC0415

    typer.echo(f"mclz-agent {__version__}")
    for dist in (
        "av",
        "onnxruntime",
        "paho-mqtt",
        "numpy",
        "opencv-python-headless",
        "pillow",
        "pydantic",
    ):
        try:
            typer.echo(f"  {dist} {dist_version(dist)}")
        except PackageNotFoundError:
            typer.echo(f"  {dist} (not installed)")


# The installer's commands (init, camera add/remove/snapshot/discover, service) register
# themselves on ``app`` and ``camera_app`` above.
from agent.cli import install as cli_install  # noqa: E402, F401


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception:  # the edge of the program: a bug, not bad input
        logging.getLogger("agent").exception("internal error")
        sys.exit(1)
