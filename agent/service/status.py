"""Camera status: outages and the retained per-camera status message.

A reader's state change (from its thread or the health thread's tick), a picture warning
that starts or clears (from the detect thread) and the heartbeat's refresh each commit a
retained ``camera_status`` to the outbox; a change to or from ``offline`` opens or closes
an outage row first.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from agent.errors import StoreError
from agent.records import CameraState, Outage, Transition
from agent.service.runtime import Cameras, Runtime
from agent.store.store import Store
from agent.uplink import messages as contract

logger = logging.getLogger(__name__)

STATUS_TTL = 7 * 86400.0


class CameraStatus:
    """Records outages and commits the retained camera status messages."""

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        outbox: Store,
        topics: contract.Topics,
        *,
        started: float,
        on_commit: Callable[[], None],
    ) -> None:
        """``started``: when this run began (an outage without any frame starts then);
        ``on_commit`` is called after each committed message (it wakes the uplink)."""
        self.runtime = runtime
        self.cameras = cameras
        self.outbox = outbox
        self.topics = topics
        self.started = started
        self.on_commit = on_commit

    def on_transition(self, transition: Transition) -> None:
        """A reader's debounced state changed: record the outage, save health, publish."""
        camera_id = transition.camera_id
        outage = None
        try:
            if transition.new is CameraState.OFFLINE:
                since = transition.last_frame_wall or self.started
                self.outbox.open_outage(camera_id, since, transition.reason)
            elif transition.old is CameraState.OFFLINE:
                outage = self.outbox.close_outage(camera_id, transition.wall)
        except StoreError as exc:
            logger.error("camera %s: outage not recorded: %s", camera_id, exc)
        self.save_health()
        self.publish(camera_id, transition=transition, outage=outage)

    def save_health(self) -> None:
        """Store every reader's snapshot (read by ``mclz-agent status``)."""
        try:
            snapshots = {cid: reader.snapshot() for cid, reader in self.cameras.readers.items()}
            self.outbox.save_camera_health(snapshots, time.time())
        except StoreError as exc:
            logger.error("camera health not saved: %s", exc)

    def publish(
        self,
        camera_id: str,
        *,
        transition: Transition | None = None,
        outage: Outage | None = None,
        reason: str = "refresh",
    ) -> None:
        """Commit a retained camera status: on a state change, a picture warning, or a refresh."""
        reader = self.cameras.readers.get(camera_id)
        monitor = self.cameras.pictures.get(camera_id)
        if reader is None or monitor is None:  # removed by a reload meanwhile
            return
        msg_id = uuid.uuid4().hex
        body = contract.camera_status(
            self.runtime.config,
            msg_id,
            camera_id,
            reader.snapshot(),
            now=time.time(),
            transition=transition,
            outage=outage,
            picture=sorted(c.value for c in monitor.active),
            reason=reason,
        )
        try:
            self.outbox.enqueue(
                self.topics.camera_status(camera_id),
                contract.encode(body),
                kind="camera_status",
                retain=True,
                msg_id=msg_id,
                ttl=STATUS_TTL,
                # A refresh only repeats the newest state: an unsent older refresh goes.
                supersede_key=f"refresh:{camera_id}" if reason == "refresh" else None,
            )
        except StoreError as exc:
            logger.error("camera %s: status not stored: %s", camera_id, exc)
            return
        self.on_commit()

    def clear(self, camera_id: str) -> None:
        """Delete a removed camera's retained status (an empty retained message)."""
        try:
            self.outbox.enqueue(
                self.topics.camera_status(camera_id),
                b"",
                kind="camera_status",
                retain=True,
                msg_id=uuid.uuid4().hex,
                ttl=STATUS_TTL,
            )
        except StoreError as exc:
            logger.error("camera %s: retained status not cleared: %s", camera_id, exc)
            return
        self.on_commit()
