"""The types of ``tests/conftest.py``'s factory fixtures, for annotating tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from mclz_testkit.broker import Broker
from mclz_testkit.clips import SquaresFn
from mclz_testkit.mqtt import MqttCollector
from mclz_testkit.netns import NetnsSubscriber
from mclz_testkit.pki import Pki
from mclz_testkit.rtsp import RtspServer


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
