"""The on-site alarm (issue #8): beeps and Mandarin voice prompts for the kitchen staff.

When an alert **starts**, :class:`Alarm` decides whether to sound it (mute, quiet hours,
a cooldown per camera and violation type, a cap per hour, in that order), and a worker
thread plays it through the configured :class:`Sounder`; the caller only enqueues, so a
slow or broken speaker never holds up the pipeline. A full queue drops the alarm and
counts it. Every decision, played or not and why, is a row in the ``alarms`` table.

A sound is the severity's beep pattern (synthesised here), a pause, the violation type's
voice prompt and, when one is configured, a recording naming the place. The built-in
prompts in ``agent/sounds`` are rendered at build time by ``scripts/render_prompts.py``
(espeak-ng, Mandarin); a school's own recordings replace them via ``alarm.prompts``.

The box's own audio output is driven by ``aplay`` (alsa-utils) in a child process rather
than a Python audio library: no extra compiled dependency (simpleaudio is unmaintained,
sounddevice/pyaudio need PortAudio), a wedged ALSA device can be killed at the timeout
without taking a thread of ours with it, and ``-D`` names any ALSA device or plug.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import logging
import queue
import re
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from agent.config import AlarmConfig, BeepConfig, SounderConfig
from agent.errors import ConfigError, OutboxError, SounderError
from agent.records import AlarmRecord
from agent.redact import MASK, redact_url
from agent.rules.engine import Alert
from agent.store.outbox import Outbox
from agent.uplink.overrides import Mute

logger = logging.getLogger(__name__)

SAMPLE_RATE = 22050  # espeak-ng's rate; plenty for beeps up to 8 kHz and speech
#: The built-in voice prompts, by violation type (rendered into agent/sounds/<type>.wav).
PROMPT_TEXTS: dict[str, str] = {
    "no_hat": "请佩戴厨师帽",
    "no_mask": "请佩戴口罩",
    "food_uncovered": "请盖好食品",
    "no_uniform": "请穿工作服",
}
#: Why an alarm was not played (the ``reason`` of a suppressed or failed decision).
REASONS = ("muted", "quiet_hours", "cooldown", "hourly_cap", "queue_full", "sounder_failed")
_BEEP_LEVEL = 0.6  # of full scale: loud, with headroom
_PROMPT_PEAK = 0.9  # prompts are normalised to this peak, so quiet recordings are audible
_FADE = 0.005  # seconds of raised-cosine ramp on each tone: no clicks
_PAUSE = 0.25  # seconds between the beeps and the words, and between two spoken parts
_HOUR = 3600.0


# --------------------------------------------------------------------------- sounds


def beep_pattern(beep: BeepConfig, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``beep.count`` sine tones of ``beep.frequency`` Hz, ``beep.gap`` apart, as float32."""
    n = round(beep.duration * rate)
    t = np.arange(n) / rate
    tone = np.sin(2 * np.pi * beep.frequency * t) * _BEEP_LEVEL
    ramp = min(round(_FADE * rate), n // 2)
    if ramp:
        fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        tone[:ramp] *= fade
        tone[n - ramp :] *= fade[::-1]
    gap = np.zeros(round(beep.gap * rate))
    parts: list[np.ndarray] = []
    for i in range(beep.count):
        if i:
            parts.append(gap)
        parts.append(tone)
    return np.concatenate(parts).astype(np.float32)


def read_wav(data: bytes, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a PCM WAV (8/16/32-bit, any channels and rate) to mono float32 at ``rate``.

    Raises:
        ValueError: not a PCM WAV file this can read.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            width, channels = wav.getsampwidth(), wav.getnchannels()
            source_rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV file: {exc}") from None
    if width == 1:
        samples = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768
    elif width == 4:
        samples = np.frombuffer(frames, "<i4").astype(np.float32) / 2147483648
    else:
        raise ValueError(f"unsupported sample width: {8 * width} bit")
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples
    if source_rate != rate and mono.size:
        # Linear interpolation: good enough for speech recordings (8-48 kHz).
        count = round(mono.size * rate / source_rate)
        mono = np.interp(np.arange(count) * source_rate / rate, np.arange(mono.size), mono).astype(
            np.float32
        )
    return mono


def to_wav(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Encode float samples (-1..1) as a 16-bit mono PCM WAV file."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())
    return buffer.getvalue()


def builtin_prompt(kind: str) -> bytes | None:
    """The shipped WAV voice prompt for violation type ``kind``, or None when there is none."""
    if kind not in PROMPT_TEXTS:
        return None
    try:
        return resources.files("agent").joinpath("sounds").joinpath(f"{kind}.wav").read_bytes()
    except OSError:
        return None


def _normalised(samples: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return samples * (_PROMPT_PEAK / peak) if peak > 0 else samples


def _load_file(path: Path, where: str) -> np.ndarray:
    try:
        return _normalised(read_wav(path.read_bytes()))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {path}: {exc}") from None


class SoundBank:
    """Renders the sound of an alarm: beeps, pause, voice prompt, pause, place name."""

    def __init__(self, config: AlarmConfig, rate: int = SAMPLE_RATE) -> None:
        """Load the voice prompts (built-in ones, then the config's replacements).

        Raises:
            ConfigError: a configured recording cannot be read or is not a PCM WAV.
        """
        self.config = config
        self.rate = rate
        self.prompts: dict[str, np.ndarray] = {}
        for kind in PROMPT_TEXTS:
            data = builtin_prompt(kind)
            if data is not None:
                self.prompts[kind] = _normalised(read_wav(data, rate))
        for kind, path in config.prompts.items():
            self.prompts[kind] = _load_file(path, f"alarm.prompts.{kind}")
        self.places = {
            key: _load_file(path, f"alarm.place_prompts.{key}")
            for key, path in config.place_prompts.items()
        }
        self._cache: dict[tuple[str, str, str, str | None], bytes] = {}
        self._lock = threading.Lock()

    def beeps(self, severity: str) -> BeepConfig:
        """The beep pattern of ``severity`` (warning's for an unknown severity)."""
        beeps = self.config.beeps
        return {"info": beeps.info, "critical": beeps.critical}.get(severity, beeps.warning)

    def render(
        self, severity: str, kind: str | None, camera: str = "", zone: str | None = None
    ) -> bytes:
        """The WAV file for an alarm; ``kind`` None (or without a prompt): beeps only."""
        key = (severity, kind or "", camera, zone)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        pause = np.zeros(round(_PAUSE * self.rate), np.float32)
        parts = [beep_pattern(self.beeps(severity), self.rate)]
        prompt = self.prompts.get(kind or "")
        if prompt is not None:
            parts += [pause, prompt]
            place = self.places.get(f"{camera}/{zone}") if zone else None
            if place is None:
                place = self.places.get(camera)
            if place is not None:
                parts += [pause, place]
        data = to_wav(np.concatenate(parts) * self.config.volume, self.rate)
        with self._lock:
            if len(self._cache) > 256:  # cameras x zones x types: bounded anyway, but be safe
                self._cache.clear()
            self._cache[key] = data
        return data


# --------------------------------------------------------------------------- sounders


class Sounder:
    """Plays a WAV file somewhere; :class:`NullSounder` (kind none) plays nothing."""

    kind = "none"

    def play(self, wav: bytes, label: str) -> None:
        """Play ``wav`` and return when it has been played (or handed over).

        ``label`` names the alarm (``camera-type``) for file names and messages.

        Raises:
            SounderError: it could not be played.
        """

    def cancel(self) -> None:
        """Abandon a play in progress (at shutdown); a no-op where nothing can be abandoned."""

    def describe(self) -> str:
        """Where the sound goes, without secrets."""
        return self.kind


NullSounder = Sounder


class _ProcessSounder(Sounder):
    """A sounder that runs a program, killed when it takes longer than the timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def _run(self, argv: list[str], stdin: bytes | None) -> None:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise SounderError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        with self._lock:
            self._proc = proc
        try:
            _, stderr = proc.communicate(stdin, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise SounderError(f"{argv[0]} took longer than {self.timeout:g} s") from None
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise SounderError(
                f"{argv[0]} exited with {proc.returncode}"
                + (f": {' | '.join(tail)}" if tail else "")
            )

    def cancel(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


class AlsaSounder(_ProcessSounder):
    """The box's own audio output: ``aplay`` reads the WAV from its standard input."""

    kind = "alsa"

    def __init__(self, device: str, timeout: float) -> None:
        super().__init__(timeout)
        self.device = device

    def play(self, wav: bytes, label: str) -> None:
        argv = ["aplay", "-q", *(["-D", self.device] if self.device else []), "-"]
        self._run(argv, wav)

    def describe(self) -> str:
        return f"alsa:{self.device or 'default'}"


class CommandSounder(_ProcessSounder):
    """Any program that plays a file: ``{file}`` in its arguments is the WAV's path."""

    kind = "command"

    def __init__(self, command: tuple[str, ...], timeout: float) -> None:
        super().__init__(timeout)
        self.command = command

    def play(self, wav: bytes, label: str) -> None:
        with tempfile.TemporaryDirectory(prefix="mclz-alarm-") as tmp:
            path = Path(tmp) / f"{_safe(label)}.wav"
            path.write_bytes(wav)
            argv = [part.replace("{file}", str(path)) for part in self.command]
            if not any("{file}" in part for part in self.command):
                argv.append(str(path))
            self._run(argv, None)

    def describe(self) -> str:
        return f"command:{self.command[0]}"


def display_url(url: str) -> str:
    """``url`` fit for logs: password and query string (tokens) masked."""
    parts = urlsplit(redact_url(url))
    return urlunsplit(parts._replace(query=MASK if parts.query else ""))


class HttpSounder(Sounder):
    """A network speaker or a camera's audio output that takes a WAV upload over HTTP."""

    kind = "http"

    def __init__(
        self,
        url: str,
        method: str,
        headers: dict[str, str],
        *,
        timeout: float,
        username: str = "",
        password: str | None = None,
    ) -> None:
        self.url = url
        self.method = method
        self.headers = {"Content-Type": "audio/wav", **headers}
        if username or password:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
        self.timeout = timeout

    def play(self, wav: bytes, label: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked in the config
            self.url, data=wav, method=self.method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                response.read()
        except urllib.error.HTTPError as exc:
            raise SounderError(f"{display_url(self.url)} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise SounderError(f"{display_url(self.url)} unreachable: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise SounderError(f"{display_url(self.url)} failed: {exc}") from None

    def describe(self) -> str:
        return f"http:{display_url(self.url)}"


class FileSounder(Sounder):
    """Writes each sound to a WAV file in a directory: what would have been played."""

    kind = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._seq = 0

    def play(self, wav: bytes, label: str) -> None:
        self._seq += 1
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.directory / f"{stamp}-{self._seq:04d}-{_safe(label)}.wav"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(wav)
        except OSError as exc:
            raise SounderError(f"cannot write {path}: {exc.strerror}") from exc

    def describe(self) -> str:
        return f"file:{self.directory}"


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:100] or "alarm"


def make_sounder(config: SounderConfig) -> Sounder:
    """The sounder the config asks for.

    Raises:
        SecretError: the HTTP password cannot be resolved.
    """
    if config.kind == "alsa":
        return AlsaSounder(config.device, config.timeout)
    if config.kind == "command":
        return CommandSounder(config.command, config.timeout)
    if config.kind == "http":
        password = config.password.resolve("alarm.sounder.password") if config.password else None
        return HttpSounder(
            config.url,
            config.method,
            config.headers,
            timeout=config.timeout,
            username=config.username,
            password=password,
        )
    if config.kind == "file" and config.directory is not None:
        return FileSounder(config.directory)
    return NullSounder()


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class _Job:
    alert_id: str
    camera: str
    type: str
    severity: str
    zone: str | None


class Alarm:
    """Decides which starting alerts sound the alarm, and plays them on a worker thread."""

    def __init__(
        self,
        config: AlarmConfig,
        outbox: Outbox,
        mute: Mute,
        *,
        tz: tzinfo,
        clock: Callable[[], float] = time.time,
        sounder: Sounder | None = None,
    ) -> None:
        """Load the sounds and the recent plays (cooldowns and the hourly cap outlive a restart).

        Raises:
            ConfigError: a configured recording cannot be read.
            SecretError: the sounder's password cannot be resolved.
            OutboxError: the database cannot be read.
        """
        self.config = config
        self.outbox = outbox
        self.mute = mute
        self.tz = tz
        self.clock = clock
        self.sounder = sounder if sounder is not None else make_sounder(config.sounder)
        self.active = config.enabled and (sounder is not None or config.sounder.kind != "none")
        self.sounds = SoundBank(config)
        # None wakes the worker at stop; it is put only when there is room.
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=config.queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts: collections.Counter[str] = collections.Counter()
        self._last: dict[tuple[str, str], float] = {}  # (camera, type) -> last alarm queued
        self._recent: collections.deque[float] = collections.deque()  # alarms of the last hour
        now = clock()
        for row in reversed(outbox.alarms(limit=10000, since=now - max(config.cooldown, _HOUR))):
            if row.decision == "played":
                self._last[(row.camera, row.type)] = row.ts
                self._recent.append(row.ts)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker thread that plays queued alarms."""
        if self._thread is None and self.active:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="alarm", daemon=True)
            self._thread.start()
            logger.info("on-site alarm ready: %s", self.sounder.describe())

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: a play in progress is abandoned, queued alarms are dropped."""
        self._stop.set()
        self.sounder.cancel()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("alarm thread did not stop within %.1f s", timeout)
            self._thread = None

    # ------------------------------------------------------------------ deciding

    def on_alert(self, alert: Alert) -> str | None:
        """Decide on a committed alert; return "queued", the reason it is not, or None.

        Never blocks on the sounder and never raises for a database or sounder problem:
        the alarm must not hold up the pipeline. None: not the alarm's business (an end
        event, or the alarm is off or has no sounder).
        """
        if alert.phase != "start" or not self.active:
            return None
        now = self.clock()
        key = (alert.camera_id, alert.type)
        try:
            self.mute.refresh()  # `mclz-agent alarm mute` writes it from another process
        except OutboxError as exc:
            logger.warning("cannot re-read the alarm mute: %s", exc)
        job = _Job(alert.id, alert.camera_id, alert.type, alert.severity, alert.zone)
        with self._lock:
            while self._recent and self._recent[0] <= now - _HOUR:
                self._recent.popleft()
            reason = self._suppress_reason(key, now)
            if reason is None:
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    reason = "queue_full"
                else:
                    self._last[key] = now
                    self._recent.append(now)
            if reason is not None:
                self._counts[reason] += 1
        if reason is None:
            return "queued"
        logger.info("alarm for %s on camera %s not played: %s", alert.type, alert.camera_id, reason)
        self._record(job, "suppressed", reason, now)
        return reason

    def _suppress_reason(self, key: tuple[str, str], now: float) -> str | None:
        if self.mute.muted(now):
            return "muted"
        local = datetime.fromtimestamp(now, self.tz)
        minute = local.hour * 60 + local.minute
        if any(w.contains(local.weekday(), minute) for w in self.config.quiet_hours):
            return "quiet_hours"
        last = self._last.get(key)
        if last is not None and now - last < self.config.cooldown:
            return "cooldown"
        if len(self._recent) >= self.config.max_per_hour:
            return "hourly_cap"
        return None

    # ------------------------------------------------------------------ playing

    def play_now(
        self, kind: str | None, severity: str = "warning", camera: str = "", zone: str | None = None
    ) -> float:
        """Play an alarm's sound synchronously (``mclz-agent alarm test``); return seconds taken.

        Raises:
            SounderError: the sounder failed.
        """
        wav = self.sounds.render(severity, kind, camera, zone)
        started = time.monotonic()
        self.sounder.play(wav, f"{camera or 'test'}-{kind or severity}")
        return time.monotonic() - started

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if job is None or self._stop.is_set():
                break
            try:
                self._play(job)
            except Exception:  # the top of the thread: a bug must not end the alarm
                logger.exception("alarm for %s on camera %s failed", job.type, job.camera)
                with self._lock:
                    self._counts["sounder_failed"] += 1
        dropped = self._queue.qsize()
        if dropped:
            logger.info("%d queued alarm(s) dropped at stop", dropped)

    def _play(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            self.play_now(job.type, job.severity, job.camera, job.zone)
        except SounderError as exc:
            ms = round(1000 * (time.monotonic() - started))
            with self._lock:
                self._counts["sounder_failed"] += 1
            logger.warning(
                "alarm for %s on camera %s: %s failed: %s",
                job.type,
                job.camera,
                self.sounder.kind,
                exc,
            )
            self._record(job, "failed", "sounder_failed", self.clock(), ms)
            return
        ms = round(1000 * (time.monotonic() - started))
        with self._lock:
            self._counts["played"] += 1
        logger.info("alarm played for %s on camera %s (%d ms)", job.type, job.camera, ms)
        self._record(job, "played", "", self.clock(), ms)

    def _record(
        self, job: _Job, decision: str, reason: str, ts: float, duration_ms: int | None = None
    ) -> None:
        record = AlarmRecord(
            ts, job.alert_id, job.camera, job.type, decision, reason, self.sounder.kind, duration_ms
        )
        try:
            self.outbox.record_alarm(record)
        except OutboxError as exc:
            logger.warning("cannot record the alarm decision for camera %s: %s", job.camera, exc)

    # ------------------------------------------------------------------ reporting

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat: played, each suppression reason, and waiting alarms."""
        with self._lock:
            out = {"played": self._counts["played"]}
            out.update({reason: self._counts[reason] for reason in REASONS})
        out["queued"] = self._queue.qsize()
        return out
