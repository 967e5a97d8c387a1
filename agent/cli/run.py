"""``mclz-agent run``: the agent itself, started from the command line or by systemd."""

from __future__ import annotations

from typing import Annotated

import typer

from agent.cli.app import DEFAULT_CONFIG, ConfigOption, app, fail
from agent.config import check_secrets, load_config
from agent.errors import AgentError, ConfigError


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
