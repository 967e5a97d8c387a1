"""The MQTT uplink to the city platform: drains the outbox, keeps availability, takes commands.

The uplink never holds a message of its own: it reads due messages from the outbox,
publishes them at QoS 1, and deletes each from the outbox only when the broker's PUBACK
arrives (``on_publish``). paho keeps unacknowledged QoS 1 messages and resends them after
a reconnect, so a message in flight when the link drops is neither lost nor re-read; one
in flight when the process dies is still in the outbox and is sent again at the next start
(delivery is at-least-once; every payload carries a unique ``id`` for de-duplication).

Availability is retained at ``<root>/availability``: ``online`` after each CONNACK, an
``offline`` last will if the box vanishes, and an explicit ``offline`` on clean shutdown.

``mqtt.keepalive`` is how long a silent broker may stay silent before the link counts as
dead. The box sends half of it as the MQTT keepalive, so it pings every keepalive/2 and
gives up one keepalive (plus paho's one-second loop tick) after the broker's last byte: a
silent partition, with no RST and no ICMP, is noticed that fast. The broker allows 1.5 x
the MQTT keepalive, so it publishes the last will 0.75 x keepalive after the box vanished
(mosquitto counts whole seconds: up to a second later).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.backoff import Backoff
from agent.config import AgentConfig
from agent.store.store import Store
from agent.uplink.messages import Topics, availability_payload
from agent.uplink.mqtt import build_client

logger = logging.getLogger(__name__)

#: Seconds before a message the broker refused (PUBACK reason >= 0x80) is tried again.
REFUSED_RETRY = 60.0


class TokenBucket:
    """A rate limit of ``rate`` messages per second with bursts up to ``burst``; 0 is none."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> int:
        """Whole messages that may go now."""
        if self.rate <= 0:
            return 1 << 30
        self._refill()
        return int(self._tokens)

    def take(self, count: int = 1) -> None:
        """Spend ``count`` messages' worth."""
        if self.rate > 0:
            self._tokens -= count

    def wait_time(self) -> float:
        """Seconds until one more message may go."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)


class Uplink:
    """One paho client, one drain thread; ``connected`` is true only after a successful CONNACK."""

    def __init__(
        self,
        config: AgentConfig,
        outbox: Store,
        *,
        on_command: Callable[[bytes, str | None, bytes | None], object] | None = None,
    ) -> None:
        """Build the client; nothing connects until :meth:`start`.

        Raises:
            UplinkError: TLS files are unreadable or the client cannot be configured.
            SecretError: the password cannot be resolved.
        """
        self.config = config
        self.outbox = outbox
        self.on_command = on_command
        topics = Topics(config)
        self.root = topics.root
        self.availability_topic = topics.availability
        self.command_topic = topics.command
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that arrived before registration
        self._foreign: set[int] = set()  # mids of messages not from the outbox
        self._settled: list[tuple[int, int, ReasonCode]] = []  # PUBACKs not yet applied
        self.published = 0
        self.acked = 0
        self.refused = 0
        self.connects = 0
        self.disconnects = 0
        self.last_error = ""
        cfg = config.mqtt
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self._client = self._build_client()
        self._bucket = TokenBucket(config.mqtt.max_rate)
        self._thread = threading.Thread(target=self._drain_loop, name="uplink-drain", daemon=True)

    # ------------------------------------------------------------------ setup

    def _build_client(self) -> mqtt.Client:
        """The shared client (agent.uplink.mqtt) with the uplink's will, delays and callbacks."""
        cfg = self.config.mqtt
        client = build_client(
            cfg,
            self.config.client_id,
            keep_session=True,
            logger=logging.getLogger("agent.uplink.client.paho"),
        )
        will = availability_payload("offline", "connection_lost", None)
        client.will_set(self.availability_topic, will, qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, round(cfg.reconnect_min)), max_delay=round(cfg.reconnect_max)
        )
        client.max_inflight_messages_set(cfg.inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        """Whether the last CONNACK was a success and the link has not dropped since."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a successful connection."""
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background and start draining the outbox.

        The uplink starts its own threads (``uplink-drain`` and paho's network thread) and
        :meth:`stop` ends them: stopping must wait for PUBACKs, end the drain, publish
        ``offline`` and disconnect, in that order. The agent's service calls both.
        """
        cfg = self.config.mqtt
        properties = None
        if cfg.protocol == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = int(cfg.session_expiry)
        logger.info("uplink: connecting to %s:%d as %s", cfg.host, cfg.port, self.config.client_id)
        self._client.connect_async(
            cfg.host,
            cfg.port,
            # paho declares the link dead only after a PINGREQ (sent after its keepalive of
            # silence) goes unanswered for another keepalive: 2x its keepalive at worst.
            # Half of ours keeps that within cfg.keepalive of the broker's last byte.
            keepalive=max(2, cfg.keepalive // 2),
            clean_start=False if cfg.protocol == "5" else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._thread.start()

    def wake(self) -> None:
        """Tell the drain loop that new messages are waiting."""
        self._wake.set()

    def stop(self, drain_timeout: float = 2.0) -> None:
        """Wait briefly for in-flight messages, publish ``offline``, disconnect, stop threads.

        Whatever is not acknowledged by then stays in the outbox for the next start.
        """
        deadline = time.monotonic() + drain_timeout
        while self.connected and time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._inflight)
            if not busy and not self.outbox.due(1):
                break
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)
        self._flush_settled()
        if self.connected:
            info = self._client.publish(
                self.availability_topic,
                availability_payload("offline", "shutdown", time.time()),
                qos=1,
                retain=True,
            )
            try:
                info.wait_for_publish(timeout=max(0.2, deadline - time.monotonic() + 1.0))
            except (RuntimeError, ValueError) as exc:
                logger.warning("uplink: offline availability not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------ callbacks (paho thread)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.last_error = f"connect refused: {reason_code}"
            logger.error("uplink: broker refused the connection: %s", reason_code)
            self._back_off()
            return
        self.connects += 1
        self._backoff.reset()
        logger.info(
            "uplink: connected (session present: %s)", getattr(flags, "session_present", False)
        )
        info = client.publish(
            self.availability_topic,
            availability_payload("online", "connected", time.time()),
            qos=1,
            retain=True,
        )
        with self._lock:
            # Its PUBACK cannot arrive before this callback returns (same thread).
            self._foreign.add(info.mid)
        client.subscribe(self.command_topic, qos=1)
        self._connected.set()
        self._wake.set()

    def _back_off(self) -> None:
        """Set paho's next reconnect wait to our jittered, growing delay."""
        delay = self._backoff.next_delay()
        # paho waits min_delay after this call; it takes seconds as a float at run time.
        self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: object) -> None:
        self._back_off()
        cfg = self.config.mqtt
        if self.last_error != f"cannot reach {cfg.host}:{cfg.port}":
            logger.warning("uplink: cannot reach %s:%d; retrying with backoff", cfg.host, cfg.port)
        self.last_error = f"cannot reach {cfg.host}:{cfg.port}"

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if not was or self._stop.is_set():
            return  # a refused or failed connect was already reported by _on_connect
        self._back_off()
        self.disconnects += 1
        self.last_error = f"disconnected: {reason_code}"
        logger.warning("uplink: disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            if mid in self._foreign:
                self._foreign.discard(mid)
                return
            seq = self._inflight.get(mid)
            if seq is None:
                self._early[mid] = reason_code
                return
            # The drain thread settles PUBACKs in batches: one transaction (one fsync) for
            # a window of messages instead of one each. Until then the mid stays in flight,
            # so the row is never published twice.
            self._settled.append((mid, seq, reason_code))
        self._wake.set()

    def _flush_settled(self) -> None:
        """Apply the PUBACKs received so far to the outbox, then free their in-flight slots."""
        with self._lock:
            batch, self._settled = self._settled, []
        if not batch:
            return
        acked = [seq for _mid, seq, rc in batch if not rc.is_failure]
        refused = [(seq, rc) for _mid, seq, rc in batch if rc.is_failure]
        try:
            self.outbox.ack_many(acked)
            for seq, rc in refused:
                self.last_error = f"broker refused a message: {rc}"
                logger.error("uplink: broker refused message seq %d: %s", seq, rc)
                self.outbox.defer(seq, REFUSED_RETRY)
        except Exception:
            logger.exception("uplink: cannot record %d PUBACK(s); retrying", len(batch))
            with self._lock:
                self._settled = batch + self._settled
            return
        with self._lock:
            for mid, _seq, _rc in batch:
                self._inflight.pop(mid, None)
        self.acked += len(acked)
        self.refused += len(refused)

    def _on_message(
        self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage
    ) -> None:
        if message.topic != self.command_topic or self.on_command is None:
            return
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            self.on_command(
                bytes(message.payload),
                response_topic,
                bytes(correlation) if correlation is not None else None,
            )
        except Exception:
            logger.exception("uplink: command handler failed")

    # ------------------------------------------------------------------ drain thread

    def _drain_loop(self) -> None:
        try:
            pause = 1.0
            while not self._stop.is_set():
                self._wake.wait(pause)
                self._wake.clear()
                if self._stop.is_set():
                    break
                pause = 1.0
                self._flush_settled()
                if self.connected and self._fill_window():
                    pause = max(0.01, min(1.0, self._bucket.wait_time()))  # rate limited
        except Exception:
            logger.exception("uplink: drain thread crashed")

    def _fill_window(self) -> bool:
        """Publish what the in-flight window and the rate limit allow; true if limited by rate."""
        with self._lock:
            free = self.config.mqtt.inflight - len(self._inflight)
            busy = set(self._inflight.values())
        allowed = self._bucket.available()
        if free <= 0:
            return False
        if allowed <= 0:
            return True
        due = self.outbox.due(min(free, allowed), exclude=busy)
        for message in due:
            if not self.connected or self._stop.is_set():
                return False
            self._bucket.take()
            # Never hold self._lock across publish(): paho calls on_publish while holding its
            # own message mutex, which publish() also takes.
            properties = None
            if message.correlation is not None and self.config.mqtt.protocol == "5":
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                properties.CorrelationData = message.correlation
            info = self._client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=properties,
            )
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                logger.warning("uplink: publish of seq %d failed: %s", message.seq, info.rc)
                continue
            self.published += 1
            with self._lock:
                early = self._early.pop(info.mid, None)
                self._inflight[info.mid] = message.seq
                if early is not None:  # the PUBACK beat us to the registration
                    self._settled.append((info.mid, message.seq, early))
        return len(due) >= allowed

    def snapshot(self) -> dict[str, object]:
        """Link health as plain data."""
        with self._lock:
            inflight = len(self._inflight)
        return {
            "connected": self.connected,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "published": self.published,
            "acked": self.acked,
            "refused": self.refused,
            "inflight": inflight,
            "last_error": self.last_error,
        }
