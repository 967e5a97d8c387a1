"""Real services for tests: a mosquitto broker, an MQTT collector, an RTSP camera and clips.

Everything binds 127.0.0.1 on ephemeral ports, except :class:`NetnsBroker`, which has a
network namespace of its own behind a veth pair that a test can cut (:class:`Netns`).
The pytest fixtures in ``tests/conftest.py`` wrap these classes and clean them up; tests may
also use the classes directly.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import av
import cv2
import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.detect.datasets import split_of

REPO_ROOT = Path(__file__).resolve().parents[1]
RTSP_SERVER_SCRIPT = REPO_ROOT / "scripts" / "rtsp_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
LOOPBACK = "127.0.0.1"
RTSP_APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)
# PyAV options for reading a camera in tests: TCP interleaving, 5 s socket timeout (in µs),
# and no frame-rate probing, which would otherwise read ~2 s of stream inside av.open().
RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000", "fpsprobesize": "0"}
_RTSP_EXIT_MISSING_DEPENDENCY = 3  # scripts/rtsp_server.py's exit status for missing GStreamer
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"

BGR = tuple[int, int, int]
Square = tuple[float, float, float, BGR]
"""A square to draw: centre x, centre y (fractions of width and height), side (fraction of
the frame height) and a BGR colour."""
SquaresFn = Callable[[int], Sequence[Square]]
Image = npt.NDArray[np.uint8]


SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "mqtt"


def load_schema(name: str) -> dict[str, Any]:
    """The contract's JSON Schema ``name`` (e.g. ``"alert"``) from ``docs/mqtt/``."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    return schema


class ServiceError(RuntimeError):
    """A test service failed to start, stop or answer in time."""


class MissingDependencyError(ServiceError):
    """A program or package a test service needs is not installed; the message says which."""


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (and SIGCONT, in case it is paused) then wait; SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once resumed
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# --------------------------------------------------------------------------- broker


def find_mosquitto() -> tuple[str, str]:
    """Return the paths of ``mosquitto`` and ``mosquitto_passwd``.

    Raises:
        MissingDependencyError: mosquitto is not installed.
    """
    search = f"{os.environ.get('PATH', '')}:{_SBIN_PATH}"
    broker = shutil.which("mosquitto", path=search)
    passwd = shutil.which("mosquitto_passwd", path=search)
    if broker is None or passwd is None:
        raise MissingDependencyError(
            "mosquitto is not installed: apt-get install mosquitto (./scripts/test does it)"
        )
    return broker, passwd


@dataclass(frozen=True)
class Pki:
    """Certificates made by the tests with openssl: a CA, a server, clients (one of another CA)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_cert: Path
    stranger_cert: Path  # a client certificate signed by the other CA
    stranger_key: Path


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")


def make_test_pki(directory: Path) -> Pki:
    """Make a throw-away PKI for TLS tests: server certificate valid for 127.0.0.1/localhost.

    Raises:
        ServiceError: openssl is missing or failed.
    """
    if shutil.which("openssl") is None:
        raise MissingDependencyError("openssl is not installed: apt-get install openssl")
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def ca(name: str) -> tuple[Path, Path]:
        cert, key = d / f"{name}.crt", d / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
        )  # fmt: skip
        return cert, key

    def leaf(name: str, ca_pair: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
        cert, key, csr, ext = (d / f"{name}.{x}" for x in ("crt", "key", "csr", "ext"))
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        usage = "serverAuth" if server else "clientAuth"
        san = "subjectAltName=IP:127.0.0.1,DNS:localhost\n" if server else ""
        ext.write_text(f"{san}extendedKeyUsage={usage}\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca_pair[0]), "-CAkey", str(ca_pair[1]),
            "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext),
        )  # fmt: skip
        return cert, key

    main_ca = ca("test-ca")
    other_ca = ca("other-ca")
    server = leaf("server", main_ca, server=True)
    client = leaf("box-01", main_ca, server=False)
    stranger = leaf("stranger", other_ca, server=False)
    return Pki(
        main_ca[0],
        server[0],
        server[1],
        client[0],
        client[1],
        other_ca[0],
        stranger[0],
        stranger[1],
    )


class Broker:
    """A real mosquitto broker on a free loopback port, configured in ``workdir``.

    Anonymous by default; with ``users`` it requires one of those user names and passwords.
    The port is kept across ``stop``/``kill`` and ``restart``, so clients can reconnect.
    """

    host = LOOPBACK
    #: The address the listener binds; None binds ``host`` only.
    bind: str | None = None
    #: Words run before the mosquitto command (e.g. ``ip netns exec NAME``).
    launcher: tuple[str, ...] = ()

    def __init__(
        self,
        workdir: Path,
        *,
        users: Mapping[str, str] | None = None,
        port: int = 0,
        tls: Pki | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.tls = tls
        self.require_client_cert = require_client_cert
        self._fixed_port = port != 0
        self.port = port or free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary, self._passwd_binary = find_mosquitto()
        self.log_path = workdir / "mosquitto.log"
        self.conf_path = workdir / "mosquitto.conf"
        self.password_path = workdir / "passwd"

    @property
    def url(self) -> str:
        """Return ``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    def url_with(self, user: str, password: str) -> str:
        """Return the broker URL carrying ``user:password@`` (percent-encoded)."""
        return f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Return whether the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """Return everything mosquitto logged so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.bind or self.host}",
            "persistence false",
            # Started as root, mosquitto would drop to user mosquitto and lose access to
            # root-owned 0600 files in the tmp dir.
            "user root",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_cert}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.users:
            self._write_passwords()
            lines += ["allow_anonymous false", f"password_file {self.password_path}"]
        else:
            lines.append("allow_anonymous true")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _write_passwords(self) -> None:
        self.password_path.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            done = subprocess.run(
                [self._passwd_binary, *create, "-b", str(self.password_path), user, password],
                capture_output=True,
                check=False,
                timeout=10,
            )
            if done.returncode != 0:
                raise ServiceError(
                    f"mosquitto_passwd failed for {user!r}: {done.stderr.decode(errors='replace')}"
                )
        self.password_path.chmod(0o600)

    def start(self, timeout: float = 10.0) -> Broker:
        """Start mosquitto and wait until its port accepts TCP; return self.

        Raises:
            ServiceError: mosquitto exited or did not listen within ``timeout``.
        """
        if self.running:
            return self
        attempts = 1 if self._fixed_port else 3  # a free port may be taken before we bind it
        for attempt in range(attempts):
            self._write_config()
            try:
                self._spawn_and_wait(timeout)
            except ServiceError:
                if attempt + 1 == attempts:
                    raise
                self.port = free_port()
            else:
                self._fixed_port = True  # restarts must come back on the same port
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self, timeout: float) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self.launcher, self._binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    f"{_tail(self.log)}"
                )
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.02)
        _kill(self._proc)
        raise ServiceError(
            f"mosquitto did not listen on {self.url} within {timeout:.0f} s:\n{_tail(self.log)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop mosquitto with SIGTERM and wait for it to exit (SIGKILL if it hangs)."""
        if self._proc is not None:
            _terminate(self._proc, timeout)

    def kill(self) -> None:
        """Kill mosquitto with SIGKILL, as in a crash or power cut."""
        if self._proc is not None:
            _kill(self._proc)

    def restart(self, timeout: float = 10.0) -> Broker:
        """Stop mosquitto if it runs and start it again on the same port; return self."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Broker({self.url}, users={sorted(self.users)}, running={self.running})"


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


# --------------------------------------------------------------------------- network namespaces


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
        ip = shutil.which("ip", path=f"{os.environ.get('PATH', '')}:{_SBIN_PATH}")
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
            _terminate(self._proc, 5.0)
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
        return _tail(self._stderr.read().decode(errors="replace"))

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
        _terminate(self._proc, 5.0)
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


# --------------------------------------------------------------------------- RTSP camera


@cache
def check_rtsp_dependencies() -> None:
    """Check that /usr/bin/python3 can import GstRtspServer and the elements exist.

    Raises:
        MissingDependencyError: names the Debian packages to install.
    """
    if not SYSTEM_PYTHON.exists():
        raise MissingDependencyError(
            f"{SYSTEM_PYTHON} is missing: apt-get install python3 {RTSP_APT_PACKAGES}"
        )
    probe = (
        "import gi\n"
        "gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0')\n"
        "from gi.repository import Gst, GstRtspServer\n"
        "Gst.init(None)\n"
        "names = ('qtdemux', 'h264parse', 'rtph264pay', 'appsrc', 'appsink')\n"
        "missing = [n for n in names if Gst.ElementFactory.find(n) is None]\n"
        "assert not missing, f'GStreamer elements missing: {missing}'\n"
    )
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", probe], capture_output=True, check=False, timeout=30
    )
    if done.returncode != 0:
        raise MissingDependencyError(
            f"GStreamer RTSP server is not usable from {SYSTEM_PYTHON}: apt-get install "
            f"{RTSP_APT_PACKAGES} (./scripts/test does it)\n"
            f"{_tail(done.stderr.decode(errors='replace'), 5)}"
        )


class RtspServer:
    """``scripts/rtsp_server.py`` in a subprocess: a camera serving clips on loopback.

    Each client gets its own stream from the clip's first frame. ``loop=False`` ends the
    stream at the clip's end. ``pause``/``resume`` freeze the process (SIGSTOP/SIGCONT) so
    the socket stays open but nothing flows, like a stalled camera.
    """

    host = LOOPBACK

    def __init__(
        self,
        mounts: Mapping[str, Path],
        *,
        loop: bool = True,
        user: str | None = None,
        password: str | None = None,
        port: int = 0,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        if not mounts:
            raise ValueError("at least one mount is needed")
        self.mounts = {(m if m.startswith("/") else f"/{m}"): Path(p) for m, p in mounts.items()}
        self.loop = loop
        self.user = user
        self.password = password
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    def _command(self) -> list[str]:
        cmd = [str(SYSTEM_PYTHON), str(RTSP_SERVER_SCRIPT), "--port", str(self.port)]
        for mount, path in self.mounts.items():
            cmd += ["--mount", f"{mount}={path}"]
        if self.loop:
            cmd.append("--loop")
        if self.user is not None:
            cmd += ["--user", self.user, "--password-env", "RTSP_SERVER_PASSWORD"]
        return cmd

    @property
    def running(self) -> bool:
        """Return whether the server process is alive (paused counts as alive)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Return the server's process id, if started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def stderr(self) -> str:
        """Return what the server wrote on stderr so far (this run)."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def url(self, mount: str, *, user: str | None = None, password: str | None = None) -> str:
        """Return ``rtsp://127.0.0.1:PORT/mount``, with ``user:password@`` if given."""
        if self.port == 0:
            raise ServiceError("the RTSP server has not started yet")
        path = mount if mount.startswith("/") else f"/{mount}"
        auth = ""
        if user is not None:
            auth = quote(user, safe="")
            if password is not None:
                auth += ":" + quote(password, safe="")
            auth += "@"
        return f"rtsp://{auth}{self.host}:{self.port}{path}"

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start the server and wait for its READY line; return self.

        Raises:
            MissingDependencyError: GStreamer's RTSP server is not installed.
            ServiceError: the server exited or was not ready within ``timeout``; the
                message carries its stderr.
        """
        if self.running:
            return self
        check_rtsp_dependencies()
        env = dict(os.environ)
        if self.password is not None:
            env["RTSP_SERVER_PASSWORD"] = self.password
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        line = self._read_ready_line(timeout)
        prefix = "READY rtsp://127.0.0.1:"
        if not line.startswith(prefix):
            _kill(self._proc)
            raise ServiceError(f"rtsp_server.py printed {line!r}, not READY:\n{self.stderr}")
        self.port = int(line[len(prefix) :])
        return self

    def _read_ready_line(self, timeout: float) -> str:
        assert self._proc is not None
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(self._proc)
                raise ServiceError(
                    f"rtsp_server.py not READY within {timeout:.0f} s:\n{_tail(self.stderr)}"
                )
            ready = _wait_readable(fd, min(remaining, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if chunk:
                    buf += chunk
                    continue
            if self._proc.poll() is not None:
                err = _tail(self.stderr)
                if self._proc.returncode == _RTSP_EXIT_MISSING_DEPENDENCY:
                    raise MissingDependencyError(err)
                raise ServiceError(
                    f"rtsp_server.py exited with {self._proc.returncode} before READY:\n{err}"
                )
        return buf.split(b"\n", 1)[0].decode(errors="replace").strip()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM (resuming it if paused) and wait for it to exit."""
        if self._proc is not None:
            _terminate(self._proc, timeout)
            self._close_pipes()

    def kill(self) -> None:
        """Kill the server with SIGKILL: the camera dies and its connections drop."""
        if self._proc is not None:
            _kill(self._proc)
            self._close_pipes()

    def restart(self, timeout: float = 20.0) -> RtspServer:
        """Stop the server if it runs and start it again on the same port; return self."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): sockets stay open but no frame flows."""
        if not self.running or self._proc is None:
            raise ServiceError("the RTSP server is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Unfreeze the server after ``pause`` (SIGCONT)."""
        if not self.running or self._proc is None:
            raise ServiceError("the RTSP server is not running")
        os.kill(self._proc.pid, signal.SIGCONT)

    def _close_pipes(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def close(self) -> None:
        """Stop the server and release its stderr file."""
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RtspServer(port={self.port}, mounts={sorted(self.mounts)}, loop={self.loop})"


def _wait_readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


@dataclass(frozen=True)
class GrabbedFrame:
    """A decoded frame and when the reader got it."""

    received_at: float  # time.monotonic()
    image: Image  # BGR, height x width x 3
    key_frame: bool
    pts: int | None  # None on PyAV's first RTSP keyframe; do not rely on it


def grab_frames(
    url: str,
    *,
    max_frames: int | None = None,
    seconds: float | None = None,
    options: Mapping[str, str] | None = None,
) -> list[GrabbedFrame]:
    """Read an RTSP (or file) URL with PyAV until ``max_frames`` or ``seconds`` after opening.

    Returns early, without error, when the stream ends. Timestamps are not used: PyAV's
    first RTSP keyframe can carry ``pts=None``.

    Raises:
        av.error.FFmpegError: opening or reading failed (``HTTPUnauthorizedError`` for 401,
            ``ConnectionRefusedError`` when nothing listens).
    """
    if max_frames is None and seconds is None:
        raise ValueError("give max_frames or seconds")
    frames: list[GrabbedFrame] = []
    opts = dict(RTSP_OPTIONS if options is None else options)
    with av.open(url, options=opts) as container:
        start = time.monotonic()
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            frames.append(GrabbedFrame(time.monotonic(), image, frame.key_frame, frame.pts))
            if max_frames is not None and len(frames) >= max_frames:
                break
            if seconds is not None and time.monotonic() - start >= seconds:
                break
    return frames


# --------------------------------------------------------------------------- clips


def _background(width: int, height: int, rng: np.random.Generator) -> tuple[Image, Image]:
    """Return a static gradient with fine noise, and a wide noise band texture to scroll."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    base[..., 0] = 60 + 100 * xs / max(width - 1, 1)  # blue grows to the right
    base[..., 1] = 50 + 90 * ys / max(height - 1, 1)  # green grows downwards
    base[..., 2] = 90 + 40 * np.sin(xs / 23.0) * np.cos(ys / 17.0)  # soft tiles in red
    base += rng.normal(0, 6, size=base.shape)
    band = rng.integers(0, 70, size=(height, 2 * width, 3)).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8), band.astype(np.uint8)


def _draw_square(img: Image, square: Square) -> None:
    height, width = img.shape[:2]
    cx, cy, side, colour = square
    half = side * height / 2
    x0, x1 = round(cx * width - half), round(cx * width + half)
    y0, y1 = round(cy * height - half), round(cy * height + half)
    img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = colour


def square_region(
    square: tuple[float, float, float], width: int, height: int, shrink: float = 0.5
) -> tuple[slice, slice]:
    """Return (rows, cols) slices of the central ``shrink`` part of a square, for checks."""
    cx, cy, side = square
    half = side * height * shrink / 2
    rows = slice(round(cy * height - half), round(cy * height + half))
    cols = slice(round(cx * width - half), round(cx * width + half))
    return rows, cols


def render_scene(
    index: int,
    *,
    width: int,
    height: int,
    fps: int,
    base: Image,
    band: Image,
    squares: SquaresFn | None = None,
) -> Image:
    """Return frame ``index`` of the scene: background with a noise band sliding right."""
    img: Image = base.copy()
    band_width = width // 4
    shift = int(index * width / (6 * fps)) % (2 * width)  # crosses the frame in ~6 s
    x0 = (shift - band_width) % width
    cols = (np.arange(band_width) + x0) % width
    texture = band[:, (np.arange(band_width) + shift) % band.shape[1]]
    img[:, cols] = np.clip(img[:, cols].astype(np.int16) + texture, 0, 255).astype(np.uint8)
    for square in squares(index) if squares is not None else ():
        _draw_square(img, square)
    return img


def make_clip(
    path: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 10,
    seconds: float = 4.0,
    gop: int = 10,
    codec: str = "libx264",
    squares: SquaresFn | None = None,
    seed: int = 0,
) -> Path:
    """Write an MP4 clip of a textured, slowly moving scene; return ``path``.

    H.264 (``libx264``, default) or H.265 (``libx265``), yuv420p, a keyframe every ``gop``
    frames and no B-frames, like a camera. ``squares(i)`` gives the squares drawn on frame
    ``i``: (cx, cy, side, BGR colour), cx and cy as fractions of width and height, side as a
    fraction of the height.

    Raises:
        ValueError: odd or non-positive sizes, or a clip shorter than one frame.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, not {width}x{height}")
    count = round(fps * seconds)
    if count < 1 or gop < 1:
        raise ValueError("the clip needs at least one frame and gop >= 1")
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
    if codec == "libx264":
        options = {"preset": "veryfast", "tune": "zerolatency", "profile": "main"}
        options["x264-params"] = params
    elif codec == "libx265":
        options = {"preset": "ultrafast", "tune": "zerolatency", "x265-params": params}
        options["x265-params"] += ":log-level=error"
    else:
        options = {}
    rng = np.random.default_rng(seed)
    base, band = _background(width, height, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        for i in range(count):
            img = render_scene(
                i, width=width, height=height, fps=fps, base=base, band=band, squares=squares
            )
            frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- the agent


class AgentProcess:
    """``python -m agent run`` in a subprocess with its stderr captured to a file."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.log_path = config_path.with_suffix(".log")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=log,
            env=self.env,
        )
        log.close()
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; return the exit code and how long the process took to exit."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


# --------------------------------------------------------------------------- real pictures

FACEMASK = REPO_ROOT.parent / "shared" / "datasets" / "facemask"


def held_out_faces(classes: set[str], *, min_height: float = 0.25) -> list[Path]:
    """Held-out facemask images whose only face is of ``classes`` and at least ``min_height``
    of the picture tall (staff at a counter, as a canteen camera sees them), by name.

    Chosen by ground truth only, never by what a model makes of them. Empty when
    ``../shared/datasets/facemask`` is absent.
    """
    chosen = []
    for xml_path in sorted((FACEMASK / "annotations").glob("*.xml")):
        if split_of("facemask", xml_path.stem) != "val":
            continue
        root = ET.parse(xml_path).getroot()  # noqa: S314 - the project's own dataset
        objects = root.findall("object")
        if len(objects) != 1 or objects[0].findtext("name") not in classes:
            continue
        box = objects[0].find("bndbox")
        height = float(root.findtext("size/height") or 0)
        if box is None or height <= 0:
            continue
        face = float(box.findtext("ymax") or 0) - float(box.findtext("ymin") or 0)
        if face / height >= min_height:
            chosen.append(FACEMASK / "images" / f"{xml_path.stem}.jpg")
    return chosen


def _letterbox(image: Image, width: int, height: int) -> Image:
    canvas = np.full((height, width, 3), 60, np.uint8)
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    y, x = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = resized
    return canvas


def make_picture_clip(
    path: Path,
    pictures: Sequence[Path],
    *,
    hold: float,
    width: int = 640,
    height: int = 360,
    fps: int = 5,
) -> Path:
    """An H.264 clip showing each picture (letterboxed) for ``hold`` seconds, a keyframe
    every second, like a camera looking at a counter where people stop one after another.

    Raises:
        ValueError: a picture cannot be read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264",
            rate=fps,
            options={
                "preset": "veryfast",
                "tune": "zerolatency",
                "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        index = 0
        for picture in pictures:
            image = cv2.imread(str(picture))
            if image is None:
                raise ValueError(f"{picture}: cannot read the picture")
            boxed = _letterbox(np.asarray(image, dtype=np.uint8), width, height)
            for _ in range(max(1, round(hold * fps))):
                frame = av.VideoFrame.from_ndarray(boxed, format="bgr24").reformat(format="yuv420p")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- fixture types


class BrokerFactory(Protocol):
    """The ``broker_factory`` fixture: start another broker."""

    def __call__(
        self,
        users: Mapping[str, str] | None = None,
        tls: Pki | None = None,
        require_client_cert: bool = False,
    ) -> Broker: ...


class CollectorFactory(Protocol):
    """The ``mqtt_collector`` fixture: connect a collector, closed at teardown."""

    def __call__(self, url: str, topic: str = "#") -> MqttCollector: ...


class RtspServerFactory(Protocol):
    """The ``rtsp_server_factory`` fixture: start a camera, stopped at teardown."""

    def __call__(
        self,
        mounts: Mapping[str, Path],
        loop: bool = True,
        user: str | None = None,
        password: str | None = None,
    ) -> RtspServer: ...


class ClipFactory(Protocol):
    """The ``clip_factory`` fixture: write a clip under the test's tmp dir."""

    def __call__(
        self,
        name: str = "clip.mp4",
        *,
        width: int = 640,
        height: int = 360,
        fps: int = 10,
        seconds: float = 4.0,
        gop: int = 10,
        codec: str = "libx264",
        squares: SquaresFn | None = None,
        seed: int = 0,
    ) -> Path: ...


class NetnsSubscriberFactory(Protocol):
    """The ``netns_subscriber`` fixture: subscribe inside ``netns_broker``'s namespace."""

    def __call__(self, topics: Sequence[str]) -> NetnsSubscriber: ...
