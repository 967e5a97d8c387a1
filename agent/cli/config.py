"""The configuration: ``config check``, ``config show`` and ``init`` (write this box's config).

``init`` asks the installer's questions (or takes a seed file); the work is done by
:mod:`agent.install.provision`, errors become exit codes here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from agent.cli.app import (
    DEFAULT_CONFIG,
    DEFAULT_STORE,
    ConfigOption,
    CredentialsOption,
    app,
    config_app,
    fail,
    secret_from,
)
from agent.config import check_secrets, load_config, redacted_dict
from agent.errors import AgentError, ConfigError


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


@dataclasses.dataclass(frozen=True)
class _Question:
    key: str
    text: str
    default: Callable[[dict[str, Any]], str | None]
    check: Callable[[str], str] | None = None
    ask: Callable[[dict[str, Any]], bool] = lambda _answers: True
    hidden: bool = False
    optional: bool = False


def _questions() -> list[_Question]:
    from agent.install import provision as p  # noqa: PLC0415

    def tls(a: dict[str, Any]) -> bool:
        return str(a.get("broker_url", "")).startswith(("mqtts://", "ssl://"))

    return [
        _Question(
            "city",
            "City code, as the platform knows it (e.g. hangzhou)",
            lambda _: None,
            p.check_id,
        ),
        _Question("school_id", "School id (the platform's)", lambda _: None, p.check_id),
        _Question("box_id", "Box id within the school", lambda _: "box-01", p.check_id),
        _Question(
            "school_name", "School name (display, may be Chinese)", lambda _: "", optional=True
        ),
        _Question(
            "timezone", "Time zone of the kitchen", lambda _: "Asia/Shanghai", p.check_timezone
        ),
        _Question(
            "broker_url",
            "Platform broker URL (mqtts://host:8883)",
            lambda _: None,
            p.check_broker_url,
        ),
        _Question(
            "protocol",
            "MQTT protocol version (5 or 3.1.1)",
            lambda _: "5",
            lambda v: v if v in {"5", "3.1.1"} else _raise("must be 5 or 3.1.1"),
        ),
        _Question(
            "username", "Broker user name (empty: anonymous)", lambda a: a["box_id"], optional=True
        ),
        _Question(
            "password",
            "Broker password (hidden; empty: none)",
            lambda _: "",
            ask=lambda a: bool(a.get("username")),
            hidden=True,
            optional=True,
        ),
        _Question(
            "ca_file",
            "CA bundle file (empty: the system's CAs)",
            lambda _: "",
            p.check_readable_file,
            ask=tls,
            optional=True,
        ),
        _Question(
            "cert_file",
            "Client certificate for mutual TLS (empty: none)",
            lambda _: "",
            p.check_readable_file,
            ask=tls,
            optional=True,
        ),
        _Question(
            "key_file",
            "Client private key",
            lambda _: None,
            p.check_readable_file,
            ask=lambda a: bool(a.get("cert_file")),
        ),
        _Question(
            "state_dir", "State directory (database, evidence)", lambda _: "/var/lib/mclz-agent"
        ),
        _Question("model_path", "Model package", lambda _: str(p.PACKAGED_MODEL)),
    ]


def _raise(message: str) -> str:
    raise ValueError(message)


def _ask(q: _Question, answers: dict[str, Any]) -> str:
    """Prompt until the answer passes the question's check."""
    default = q.default(answers)
    while True:
        try:
            value = typer.prompt(
                q.text,
                default=default,  # None: an answer is required
                hide_input=q.hidden,
                show_default=not q.hidden and bool(default),
                type=str,
            )
        except typer.Abort:
            fail(ConfigError(f"init: input ended before {q.key} was answered"))
        value = str(value).strip()
        if not value and q.optional:
            return ""
        try:
            return q.check(value) if q.check else value
        except ValueError as exc:
            typer.echo(f"  {exc}", err=True)


def _ask_page_password(non_interactive: bool) -> str:
    """The installer page's new password (``init --web-password``), asked twice."""
    from agent.cli.web import ask_new_password  # noqa: PLC0415

    if non_interactive:
        fail(
            ConfigError(
                "--web-password asks for the password: not with --non-interactive "
                "(use mclz-agent web passwd --password-stdin)"
            )
        )
    return ask_new_password("installer page")


def _keep_page_password(password: str | None, credentials_dir: Path) -> None:
    """Store the page password's hash as the default credential (nothing for None); exit
    when it cannot be stored."""
    from agent.cli.web import store_web_password  # noqa: PLC0415
    from agent.config import WebConfig  # noqa: PLC0415

    if password is None:
        return
    try:
        stored = store_web_password(password, WebConfig(), credentials_dir)
    except AgentError as exc:
        fail(exc)
    typer.echo(
        f"stored the installer page's password hash in {stored} (0600); turn the page on "
        "with web: {enabled: true, listen: <this box's LAN address>:8080}"
    )


@app.command()
def init(  # noqa: PLR0917 - typer passes each option by name
    config: ConfigOption = DEFAULT_CONFIG,
    seed: Annotated[
        Path | None,
        typer.Option(help="YAML/JSON file of answers (mass provisioning); flags override it."),
    ] = None,
    city: Annotated[str | None, typer.Option(help="City code.")] = None,
    school_id: Annotated[str | None, typer.Option(help="The platform's school id.")] = None,
    box_id: Annotated[str | None, typer.Option(help="This box's id within the school.")] = None,
    school_name: Annotated[str | None, typer.Option(help="School display name.")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA time zone.")] = None,
    broker_url: Annotated[str | None, typer.Option(help="mqtt(s)://host[:port].")] = None,
    protocol: Annotated[str | None, typer.Option(help="MQTT 5 or 3.1.1.")] = None,
    username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    password_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the broker password.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the broker password from stdin.")
    ] = False,
    ca_file: Annotated[str | None, typer.Option(help="CA bundle for mqtts://.")] = None,
    cert_file: Annotated[str | None, typer.Option(help="Client certificate (mutual TLS).")] = None,
    key_file: Annotated[str | None, typer.Option(help="Client private key (mutual TLS).")] = None,
    state_dir: Annotated[str | None, typer.Option(help="State directory.")] = None,
    model_path: Annotated[str | None, typer.Option(help="Model package directory.")] = None,
    non_interactive: Annotated[
        bool,
        typer.Option("--non-interactive", "-y", help="Never prompt: missing answers are errors."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing config (kept as .bak).")
    ] = False,
    credentials_dir: CredentialsOption = DEFAULT_STORE,
    web_password: Annotated[
        bool,
        typer.Option(
            "--web-password",
            help="Also set the installer page's password (asked twice, kept as a hash).",
        ),
    ] = False,
) -> None:
    """Write this box's config: identity, broker, TLS, credentials, time zone.

    Asks for each answer (with a default and a check) unless it comes from a flag or a seed
    file; with --non-interactive a missing answer is an error. The broker password goes to
    the credential store (0600), never into the config. The result passes config check.

    With --web-password it also asks for the local installer page's password and keeps its
    scrypt hash as the credential web-password (the page stays off until web.enabled).

    Example: mclz-agent init --seed school-0012.yaml --non-interactive
    """
    from agent.install import provision  # noqa: PLC0415

    try:
        answers: dict[str, Any] = provision.read_seed(seed) if seed is not None else {}
    except ConfigError as exc:
        fail(exc)
    flags = {
        "city": city,
        "school_id": school_id,
        "box_id": box_id,
        "school_name": school_name,
        "timezone": timezone,
        "broker_url": broker_url,
        "protocol": protocol,
        "username": username,
        "ca_file": ca_file,
        "cert_file": cert_file,
        "key_file": key_file,
        "state_dir": state_dir,
        "model_path": model_path,
    }
    answers.update({k: v for k, v in flags.items() if v is not None})
    secret = secret_from(password_env, password_stdin, "init")
    if secret is not None:
        answers["password"] = secret
    missing = []
    for q in _questions():
        if q.key in answers or not q.ask(answers):
            continue
        if non_interactive:
            default = q.default(answers)
            if default is None:
                missing.append(q.key)
            else:
                answers[q.key] = default
            continue
        answers[q.key] = _ask(q, answers)
    if missing:
        fail(
            ConfigError(
                "missing answers (flags or seed file)",
                [f"--{k.replace('_', '-')}: required" for k in missing],
            )
        )
    values: dict[str, Any] = {
        k: (v or None) if k in {"password", "ca_file", "cert_file", "key_file"} else v
        for k, v in answers.items()
    }
    settings = provision.InitSettings(**values)  # every answer is checked by .problems()
    page_password = _ask_page_password(non_interactive) if web_password else None
    try:
        result = provision.init_config(
            settings, config, credentials_dir=credentials_dir, force=force
        )
    except AgentError as exc:
        fail(exc)
    typer.echo(f"wrote {result.config}")
    for path in result.credentials:
        typer.echo(f"stored the broker password in {path} (0600)")
    _keep_page_password(page_password, credentials_dir)
    if result.backup is not None:
        typer.echo(f"kept the old config as {result.backup}")
    typer.echo(
        f"this box publishes under mclz/{settings.city}/{settings.school_id}/"
        f"{settings.box_id}/ on {settings.broker_url}\n"
        "next: mclz-agent camera add NAME URL, then mclz-agent check, "
        "then mclz-agent service install"
    )
