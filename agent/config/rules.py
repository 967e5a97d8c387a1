"""The ``rules`` and ``schedules`` sections: violation types and the weekly windows they keep."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from agent.config.base import ConfigModel, Duration

Consensus = tuple[int, int]
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _parse_days(value: object) -> object:
    """``[mon, wed-fri]`` -> ``(0, 2, 3, 4)``; ranges may wrap (``sat-mon``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return value
    days: set[int] = set()
    for item in value:
        if not isinstance(item, str):
            return value  # let pydantic report the type
        first, _, last = item.strip().lower().partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown day {item!r} (mon, tue, ... sun, or a range mon-fri)")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return tuple(sorted(days))


def _minutes(text: str) -> int:
    match = _HHMM.match(text)
    if match is None or (match.group(1) == "24" and match.group(2) != "00"):
        raise ValueError(f"time {text!r} must be HH:MM (00:00 .. 24:00)")
    return int(match.group(1)) * 60 + int(match.group(2))


class ScheduleWindow(ConfigModel):
    """A weekly time window in the box's time zone; end <= start runs past midnight."""

    days: Annotated[tuple[int, ...], BeforeValidator(_parse_days)] = Field(
        default=(0, 1, 2, 3, 4, 5, 6),
        description="days the window starts on: [mon, ..., sun] or ranges like mon-fri",
    )
    start: str = Field(description="HH:MM local time")
    end: str = Field(description="HH:MM local time; at or before start: ends the next day")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, text: str) -> str:
        _minutes(text)
        return text

    def contains(self, weekday: int, minute: int) -> bool:
        """Whether local ``weekday`` (0 = Monday) at ``minute`` of the day is in the window."""
        start, end = _minutes(self.start), _minutes(self.end)
        if start < end:
            return weekday in self.days and start <= minute < end
        # Past midnight (or a whole day when start == end): the tail belongs to the day before.
        return (weekday in self.days and minute >= start) or (
            (weekday - 1) % 7 in self.days and minute < end
        )


class RuleConfig(ConfigModel):
    """One violation type: which detections count, for how long, and how often to alert."""

    enabled: bool = Field(default=True, description="raise alerts of this type")
    labels: tuple[str, ...] = Field(min_length=1, description="model labels that count as this")
    min_confidence: float | None = Field(
        default=None,
        ge=0.01,
        le=1,
        description="per-detection threshold; unset: the model's threshold for the label, else 0.5",
    )
    min_duration: Duration = Field(
        default=3.0, ge=0, le=86400, description="seen this long before an alert is raised"
    )
    end_after: Duration = Field(
        default=10.0,
        ge=0,
        le=86400,
        description="unseen this long ends the episode (and ends a raised alert)",
    )
    consensus: Consensus | None = Field(
        default=None,
        description="also require [hits, of]: at least hits of the last `of` checks saw it",
    )
    cooldown: Duration = Field(
        default=600.0,
        ge=0,
        le=7 * 86400,
        description="no new alert of this type in this camera zone within this after one started",
    )
    severity: Literal["info", "warning", "critical"] = Field(
        default="warning", description="how urgent the platform should treat it"
    )
    zones: tuple[str, ...] = Field(
        default=(),
        description=(
            "only in these zones (ids of the camera's zones; '@food': all its food zones);"
            " empty: the whole picture"
        ),
    )
    zone_anchor: Literal["bottom_center", "overlap"] = Field(
        default="bottom_center",
        description=(
            "bottom_center: the box's bottom-centre point must be in the zone (where a person"
            " stands or an object rests); overlap: at least min_overlap of the box is in it"
        ),
    )
    min_overlap: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="share of the box inside the zone (zone_anchor overlap)",
    )
    schedule: str | None = Field(
        default=None, description="name in schedules: alert only then; unset: always"
    )
    box_height: tuple[float, float] = Field(
        default=(0.0, 1.0),
        description="plausible box heights [min, max] as fractions of the picture height",
    )

    @field_validator("consensus")
    @classmethod
    def _consensus(cls, value: Consensus | None) -> Consensus | None:
        if value is not None and not 1 <= value[0] <= value[1] <= 1000:
            raise ValueError("consensus must be [hits, of] with 1 <= hits <= of <= 1000")
        return value

    @field_validator("box_height")
    @classmethod
    def _box_height(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 1:
            raise ValueError("box_height must be [min, max] with 0 <= min < max <= 1")
        return value


FOOD_ZONES = "@food"  # in a rule's zones: every food zone (food: true) of the camera


def default_rules() -> dict[str, RuleConfig]:
    """The violation types a file without ``rules:`` gets: no_hat, no_mask, food_uncovered."""
    return {
        "no_hat": RuleConfig(labels=("head_bare",)),
        "no_mask": RuleConfig(labels=("face_no_mask",)),
        # Food is uncovered for a moment whenever a dish is served or refilled: minutes, not
        # seconds, before it is a violation; a person reaching over the tray (unknown) for
        # up to a minute does not end the episode.
        "food_uncovered": RuleConfig(
            labels=("food_uncovered",),
            min_duration=300.0,
            end_after=60.0,
            cooldown=1800.0,
            zones=(FOOD_ZONES,),
            zone_anchor="overlap",
            min_overlap=0.4,
        ),
    }
