"""Several detectors of one model package sharing a turn's frames: inference on idle cores.

One detect thread with one :class:`~agent.detect.detector.Detector` keeps at most about
1.5 of 2 cores busy: between inference calls it letterboxes, decodes boxes, runs the face
stage's small passes and merges, and onnxruntime's intra-op threads parallelise a YOLO-n at
416 px and YuNet on a sub-stream picture poorly (measured on 16 640x360 frames, two cores:
one detector with two intra-op threads 38.6 ms per frame, two detectors with one thread each
on half the frames 31.4 ms, 1.88 cores busy). So a turn's frames are dealt out to
``workers`` detectors run side by side; onnxruntime and OpenCV release the GIL while they
compute. A detector object is not safe to share between threads (its letterbox canvas,
OpenVINO's single request), so each worker has its own, made by :meth:`Detector.twin`: with
onnxruntime the twins share the sessions, whose weights and arenas are then held once.

The pool works only when a turn has more than one frame to analyse, that is when the box
is loaded; a turn with one frame runs on the calling thread alone, with no hand-over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from agent.detect.detector import Detector, UInt8Array
from agent.detect.model import ModelPackage
from agent.detect.views import View
from agent.records import Detection

logger = logging.getLogger(__name__)

#: ``auto`` never starts more detectors than this (OpenVINO's and OpenCV's objects are per
#: worker: memory).
MAX_AUTO_WORKERS: Final = 4


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's cpuset counts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def auto_workers(threads: int, cores: int | None = None) -> int:
    """Detectors for ``auto``: the cores divided by each detector's intra-op ``threads``,
    between 1 and :data:`MAX_AUTO_WORKERS`."""
    have = usable_cores() if cores is None else cores
    return max(1, min(MAX_AUTO_WORKERS, have // max(1, threads)))


def resolve_workers(workers: int | str, threads: int) -> int:
    """``model.workers`` as a count: ``auto`` becomes :func:`auto_workers` of ``threads``."""
    return auto_workers(threads) if workers == "auto" else int(workers)


class DetectorPool:
    """``workers`` detectors (``make``'s and its twins); :meth:`detect_views` deals frames out.

    Raises (from ``make``): ModelError when the package cannot be loaded.
    """

    def __init__(self, make: Callable[[], Detector], workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, not {workers!r}")
        first = make()
        self.detectors: tuple[Detector, ...] = (
            first,
            *(first.twin() for _ in range(workers - 1)),
        )
        self._executor = (
            ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="detect-worker")
            if workers > 1
            else None
        )
        self.parallel_turns = 0  # turns whose frames were shared among several detectors
        if workers > 1:
            logger.info("detection runs on %d detectors side by side", workers)

    @property
    def workers(self) -> int:
        """How many detectors the pool has."""
        return len(self.detectors)

    @property
    def package(self) -> ModelPackage:
        """The model package every detector runs."""
        return self.detectors[0].package

    @property
    def backend_name(self) -> str:
        """The inference backend (the same for every detector)."""
        return self.detectors[0].backend_name

    @property
    def face_labels(self) -> frozenset[str]:
        """Labels the package's face stage decides (empty without one)."""
        return self.detectors[0].face_labels

    def detect_views(
        self,
        frames_bgr: Sequence[UInt8Array],
        views: Sequence[View],
        faces: Sequence[bool] | None = None,
    ) -> list[list[Detection]]:
        """:meth:`Detector.detect_views` for ``frames_bgr``, shared among the detectors.

        Frame i goes to detector ``i % n`` (n: the detectors, or fewer when there are fewer
        frames); the first share runs on the calling thread. Results come back in order. An
        error in any share (ModelError, ValueError) is raised here after every share ended.
        """
        if len(views) != len(frames_bgr):
            raise ValueError(f"{len(frames_bgr)} frame(s) but {len(views)} view(s)")
        if faces is not None and len(faces) != len(frames_bgr):
            raise ValueError(f"{len(frames_bgr)} frame(s) but {len(faces)} face flag(s)")
        shares = min(len(self.detectors), len(frames_bgr))
        if shares <= 1 or self._executor is None:
            return self.detectors[0].detect_views(frames_bgr, views, faces)
        self.parallel_turns += 1
        picks = [range(k, len(frames_bgr), shares) for k in range(shares)]

        def run(k: int) -> list[list[Detection]]:
            index = picks[k]
            return self.detectors[k].detect_views(
                [frames_bgr[i] for i in index],
                [views[i] for i in index],
                None if faces is None else [faces[i] for i in index],
            )

        futures: list[Future[list[list[Detection]]]] = [
            self._executor.submit(run, k) for k in range(1, shares)
        ]
        try:
            first = run(0)
        finally:
            outcomes = [f.exception() for f in futures]  # waits for every share
        for error in outcomes:
            if error is not None:
                raise error
        results: list[list[Detection]] = [[] for _ in frames_bgr]
        for k, found in enumerate([first, *(f.result() for f in futures)]):
            for i, detections in zip(picks[k], found, strict=True):
                results[i] = detections
        return results

    def close(self) -> None:
        """Let the helper threads end once their current share is done (at shutdown)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
