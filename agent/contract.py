"""The MQTT contract with the city platform: topics and payload builders.

Every topic starts with ``<prefix>/<city>/<school_id>/<box_id>`` (the *root*):

========================================  ======  ======  ======================================
topic                                     QoS     retain  payload (JSON Schema in agent/schemas)
========================================  ======  ======  ======================================
``<root>/availability``                   1       yes     availability.schema.json (last will)
``<root>/heartbeat``                      1       no      heartbeat.schema.json
``<root>/camera/<camera_id>/status``      1       yes     camera_status.schema.json
``<root>/alert``                          1       no      alert.schema.json
``<root>/command`` (platform -> box)      1       no      command.schema.json
``<root>/command/reply``                  1       no      command_reply.schema.json
========================================  ======  ======  ======================================

Every message the box sends through the outbox carries a unique ``id`` (delivery is
at-least-once) and a UTC ``ts``. A change to any of this is marked BREAKING in CHANGELOG.md.
"""

from __future__ import annotations

import base64
import json
import time
from importlib import resources
from typing import Any

from agent import __version__
from agent.config import AgentConfig
from agent.evidence import Evidence
from agent.ingest import Transition
from agent.rules import Alert

SCHEMA_VERSION = 1


def encode(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (Chinese names stay readable)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``name`` (e.g. ``"alert"``) shipped with the package."""
    text = resources.files("agent").joinpath(f"schemas/{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def utc_iso(ts: float) -> str:
    """``ts`` as an ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-26T13:45:00.123Z``."""
    whole = int(ts)
    millis = min(999, round((ts - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def availability_payload(state: str, reason: str, ts: float | None) -> bytes:
    """The retained availability message (``ts`` is omitted from the last will)."""
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "state": state,
        "reason": reason,
        "agent_version": __version__,
    }
    if ts is not None:
        body["ts"] = utc_iso(ts)
    return encode(body)


class Topics:
    """Topic names of one box."""

    def __init__(self, config: AgentConfig) -> None:
        self.root = config.topic_root
        self.availability = f"{self.root}/availability"
        self.heartbeat = f"{self.root}/heartbeat"
        self.alert = f"{self.root}/alert"
        self.command = f"{self.root}/command"
        self.command_reply = f"{self.root}/command/reply"

    def camera_status(self, camera_id: str) -> str:
        """The retained status topic of one camera."""
        return f"{self.root}/camera/{camera_id}/status"


def _box(config: AgentConfig) -> dict[str, str]:
    ident = config.identity
    return {"city": ident.city, "school_id": ident.school_id, "box_id": ident.box_id}


def camera_status(
    config: AgentConfig, msg_id: str, transition: Transition, health: dict[str, Any]
) -> dict[str, Any]:
    """Payload of ``camera/<id>/status`` for a state transition."""
    camera = config.cameras[transition.camera_id]
    return {
        "v": SCHEMA_VERSION,
        "id": msg_id,
        "ts": utc_iso(transition.wall),
        "box": _box(config),
        "camera": transition.camera_id,
        "name": camera.name,
        "state": transition.new.value,
        "previous": transition.old.value,
        "since": utc_iso(transition.wall),
        "reason": transition.reason,
        "fps": health.get("fps", 0.0),
        "reconnects": health.get("reconnects", 0),
        "last_error_class": health.get("last_error_class", ""),
    }


def alert(
    config: AgentConfig, item: Alert, evidence: Evidence | None, *, model: str
) -> dict[str, Any]:
    """Payload of ``alert``; the evidence JPEG is embedded as base64 when configured."""
    camera = config.cameras.get(item.camera_id)
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": item.id,
        "ts": utc_iso(item.raised_at),
        "box": _box(config),
        "type": item.type,
        "severity": item.severity,
        "camera": item.camera_id,
        "camera_name": camera.name if camera is not None else "",
        "started_at": utc_iso(item.started_at),
        "duration_s": round(max(0.0, item.raised_at - item.started_at), 3),
        "confidence": round(item.confidence, 4),
        "model": model,
        "detections": [
            {
                "label": d.label,
                "confidence": round(d.confidence, 4),
                "box": [round(v, 5) for v in d.box],
            }
            for d in item.detections
        ],
    }
    if evidence is not None:
        ev: dict[str, Any] = {
            "mime": "image/jpeg",
            "width": evidence.width,
            "height": evidence.height,
            "bytes": len(evidence.jpeg),
            "sha256": evidence.sha256,
        }
        if config.evidence.embed:
            ev["data_b64"] = base64.b64encode(evidence.jpeg).decode("ascii")
        body["evidence"] = ev
    return body


def heartbeat(
    config: AgentConfig,
    msg_id: str,
    *,
    now: float,
    started: float,
    cameras: dict[str, dict[str, Any]],
    detector: dict[str, Any],
    uplink: dict[str, Any],
    outbox: dict[str, Any],
    alerts: dict[str, Any],
) -> dict[str, Any]:
    """Payload of ``heartbeat``: what the platform needs to judge this box's health."""
    online = sum(1 for c in cameras.values() if c.get("state") == "online")
    return {
        "v": SCHEMA_VERSION,
        "id": msg_id,
        "ts": utc_iso(now),
        "box": _box(config),
        "agent_version": __version__,
        "uptime_s": round(now - started, 1),
        "cameras_total": len(cameras),
        "cameras_online": online,
        "cameras": cameras,
        "detector": detector,
        "uplink": uplink,
        "outbox": outbox,
        "alerts": alerts,
    }


def command_reply(
    request_id: str | None,
    *,
    ok: bool,
    msg_id: str,
    now: float,
    result: Any = None,
    error: str = "",
) -> dict[str, Any]:
    """Payload of ``command/reply``."""
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": msg_id,
        "ts": utc_iso(now),
        "request_id": request_id,
        "ok": ok,
    }
    if ok:
        body["result"] = result
    else:
        body["error"] = error
    return body
