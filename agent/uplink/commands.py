"""Commands from the platform: parse, validate, dispatch, reply.

A command arrives on ``<root>/command`` as ``{"id": "...", "command": "ping", "args": {}}``.
The reply goes to the MQTT 5 response topic when the request names one (with its
correlation data), else to ``<root>/command/reply`` (the 3.1.1 fallback). A malformed,
oversized or unknown command gets an error reply and a log line, never a crash, and every
command, accepted or not, is recorded in SQLite.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import StoreError
from agent.store.store import Store
from agent.uplink import messages

logger = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024
REPLY_TTL = 86400.0

Handler = Callable[[dict[str, Any]], Any]


class CommandError(ValueError):
    """A command that cannot be carried out; its text goes back in the error reply."""


@dataclass(frozen=True, slots=True)
class Request:
    """A validated command."""

    id: str
    command: str
    args: dict[str, Any]


def parse(payload: bytes, known: Mapping[str, Handler]) -> Request:
    """Validate a command payload.

    Raises:
        CommandError: oversized, not JSON, not an object, no usable id, unknown command,
            or args that are not an object. ``CommandError.request_id`` is set when the id
            could be read, so the reply can still name the request.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        request = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise CommandError("payload is not usable JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise CommandError(f"payload is not usable JSON: {exc}") from None
    if not isinstance(request, dict):
        raise CommandError("payload must be a JSON object")
    rid = request.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        raise CommandError("'id' must be a string of 1-128 characters")
    command = request.get("command")
    args = request.get("args", {})
    extra = sorted(set(request) - {"id", "command", "args"})
    if extra:
        # The contract (docs/mqtt/command.schema.json) has no other keys: a misspelt
        # "arg" must not silently become a command without arguments.
        error = CommandError(
            f"unknown key(s) {', '.join(map(repr, extra))} (allowed: id, command, args)"
        )
        error.request_id = rid  # type: ignore[attr-defined]
        raise error
    if not isinstance(command, str) or command not in known:
        error = CommandError(f"unknown command {command!r} (known: {', '.join(sorted(known))})")
        error.request_id = rid  # type: ignore[attr-defined]
        raise error
    if not isinstance(args, dict):
        error = CommandError("'args' must be a JSON object")
        error.request_id = rid  # type: ignore[attr-defined]
        raise error
    return Request(rid, str(command), args)


def valid_response_topic(topic: str | None) -> str | None:
    """A response topic that can be published to (no wildcards, not empty), else None."""
    if not topic or "+" in topic or "#" in topic or len(topic) > 512:
        return None
    return topic


class Commands:
    """Dispatches commands to handlers and commits the replies to the outbox."""

    def __init__(
        self,
        outbox: Store,
        reply_topic: str,
        handlers: Mapping[str, Handler],
        on_reply: Callable[[], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.reply_topic = reply_topic
        self.handlers = dict(handlers)
        self.on_reply = on_reply
        self.accepted = 0
        self.rejected = 0

    def handle(
        self, payload: bytes, response_topic: str | None = None, correlation: bytes | None = None
    ) -> dict[str, Any]:
        """Carry out one command and commit its reply; return the reply body."""
        request_id: str | None = None
        command = ""
        try:
            request = parse(payload, self.handlers)
            request_id, command = request.id, request.command
            result = self.handlers[request.command](request.args)
            body = messages.command_reply(
                request_id, ok=True, msg_id=uuid.uuid4().hex, now=time.time(), result=result
            )
            self.accepted += 1
            logger.info("command %s (%s) done", command, request_id)
        except CommandError as exc:
            request_id = request_id or getattr(exc, "request_id", None)
            self.rejected += 1
            logger.warning("rejected command %s: %s", request_id or "(no id)", exc)
            body = messages.command_reply(
                request_id, ok=False, msg_id=uuid.uuid4().hex, now=time.time(), error=str(exc)
            )
        except Exception as exc:  # the command edge: a handler bug still gets a reply
            self.rejected += 1
            logger.exception("command %s (%s) failed", command or "?", request_id or "(no id)")
            body = messages.command_reply(
                request_id,
                ok=False,
                msg_id=uuid.uuid4().hex,
                now=time.time(),
                error=f"internal error: {type(exc).__name__}",
            )
        topic = valid_response_topic(response_topic) or self.reply_topic
        try:
            self.outbox.record_command(
                request_id, command, payload[:MAX_COMMAND_BYTES], ok=bool(body["ok"])
            )
            self.outbox.enqueue(
                topic,
                messages.encode(body),
                kind="reply",
                msg_id=body["id"],
                ttl=REPLY_TTL,
                correlation=correlation,
            )
        except StoreError as exc:
            logger.error("command reply not stored: %s", exc)
            return body
        if self.on_reply is not None:
            self.on_reply()
        return body
