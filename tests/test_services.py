"""The test services are real: RTSP camera streams, mosquitto brokers, MQTT collection, clips."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import av
import av.error
import numpy as np
import pytest

from mclz_testkit.broker import Broker
from mclz_testkit.clips import square_region
from mclz_testkit.common import MissingDependencyError
from mclz_testkit.factories import BrokerFactory, ClipFactory, CollectorFactory, RtspServerFactory
from mclz_testkit.mqtt import MqttConnectError, MqttMessage, mqtt_connect, mqtt_publish
from mclz_testkit.rtsp import GrabbedFrame, grab_frames

MAGENTA = (255, 0, 255)
SQUARE = (0.25, 0.5, 0.2)  # cx, cy, side (of the height)
WIDTH, HEIGHT = 320, 180


def magenta_square(_index: int) -> list[tuple[float, float, float, tuple[int, int, int]]]:
    """Draw the same magenta square on every frame."""
    return [(*SQUARE, MAGENTA)]


def region_mean(frame: GrabbedFrame, square: tuple[float, float, float]) -> np.ndarray:
    """Return the mean BGR colour of the centre of ``square`` in a frame."""
    rows, cols = square_region(square, frame.image.shape[1], frame.image.shape[0])
    return np.asarray(frame.image[rows, cols].reshape(-1, 3).mean(axis=0))


# --------------------------------------------------------------------------- clips


def test_make_clip_has_requested_frames_size_and_gop(clip_factory: ClipFactory) -> None:
    """A clip holds fps*seconds H.264 frames of the given size with a keyframe every gop."""
    path = clip_factory(width=WIDTH, height=HEIGHT, fps=10, seconds=2.0, gop=5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        keys = [packet.is_keyframe for packet in container.demux(stream) if packet.size]
    assert len(keys) == 20
    assert [i for i, key in enumerate(keys) if key] == [0, 5, 10, 15]
    assert (stream.width, stream.height) == (WIDTH, HEIGHT)


def test_make_clip_background_is_textured_and_moving(clip_factory: ClipFactory) -> None:
    """The background is not flat and changes from frame to frame."""
    path = clip_factory(width=WIDTH, height=HEIGHT, seconds=1.0)
    frames = grab_frames(str(path), max_frames=10, options={})
    first, last = frames[0].image.astype(np.int16), frames[-1].image.astype(np.int16)
    assert first.std() > 20
    assert np.abs(first - last).mean() > 2


# --------------------------------------------------------------------------- RTSP


def test_rtsp_server_streams_clip_with_square_in_place(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """Decoded RTSP frames show the drawn square at its place, and the background elsewhere."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, seconds=2.0, squares=magenta_square)
    server = rtsp_server_factory({"/cam1": clip})
    frames = grab_frames(server.url("/cam1"), max_frames=8)
    assert len(frames) == 8
    for frame in frames:
        assert frame.image.shape == (HEIGHT, WIDTH, 3)
        assert np.abs(region_mean(frame, SQUARE) - MAGENTA).max() < 30
        elsewhere = region_mean(frame, (0.75, 0.5, 0.2))
        assert np.abs(elsewhere - MAGENTA).max() > 60


def test_rtsp_server_without_loop_ends_at_clip_end(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """Without --loop the stream ends (PyAV iteration stops, no error) after the clip."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, seconds=1.0)
    server = rtsp_server_factory({"/cam1": clip}, loop=False)
    start = time.monotonic()
    frames = grab_frames(server.url("/cam1"), seconds=10.0)
    assert len(frames) == 10
    assert time.monotonic() - start < 5.0


def test_rtsp_server_loop_streams_past_clip_end_in_real_time(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """With --loop a 2 s clip streams for 4 s at its frame rate with increasing timestamps."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, fps=10, seconds=2.0)
    server = rtsp_server_factory({"/cam1": clip}, loop=True)
    frames = grab_frames(server.url("/cam1"), seconds=4.0)
    span = frames[-1].received_at - frames[0].received_at
    assert span >= 3.8
    # 4 s at 10 fps, plus what was buffered while the reader probed the stream.
    assert 35 <= len(frames) <= 60
    late = [f for f in frames if f.received_at - frames[0].received_at > 2.5]
    assert 10 <= len(late) <= 20  # real time: ~15 frames in the last 1.5 s
    stamps = [f.pts for f in frames if f.pts is not None]
    assert all(b > a for a, b in itertools.pairwise(stamps)), "timestamps jump back at the loop"


def test_rtsp_server_serves_h265_clip(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """An H.265 clip is served with the H.265 payloader and decodes with its square."""
    clip = clip_factory(
        width=WIDTH, height=HEIGHT, seconds=1.0, codec="libx265", squares=magenta_square
    )
    server = rtsp_server_factory({"/cam1": clip})
    frames = grab_frames(server.url("/cam1"), max_frames=3)
    assert len(frames) == 3
    assert np.abs(region_mean(frames[-1], SQUARE) - MAGENTA).max() < 30


def test_rtsp_server_serves_several_mounts(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """Each mount serves its own clip; an unknown mount is RTSP 404."""
    plain = clip_factory("plain.mp4", width=WIDTH, height=HEIGHT, seconds=1.0)
    marked = clip_factory(
        "marked.mp4", width=WIDTH, height=HEIGHT, seconds=1.0, squares=magenta_square
    )
    server = rtsp_server_factory({"/plain": plain, "/marked": marked})
    (plain_frame,) = grab_frames(server.url("/plain"), max_frames=1)
    (marked_frame,) = grab_frames(server.url("/marked"), max_frames=1)
    assert np.abs(region_mean(marked_frame, SQUARE) - MAGENTA).max() < 30
    assert np.abs(region_mean(plain_frame, SQUARE) - MAGENTA).max() > 60
    with pytest.raises(av.error.HTTPNotFoundError):
        grab_frames(server.url("/nope"), max_frames=1)


def test_rtsp_server_basic_auth(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """With --user, no or wrong credentials get RTSP 401; the right ones (URL-encoded) play."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, seconds=1.0)
    good, bad = "s3cr:et@/1", "wrong"  # the good one needs percent-encoding in the URL
    server = rtsp_server_factory({"/cam1": clip}, user="admin", password=good)
    with pytest.raises(av.error.HTTPUnauthorizedError, match="401 Unauthorized"):
        grab_frames(server.url("/cam1"), max_frames=1)
    with pytest.raises(av.error.HTTPUnauthorizedError):
        grab_frames(server.url("/cam1", user="admin", password=bad), max_frames=1)
    frames = grab_frames(server.url("/cam1", user="admin", password=good), max_frames=2)
    assert len(frames) == 2


def test_rtsp_server_kill_and_restart_on_same_port(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """After SIGKILL, readers get connection refused; restart serves again on the same port."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, seconds=1.0)
    server = rtsp_server_factory({"/cam1": clip})
    url, port = server.url("/cam1"), server.port
    server.kill()
    assert not server.running
    with pytest.raises(av.error.ConnectionRefusedError):
        grab_frames(url, max_frames=1)
    server.restart()
    assert server.port == port
    assert len(grab_frames(url, max_frames=2)) == 2


def test_rtsp_server_pause_stalls_stream_without_closing_it(
    clip_factory: ClipFactory, rtsp_server_factory: RtspServerFactory
) -> None:
    """While paused no frame arrives; after resume the same connection delivers again."""
    clip = clip_factory(width=WIDTH, height=HEIGHT, seconds=2.0)
    server = rtsp_server_factory({"/cam1": clip})
    frames: list[GrabbedFrame] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            frames.extend(grab_frames(server.url("/cam1"), seconds=4.0))
        except Exception as exc:
            errors.append(exc)

    reader = threading.Thread(target=read, name="rtsp-reader")
    reader.start()
    time.sleep(1.5)
    server.pause()
    paused_at = time.monotonic()
    time.sleep(1.5)
    server.resume()
    resumed_at = time.monotonic()
    reader.join(timeout=15)
    assert not reader.is_alive()
    assert not errors
    during = [f for f in frames if paused_at + 0.3 < f.received_at < resumed_at]
    after = [f for f in frames if f.received_at > resumed_at]
    assert not during
    assert len(after) >= 5


def test_rtsp_server_streams_sample_video(
    sample_video: Path, rtsp_server_factory: RtspServerFactory
) -> None:
    """The shared real clip (H.264 with B-frames) streams and decodes at its size."""
    server = rtsp_server_factory({"/kitchen": sample_video})
    frames = grab_frames(server.url("/kitchen"), max_frames=3)
    assert [f.image.shape for f in frames] == [(432, 768, 3)] * 3


# --------------------------------------------------------------------------- MQTT


def test_broker_round_trip_qos1(broker: Broker, mqtt_collector: CollectorFactory) -> None:
    """A QoS 1 publish reaches a subscribed collector intact, and topic filters select it."""
    collector = mqtt_collector(broker.url, "kitchen/#")
    mqtt_publish(broker.url, "kitchen/cam1/alert", b'{"id": 1}', qos=1)
    mqtt_publish(broker.url, "kitchen/cam1/status", "online", qos=1, retain=True)
    mqtt_publish(broker.url, "elsewhere/x", b"ignored", qos=1)
    collector.wait_for_count(2)
    alert, status = collector.messages()
    assert alert == MqttMessage("kitchen/cam1/alert", b'{"id": 1}', 1, False, alert.received_at)
    assert (status.text(), status.qos) == ("online", 1)
    assert [m.topic for m in collector.messages("kitchen/+/alert")] == ["kitchen/cam1/alert"]
    assert collector.messages("elsewhere/#") == []


def test_collector_wait_for_reports_what_arrived(
    broker: Broker, mqtt_collector: CollectorFactory
) -> None:
    """wait_for raises AssertionError naming the messages that did arrive."""
    collector = mqtt_collector(broker.url)
    mqtt_publish(broker.url, "a/b", b"hello")
    collector.wait_for_count(1)
    with pytest.raises(AssertionError, match=r"1 matching of 1 received\n  a/b qos=1"):
        collector.wait_for(lambda ms: len(ms) >= 2, timeout=0.2)


def test_broker_restart_on_same_port(broker: Broker, mqtt_collector: CollectorFactory) -> None:
    """After stop/restart and kill/start the broker is back on its port and clients reconnect."""
    collector = mqtt_collector(broker.url, "t/#")
    port = broker.port
    broker.restart()
    assert broker.port == port
    collector.wait_ready(timeout=10, connects=2)
    broker.kill()
    assert not broker.running
    with pytest.raises(MqttConnectError, match="Connection refused"):
        mqtt_connect(broker.url)
    broker.start()
    assert broker.port == port
    client = mqtt_connect(broker.url)
    client.disconnect()
    client.loop_stop()
    collector.wait_ready(timeout=10, connects=3)
    mqtt_publish(broker.url, "t/after", b"1")
    assert [m.topic for m in collector.wait_for_count(1)] == ["t/after"]


def test_broker_with_users_rejects_bad_credentials(
    broker_factory: BrokerFactory, mqtt_collector: CollectorFactory
) -> None:
    """With users only the right user and password connect; anonymous and wrong are refused."""
    broker = broker_factory(users={"agent": "pa:ss@word", "ops": "x"})
    with pytest.raises(MqttConnectError) as refused:
        mqtt_connect(broker.url_with("agent", "wrong"))
    assert refused.value.reason in {"Bad user name or password", "Not authorized"}
    with pytest.raises(MqttConnectError):
        mqtt_connect(broker.url)
    collector = mqtt_collector(broker.url_with("ops", "x"), "#")
    mqtt_publish(broker.url_with("agent", "pa:ss@word"), "t", b"ok")
    assert collector.wait_for_count(1)[0].payload == b"ok"


def test_missing_mosquitto_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without mosquitto on the PATH the error says which package to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("mclz_testkit.broker.SBIN_PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match="apt-get install mosquitto"):
        Broker(tmp_path)
