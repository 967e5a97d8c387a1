"""The on-site alarm: ``alarm mute``, ``alarm test`` and ``alarm log``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agent.cli.app import DEFAULT_CONFIG, ConfigOption, alarm_app, fail, read_store
from agent.config import load_config
from agent.errors import AgentError, ConfigError


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

    rows = read_store(config, lambda store: store.alarms(limit))
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
