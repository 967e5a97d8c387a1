"""This box as a whole: ``check``, ``status``, ``version`` and ``service install``.

``check`` and ``status`` are the doctor's (:mod:`agent.install.doctor`); ``service install``
is :mod:`agent.install.unit`'s. Errors become exit codes here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent import __version__
from agent.cli.app import (
    CHECK_FAILED,
    DEFAULT_CONFIG,
    DEFAULT_STORE,
    ConfigOption,
    CredentialsOption,
    app,
    fail,
    service_app,
)
from agent.config import load_config
from agent.errors import AgentError


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


@service_app.command("install")
def service_install(  # noqa: PLR0917 - typer passes each option by name
    config: ConfigOption = DEFAULT_CONFIG,
    root: Annotated[
        Path, typer.Option(help="Install under this root (building an image): run nothing.")
    ] = Path("/"),
    executable: Annotated[
        Path | None, typer.Option("--exec", help="The mclz-agent program the unit starts.")
    ] = None,
    user: Annotated[str, typer.Option(help="Service user (created if missing).")] = "mclz-agent",
    enable: Annotated[bool, typer.Option(help="systemctl enable the unit.")] = True,
    now: Annotated[bool, typer.Option("--now", help="Also start it.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit and commands; change nothing.")
    ] = False,
    credentials_dir: CredentialsOption = DEFAULT_STORE,
) -> None:
    """Install the systemd unit for this config: user, unit, credentials drop-in, enable.

    The unit is the hardened one shipped in systemd/ with this install's paths; the drop-in
    loads each credential the config names (LoadCredential=).

    Example: mclz-agent service install --config /etc/mclz-agent/agent.yaml --now
    """
    from agent.install import unit  # noqa: PLC0415

    try:
        cfg = load_config(config)
        plan = unit.plan_service(
            cfg,
            config,
            root=root,
            executable=executable,
            user=user,
            credentials_dir=credentials_dir,
            enable=enable,
            start=now,
        )
        if dry_run:
            typer.echo(f"# {plan.unit_path}\n{plan.unit_text}")
            typer.echo(f"# {plan.dropin_path}\n{plan.dropin_text}")
            for command in plan.commands:
                typer.echo("would run: " + " ".join(command))
        else:
            for line in unit.apply_service(plan):
                typer.echo(line)
    except AgentError as exc:
        fail(exc)
    for note in plan.notes:
        typer.echo(f"note: {note}")
