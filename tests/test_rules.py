"""The rule engine: one real violation gives one alert, noise gives none (property tests).

Also zones and exclusion areas on hand-made detections, consensus, plausible sizes,
schedules across midnight and week boundaries, and the start/end lifecycle.
"""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import (
    CameraConfig,
    CameraRuleConfig,
    RuleConfig,
    ScheduleWindow,
    parse_config,
)
from agent.errors import ConfigError
from agent.records import Detection
from agent.rules.engine import Alert, RuleEngine, in_schedule
from agent.rules.zones import box_in_zone, excluded, overlap, point_in_polygon

BARE = Detection(label="head_bare", class_id=3, confidence=0.9, box=(0.1, 0.1, 0.2, 0.2))
WEAK = Detection(label="head_bare", class_id=3, confidence=0.3, box=(0.1, 0.1, 0.2, 0.2))
MASK = Detection(label="face_mask", class_id=0, confidence=0.95, box=(0.4, 0.4, 0.5, 0.5))
SHANGHAI = ZoneInfo("Asia/Shanghai")


def engine(**overrides: object) -> RuleEngine:
    params: dict[str, object] = {
        "min_confidence": 0.5,
        "min_duration": 3.0,
        "end_after": 10.0,
        "cooldown": 600.0,
    }
    params.update(overrides)
    return RuleEngine({"no_hat": RuleConfig.model_validate({"labels": ["head_bare"], **params})})


def run(
    rules: RuleEngine, hits: list[bool], *, step: float = 1.0, det: Detection = BARE
) -> list[tuple[float, Alert]]:
    """Feed one frame per ``step`` seconds; return (time, event) for every start and end."""
    events = []
    for i, hit in enumerate(hits):
        t = i * step
        for event in rules.update("cam", [det] if hit else [MASK], mono=t, wall=1e9 + t):
            assert event.type == "no_hat"
            assert event.camera_id == "cam"
            events.append((t, event))
    return events


def feed(
    rules: RuleEngine, hits: list[bool], *, step: float = 1.0, det: Detection = BARE
) -> list[float]:
    """The times at which alerts started."""
    return [t for t, e in run(rules, hits, step=step, det=det) if e.phase == "start"]


# ---------------------------------------------------------------------- thresholds, durations


def test_sustained_violation_raises_one_alert_after_min_duration() -> None:
    """A violation seen continuously raises exactly one alert, once its hits cover
    min_duration: 3 frames 1 s apart stand for 3 s (the frame at 2.0)."""
    raised = feed(engine(), [True] * 120)
    assert raised == [2.0]


def test_alert_carries_episode_start_and_best_evidence() -> None:
    """The alert reports when the episode started and its best confidence."""
    rules = engine(min_duration=3.0)  # 3 hits, 1 s apart: 3 s with the gap before the first
    rules.update("cam", [WEAK], mono=0, wall=100.0)
    rules.update("cam", [BARE], mono=1, wall=101.0)
    assert rules.update("cam", [BARE], mono=2, wall=102.0) == []
    alerts = rules.update("cam", [BARE], mono=3, wall=103.0)
    assert len(alerts) == 1
    assert alerts[0].phase == "start"
    assert alerts[0].started_at == 101.0  # the weak detection never counted
    assert alerts[0].confidence == 0.9
    assert alerts[0].detections == (BARE,)
    assert alerts[0].hits == 3


def test_below_threshold_never_alerts() -> None:
    """Detections under min_confidence are noise, however long they last."""
    assert feed(engine(), [True] * 100, det=WEAK) == []


def test_other_labels_never_alert() -> None:
    """Only the rule's labels count."""
    assert feed(engine(min_duration=0), [False] * 50) == []


def test_short_gaps_do_not_restart_the_episode() -> None:
    """Missing a head for a few frames (detector misses) keeps the episode going."""
    pattern = [True, False, True, False, False, True, True]
    assert feed(engine(min_duration=5.0, end_after=3.0), pattern) == [5.0]


def test_cooldown_limits_repeat_alerts() -> None:
    """A second episode within the cooldown raises nothing; after it, one more alert."""
    hits = [True] * 5 + [False] * 20 + [True] * 5 + [False] * 60 + [True] * 5
    raised = feed(engine(min_duration=2.0, end_after=5.0, cooldown=60.0), hits)
    assert raised == [1.0, 91.0]  # the second hit: 1 s between them + the 1 s gap before
    rules = engine(min_duration=2.0, end_after=5.0, cooldown=60.0)
    feed(rules, hits)
    assert rules.stats()["suppressed_by_cooldown"] == 1


def test_cameras_are_independent() -> None:
    """A violation on one camera does not start or cool down another camera."""
    rules = engine(min_duration=1.0)
    for t in range(3):
        a = rules.update("a", [BARE], mono=t, wall=t)
        b = rules.update("b", [BARE] if t >= 1 else [], mono=t, wall=t)
        if t == 1:
            assert [x.camera_id for x in a] == ["a"]
            assert b == []
        if t == 2:
            assert [x.camera_id for x in b] == ["b"]


def test_model_thresholds_apply_when_the_rule_sets_none() -> None:
    """Without min_confidence, a label's threshold comes from the model manifest, else 0.5."""
    rule = RuleConfig(labels=("head_bare",), min_duration=0)
    strict = RuleEngine({"no_hat": rule}, {"head_bare": 0.95})
    assert strict.update("cam", [BARE], mono=0, wall=0) == []  # 0.9 < 0.95
    default = RuleEngine({"no_hat": rule})
    assert len(default.update("cam", [BARE], mono=0, wall=0)) == 1  # 0.9 >= 0.5
    assert default.update("cam2", [WEAK], mono=0, wall=0) == []  # 0.3 < 0.5
    explicit = RuleEngine(
        {"no_hat": rule.model_copy(update={"min_confidence": 0.2})}, {"head_bare": 0.95}
    )
    assert len(explicit.update("cam", [WEAK], mono=0, wall=0)) == 1  # the rule's own value wins


# ---------------------------------------------------------------------- lifecycle


def test_alert_ends_after_end_after_with_the_last_time_seen() -> None:
    """Start at min_duration; end once unseen for end_after, reporting when it was last seen."""
    events = run(engine(min_duration=2.0, end_after=4.0), [True] * 10 + [False] * 10)
    assert [(t, e.phase) for t, e in events] == [(1.0, "start"), (14.0, "end")]
    start, end = events[0][1], events[1][1]
    assert end.id == start.id
    assert end.ended_at == 1e9 + 9.0
    assert end.end_reason == "cleared"
    assert end.hits == 10


def test_alert_ends_without_frames_through_expire() -> None:
    """A camera that stops sending frames still gets its alert ended by expire()."""
    rules = engine(min_duration=0.0, end_after=5.0)
    assert [e.phase for e in rules.update("cam", [BARE], mono=0, wall=50.0)] == ["start"]
    assert rules.expire(4.0) == []
    ended = rules.expire(6.0)
    assert [(e.phase, e.ended_at, e.end_reason) for e in ended] == [("end", 50.0, "cleared")]
    assert rules.expire(100.0) == []  # ended once


def test_close_all_and_disabling_a_rule_end_running_alerts() -> None:
    """Stopping the agent, or disabling the rule, ends what is running, once."""
    rules = engine(min_duration=0.0)
    rules.update("cam", [BARE], mono=0, wall=10.0)
    assert [e.end_reason for e in rules.close_all()] == ["agent_stop"]
    assert rules.close_all() == []
    rules.update("cam", [BARE], mono=700, wall=710.0)  # after the cooldown: a new alert
    off = RuleConfig(labels=("head_bare",), enabled=False)
    assert [e.end_reason for e in rules.configure({"no_hat": off})] == ["rule_disabled"]
    assert rules.active() == []


def test_end_carries_a_better_frame_found_after_the_start() -> None:
    """The end event brings a new evidence frame only when a better one came after the start."""
    rules = engine(min_duration=1.0, end_after=2.0)
    frames = [np.full((4, 4, 3), i, np.uint8) for i in range(4)]
    weak, strong = (
        Detection("head_bare", 3, 0.6, (0.1, 0.1, 0.2, 0.2)),
        Detection("head_bare", 3, 0.95, (0.1, 0.1, 0.2, 0.2)),
    )
    rules.update("cam", [weak], mono=0, wall=0, frame=frames[0])
    start = rules.update("cam", [weak], mono=1, wall=1, frame=frames[1])[0]
    rules.update("cam", [strong], mono=2, wall=2, frame=frames[2])
    end = rules.expire(10.0)[0]
    assert start.confidence == 0.6
    assert end.confidence == 0.95
    assert end.frame is frames[2]
    assert end.detections == (strong,)

    plain = engine(min_duration=0.0, end_after=1.0)
    plain.update("cam", [strong], mono=0, wall=0, frame=frames[0])
    plain.update("cam", [weak], mono=1, wall=1, frame=frames[1])
    assert plain.expire(5.0)[0].frame is None  # nothing better: the start's image stands


@settings(max_examples=300, deadline=None)
@given(
    hits=st.lists(st.booleans(), min_size=1, max_size=300),
    min_duration=st.integers(min_value=0, max_value=20),
    end_after=st.integers(min_value=0, max_value=15),
    cooldown=st.integers(min_value=0, max_value=200),
)
def test_lifecycle_invariants(
    hits: list[bool], min_duration: int, end_after: int, cooldown: int
) -> None:
    """For any detection sequence: no alert before its hits cover min_duration (first to
    last hit plus the 1 s gap before the first) nor, when min_duration > 0, on a single
    hit; starts at least a cooldown apart and only on a hitting frame; every started alert
    ends exactly once, after its start and before the next start."""
    rules = engine(min_duration=min_duration, end_after=end_after, cooldown=cooldown)
    events = run(rules, hits)
    events += [
        (float(len(hits) + end_after + 1), e) for e in rules.expire(len(hits) + end_after + 1)
    ]
    starts = [(t, e) for t, e in events if e.phase == "start"]
    for (earlier, _), (later, _) in itertools.pairwise(starts):
        assert later - earlier >= cooldown
    for t, alert in starts:
        assert hits[int(t)], "an alert starts only on a frame that hits"
        assert alert.raised_at - alert.started_at + 1.0 >= min_duration
        assert alert.hits >= 2 or min_duration == 0
    if starts:
        assert len(starts) <= math.floor((len(hits) - 1) / max(cooldown, 1)) + 1
    phases = [e.phase for _, e in events]
    assert phases == ["start", "end"] * len(starts), phases  # strictly alternating, all ended
    for (_, start), (_, end) in itertools.pairwise(events):
        if start.phase == "start":
            assert end.id == start.id
            assert end.ended_at is not None
            assert end.ended_at >= start.raised_at


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=12, max_value=40), min_size=1, max_size=30),
    min_duration=st.integers(min_value=1, max_value=10),
)
def test_isolated_flickers_never_alert(gaps: list[int], min_duration: int) -> None:
    """Single-frame false positives further apart than end_after never raise an alert."""
    timeline = []
    for gap in gaps:
        timeline += [True] + [False] * gap
    assert feed(engine(min_duration=min_duration, end_after=10.0, cooldown=0), timeline) == []


@settings(max_examples=100, deadline=None)
@given(length=st.integers(min_value=1, max_value=200), min_duration=st.integers(0, 30))
def test_continuous_violation_alerts_iff_long_enough(length: int, min_duration: int) -> None:
    """A continuous run of frames 1 s apart raises exactly one alert iff it covers
    min_duration (length frames stand for length seconds) in two hits or more, or
    min_duration is 0 (long cooldown)."""
    raised = feed(engine(min_duration=min_duration, cooldown=10_000), [True] * length)
    long_enough = min_duration == 0 or length >= max(2, min_duration)
    assert len(raised) == (1 if long_enough else 0)


# ---------------------------------------------------------------------- sampling


def feed_at(rules: RuleEngine, frames: list[tuple[float, bool]]) -> list[float]:
    """Feed one frame per (time, hit); the times at which alerts started."""
    starts = []
    for t, hit in frames:
        for event in rules.update("cam", [BARE] if hit else [MASK], mono=t, wall=1e9 + t):
            if event.phase == "start":
                starts.append(t)
    return starts


def cadence(interval: float, lead_in: int, hits: int, tail: int = 3) -> list[tuple[float, bool]]:
    """Frames ``interval`` apart: ``lead_in`` without the violation, ``hits`` with it, then
    ``tail`` without."""
    pattern = [False] * lead_in + [True] * hits + [False] * tail
    return [(100.0 + i * interval, hit) for i, hit in enumerate(pattern)]


def test_four_hits_097s_apart_meet_a_3s_min_duration() -> None:
    """The field case: four frames 0.97 s apart saw a man without a mask (hits spanning
    2.91 s, about 4 s of real time): min_duration 3s alerts, on the fourth hit, however the
    frames fall."""
    assert feed_at(engine(), cadence(0.97, 5, 4)) == [pytest.approx(100.0 + 8 * 0.97)]
    seen = [(100.0 - 0.97 * i, False) for i in range(4, 0, -1)]
    seen += [(t, True) for t in (100.0, 100.97, 101.95, 102.92)]  # the measured 2.92 s span
    assert feed_at(engine(), [*seen, (103.9, False)]) == [102.92]


def test_two_hits_never_meet_a_3s_min_duration() -> None:
    """Two frames stand for about 2 s: no alert at 3 s, whether the frames come at 0.97 or
    1.03 s (jitter) and whatever their phase."""
    for interval in (0.97, 1.0, 1.03):
        assert feed_at(engine(), cadence(interval, 5, 2)) == []


def test_three_hits_one_interval_apart_are_the_inclusive_boundary() -> None:
    """3 hits exactly 1 s apart cover 3 s (2 s between them, 1 s before the first): they meet
    min_duration 3s, the comparison being inclusive as before. The same 3 hits 0.97 s apart
    cover 2.91 s and do not: an episode of exactly min_duration / interval frames is the
    one case jitter may decide, and its true length is anywhere in 2-4 s either way."""
    assert feed_at(engine(), cadence(1.0, 5, 3)) == [107.0]
    assert feed_at(engine(), cadence(0.97, 5, 3)) == []
    assert feed_at(engine(), cadence(1.03, 5, 3)) == [pytest.approx(100.0 + 7 * 1.03)]


def test_the_interval_comes_from_the_frames_themselves() -> None:
    """Frames 2 s apart (a detect_interval of 2 s, or 1 s stretched by the load governor):
    two hits stand for 4 s and meet min_duration 3s; one never does, however long the
    interval it stands for."""
    assert feed_at(engine(), cadence(2.0, 5, 2)) == [112.0]
    assert feed_at(engine(), cadence(2.0, 5, 1)) == []
    assert feed_at(engine(), cadence(5.0, 5, 1)) == []


def test_a_stall_before_the_first_hit_counts_at_most_one_and_a_half_gaps() -> None:
    """After 30 s without frames (a reconnect), the hit that follows is credited with 1.5
    usual gaps, not 30 s: two hits 1 s apart (2.5 s) stay under 3 s, the third alerts."""
    frames = [(float(t), False) for t in range(10)]
    frames += [(40.0, True), (41.0, True), (42.0, True)]
    assert feed_at(engine(end_after=60.0), frames) == [42.0]


def test_an_episode_at_a_cameras_first_frame_uses_its_usual_gap() -> None:
    """Nothing came before the first frame of a camera: the median gap stands in for the gap
    before it, so the decision is the same as for an episode later on."""
    assert feed_at(engine(), [(100.0 + i, True) for i in range(4)]) == [102.0]


def test_the_jitter_band_cannot_be_narrower() -> None:
    """Frames 1 s apart, each up to 0.1 s off its second: a miss at 9.9, hits at 11.1, 12.0
    and 12.9, a miss at 14.1. A violation from 11.1 to just after 12.9 (1.8 s) and one from
    just after 9.9 to 14.1 (4.2 s) both give exactly these frames, so any rule answers both
    alike: with 10 % jitter no rule keeps silent for every violation 1.2 intervals shorter
    than min_duration 3 s and alerts for every one 1.2 intervals longer. This one alerts
    (9.9 to 12.9 is 3.0 s, inclusive)."""
    times = [6.9, 8.0, 9.1, 9.9, 11.1, 12.0, 12.9, 14.1, 15.0]
    for begin, end in ((11.1, 12.9 + 1e-6), (9.9 + 1e-6, 14.1)):
        assert [begin <= t < end for t in times] == [False] * 4 + [True] * 3 + [False] * 2
    frames = [(t, 11.0 <= t < 13.0) for t in times]
    assert feed_at(engine(), frames) == [12.9]


JITTER = 0.1  # of the interval: each frame up to 10 % off its schedule


@settings(max_examples=400, deadline=None)
@given(
    interval=st.floats(0.2, 5.0),
    ratio=st.floats(1.0, 8.0),  # min_duration in intervals
    margin=st.floats(0.001, 3.0),  # intervals beyond the guaranteed band
    above=st.booleans(),
    phase=st.floats(0.0, 1.0, exclude_max=True),
    lead_in=st.integers(1, 12),
    amplitude=st.sampled_from([0.0, JITTER]),
    offsets=st.lists(st.floats(-1.0, 1.0), min_size=48, max_size=48),
)
def test_min_duration_does_not_depend_on_sampling_phase_or_jitter(
    interval: float,
    ratio: float,
    margin: float,
    above: bool,
    phase: float,
    lead_in: int,
    amplitude: float,
    offsets: list[float],
) -> None:
    """A violation of true length T, sampled every interval I with any phase and each frame
    up to j = amplitude * I off its schedule, always alerts when T >= min_duration + I + 2j
    and never when T <= min_duration - I - 2j: +-1 interval without jitter, +-1.2 with
    10 % jitter. (No rule can narrow the band with jitter: when the gaps around the hits
    are I + 2j, the same frames come from violations of either bound.) min_duration is at
    least one interval: below that it asks for two hits, which a short violation may not
    give."""
    min_duration = ratio * interval
    band = (1 + 2 * amplitude) * interval
    true_length = min_duration + band + margin * interval if above else min_duration - band
    true_length -= 0.0 if above else margin * interval
    start = (lead_in + phase) * interval
    frames = []
    for k, offset in enumerate(offsets):
        t = k * interval + offset * amplitude * interval
        frames.append((t, start <= t < start + true_length))
    assert frames[-1][0] > start + true_length + 2 * interval  # the violation is over
    rules = engine(min_duration=min_duration, end_after=2 * interval, cooldown=86400)
    assert len(feed_at(rules, frames)) == (1 if above else 0)


# ---------------------------------------------------------------------- consensus, sizes


def test_consensus_needs_m_of_the_last_n_checks() -> None:
    """With consensus [3, 5], alternating hits (2-3 of 5) fire only once 3 of 5 agree."""
    rules = engine(min_duration=0.0, end_after=5.0, consensus=[3, 5])
    assert feed(rules, [True, False, False, True, False, False, True, False]) == []
    rules = engine(min_duration=0.0, end_after=5.0, consensus=[3, 5])
    assert feed(rules, [True, False, True, False, True]) == [4.0]


@settings(max_examples=200, deadline=None)
@given(hits=st.lists(st.booleans(), min_size=1, max_size=80), m=st.integers(1, 5))
def test_consensus_property(hits: list[bool], m: int) -> None:
    """An alert starts only on a frame where at least m of the last 5 checks hit."""
    for t in feed(engine(min_duration=0.0, end_after=100.0, consensus=[m, 5]), hits):
        i = int(t)
        assert sum(hits[max(0, i - 4) : i + 1]) >= m


def test_box_height_limits_drop_implausible_faces() -> None:
    """A head box taller than box_height[1] (a poster close-up) or under [0] never counts."""
    rules = engine(min_duration=0.0, box_height=[0.05, 0.3])
    huge = Detection("head_bare", 3, 0.9, (0.1, 0.1, 0.5, 0.9))
    tiny = Detection("head_bare", 3, 0.9, (0.1, 0.1, 0.11, 0.12))
    assert feed(rules, [True] * 5, det=huge) == []
    assert feed(rules, [True] * 5, det=tiny) == []
    assert rules.stats()["implausible_size"] == 10
    assert feed(rules, [True], det=BARE) == [0.0]  # height 0.1


# ---------------------------------------------------------------------- zones

SQUARE = ((0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (0.0, 1.0))  # bottom-left quarter
ZONED = """
identity: {city: hz, school_id: s-1, box_id: b-1}
cameras:
  cam:
    url: rtsp://h/x
    zones:
      prep: {name: 切配区, polygon: [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]]}
      serve: {polygon: [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]]}
      tv: {polygon: [[0.7, 0], [1, 0], [1, 0.4], [0.7, 0.4]], exclude: true}
rules:
  no_hat: {labels: [head_bare], min_duration: 0, zones: [prep, serve]}
  anywhere: {labels: [head_bare], min_duration: 0}
  food: {labels: [head_bare], min_duration: 0, zones: [serve], zone_anchor: overlap}
"""


def test_geometry_point_and_overlap() -> None:
    """Point-in-polygon and exact box overlap, on a convex and a concave (L) polygon."""
    assert point_in_polygon(0.25, 0.75, SQUARE)
    assert not point_in_polygon(0.75, 0.75, SQUARE)
    assert overlap((0.25, 0.25, 0.75, 0.75), SQUARE) == pytest.approx(0.25)
    ell = ((0, 0), (1, 0), (1, 0.5), (0.5, 0.5), (0.5, 1), (0, 1))
    assert overlap((0.5, 0.5, 1.0, 1.0), ell) == pytest.approx(0.0)
    assert overlap((0.0, 0.0, 1.0, 1.0), ell) == pytest.approx(0.75)
    # Bottom-centre in the zone though most of the box is above it: counts by anchor only.
    tall = (0.1, 0.0, 0.3, 0.6)
    assert box_in_zone(tall, SQUARE, "bottom_center")
    assert not box_in_zone(tall, SQUARE, "overlap", 0.5)
    assert excluded((0.1, 0.6, 0.3, 0.9), [SQUARE])


@settings(max_examples=300, deadline=None)
@given(
    x1=st.floats(0, 0.9),
    y1=st.floats(0, 0.9),
    w=st.floats(0.01, 0.5),
    h=st.floats(0.01, 0.5),
)
def test_overlap_matches_a_sampled_estimate(x1: float, y1: float, w: float, h: float) -> None:
    """The clipped-polygon overlap agrees with counting grid points of the box in the zone."""
    ell = ((0, 0), (1, 0), (1, 0.5), (0.5, 0.5), (0.5, 1), (0, 1))
    box = (x1, y1, min(1.0, x1 + w), min(1.0, y1 + h))
    n = 40
    xs = [box[0] + (box[2] - box[0]) * (i + 0.5) / n for i in range(n)]
    ys = [box[1] + (box[3] - box[1]) * (j + 0.5) / n for j in range(n)]
    inside = sum(point_in_polygon(x, y, ell) for x in xs for y in ys) / (n * n)
    assert overlap(box, ell) == pytest.approx(inside, abs=0.06)


def zoned_engine() -> RuleEngine:
    config = parse_config(ZONED)
    return RuleEngine(config.rules, cameras=config.cameras)


def test_zones_route_detections_and_exclusions_drop_them() -> None:
    """A head standing in prep alerts for prep (and anywhere), not serve; one in the TV
    area is dropped before any rule; food by overlap needs half the box in serve."""
    rules = zoned_engine()
    in_prep = Detection("head_bare", 3, 0.9, (0.2, 0.3, 0.3, 0.6))  # bottom-centre (0.25, 0.6)
    events = rules.update("cam", [in_prep], mono=0, wall=0)
    assert sorted((e.type, e.zone) for e in events) == [("anywhere", None), ("no_hat", "prep")]

    on_tv = Detection("head_bare", 3, 0.99, (0.75, 0.05, 0.9, 0.3))
    events = rules.update("cam", [on_tv], mono=1000, wall=1000)
    assert [e.phase for e in events] == ["end", "end"]  # the first ones end; nothing starts
    assert rules.stats()["excluded"] == 1

    straddling = Detection("head_bare", 3, 0.9, (0.4, 0.6, 0.7, 0.9))  # 2/3 in serve
    events = rules.update("cam", [straddling], mono=2000, wall=2000)
    assert sorted((e.type, e.zone) for e in events if e.phase == "start") == [
        ("anywhere", None),
        ("food", "serve"),
        ("no_hat", "serve"),
    ]


def test_zone_tracks_are_independent() -> None:
    """A violation in one zone does not cool down the same rule in another zone."""
    rules = zoned_engine()
    prep = Detection("head_bare", 3, 0.9, (0.2, 0.5, 0.3, 0.7))
    serve = Detection("head_bare", 3, 0.9, (0.7, 0.5, 0.8, 0.7))
    first = rules.update("cam", [prep], mono=0, wall=0)
    second = rules.update("cam", [serve], mono=1, wall=1)
    assert ("no_hat", "prep") in {(e.type, e.zone) for e in first}
    assert ("no_hat", "serve") in {(e.type, e.zone) for e in second}


def test_camera_own_rule_values_override_the_rule() -> None:
    """cameras.<id>.rules.<name> replaces the rule's values on that camera only."""
    config = parse_config(ZONED)
    own = CameraRuleConfig.model_validate({"min_duration": 5, "zones": ["prep"]})
    cameras = {
        "cam": config.cameras["cam"].model_copy(update={"rules": {"anywhere": own}}),
        "other": CameraConfig(url="rtsp://h/y"),
    }
    rules = RuleEngine({"anywhere": config.rules["anywhere"]}, cameras=cameras)
    det = Detection("head_bare", 3, 0.9, (0.2, 0.5, 0.3, 0.7))
    assert rules.update("cam", [det], mono=0, wall=0) == []  # min_duration 5 here
    assert [e.zone for e in rules.update("other", [det], mono=0, wall=0)] == [None]
    assert [e.zone for e in rules.update("cam", [det], mono=5, wall=5)] == ["prep"]


def test_config_cross_checks_zone_and_schedule_names() -> None:
    """A rule naming a zone no camera has, or an unknown schedule, is a located error."""
    bad = ZONED.replace("zones: [prep, serve]}", "zones: [prep, kitchen]}") + (
        "  late: {labels: [head_bare], schedule: nights}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "agent.yaml")
    problems = "\n".join(info.value.problems)
    assert "rules.no_hat.zones: no camera has a zone 'kitchen'" in problems
    assert "rules.late.schedule: unknown schedule 'nights'" in problems
    assert "agent.yaml:" in problems


# ---------------------------------------------------------------------- schedules


def reference_contains(window: ScheduleWindow, moment: datetime) -> bool:
    """Brute force: is ``moment`` inside one of the window's concrete intervals this fortnight?"""
    start_h, start_m = map(int, window.start.split(":"))
    end_h, end_m = map(int, window.end.split(":"))
    monday = (moment - timedelta(days=moment.weekday() + 7)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    for offset in range(21):
        day = monday + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        begin = day + timedelta(hours=start_h, minutes=start_m)
        finish = day + timedelta(hours=end_h, minutes=end_m)
        if finish <= begin:
            finish += timedelta(days=1)
        if begin <= moment < finish:
            return True
    return False


@settings(max_examples=400, deadline=None)
@given(
    days=st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1),
    start=st.integers(0, 24 * 60 - 1),
    end=st.integers(0, 24 * 60),
    moment=st.datetimes(
        min_value=datetime(2026, 1, 1),
        max_value=datetime(2027, 12, 31),
        timezones=st.just(timezone.utc),
    ),
)
def test_schedule_windows_across_midnight_and_week_end(
    days: list[str], start: int, end: int, moment: datetime
) -> None:
    """A window agrees with a brute-force expansion into concrete intervals, including
    windows past midnight and from Sunday into Monday, in the box's time zone."""
    window = ScheduleWindow.model_validate(
        {
            "days": days,
            "start": f"{start // 60:02d}:{start % 60:02d}",
            "end": f"{end // 60:02d}:{end % 60:02d}",
        }
    )
    local = moment.astimezone(SHANGHAI).replace(tzinfo=None, second=0, microsecond=0)
    wall = local.replace(tzinfo=SHANGHAI).timestamp()
    assert in_schedule((window,), wall, SHANGHAI) == reference_contains(window, local)


def test_schedule_day_ranges_and_a_sunday_night_shift() -> None:
    """'sat-mon' wraps the week; sun 22:00-02:00 covers Monday 01:00, not Monday 03:00."""
    window = ScheduleWindow.model_validate({"days": ["sat-mon"], "start": "06:00", "end": "07:00"})
    assert window.days == (0, 5, 6)
    night = ScheduleWindow.model_validate({"days": ["sun"], "start": "22:00", "end": "02:00"})
    monday_1am = datetime(2026, 11, 30, 1, 0, tzinfo=SHANGHAI).timestamp()  # a Monday
    monday_3am = datetime(2026, 11, 30, 3, 0, tzinfo=SHANGHAI).timestamp()
    assert in_schedule((night,), monday_1am, SHANGHAI)
    assert not in_schedule((night,), monday_3am, SHANGHAI)
    with pytest.raises(ValueError, match="unknown day"):
        ScheduleWindow.model_validate({"days": ["funday"], "start": "06:00", "end": "07:00"})
    with pytest.raises(ValueError, match="HH:MM"):
        ScheduleWindow.model_validate({"start": "25:00", "end": "07:00"})


def test_rules_alert_only_inside_their_schedule() -> None:
    """Outside the schedule hits are ignored (and counted); inside, the same scene alerts."""
    window = ScheduleWindow.model_validate({"days": ["mon-fri"], "start": "06:00", "end": "13:30"})
    rule = RuleConfig(labels=("head_bare",), min_duration=0, schedule="meals")
    rules = RuleEngine({"no_hat": rule}, schedules={"meals": (window,)}, tz=SHANGHAI)
    saturday = datetime(2026, 11, 28, 10, 0, tzinfo=SHANGHAI).timestamp()
    friday = datetime(2026, 11, 27, 10, 0, tzinfo=SHANGHAI).timestamp()
    assert rules.update("cam", [BARE], mono=0, wall=saturday) == []
    assert rules.stats()["outside_schedule"] == 1
    assert [e.phase for e in rules.update("cam", [BARE], mono=100, wall=friday)] == ["start"]


def test_labels_for_follows_the_rules_on_each_camera() -> None:
    """labels_for names the labels a camera's rules in force use; a live change shows at once."""
    no_mask = RuleConfig.model_validate({"labels": ["face_no_mask"]})
    no_hat = RuleConfig.model_validate({"labels": ["head_bare"]})
    off = CameraRuleConfig.model_validate({"enabled": False})
    cameras = {
        "kitchen": CameraConfig(url="rtsp://h/a"),
        "store": CameraConfig(url="rtsp://h/b", rules={"no_mask": off}),
    }
    rules = RuleEngine({"no_mask": no_mask, "no_hat": no_hat}, cameras=cameras)
    assert rules.labels_for("kitchen") == {"face_no_mask", "head_bare"}
    assert rules.labels_for("store") == {"head_bare"}
    assert rules.labels_for("unknown") == {"face_no_mask", "head_bare"}  # rules as they are
    rules.configure({"no_mask": no_mask, "no_hat": no_hat.model_copy(update={"enabled": False})})
    assert rules.labels_for("kitchen") == {"face_no_mask"}
    assert rules.labels_for("store") == frozenset()
