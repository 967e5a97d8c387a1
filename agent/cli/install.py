"""The installer's commands: ``init``, ``camera add/remove/snapshot/discover``, ``service install``.

Imported by :mod:`agent.cli.main` (at its end), on whose ``app`` these commands are registered; the
work is done by :mod:`agent.install.provision` and :mod:`agent.install.discover`, errors
become exit codes here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from agent.cli.main import DEFAULT_CONFIG, ConfigOption, app, camera_app, fail
from agent.config import DEFAULT_CREDENTIALS_DIR, CameraConfig, load_config
from agent.errors import AgentError, ConfigError, StreamError

service_app = typer.Typer(help="Install the systemd service.", no_args_is_help=True)
app.add_typer(service_app, name="service")

CredentialsOption = Annotated[
    Path,
    typer.Option(
        "--credentials-dir",
        help="Credential store (default: $MCLZ_CREDENTIALS_DIR or /etc/mclz-agent/credentials).",
        show_default=False,
    ),
]
DEFAULT_STORE = Path(os.environ.get("MCLZ_CREDENTIALS_DIR", str(DEFAULT_CREDENTIALS_DIR)))


def _secret_from(env: str | None, stdin: bool, what: str) -> str | None:
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


# --------------------------------------------------------------------------- init


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
) -> None:
    """Write this box's config: identity, broker, TLS, credentials, time zone.

    Asks for each answer (with a default and a check) unless it comes from a flag or a seed
    file; with --non-interactive a missing answer is an error. The broker password goes to
    the credential store (0600), never into the config. The result passes config check.

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
    secret = _secret_from(password_env, password_stdin, "init")
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
    try:
        result = provision.init_config(
            settings, config, credentials_dir=credentials_dir, force=force
        )
    except AgentError as exc:
        fail(exc)
    typer.echo(f"wrote {result.config}")
    for path in result.credentials:
        typer.echo(f"stored the broker password in {path} (0600)")
    if result.backup is not None:
        typer.echo(f"kept the old config as {result.backup}")
    typer.echo(
        f"this box publishes under mclz/{settings.city}/{settings.school_id}/"
        f"{settings.box_id}/ on {settings.broker_url}\n"
        "next: mclz-agent camera add NAME URL, then mclz-agent check, "
        "then mclz-agent service install"
    )


# --------------------------------------------------------------------------- cameras


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
    from agent.install import provision  # noqa: PLC0415
    from agent.redact import redact_url, register_secret, with_password  # noqa: PLC0415

    if transport not in {"tcp", "udp"}:
        fail(ConfigError(f"--transport must be tcp or udp, not {transport!r}"))
    streams = [(url, "main" if sub else "stream")] + ([(sub, "sub")] if sub else [])
    clean: list[str] = []
    passwords = set()
    for raw, _role in streams:
        without, secret = provision.split_password(raw)
        if secret:
            register_secret(secret)
            passwords.add(secret)
        clean.append(without)
    flagged = _secret_from(password_env, password_stdin, "camera add")
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
    credential = provision.camera_credential(camera_id) if password else None
    detect_url, main_url = (clean[1], clean[0]) if sub else (clean[0], None)
    try:
        if password and credential:
            path = provision.store_secret(credentials_dir, credential, password)
            typer.echo(f"stored the camera password in {path} (0600)")
        cfg = provision.add_camera(
            config,
            camera_id,
            detect_url,
            main_url=main_url,
            name=name,
            credential=credential,
            replace=replace,
        )
        dropin = provision.sync_credentials(cfg, credentials_dir=credentials_dir)
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
    from agent.install import provision  # noqa: PLC0415

    try:
        cfg, credential = provision.remove_camera(config, camera_id)
        if credential and not keep_password:
            (credentials_dir / credential).unlink(missing_ok=True)
            typer.echo(f"removed credential {credential}")
        provision.sync_credentials(cfg, credentials_dir=credentials_dir)
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
    from agent.install.provision import draw_zones  # noqa: PLC0415

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


# --------------------------------------------------------------------------- service


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
    from agent.install import provision  # noqa: PLC0415

    try:
        cfg = load_config(config)
        plan = provision.plan_service(
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
            for line in provision.apply_service(plan):
                typer.echo(line)
    except AgentError as exc:
        fail(exc)
    for note in plan.notes:
        typer.echo(f"note: {note}")
