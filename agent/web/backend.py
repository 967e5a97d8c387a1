"""The seam between the page and the running agent: :class:`WebBackend`, a Protocol.

The page (:mod:`agent.web.app`) knows HTTP, sessions and templates; the service
(:mod:`agent.service.web`) implements this Protocol from the agent's parts (its newest
frames and detections, the reload, the heartbeat, the mute, the store). So the page imports
no camera stack and no service module, and tests can serve it from any real backend.

Every method returns plain JSON-ready data. ``who`` is the actor as the commands table
records it (``web:<client address>``). Errors are :mod:`agent.errors` classes, plus the three
below that the page turns into 404, 503 and 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AgentError


class NotFoundError(AgentError):
    """No such camera or alert (the page answers 404)."""


class NoFrameError(AgentError):
    """The camera has no analysed frame yet (the page answers 503)."""


class InvalidRequestError(AgentError):
    """A value in the request cannot be used, e.g. a mute of -5 minutes (the page answers 400)."""


class WebBackend(Protocol):
    """What the installer page asks of the running agent."""

    def cameras(self) -> list[dict[str, Any]]:
        """Every configured camera: id, name, state, fps, quality, last_outage, width, height."""
        ...

    def snapshot(self, camera_id: str, *, detections: bool) -> bytes:
        """The camera's newest analysed frame as JPEG, at its own size; with ``detections``,
        the boxes of its last analysis drawn as the evidence draws them.

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
        """
        ...

    def zones(self, camera_id: str) -> dict[str, Any]:
        """The camera's zones and which of them each rule uses (the zones API's shape).

        Raises:
            NotFoundError: no such camera.
        """
        ...

    def save_zones(
        self,
        camera_id: str,
        zones: Mapping[str, Mapping[str, Any]],
        rules: Mapping[str, list[str]],
        who: str,
    ) -> dict[str, Any]:
        """Write the camera's zones and rule zones into the config file (comments kept, same
        validation as ``config check``), reload the agent, and record the change.

        Returns the reload's result.

        Raises:
            NotFoundError: no such camera.
            ConfigError: the result would be invalid (``problems`` as ``config check`` says
                them); the file is untouched.
            StoreError: the file cannot be written.
        """
        ...

    def food_record(self, camera_id: str, zone: str, state: str, who: str) -> dict[str, Any]:
        """Record the food zone's look on the newest frame as a ``state`` reference
        (``food calibrate``'s code) and record the change.

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
            ConfigError: no such food zone.
            InvalidRequestError: ``state`` is not a food state, or the zone has no area here.
            StoreError: the reference cannot be stored.
        """
        ...

    def food_test(self, camera_id: str, zone: str) -> dict[str, Any]:
        """Classify the food zone on the newest frame (``food test``'s code).

        Raises:
            NotFoundError: no such camera.
            NoFrameError: it has no frame yet.
            ConfigError: no such food zone.
            InvalidRequestError: the zone has no area in this frame.
        """
        ...

    def health(self) -> dict[str, Any]:
        """Cheap ``check`` verdicts, the last heartbeat, the mute and the alarm's decisions."""
        ...

    def alerts(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recent alerts, newest first, each with its ``evidence_url``."""
        ...

    def evidence_file(self, alert_id: str) -> Path:
        """The alert's evidence JPEG, a file inside the evidence directory.

        Raises:
            NotFoundError: no such alert, no image, or a stored path outside the directory.
        """
        ...

    def mute(self, minutes: object, who: str) -> dict[str, Any]:
        """Silence the on-site alarm (the platform's ``mute``) and record the change.

        Raises:
            InvalidRequestError: ``minutes`` is not a number from 0 to 1440.
            StoreError: the mute cannot be stored.
        """
        ...

    def unmute(self, who: str) -> dict[str, Any]:
        """End the mute and record the change.

        Raises:
            StoreError: the mute cannot be stored.
        """
        ...

    def record(self, who: str, what: str, details: Mapping[str, Any], *, ok: bool) -> None:
        """Record an action (login, logout) in the commands table; never a secret."""
        ...

    def password_hash(self) -> str:
        """The page's stored password hash (read afresh, so ``web passwd`` needs no restart
        where the credential store is read directly).

        Raises:
            SecretError: it cannot be read.
        """
        ...
