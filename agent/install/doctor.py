"""Installer diagnostics: ``check`` (is this box ready?) and ``status`` (what is the agent doing?).

Each check is a function that returns a :class:`Check` (name, verdict, short detail) and never
raises: a check that cannot run says so in its detail. ``status`` reads the agent's SQLite
state through a read-only view (:class:`~agent.store.store.StoreView`), so it neither
blocks nor changes a running agent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from agent.config import AgentConfig, check_secrets, load_config
from agent.errors import AgentError, ConfigError, StoreBusyError, StoreError
from agent.redact import redact_text
from agent.store.database import db_path
from agent.store.store import StoreView

logger = logging.getLogger(__name__)

T = TypeVar("T")

Verdict = Literal["ok", "warn", "FAIL"]
OK: Verdict = "ok"
WARN: Verdict = "warn"
FAIL: Verdict = "FAIL"

MIN_YEAR = 2025
DEFAULT_MIN_FREE_BYTES = 1024**3  # 1 GiB ...
DEFAULT_MIN_FREE_SHARE = 0.05  # ... or 5 % of the filesystem, whichever is smaller
UNIT = "mclz-agent"
# MQTT CONNACK reason codes meaning "who you are is not accepted" (v5 134/135, v3.1.1 4/5).
_AUTH_CODES = {134, 135, 4, 5}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``mclz-agent check``: what was checked, the verdict and why."""

    name: str
    verdict: Verdict
    detail: str

    def to_dict(self) -> dict[str, str]:
        """The check as plain data (for ``--json``)."""
        return asdict(self)


def ago(seconds: float) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d``: a human-sized duration."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


# --------------------------------------------------------------------------- checks


def check_config(path: Path) -> tuple[Check, AgentConfig | None]:
    """Parse the config file and resolve every secret it names."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        return Check("config", FAIL, "; ".join(exc.problems) or str(exc)), None
    problems = check_secrets(cfg)
    if problems:
        return Check("config", FAIL, "; ".join(problems)), cfg
    enabled = sum(1 for cam in cfg.cameras.values() if cam.enabled)
    return Check("config", OK, f"{path}: valid, {enabled} enabled camera(s)"), cfg


def check_clock(now: float | None = None) -> Check:
    """The wall clock: a plausible year and, where the kernel says, NTP-synchronised."""
    from agent.service.telemetry import clock_status  # noqa: PLC0415

    now = time.time() if now is None else now
    year = time.gmtime(now).tm_year
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    if year < MIN_YEAR:
        return Check("clock", FAIL, f"{stamp} is before {MIN_YEAR}: the clock was never set")
    status = clock_status()
    synced = status.get("synchronized")
    if synced is None:
        return Check("clock", WARN, f"{stamp}; synchronisation unknown (adjtimex unavailable)")
    if not synced:
        return Check("clock", WARN, f"{stamp}; not NTP-synchronised (check chrony/timesyncd)")
    return Check("clock", OK, f"{stamp}; NTP-synchronised (est. error {status['est_error_s']} s)")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the state directory may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(state_dir: Path, min_free_mb: float | None = None) -> Check:
    """Free space on the state directory's filesystem against a threshold.

    The default threshold is 1 GiB or 5 % of the filesystem, whichever is smaller (a 16 GB
    eMMC box need not keep a whole GiB free); ``min_free_mb`` replaces it. Under twice the
    threshold: warn.
    """
    where = _existing(state_dir)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("disk", FAIL, f"{where}: cannot stat the filesystem: {exc.strerror}")
    if min_free_mb is not None:
        need = min_free_mb * 1024 * 1024
    else:
        need = min(DEFAULT_MIN_FREE_BYTES, DEFAULT_MIN_FREE_SHARE * usage.total)
    mb = 1024 * 1024
    detail = (
        f"{where}: {usage.free / mb:.0f} MB free of {usage.total / mb:.0f} MB "
        f"({100 * usage.free / max(1, usage.total):.0f} %), need {need / mb:.0f} MB"
    )
    if usage.free < need:
        return Check("disk", FAIL, detail)
    if usage.free < 2 * need:
        return Check("disk", WARN, detail)
    return Check("disk", OK, detail)


def check_database(state_dir: Path) -> Check:
    """The agent's database opens read-only and passes SQLite's full integrity check.

    Read-only: the file is never created, migrated or moved. A lock held past the wait is a
    warning (the agent may be busy; the file is not known to be bad), not a failure.
    """
    path = db_path(state_dir)
    if not path.exists():
        return Check("database", WARN, f"{path}: no database yet (created on the first run)")
    try:
        with StoreView(path) as view:
            rows = view.integrity_check()
    except StoreBusyError as exc:
        return Check("database", WARN, f"{exc} (integrity not checked)")
    except StoreError as exc:  # missing, unreadable, or damaged past what the check can read
        return Check("database", FAIL, str(exc))
    if rows != ["ok"]:
        return Check("database", FAIL, f"{path}: corrupt: {'; '.join(rows[:3])}")
    detail = f"{path}: integrity ok ({path.stat().st_size / 1e6:.1f} MB)"
    if view.missing_migrations:
        return Check(
            "database",
            WARN,
            f"{detail}; schema older than this mclz-agent (lacks "
            f"{', '.join(view.missing_migrations)}): the agent upgrades it when it next starts",
        )
    return Check("database", OK, detail)


def _probe_client(cfg: AgentConfig, timeout: float) -> Any:
    """The agent's own client (agent.uplink.mqtt: TLS, user, password) under its own client
    id, without a session to keep.

    Raises:
        ConfigError: the password cannot be read, or it is set without a user name.
        UplinkError: the TLS material cannot be loaded.
    """
    from agent.uplink.mqtt import build_client  # noqa: PLC0415 - paho only when checking

    client = build_client(cfg.mqtt, f"{cfg.client_id}-check"[:128], keep_session=False)
    client.connect_timeout = timeout
    return client


def check_broker(cfg: AgentConfig, timeout: float = 5.0) -> Check:  # noqa: PLR0911 - verdicts
    """Connect to the broker as the agent would (TLS, user, password) and wait for CONNACK.

    A separate client id (``<client id>-check``) keeps a running agent's session intact.
    """
    m = cfg.mqtt
    where = f"{m.host}:{m.port}"
    try:
        client = _probe_client(cfg, timeout)
    except ConfigError as exc:
        return Check("broker", FAIL, str(exc))
    except AgentError as exc:  # UplinkError: unreadable TLS material, named mqtt.tls
        return Check("broker", FAIL, f"{where}: {exc}")

    answer: list[Any] = []
    done = threading.Event()

    def on_connect(*args: Any) -> None:
        answer.append(args[3])  # (client, userdata, flags, reason_code, properties)
        done.set()

    client.on_connect = on_connect
    started = time.monotonic()
    try:
        client.connect(m.host, m.port, keepalive=max(10, round(timeout * 2)))
    except ssl.SSLError as exc:
        return Check("broker", FAIL, f"{where}: TLS error: {exc}")
    except ConnectionRefusedError:
        return Check("broker", FAIL, f"{where}: connection refused (broker down or wrong port)")
    except TimeoutError:
        return Check("broker", FAIL, f"{where}: timeout: no TCP answer within {timeout:g} s")
    except OSError as exc:
        return Check("broker", FAIL, f"{where}: cannot connect: {exc.strerror or exc}")
    try:
        deadline = started + timeout
        while not done.is_set() and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    except OSError as exc:  # ssl.SSLError is one: a handshake can fail only now
        what = "TLS error" if isinstance(exc, ssl.SSLError) else "connection lost before CONNACK"
        return Check("broker", FAIL, f"{where}: {what}: {exc}")
    finally:
        with contextlib.suppress(OSError, ssl.SSLError):
            client.disconnect()  # sends DISCONNECT if connected; the loop closes the socket
            client.loop(timeout=0.1)
    if not answer:
        return Check("broker", FAIL, f"{where}: timeout: no CONNACK within {timeout:g} s")
    reason = answer[0]
    code = int(reason.value)
    took = (time.monotonic() - started) * 1000
    if not reason.is_failure:
        who = f"as {m.username}" if m.username else "anonymously"
        tls = ", TLS" if m.use_tls else ""
        return Check("broker", OK, f"{where}: connected {who}{tls} in {took:.0f} ms")
    if code in _AUTH_CODES:
        return Check("broker", FAIL, f"{where}: bad credentials: broker says {reason}")
    return Check("broker", FAIL, f"{where}: connection rejected: {reason} ({code})")


def check_cameras(cfg: AgentConfig, seconds: float = 2.0, timeout: float = 5.0) -> list[Check]:
    """Open each enabled camera and measure fps and keyframe interval (one line each)."""
    from agent.ingest.probe import probe  # noqa: PLC0415

    enabled = {cid: cam for cid, cam in cfg.cameras.items() if cam.enabled}
    if not enabled:
        return [Check("cameras", WARN, "no enabled camera in the config")]
    out = []
    for cid, cam in enabled.items():
        name = f"camera {cid}"
        try:
            result = probe(
                cam.source_url(cid),
                transport=cam.transport,
                seconds=seconds,
                timeout=min(timeout, cam.open_timeout),
            )
        except AgentError as exc:  # StreamError names the class; SecretError the secret
            out.append(Check(name, FAIL, redact_text(str(exc))))
            continue
        gop = result.keyframe_interval_s
        gop_text = f"keyframe every {gop:.1f} s" if gop is not None else "keyframe interval unknown"
        detail = (
            f"{result.width}x{result.height} {result.codec}, {result.measured_fps:.1f} fps, "
            f"{gop_text}"
        )
        slow = gop is not None and gop > 2 * max(cam.detect_interval, 1.0) and cam.decode != "all"
        out.append(Check(name, WARN if slow else OK, detail + (" (long GOP)" if slow else "")))
    return out


def check_model(cfg: AgentConfig) -> Check:
    """The model package's manifest and sha256, then its ONNX graph on the configured backend."""
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415

    try:
        package = load_model_package(cfg.model.path)
        variant = Detector(
            package, backend=cfg.model.backend, threads=1, precision=cfg.model.precision
        ).variant
    except (AgentError, ValueError) as exc:
        return Check("model", FAIL, str(exc))
    return Check(
        "model",
        OK,
        f"{package.name} {package.version}, {variant.name} ({variant.onnx_path.name}), "
        f"sha256 {variant.sha256[:12]} ok, {len(package.labels)} labels, {cfg.model.backend}",
    )


#: Share of the measured inference rate the cameras may ask for before ``check`` warns: the
#: load governor starts stretching intervals at 85 % busy, and decoding needs the rest.
CAPACITY_WARN_SHARE = 0.7
_CAPACITY_RUNS = 6


def inference_demand(cfg: AgentConfig) -> tuple[float, int, int]:
    """Inferences per second the enabled cameras ask for (tiles / detect_interval), the
    number of enabled cameras, and how many of them are analysed in tiles."""
    cameras = [c for c in cfg.cameras.values() if c.enabled]
    demand = sum(c.view.tiles[0] * c.view.tiles[1] / c.detect_interval for c in cameras)
    tiled = sum(1 for c in cameras if c.view.tiles != (1, 1))
    return demand, len(cameras), tiled


def check_capacity(cfg: AgentConfig) -> Check:
    """Whether this box's inference rate covers what the cameras ask for.

    Times a few turns of the configured detect workers (``model.workers``), each given one
    720p frame at once, with the configured model, backend and threads (the first, warm-up
    turn not counted), and compares the rate with the demand of the enabled cameras (tiles
    per analysed frame / detect_interval). Inference only: decoding takes 10-25 % of a core
    per camera on top (docs/performance.md). The agent does not fail when it is short: its
    load governor stretches every camera's interval evenly.
    """
    import numpy as np  # noqa: PLC0415

    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.gate import HIGH as GOVERNOR_BUSY  # noqa: PLC0415 - intervals stretch above
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.detect.pool import DetectorPool, resolve_workers  # noqa: PLC0415
    from agent.detect.views import View  # noqa: PLC0415

    demand, cameras, tiled = inference_demand(cfg)
    if cameras == 0:
        return Check("capacity", OK, "no camera enabled")
    model = cfg.model
    workers = resolve_workers(model.workers, model.threads)
    try:
        package = load_model_package(model.path)
        pool = DetectorPool(
            lambda: Detector(
                package, backend=model.backend, threads=model.threads, precision=model.precision
            ),
            workers,
        )
    except (AgentError, ValueError) as exc:
        return Check("capacity", WARN, f"not measured: the model does not load ({exc})")
    frames = [np.full((720, 1280, 3), 114, dtype=np.uint8)] * workers
    views = [View()] * workers
    try:
        pool.detect_views(frames, views)  # warm-up: first-run allocations
        times = []
        for _ in range(_CAPACITY_RUNS):
            started = time.perf_counter()
            pool.detect_views(frames, views)
            times.append(time.perf_counter() - started)
    except (AgentError, ValueError) as exc:
        return Check("capacity", WARN, f"not measured: inference fails ({exc})")
    finally:
        pool.close()
    times.sort()
    rate = workers / max(1e-6, times[len(times) // 2])
    share = demand / rate
    detail = (
        f"cameras ask for {demand:.1f} inference(s)/s ({cameras} camera(s)"
        f"{f', {tiled} in tiles' if tiled else ''}); this box does {rate:.1f}/s with "
        f"{workers} worker(s) of {model.threads} thread(s): {100 * share:.0f} % "
        "(inference only)"
    )
    if share <= CAPACITY_WARN_SHARE:
        return Check("capacity", OK, detail)
    if share <= GOVERNOR_BUSY:
        outlook = "little room left for decoding"
    else:
        outlook = f"expect detect intervals stretched about {share / GOVERNOR_BUSY:.1f}x"
    return Check(
        "capacity",
        WARN,
        f"{detail}; {outlook}: fewer tiles, a longer detect_interval, more model.workers "
        "or a faster box",
    )


#: The agent's memory (RSS, all threads) as a line through the points of the full run of
#: ``scripts/bench/bench.py`` (2026-12-06, 2-core AMD EPYC, int8 detector, two detect
#: workers; docs/performance.md): 290, 339, 386 and 437 MB at 4, 8, 12 and 16 cameras of
#: 720p. What the process holds before its cameras, and what each 720p camera (one analysed
#: frame per second, keyframe every second) adds.
MEMORY_BASE_MB = 240.0
MEMORY_PER_CAMERA_MB = 12.5
#: A main stream (``main_url``, evidence at full resolution) adds its reader, 1080p keyframes
#: only (``scripts/bench/bench_decoder_memory.py --profiles 1080p25-gop25``, same day: 12.0 MB
#: per camera), and its ring of 4 BGR frames (4 x 1920 x 1080 x 3 bytes = 24.9 MB).
MEMORY_PER_MAIN_STREAM_MB = 37.0
#: Share of the memory available (``MemAvailable``) the estimate may take before ``check``
#: warns: the rest is for the page cache (SQLite, evidence), reconnects and the system.
MEMORY_WARN_SHARE = 0.5
MEMINFO = Path("/proc/meminfo")


def read_meminfo(path: Path = MEMINFO) -> dict[str, float]:
    """``MemTotal``, ``MemAvailable`` and the other sizes of ``/proc/meminfo``, in MB.

    Raises:
        OSError: the file cannot be read.
    """
    out: dict[str, float] = {}
    for line in path.read_text(encoding="ascii", errors="replace").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) / 1024
    return out


def memory_estimate(cfg: AgentConfig) -> tuple[float, int, int]:
    """The agent's RSS estimated for the enabled cameras (MB), their number, and how many
    have a main stream."""
    cameras = [c for c in cfg.cameras.values() if c.enabled]
    mains = sum(1 for c in cameras if c.main_url is not None)
    estimate = (
        MEMORY_BASE_MB + MEMORY_PER_CAMERA_MB * len(cameras) + MEMORY_PER_MAIN_STREAM_MB * mains
    )
    return estimate, len(cameras), mains


def check_memory(cfg: AgentConfig, meminfo: Path = MEMINFO) -> Check:
    """Whether this box has the memory for the configured cameras.

    The estimate comes from measured figures (:data:`MEMORY_PER_CAMERA_MB` and the others:
    cameras at 720p); the box's memory from ``MemAvailable`` in ``/proc/meminfo``. Above
    :data:`MEMORY_WARN_SHARE` of it: warn. Run before the agent starts, or the agent's own
    memory is already missing from what is available.
    """
    estimate, cameras, mains = memory_estimate(cfg)
    if cameras == 0:
        return Check("memory", OK, "no camera enabled")
    per = f"{MEMORY_PER_CAMERA_MB:g} MB per 720p camera"
    if mains:
        per += f", {MEMORY_PER_MAIN_STREAM_MB:.0f} MB per main stream"
    need = (
        f"{cameras} camera(s){f', {mains} with a main stream' if mains else ''}: about "
        f"{estimate:.0f} MB ({MEMORY_BASE_MB:.0f} MB + {per}, measured 2026-12-06)"
    )
    try:
        info = read_meminfo(meminfo)
        available, total = info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError) as exc:
        return Check("memory", WARN, f"{need}; the box's memory is unknown ({meminfo}: {exc})")
    share = estimate / max(available, 1.0)
    detail = f"{need}; {available:.0f} MB available of {total:.0f} MB: {100 * share:.0f} %"
    if share <= MEMORY_WARN_SHARE:
        return Check("memory", OK, detail)
    return Check(
        "memory",
        WARN,
        f"{detail}, more than {100 * MEMORY_WARN_SHARE:.0f} %: fewer cameras or main streams "
        "on this box, or more memory",
    )


def check_audio(cfg: AgentConfig) -> Check:
    """The alarm's sounder: nothing to do, aplay present (alsa), or a short test play."""
    from agent.alarm.sounders import make_sounder  # noqa: PLC0415
    from agent.alarm.sounds import SoundBank  # noqa: PLC0415

    sounder_cfg = cfg.alarm.sounder
    if sounder_cfg.kind == "none":
        return Check("audio", OK, "no speaker configured")
    if not cfg.alarm.enabled:
        return Check("audio", WARN, f"{sounder_cfg.kind} sounder configured, alarm disabled")
    if sounder_cfg.kind == "alsa":
        aplay = shutil.which("aplay")
        if aplay is None:
            return Check("audio", FAIL, "aplay not found (install alsa-utils)")
        return Check("audio", OK, f"{aplay} present, device {sounder_cfg.device or 'default'}")
    try:
        sounder = make_sounder(sounder_cfg)
        started = time.monotonic()
        sounder.play(SoundBank(cfg.alarm).render("info", None), "check")
    except AgentError as exc:
        return Check("audio", FAIL, redact_text(str(exc)))
    took = time.monotonic() - started
    return Check("audio", OK, f"test beep played via {sounder.describe()} in {took:.2f} s")


def check_systemd(unit: str = UNIT) -> Check:
    """Whether the systemd unit is installed and enabled (warn where there is no systemd)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return Check("systemd", WARN, "no systemctl here: start the agent some other way")
    try:
        result = subprocess.run(
            [systemctl, "is-enabled", unit], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("systemd", WARN, f"systemctl is-enabled {unit}: {exc}")
    state = result.stdout.strip()
    error = result.stderr.strip().splitlines()[0] if result.stderr.strip() else ""
    if state in {"enabled", "enabled-runtime", "static", "alias"}:
        return Check("systemd", OK, f"{unit}.service {state}")
    if state in {"disabled", "masked", "masked-runtime", "linked", "linked-runtime"}:
        return Check("systemd", FAIL, f"{unit}.service {state}: it will not start at boot")
    if state == "not-found" or "not found" in error or "No such file" in error:
        return Check("systemd", WARN, f"{unit}.service not installed")
    return Check("systemd", WARN, f"cannot ask systemd: {error or state or 'no answer'}")


def run_checks(
    config_path: Path,
    *,
    min_free_mb: float | None = None,
    skip_cameras: bool = False,
    probe_seconds: float = 2.0,
    timeout: float = 5.0,
) -> list[Check]:
    """Run every check in order; a check that needs a valid config is skipped without one."""
    config_check, cfg = check_config(config_path)
    out = [config_check, _guard("clock", check_clock)]
    steps: list[tuple[str, Callable[[AgentConfig], Check | list[Check]]]] = [
        ("disk", lambda c: check_disk(c.storage.state_dir, min_free_mb)),
        ("database", lambda c: check_database(c.storage.state_dir)),
        ("broker", lambda c: check_broker(c, timeout)),
        ("cameras", lambda c: check_cameras(c, probe_seconds, timeout)),
        ("model", check_model),
        ("capacity", check_capacity),
        ("memory", check_memory),
        ("audio", check_audio),
    ]
    for name, step in steps:
        if cfg is None:
            out.append(Check(name, WARN, "skipped: the config is not valid"))
        elif name == "cameras" and skip_cameras:
            out.append(Check("cameras", WARN, "skipped (--skip-cameras)"))
        else:
            result = _guard(name, functools.partial(step, cfg))
            out.extend(result if isinstance(result, list) else [result])
    out.append(_guard("systemd", check_systemd))
    return out


def live_checks(config_path: Path | None, cfg: AgentConfig) -> list[Check]:
    """The checks that are cheap and safe inside the running agent (the installer page).

    The config file (as it is on disk now) and its secrets, the clock, the state
    directory's disk and the systemd unit. Left out: the broker (a second connection with
    the agent's client id would take over its session), the cameras (an extra RTSP session
    each), the database's full integrity check (reads the whole file), the model and the
    capacity benchmark (seconds of the CPU the detector needs), memory (the estimate is for
    a box the agent does not run on yet: inside it, its own memory would count twice) and
    the audio check (it plays a beep in the kitchen). The heartbeat has those figures.
    """
    out = []
    if config_path is None:
        out.append(Check("config", WARN, "the agent runs on embedded defaults: no file"))
    else:
        out.append(check_config(config_path)[0])
    steps: list[tuple[str, Callable[[], Check]]] = [
        ("clock", check_clock),
        ("disk", lambda: check_disk(cfg.storage.state_dir)),
        ("systemd", check_systemd),
    ]
    out.extend(_guard(name, step) for name, step in steps)
    return out


def _guard(name: str, fn: Callable[[], T]) -> T | Check:
    """Run one check; a bug in it becomes a FAIL line (logged with its traceback)."""
    try:
        return fn()
    except Exception as exc:  # the edge of one check: report it, run the others
        logger.exception("check %s crashed", name)
        return Check(name, FAIL, f"internal error: {redact_text(str(exc))}")


# --------------------------------------------------------------------------- status


def read_status(cfg: AgentConfig, now: float | None = None) -> dict[str, Any]:
    """What the agent is doing, from its database only (read-only; works when it is stopped).

    The agent saves camera health every heartbeat interval, so the newest write tells
    whether it is alive: older than three intervals (and at least 30 s) means stopped or hung.

    Raises:
        StoreBusyError: another process held a lock that blocks readers past the wait.
        StoreError: there is no database yet, or it cannot be read.
    """
    now = time.time() if now is None else now
    with StoreView(db_path(cfg.storage.state_dir)) as view:
        return _status(view, cfg, now)


def _camera_rows(view: StoreView, times: list[float]) -> dict[str, Any]:
    cameras: dict[str, Any] = {}
    for camera, (updated, health) in sorted(view.camera_health().items()):
        times.append(updated)
        error = health.get("last_error")
        cameras[camera] = {
            "state": health.get("state"),
            "since": health.get("since"),
            "fps": health.get("fps"),
            "quality": health.get("quality"),
            "updated_at": updated,
            "last_error": redact_text(error) if error else None,
            "last_error_class": health.get("last_error_class"),
        }
    return cameras


def _backlog_rows(
    view: StoreView, now: float, times: list[float]
) -> tuple[dict[str, Any], float | None]:
    """Backlog per kind and the uptime the newest unsent heartbeat gives, if any."""
    backlog: dict[str, Any] = {}
    for kind, (count, oldest, newest) in view.backlog_span().items():
        backlog[kind] = {"messages": count, "oldest_age_s": round(now - oldest, 1)}
        times.append(newest)
    heartbeat = view.newest("heartbeat")
    if heartbeat is None:
        return backlog, None
    created, payload = heartbeat
    try:
        return backlog, float(json.loads(payload)["uptime_s"]) + (now - created)
    except (ValueError, KeyError, TypeError):
        return backlog, None


def _alert_rows(view: StoreView, times: list[float]) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = []
    for a_type, camera, zone, started, ended, raised in view.alert_spans(5):
        alerts.append(
            {"type": a_type, "camera": camera, "zone": zone, "started": started, "ended": ended}
        )
        times.extend(t for t in (raised, ended) if t is not None)
    return alerts


def pid_alive(pid: int) -> bool | None:
    """Whether process ``pid`` exists (None: cannot tell, e.g. another pid namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user (the service user)
    except OSError:
        return None
    return True


def _run_rows(view: StoreView, times: list[float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent's run record (pid, start) and its latest progress record, if saved."""
    records: dict[str, dict[str, Any]] = {}
    for key, (value, updated) in view.settings_at(("state.run", "state.progress")).items():
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict):
            records[key] = data
            times.append(updated)
    return records.get("state.run", {}), records.get("state.progress", {})


def _status(view: StoreView, cfg: AgentConfig, now: float) -> dict[str, Any]:
    path, tables = view.path, view.tables
    times: list[float] = []
    run, progress = _run_rows(view, times) if "settings" in tables else ({}, {})
    cameras = _camera_rows(view, times) if "camera_health" in tables else {}
    backlog, uptime = _backlog_rows(view, now, times) if "outbox" in tables else ({}, None)
    alerts = _alert_rows(view, times) if "alerts" in tables else []
    # The write-ahead log changes on every commit, also when acked rows are deleted.
    for file in (path, path.with_name(path.name + "-wal")):
        if file.exists():
            times.append(file.stat().st_mtime)
    last = max(times) if times else None
    stale_after = max(30.0, 3 * cfg.heartbeat.interval)
    age = None if last is None else max(0.0, now - last)
    running = age is not None and age <= stale_after
    pid = run.get("pid") if isinstance(run.get("pid"), int) else None
    alive = pid_alive(pid) if pid is not None else None
    if alive is False:
        running = False  # its process is gone, however fresh the files look
    if age is None:
        summary = "never ran (no state saved)"
    elif running:
        summary = f"running (state updated {ago(age)} ago)"
    elif alive:
        summary = f"hung: process {pid} alive but no update for {ago(age)}"
    else:
        summary = f"stopped (last update {ago(age)} ago)"
    started = run.get("started_at")
    if running and isinstance(started, int | float):
        uptime = now - started
    return {
        "running": running,
        "summary": summary,
        "last_update": last,
        "last_update_age_s": None if age is None else round(age, 1),
        "uptime_s": round(uptime, 1) if running and uptime is not None else None,
        "pid": pid,
        "pid_alive": alive,
        "version": run.get("version"),
        "model": run.get("model"),
        "analysed_per_s": progress.get("analysed_per_s"),
        "uplink_connected": progress.get("uplink_connected"),
        "uplink_last_error": (
            redact_text(str(progress["uplink_last_error"]))
            if progress.get("uplink_last_error")
            else None
        ),
        "database": str(path),
        "cameras": cameras,
        "backlog": backlog,
        "alerts": alerts,
    }
