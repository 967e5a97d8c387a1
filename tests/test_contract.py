"""The MQTT contract as documents: the JSON Schemas and the AsyncAPI document in docs/mqtt/.

They must agree with each other, with the topics the code builds, and with every message
a real agent publishes to a real broker.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import __version__
from agent.config import AgentConfig, load_config, parse_config
from agent.records import AlertEvent, CameraState, Detection, EvidenceInfo, Outage, Transition
from agent.store.store import Store
from agent.uplink import messages
from agent.uplink.client import Uplink
from agent.uplink.messages import SCHEMA_VERSION, Topics, availability_payload
from mclz_testkit.broker import Broker
from mclz_testkit.factories import ClipFactory, RtspServerFactory
from mclz_testkit.mqtt import mqtt_connect
from mclz_testkit.synthetic_model import build_pattern_model

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "mqtt"
ASYNCAPI = DOCS / "asyncapi.yaml"
SCHEMA_FILES = sorted(DOCS.glob("*.schema.json"))
# Payloads committed to the outbox (agent/service.py, agent/commands.py): they carry id and ts.
OUTBOX_SCHEMAS = {"alert", "camera_status", "heartbeat", "command_reply"}

PARAMETER = re.compile(r"\{([^{}]*)\}")
# What a parameter may stand for in a concrete topic: mqtt.topic_prefix may span levels
# (agent/config.py); every other parameter is exactly one topic level.
PARAMETER_FORMS = {"prefix": r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"}
ONE_LEVEL = r"[^/+#]+"
JPEG_SOI = b"\xff\xd8"


# --------------------------------------------------------------------------- the document


def load_asyncapi() -> dict[str, Any]:
    """The AsyncAPI document as plain data."""
    doc: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text("utf-8"))
    return doc


def refs(node: Any) -> Iterator[str]:
    """Every ``$ref`` value under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def pointer(doc: dict[str, Any], ref: str) -> Any:
    """The node a local ``#/a/b`` reference points at; KeyError if there is none."""
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """``node`` with its ``$ref`` followed: ``#/...`` in the document, a file beside it."""
    for _hop in range(10):
        if not (isinstance(node, dict) and "$ref" in node):
            return node
        ref = node["$ref"]
        if ref.startswith("#/"):
            node = pointer(doc, ref)
        else:
            return json.loads((ASYNCAPI.parent / ref).read_text("utf-8"))
    raise AssertionError(f"reference loop at {node}")


def channel_id(ref: dict[str, Any]) -> str:
    """``channel`` of an operation (``{"$ref": "#/channels/x"}``) as the channel's id."""
    target: str = ref["$ref"]
    assert target.startswith("#/channels/"), target
    return target.removeprefix("#/channels/")


def send_operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The box's ``send`` operations by the id of their channel."""
    return {
        channel_id(op["channel"]): op for op in doc["operations"].values() if op["action"] == "send"
    }


def channel_messages(doc: dict[str, Any], channel: str) -> dict[str, tuple[str, Any]]:
    """(content type, payload schema) of every message of ``channel``, by message key."""
    default = doc.get("defaultContentType", "application/json")
    found = {}
    for key, ref in doc["channels"][channel]["messages"].items():
        message = resolve(doc, ref)
        found[key] = (message.get("contentType", default), resolve(doc, message["payload"]))
    return found


def payload_problem(
    content_type: str, schema: dict[str, Any], payload: bytes, max_jpeg: int
) -> str | None:
    """Why ``payload`` is not a message of this content type and schema; None if it is one.

    JSON is validated against the schema; anything else needs a binary-string schema and
    its ``maxLength``; a JPEG must start with the SOI marker and be at most ``max_jpeg``.
    """
    if content_type == "application/json":
        try:
            body = json.loads(payload)
        except ValueError as exc:
            return f"not JSON: {exc}"
        validator = jsonschema.validators.validator_for(schema)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(body))
        return None if error is None else f"{error.json_path}: {error.message}"
    if (schema.get("type"), schema.get("format")) != ("string", "binary"):
        return f"a {content_type} payload needs a binary string schema, not {schema}"
    limit = schema.get("maxLength")
    if content_type == "image/jpeg":
        if not payload.startswith(JPEG_SOI):
            return f"not a JPEG: starts with {payload[:4]!r}"
        limit = max_jpeg if limit is None else min(limit, max_jpeg)
    if limit is not None and len(payload) > limit:
        return f"{len(payload)} bytes, over {limit}"
    return None


def address_pattern(address: str) -> re.Pattern[str]:
    """A regex matching the concrete topics of a channel address, one group per parameter."""
    parts = PARAMETER.split(address)  # literal, name, literal, name, ..., literal
    return re.compile(
        "".join(
            re.escape(part) if i % 2 == 0 else f"(?P<{part}>{PARAMETER_FORMS.get(part, ONE_LEVEL)})"
            for i, part in enumerate(parts)
        )
    )


def channels_of_topic(doc: dict[str, Any], topic: str) -> list[tuple[str, dict[str, str]]]:
    """Every channel whose address matches ``topic``, with the parameters' values."""
    found = []
    for cid, channel in doc["channels"].items():
        address = channel.get("address")
        if address is None:
            continue
        match = address_pattern(address).fullmatch(topic)
        if match is not None:
            found.append((cid, match.groupdict()))
    return found


def schema_names(doc: dict[str, Any], channel: str) -> set[str]:
    """The schema files (``alert``, ...) of the JSON messages of ``channel``."""
    names = set()
    for ref in doc["channels"][channel]["messages"].values():
        payload = resolve(doc, ref)["payload"]
        if "$ref" in payload and not payload["$ref"].startswith("#"):
            names.add(Path(payload["$ref"]).name.removesuffix(".schema.json"))
    return names


def box_config(prefix: str = "mclz") -> AgentConfig:
    """A parsed config of box ``hz/s-001/box-01`` with one camera."""
    data = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"topic_prefix": prefix},
        "cameras": {"kitchen-1": {"url": "rtsp://127.0.0.1:1/kitchen"}},
    }
    return parse_config(yaml.safe_dump(data))


# --------------------------------------------------------------------------- static checks


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=[p.name for p in SCHEMA_FILES])
def test_schema_is_valid_json_schema_with_id_and_title(path: Path) -> None:
    """Each docs/mqtt/*.schema.json is a valid JSON Schema with a title and an $id naming it."""
    schema = json.loads(path.read_text("utf-8"))
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert isinstance(schema.get("$id"), str)
    assert schema["$id"].endswith(f"/{path.name}"), schema["$id"]
    assert isinstance(schema.get("title"), str)
    assert schema["title"].strip()


def test_schema_files_are_the_contract_ones() -> None:
    """docs/mqtt holds a schema for every JSON payload of the contract, each $id once."""
    names = {p.name.removesuffix(".schema.json") for p in SCHEMA_FILES}
    assert {"availability", "heartbeat", "camera_status", "alert", "command"} <= names
    assert names >= OUTBOX_SCHEMAS
    ids = [json.loads(p.read_text("utf-8"))["$id"] for p in SCHEMA_FILES]
    assert len(ids) == len(set(ids)), ids


def test_payloads_the_box_sends_carry_the_schema_version() -> None:
    """Every JSON payload the box sends requires v (= SCHEMA_VERSION); outbox ones, id and ts."""
    doc = load_asyncapi()
    sent: set[str] = set()
    for channel in send_operations(doc):
        sent |= schema_names(doc, channel)
    assert OUTBOX_SCHEMAS | {"availability"} <= sent
    for name in sorted(sent):
        schema = json.loads((DOCS / f"{name}.schema.json").read_text("utf-8"))
        assert "v" in schema["required"], name
        assert schema["properties"]["v"].get("const") == SCHEMA_VERSION, name
        if name in OUTBOX_SCHEMAS:
            assert {"id", "ts"} <= set(schema["required"]), name


def test_asyncapi_document_parses_and_every_reference_resolves() -> None:
    """asyncapi.yaml is AsyncAPI 3.0.0 of this version; every $ref resolves (files: schemas)."""
    doc = load_asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == __version__
    assert doc["info"]["title"]
    assert set(doc["servers"]) == {"mqtt", "mqtts"}
    every = list(refs(doc))
    assert every
    for ref in every:
        if ref.startswith("#/"):
            assert pointer(doc, ref) is not None, ref
            continue
        target = (ASYNCAPI.parent / ref).resolve()
        assert target.parent == DOCS.resolve(), f"{ref} leaves docs/mqtt"
        assert target.name.endswith(".schema.json"), ref
        assert target.is_file(), f"{ref} does not exist"


def test_every_schema_file_is_referenced_by_the_asyncapi_document() -> None:
    """No schema in docs/mqtt is missing from asyncapi.yaml, and it names no other file."""
    referenced = {Path(r).name for r in refs(load_asyncapi()) if not r.startswith("#")}
    assert referenced == {p.name for p in SCHEMA_FILES}


def test_channel_addresses_use_only_declared_parameters() -> None:
    """Each channel address's {parameters} are exactly the channel's declared parameters."""
    doc = load_asyncapi()
    concrete = 0
    for cid, channel in doc["channels"].items():
        address = channel.get("address")
        declared = set(channel.get("parameters", {}))
        if address is None:  # dynamic: the MQTT 5 response topic
            assert not declared, cid
            continue
        concrete += 1
        used = PARAMETER.findall(address)
        assert len(used) == len(set(used)), address
        assert set(used) == declared, f"{cid}: {address} vs {sorted(declared)}"
        for name in declared:
            parameter = resolve(doc, channel["parameters"][name])
            assert isinstance(parameter, dict), f"{cid}.{name}"
            assert parameter.get("description"), f"{cid}.{name}"
    assert concrete >= 7


def test_operations_match_their_channels() -> None:
    """Every operation names its own channel's messages, and every channel has an operation."""
    doc = load_asyncapi()
    used = set()
    for name, op in doc["operations"].items():
        cid = channel_id(op["channel"])
        used.add(cid)
        assert op["action"] in {"send", "receive"}, name
        for message in op["messages"]:
            assert message["$ref"].startswith(f"#/channels/{cid}/messages/"), name
            assert resolve(doc, message) is not None
        if op["action"] == "send":
            assert op["bindings"]["mqtt"]["qos"] == 1, name
        if "reply" in op:
            reply = channel_id(op["reply"]["channel"])
            for message in op["reply"]["messages"]:
                assert message["$ref"].startswith(f"#/channels/{reply}/messages/"), name
    assert used == set(doc["channels"])
    receive = [op for op in doc["operations"].values() if op["action"] == "receive"]
    assert [channel_id(op["channel"]) for op in receive] == ["command"]
    assert "reply" in receive[0]


@pytest.mark.parametrize("prefix", ["mclz", "city-a/mclz"])
def test_every_topic_the_code_builds_matches_one_channel(prefix: str, tmp_path: Path) -> None:
    """Each topic of contract.Topics and the uplink matches one channel, with its parameters."""
    config = box_config(prefix)
    topics = Topics(config)
    outbox = Store(tmp_path / "agent.db")
    try:
        uplink = Uplink(config, outbox)
    finally:
        outbox.close()
    alert_id = uuid.uuid4().hex
    box = {"prefix": prefix, "city": "hz", "school_id": "s-001", "box_id": "box-01"}
    expected = {
        topics.availability: ("availability", box),
        uplink.availability_topic: ("availability", box),
        topics.heartbeat: ("heartbeat", box),
        topics.camera_status("kitchen-1"): ("cameraStatus", {**box, "camera_id": "kitchen-1"}),
        topics.alert: ("alert", box),
        topics.evidence(alert_id): ("evidence", {**box, "alert_id": alert_id}),
        topics.command: ("command", box),
        uplink.command_topic: ("command", box),
        topics.command_reply: ("commandReply", box),
    }
    assert topics.availability == f"{config.topic_root}/availability"
    assert topics.command == f"{config.topic_root}/command"
    doc = load_asyncapi()
    for topic, want in expected.items():
        assert channels_of_topic(doc, topic) == [want], topic


def test_last_will_matches_the_availability_channel() -> None:
    """The server binding's last will is the availability topic, QoS 1, retained, and the will
    the code builds (and the document's example) validates against the availability schema."""
    doc = load_asyncapi()
    availability = doc["channels"]["availability"]
    binding = send_operations(doc)["availability"]["bindings"]["mqtt"]
    [(content_type, schema)] = channel_messages(doc, "availability").values()
    assert content_type == "application/json"
    for server in doc["servers"].values():
        will = resolve(doc, server["bindings"])["mqtt"]["lastWill"]
        assert will["topic"] == availability["address"]
        assert (will["qos"], will["retain"]) == (binding["qos"], binding["retain"]) == (1, True)
        example = json.loads(will["message"])
        jsonschema.validate(example, schema)
        assert (example["state"], example["reason"]) == ("offline", "connection_lost")
    real = json.loads(availability_payload("offline", "connection_lost", None))
    jsonschema.validate(real, schema)
    assert "ts" not in real


# --------------------------------------------------------------------------- the builders

# What the builders produced for these inputs before they took plain records (agent.records)
# instead of the rule engine's Alert and the evidence module's Evidence, byte for byte (the
# ids and the severity, copied through unchanged, were made schema-valid afterwards).
GOLDEN_START = (
    '{"v":1,"id":"alert-01","alert_id":"alert-01","event":"start",'
    '"ts":"2026-09-21T14:13:22.500Z",'
    '"box":{"city":"hz","school_id":"s-001","box_id":"box-01"},"type":"no_hat",'
    '"severity":"warning","camera":"kitchen-1","camera_name":"后厨","zone":"prep",'
    '"zone_name":"备餐区","started_at":"2026-09-21T14:13:20.250Z",'
    '"raised_at":"2026-09-21T14:13:22.500Z","duration_s":2.25,"hits":7,"confidence":0.9123,'
    '"model":"m@1","detections":[{"label":"head_bare","confidence":0.8765,'
    '"box":[0.1,0.2,0.33333,0.4]}],"evidence":{"mime":"image/jpeg","width":640,"height":360,'
    '"bytes":6,"sha256":"' + "ab" * 32 + '","source":"main",'
    '"topic":"mclz/hz/s-001/box-01/evidence/alert-01"}}'
)
GOLDEN_END_WITHOUT_TS = (
    '{"v":1,"id":"alert-01:end","alert_id":"alert-01","event":"end",'
    '"box":{"city":"hz","school_id":"s-001","box_id":"box-01"},"type":"no_hat",'
    '"severity":"warning","camera":"kitchen-1","camera_name":"后厨","zone":null,"zone_name":"",'
    '"started_at":"2026-09-21T14:13:20.250Z","raised_at":"2026-09-21T14:13:22.500Z",'
    '"duration_s":29.875,"hits":7,"confidence":0.9123,"model":"m@1",'
    '"detections":[{"label":"head_bare","confidence":0.8765,"box":[0.1,0.2,0.33333,0.4]}],'
    '"ended_at":"2026-09-21T14:13:50.125Z","end_reason":"cleared"}'
)
GOLDEN_STATUS = (
    '{"v":1,"id":"status-01","ts":"2026-09-21T14:15:01.000Z",'
    '"box":{"city":"hz","school_id":"s-001","box_id":"box-01"},"camera":"kitchen-1",'
    '"name":"后厨","state":"offline","previous":"online","since":"2026-09-21T14:15:00.000Z",'
    '"reason":"timeout","last_frame_age_s":null,"fps":5.0,"expected_fps":null,'
    '"detect_fps":0.0,"reconnects":0,"reconnects_1h":0,"stalls_1h":0,"decode_errors":0,'
    '"codec":"","width":0,"height":0,"quality":"unusable","picture":["black"],'
    '"last_error_class":"","outage":{"since":"2026-09-21T14:14:10.000Z","until":null,'
    '"duration_s":0.0,"reason":"timeout"}}'
)


def golden_config() -> AgentConfig:
    """Box ``hz/s-001/box-01`` with camera ``kitchen-1`` (后厨) and its zone ``prep`` (备餐区)."""
    data = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"topic_prefix": "mclz"},
        "cameras": {
            "kitchen-1": {
                "name": "后厨",
                "url": "rtsp://127.0.0.1:1/kitchen",
                "zones": {"prep": {"name": "备餐区", "polygon": [[0, 0], [1, 0], [1, 1]]}},
            }
        },
    }
    return parse_config(yaml.safe_dump(data, allow_unicode=True))


def test_alert_payloads_from_records_are_unchanged() -> None:
    """The alert start (with evidence) and end (without) built from records are the bytes the
    builders produced before, fit the alert schema, and the stored record keeps the raw
    values and the evidence path."""
    config = golden_config()
    hit = Detection("head_bare", 0, 0.87654321, (0.1, 0.2, 0.333333333, 0.4))
    start = AlertEvent(
        id="alert-01",
        type="no_hat",
        severity="warning",
        camera_id="kitchen-1",
        started_at=1_790_000_000.25,
        raised_at=1_790_000_002.5,
        confidence=0.912345678,
        detections=(hit,),
        zone="prep",
        hits=7,
    )
    image = EvidenceInfo(
        path="/state/evidence/alert-01.jpg",
        width=640,
        height=360,
        size=6,
        sha256="ab" * 32,
        source="main",
    )
    end = replace(start, phase="end", ended_at=1_790_000_030.125, end_reason="cleared", zone=None)
    schema = json.loads((DOCS / "alert.schema.json").read_text("utf-8"))

    started = messages.alert(config, start, image, model="m@1")
    ended = messages.alert(config, end, None, model="m@1")

    assert messages.encode(started) == GOLDEN_START.encode()
    jsonschema.validate(ended, schema)
    jsonschema.validate(started, schema)
    del ended["ts"]  # the time the end was built
    assert messages.encode(ended) == GOLDEN_END_WITHOUT_TS.encode()
    record = messages.alert_record(start, image)
    assert (record.id, record.camera, record.zone, record.confidence) == (
        "alert-01",
        "kitchen-1",
        "prep",
        0.912345678,
    )
    assert record.evidence_path == "/state/evidence/alert-01.jpg"
    assert record.detections == [
        {"label": "head_bare", "confidence": 0.87654321, "box": [0.1, 0.2, 0.333333333, 0.4]}
    ]
    assert messages.alert_record(end, None).evidence_path is None


def test_camera_status_payload_from_records_is_unchanged() -> None:
    """A status built from a Transition and an open Outage is the bytes it was before."""
    change = Transition(
        "kitchen-1",
        CameraState.ONLINE,
        CameraState.OFFLINE,
        1_790_000_100.0,
        "timeout",
        1_790_000_050.0,
    )
    outage = Outage("kitchen-1", 1_790_000_050.0, None, None, "timeout", None)
    health = {"state": "online", "since": 1_790_000_000.0, "fps": 5.0}

    body = messages.camera_status(
        golden_config(),
        "status-01",
        "kitchen-1",
        health,
        now=1_790_000_101.0,
        transition=change,
        outage=outage,
        picture=["black"],
    )

    assert messages.encode(body) == GOLDEN_STATUS.encode()
    jsonschema.validate(body, json.loads((DOCS / "camera_status.schema.json").read_text("utf-8")))


# --------------------------------------------------------------------------- a real run


@dataclass(frozen=True)
class Seen:
    """One message as the recorder received it (retain flag as published)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation: bytes | None


class Recorder:
    """An MQTT 5 client keeping every message of its filters; it also sends the commands."""

    def __init__(self, broker: Broker, filters: Sequence[str]) -> None:
        self._cond = threading.Condition()
        self.seen: list[Seen] = []
        self._subscribed = threading.Event()
        self.client = mqtt_connect(broker.url)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # Retain-as-published: a live message keeps its retain flag, so it can be checked.
        options = SubscribeOptions(qos=1, retainAsPublished=True)
        self.client.subscribe([(f, options) for f in filters])
        if not self._subscribed.wait(5):
            self.close()
            raise AssertionError(f"no SUBACK for {filters}")

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if not any(code.is_failure for code in codes):
            self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        seen = Seen(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), correlation)
        with self._cond:
            self.seen.append(seen)
            self._cond.notify_all()

    def wait_for(self, what: str, predicate: Callable[[list[Seen]], bool], timeout: float) -> None:
        """Wait until ``predicate(messages so far)`` holds.

        Raises:
            AssertionError: it did not within ``timeout``; names ``what`` and the topics seen.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.seen), timeout):
                topics = sorted({m.topic for m in self.seen})
                raise AssertionError(f"{what} not seen within {timeout} s; topics: {topics}")

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        info.wait_for_publish(5)
        assert info.is_published(), topic

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.slow
def test_every_message_of_a_real_run_matches_the_document(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    tmp_path: Path,
) -> None:
    """A real agent run (alert, evidence, heartbeats, camera status, a ping with an MQTT 5
    response topic, a malformed command, a reload that removes the camera, SIGTERM): every
    message published is on one channel of asyncapi.yaml, fits one of that channel's
    messages (JSON: its schema; evidence: a JPEG within evidence.max_bytes), has the QoS and
    retain flag of the channel's operation, and every channel the box sends on is seen."""
    doc = load_asyncapi()
    magenta = (255, 0, 255)
    clip = clip_factory(seconds=6, squares=lambda i: [(0.5, 0.5, 0.35, magenta)] if i >= 10 else [])
    camera = rtsp_server_factory({"/kitchen": clip})
    settings: dict[str, Any] = {
        "identity": {"city": "hz", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"url": broker.url, "topic_prefix": "mclz/e2e", "reconnect_max": 2},
        "cameras": {"kitchen-1": {"name": "后厨", "url": camera.url("/kitchen")}},
        "model": {"path": str(build_pattern_model(tmp_path / "model")), "conf_threshold": 0.3},
        "rules": {"no_hat": {"labels": ["head_bare"], "min_duration": 1.0, "cooldown": 600}},
        "storage": {"state_dir": str(tmp_path / "state")},
        "evidence": {"max_bytes": 100_000},
        "heartbeat": {"interval": 2},
    }
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(settings, allow_unicode=True), "utf-8")
    config = load_config(config_path)
    topics = Topics(config)
    status_topic = topics.camera_status("kitchen-1")
    replies_to = "platform/replies/contract-ping"
    recorder = Recorder(broker, [f"{config.topic_root}/#", "platform/replies/#"])
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config_path)],
            cwd=REPO,
            stdout=out,
            stderr=out,
        )

    def on(
        topic_filter: str, fits: Callable[[bytes], bool] | None = None
    ) -> Callable[[list[Seen]], bool]:
        """Whether a message on ``topic_filter`` (whose payload ``fits``) was seen."""
        return lambda ms: any(
            mqtt.topic_matches_sub(topic_filter, m.topic) and (fits is None or fits(m.payload))
            for m in ms
        )

    ping = json.dumps({"id": "contract-ping", "command": "ping"}).encode()
    malformed = json.dumps({"command": "ping"}).encode()  # no id
    reload = json.dumps({"id": "contract-reload", "command": "reload"}).encode()
    try:
        # Waits go by the code's topics, so a document that misses one fails below, at once.
        for topic in (topics.alert, topics.evidence("+"), topics.heartbeat, topics.availability):
            recorder.wait_for(topic, on(topic), 45)
        recorder.wait_for("camera status", on(status_topic), 10)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = replies_to
        props.CorrelationData = b"corr-1"
        recorder.publish(topics.command, ping, props)
        recorder.publish(topics.command, malformed)
        recorder.wait_for("reply on the response topic", on(replies_to), 15)
        recorder.wait_for("reply on command/reply", on(topics.command_reply), 15)
        settings["cameras"]["kitchen-1"]["enabled"] = False
        config_path.write_text(yaml.safe_dump(settings, allow_unicode=True), "utf-8")
        recorder.publish(topics.command, reload)
        recorder.wait_for(
            "reload reply", on(topics.command_reply, lambda p: b'"contract-reload"' in p), 15
        )
        recorder.wait_for("status deleted", on(status_topic, lambda p: p == b""), 15)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        recorder.wait_for(
            "offline availability", on(topics.availability, lambda p: b'"offline"' in p), 10
        )
    except AssertionError as exc:
        tail = log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\nagent log:\n{tail}") from exc
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(5)
        recorder.close()

    sends = send_operations(doc)
    box = {"prefix": "mclz/e2e", "city": "hz", "school_id": "s-001", "box_id": "box-01"}
    seen: set[tuple[str, str]] = set()  # (channel, message key)
    alerts: dict[str, dict[str, Any]] = {}
    images: dict[str, bytes] = {}
    for msg in recorder.seen:
        found: list[tuple[str, dict[str, str]]]
        if msg.topic == replies_to:  # the response topic the ping named: the dynamic channel
            found = [(c, {}) for c, ch in doc["channels"].items() if ch.get("address") is None]
        else:
            found = channels_of_topic(doc, msg.topic)
        assert len(found) == 1, f"{msg.topic} is on {len(found)} channels"
        [(channel, params)] = found
        if params:
            assert {k: params[k] for k in box} == box, msg.topic
            assert params.get("camera_id", "kitchen-1") == "kitchen-1", msg.topic
        problems = {
            key: payload_problem(content_type, schema, msg.payload, config.evidence.max_bytes)
            for key, (content_type, schema) in channel_messages(doc, channel).items()
        }
        fits = sorted(key for key, problem in problems.items() if problem is None)
        if channel == "command":  # platform -> box: what this test sent
            assert msg.payload in {ping, malformed, reload}
            assert bool(fits) == (msg.payload != malformed), (msg.payload, problems)
            continue
        assert fits, f"{msg.topic}: fits no message of channel {channel}: {problems}"
        seen.add((channel, fits[0]))
        binding = sends[channel]["bindings"]["mqtt"]
        assert (msg.qos, msg.retain) == (binding["qos"], binding["retain"]), msg.topic
        if channel == "alert":
            alerts[json.loads(msg.payload)["id"]] = json.loads(msg.payload)
        if channel == "evidence":
            images[params["alert_id"]] = msg.payload

    assert {channel for channel, _ in seen} == set(sends), f"seen {sorted(seen)}"
    assert ("cameraStatus", "cameraRemoved") in seen
    assert images
    for alert_id, jpeg in images.items():
        assert alerts[alert_id]["evidence"]["bytes"] == len(jpeg)
        assert alerts[alert_id]["evidence"]["sha256"] == hashlib.sha256(jpeg).hexdigest()
        assert alerts[alert_id]["evidence"]["topic"] == topics.evidence(alert_id)
    [response] = [m for m in recorder.seen if m.topic == replies_to]
    assert response.correlation == b"corr-1"
    assert json.loads(response.payload)["request_id"] == "contract-ping"
    fallback = [json.loads(m.payload) for m in recorder.seen if m.topic == topics.command_reply]
    assert [(r["request_id"], r["ok"]) for r in fallback] == [
        (None, False),
        ("contract-reload", True),
    ]
    assert fallback[1]["result"]["cameras_removed"] == ["kitchen-1"]
