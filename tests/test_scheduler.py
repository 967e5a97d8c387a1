"""Change gating and the load governor, on real video frames and hand-made scenes."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from agent.config import GatingConfig
from agent.detect.gate import HIGH, LOW, WINDOW, BoxCpu, ChangeGate, LoadGovernor, thumbnail

VIDEO = Path(__file__).resolve().parents[2] / "shared" / "videos" / "bareheaded_people_indoor.mp4"


def video_frames(count: int, every: int = 10) -> list[np.ndarray]:
    """``count`` BGR frames, one per ``every`` frames (1 s at 10 fps), of the shared video."""
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} is not available")
    frames = []
    with av.open(str(VIDEO)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    return frames


def test_static_scene_is_skipped_but_forced_every_max_skip() -> None:
    """An unchanging picture is analysed once, then only every max_skip seconds."""
    gate = ChangeGate(GatingConfig(threshold=0.002, max_skip=10.0))
    still = np.full((360, 640, 3), 90, np.uint8)
    decisions = [gate.should_analyse(still, mono=float(t)) for t in range(31)]
    assert [t for t, d in enumerate(decisions) if d] == [0, 10, 20, 30]
    assert gate.stats.forced == 3
    assert gate.stats.skipped == 27


def test_sensor_noise_is_not_a_change_but_a_person_is() -> None:
    """Noise of a few grey levels stays under the threshold; an object entering does not."""
    rng = np.random.default_rng(7)
    gate = ChangeGate(GatingConfig(threshold=0.002, max_skip=1000.0))
    base = rng.integers(60, 200, (360, 640, 3), dtype=np.uint8)
    assert gate.should_analyse(base, 0.0)
    noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255)
    assert not gate.should_analyse(noisy.astype(np.uint8), 1.0)
    person = base.copy()
    person[150:250, 300:330] = 20  # a dark figure, 1.3 % of the picture
    assert gate.should_analyse(person, 2.0)


def test_slow_drift_adds_up_against_the_last_analysed_frame() -> None:
    """Small steps each under the pixel delta trigger once their sum is over it."""
    gate = ChangeGate(GatingConfig(threshold=0.002, max_skip=1000.0))
    analysed = [
        gate.should_analyse(np.full((90, 160, 3), 100 + 5 * step, np.uint8), step)
        for step in range(10)
    ]
    # 5 grey levels a step: 15 > 12 after three steps.
    assert analysed == [True, False, False, True, False, False, True, False, False, True]


def test_gating_off_analyses_everything() -> None:
    """enabled: false analyses every frame."""
    gate = ChangeGate(GatingConfig(enabled=False))
    still = np.zeros((90, 160, 3), np.uint8)
    assert all(gate.should_analyse(still, float(t)) for t in range(5))


def test_real_video_people_walking_are_analysed_empty_room_skipped() -> None:
    """On the canteen-like sample video (people walk up one at a time, empty stretches
    between them), every second with a person moving is analysed; skipped seconds are
    ones where almost nothing changed."""
    frames = video_frames(138)
    gate = ChangeGate(GatingConfig(max_skip=10.0))
    decisions = [gate.should_analyse(frame, float(t)) for t, frame in enumerate(frames)]
    moving = [
        t
        for t in range(1, len(frames))
        if float(np.mean(np.abs(thumbnail(frames[t]) - thumbnail(frames[t - 1])) > 12)) > 0.01
    ]
    assert moving, "the video has people walking"
    assert all(decisions[t] for t in moving), "a second with clear movement was skipped"
    assert gate.stats.skipped > 0  # the empty stretches


def test_governor_stretches_under_load_and_recovers() -> None:
    """Busy above HIGH stretches the factor up to max_slowdown; idle brings it back to 1."""
    t = 1000.0
    governor = LoadGovernor(max_slowdown=2.0, now=t, box_cpu=lambda: 0.3)
    for _ in range(int(3 * WINDOW)):  # busy 0.95 s per second
        t += 1.0
        governor.record(0.95, mono=t)
    assert governor.factor == 2.0
    assert governor.stretches >= 3
    assert governor.busy_share(t) > HIGH
    assert governor.degraded_seconds > 0
    for _ in range(int(6 * WINDOW)):  # nearly idle
        t += 1.0
        governor.record(0.05, mono=t)
    assert governor.factor == 1.0
    assert governor.busy_share(t) < LOW


def test_governor_leaves_a_comfortable_box_alone() -> None:
    """At 60 % busy (between LOW and HIGH) nothing changes."""
    t = 1000.0
    governor = LoadGovernor(max_slowdown=4.0, now=t, box_cpu=lambda: 0.6)
    for _ in range(int(3 * WINDOW)):
        t += 1.0
        governor.record(0.6, mono=t)
    assert governor.factor == 1.0
    assert governor.stretches == 0


def test_governor_stretches_when_the_box_is_full_though_detection_has_time() -> None:
    """Decoders starve when the whole box is busy: the factor grows even at 30 % detect load,
    and comes back only once the box has room again."""
    t = 1000.0
    box = [0.98]
    governor = LoadGovernor(max_slowdown=2.0, now=t, box_cpu=lambda: box[0])
    for _ in range(int(3 * WINDOW)):
        t += 1.0
        governor.record(0.3, mono=t)
    assert governor.factor == 2.0
    assert governor.snapshot()["box_cpu"] == 0.98
    box[0] = 0.9  # between BOX_LOW and BOX_HIGH: hold
    for _ in range(int(3 * WINDOW)):
        t += 1.0
        governor.record(0.05, mono=t)
    assert governor.factor == 2.0
    box[0] = 0.5
    for _ in range(int(6 * WINDOW)):
        t += 1.0
        governor.record(0.05, mono=t)
    assert governor.factor == 1.0


def test_governor_without_a_box_reading_judges_the_detect_thread_alone() -> None:
    """box_cpu None (no /proc/stat): a busy detect thread still stretches, an idle one not."""
    t = 1000.0
    governor = LoadGovernor(max_slowdown=2.0, now=t, box_cpu=lambda: None)
    for _ in range(int(3 * WINDOW)):
        t += 1.0
        governor.record(0.95, mono=t)
    assert governor.factor == 2.0
    assert governor.snapshot()["box_cpu"] is None


def write_stat(path: Path, user: int, nice: int, system: int, idle: int) -> None:
    path.write_text(
        f"cpu  {user} {nice} {system} {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4 0 0 0 0 0 0\n",
        encoding="ascii",
    )


def test_box_cpu_reads_proc_stat_and_counts_nice_work_as_headroom(tmp_path: Path) -> None:
    """Busy share between two reads; niced jiffies count as room; a bad file gives None."""
    stat = tmp_path / "stat"
    write_stat(stat, user=100, nice=0, system=50, idle=850)
    meter = BoxCpu(stat)
    assert meter.sample() is None  # the first read is the baseline
    write_stat(stat, user=160, nice=300, system=70, idle=870)  # +80 busy, +300 nice, +20 idle
    assert meter.sample() == pytest.approx(80 / 400)
    stat.write_text("garbage\n", encoding="ascii")
    assert meter.sample() is None
    assert meter.unreadable
    assert BoxCpu(tmp_path / "missing").sample() is None


def test_box_cpu_reads_this_machine() -> None:
    """On Linux the real /proc/stat gives a share in 0..1 once time has passed."""
    meter = BoxCpu()
    meter.sample()
    deadline = time.monotonic() + 30
    share = None
    while share is None and time.monotonic() < deadline:
        time.sleep(0.2)
        share = meter.sample()
    assert share is not None
    assert 0.0 <= share <= 1.0


def test_a_busy_detect_thread_that_loses_no_frame_is_not_stretched() -> None:
    """With the slots' counts: busy 95 % but every frame taken -> no stretch (the pool has
    room); the same load with 10 % of the frames dropped -> stretched."""
    t = 1000.0
    calm = LoadGovernor(max_slowdown=2.0, now=t, box_cpu=lambda: 0.6)
    short = LoadGovernor(max_slowdown=2.0, now=t, box_cpu=lambda: 0.6)
    offered = dropped = 0
    for _ in range(int(3 * WINDOW)):
        t += 1.0
        offered += 20
        calm.record(0.95, mono=t, frames=(offered, 0))
        dropped += 2
        short.record(0.95, mono=t, frames=(offered, dropped))
    assert calm.factor == 1.0
    assert calm.snapshot()["dropped_share"] == 0.0
    assert short.factor == 2.0
    assert short.snapshot()["dropped_share"] == pytest.approx(0.1, abs=0.01)
