"""Turn per-frame detections into alerts: one real violation gives one alert, noise gives none.

Each (camera, violation type) pair has its own episode state:

* a frame *hits* when one of the rule's labels is detected at ``min_confidence`` or more
  (unset: the model manifest's threshold for that label, else 0.5);
* an episode starts at the first hit and lasts while hits keep coming with gaps no longer
  than ``clear_after`` (a detector misses a head now and then; that must not restart it);
* the alert is raised once the episode has lasted ``min_duration`` and the camera is out
  of the type's ``cooldown``; an episode raises at most one alert;
* the cooldown runs from the last alert of that type on that camera.

Times are monotonic seconds supplied by the caller, so the engine is deterministic and
property-testable; wall-clock times for the report are carried alongside.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.config import RuleConfig
from agent.detect import Detection

DEFAULT_MIN_CONFIDENCE = 0.5


@dataclass(frozen=True, slots=True)
class Alert:
    """A violation that passed its rule: to be stored, published and sounded."""

    id: str
    type: str
    severity: str
    camera_id: str
    started_at: float  # wall clock, first hit of the episode
    raised_at: float  # wall clock
    confidence: float  # best confidence seen in the episode
    detections: tuple[Detection, ...]  # the hits of the evidence frame
    frame: np.ndarray | None = field(repr=False, compare=False)  # BGR evidence frame
    frame_wall: float = 0.0  # when the evidence frame was decoded
    zone: str | None = None  # the camera zone the violation is in; None: the whole picture


@dataclass(slots=True)
class _Episode:
    first_mono: float
    last_mono: float
    best_confidence: float = 0.0
    best_frame: np.ndarray | None = None
    best_wall: float = 0.0
    best_hits: tuple[Detection, ...] = ()
    raised: bool = False


@dataclass(slots=True)
class _TrackState:
    episode: _Episode | None = None
    last_alert_mono: float | None = None


class RuleEngine:
    """Applies every enabled rule to each analysed frame of each camera."""

    def __init__(
        self, rules: Mapping[str, RuleConfig], label_thresholds: Mapping[str, float] | None = None
    ) -> None:
        self._label_thresholds = dict(label_thresholds or {})
        self.rules: dict[str, RuleConfig] = {}
        self._thresholds: dict[tuple[str, str], float] = {}
        self._states: dict[tuple[str, str], _TrackState] = {}
        # configure() runs on the command thread, update() on the detect thread.
        self._lock = threading.Lock()
        self.alerts_raised = 0
        self.suppressed_by_cooldown = 0
        self.configure(rules)

    def configure(self, rules: Mapping[str, RuleConfig]) -> None:
        """Replace the rules (a reload or a ``set``), keeping the state of rules that stay.

        An open episode and the cooldown of a rule that is kept carry on under its new
        parameters; the state of a removed or disabled rule is dropped.
        """
        enabled = {name: rule for name, rule in rules.items() if rule.enabled}
        # (rule, label) -> confidence a detection needs to count for that rule.
        thresholds = {
            (name, label): (
                rule.min_confidence
                if rule.min_confidence is not None
                else self._label_thresholds.get(label, DEFAULT_MIN_CONFIDENCE)
            )
            for name, rule in enabled.items()
            for label in rule.labels
        }
        with self._lock:
            self._states = {key: st for key, st in self._states.items() if key[1] in enabled}
            self._thresholds = thresholds
            self.rules = enabled

    def update(
        self,
        camera_id: str,
        detections: Sequence[Detection],
        *,
        mono: float,
        wall: float,
        frame: np.ndarray | None = None,
    ) -> list[Alert]:
        """Feed one analysed frame; return the alerts it completes (usually none)."""
        with self._lock:
            return self._update(camera_id, detections, mono=mono, wall=wall, frame=frame)

    def _update(
        self,
        camera_id: str,
        detections: Sequence[Detection],
        *,
        mono: float,
        wall: float,
        frame: np.ndarray | None,
    ) -> list[Alert]:
        alerts: list[Alert] = []
        for name, rule in self.rules.items():
            hits = tuple(
                d
                for d in detections
                if d.label in rule.labels and d.confidence >= self._thresholds[(name, d.label)]
            )
            state = self._states.setdefault((camera_id, name), _TrackState())
            alert = self._step(
                state, name, rule, camera_id=camera_id, hits=hits, mono=mono, wall=wall, frame=frame
            )
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _step(
        self,
        state: _TrackState,
        name: str,
        rule: RuleConfig,
        *,
        camera_id: str,
        hits: tuple[Detection, ...],
        mono: float,
        wall: float,
        frame: np.ndarray | None,
    ) -> Alert | None:
        episode = state.episode
        if episode is not None and mono - episode.last_mono > rule.clear_after:
            episode = state.episode = None  # the gap was too long: that episode is over
        if not hits:
            return None
        if episode is None:
            episode = state.episode = _Episode(first_mono=mono, last_mono=mono)
        episode.last_mono = mono
        best = max(d.confidence for d in hits)
        if best >= episode.best_confidence:
            episode.best_confidence = best
            episode.best_frame = frame
            episode.best_wall = wall
            episode.best_hits = hits
        if episode.raised or mono - episode.first_mono < rule.min_duration:
            return None
        if state.last_alert_mono is not None and mono - state.last_alert_mono < rule.cooldown:
            self.suppressed_by_cooldown += 1
            return None
        episode.raised = True
        state.last_alert_mono = mono
        self.alerts_raised += 1
        return Alert(
            id=uuid.uuid4().hex,
            type=name,
            severity=rule.severity,
            camera_id=camera_id,
            # From the monotonic clock, so duration is exact even if the wall clock steps.
            started_at=wall - (mono - episode.first_mono),
            raised_at=wall,
            confidence=episode.best_confidence,
            detections=episode.best_hits,
            frame=episode.best_frame,
            frame_wall=episode.best_wall,
        )

    def active(self, camera_id: str, mono: float) -> list[str]:
        """Violation types with an open episode on ``camera_id`` at time ``mono``."""
        out = []
        with self._lock:
            states, rules = dict(self._states), self.rules
        for (cam, name), state in states.items():
            ep = state.episode
            if (
                cam == camera_id
                and ep is not None
                and mono - ep.last_mono <= rules[name].clear_after
            ):
                out.append(name)
        return sorted(out)
