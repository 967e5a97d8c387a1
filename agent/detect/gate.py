"""Deciding what the detector looks at: change gating per camera, load governing overall.

**Change gating.** Inference is the box's dearest work, and most kitchen frames between
meals show an empty, unchanged room. A frame is skipped when less than ``threshold`` of
its small grey thumbnail (a share of the picture) changed by more than ``PIXEL_DELTA``
grey levels since the last *analysed* frame of its camera: the previous detections stand
for it (the scene has not changed, so neither has
what is in it), and the rules still see the time pass. Comparing against the last
analysed frame, not the previous one, makes slow drift add up until it is analysed. A
check is forced every ``max_skip`` seconds anyway: an uncovered tray or a person standing
still does not move, and lighting changes can hide in the threshold.

Why a changed *share* and not the mean change: a person crossing a wide kitchen view
covers 1-5 % of the picture, so the picture's mean change stays around one grey level
(measured on the shared sample video: median 1.2 while people walk) and would be taken
for noise; the share of pixels that changed clearly (median 1.5 % there, 0 on still
stretches) separates the two. Sensor noise and compression flicker stay far below 12
levels on a 64x36 thumbnail.

**Load governing.** When inference cannot keep up (more cameras than the box can serve at
their ``detect_interval``), frames would be dropped at random by the newest-wins slots and
the detect thread would run flat out. Instead the governor measures the share of time the
detect thread is busy; above ``HIGH`` it stretches every camera's interval by a common
factor (up to ``max_slowdown``), below ``LOW`` it shrinks it back. Every camera keeps the
same share (fair), the box degrades predictably, and the stretch is counted and reported
in the heartbeat rather than hidden.

The detect thread is not the only thing that can run out: its frames are shared among
several detectors (:mod:`agent.detect.pool`) and the decoders need CPU too, so the governor
also reads the whole box's CPU (``/proc/stat``, :class:`BoxCpu`). Above ``BOX_HIGH`` busy
it stretches even while the detect thread has time (decoders that get no CPU stall and
lose frames); it shrinks back only when the box is below ``BOX_LOW`` as well. Work run at a
lower priority (``nice``: a backup, a training job) does not count as busy: it yields to
the agent. A box with two idle cores and a busy detect thread was the old failure: the
detect thread's share alone capped the agent at 1.44 of 2 cores.

A busy detect thread alone is not overload either: at moderate load most turns hold one
frame, which runs on one detector while the others wait, so the thread looks busy before
the pool is used; as frames queue, turns grow and the workers share them. What says that
detection cannot keep up is frames replaced in their slot before it took them: with the
slots' counts (``frames``), the detect thread counts as overloaded only when more than
``DROP_HIGH`` of the frames offered in the window were dropped too (measured: at 20
cameras of 640x360 the busy share alone stretched every interval x1.56 with the box at
56 % CPU and the floor keeping up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.config import GatingConfig

THUMB_SIZE = (64, 36)  # width, height: enough for "did anything move", cheap (2,304 pixels)
PIXEL_DELTA = 12.0  # grey levels a thumbnail pixel must change by to count as changed
HIGH = 0.85  # busy share above which intervals stretch
LOW = 0.5  # busy share below which they shrink back
BOX_HIGH = 0.95  # whole-box CPU share above which intervals stretch
BOX_LOW = 0.85  # ... and below which (with the detect thread below LOW) they may shrink
DROP_HIGH = 0.05  # share of offered frames dropped in the window that says detection is short
STEP = 1.25  # factor per adjustment
WINDOW = 20.0  # seconds of busy-time history per decision


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small grey float32 copy of a BGR frame for change detection."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    small = cv2.resize(grey, THUMB_SIZE, interpolation=cv2.INTER_AREA)
    return small.astype(np.float32)


@dataclass(slots=True)
class GateStats:
    """Counters of one camera's gate."""

    analysed: int = 0
    skipped: int = 0
    forced: int = 0  # analysed only because max_skip had passed
    last_change: float = 0.0  # share of the last frame's thumbnail that changed


class ChangeGate:
    """Per camera: analyse this frame, or reuse the last detections?"""

    def __init__(self, config: GatingConfig) -> None:
        self.config = config
        self.stats = GateStats()
        self._thumb: np.ndarray | None = None
        self._analysed_mono: float | None = None

    def should_analyse(self, frame: np.ndarray, mono: float) -> bool:
        """Decide for ``frame`` (decoded at monotonic ``mono``); records the decision."""
        cfg = self.config
        thumb = thumbnail(frame)
        previous, last = self._thumb, self._analysed_mono
        change = (
            float(np.mean(np.abs(thumb - previous) > PIXEL_DELTA)) if previous is not None else 1.0
        )
        self.stats.last_change = change
        if not cfg.enabled or previous is None or last is None or change >= cfg.threshold:
            return self._analyse(thumb, mono)
        if mono - last >= cfg.max_skip:
            self.stats.forced += 1
            return self._analyse(thumb, mono)
        self.stats.skipped += 1
        return False

    def _analyse(self, thumb: np.ndarray, mono: float) -> bool:
        self._thumb = thumb
        self._analysed_mono = mono
        self.stats.analysed += 1
        return True

    def snapshot(self) -> dict[str, float | int]:
        """The counters as plain data."""
        s = self.stats
        return {
            "analysed": s.analysed,
            "skipped": s.skipped,
            "forced": s.forced,
            "last_change": round(s.last_change, 4),
        }


class BoxCpu:
    """The whole box's busy CPU share between two reads of ``/proc/stat``.

    Busy is user + system + irq + softirq + steal time of all CPUs; ``nice`` time (work at a
    lower priority, which yields to the agent), idle and iowait are headroom.
    """

    def __init__(self, path: Path = Path("/proc/stat")) -> None:
        self.path = path
        self._last: tuple[int, int] | None = None  # (busy, total) jiffies at the last read
        self.unreadable = False

    def _read(self) -> tuple[int, int] | None:
        try:
            with self.path.open(encoding="ascii") as stat:
                first = stat.readline().split()
        except OSError:
            return None
        if len(first) < 8 or first[0] != "cpu":
            return None
        try:
            user, nice, system, idle, iowait, irq, softirq = (int(v) for v in first[1:8])
            steal = int(first[8]) if len(first) > 8 else 0
        except ValueError:
            return None
        busy = user + system + irq + softirq + steal
        return busy, busy + nice + idle + iowait

    def sample(self) -> float | None:
        """Busy share since the previous call; None on the first call or when unreadable."""
        now = self._read()
        if now is None:
            self.unreadable = True
            return None
        last, self._last = self._last, now
        if last is None or now[1] <= last[1]:
            return None
        return min(1.0, max(0.0, (now[0] - last[0]) / (now[1] - last[1])))


class LoadGovernor:
    """Stretches all detection intervals together while detection or the box is overloaded."""

    def __init__(
        self,
        max_slowdown: float,
        now: float | None = None,
        *,
        box_cpu: Callable[[], float | None] | None = None,
    ) -> None:
        """``now``: the monotonic start time (tests pass their own clock); ``box_cpu``: the
        whole box's busy share since it was last asked (default :meth:`BoxCpu.sample`; None
        when unknown, then the detect thread alone decides)."""
        self.max_slowdown = max_slowdown
        self._box_cpu = BoxCpu().sample if box_cpu is None else box_cpu
        self._box_cpu()  # the first read only sets the baseline
        self.box_share: float | None = None
        self.factor = 1.0
        self.stretches = 0  # times the factor went up
        self.degraded_seconds = 0.0
        self._busy: list[tuple[float, float]] = []  # (end mono, busy seconds)
        self._frames: list[tuple[float, int, int]] = []  # (mono, offered, dropped) running totals
        self.dropped_share: float | None = None
        self._since = time.monotonic() if now is None else now
        self._last_decision = self._since
        self._last_tick = self._since

    def record(
        self,
        busy: float,
        mono: float | None = None,
        *,
        frames: tuple[int, int] | None = None,
    ) -> float:
        """Account ``busy`` seconds of detect work ending now; return the current factor.

        ``frames``: the cameras' slots' running totals (frames offered, frames dropped);
        without them a busy detect thread alone counts as overloaded.
        """
        now = time.monotonic() if mono is None else mono
        if self.factor > 1.0:
            self.degraded_seconds += now - self._last_tick
        self._last_tick = now
        self._busy.append((now, busy))
        horizon = now - WINDOW
        while self._busy and self._busy[0][0] < horizon:
            self._busy.pop(0)
        if frames is not None:
            self._frames.append((now, frames[0], frames[1]))
            while len(self._frames) > 1 and self._frames[0][0] < horizon:
                self._frames.pop(0)
        if now - self._last_decision < WINDOW / 4 or now - self._since < WINDOW / 2:
            return self.factor
        self._last_decision = now
        share = self.busy_share(now)
        box = self.box_share = self._box_cpu()
        dropped = self.dropped_share = self._dropped_share()
        short = share > HIGH and (dropped is None or dropped > DROP_HIGH)
        overloaded = short or (box is not None and box > BOX_HIGH)
        relaxed = share < LOW and (box is None or box < BOX_LOW)
        if overloaded and self.factor < self.max_slowdown:
            self.factor = min(self.max_slowdown, self.factor * STEP)
            self.stretches += 1
        elif relaxed and self.factor > 1.0:
            self.factor = max(1.0, self.factor / STEP)
        return self.factor

    def _dropped_share(self) -> float | None:
        """Frames dropped / offered over the window; None without the slots' counts."""
        if len(self._frames) < 2:
            return None
        _t0, offered0, dropped0 = self._frames[0]
        _t1, offered1, dropped1 = self._frames[-1]
        offered = offered1 - offered0
        if offered <= 0:  # a camera removed by a reload takes its counts away
            return 0.0
        return min(1.0, max(0.0, (dropped1 - dropped0) / offered))

    def busy_share(self, now: float | None = None) -> float:
        """Share of the last ``WINDOW`` seconds the detect thread spent working."""
        now = time.monotonic() if now is None else now
        span = min(WINDOW, max(1e-6, now - self._since))
        return min(1.0, sum(b for _end, b in self._busy) / span)

    def snapshot(self) -> dict[str, float | int | None]:
        """State for the heartbeat."""
        return {
            "busy_share": round(self.busy_share(), 3),
            "box_cpu": None if self.box_share is None else round(self.box_share, 3),
            "dropped_share": None if self.dropped_share is None else round(self.dropped_share, 3),
            "interval_scale": round(self.factor, 3),
            "stretches": self.stretches,
            "degraded_s": round(self.degraded_seconds, 1),
        }
