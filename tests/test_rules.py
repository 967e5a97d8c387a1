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
    """A violation seen continuously raises exactly one alert, at min_duration."""
    raised = feed(engine(), [True] * 120)
    assert raised == [3.0]


def test_alert_carries_episode_start_and_best_evidence() -> None:
    """The alert reports when the episode started and its best confidence."""
    rules = engine(min_duration=2.0)
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
    assert raised == [2.0, 92.0]
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
    assert [(t, e.phase) for t, e in events] == [(2.0, "start"), (14.0, "end")]
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
    """For any detection sequence: no alert before min_duration of hits; starts at least a
    cooldown apart and only on a hitting frame; every started alert ends exactly once,
    after its start and before the next start."""
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
        assert alert.raised_at - alert.started_at >= min_duration
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
    """A continuous run raises exactly one alert iff it lasts min_duration (long cooldown)."""
    raised = feed(engine(min_duration=min_duration, cooldown=10_000), [True] * length)
    assert len(raised) == (1 if length - 1 >= min_duration else 0)


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
