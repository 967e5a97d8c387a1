"""The sound of an alarm: beep patterns, WAV reading and writing, the voice prompts.

A sound is the severity's beep pattern (synthesised here), a pause, the violation type's
voice prompt and, when one is configured, a recording naming the place. The built-in
prompts in ``agent/sounds`` are rendered at build time by ``scripts/tools/render_prompts.py``
(espeak-ng, Mandarin); a school's own recordings replace them via ``alarm.prompts``.
"""

from __future__ import annotations

import io
import threading
import wave
from importlib import resources
from pathlib import Path

import numpy as np

from agent.config import AlarmConfig, BeepConfig
from agent.errors import ConfigError

SAMPLE_RATE = 22050  # espeak-ng's rate; plenty for beeps up to 8 kHz and speech
#: The built-in voice prompts, by violation type (rendered into agent/sounds/<type>.wav).
PROMPT_TEXTS: dict[str, str] = {
    "no_hat": "请佩戴厨师帽",
    "no_mask": "请佩戴口罩",
    "food_uncovered": "请盖好食品",
    "no_uniform": "请穿工作服",
}
#: Why an alarm was not played (the ``reason`` of a suppressed or failed decision).
_BEEP_LEVEL = 0.6  # of full scale: loud, with headroom
_PROMPT_PEAK = 0.9  # prompts are normalised to this peak, so quiet recordings are audible
_FADE = 0.005  # seconds of raised-cosine ramp on each tone: no clicks
_PAUSE = 0.25  # seconds between the beeps and the words, and between two spoken parts


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
