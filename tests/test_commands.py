"""Commands from the platform: validation never crashes, replies go where MQTT 5 asks."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.store.store import Store
from agent.uplink.commands import (
    MAX_COMMAND_BYTES,
    CommandError,
    Commands,
    parse,
    valid_response_topic,
)

HANDLERS: dict[str, Any] = {"ping": lambda _a: {"pong": True}, "echo": lambda a: a}


def test_parse_accepts_a_valid_command() -> None:
    """A well-formed command parses into id, name and args."""
    request = parse(b'{"id": "r1", "command": "echo", "args": {"x": 1}}', HANDLERS)
    assert (request.id, request.command, request.args) == ("r1", "echo", {"x": 1})


@pytest.mark.parametrize(
    ("payload", "message", "request_id"),
    [
        (b"\xff\xfe", "not JSON", None),
        (b"[1, 2]", "must be a JSON object", None),
        (b'{"command": "ping"}', "'id' must be a string", None),
        (b'{"id": "", "command": "ping"}', "'id' must be a string", None),
        (b'{"id": "r9", "command": "reboot"}', "unknown command 'reboot'", "r9"),
        (b'{"id": "r8", "command": "echo", "args": [1]}', "'args' must be a JSON object", "r8"),
        (b'{"id": "r7", "command": "echo", "arg": {"x": 1}}', "unknown key\\(s\\) 'arg'", "r7"),
        (b"{" + b" " * MAX_COMMAND_BYTES + b"}", "exceeds", None),
    ],
)
def test_parse_rejects_bad_commands(payload: bytes, message: str, request_id: str | None) -> None:
    """Each kind of bad input is a CommandError with a clear reason (and the id when known)."""
    with pytest.raises(CommandError, match=message) as info:
        parse(payload, HANDLERS)
    assert getattr(info.value, "request_id", None) == request_id


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_never_crashes(payload: bytes) -> None:
    """Any bytes at all give a Request or a CommandError, never another exception."""
    with contextlib.suppress(CommandError):
        parse(payload, HANDLERS)


def test_response_topic_rules() -> None:
    """Wildcards and empty topics cannot be replied to."""
    assert valid_response_topic("platform/replies/7") == "platform/replies/7"
    assert valid_response_topic("a/+/b") is None
    assert valid_response_topic("#") is None
    assert valid_response_topic("") is None
    assert valid_response_topic(None) is None


def test_handle_replies_records_and_carries_correlation(tmp_path: Path) -> None:
    """Replies go to the response topic with the correlation data; every command is recorded."""
    box = Store(tmp_path / "agent.db")
    woken: list[bool] = []
    commands = Commands(box, "root/command/reply", HANDLERS, on_reply=lambda: woken.append(True))
    ok = commands.handle(b'{"id": "r1", "command": "ping"}', "platform/replies/1", b"\x01\x02")
    bad = commands.handle(b'{"id": "r2", "command": "nope"}')
    assert ok["ok"] is True
    assert ok["result"] == {"pong": True}
    assert bad["ok"] is False
    assert bad["request_id"] == "r2"
    sent = box.due(10)
    assert [(m.topic, m.correlation) for m in sent] == [
        ("platform/replies/1", b"\x01\x02"),
        ("root/command/reply", None),
    ]
    assert json.loads(sent[1].payload)["error"].startswith("unknown command 'nope'")
    assert [(c[1], c[2], c[3]) for c in box.commands()] == [("r2", "", False), ("r1", "ping", True)]
    assert woken == [True, True]
    assert (commands.accepted, commands.rejected) == (1, 1)
