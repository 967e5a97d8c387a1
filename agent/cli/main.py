"""The ``mclz-agent`` command line, assembled: the console script's entry point.

Importing a command group's module registers its commands on the apps of
:mod:`agent.cli.app` (which imports none of them, so there is no import loop). The top-level
commands are listed by ``mclz-agent --help`` in the order they are registered, so the first
three imports keep that order (run; check, status, version; init) and stay out of isort.
"""

from __future__ import annotations

import logging
import sys

# isort: off
from agent.cli import run  # noqa: F401 - registers run
from agent.cli import system  # noqa: F401 - registers check, status, version, service
from agent.cli import config  # noqa: F401 - registers init, config

# isort: on
from agent.cli import alarm, camera, capture, food, model, store, web  # noqa: F401 - register
from agent.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except Exception:  # the edge of the program: a bug, not bad input
        logging.getLogger("agent").exception("internal error")
        sys.exit(1)
