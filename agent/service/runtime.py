"""What the service's parts share: the per-camera parts and the state a reload replaces.

:class:`Cameras` holds everything kept per camera (readers, frame slots and rings, picture
monitors, change gates, views, the last analysed frame and detections) and runs the
readers' threads. :class:`Runtime` holds the config in force and what is rebuilt with it.
Both are shared by reference: a part reads a field each time it needs it and never keeps
a copy, so a reload reaches every part at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig, CameraConfig
from agent.detect.food import FoodMonitor
from agent.detect.gate import ChangeGate
from agent.detect.views import View
from agent.ingest.frames import Frame, FrameRing, FrameSlot
from agent.ingest.picture import PictureMonitor
from agent.ingest.reader import CameraReader
from agent.records import Detection, Transition

RUN_KEY = "state.run"  # settings rows read by ``mclz-agent status``
PROGRESS_KEY = "state.progress"


@dataclass
class Runtime:
    """The config in force and what a reload rebuilds with it (read afresh, never kept)."""

    config: AgentConfig
    food: FoodMonitor
    reloaded_at: float | None = None
    restart_required: list[str] = field(default_factory=list)


class Cameras:
    """The per-camera parts of the running agent, and the threads of their readers.

    The dictionaries are replaced, never mutated, when cameras change (:meth:`add`,
    :meth:`remove`), so threads iterating over them never see one change size: read an
    attribute once, then iterate over what was read.

    Reader threads (``ingest-<camera>``, ``ingest-<camera>/main``) are started by
    :meth:`start` and end when their camera's stop event is set (:meth:`remove`,
    :meth:`stop_all`).
    """

    def __init__(self, wake: threading.Event) -> None:
        """``wake`` is set by every frame slot when a frame arrives (the detect loop waits)."""
        self._wake = wake
        self.readers: dict[str, CameraReader] = {}
        self.slots: dict[str, FrameSlot] = {}
        self.pictures: dict[str, PictureMonitor] = {}
        self.gates: dict[str, ChangeGate] = {}
        self.views: dict[str, View] = {}  # crop and tiles
        # Main (full-resolution) streams, keyframes only, for evidence snapshots.
        self.main_readers: dict[str, CameraReader] = {}
        self.main_rings: dict[str, FrameRing] = {}
        self.detections: dict[str, list[Detection]] = {}  # last analysed, per camera
        self.last_frames: dict[str, Frame] = {}  # newest analysed frame per camera
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[CameraReader, threading.Thread] = {}
        self._threads_lock = threading.Lock()

    def add(
        self, cameras: dict[str, CameraConfig], on_transition: Callable[[Transition], None]
    ) -> list[CameraReader]:
        """Build readers for ``cameras`` (not started); return them."""
        slots, pictures, readers = dict(self.slots), dict(self.pictures), dict(self.readers)
        gates, views = dict(self.gates), dict(self.views)
        rings, mains, stops = dict(self.main_rings), dict(self.main_readers), dict(self._stops)
        built = []
        for camera_id, camera in cameras.items():
            stop = stops[camera_id] = threading.Event()
            slot = slots[camera_id] = FrameSlot(self._wake)
            pictures[camera_id] = PictureMonitor(camera.picture)
            gates[camera_id] = ChangeGate(camera.gating)
            views[camera_id] = View.from_config(camera.view)
            readers[camera_id] = CameraReader(
                camera_id, camera, stop=stop, slot=slot, on_transition=on_transition
            )
            built.append(readers[camera_id])
            main = camera.main_stream()
            if main is not None:
                ring = rings[camera_id] = FrameRing()
                mains[camera_id] = CameraReader(camera_id, main, stop=stop, slot=ring, role="main")
                built.append(mains[camera_id])
        self.slots, self.pictures, self.readers = slots, pictures, readers
        self.gates, self.views = gates, views
        self.main_rings, self.main_readers, self._stops = rings, mains, stops
        return built

    def remove(self, camera_ids: list[str]) -> list[CameraReader]:
        """Stop and forget ``camera_ids``; return their readers (to be joined)."""
        gone = [
            r
            for cid in camera_ids
            for r in (self.readers.get(cid), self.main_readers.get(cid))
            if r
        ]
        for cid in camera_ids:
            if cid in self._stops:
                self._stops[cid].set()

        def without(d: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in d.items() if k not in camera_ids}

        self.slots, self.pictures, self.readers = (
            without(self.slots),
            without(self.pictures),
            without(self.readers),
        )
        self.main_rings, self.main_readers = without(self.main_rings), without(self.main_readers)
        self.gates, self.views = without(self.gates), without(self.views)
        self.detections = without(self.detections)
        self._stops = without(self._stops)
        self.last_frames = without(self.last_frames)
        return gone

    def all_readers(self) -> list[CameraReader]:
        """Every reader: the cameras' (sub) streams, then their main streams."""
        return [*self.readers.values(), *self.main_readers.values()]

    def start(self, readers: list[CameraReader]) -> None:
        """Start a thread per reader, named ``ingest-<camera>`` (``ingest-<camera>/main``)."""
        with self._threads_lock:  # forget the threads of removed readers that ended since
            self._threads = {r: t for r, t in self._threads.items() if t.is_alive()}
        for reader in readers:
            thread = threading.Thread(target=reader.run, name=reader.thread_name, daemon=True)
            with self._threads_lock:
                self._threads[reader] = thread
            thread.start()

    def join(self, readers: list[CameraReader], timeout: float) -> None:
        """Wait up to ``timeout`` seconds for each reader's thread; forget those that ended."""
        for reader in readers:
            with self._threads_lock:
                thread = self._threads.get(reader)
            if thread is None:
                continue
            thread.join(timeout)
            if not thread.is_alive():
                with self._threads_lock:
                    self._threads.pop(reader, None)

    def stop_all(self) -> None:
        """Set every camera's stop event: all readers end (they are joined by :meth:`join`)."""
        for stop in self._stops.values():
            stop.set()
