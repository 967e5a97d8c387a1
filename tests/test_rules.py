"""The rule engine: one real violation gives one alert, noise gives none (property tests)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import RuleConfig
from agent.detect import Detection
from agent.rules import RuleEngine

BARE = Detection(label="head_bare", class_id=3, confidence=0.9, box=(0.1, 0.1, 0.2, 0.2))
WEAK = Detection(label="head_bare", class_id=3, confidence=0.3, box=(0.1, 0.1, 0.2, 0.2))
MASK = Detection(label="face_mask", class_id=0, confidence=0.95, box=(0.4, 0.4, 0.5, 0.5))


def engine(**overrides: float) -> RuleEngine:
    params = {"min_confidence": 0.5, "min_duration": 3.0, "clear_after": 10.0, "cooldown": 600.0}
    params.update(overrides)
    return RuleEngine({"no_hat": RuleConfig(labels=("head_bare",), **params)})


def feed(
    rules: RuleEngine, hits: list[bool], *, step: float = 1.0, det: Detection = BARE
) -> list[float]:
    """Feed one frame per ``step`` seconds; return the times at which alerts were raised."""
    raised = []
    for i, hit in enumerate(hits):
        t = i * step
        for alert in rules.update("cam", [det] if hit else [MASK], mono=t, wall=1e9 + t):
            raised.append(t)
            assert alert.type == "no_hat"
            assert alert.camera_id == "cam"
    return raised


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
    assert alerts[0].started_at == 101.0  # the weak detection never counted
    assert alerts[0].confidence == 0.9
    assert alerts[0].detections == (BARE,)


def test_below_threshold_never_alerts() -> None:
    """Detections under min_confidence are noise, however long they last."""
    assert feed(engine(), [True] * 100, det=WEAK) == []


def test_other_labels_never_alert() -> None:
    """Only the rule's labels count."""
    assert feed(engine(min_duration=0), [False] * 50) == []


def test_short_gaps_do_not_restart_the_episode() -> None:
    """Missing a head for a few frames (detector misses) keeps the episode going."""
    pattern = [True, False, True, False, False, True, True]
    assert feed(engine(min_duration=5.0, clear_after=3.0), pattern) == [5.0]


def test_cooldown_limits_repeat_alerts() -> None:
    """A second episode within the cooldown raises nothing; after it, one more alert."""
    hits = [True] * 5 + [False] * 20 + [True] * 5 + [False] * 60 + [True] * 5
    raised = feed(engine(min_duration=2.0, clear_after=5.0, cooldown=60.0), hits)
    assert raised == [2.0, 92.0]


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


@settings(max_examples=200, deadline=None)
@given(
    hits=st.lists(st.booleans(), min_size=1, max_size=300),
    min_duration=st.integers(min_value=0, max_value=20),
    clear_after=st.integers(min_value=0, max_value=15),
    cooldown=st.integers(min_value=0, max_value=200),
)
def test_alert_count_is_bounded_by_cooldown_and_episodes(
    hits: list[bool], min_duration: int, clear_after: int, cooldown: int
) -> None:
    """Alerts are at least a cooldown apart, each preceded by min_duration of hits."""
    raised = feed(
        engine(min_duration=min_duration, clear_after=clear_after, cooldown=cooldown), hits
    )
    for earlier, later in itertools.pairwise(raised):
        assert later - earlier >= cooldown
    for t in raised:
        assert hits[int(t)], "an alert is raised only on a frame that hits"
        assert t >= min_duration
    if raised:
        assert len(raised) <= math.floor((len(hits) - 1) / max(cooldown, 1)) + 1


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=12, max_value=40), min_size=1, max_size=30),
    min_duration=st.integers(min_value=1, max_value=10),
)
def test_isolated_flickers_never_alert(gaps: list[int], min_duration: int) -> None:
    """Single-frame false positives further apart than clear_after never raise an alert."""
    timeline = []
    for gap in gaps:
        timeline += [True] + [False] * gap
    assert feed(engine(min_duration=min_duration, clear_after=10.0, cooldown=0), timeline) == []


@settings(max_examples=100, deadline=None)
@given(length=st.integers(min_value=1, max_value=200), min_duration=st.integers(0, 30))
def test_continuous_violation_alerts_iff_long_enough(length: int, min_duration: int) -> None:
    """A continuous run raises exactly one alert iff it lasts min_duration (long cooldown)."""
    raised = feed(engine(min_duration=min_duration, cooldown=10_000), [True] * length)
    assert len(raised) == (1 if length - 1 >= min_duration else 0)


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
