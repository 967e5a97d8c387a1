"""The detect pipeline: gate -> detect -> food -> rules -> alert writer, on the detect thread.

Each turn takes the newest frame of every camera (:class:`~agent.ingest.frames.FrameSlot`,
the newest wins), lets each camera's change gate skip a frame that looks like the last
analysed one, runs one batched inference over the frames that changed (every tile of
every view), adds the food zones' verdicts, runs the picture checks, offers analysed
frames to the labelling capture, and feeds the rules; what the rules raise or end goes to
the :class:`~agent.service.alerts.AlertWriter`. The load governor then stretches the
readers' detect interval when a turn takes too long.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from agent.detect.gate import LoadGovernor
from agent.detect.pool import DetectorPool
from agent.detect.sampling import Capture
from agent.detect.views import View
from agent.errors import StoreError
from agent.ingest.frames import Frame
from agent.records import Detection
from agent.rules.engine import RuleEngine
from agent.service.alerts import AlertWriter
from agent.service.runtime import Cameras, Runtime
from agent.service.status import CameraStatus

logger = logging.getLogger(__name__)
WHOLE = View()  # a camera analysed whole, in one piece
OCCLUDER_LABELS = ("person", "face", "head")  # detections that hide a food zone


class Pipeline:
    """The detect thread's work: :meth:`run` until stopped, one :meth:`analyse` per turn."""

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        detector: DetectorPool,
        rules: RuleEngine,
        writer: AlertWriter,
        *,
        capture: Capture,
        status: CameraStatus,
        governor: LoadGovernor,
        wake: threading.Event,
    ) -> None:
        """``wake`` is set by the cameras' frame slots when a frame arrives."""
        self.runtime = runtime
        self.cameras = cameras
        self.detector = detector
        self.rules = rules
        self.capture = capture
        self.writer = writer
        self.status = status
        self.governor = governor
        self.wake = wake
        self.turned = time.monotonic()  # when the loop last turned: the watchdog reads it
        self.inferences = 0
        self.inference_seconds = 0.0
        self.frames_analysed = 0

    def run(self, stop: threading.Event) -> None:
        """The detect thread: analyse what arrived, expire alerts, until ``stop`` is set.

        A crash sets ``stop`` too: the agent then exits and systemd restarts it.
        """
        try:
            while not stop.is_set():
                self.turned = time.monotonic()
                self.wake.wait(1.0)
                self.wake.clear()
                slots = self.cameras.slots
                frames = [f for f in (slot.take() for slot in slots.values()) if f is not None]
                if frames:
                    self.analyse(frames)
                for event in self.rules.expire(time.monotonic()):  # also cameras without frames
                    self.writer.ended(event)
        except Exception:
            logger.exception("detect thread crashed; stopping the agent so systemd restarts it")
            stop.set()

    def analyse(self, frames: list[Frame]) -> None:
        """One batched inference over the frames that changed; rules for all of them."""
        started = time.perf_counter()
        cameras = self.cameras
        gates = cameras.gates
        due = []
        for frame in frames:
            cameras.last_frames[frame.camera_id] = frame
            gate = gates.get(frame.camera_id)
            if gate is None or gate.should_analyse(frame.image, frame.mono):
                due.append(frame)
        if due:
            t0 = time.perf_counter()
            views = cameras.views
            results = self.detector.detect_views(
                [f.image for f in due],
                [views.get(f.camera_id, WHOLE) for f in due],
                [self._wants_faces(f.camera_id) for f in due],
            )
            self.inference_seconds += time.perf_counter() - t0
            self.inferences += 1
            self.frames_analysed += len(due)
            for frame, detections in zip(due, results, strict=True):
                cameras.detections[frame.camera_id] = detections
        analysed = {id(f) for f in due}
        food = self.runtime.food
        for frame in frames:
            # A skipped frame looks like the last analysed one: its detections stand.
            detections = cameras.detections.get(frame.camera_id, [])
            if food.has_zones(frame.camera_id):
                detections = [*detections, *self._food_detections(frame, detections)]
            self._check_picture(frame)
            if id(frame) in analysed:  # only frames the model looked at become labelling data
                self.capture.offer(frame.camera_id, frame.image, detections, frame.wall)
            for event in self.rules.update(
                frame.camera_id, detections, mono=frame.mono, wall=frame.wall, frame=frame.image
            ):
                if event.phase == "start":
                    self.writer.raised(event)
                else:
                    self.writer.ended(event)
        slots = list(cameras.slots.values())
        scale = self.governor.record(
            time.perf_counter() - started,
            frames=(sum(s.offered for s in slots), sum(s.dropped for s in slots)),
        )
        for reader in cameras.readers.values():
            reader.interval_scale = scale

    def _wants_faces(self, camera_id: str) -> bool:
        """Whether the package's face stage runs on this camera's frame: when one of the
        camera's rules looks at a label the stage decides, or frames are captured for
        labelling (their labels must be the best the box has)."""
        face_labels = self.detector.face_labels
        if not face_labels:
            return False
        return self.capture.config.enabled or bool(self.rules.labels_for(camera_id) & face_labels)

    def stats(self) -> dict[str, Any]:
        """The detector's side of the heartbeat (after the model id): backend, counts, load."""
        avg_ms = 1000 * self.inference_seconds / self.inferences if self.inferences else 0.0
        return {
            "model_sha256": self.detector.package.sha256,
            "backend": self.detector.backend_name,
            "inferences": self.inferences,
            "frames": self.frames_analysed,
            "avg_batch_ms": round(avg_ms, 2),
            "workers": self.detector.workers,
            "parallel_turns": self.detector.parallel_turns,
            **self.governor.snapshot(),
        }

    def _food_detections(self, frame: Frame, detections: list[Detection]) -> list[Detection]:
        """Classify the camera's food zones when due; an uncovered zone is a detection.

        The zone's latest state stands between checks (every ``food.check_interval``): an
        ``uncovered`` zone gives a ``food_uncovered`` detection on every frame until a check
        says otherwise; ``unknown`` (a person over the tray, a large change from every
        reference) gives none, so it neither raises nor, within ``end_after``, ends an alert.
        """
        food = self.runtime.food
        occluders = [d.box for d in detections if d.label.startswith(OCCLUDER_LABELS)]
        try:
            food.check(frame.camera_id, frame.image, frame.mono, occluders)
        except StoreError as exc:
            logger.error("camera %s: food references unreadable: %s", frame.camera_id, exc)
        found = []
        zones = food.zones.get(frame.camera_id, {})
        for zone_id, state in food.latest(frame.camera_id).items():
            if state.state != "uncovered" or zone_id not in zones:
                continue
            xs = [x for x, _ in zones[zone_id]]
            ys = [y for _, y in zones[zone_id]]
            found.append(
                Detection(
                    label="food_uncovered",
                    class_id=-1,
                    confidence=round(0.5 + 0.5 * state.margin, 4),
                    box=(min(xs), min(ys), max(xs), max(ys)),
                )
            )
        return found

    def _check_picture(self, frame: Frame) -> None:
        """Run the picture checks; a warning that starts or clears updates the camera status."""
        monitor = self.cameras.pictures.get(frame.camera_id)
        if monitor is None:  # the camera was removed by a reload meanwhile
            return
        events = monitor.update(frame.image, frame.mono)
        for event in events:
            if event.active:
                logger.warning(
                    "camera %s: picture %s: %s",
                    frame.camera_id,
                    event.condition.value,
                    event.detail,
                )
            else:
                logger.info("camera %s: picture %s cleared", frame.camera_id, event.condition.value)
        if events:
            changed = ",".join(f"{'+' if e.active else '-'}{e.condition.value}" for e in events)
            self.status.publish(frame.camera_id, reason=f"picture:{changed}")
