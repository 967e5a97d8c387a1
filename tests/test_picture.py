"""Picture checks: real frames raise nothing, a black, covered or frozen picture raises one warning.

Frames are real: the shared kitchen clip (skipped when ../shared is absent), synthetic
textures, and H.264 clips served by a real RTSP server and decoded by PyAV.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import PictureConfig
from agent.ingest.picture import (
    FROZEN_DIFFERENCE,
    Condition,
    PictureEvent,
    PictureMonitor,
    difference,
    measure,
)
from mclz_testkit.factories import RtspServerFactory
from mclz_testkit.rtsp import grab_frames

DEFAULTS = PictureConfig()


def textured(seed: int, width: int = 640, height: int = 360, block: int = 8) -> np.ndarray:
    """A detailed BGR picture: random colour blocks, different for each seed."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(40, 216, size=(height // block + 1, width // block + 1, 3), dtype=np.uint8)
    image = cv2.resize(cells, None, fx=block, fy=block, interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image[:height, :width])


def black(width: int = 640, height: int = 360) -> np.ndarray:
    """An all-black BGR picture."""
    return np.zeros((height, width, 3), np.uint8)


def flat(width: int = 640, height: int = 360) -> np.ndarray:
    """A uniform mid-grey BGR picture: no detail at all."""
    return np.full((height, width, 3), 128, np.uint8)


def feed(
    monitor: PictureMonitor, frames: Sequence[np.ndarray], *, start: float = 0.0, step: float = 1.0
) -> list[PictureEvent]:
    """Feed frames ``step`` seconds apart from ``start``; return every event raised."""
    events: list[PictureEvent] = []
    for i, image in enumerate(frames):
        events += monitor.update(image, start + i * step)
    return events


def summary(events: Sequence[PictureEvent]) -> list[tuple[Condition, bool, float]]:
    """Events as (condition, started, time) for exact comparisons."""
    return [(e.condition, e.active, e.mono) for e in events]


# --------------------------------------------------------------------------- covered cases


def cloth_over(image: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Hang a uniform cloth over the top ``share`` of the lens: soft edge, folds, sensor noise."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    folds = (1 + 0.15 * np.sin(xs / width * 3 + ys / height * 2))[..., None]
    cloth = np.array((70, 90, 120), np.float32) * folds  # BGR of a dull blue-grey towel
    hard = np.zeros((height, width), np.float32)
    hard[: round(height * share)] = 1
    mask = cv2.GaussianBlur(hard, (0, 0), width * 0.02)[..., None]  # out of focus on the lens
    out = image * (1 - mask) + cloth * mask + rng.normal(0, 3, image.shape)
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)


def hand_over(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Put a palm right in front of the lens: a smooth, shaded, skin-coloured blob."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    inside = ((xs - 0.45 * width) / (0.62 * width)) ** 2 + (
        (ys - 0.55 * height) / (0.62 * height)
    ) ** 2 < 1
    mask = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), width * 0.03)[..., None]
    shade = (0.75 + 0.35 * (xs / width) * (1 - ys / height))[..., None]
    skin = np.array((120, 150, 205), np.float32) * shade
    out = image * (1 - mask) + skin * mask + rng.normal(0, 3, image.shape)
    return np.asarray(np.clip(out, 0, 255), dtype=np.uint8)


def defocused(image: np.ndarray) -> np.ndarray:
    """Blur as steam or a defocused lens does: Gaussian, sigma 1 % of the width."""
    return cv2.GaussianBlur(image, (0, 0), image.shape[1] * 0.01)


# --------------------------------------------------------------------------- the real clip


@dataclass
class ClipPass:
    """One pass over the real clip: what the monitors said, and a few frames kept."""

    default_events: list[PictureEvent]  # default config, one frame a second
    strict_events: list[PictureEvent]  # warn_after 0, frozen_after 10 s, every frame
    luma: list[float]
    sharpness: list[float]
    one_second_differences: list[float]
    samples: list[np.ndarray]


@pytest.fixture(scope="module")
def clip_pass(sample_video: Path) -> ClipPass:
    """Decode the shared clip once, feeding every frame at its own time (10 fps)."""
    default = PictureMonitor(DEFAULTS)
    strict = PictureMonitor(PictureConfig(warn_after=0, clear_after=0, frozen_after=10))
    result = ClipPass([], [], [], [], [], [])
    previous: np.ndarray | None = None
    with av.open(str(sample_video)) as container:
        stream = container.streams.video[0]
        fps = round(float(stream.average_rate))
        for index, frame in enumerate(container.decode(stream)):
            image = frame.to_ndarray(format="bgr24")
            mono = index / fps
            result.strict_events += strict.update(image, mono)
            if index % fps:
                continue
            result.default_events += default.update(image, mono)
            stats = measure(image)
            result.luma.append(stats.luma)
            result.sharpness.append(stats.sharpness)
            if previous is not None:
                result.one_second_differences.append(difference(stats.thumbnail, previous))
            previous = stats.thumbnail
            if index % (fps * 12) == 0:
                result.samples.append(image)
    return result


def test_real_clip_raises_no_warning(clip_pass: ClipPass) -> None:
    """A lit kitchen scene, busy or quiet, is never black, covered or frozen.

    Even with no debounce at all (warn_after 0) and frozen after 10 s at every frame: the
    quiet stretches of the clip still change (noise and compression) at every keyframe.
    """
    assert len(clip_pass.luma) > 100  # the whole clip, at one frame a second
    assert clip_pass.default_events == []
    assert clip_pass.strict_events == []


def test_real_clip_sits_far_from_every_threshold(clip_pass: ClipPass) -> None:
    """The calibration holds with margin: luma, detail and change are far from the limits."""
    assert min(clip_pass.luma) > 5 * DEFAULTS.black_luma
    assert min(clip_pass.sharpness) > 4 * DEFAULTS.sharpness_min
    assert min(clip_pass.one_second_differences) > 2 * FROZEN_DIFFERENCE


@pytest.mark.parametrize("case", ["defocused", "cloth 80 %", "hand"])
def test_covered_or_defocused_real_frames_read_as_covered(clip_pass: ClipPass, case: str) -> None:
    """Strong blur, a cloth over most of the lens or a hand on it leave too little detail."""
    rng = np.random.default_rng(7)
    for image in clip_pass.samples:
        if case == "defocused":
            covered = defocused(image)
        elif case == "cloth 80 %":
            covered = cloth_over(image, 0.8, rng)
        else:
            covered = hand_over(image, rng)
        stats = measure(covered)
        assert stats.luma >= DEFAULTS.black_luma, case  # not black: the covered rule applies
        assert stats.sharpness < DEFAULTS.sharpness_min / 2, case


# --------------------------------------------------------------------------- synthetic rules


def test_black_starts_once_after_warn_after_and_clears_after_clear_after() -> None:
    """30 s of black gives one BLACK start at warn_after, cleared clear_after into normal."""
    monitor = PictureMonitor(PictureConfig(warn_after=10, clear_after=5, frozen_after=60))
    events = feed(monitor, [black()] * 30)
    assert summary(events) == [(Condition.BLACK, True, 10.0)]
    assert "mean luma 0.0 < 20 for 10 s" in events[0].detail
    assert monitor.active == {Condition.BLACK}
    events = feed(monitor, [textured(i) for i in range(10)], start=30)
    assert summary(events) == [(Condition.BLACK, False, 35.0)]
    assert monitor.active == frozenset()


def test_blurred_frames_raise_covered_not_black() -> None:
    """A defocused picture raises COVERED after warn_after, and nothing else."""
    monitor = PictureMonitor(PictureConfig(warn_after=5, clear_after=3))
    blurred = [defocused(textured(i, block=4)) for i in range(12)]
    events = feed(monitor, blurred)
    assert summary(events) == [(Condition.COVERED, True, 5.0)]
    assert events[0].detail.startswith("detail ")
    events = feed(monitor, [textured(i) for i in range(5)], start=12)
    assert summary(events) == [(Condition.COVERED, False, 15.0)]


def test_black_wins_over_covered() -> None:
    """A black picture has no detail either, but only BLACK is raised for it."""
    monitor = PictureMonitor(PictureConfig(warn_after=2))
    events = feed(monitor, [black()] * 10)
    assert summary(events) == [(Condition.BLACK, True, 2.0)]


def test_repeated_frame_freezes_and_one_changed_frame_clears() -> None:
    """The same picture for frozen_after raises FROZEN; the first changed frame clears it."""
    monitor = PictureMonitor(PictureConfig(frozen_after=30))
    still = textured(1)
    events = feed(monitor, [still] * 41)
    assert summary(events) == [(Condition.FROZEN, True, 30.0)]
    assert monitor.metrics()["unchanged_s"] == 40.0
    events = monitor.update(textured(2), 41.0)
    assert summary(events) == [(Condition.FROZEN, False, 41.0)]
    assert events[0].detail.startswith("picture changed (difference ")
    assert monitor.metrics()["unchanged_s"] == 0.0


def test_encoder_noise_and_a_ticking_clock_do_not_hide_a_freeze() -> None:
    """A frozen picture with speckles of re-encoding noise and a ticking OSD clock is frozen."""
    rng = np.random.default_rng(3)
    still = textured(4)
    frames = []
    for second in range(20):
        speckle = rng.integers(-2, 3, still.shape) * (rng.random(still.shape[:2]) < 0.1)[..., None]
        image = np.clip(still + speckle, 0, 255).astype(np.uint8)
        clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1_700_000_000 + second))
        cv2.putText(image, clock, (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 255), 2)
        frames.append(image)
    monitor = PictureMonitor(PictureConfig(frozen_after=15))
    assert summary(feed(monitor, frames)) == [(Condition.FROZEN, True, 15.0)]


@pytest.mark.parametrize(("share", "changed"), [(0.3, False), (0.7, True)])
def test_faint_change_over_most_of_the_picture_ends_a_freeze(share: float, changed: bool) -> None:
    """One grey level brighter over 70 % of the picture is a change (a keyframe's fresh noise
    is about that); over 30 % it is within a re-encoded still's wobble, so still frozen."""
    still = textured(6)
    brighter = still.copy()
    brighter[: round(still.shape[0] * share)] += 1
    monitor = PictureMonitor(PictureConfig(frozen_after=5))
    feed(monitor, [still] * 6)
    assert monitor.active == {Condition.FROZEN}
    events = monitor.update(brighter, 6.0)
    assert summary(events) == ([(Condition.FROZEN, False, 6.0)] if changed else [])


def test_black_or_flat_repeats_are_not_frozen() -> None:
    """Identical black or featureless frames prove nothing about the stream: not FROZEN."""
    config = PictureConfig(frozen_after=5, warn_after=100)
    assert feed(PictureMonitor(config), [black()] * 20) == []
    assert feed(PictureMonitor(config), [flat()] * 20) == []


def test_new_frame_size_ends_a_freeze() -> None:
    """A stream that changes resolution has changed picture: FROZEN clears."""
    monitor = PictureMonitor(PictureConfig(frozen_after=3))
    feed(monitor, [textured(5)] * 5)
    assert monitor.active == {Condition.FROZEN}
    events = monitor.update(textured(5, width=640, height=480), 5.0)
    assert summary(events) == [(Condition.FROZEN, False, 5.0)]
    assert "new frame size" in events[0].detail


def test_disabled_monitor_never_reports() -> None:
    """With enabled false nothing is measured and no event is ever raised."""
    monitor = PictureMonitor(PictureConfig(enabled=False, warn_after=0, frozen_after=1))
    assert feed(monitor, [black()] * 5 + [textured(0)] * 5) == []
    assert monitor.metrics() == {}
    assert monitor.active == frozenset()


def test_metrics_report_the_last_frame() -> None:
    """metrics() gives the last luma, contrast, sharpness and seconds unchanged."""
    monitor = PictureMonitor(DEFAULTS)
    assert monitor.metrics() == {}
    monitor.update(flat(), 0.0)
    assert monitor.metrics() == {
        "luma": 128.0,
        "contrast": 0.0,
        "sharpness": 0.0,
        "unchanged_s": 0.0,
    }


def test_time_going_backwards_and_non_bgr_images_are_refused() -> None:
    """Misuse raises ValueError: a frame older than the last one, or not HxWx3 uint8."""
    monitor = PictureMonitor(DEFAULTS)
    monitor.update(textured(0), 10.0)
    with pytest.raises(ValueError, match="backwards"):
        monitor.update(textured(1), 9.0)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        measure(np.zeros((36, 64), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        measure(np.zeros((36, 64, 3), np.float32))


def test_measure_looks_the_same_at_any_resolution() -> None:
    """The same scene at 640x360 and 1920x1080 measures alike: thresholds hold for both."""
    small = textured(9, block=16)
    large = cv2.resize(small, (1920, 1080), interpolation=cv2.INTER_NEAREST)
    a, b = measure(small), measure(large)
    assert a.thumbnail.shape == b.thumbnail.shape == (180, 320)
    assert abs(a.luma - b.luma) < 1
    assert 0.5 < a.sharpness / b.sharpness < 2


# --------------------------------------------------------------------------- real RTSP


def write_still_clip(path: Path, image: np.ndarray, *, seconds: float, fps: int = 10) -> Path:
    """Encode one picture again and again with libx264, like a camera whose picture froze."""
    height, width = image.shape[:2]
    options = {
        "preset": "veryfast",
        "tune": "zerolatency",
        "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
    }
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        for i in range(round(seconds * fps)):
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_black_and_frozen_rtsp_streams_raise_their_warnings(
    rtsp_server_factory: RtspServerFactory, tmp_path: Path
) -> None:
    """Over real RTSP + H.264, a black camera raises BLACK and a frozen one raises FROZEN.

    The frozen camera's decoded frames are not bit-identical (the encoder keeps refining the
    picture) and must still read as frozen.
    """
    server = rtsp_server_factory(
        {
            "/black": write_still_clip(tmp_path / "black.mp4", black(), seconds=20),
            "/frozen": write_still_clip(tmp_path / "frozen.mp4", textured(11), seconds=20),
        }
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        black_grab = pool.submit(grab_frames, server.url("/black"), seconds=6)
        frozen_grab = pool.submit(grab_frames, server.url("/frozen"), seconds=7)
        black_frames, frozen_frames = black_grab.result(), frozen_grab.result()
    config = PictureConfig(warn_after=2, clear_after=1, frozen_after=3)

    def run(frames: Iterator[tuple[float, np.ndarray]]) -> list[PictureEvent]:
        monitor = PictureMonitor(config)
        return [event for mono, image in frames for event in monitor.update(image, mono)]

    black_events = run((f.received_at, f.image) for f in black_frames)
    assert [(e.condition, e.active) for e in black_events] == [(Condition.BLACK, True)]
    frozen_events = run((f.received_at, f.image) for f in frozen_frames)
    assert [(e.condition, e.active) for e in frozen_events] == [(Condition.FROZEN, True)]
    identical = sum(np.array_equal(a.image, b.image) for a, b in itertools.pairwise(frozen_frames))
    assert identical < len(frozen_frames) - 1


# --------------------------------------------------------------------------- properties

SMALL = {"normal": [textured(i, 320, 180, 4) for i in range(5)]}
KINDS = {"black": black(320, 180), "flat": flat(320, 180)}
CONDITION_OF = {"black": Condition.BLACK, "flat": Condition.COVERED}

gaps = st.floats(min_value=0.1, max_value=8.0, allow_nan=False)
frames_strategy = st.lists(
    st.tuples(st.sampled_from(["normal", "black", "flat"]), gaps), max_size=60
)
durations = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)


def run_kinds(
    config: PictureConfig, kinds: Sequence[tuple[str, float]]
) -> tuple[list[tuple[str, float]], list[PictureEvent]]:
    """Feed normal/black/flat frames with the given gaps; return (kind, time) and events."""
    monitor = PictureMonitor(config)
    timeline: list[tuple[str, float]] = []
    events: list[PictureEvent] = []
    mono = 0.0
    for i, (kind, gap) in enumerate(kinds):
        mono += gap
        image = SMALL["normal"][i % 5] if kind == "normal" else KINDS[kind]
        timeline.append((kind, mono))
        events += monitor.update(image, mono)
    return timeline, events


def run_start(timeline: Sequence[tuple[str, float]], at: float, inside: bool, kind: str) -> float:
    """When the unbroken run (of ``kind``, or of anything else) that ends at ``at`` began."""
    index = next(i for i, (_, t) in enumerate(timeline) if t == at)
    start = at
    for k, t in reversed(timeline[: index + 1]):
        if (k == kind) != inside:
            break
        start = t
    return start


@settings(deadline=None, max_examples=150)
@given(frames_strategy, durations, durations)
def test_warnings_need_their_full_duration_and_alternate(
    kinds: list[tuple[str, float]], warn_after: float, clear_after: float
) -> None:
    """Every start follows an unbroken run of warn_after, every clear one of clear_after;
    per condition, starts and clears alternate, beginning with a start."""
    config = PictureConfig(warn_after=warn_after, clear_after=clear_after, frozen_after=86400)
    timeline, events = run_kinds(config, kinds)
    for kind, condition in CONDITION_OF.items():
        mine = [e for e in events if e.condition is condition]
        assert [e.active for e in mine] == [i % 2 == 0 for i in range(len(mine))]
        for event in mine:
            start = run_start(timeline, event.mono, inside=event.active, kind=kind)
            needed = warn_after if event.active else clear_after
            assert event.mono - start >= needed


@settings(deadline=None, max_examples=100)
@given(
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8),
    st.floats(min_value=0.5, max_value=3.0),
)
def test_black_shorter_than_warn_after_never_warns(runs: list[int], step: float) -> None:
    """Black stretches that each last less than warn_after, however many, raise nothing."""
    warn_after = 5 * step + 0.01  # longer than 6 frames `step` apart span
    kinds: list[tuple[str, float]] = []
    for run in runs:
        kinds += [("black", step)] * run + [("normal", step)]
    _, events = run_kinds(PictureConfig(warn_after=warn_after), kinds)
    assert events == []


@settings(deadline=None, max_examples=100)
@given(
    st.floats(min_value=0.2, max_value=5.0),
    st.floats(min_value=1.0, max_value=4.0),
    st.integers(min_value=2, max_value=40),
)
def test_alternating_noise_does_not_flap(step: float, factor: float, flips: int) -> None:
    """Black/normal alternating faster than warn_after and clear_after starts and clears nothing
    new: before a warning it never starts, after one it never clears."""
    config = PictureConfig(warn_after=step * factor + 0.01, clear_after=step * factor + 0.01)
    noise = [("black" if i % 2 else "normal", step) for i in range(flips)]
    _, events = run_kinds(config, noise)
    assert events == []
    sustained = [("black", step)] * (int(factor) + 3)
    _, events = run_kinds(config, sustained + noise)
    assert [(e.condition, e.active) for e in events] == [(Condition.BLACK, True)]


@settings(deadline=None, max_examples=150)
@given(
    st.lists(st.tuples(st.booleans(), gaps), min_size=1, max_size=60),
    st.floats(min_value=1.0, max_value=30.0),
)
def test_frozen_starts_exactly_when_unchanged_long_enough(
    steps: list[tuple[bool, float]], frozen_after: float
) -> None:
    """FROZEN starts once a picture has lasted frozen_after, and clears at the next change."""
    monitor = PictureMonitor(PictureConfig(frozen_after=frozen_after, warn_after=0))
    picture, since, frozen, mono = 0, 0.0, False, 0.0
    expected: list[tuple[Condition, bool, float]] = []
    got: list[PictureEvent] = []
    for i, (change, gap) in enumerate(steps):
        mono += gap
        if i == 0 or change:
            picture += 1
            since = mono
            if frozen:
                expected.append((Condition.FROZEN, False, mono))
                frozen = False
        elif not frozen and mono - since >= frozen_after:
            expected.append((Condition.FROZEN, True, mono))
            frozen = True
        got += monitor.update(SMALL["normal"][picture % 5], mono)
    assert summary(got) == expected


@settings(deadline=None, max_examples=50)
@given(frames_strategy)
def test_disabled_checks_never_raise(kinds: list[tuple[str, float]]) -> None:
    """With enabled false, no sequence of frames raises any event."""
    config = PictureConfig(enabled=False, warn_after=0, clear_after=0, frozen_after=1)
    _, events = run_kinds(config, kinds)
    assert events == []
