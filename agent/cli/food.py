"""The food zones (防尘防蝇): ``food calibrate``, ``test``, ``show``, ``refs`` and ``forget``.

The classifier and its reference store are :mod:`agent.detect.food`'s; errors become exit
codes here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.cli.app import DEFAULT_CONFIG, ConfigOption, fail, food_app
from agent.config import load_config
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    import numpy as np

    from agent.config import AgentConfig
    from agent.detect.food import FoodStore, ZoneState


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
    from agent.detect.food import food_zone  # noqa: PLC0415
    from agent.install.food import record_references  # noqa: PLC0415

    _check_state(state)
    try:
        cfg = load_config(config)
        food_zone(cfg, camera, zone)  # before the stream is opened: a typo fails at once
        grabbed = _grab(cfg, camera, frames, seconds)
        store = _food_store(cfg)
        try:
            result = record_references(store, cfg, camera, zone, state=state, frames=grabbed)
        finally:
            store.database.close()
    except ValueError as exc:
        fail(ConfigError(f"cameras.{camera}.zones.{zone}: {exc}"))
    except AgentError as exc:
        fail(exc)
    summary = ", ".join(f"{s} {n}" for s, n in result["references"].items())
    typer.echo(f"{len(grabbed)} reference(s) of {camera}/{zone} stored as {state} ({summary})")
    if not result["ready"]:
        typer.echo("record at least one other state before the zone can be classified")


def _classify_now(
    config: Path, camera: str
) -> tuple[np.ndarray, dict[str, tuple[ZoneState, dict[str, int]]]]:
    """One frame of ``camera`` and each food zone's state and reference counts."""
    from agent.detect.food import food_zones  # noqa: PLC0415
    from agent.install.food import classify_zones  # noqa: PLC0415

    cfg = load_config(config)
    food_zones(cfg, camera)  # before the stream is opened: an unknown camera fails at once
    frame = _grab(cfg, camera, 1, 0.0)[0]
    store = _food_store(cfg)
    try:
        return frame, classify_zones(store, cfg, camera, frame)
    finally:
        store.database.close()


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
    from agent.install.food import classify_zone  # noqa: PLC0415

    try:
        cfg = load_config(config)
        food_zone(cfg, camera, zone)  # before the stream is opened: a typo fails at once
        frame = _grab(cfg, camera, 1, 0.0)[0]
        store = _food_store(cfg)
        try:
            body = classify_zone(store, cfg, camera, zone, frame)
        finally:
            store.database.close()
    except ValueError as exc:
        fail(ConfigError(f"cameras.{camera}.zones.{zone}: {exc}"))
    except AgentError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    typer.echo(f"{'state':<10} {body['state']}")
    typer.echo(f"{'margin':<10} {body['margin']:.2f}")
    typer.echo(f"{'distance':<10} {body['distance']:.4f}")
    typer.echo(f"{'detail':<10} {body['detail']}")
    counts = body["references"]
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
