"""The cameras: ``camera probe``, ``list``, ``add``, ``remove``, ``snapshot`` and ``discover``.

The work is done by :mod:`agent.ingest.probe`, :mod:`agent.install.config_edit` (with the
credential store of :mod:`agent.install.provision` and the unit's drop-in of
:mod:`agent.install.unit`), :mod:`agent.install.snapshot` and :mod:`agent.install.discover`;
errors become exit codes here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.app import (
    DEFAULT_CONFIG,
    DEFAULT_STORE,
    ConfigOption,
    CredentialsOption,
    camera_app,
    fail,
    read_store,
    secret_from,
)
from agent.config import CameraConfig, load_config
from agent.errors import AgentError, ConfigError, StreamError


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
        health = read_store(config, lambda store: store.camera_health())
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


def _probe_line(url: str, transport: str, seconds: float, timeout: float) -> str:
    """One line about a stream; raises StreamError when it cannot be used."""
    from agent.ingest.probe import probe  # noqa: PLC0415

    r = probe(url, transport=transport, seconds=seconds, timeout=timeout)
    gop = f"keyframe every {r.keyframe_interval_s:.1f} s" if r.keyframe_interval_s else "GOP ?"
    return f"{r.width}x{r.height} {r.codec}, {r.measured_fps:.1f} fps, {gop}"


@camera_app.command("add")
def camera_add(  # noqa: PLR0917 - typer passes each option by name
    camera_id: Annotated[str, typer.Argument(metavar="NAME", help="Camera id (in topics).")],
    url: Annotated[str, typer.Argument(help="rtsp:// stream (the main stream with --sub).")],
    sub: Annotated[
        str | None,
        typer.Option("--sub", help="Sub-stream for detection; URL then serves evidence only."),
    ] = None,
    name: Annotated[str, typer.Option("--name", help="Display name, e.g. 后厨操作间.")] = "",
    password_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the camera password.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the camera password from stdin.")
    ] = False,
    transport: Annotated[str, typer.Option(help="RTSP transport: tcp or udp.")] = "tcp",
    seconds: Annotated[float, typer.Option(min=1, max=60, help="Probe this long.")] = 3.0,
    timeout: Annotated[float, typer.Option(min=1, max=120, help="Open/read timeout.")] = 10.0,
    force: Annotated[
        bool, typer.Option("--force", help="Save even if the stream cannot be opened now.")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Change the streams of an existing camera.")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    credentials_dir: CredentialsOption = DEFAULT_STORE,
) -> None:
    """Probe a camera's stream(s), then add it to the config.

    A password in the URL (rtsp://admin:pw@...) or from --password-env/--password-stdin goes
    to the credential store, never into the config. An unreachable stream is refused with
    the reason (auth_failed, not_found, refused, timeout, ...) unless --force.

    Example: mclz-agent camera add kitchen-1 rtsp://admin@192.168.1.64/Streaming/Channels/101
    --sub rtsp://admin@192.168.1.64/Streaming/Channels/102 --password-env CAM_PW
    """
    from agent.install import config_edit, provision, unit  # noqa: PLC0415
    from agent.redact import redact_url, register_secret, with_password  # noqa: PLC0415

    if transport not in {"tcp", "udp"}:
        fail(ConfigError(f"--transport must be tcp or udp, not {transport!r}"))
    streams = [(url, "main" if sub else "stream")] + ([(sub, "sub")] if sub else [])
    clean: list[str] = []
    passwords = set()
    for raw, _role in streams:
        without, secret = config_edit.split_password(raw)
        if secret:
            register_secret(secret)
            passwords.add(secret)
        clean.append(without)
    flagged = secret_from(password_env, password_stdin, "camera add")
    if flagged is not None:
        register_secret(flagged)
        passwords.add(flagged)
    if len(passwords) > 1:
        fail(ConfigError("the streams give different passwords: a camera has one password"))
    password = passwords.pop() if passwords else None
    is_file = ["://" not in c or c.startswith("file://") for c in clean]
    problems = []
    for (_raw, role), stream, local in zip(streams, clean, is_file, strict=True):
        full = with_password(stream, password) if password and not local else stream
        try:
            line = _probe_line(full, transport, seconds, timeout)
        except StreamError as exc:
            problems.append(f"{role} stream: {exc}")
            typer.echo(f"FAIL  {role:<6} {exc}", err=True)  # the message names the URL
            continue
        typer.echo(f"ok    {role:<6} {redact_url(stream)}: {line}")
    if problems and not force:
        typer.echo(
            f"not saved: {len(problems)} stream(s) cannot be used now; fix the URL, password or "
            "network, or add --force to save it anyway",
            err=True,
        )
        raise typer.Exit(6)
    credential = config_edit.camera_credential(camera_id) if password else None
    detect_url, main_url = (clean[1], clean[0]) if sub else (clean[0], None)
    try:
        if password and credential:
            path = provision.store_secret(credentials_dir, credential, password)
            typer.echo(f"stored the camera password in {path} (0600)")
        cfg = config_edit.add_camera(
            config,
            camera_id,
            detect_url,
            main_url=main_url,
            name=name,
            credential=credential,
            replace=replace,
        )
        dropin = unit.sync_credentials(cfg, credentials_dir=credentials_dir)
    except AgentError as exc:
        fail(exc)
    typer.echo(f"added camera {camera_id} to {config}" + (" (forced)" if problems else ""))
    if dropin is not None:
        typer.echo(f"updated {dropin}: restart the agent (systemctl restart mclz-agent)")
    else:
        typer.echo("a running agent picks it up with: systemctl reload mclz-agent")


@camera_app.command("remove")
def camera_remove(
    camera_id: Annotated[str, typer.Argument(metavar="NAME", help="Camera id.")],
    keep_password: Annotated[
        bool, typer.Option("--keep-password", help="Keep its password in the credential store.")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    credentials_dir: CredentialsOption = DEFAULT_STORE,
) -> None:
    """Remove a camera from the config (and its password from the credential store).

    Refused when a rule still names a zone only this camera has: the message says which.
    Its history (health, alerts) stays in the database.

    Example: mclz-agent camera remove serving-line
    """
    from agent.install import config_edit, unit  # noqa: PLC0415

    try:
        cfg, credential = config_edit.remove_camera(config, camera_id)
        if credential and not keep_password:
            (credentials_dir / credential).unlink(missing_ok=True)
            typer.echo(f"removed credential {credential}")
        unit.sync_credentials(cfg, credentials_dir=credentials_dir)
    except OSError as exc:
        typer.echo(f"warning: credential not removed: {exc.strerror}", err=True)
    except AgentError as exc:
        fail(exc)
    typer.echo(f"removed camera {camera_id} from {config}; apply: systemctl reload mclz-agent")


@camera_app.command("snapshot")
def camera_snapshot(
    camera_id: Annotated[str, typer.Argument(metavar="NAME", help="Camera id.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="PNG to write (default: ./NAME.png).")
    ] = None,
    main: Annotated[
        bool, typer.Option("--main", help="From the main stream instead of the detection one.")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Save a live frame as PNG with a 0.1 grid and the camera's zones drawn.

    Zones are polygons in 0..1 coordinates of this picture (x to the right, y down): read
    them off the grid, put them in the config, and take another snapshot to check them.

    Example: mclz-agent camera snapshot kitchen-1 --out /tmp/kitchen-1.png
    """
    import cv2  # noqa: PLC0415

    from agent.evidence import find_font  # noqa: PLC0415
    from agent.ingest.probe import grab_frames  # noqa: PLC0415
    from agent.install.snapshot import draw_zones  # noqa: PLC0415

    try:
        cfg = load_config(config)
        cam = cfg.cameras.get(camera_id)
        if cam is None:
            known = ", ".join(sorted(cfg.cameras)) or "none"
            raise ConfigError(f"no camera {camera_id!r} in {config} (configured: {known})")
        stream = cam.main_stream() if main else cam
        if stream is None:
            raise ConfigError(f"camera {camera_id!r} has no main_url")
        frames = grab_frames(
            stream.source_url(camera_id),
            count=1,
            seconds=0.0,
            transport=cam.transport,
            timeout=cam.open_timeout,
        )
    except AgentError as exc:
        fail(exc)
    image = draw_zones(frames[0], cam, find_font(cfg.evidence.font))
    out = out if out is not None else Path(f"{camera_id}.png")
    if not cv2.imwrite(str(out), image):
        typer.echo(f"error: cannot write {out}", err=True)
        raise typer.Exit(4)
    height, width = image.shape[:2]
    typer.echo(f"wrote {out}: {width}x{height}, {len(cam.zones)} zone(s) drawn")
    if not main:
        _echo_detail(cam, cfg.model.path, width, height)


#: Face height on the stream that the hint takes as an example, and the size at the model
#: input below which small faces are often missed (MODEL_CARD.md: a quarter of the training
#: faces were under 16 px and recall is lowest there).
_EXAMPLE_FACE_PX = 60
_SMALL_AT_MODEL_PX = 16


def _echo_detail(camera: CameraConfig, model_path: Path, width: int, height: int) -> None:
    """How large objects of this stream reach the model, so the installer can judge tiles."""
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.detect.views import View  # noqa: PLC0415

    try:
        package = load_model_package(model_path)
    except AgentError as exc:
        typer.echo(f"(no detail estimate: {exc})")
        return
    view = View.from_config(camera.view)
    scale = view.scale(width, height, package.input_width, package.input_height)
    face = _EXAMPLE_FACE_PX * scale
    how = "whole" if view.tiles == 1 else f"in {view.cols}x{view.rows} tiles"
    typer.echo(
        f"detector input {package.input_width}x{package.input_height}, picture analysed {how}: "
        f"objects reach the model at {scale:.2f}x (a {_EXAMPLE_FACE_PX} px face: {face:.0f} px)"
    )
    if face < _SMALL_AT_MODEL_PX:
        typer.echo(
            f"  faces of {_EXAMPLE_FACE_PX} px or less will often be missed: "
            "set view.crop to the work area or view.tiles (docs/performance.md)"
        )


@camera_app.command("discover")
def camera_discover(
    timeout: Annotated[float, typer.Option(min=0.5, max=30, help="Listen this long.")] = 3.0,
    interface: Annotated[
        str | None, typer.Option(help="IPv4 address of the interface to probe from.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Find ONVIF cameras on the local network (WS-Discovery) and list what answers.

    The RTSP URL shown is a guess from the brand; confirm it with camera probe.

    Example: mclz-agent camera discover --timeout 5
    """
    from agent.install.discover import discover, render_table, rtsp_hint  # noqa: PLC0415

    try:
        devices = discover(timeout, interface=interface)
    except AgentError as exc:
        fail(exc)
    if as_json:
        rows = [{**dataclasses.asdict(d), "rtsp_guess": rtsp_hint(d)} for d in devices]
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    typer.echo(render_table(devices, timeout))
