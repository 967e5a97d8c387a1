"""What every ``mclz-agent`` command shares: the typer apps, option types and exit codes.

The command line is a thin layer over the library. Library errors become one clear message
and an exit code here, and only here (:func:`fail` and :data:`EXIT_CODES`):

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

This module imports no command module: each group's module (``run``, ``system``,
``config``, ``model``, ``camera``, ``store``, ``capture``, ``food``, ``alarm``, ``web``) imports
it and registers its commands on the apps below, and :mod:`agent.cli.main` imports them all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from agent.config import DEFAULT_CREDENTIALS_DIR, load_config
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
service_app = typer.Typer(help="Install the systemd service.", no_args_is_help=True)
app.add_typer(service_app, name="service")
web_app = typer.Typer(
    help="The local installer page (web.enabled): set its password.", no_args_is_help=True
)
app.add_typer(web_app, name="web")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $MCLZ_CONFIG or /etc/mclz-agent/agent.yaml).",
        show_default=False,
    ),
]
CredentialsOption = Annotated[
    Path,
    typer.Option(
        "--credentials-dir",
        help="Credential store (default: $MCLZ_CREDENTIALS_DIR or /etc/mclz-agent/credentials).",
        show_default=False,
    ),
]
DEFAULT_STORE = Path(os.environ.get("MCLZ_CREDENTIALS_DIR", str(DEFAULT_CREDENTIALS_DIR)))


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


def secret_from(env: str | None, stdin: bool, what: str) -> str | None:
    """A password from ``--password-env`` or ``--password-stdin`` (never a plain flag: ps)."""
    if env is not None and stdin:
        fail(ConfigError(f"{what}: give --password-env or --password-stdin, not both"))
    if env is not None:
        value = os.environ.get(env)
        if not value:
            fail(ConfigError(f"--password-env: environment variable {env} is not set"))
        return value
    if stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            fail(ConfigError("--password-stdin: no password on standard input"))
        return value
    return None


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


def read_store(config: Path, read: Callable[[StoreView], T]) -> T:
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


def open_writable_store(config: Path) -> Store:
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
