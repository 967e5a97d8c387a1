"""The ``alarm`` section: the on-site alarm's beeps, sounder, prompts and limits (issue #8)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from agent.config.base import ConfigModel, Duration, SecretRef
from agent.config.rules import ScheduleWindow


class BeepConfig(ConfigModel):
    """One severity's beep pattern: ``count`` tones of ``frequency`` Hz, ``gap`` apart."""

    frequency: float = Field(default=1000.0, ge=100, le=8000, description="tone pitch, Hz")
    duration: Duration = Field(default=0.15, ge=0.02, le=2, description="length of one tone")
    count: int = Field(default=1, ge=1, le=10, description="tones in the pattern")
    gap: Duration = Field(default=0.1, ge=0.02, le=2, description="silence between two tones")


class BeepsConfig(ConfigModel):
    """Beep patterns by alert severity, so staff hear how urgent it is before the words."""

    info: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=880.0, duration=0.15, count=1),
        description="info alerts (default one 880 Hz beep of 150 ms)",
    )
    warning: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=1000.0, duration=0.15, count=2),
        description="warning alerts (default two 1 kHz beeps)",
    )
    critical: BeepConfig = Field(
        default_factory=lambda: BeepConfig(frequency=1500.0, duration=0.15, count=3),
        description="critical alerts (default three 1.5 kHz beeps)",
    )


class SounderConfig(ConfigModel):
    """What plays the alarm: the box's audio output, a network speaker, a program, or files."""

    kind: Literal["none", "alsa", "http", "command", "file"] = Field(
        default="none",
        description="none: no alarm sound (a box without a speaker); alsa: the box's audio "
        "output via aplay; http: upload the WAV to a network speaker; command: run a program "
        "with the WAV file; file: write WAV files to a directory (testing, demo)",
    )
    device: str = Field(
        default="",
        max_length=200,
        description="alsa: ALSA device for aplay -D (e.g. plughw:1,0); empty: the default device",
    )
    url: str = Field(
        default="", max_length=2000, description="http: http(s):// URL the WAV is sent to"
    )
    method: Literal["POST", "PUT"] = Field(default="POST", description="http: request method")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="http: extra request headers (no secrets here: use username/password)",
    )
    username: str = Field(default="", max_length=256, description="http: basic-auth user name")
    password: SecretRef | None = Field(
        default=None, description="http: basic-auth password (env, credential or file)"
    )
    command: tuple[str, ...] = Field(
        default=(),
        description="command: program and arguments; '{file}' is replaced by the WAV file's "
        "path (appended when absent)",
    )
    directory: Path | None = Field(default=None, description="file: where the WAV files go")
    timeout: Duration = Field(
        default=15.0, ge=1, le=120, description="longest one play may take before it is abandoned"
    )

    @model_validator(mode="after")
    def _needs(self) -> SounderConfig:
        if self.kind == "http":
            parts = urlsplit(self.url)
            if parts.scheme not in {"http", "https"} or not parts.hostname:
                raise ValueError("kind http needs url: http(s)://host/path")
            if parts.password is not None:
                raise ValueError("url contains a password: use username and password instead")
        if self.kind == "command" and not self.command:
            raise ValueError("kind command needs command: [program, arg, ...]")
        if self.kind == "file" and self.directory is None:
            raise ValueError("kind file needs directory")
        return self


class AlarmConfig(ConfigModel):
    """The on-site alarm: beeps and Mandarin voice prompts for kitchen staff (issue #8)."""

    enabled: bool = Field(default=True, description="sound the alarm when an alert starts")
    sounder: SounderConfig = Field(
        default_factory=SounderConfig, description="what plays the sound (default none)"
    )
    cooldown: Duration = Field(
        default=300.0,
        ge=0,
        le=86400,
        description="no second alarm for the same camera and violation type within this",
    )
    max_per_hour: int = Field(
        default=12, ge=1, le=3600, description="alarms played in any hour at most"
    )
    quiet_hours: tuple[ScheduleWindow, ...] = Field(
        default=(), description="weekly windows (identity.timezone) in which the alarm is silent"
    )
    beeps: BeepsConfig = Field(default_factory=BeepsConfig, description="beep pattern per severity")
    prompts: dict[str, Path] = Field(
        default_factory=dict,
        description="voice prompt WAV per violation type, replacing the built-in Mandarin one",
    )
    place_prompts: dict[str, Path] = Field(
        default_factory=dict,
        description="WAV naming a place, played after the prompt; key 'camera' or 'camera/zone'",
    )
    volume: float = Field(default=1.0, ge=0, le=1, description="loudness of the sound, 0..1")
    queue_size: int = Field(
        default=4, ge=1, le=100, description="alarms waiting to play; more are dropped and counted"
    )
