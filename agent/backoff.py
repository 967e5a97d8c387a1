"""Capped exponential backoff with jitter, shared by the camera readers and the uplink."""

from __future__ import annotations

import random


class Backoff:
    """Waits that double per failure up to ``maximum``, each in the upper half of its step.

    Half of each step is fixed and half random, so the cameras behind one NVR, or a city's
    boxes that lost the same broker, do not retry in lockstep.
    """

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.failures = 0
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not security

    def next_delay(self) -> float:
        """The delay before the next attempt; grows 2x per failure up to ``maximum``."""
        base = min(self.maximum, self.minimum * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return base / 2 + self._rng.uniform(0, base / 2)

    def reset(self) -> None:
        """Forget past failures."""
        self.failures = 0
