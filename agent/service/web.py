"""The installer page's backend: :class:`AgentWebBackend`, the running agent seen by the page.

It implements :class:`agent.web.backend.WebBackend` from the agent's own parts, so the page
shows what the agent sees and changes what it runs: snapshots are the newest analysed frame
of each camera (``Cameras.last_frames``, no extra RTSP session) with its last detections
drawn as the evidence draws them; zones are saved with the CLI's comment-keeping config edit
and validation, then applied by the same reload as SIGHUP; food references go through
``food calibrate``'s and ``food test``'s code; the mute is the platform's. Every change is
recorded in the commands table with ``web:<client address>`` as its source.

:func:`start_page` builds the page and serves it (Starlette and uvicorn are imported only
there); the agent calls it when ``web.enabled``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent import evidence
from agent.config import WebConfig
from agent.errors import ConfigError, SecretError, StoreError
from agent.ingest.frames import Frame
from agent.install.config_edit import rule_zones, set_zones
from agent.install.doctor import live_checks
from agent.install.food import classify_zone, record_references
from agent.service.handlers import Handlers
from agent.service.health import Health
from agent.service.pipeline import OCCLUDER_LABELS
from agent.service.runtime import Cameras, Runtime
from agent.store.store import Store
from agent.uplink.commands import CommandError
from agent.uplink.messages import utc_iso
from agent.uplink.overrides import Mute
from agent.web.auth import check_password_hash
from agent.web.backend import InvalidRequestError, NoFrameError, NotFoundError

if TYPE_CHECKING:
    from agent.web.server import WebServer

logger = logging.getLogger(__name__)

RECENT_DECISIONS = 20  # the alarm's decisions the health page lists


class AgentWebBackend:
    """:class:`~agent.web.backend.WebBackend` over a running agent's parts.

    Called on the ``web`` thread. What it reads is shared by reference and replaced, never
    mutated, by the other threads (``Cameras``' dictionaries, ``Runtime.config``), and what
    it writes goes through the same locks as the platform's commands (the store's, the
    reload's).
    """

    def __init__(
        self,
        runtime: Runtime,
        cameras: Cameras,
        handlers: Handlers,
        health: Health,
        *,
        mute: Mute,
        store: Store,
        config_path: Path | None,
        evidence_dir: Path,
        heartbeat_now: threading.Event,
    ) -> None:
        """``config_path`` is the file zones are saved to (None: the agent runs on defaults)."""
        self.runtime = runtime
        self._cameras = cameras  # the methods cameras, health and mute are the page's
        self.handlers = handlers
        self._health = health
        self._mute = mute
        self.store = store
        self.config_path = config_path
        self.evidence_dir = evidence_dir
        self.heartbeat_now = heartbeat_now

    # ------------------------------------------------------------------ cameras

    def cameras(self) -> list[dict[str, Any]]:
        """Every configured camera, in the file's order; a disabled one has state ``disabled``."""
        readers, frames = self._cameras.readers, self._cameras.last_frames
        out = []
        for camera_id, camera in self.runtime.config.cameras.items():
            reader = readers.get(camera_id)
            snap = reader.snapshot() if reader is not None else None
            width, height = _size(frames.get(camera_id), snap)
            out.append(
                {
                    "id": camera_id,
                    "name": camera.name,
                    "state": snap["state"] if snap is not None else "disabled",
                    "fps": snap["fps"] if snap is not None else None,
                    "quality": snap["quality"] if snap is not None else None,
                    "last_outage": self._last_outage(camera_id),
                    "width": width,
                    "height": height,
                }
            )
        return out

    def _last_outage(self, camera_id: str) -> dict[str, Any] | None:
        try:
            outages = self.store.outages(camera_id, limit=1)
        except StoreError as exc:
            logger.error("camera %s: outages unreadable: %s", camera_id, exc)
            return None
        if not outages:
            return None
        outage = outages[0]
        return {
            "since": utc_iso(outage.since),
            "until": utc_iso(outage.until) if outage.until is not None else None,
            "duration_s": outage.duration_s,
            "reason": outage.reason,
        }

    def _camera(self, camera_id: str) -> None:
        if camera_id not in self.runtime.config.cameras:
            raise NotFoundError(f"no camera {camera_id!r}")

    def _frame(self, camera_id: str) -> Frame:
        self._camera(camera_id)
        frame = self._cameras.last_frames.get(camera_id)
        if frame is None:
            raise NoFrameError(f"camera {camera_id} has no frame yet")
        return frame

    def snapshot(self, camera_id: str, *, detections: bool) -> bytes:
        """The newest analysed frame as JPEG at its own size, boxes drawn with ``detections``.

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
        """
        image = self._frame(camera_id).image
        if detections:
            image = image.copy()  # the frame is shared with the detect thread
            evidence.draw_detections(image, self._cameras.detections.get(camera_id, []))
        settings = self.runtime.config.evidence
        jpeg, _width, _height = evidence.encode_jpeg(
            image, settings.model_copy(update={"max_width": image.shape[1]})
        )
        return jpeg

    # ------------------------------------------------------------------ zones

    def zones(self, camera_id: str) -> dict[str, Any]:
        """The camera's zones (as the config stores them) and the zones each rule uses there.

        Raises:
            NotFoundError: no such camera.
        """
        self._camera(camera_id)
        config = self.runtime.config
        camera = config.cameras[camera_id]
        reader = self._cameras.readers.get(camera_id)
        width, height = _size(
            self._cameras.last_frames.get(camera_id),
            reader.snapshot() if reader is not None else None,
        )
        return {
            "camera": camera_id,
            "width": width,
            "height": height,
            "zones": {
                zone_id: {
                    "name": zone.name or None,
                    "polygon": [list(point) for point in zone.polygon],
                    "exclude": zone.exclude,
                    "food": zone.food,
                }
                for zone_id, zone in camera.zones.items()
            },
            "rules": {name: list(used) for name, used in rule_zones(config, camera_id).items()},
        }

    def save_zones(
        self,
        camera_id: str,
        zones: Mapping[str, Mapping[str, Any]],
        rules: Mapping[str, list[str]],
        who: str,
    ) -> dict[str, Any]:
        """Save through the CLI's config edit, reload like SIGHUP, record the change.

        Raises:
            NotFoundError: no such camera.
            ConfigError: the result would be invalid (the file is untouched), or the reload
                refused the saved file.
            StoreError: the file cannot be written.
        """
        self._camera(camera_id)
        if self.config_path is None:
            raise ConfigError("the agent runs on embedded defaults: there is no file to save to")
        details = {"camera": camera_id, "zones": zones, "rules": rules}
        try:
            set_zones(self.config_path, camera_id, zones, rules)
        except (ConfigError, StoreError) as exc:
            self.record(who, "zones", {**details, "error": str(exc)}, ok=False)
            raise
        try:
            result = self.handlers.reload(who)
        except ConfigError as exc:  # e.g. a camera's secret became unreadable meanwhile
            self.record(who, "zones", {**details, "error": f"saved, not applied: {exc}"}, ok=False)
            raise ConfigError(
                f"saved to {self.config_path}, but the agent did not apply it: {exc}",
                exc.problems,
            ) from None
        self.record(who, "zones", details, ok=True)
        logger.info(
            "camera %s: %d zone(s) saved from the installer page by %s",
            camera_id,
            len(zones),
            who,
        )
        return result

    # ------------------------------------------------------------------ food zones

    def food_record(self, camera_id: str, zone: str, state: str, who: str) -> dict[str, Any]:
        """``food calibrate`` on the newest frame: one reference of ``state``.

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
            ConfigError: no such food zone.
            InvalidRequestError: not a food state, or the zone has no area in the frame.
            StoreError: the reference cannot be stored.
        """
        frame = self._frame(camera_id)
        details = {"camera": camera_id, "zone": zone, "state": state}
        try:
            result = record_references(
                self.runtime.food.store,
                self.runtime.config,
                camera_id,
                zone,
                state=state,
                frames=[frame.image],
            )
        except ValueError as exc:
            self.record(who, "food_record", {**details, "error": str(exc)}, ok=False)
            raise InvalidRequestError(f"cameras.{camera_id}.zones.{zone}: {exc}") from None
        except (ConfigError, StoreError) as exc:
            self.record(who, "food_record", {**details, "error": str(exc)}, ok=False)
            raise
        self.record(who, "food_record", details, ok=True)
        logger.info(
            "camera %s: food zone %s recorded as %s from the installer page by %s",
            camera_id,
            zone,
            state,
            who,
        )
        return result

    def food_test(self, camera_id: str, zone: str) -> dict[str, Any]:
        """``food test`` on the newest frame, the frame's person/face/head boxes as occluders.

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
            ConfigError: no such food zone.
            InvalidRequestError: the zone has no area in the frame.
        """
        frame = self._frame(camera_id)
        occluders = [
            d.box
            for d in self._cameras.detections.get(camera_id, [])
            if d.label.startswith(OCCLUDER_LABELS)
        ]
        try:
            return classify_zone(
                self.runtime.food.store,
                self.runtime.config,
                camera_id,
                zone,
                frame.image,
                occluders=occluders,
            )
        except ValueError as exc:
            raise InvalidRequestError(f"cameras.{camera_id}.zones.{zone}: {exc}") from None

    # ------------------------------------------------------------------ health and alerts

    def health(self) -> dict[str, Any]:
        """The cheap checks, the last heartbeat, the mute and the alarm's recent decisions."""
        checks = live_checks(self.config_path, self.runtime.config)
        try:
            self._mute.refresh()  # `mclz-agent alarm mute` may have changed it
            decisions = [
                {**dataclasses.asdict(record), "ts": utc_iso(record.ts)}
                for record in self.store.alarms(RECENT_DECISIONS)
            ]
        except StoreError as exc:
            logger.error("installer page: alarm state unreadable: %s", exc)
            decisions = []
        until = self._mute.until
        return {
            "checks": [{"name": c.name, "status": c.verdict, "detail": c.detail} for c in checks],
            "heartbeat": self._health.last_heartbeat,
            "alarm": {
                "muted_until": utc_iso(until) if until is not None else None,
                "decisions": decisions,
            },
        }

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` alerts with an ``evidence_url`` where they have an image.

        Raises:
            StoreError: the alerts cannot be read.
        """
        return [
            {
                "id": alert.id,
                "camera": alert.camera,
                "type": alert.type,
                "severity": alert.severity,
                "zone": alert.zone,
                "started_at": utc_iso(alert.started_at),
                "raised_at": utc_iso(alert.raised_at),
                "confidence": alert.confidence,
                "detections": alert.detections,
                "evidence_url": f"/alerts/{alert.id}/evidence.jpg" if alert.evidence_path else None,
            }
            for alert in self.store.alerts(limit)
        ]

    def evidence_file(self, alert_id: str) -> Path:
        """The alert's stored evidence image, only when it is a file in the evidence directory.

        Raises:
            NotFoundError: no such alert, no image (pruned, or never written), or a stored
                path that leads outside the evidence directory.
            StoreError: the alert cannot be read.
        """
        stored = self.store.alert_payload(alert_id)
        if stored is None:
            raise NotFoundError(f"no alert {alert_id!r}")
        name = stored.get("local_evidence_path")
        if not isinstance(name, str) or not name:
            raise NotFoundError(f"alert {alert_id} has no evidence image")
        path = Path(name).resolve()
        if not path.is_relative_to(self.evidence_dir.resolve()):
            logger.warning(
                "alert %s: evidence path %s is outside the evidence directory", alert_id, path
            )
            raise NotFoundError(f"alert {alert_id} has no evidence image")
        if not path.is_file():
            raise NotFoundError(f"alert {alert_id}: its evidence image is gone (retention)")
        return path

    # ------------------------------------------------------------------ the alarm

    def mute(self, minutes: object, who: str) -> dict[str, Any]:
        """Mute the alarm as the platform's ``mute`` does (kept across restarts).

        Raises:
            InvalidRequestError: ``minutes`` is not a number from 0 to 1440.
            StoreError: the mute cannot be stored.
        """
        try:
            until = self._mute.set(minutes, source=who)
        except CommandError as exc:
            self.record(who, "mute", {"minutes": str(minutes), "error": str(exc)}, ok=False)
            raise InvalidRequestError(str(exc)) from None
        self.heartbeat_now.set()  # the platform sees the mute at once, as with its own
        self.record(who, "mute", {"minutes": minutes}, ok=True)
        return {"muted_until": utc_iso(until) if until is not None else None}

    def unmute(self, who: str) -> dict[str, Any]:
        """End the mute.

        Raises:
            StoreError: the mute cannot be stored.
        """
        self._mute.set(0, source=who)
        self.heartbeat_now.set()
        self.record(who, "unmute", {}, ok=True)
        return {"muted_until": None}

    # ------------------------------------------------------------------ records and secrets

    def record(self, who: str, what: str, details: Mapping[str, Any], *, ok: bool) -> None:
        """One row of the commands table: source ``who``, command ``what``, ``details`` as JSON.

        Raises:
            StoreError: the row cannot be written.
        """
        payload = json.dumps(details, ensure_ascii=False, default=str).encode("utf-8")
        self.store.record_command(None, what, payload, ok=ok, source=who)

    def password_hash(self) -> str:
        """The stored scrypt hash, read afresh.

        Raises:
            SecretError: it cannot be read.
        """
        return self.runtime.config.web.password.resolve("web.password")


def _size(frame: Frame | None, snap: Mapping[str, Any] | None) -> tuple[int | None, int | None]:
    """The picture's width and height: the newest frame's, else what the reader decoded."""
    if frame is not None:
        image: np.ndarray = frame.image
        return int(image.shape[1]), int(image.shape[0])
    if snap is not None and snap.get("width"):
        return int(snap["width"]), int(snap["height"])
    return None, None


def start_page(backend: AgentWebBackend, config: WebConfig) -> WebServer:
    """Serve the installer page for ``backend`` (imports the web stack, binds, starts ``web``).

    A missing or malformed password hash is logged, not raised: the page then says how to
    set one, and the agent's work goes on.

    Raises:
        WebError: the address cannot be bound, the TLS files cannot be used, or the server
            did not start.
    """
    from agent.web.app import make_app  # noqa: PLC0415 - only with web.enabled
    from agent.web.server import WebServer  # noqa: PLC0415

    try:
        check_password_hash(backend.password_hash())
    except SecretError as exc:
        logger.error(
            "installer page: %s: nobody can log in until `mclz-agent web passwd` sets one", exc
        )
    server = WebServer(make_app(backend, config), config)
    server.start()
    return server
