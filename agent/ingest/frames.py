"""The hand-off between a camera reader and its consumer: decoded frames and where they wait.

Detection takes from a :class:`FrameSlot` (the newest frame wins; a frame replaced before
it was taken is dropped and counted, so a slow detector never builds a queue); evidence
looks back into a :class:`FrameRing` of the main stream. Neither needs PyAV.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame handed to detection."""

    camera_id: str
    image: np.ndarray = field(repr=False)  # BGR, HxWx3 uint8
    wall: float  # time.time() when decoded
    mono: float  # time.monotonic() when decoded
    keyframe: bool


class FrameSlot:
    """Holds the newest frame of one camera; an untaken frame replaced by a newer one is dropped."""

    def __init__(self, wake: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._wake = wake
        self.dropped = 0
        self.offered = 0  # frames put, dropped ones included: the load governor's base

    def put(self, frame: Frame) -> None:
        """Offer a frame; replaces (and counts as dropped) one not yet taken."""
        with self._lock:
            self.offered += 1
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
        if self._wake is not None:
            self._wake.set()

    def take(self) -> Frame | None:
        """Take the newest frame, if any."""
        with self._lock:
            frame, self._frame = self._frame, None
        return frame


class FrameSink(Protocol):
    """Where a reader puts the frames it decodes for analysis."""

    dropped: int

    def put(self, frame: Frame) -> None:
        """Offer a frame."""


class FrameRing:
    """The last few frames of a camera's main stream, for evidence at full resolution."""

    def __init__(self, size: int = 4) -> None:
        self._lock = threading.Lock()
        self._frames: collections.deque[Frame] = collections.deque(maxlen=size)
        self.dropped = 0  # frames age out of the ring by design; nothing is dropped

    def put(self, frame: Frame) -> None:
        """Keep ``frame``, forgetting the oldest."""
        with self._lock:
            self._frames.append(frame)

    def closest(self, wall: float, within: float) -> Frame | None:
        """The kept frame decoded closest to ``wall``, if within ``within`` seconds of it."""
        with self._lock:
            frames = list(self._frames)
        best = min(frames, key=lambda f: abs(f.wall - wall), default=None)
        if best is None or abs(best.wall - wall) > within:
            return None
        return best
