"""The records the stages hand each other: plain, immutable data, no I/O, no heavy imports.

Every stage may import this module (the import contracts allow it), so a record can cross a
wall without dragging its producer along: the MQTT side builds messages from these records
without importing the camera stack, the rules take detections without loading a model runtime.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Detection:
    """One detected object.

    ``box`` is (x1, y1, x2, y2) normalised to the original frame, each in 0..1.
    """

    label: str
    class_id: int
    confidence: float
    box: tuple[float, float, float, float]


class CameraState(str, enum.Enum):
    """What the platform is told about a camera."""

    CONNECTING = "connecting"
    ONLINE = "online"
    STALLED = "stalled"  # no frame for stall_timeout, not yet offline_after
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a camera's reported state."""

    camera_id: str
    old: CameraState
    new: CameraState
    wall: float
    reason: str
    last_frame_wall: float | None = None  # when the last frame before this change arrived


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message waiting in the outbox."""

    seq: int
    id: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    kind: str
    created_at: float
    attempts: int
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as stored locally (the outgoing message is stored beside it)."""

    id: str
    camera: str
    type: str
    severity: str
    started_at: float
    raised_at: float
    confidence: float
    detections: list[dict[str, Any]]
    evidence_path: str | None
    zone: str | None = None


@dataclass(frozen=True, slots=True)
class FoodRef:
    """One reference of a food zone: an image of the zone in a known state, and its features."""

    id: int
    camera: str
    zone: str
    state: str
    captured_at: float
    path: str
    features: bytes
    feature_kind: str


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One decision of the on-site alarm (table ``alarms``)."""

    ts: float  # wall clock of the decision (of the end of the play for played/failed)
    alert_id: str
    camera: str
    type: str
    decision: str  # played, suppressed, failed
    reason: str  # suppressed/failed: cooldown, quiet_hours, hourly_cap, muted, queue_full, ...
    sounder: str  # none, alsa, http, command, file
    duration_ms: int | None = None  # played/failed: how long the play took


@dataclass(frozen=True, slots=True)
class Outage:
    """A period during which a camera was reported offline."""

    camera: str
    since: float  # wall time of the last frame before the outage
    until: float | None  # None while it lasts
    duration_s: float | None
    reason: str  # error class when it went offline
    closed_by: str | None  # "frames" (the camera came back) or "agent_restart"


@dataclass(frozen=True, slots=True)
class EvidenceInfo:
    """What an alert message says about its evidence JPEG (the bytes travel as their own
    message); ``path`` is where the box keeps the file."""

    path: str
    width: int
    height: int
    size: int  # bytes of the JPEG
    sha256: str
    source: str = "sub"  # which stream the picture came from: "sub" (detection) or "main"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert's start (``phase`` start) or end (``phase`` end) as the platform is told of it:
    the rule engine's alert without its frame."""

    id: str
    type: str
    severity: str
    camera_id: str
    started_at: float  # wall clock, first hit of the episode
    raised_at: float  # wall clock of the frame that started the alert
    confidence: float  # best confidence seen in the episode
    detections: tuple[Detection, ...]  # the hits of the evidence frame
    zone: str | None = None  # the camera zone the violation is in; None: the whole picture
    phase: Literal["start", "end"] = "start"
    ended_at: float | None = None  # end events: the last time the violation was seen
    end_reason: str = ""  # end events: cleared, rule_disabled, agent_stop
    hits: int = 0  # frames that saw the violation in this episode (so far)
