"""The agent's database: ``outbox stats``/``replay`` and ``alerts list``/``show``/``export``.

They read through a read-only view (:func:`agent.cli.app.read_store`), so they work while the
agent runs; ``outbox replay`` is the one that writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.app import (
    DEFAULT_CONFIG,
    ConfigOption,
    alerts_app,
    open_writable_store,
    outbox_app,
    read_store,
)
from agent.config import load_config


@outbox_app.command("stats")
def outbox_stats(
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Undelivered messages by kind with the oldest one's age, evictions and expiries.

    Example: mclz-agent outbox stats --config /etc/mclz-agent/agent.yaml
    """
    stats = read_store(config, lambda store: store.stats())
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
    store = open_writable_store(config)
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

    alerts, waiting = read_store(
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
    body = read_store(config, lambda store: store.alert_payload(alert_id))
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
    bodies = read_store(
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
