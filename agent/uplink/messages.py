"""The MQTT contract with the city platform: topics and payload builders.

Every topic starts with ``<prefix>/<city>/<school_id>/<box_id>`` (the *root*):

========================================  ======  ======  ======================================
topic                                     QoS     retain  payload (see docs/mqtt/)
========================================  ======  ======  ======================================
``<root>/availability``                   1       yes     availability.schema.json (last will)
``<root>/heartbeat``                      1       no      heartbeat.schema.json
``<root>/camera/<camera_id>/status``      1       yes     camera_status.schema.json
``<root>/alert``                          1       no      alert.schema.json
``<root>/evidence/<alert_id>``            1       no      raw JPEG (no schema; asyncapi.yaml)
``<root>/command`` (platform -> box)      1       no      command.schema.json
``<root>/command/reply``                  1       no      command_reply.schema.json
========================================  ======  ======  ======================================

Every message the box sends through the outbox carries a unique ``id`` (delivery is
at-least-once) and a UTC ``ts``. A change to any of this is marked BREAKING in CHANGELOG.md.

:class:`Topics` is the only place a topic string is built. The builders take the config and
plain records (``agent.records``), so the MQTT side imports neither the camera stack nor the
rules nor the evidence renderer; the import contracts in pyproject.toml hold that.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig
from agent.records import AlertEvent, AlertRecord, EvidenceInfo, Outage, Transition

SCHEMA_VERSION = 1


def encode(body: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (Chinese names stay readable)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def utc_iso(ts: float) -> str:
    """``ts`` as an ISO 8601 UTC timestamp with milliseconds, e.g. ``2026-11-26T13:45:00.123Z``."""
    whole = int(ts)
    millis = min(999, round((ts - whole) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


AGENT_STARTED = time.time()


def host_boot_time() -> float | None:
    """When the box booted (``btime`` of /proc/stat), if readable."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def availability_payload(state: str, reason: str, ts: float | None) -> bytes:
    """The retained availability message (``ts`` is omitted from the last will).

    It also says when the agent started and when the box booted, so the platform can tell
    a restarted agent from a rebooted (or power-cut) box.
    """
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "state": state,
        "reason": reason,
        "agent_version": __version__,
        "agent_started": utc_iso(AGENT_STARTED),
    }
    booted = host_boot_time()
    if booted is not None:
        body["boot_time"] = utc_iso(booted)
    if ts is not None:
        body["ts"] = utc_iso(ts)
    return encode(body)


class Topics:
    """Topic names of one box: the one place they are built (client, commands, service and
    CLI all take theirs from here)."""

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

    def evidence(self, alert_id: str) -> str:
        """Where an alert's evidence JPEG is published (raw bytes, QoS 1)."""
        return f"{self.root}/evidence/{alert_id}"


def _box(config: AgentConfig) -> dict[str, str]:
    ident = config.identity
    return {"city": ident.city, "school_id": ident.school_id, "box_id": ident.box_id}


def camera_status(
    config: AgentConfig,
    msg_id: str,
    camera_id: str,
    health: dict[str, Any],
    *,
    now: float,
    transition: Transition | None = None,
    outage: Outage | None = None,
    picture: Sequence[str] = (),
    reason: str = "refresh",
) -> dict[str, Any]:
    """Payload of ``camera/<id>/status``: on a state change (``transition``), a picture
    warning starting or clearing (``reason`` ``picture:+black`` ...), or a refresh."""
    camera = config.cameras[camera_id]
    state = health["state"] if transition is None else transition.new.value
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "id": msg_id,
        "ts": utc_iso(now),
        "box": _box(config),
        "camera": camera_id,
        "name": camera.name,
        "state": state,
        "previous": state if transition is None else transition.old.value,
        "since": utc_iso(health["since"] if transition is None else transition.wall),
        "reason": reason if transition is None else transition.reason,
        "last_frame_age_s": health.get("last_frame_age_s"),
        "fps": health.get("fps", 0.0),
        "expected_fps": health.get("expected_fps"),
        "detect_fps": health.get("detect_fps", 0.0),
        "reconnects": health.get("reconnects", 0),
        "reconnects_1h": health.get("reconnects_1h", 0),
        "stalls_1h": health.get("stalls_1h", 0),
        "decode_errors": health.get("decode_errors", 0),
        "codec": health.get("codec", ""),
        "width": health.get("width", 0),
        "height": health.get("height", 0),
        "quality": health.get("quality", "unusable"),
        "picture": list(picture),
        "last_error_class": health.get("last_error_class", ""),
    }
    if outage is not None:
        body["outage"] = {
            "since": utc_iso(outage.since),
            "until": utc_iso(outage.until) if outage.until is not None else None,
            "duration_s": round(outage.duration_s or 0.0, 1),
            "reason": outage.reason,
        }
    return body


def alert(
    config: AgentConfig, item: AlertEvent, evidence: EvidenceInfo | None, *, model: str
) -> dict[str, Any]:
    """Payload of ``alert`` (its start or its end); the evidence JPEG travels as its own
    message (see ``Topics``): with the start, and with the end when a better frame came."""
    camera = config.cameras.get(item.camera_id)
    zone = camera.zones.get(item.zone) if camera is not None and item.zone else None
    until = item.ended_at if item.phase == "end" and item.ended_at is not None else item.raised_at
    body: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        # The message id (de-duplication) differs between an alert's start and its end.
        "id": item.id if item.phase == "start" else f"{item.id}:end",
        "alert_id": item.id,
        "event": item.phase,
        "ts": utc_iso(item.raised_at if item.phase == "start" else time.time()),
        "box": _box(config),
        "type": item.type,
        "severity": item.severity,
        "camera": item.camera_id,
        "camera_name": camera.name if camera is not None else "",
        "zone": item.zone,
        "zone_name": zone.name if zone is not None else "",
        "started_at": utc_iso(item.started_at),
        "raised_at": utc_iso(item.raised_at),
        "duration_s": round(max(0.0, until - item.started_at), 3),
        "hits": item.hits,
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
    if item.phase == "end":
        body["ended_at"] = utc_iso(until)
        body["end_reason"] = item.end_reason
    if evidence is not None:
        ev: dict[str, Any] = {
            "mime": "image/jpeg",
            "width": evidence.width,
            "height": evidence.height,
            "bytes": evidence.size,
            "sha256": evidence.sha256,
            "source": evidence.source,
            "topic": Topics(config).evidence(item.id),
        }
        body["evidence"] = ev
    return body


def alert_record(item: AlertEvent, evidence: EvidenceInfo | None) -> AlertRecord:
    """How an alert is kept in the box's database (its message is stored beside it)."""
    return AlertRecord(
        id=item.id,
        camera=item.camera_id,
        type=item.type,
        severity=item.severity,
        started_at=item.started_at,
        raised_at=item.raised_at,
        confidence=item.confidence,
        detections=[
            {"label": d.label, "confidence": d.confidence, "box": list(d.box)}
            for d in item.detections
        ],
        evidence_path=evidence.path if evidence is not None else None,
        zone=item.zone,
    )


def alert_end_after_restart(start: Mapping[str, Any], ended_at: float) -> dict[str, Any]:
    """The end message of an alert whose agent was killed while it ran (``agent_restart``).

    Built from the stored start message; ``ended_at`` is the last moment the previous run
    was known alive. The start's evidence image stays the alert's image (no new one).
    """
    body = {k: v for k, v in start.items() if k != "evidence"}
    started = datetime.fromisoformat(str(start["started_at"]).replace("Z", "+00:00"))
    body["id"] = f"{start['alert_id']}:end"
    body["event"] = "end"
    body["ts"] = utc_iso(time.time())
    body["ended_at"] = utc_iso(ended_at)
    body["end_reason"] = "agent_restart"
    body["duration_s"] = round(max(0.0, ended_at - started.timestamp()), 3)
    return body


def heartbeat(
    config: AgentConfig, msg_id: str, *, now: float, started: float, health: Mapping[str, Any]
) -> dict[str, Any]:
    """Payload of ``heartbeat``: the agent's health snapshot (``Agent.health()``) framed with
    the box, the time and the summary counts the platform ranks schools by."""
    cameras = health["cameras"]
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
        **health,
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
