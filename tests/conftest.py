"""Pytest fixtures that start real services (mosquitto, an RTSP camera) and make clips.

The classes live in the dev-only ``mclz_testkit`` package (``testkit/``); these fixtures start
them on ephemeral loopback ports and always stop them at teardown. A missing mosquitto or
GStreamer RTSP server makes the fixture fail (not skip) with the Debian package to install.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.clips import SquaresFn, make_clip
from mclz_testkit.common import MissingDependencyError, ServiceError
from mclz_testkit.factories import (
    BrokerFactory,
    ClipFactory,
    CollectorFactory,
    NetnsSubscriberFactory,
    RtspServerFactory,
)
from mclz_testkit.mqtt import MqttCollector
from mclz_testkit.netns import Netns, NetnsBroker, NetnsSubscriber, NetnsUnavailableError
from mclz_testkit.pki import Pki, make_test_pki
from mclz_testkit.rtsp import RtspServer

SAMPLE_VIDEO = (
    Path(__file__).resolve().parents[1].parent / "shared/videos/bareheaded_people_indoor.mp4"
)


@pytest.fixture
def broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """Start mosquitto brokers on demand (``users`` → password file, no anonymous access)."""
    brokers: list[Broker] = []

    def make(
        users: Mapping[str, str] | None = None,
        tls: Pki | None = None,
        require_client_cert: bool = False,
    ) -> Broker:
        workdir = tmp_path_factory.mktemp("mosquitto")
        try:
            broker = Broker(workdir, users=users, tls=tls, require_client_cert=require_client_cert)
        except MissingDependencyError as exc:
            pytest.fail(str(exc), pytrace=False)
        brokers.append(broker)
        return broker.start()

    yield make
    for broker in brokers:
        with contextlib.suppress(ServiceError, OSError):
            broker.stop()
        broker.kill()


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """Give a started anonymous mosquitto broker on a free loopback port."""
    return broker_factory()


@pytest.fixture
def mqtt_collector() -> Iterator[CollectorFactory]:
    """Connect collectors ``(url, topic="#")``, subscribed at QoS 1; closed at teardown."""
    collectors: list[MqttCollector] = []

    def make(url: str, topic: str = "#") -> MqttCollector:
        collector = MqttCollector(url, topic)
        collectors.append(collector)
        return collector

    yield make
    for collector in collectors:
        collector.close()


@pytest.fixture
def netns_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsBroker]:
    """Give an anonymous mosquitto alone in a network namespace of this test's own.

    Its ``url`` goes through a veth pair that ``netns_broker.netns.partition()`` cuts
    silently. Skips where namespaces cannot be made (not root); the broker, the veth pair
    and the namespace are removed at teardown, whatever happened.
    """
    try:
        netns = Netns().create()
    except NetnsUnavailableError as exc:
        pytest.skip(f"needs network namespaces (root or CAP_NET_ADMIN): {exc}")
    broker: NetnsBroker | None = None
    try:
        try:
            broker = NetnsBroker(tmp_path_factory.mktemp("mosquitto-netns"), netns)
        except MissingDependencyError as exc:
            pytest.fail(str(exc), pytrace=False)
        broker.start()
        yield broker
    finally:
        if broker is not None:
            broker.kill()
        netns.delete()


@pytest.fixture
def netns_subscriber(netns_broker: NetnsBroker) -> Iterator[NetnsSubscriberFactory]:
    """Subscribe ``(topics)`` at QoS 1 inside ``netns_broker``'s namespace; closed at teardown.

    These subscribers reach the broker at 127.0.0.1 in the namespace: a partition never cuts
    them, so they see everything the broker got.
    """
    subscribers: list[NetnsSubscriber] = []

    def make(topics: Sequence[str]) -> NetnsSubscriber:
        subscriber = NetnsSubscriber(netns_broker, topics)
        subscribers.append(subscriber)
        return subscriber

    yield make
    for subscriber in subscribers:
        subscriber.close()


@pytest.fixture
def rtsp_server_factory() -> Iterator[RtspServerFactory]:
    """Start ``scripts/tools/rtsp_server.py`` cameras ``(mounts, loop, user, password)``."""
    servers: list[RtspServer] = []

    def make(
        mounts: Mapping[str, Path],
        loop: bool = True,
        user: str | None = None,
        password: str | None = None,
    ) -> RtspServer:
        server = RtspServer(mounts, loop=loop, user=user, password=password)
        servers.append(server)
        try:
            return server.start()
        except MissingDependencyError as exc:
            pytest.fail(str(exc), pytrace=False)

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def clip_factory(tmp_path: Path) -> ClipFactory:
    """Write H.264/H.265 MP4 clips under the test's tmp dir (``mclz_testkit.clips.make_clip``)."""

    def make(
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
    ) -> Path:
        return make_clip(
            tmp_path / name,
            width=width,
            height=height,
            fps=fps,
            seconds=seconds,
            gop=gop,
            codec=codec,
            squares=squares,
            seed=seed,
        )

    return make


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """Return the shared real kitchen clip, or skip when ../shared is not checked out."""
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"../shared is absent: {SAMPLE_VIDEO} not found")
    return SAMPLE_VIDEO


SmallDiskFactory = Callable[[str, str], Path]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDiskFactory]:
    """Mount small tmpfs filesystems ``(name, size)`` under tmp_path, to fill them up for real.

    Skips when this machine does not allow mounting (not root); unmounted at teardown.
    """
    mounts: list[Path] = []

    def make(name: str, size: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield make
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throw-away CA, server and client certificates for TLS tests (made once per session)."""
    try:
        return make_test_pki(tmp_path_factory.mktemp("pki"))
    except MissingDependencyError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts; any still running is killed at teardown."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()
