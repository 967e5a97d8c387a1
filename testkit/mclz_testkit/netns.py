"""A network namespace of a test's own, with a broker and a subscriber inside it.

:class:`NetnsBroker` sits behind a veth pair that a test can cut (:meth:`Netns.partition`);
:class:`NetnsSubscriber` sees everything that broker gets, partitions or not.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt

from mclz_testkit.broker import Broker
from mclz_testkit.common import SBIN_PATH, ServiceError, tail, terminate_process
from mclz_testkit.mqtt import MqttMessage, summarize


class NetnsUnavailableError(ServiceError):
    """This machine does not let the tests make network namespaces (not root, no CAP_NET_ADMIN)."""


class Netns:
    """A network namespace of a test's own, joined to this one by a veth pair on a /30.

    Names and addresses come from the process id and a counter, so test runs side by side
    do not collide. The namespace side holds ``address``, this side ``peer_address``.
    ``partition()`` sets the inner veth down: from then on packets either way are dropped
    silently, with no RST and no ICMP, like a dead mobile link; ``heal()`` sets it up again.
    Traffic inside the namespace (to its 127.0.0.1) is never cut.
    """

    _serial = itertools.count()

    def __init__(self) -> None:
        """Choose names and addresses; nothing is made until :meth:`create`.

        Raises:
            NetnsUnavailableError: the ``ip`` command (iproute2) is not installed.
        """
        ip = shutil.which("ip", path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")
        if ip is None:
            raise NetnsUnavailableError(
                "the ip command is not installed (apt-get install iproute2)"
            )
        self._ip = ip
        serial = next(Netns._serial)
        tag = f"{os.getpid()}x{serial}"
        self.name = f"mclz-test-{tag}"
        self.outer_if = f"mz{tag}o"  # interface names have at most 15 characters
        self.inner_if = f"mz{tag}i"
        block = (os.getpid() * 16 + serial) % (1 << 14)  # one of the /30 blocks of 10.213/16
        third, fourth = divmod(block * 4, 256)
        self.peer_address = f"10.213.{third}.{fourth + 1}"
        self.address = f"10.213.{third}.{fourth + 2}"
        self._created = False

    def _run(self, *args: str) -> None:
        done = subprocess.run([self._ip, *args], capture_output=True, check=False, timeout=10)
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()
            raise ServiceError(f"ip {' '.join(args)}: {error or f'exit {done.returncode}'}")

    def create(self) -> Netns:
        """Make the namespace, the veth pair and the addresses, all links up; return self.

        Raises:
            NetnsUnavailableError: namespaces cannot be made here (not root, no CAP_NET_ADMIN).
            ServiceError: a later step failed; whatever was made is removed again.
        """
        try:
            self._run("netns", "add", self.name)
        except ServiceError as exc:
            raise NetnsUnavailableError(f"cannot create a network namespace: {exc}") from exc
        self._created = True
        try:
            self._run("link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if)
            self._run("link", "set", self.inner_if, "netns", self.name)
            self._run("addr", "add", f"{self.peer_address}/30", "dev", self.outer_if)
            self._run("link", "set", self.outer_if, "up")
            self._run("-n", self.name, "addr", "add", f"{self.address}/30", "dev", self.inner_if)
            self._run("-n", self.name, "link", "set", self.inner_if, "up")
            self._run("-n", self.name, "link", "set", "lo", "up")
        except ServiceError:
            self.delete()
            raise
        return self

    def exec_args(self, *command: str) -> list[str]:
        """Return the argument list that runs ``command`` inside the namespace."""
        return [self._ip, "netns", "exec", self.name, *command]

    def partition(self) -> None:
        """Cut the link silently: packets either way are dropped and nobody is told.

        Raises:
            ServiceError: ``ip`` failed.
        """
        self._run("-n", self.name, "link", "set", self.inner_if, "down")

    def heal(self) -> None:
        """Bring the link back up.

        Raises:
            ServiceError: ``ip`` failed.
        """
        self._run("-n", self.name, "link", "set", self.inner_if, "up")

    def delete(self) -> None:
        """Remove the veth pair and the namespace; safe to call twice, never raises.

        Stop the processes inside first: a namespace with processes in it outlives its name.
        """
        if not self._created:
            return
        self._created = False
        # Deleting one end of a veth pair deletes both, wherever the other end is.
        for args in (["link", "delete", self.outer_if], ["netns", "delete", self.name]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run([self._ip, *args], capture_output=True, check=False, timeout=10)

    def __repr__(self) -> str:
        return f"Netns({self.name}, {self.address} via {self.outer_if})"


class NetnsBroker(Broker):
    """An anonymous mosquitto alone in ``netns``, listening on every address there.

    Clients on this side reach it at ``url`` (``netns.address``), through the veth pair that
    ``netns.partition()`` cuts; processes inside the namespace reach it at 127.0.0.1.
    """

    bind = "0.0.0.0"  # noqa: S104 - every address of the test's own namespace, loopback included

    def __init__(self, workdir: Path, netns: Netns, *, port: int = 1883) -> None:
        """Configure the broker in ``workdir``; the namespace is empty, so 1883 is free there.

        Raises:
            MissingDependencyError: mosquitto is not installed.
        """
        super().__init__(workdir, port=port)
        self.netns = netns
        self.host = netns.address
        self.launcher = tuple(netns.exec_args())


# Runs inside the namespace: paho subscribes at QoS 1 and prints one JSON line per event.
_NETNS_SUBSCRIBER = """
import base64, json, sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

port, topics = int(sys.argv[1]), sys.argv[2:]

def emit(record):
    sys.stdout.write(json.dumps(record) + "\\n")
    sys.stdout.flush()

def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe([(topic, 1) for topic in topics])

def on_subscribe(client, userdata, mid, reason_codes, properties):
    emit({"subscribed": [str(rc) for rc in reason_codes if rc.is_failure]})

def on_message(client, userdata, msg):
    payload = base64.b64encode(msg.payload).decode()
    emit({"topic": msg.topic, "payload": payload, "qos": msg.qos, "retain": bool(msg.retain)})

client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect("127.0.0.1", port, keepalive=30)
client.loop_forever()
"""


class NetnsSubscriber:
    """A QoS 1 subscriber inside a :class:`NetnsBroker`'s namespace, which partitions never cut.

    paho runs in a child process (``ip netns exec``) connected to 127.0.0.1 there; it prints
    each message as a JSON line and a thread here collects them. The reading side is
    :class:`MqttCollector`'s: ``messages`` and ``wait_for``.
    """

    def __init__(self, broker: NetnsBroker, topics: Sequence[str], timeout: float = 10.0) -> None:
        """Start the subscriber; return once the broker acknowledged every subscription.

        Raises:
            ServiceError: the subscriber exited, was refused, or was not subscribed in time.
        """
        self.topics = list(topics)
        self._cond = threading.Condition()
        self._messages: list[MqttMessage] = []
        self._refused: list[str] | None = None  # None until the SUBACK
        self._ended = False
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self._proc = subprocess.Popen(
            broker.netns.exec_args(
                sys.executable, "-c", _NETNS_SUBSCRIBER, str(broker.port), *self.topics
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._reader = threading.Thread(target=self._read, name="netns-subscriber", daemon=True)
        self._reader.start()
        refused = self._wait_subscribed(timeout)
        if refused is None or refused:
            terminate_process(self._proc, 5.0)
            why = f"refused {refused}" if refused else f"not subscribed within {timeout} s"
            error = ServiceError(f"subscriber in {broker.netns.name}: {why}:\n{self.stderr}")
            self.close()
            raise error

    def _wait_subscribed(self, timeout: float) -> list[str] | None:
        """Wait for the SUBACK; return the refusals in it, or None if none came in time."""
        with self._cond:
            self._cond.wait_for(lambda: self._refused is not None or self._ended, timeout)
            return self._refused

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            record = json.loads(line)
            with self._cond:
                if "subscribed" in record:
                    self._refused = list(record["subscribed"])
                else:
                    self._messages.append(
                        MqttMessage(
                            topic=record["topic"],
                            payload=base64.b64decode(record["payload"]),
                            qos=record["qos"],
                            retain=record["retain"],
                            received_at=time.monotonic(),
                        )
                    )
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        """Return the last lines the subscriber process wrote to stderr."""
        self._stderr.seek(0)
        return tail(self._stderr.read().decode(errors="replace"))

    def messages(self, topic_filter: str | None = None) -> list[MqttMessage]:
        """Return a copy of the messages so far, optionally only those matching a filter."""
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
            AssertionError: the predicate did not hold within ``timeout``.
        """
        with self._cond:
            if self._cond.wait_for(lambda: predicate(self._select(topic_filter)), timeout):
                return self._select(topic_filter)
            got = self._select(topic_filter)
            ended = self._ended
        raise AssertionError(
            f"MQTT condition not met within {timeout} s in the namespace (topics {self.topics}, "
            f"filter {topic_filter!r}, subscriber {'exited' if ended else 'running'}): "
            f"{len(got)} matching\n{summarize(got)}"
        )

    def close(self) -> None:
        """Stop the subscriber process; safe to call twice."""
        terminate_process(self._proc, 5.0)
        self._reader.join(timeout=5)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> NetnsSubscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
