"""The installer page (``web.enabled``): ``web passwd`` sets its password.

The page's password is kept only as an scrypt hash (:mod:`agent.web.auth`) in the credential
store, where ``init`` keeps the broker's password; errors become exit codes here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.app import (
    DEFAULT_CONFIG,
    DEFAULT_STORE,
    ConfigOption,
    CredentialsOption,
    fail,
    secret_from,
    web_app,
)
from agent.config import WebConfig, load_config
from agent.errors import AgentError, ConfigError
from agent.web.auth import MIN_PASSWORD_LENGTH, hash_password


def ask_new_password(what: str) -> str:
    """A new password, typed twice without echo; exits on a mismatch, an empty or short one."""
    try:
        first = typer.prompt(f"New {what} password (hidden)", hide_input=True, type=str)
        second = typer.prompt(f"The same {what} password again", hide_input=True, type=str)
    except typer.Abort:
        fail(ConfigError(f"input ended before the {what} password was set"))
    if first != second:
        fail(ConfigError("the two passwords differ: nothing was changed"))
    check_new_password(str(first))
    return str(first)


def check_new_password(password: str) -> None:
    """Exit unless ``password`` is long enough to stand guessing."""
    if len(password) < MIN_PASSWORD_LENGTH:
        fail(ConfigError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters"))


def store_web_password(password: str, web: WebConfig, credentials_dir: Path) -> Path:
    """Hash ``password`` and keep the hash where ``web.password`` reads it (0600).

    Raises:
        ConfigError: ``web.password`` names an environment variable (the hash cannot be
            written there).
        StoreError: the file cannot be written.
    """
    from agent.install.provision import store_secret  # noqa: PLC0415

    ref = web.password
    if ref.credential is not None:
        return store_secret(credentials_dir, ref.credential, hash_password(password))
    if ref.file is not None:
        return store_secret(ref.file.parent, ref.file.name, hash_password(password))
    raise ConfigError(
        f"web.password reads {ref.describe()}: use {{credential: web-password}} so that "
        "web passwd can write the hash"
    )


@web_app.command("passwd")
def web_passwd(
    config: ConfigOption = DEFAULT_CONFIG,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the new password from stdin.")
    ] = False,
    credentials_dir: CredentialsOption = DEFAULT_STORE,
) -> None:
    """Set the installer page's password: asked twice, kept only as an scrypt hash (0600).

    The hash goes where the config's web.password points (default: the credential
    web-password in the credential store). The agent reads it at each login; under
    systemd, restart the agent after the first one (LoadCredential= copies it at start).

    Example: mclz-agent web passwd --config /etc/mclz-agent/agent.yaml
    """
    web = WebConfig()
    if config.exists():
        try:
            web = load_config(config).web
        except ConfigError as exc:
            fail(exc)
    password = secret_from(None, password_stdin, "web passwd")
    if password is None:
        password = ask_new_password("installer page")
    check_new_password(password)
    try:
        path = store_web_password(password, web, credentials_dir)
    except AgentError as exc:
        fail(exc)
    typer.echo(f"stored the installer page's password hash in {path} (0600)")
    reference = web.password.describe()
    if web.enabled:
        typer.echo(
            f"web.password reads it ({reference}); under systemd: mclz-agent service install "
            "(loads the credential), then systemctl restart mclz-agent"
        )
    else:
        typer.echo(
            "turn the page on in the config: web: {enabled: true, listen: <this box's LAN "
            f"address>:8080}} (password: {{{reference.replace(':', ': ', 1)}}} is the "
            "default), then mclz-agent service install and systemctl restart mclz-agent"
        )
