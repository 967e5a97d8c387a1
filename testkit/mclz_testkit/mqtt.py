"""MQTT clients for tests: connect, publish, collect what arrives; the contract's schemas."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mclz_testkit.common import REPO_ROOT, ServiceError

SCHEMA_DIR = REPO_ROOT / "docs" / "mqtt"


def load_schema(name: str) -> dict[str, Any]:
    """The contract's JSON Schema ``name`` (e.g. ``"alert"``) from ``docs/mqtt/``."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    return schema


# --------------------------------------------------------------------------- MQTT clients


class MqttConnectError(ServiceError):
    """The broker refused or did not answer an MQTT connection."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MqttMessage:
    """One message as a collector received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    received_at: float  # time.monotonic() on arrival

    def text(self) -> str:
        """Return the payload decoded as UTF-8."""
        return self.payload.decode()


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None]:
    """Split ``mqtt://[user[:password]@]host[:port]`` into host, port, user and password.

    Raises:
        ValueError: the scheme is not ``mqtt`` or the host is missing.
    """
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"not an mqtt://host:port URL: {url!r}")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname, parts.port or 1883, user, password


def _new_client(url: str, client_id: str) -> tuple[mqtt.Client, str, int]:
    host, port, user, password = parse_mqtt_url(url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    if user is not None:
        client.username_pw_set(user, password)
    client.reconnect_delay_set(min_delay=1, max_delay=2)
    return client, host, port


def mqtt_connect(url: str, *, client_id: str | None = None, timeout: float = 5.0) -> mqtt.Client:
    """Return a paho MQTTv5 client connected to ``url`` with its network loop running.

    The caller owns it: ``client.disconnect(); client.loop_stop()`` when done.

    Raises:
        MqttConnectError: the broker refused the connection (``reason`` holds the reason
            code's text, e.g. "Bad user name or password") or did not answer in time.
    """
    client, host, port = _new_client(url, client_id or f"test-{uuid.uuid4().hex[:8]}")
    done = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        outcome.append(reason_code)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise MqttConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
    client.loop_start()
    if not done.wait(timeout) or outcome[0].is_failure:
        client.disconnect()
        client.loop_stop()
        reason = str(outcome[0]) if outcome else None
        raise MqttConnectError(
            f"broker {host}:{port} refused the connection: {reason or 'no CONNACK in time'}",
            reason,
        )
    client.on_connect = None
    return client


def mqtt_publish(
    url: str,
    topic: str,
    payload: bytes | str,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = 5.0,
) -> None:
    """Publish one message with a short-lived client and wait until the broker has it.

    Raises:
        MqttConnectError: the connection was refused.
        ServiceError: the publish was not acknowledged within ``timeout``.
    """
    client = mqtt_connect(url, timeout=timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ServiceError(f"publish to {topic!r} not acknowledged within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()


class MqttCollector:
    """Subscribe to a topic filter and keep every message received, thread-safely.

    The constructor returns once the subscription is acknowledged. After a broker restart
    paho reconnects by itself and the collector subscribes again (see ``wait_ready``).
    """

    def __init__(
        self,
        url: str,
        topic: str = "#",
        *,
        qos: int = 1,
        client_id: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Connect and subscribe.

        Raises:
            MqttConnectError: the broker refused the connection or did not answer.
        """
        self.url = url
        self.topic = topic
        self.qos = qos
        self._cond = threading.Condition()
        self._messages: list[MqttMessage] = []
        self._subscribed = False
        self._refused: str | None = None
        self._closed = False
        self.connects = 0
        self._client, host, port = _new_client(
            url, client_id or f"collector-{uuid.uuid4().hex[:8]}"
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        try:
            self._client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise MqttConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._client.loop_start()
        try:
            self.wait_ready(timeout)
        except MqttConnectError:
            self.close()
            raise

    # paho callbacks, on paho's network thread
    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._refused = str(reason_code)
                self._cond.notify_all()
                return
            self.connects += 1
            self._subscribed = False  # until this connection's SUBACK
        # The broker may have restarted without persistence: subscribe on every connect.
        client.subscribe(self.topic, qos=self.qos)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self._cond:
            if any(rc.is_failure for rc in reason_codes):
                self._refused = f"subscribe {self.topic!r}: {[str(rc) for rc in reason_codes]}"
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        _reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subscribed = False
            self._cond.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        record = MqttMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            received_at=time.monotonic(),
        )
        with self._cond:
            self._messages.append(record)
            self._cond.notify_all()

    # public API
    @property
    def subscribed(self) -> bool:
        """Return whether the collector is connected and its subscription acknowledged."""
        with self._cond:
            return self._subscribed

    def wait_ready(self, timeout: float = 10.0, *, connects: int = 1) -> None:
        """Wait until subscribed on at least the ``connects``-th connection.

        After a broker restart, pass ``connects=collector.connects + 1`` (read before the
        restart): waiting for "subscribed" alone could see the old connection's state before
        paho noticed the broker went away.

        Raises:
            MqttConnectError: the broker refused the connection or the subscription, or
                nothing happened within ``timeout``.
        """

        def ready() -> bool:
            return self._refused is not None or (self._subscribed and self.connects >= connects)

        with self._cond:
            ok = self._cond.wait_for(ready, timeout)
            if self._refused is not None:
                raise MqttConnectError(f"{self.url}: {self._refused}", self._refused)
            if not ok:
                raise MqttConnectError(f"{self.url}: not subscribed within {timeout} s")

    def messages(self, topic_filter: str | None = None) -> list[MqttMessage]:
        """Return a copy of the messages so far, optionally only those matching a filter.

        ``topic_filter`` may use the MQTT wildcards ``+`` and ``#``.
        """
        with self._cond:
            return self._select(topic_filter)

    def _select(self, topic_filter: str | None) -> list[MqttMessage]:
        if topic_filter is None:
            return list(self._messages)
        return [m for m in self._messages if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def wait_for(
        self,
        predicate: Callable[[list[MqttMessage]], bool],
        timeout: float = 10.0,
        *,
        topic_filter: str | None = None,
    ) -> list[MqttMessage]:
        """Wait until ``predicate(messages)`` holds and return those messages.

        Raises:
            AssertionError: the predicate did not hold within ``timeout``; the message
                summarises what did arrive.
        """
        with self._cond:
            if self._cond.wait_for(lambda: predicate(self._select(topic_filter)), timeout):
                return self._select(topic_filter)
            got = self._select(topic_filter)
            every = len(self._messages)
        raise AssertionError(
            f"MQTT condition not met within {timeout} s on {self.url} "
            f"(subscribed {self.topic!r}, filter {topic_filter!r}): "
            f"{len(got)} matching of {every} received\n{summarize(got)}"
        )

    def wait_for_count(
        self, count: int, timeout: float = 10.0, *, topic_filter: str | None = None
    ) -> list[MqttMessage]:
        """Wait until at least ``count`` messages (matching ``topic_filter``) arrived.

        Raises:
            AssertionError: fewer arrived within ``timeout``.
        """
        return self.wait_for(lambda ms: len(ms) >= count, timeout, topic_filter=topic_filter)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self._messages.clear()

    def close(self) -> None:
        """Disconnect and stop the network thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttCollector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def summarize(messages: Sequence[MqttMessage], limit: int = 20) -> str:
    """Describe messages one per line (topic, QoS, retain, payload start) for failures."""
    lines = [
        f"  {m.topic} qos={m.qos} retain={m.retain} {m.payload[:120]!r}" for m in messages[-limit:]
    ]
    if len(messages) > limit:
        lines.insert(0, f"  ... {len(messages) - limit} earlier")
    return "\n".join(lines) or "  (nothing)"
