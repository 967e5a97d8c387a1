"""Turn per-frame detections into alerts: one real violation gives one alert, noise gives none.

A *track* is one (camera, rule, zone) triple; the zone is ``None`` when the rule watches
the whole picture. Per analysed frame of a camera:

1. detections in the camera's exclusion areas (posters, TVs) are dropped;
2. a detection *hits* a rule when its label is one of the rule's, its confidence reaches
   ``min_confidence`` (unset: the model manifest's threshold for the label, else 0.5), its
   box height is within ``box_height`` (a face or head must be plausibly a person in the
   kitchen, not a speck or the whole picture) and it is in the zone (see ``agent.rules.zones``);
3. an episode starts at the first hit and lasts while hits keep coming with gaps no longer
   than ``end_after`` (a detector misses a head now and then; that must not restart it);
4. the alert **starts** once the episode has lasted ``min_duration`` (counted as below,
   from two hits on) and, when ``consensus: [m, n]`` is set, at least m of the track's
   last n checks hit; and only inside the rule's ``schedule`` and out of the track's
   ``cooldown`` (counted from the previous alert's start); an episode raises at most one
   alert;
5. while the violation persists the best frame (highest confidence) is kept; the alert
   **ends** when the violation has been unseen for ``end_after`` (also when no frames
   arrive at all: :meth:`RuleEngine.expire`), when its rule is disabled, or when the agent
   stops. The end event carries the last time it was seen and, when a better frame came
   after the start, that frame as new evidence.

**How long an episode has lasted, when it is only seen at analysed frames.** The engine
sees a camera once per frame the detect thread takes from it (a frame the change gate
skips comes with the last detections): every ``detect_interval``, stretched by the load
governor (``agent.detect.gate``), or every keyframe, with some jitter either way. A
violation seen in N consecutive frames lasted about N intervals, not the N - 1 between its
first and last hit. Measuring first to last hit made milliseconds decide: on a group video
a man took his mask off for about 4 s, four times; each time 4 consecutive frames (0.97 s
apart) saw him, but the hits spanned 2.92 s against ``min_duration: 3s``: one alert, three
missed. So an episode runs from the camera's last frame *before* its first hit (that frame
did not see it: the violation began after it) to its latest hit, i.e. first to last hit
plus the gap that led up to the first hit. The gap comes from the frame times themselves
(:class:`_Cadence`), so it follows ``detect_interval``, the governor's stretch, keyframe
decoding and dropped frames without being told. It counts for at most ``MAX_LEAD_GAPS``
times the camera's median gap, so a stall or a reconnect just before the first hit does
not count time nobody watched; at a camera's very first frame the median gap stands in.

What this guarantees: with frames I seconds apart, each up to j <= I / 10 off its
schedule, a violation that truly lasts T measures more than T - I - 2j and less than
T + I + 2j. It therefore always alerts when T >= min_duration + I + 2j and never when
T <= min_duration - I - 2j (exactly +-I without jitter). No rule can promise a narrower
band: when the gaps on both sides of the hits are I + 2j, the very same frames come from
violations nearly I + 2j shorter and nearly I + 2j longer than their midpoint, which can
be ``min_duration``. Inside the band either outcome is right; the comparison is
inclusive, so 3 hits exactly 1 s apart meet 3 s (and 3 hits 0.97 s apart, 2.91 s, do
not). Deciding on a hit count instead would need the interval anyway to turn
``min_duration`` into frames, and would not tolerate the missed frames of step 3.

A positive ``min_duration`` also needs two hits: one frame shows no persistence however
long the interval it stands for, and single frames are where the detector's false
positives live.

Times are monotonic seconds supplied by the caller, so the engine is deterministic and
property-testable; wall-clock times for the report are carried alongside.
"""

from __future__ import annotations

import collections
import statistics
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Literal

import numpy as np

from agent.config import FOOD_ZONES, CameraConfig, RuleConfig, ScheduleWindow
from agent.records import AlertEvent, Detection
from agent.rules.zones import Point, box_in_zone, excluded

DEFAULT_MIN_CONFIDENCE = 0.5
#: The gap before an episode's first hit counts for at most this many of the camera's usual
#: gaps. Jitter of +-10 % makes a gap at most 1.2 / 0.8 = 1.5 times the median, so it never
#: binds then; a stall, a reconnect or a dropped frame before the first hit is cut to it.
MAX_LEAD_GAPS = 1.5
#: Frame gaps per camera whose median is its usual gap: enough to ride out a dropped frame
#: or a reconnect, few enough to follow the load governor within seconds.
CADENCE_WINDOW = 9

Phase = Literal["start", "end"]


@dataclass(frozen=True, slots=True)
class Alert:
    """A violation that passed its rule (``phase`` start), or its end (``phase`` end)."""

    id: str
    type: str
    severity: str
    camera_id: str
    started_at: float  # wall clock, first hit of the episode
    raised_at: float  # wall clock of the frame that started the alert
    confidence: float  # best confidence seen in the episode
    detections: tuple[Detection, ...]  # the hits of the evidence frame
    frame: np.ndarray | None = field(repr=False, compare=False)  # BGR evidence frame
    frame_wall: float = 0.0  # when the evidence frame was decoded
    zone: str | None = None  # the camera zone the violation is in; None: the whole picture
    phase: Phase = "start"
    ended_at: float | None = None  # end events: the last time the violation was seen
    end_reason: str = ""  # end events: cleared, rule_disabled, agent_stop
    hits: int = 0  # frames that saw the violation in this episode (so far)

    def event(self) -> AlertEvent:
        """The alert as the MQTT messages take it (agent.records): without its frame."""
        return AlertEvent(
            id=self.id,
            type=self.type,
            severity=self.severity,
            camera_id=self.camera_id,
            started_at=self.started_at,
            raised_at=self.raised_at,
            confidence=self.confidence,
            detections=self.detections,
            zone=self.zone,
            phase=self.phase,
            ended_at=self.ended_at,
            end_reason=self.end_reason,
            hits=self.hits,
        )


@dataclass(slots=True)
class _Cadence:
    """When one camera's frames reach the engine: the latest one and the gaps between them."""

    last_mono: float | None = None
    gaps: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=CADENCE_WINDOW)
    )

    def tick(self, mono: float) -> float | None:
        """Record a frame at ``mono``; the gap since the previous one (None: none, or no gap)."""
        previous, self.last_mono = self.last_mono, mono
        if previous is None or mono <= previous:
            return None
        self.gaps.append(mono - previous)
        return mono - previous

    def usual(self) -> float:
        """The median of the latest gaps (0.0 before the second frame)."""
        return statistics.median(self.gaps) if self.gaps else 0.0


@dataclass(slots=True)
class _Episode:
    first_mono: float
    first_wall: float
    last_mono: float
    last_wall: float
    lead: float | None = None  # gap from the camera's previous frame to the first hit
    hits: int = 0
    best_confidence: float = 0.0
    best_frame: np.ndarray | None = None
    best_wall: float = 0.0
    best_hits: tuple[Detection, ...] = ()
    alert: Alert | None = None  # the started alert, until it ends
    improved: bool = False  # a better frame came after the alert started
    suppressed: bool = False  # already counted as suppressed by the cooldown


@dataclass(slots=True)
class _Track:
    episode: _Episode | None = None
    last_start_mono: float | None = None
    window: collections.deque[bool] = field(default_factory=collections.deque)


@dataclass(frozen=True, slots=True)
class _Target:
    """A rule as it applies on one camera: merged parameters and the zones it watches."""

    rule: RuleConfig
    zones: tuple[tuple[str | None, tuple[Point, ...]], ...]  # (zone id, polygon); None: all


def effective_camera_rule(rule: RuleConfig, camera: CameraConfig | None, name: str) -> RuleConfig:
    """``rule`` with the camera's own values for it (``cameras.<id>.rules.<name>``)."""
    if camera is None or name not in camera.rules:
        return rule
    own = camera.rules[name].model_dump(exclude_none=True)
    return rule.model_copy(update=own)


def in_schedule(windows: Sequence[ScheduleWindow], wall: float, tz: tzinfo | None) -> bool:
    """Whether ``wall`` (epoch seconds) falls in one of ``windows`` in time zone ``tz``."""
    local = datetime.fromtimestamp(wall, tz)
    minute = local.hour * 60 + local.minute
    return any(window.contains(local.weekday(), minute) for window in windows)


def _lasted(episode: _Episode, min_duration: float, cadence: _Cadence) -> bool:
    """Whether ``episode`` has lasted ``min_duration``: from the camera's frame before its
    first hit to its latest hit (see the module docstring), with two hits at least."""
    if min_duration <= 0:
        return True
    if episode.hits < 2:
        return False
    usual = cadence.usual()
    lead = usual if episode.lead is None else min(episode.lead, MAX_LEAD_GAPS * usual)
    return episode.last_mono - episode.first_mono + lead >= min_duration


class RuleEngine:
    """Applies every enabled rule to each analysed frame of each camera."""

    def __init__(
        self,
        rules: Mapping[str, RuleConfig],
        label_thresholds: Mapping[str, float] | None = None,
        *,
        cameras: Mapping[str, CameraConfig] | None = None,
        schedules: Mapping[str, Sequence[ScheduleWindow]] | None = None,
        tz: tzinfo | None = None,
    ) -> None:
        """``cameras`` give zones and per-camera rule values; other cameras use the rules as is."""
        self._label_thresholds = dict(label_thresholds or {})
        self.tz = tz
        self.rules: dict[str, RuleConfig] = {}
        self._cameras: dict[str, CameraConfig] = {}
        self._schedules: dict[str, tuple[ScheduleWindow, ...]] = {}
        self._targets: dict[str, dict[str, _Target | None]] = {}  # camera -> rule -> target
        self._labels: dict[str, frozenset[str]] = {}  # camera -> labels its rules look at
        self._tracks: dict[tuple[str, str, str | None], _Track] = {}
        self._cadences: dict[str, _Cadence] = {}  # camera -> its frame gaps
        # configure() runs on the command thread, update() on the detect thread.
        self._lock = threading.Lock()
        self.alerts_raised = 0
        self.alerts_ended = 0
        self.suppressed_by_cooldown = 0
        self.outside_schedule = 0  # frames whose hits a schedule ignored
        self.excluded = 0  # detections dropped in exclusion areas
        self.implausible_size = 0  # detections dropped by box_height
        self.configure(rules, cameras=cameras or {}, schedules=schedules or {})

    # ------------------------------------------------------------------ configuration

    def configure(
        self,
        rules: Mapping[str, RuleConfig],
        *,
        cameras: Mapping[str, CameraConfig] | None = None,
        schedules: Mapping[str, Sequence[ScheduleWindow]] | None = None,
        wall: float = 0.0,
    ) -> list[Alert]:
        """Replace the rules (a reload or a ``set``), keeping the state of tracks that stay.

        ``cameras`` and ``schedules`` left as None keep the current ones. An open episode
        and the cooldown of a track that is kept carry on under its new parameters; a
        track whose rule, camera or zone is gone is dropped, and its running alert ends
        (returned, with reason ``rule_disabled``; ``wall`` is the time it is ended at).
        """
        with self._lock:
            self.rules = {name: rule for name, rule in rules.items() if rule.enabled}
            if cameras is not None:
                self._cameras = dict(cameras)
            if schedules is not None:
                self._schedules = {name: tuple(w) for name, w in schedules.items()}
            self._targets = {}
            self._labels = {}
            kept: dict[tuple[str, str, str | None], _Track] = {}
            ended: list[Alert] = []
            for key, track in self._tracks.items():
                camera_id, name, zone = key
                target = self._target(camera_id, name)
                if target is not None and any(z == zone for z, _ in target.zones):
                    kept[key] = track
                elif track.episode is not None and track.episode.alert is not None:
                    ended.append(self._end(track.episode, track.episode.last_wall, "rule_disabled"))
            self._tracks = kept
            return ended

    def _target(self, camera_id: str, name: str) -> _Target | None:
        """The rule ``name`` as it applies on ``camera_id`` (cached), or None when it does not."""
        per_camera = self._targets.setdefault(camera_id, {})
        if name in per_camera:
            return per_camera[name]
        target = None
        base = self.rules.get(name)
        camera = self._cameras.get(camera_id)
        if base is not None:
            rule = effective_camera_rule(base, camera, name)
            if rule.enabled:
                if not rule.zones:
                    target = _Target(rule, ((None, ()),))
                elif camera is not None:
                    wanted = [
                        zid
                        for name in rule.zones
                        for zid in (
                            [z for z, zone in camera.zones.items() if zone.food]
                            if name == FOOD_ZONES
                            else [name]
                        )
                    ]
                    zones = tuple(
                        (zid, camera.zones[zid].polygon)
                        for zid in dict.fromkeys(wanted)
                        if zid in camera.zones and not camera.zones[zid].exclude
                    )
                    target = _Target(rule, zones) if zones else None
        per_camera[name] = target
        return target

    def labels_for(self, camera_id: str) -> frozenset[str]:
        """The labels the rules in force on ``camera_id`` look at (any schedule window).

        The detect stage runs its dearer stages (the face stage) only on cameras whose rules
        use their labels; a reload or a ``set`` changes the answer at once.
        """
        with self._lock:
            labels = self._labels.get(camera_id)
            if labels is None:
                labels = frozenset(
                    label
                    for name in self.rules
                    if (target := self._target(camera_id, name)) is not None
                    for label in target.rule.labels
                )
                self._labels[camera_id] = labels
            return labels

    def _threshold(self, rule: RuleConfig, label: str) -> float:
        if rule.min_confidence is not None:
            return rule.min_confidence
        return self._label_thresholds.get(label, DEFAULT_MIN_CONFIDENCE)

    # ------------------------------------------------------------------ per frame

    def update(
        self,
        camera_id: str,
        detections: Sequence[Detection],
        *,
        mono: float,
        wall: float,
        frame: np.ndarray | None = None,
    ) -> list[Alert]:
        """Feed one analysed frame; return the alerts it starts and ends (usually none)."""
        with self._lock:
            cadence = self._cadences.setdefault(camera_id, _Cadence())
            gap = cadence.tick(mono)
            camera = self._cameras.get(camera_id)
            areas = [z.polygon for z in camera.zones.values() if z.exclude] if camera else []
            if areas:
                kept = [d for d in detections if not excluded(d.box, areas)]
                self.excluded += len(detections) - len(kept)
                detections = kept
            events: list[Alert] = []
            for name in self.rules:
                target = self._target(camera_id, name)
                if target is None:
                    continue
                rule = target.rule
                candidates = [
                    d
                    for d in detections
                    if d.label in rule.labels and d.confidence >= self._threshold(rule, d.label)
                ]
                plausible = [
                    d
                    for d in candidates
                    if rule.box_height[0] <= d.box[3] - d.box[1] <= rule.box_height[1]
                ]
                self.implausible_size += len(candidates) - len(plausible)
                scheduled = rule.schedule is None or in_schedule(
                    self._schedules.get(rule.schedule, ()), wall, self.tz
                )
                if not scheduled and plausible:
                    self.outside_schedule += 1
                for zone, polygon in target.zones:
                    hits = tuple(
                        d
                        for d in plausible
                        if zone is None
                        or box_in_zone(d.box, polygon, rule.zone_anchor, rule.min_overlap)
                    )
                    track = self._tracks.setdefault((camera_id, name, zone), _Track())
                    events += self._step(
                        track,
                        name,
                        rule,
                        camera_id=camera_id,
                        zone=zone,
                        hits=hits if scheduled else (),
                        mono=mono,
                        wall=wall,
                        frame=frame,
                        gap=gap,
                        cadence=cadence,
                    )
            return events

    def expire(self, mono: float) -> list[Alert]:
        """End the alerts unseen for ``end_after``, also on cameras that send no frames."""
        with self._lock:
            events = []
            for (camera_id, name, _zone), track in self._tracks.items():
                episode = track.episode
                if episode is None:
                    continue
                target = self._target(camera_id, name)
                end_after = target.rule.end_after if target is not None else 0.0
                if mono - episode.last_mono > end_after:
                    track.episode = None
                    if episode.alert is not None:
                        events.append(self._end(episode, episode.last_wall, "cleared"))
            return events

    def close_all(self, reason: str = "agent_stop") -> list[Alert]:
        """End every running alert (the agent is stopping)."""
        with self._lock:
            events = []
            for track in self._tracks.values():
                episode = track.episode
                if episode is not None and episode.alert is not None:
                    events.append(self._end(episode, episode.last_wall, reason))
                track.episode = None
            return events

    def _step(
        self,
        track: _Track,
        name: str,
        rule: RuleConfig,
        *,
        camera_id: str,
        zone: str | None,
        hits: tuple[Detection, ...],
        mono: float,
        wall: float,
        frame: np.ndarray | None,
        gap: float | None,
        cadence: _Cadence,
    ) -> list[Alert]:
        events: list[Alert] = []
        episode = track.episode
        if episode is not None and mono - episode.last_mono > rule.end_after:
            track.episode = None  # the gap was too long: that episode is over
            if episode.alert is not None:
                events.append(self._end(episode, episode.last_wall, "cleared"))
            episode = None
        if rule.consensus is not None:
            window = track.window
            window.append(bool(hits))
            while len(window) > rule.consensus[1]:
                window.popleft()
        if not hits:
            return events
        if episode is None:
            episode = track.episode = _Episode(
                first_mono=mono, first_wall=wall, last_mono=mono, last_wall=wall, lead=gap
            )
        episode.last_mono, episode.last_wall = mono, wall
        episode.hits += 1
        best = max(d.confidence for d in hits)
        if best > episode.best_confidence or episode.best_frame is None:
            episode.best_confidence = best
            episode.best_frame = frame
            episode.best_wall = wall
            episode.best_hits = hits
            episode.improved = episode.alert is not None
        if episode.alert is not None or not _lasted(episode, rule.min_duration, cadence):
            return events
        if rule.consensus is not None and sum(track.window) < rule.consensus[0]:
            return events
        if track.last_start_mono is not None and mono - track.last_start_mono < rule.cooldown:
            if not episode.suppressed:
                episode.suppressed = True
                self.suppressed_by_cooldown += 1
            return events
        track.last_start_mono = mono
        self.alerts_raised += 1
        episode.alert = Alert(
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
            zone=zone,
            hits=episode.hits,
        )
        episode.improved = False
        events.append(episode.alert)
        return events

    def _end(self, episode: _Episode, last_seen: float, reason: str) -> Alert:
        start = episode.alert
        if start is None:
            raise ValueError("ending an episode that raised no alert")
        self.alerts_ended += 1
        better = episode.improved
        episode.alert = None
        return replace(
            start,
            phase="end",
            ended_at=max(last_seen, start.raised_at),
            end_reason=reason,
            confidence=episode.best_confidence,
            detections=episode.best_hits if better else start.detections,
            frame=episode.best_frame if better else None,
            frame_wall=episode.best_wall if better else start.frame_wall,
            hits=episode.hits,
        )

    # ------------------------------------------------------------------ inspection

    def active(self) -> list[tuple[str, str, str | None]]:
        """(camera, rule, zone) of every alert running now."""
        with self._lock:
            return sorted(
                (key for key, t in self._tracks.items() if t.episode and t.episode.alert),
                key=lambda k: (k[0], k[1], k[2] or ""),
            )

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat."""
        with self._lock:
            running = sum(1 for t in self._tracks.values() if t.episode and t.episode.alert)
        return {
            "raised": self.alerts_raised,
            "ended": self.alerts_ended,
            "running": running,
            "suppressed_by_cooldown": self.suppressed_by_cooldown,
            "outside_schedule": self.outside_schedule,
            "excluded": self.excluded,
            "implausible_size": self.implausible_size,
        }
