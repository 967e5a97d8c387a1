"""Pytest fixtures that start real services (mosquitto, an RTSP camera) and make clips.

The classes live in ``tests/services.py``; these fixtures start them on ephemeral loopback
ports and always stop them at teardown. A missing mosquitto or GStreamer RTSP server makes
the fixture fail (not skip) with the Debian package to install.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from services import (
    Broker,
    BrokerFactory,
    ClipFactory,
    CollectorFactory,
    MissingDependencyError,
    MqttCollector,
    Pki,
    RtspServer,
    RtspServerFactory,
    ServiceError,
    SquaresFn,
    make_clip,
    make_test_pki,
)

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
def rtsp_server_factory() -> Iterator[RtspServerFactory]:
    """Start ``scripts/rtsp_server.py`` cameras ``(mounts, loop, user, password)``."""
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
    """Write H.264/H.265 MP4 clips under the test's tmp dir (see ``services.make_clip``)."""

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
