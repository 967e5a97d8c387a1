"""Camera ingest against a real RTSP server on loopback streaming real H.264."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.backoff import Backoff
from agent.config import CameraConfig, parse_config
from agent.ingest.errors import classify_error
from agent.ingest.frames import Frame, FrameSlot
from agent.ingest.reader import CameraReader, Sampler
from agent.records import CameraState, Transition
from mclz_testkit.common import free_port
from mclz_testkit.factories import ClipFactory, RtspServerFactory

SECRET = "Kitchen-Pa55!"


def camera(url: str, **overrides: object) -> CameraConfig:
    data = {
        "identity": {"city": "hz", "school_id": "s1", "box_id": "b1"},
        "cameras": {"cam": {"url": url, **overrides}},
    }
    return parse_config(yaml.safe_dump(data)).cameras["cam"]


class Harness:
    """A reader plus what it produced: frames (taken at once) and state transitions."""

    def __init__(self, config: CameraConfig) -> None:
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.slot = FrameSlot(self.wake)
        self.frames: list[Frame] = []
        self.transitions: list[Transition] = []
        self.reader = CameraReader(
            "cam", config, stop=self.stop, slot=self.slot, on_transition=self.transitions.append
        )
        self._collector = threading.Thread(target=self._collect, daemon=True)

    def _collect(self) -> None:
        while not self.stop.is_set():
            if self.wake.wait(0.2):
                self.wake.clear()
                frame = self.slot.take()
                if frame is not None:
                    self.frames.append(frame)

    def start(self) -> Harness:
        self.reader.start()
        self._collector.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.reader.join(5)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reader.tick()
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.reader.snapshot()}")

    def states(self) -> list[str]:
        return [t.new.value for t in self.transitions]


@pytest.fixture
def harness() -> Iterator[Callable[[CameraConfig], Harness]]:
    made: list[Harness] = []

    def make(config: CameraConfig) -> Harness:
        h = Harness(config).start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_keyframe_only_decode_at_detection_rate(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """With a keyframe every second and a 1 s interval, only keyframes are decoded, about 1/s."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=4, fps=10, gop=10)})
    h = harness(camera(server.url("/cam"), detect_interval=1.0))
    h.wait(lambda: len(h.frames) >= 5, 20, "5 analysed frames")
    snap = h.reader.snapshot()
    assert snap["decode_mode"] == "keyframes"
    assert snap["gop_seconds"] == pytest.approx(1.0, abs=0.05)
    assert h.states()[0] == "online"
    # Keyframes only: every decoded frame is a keyframe, one in ten packets.
    assert snap["decoded"] <= snap["keyframes"] <= snap["decoded"] + 1
    assert snap["keyframes"] * 8 <= snap["packets"]
    gaps = [b.mono - a.mono for a, b in zip(h.frames, h.frames[1:], strict=False)]
    assert all(0.7 <= g <= 1.5 for g in gaps[1:]), gaps
    assert all(f.keyframe for f in h.frames)
    assert h.frames[0].image.shape == (360, 640, 3)


def test_long_gop_decodes_all_but_emits_at_interval(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """With a keyframe every 4 s, every frame is decoded but only ~2/s reach detection."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=8, fps=10, gop=40)})
    h = harness(camera(server.url("/cam"), detect_interval=0.5))
    h.wait(lambda: len(h.frames) >= 8, 25, "8 analysed frames")
    snap = h.reader.snapshot()
    assert snap["decode_mode"] == "all"
    assert int(snap["decoded"]) >= 2 * len(h.frames)
    gaps = [b.mono - a.mono for a, b in zip(h.frames, h.frames[1:], strict=False)]
    assert all(0.35 <= g <= 0.9 for g in gaps[1:]), gaps


def test_dead_camera_goes_offline_after_debounce_and_comes_back(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """A killed server: reconnects counted, offline only after offline_after, then online again."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3)})
    h = harness(camera(server.url("/cam"), offline_after=3, open_timeout=2, stall_timeout=2))
    h.wait(lambda: h.reader.state is CameraState.ONLINE, 20, "online")
    server.kill()
    killed = time.monotonic()
    h.wait(lambda: h.reader.state is CameraState.OFFLINE, 20, "offline")
    assert time.monotonic() - killed >= 2.5, "offline must wait for offline_after"
    snap = h.reader.snapshot()
    assert int(snap["reconnects"]) >= 1
    assert snap["last_error_class"] in {"refused", "timeout", "ended", "error"}
    offline = h.transitions[-1]
    assert offline.reason == snap["last_error_class"]
    server.restart()
    h.wait(lambda: h.reader.state is CameraState.ONLINE, 40, "online again")
    assert h.states() == ["online", "stalled", "offline", "online"]


def test_blip_shorter_than_debounce_is_counted_not_reported(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """A camera that drops and returns within offline_after stays 'online' but counts a blip."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3)})
    h = harness(camera(server.url("/cam"), offline_after=30, open_timeout=2))
    h.wait(lambda: h.reader.state is CameraState.ONLINE, 20, "online")
    server.kill()
    time.sleep(0.5)
    server.restart()
    decoded = int(h.reader.snapshot()["decoded"])
    h.wait(lambda: int(h.reader.snapshot()["decoded"]) > decoded + 3, 30, "frames again")
    assert h.states() == ["online"]
    assert int(h.reader.snapshot()["blips"]) >= 1


def test_stalled_stream_is_detected_and_reconnected(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """A server that stops sending (socket open, no data) triggers a stall and a reconnect."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3)})
    h = harness(camera(server.url("/cam"), stall_timeout=2, open_timeout=2, offline_after=60))
    h.wait(lambda: h.reader.state is CameraState.ONLINE, 20, "online")
    server.pause()
    try:
        h.wait(lambda: int(h.reader.snapshot()["reconnects"]) >= 1, 15, "a reconnect")
    finally:
        server.resume()
    snap = h.reader.snapshot()
    assert int(snap["stalls"]) >= 1 or snap["last_error_class"] == "timeout", snap
    decoded = int(snap["decoded"])
    h.wait(lambda: int(h.reader.snapshot()["decoded"]) > decoded, 30, "frames after the stall")


def test_auth_failure_is_classified_and_password_never_logged(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password is reported as auth_failed; the right one works; no log line shows it."""
    caplog.set_level(logging.DEBUG)
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3)}, user="admin", password=SECRET)
    url = server.url("/cam", user="admin")
    monkeypatch.setenv("CAM_PW", "wrong-" + SECRET)
    bad = harness(camera(url, password={"env": "CAM_PW"}, open_timeout=3))
    bad.wait(lambda: bad.reader.snapshot()["last_error_class"] != "", 20, "an error")
    assert bad.reader.snapshot()["last_error_class"] == "auth_failed"
    bad.close()
    monkeypatch.setenv("CAM_PW", SECRET)
    good = harness(camera(url, password={"env": "CAM_PW"}))
    good.wait(lambda: good.reader.state is CameraState.ONLINE, 20, "online")
    text = caplog.text + repr(bad.reader.snapshot()) + repr(list(bad.reader.errors))
    assert SECRET not in text
    assert "Pa55" not in text


def test_missing_file_source_is_not_found(
    tmp_path: Path, harness: Callable[[CameraConfig], Harness]
) -> None:
    """A file source that does not exist is reported as not_found, without crashing the reader."""
    h = harness(camera(str(tmp_path / "none.mp4"), offline_after=1))
    h.wait(lambda: h.reader.state is CameraState.OFFLINE, 10, "offline")
    assert h.transitions[-1].reason == "not_found"


def test_looping_file_plays_in_real_time(
    clip_factory: ClipFactory, harness: Callable[[CameraConfig], Harness]
) -> None:
    """A looping file source keeps producing frames past its end, paced like a camera."""
    clip = clip_factory(seconds=1.5, fps=10, gop=5)
    h = harness(camera(str(clip), loop=True, detect_interval=0.5))
    t0 = time.monotonic()
    h.wait(lambda: len(h.frames) >= 7, 15, "7 frames")
    assert time.monotonic() - t0 >= 2.5, "a file must play at its own frame rate"
    assert h.reader.state is CameraState.ONLINE
    assert int(h.reader.snapshot()["reconnects"]) == 0


def test_slot_keeps_newest_and_counts_drops() -> None:
    """The newest frame wins; a replaced untaken frame is counted as dropped."""
    import numpy as np  # noqa: PLC0415

    slot = FrameSlot()
    image = np.zeros((2, 2, 3), np.uint8)
    for i in range(5):
        slot.put(Frame("cam", image, float(i), float(i), False))
    frame = slot.take()
    assert frame is not None
    assert frame.wall == 4.0
    assert slot.dropped == 4
    assert slot.offered == 5  # the load governor's base: dropped / offered
    assert slot.take() is None


def test_backoff_grows_caps_and_resets() -> None:
    """Backoff doubles from 1 s to a 120 s cap (with jitter in the upper half) and resets."""
    backoff = Backoff(1.0, 120.0)
    delays = [backoff.next_delay() for _ in range(12)]
    for i, delay in enumerate(delays):
        base = min(120.0, 2.0**i)
        assert base / 2 <= delay <= base
    backoff.reset()
    assert backoff.next_delay() <= 1.0


class _BadServer:
    """A TCP listener on loopback that either says nothing or answers garbage."""

    def __init__(self, garbage: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.garbage = garbage
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)  # keep it open: a silent server never closes either
            if self.garbage:
                conn.sendall(os.urandom(2048) + b"\r\n\r\n")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for conn in self.conns:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("silent", {"timeout"}),
        # FFmpeg keeps waiting for a valid RTSP reply after garbage, so it ends as a timeout.
        ("garbage", {"decode_error", "timeout"}),
        ("refused", {"refused"}),
    ],
)
def test_bad_endpoints_are_classified_without_leaking_threads(
    case: str, expected: set[str], harness: Callable[[CameraConfig], Harness]
) -> None:
    """A silent server, one that answers garbage, and a closed port: each classified, no leak."""
    before = {t.name for t in threading.enumerate()}
    server = None if case == "refused" else _BadServer(garbage=case == "garbage")
    port = server.port if server is not None else free_port()
    try:
        h = harness(camera(f"rtsp://127.0.0.1:{port}/cam", open_timeout=2, offline_after=60))
        h.wait(lambda: h.reader.snapshot()["last_error_class"] != "", 20, "an error")
        assert h.reader.snapshot()["last_error_class"] in expected
        assert h.reader.state is CameraState.CONNECTING
        h.close()
        assert h.reader.join(10), "the reader thread must end after stop"
    finally:
        if server is not None:
            server.close()
    leaked = {t.name for t in threading.enumerate()} - before
    assert not {name for name in leaked if name.startswith("ingest-")}


def test_wrong_path_is_not_found(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """A path the server does not have is classified not_found."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=2)})
    h = harness(camera(server.url("/other"), open_timeout=3))
    h.wait(lambda: h.reader.snapshot()["last_error_class"] != "", 20, "an error")
    assert h.reader.snapshot()["last_error_class"] == "not_found"


def test_full_decode_skips_the_rest_of_a_gop_with_no_due_frame(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """GOP 2 s, one frame per second: decode up to the 1 s frame, then skip to the next keyframe."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=8, fps=10, gop=20)})
    h = harness(camera(server.url("/cam"), detect_interval=1.0))
    h.wait(lambda: len(h.frames) >= 7, 25, "7 analysed frames")
    snap = h.reader.snapshot()
    assert snap["decode_mode"] == "all"
    # About 11 of every 20 frames are decoded (keyframe .. the 1 s frame), not all 20.
    assert snap["decoded"] <= 0.7 * snap["packets"], snap
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(h.frames)]
    assert all(0.6 <= g <= 1.4 for g in gaps[2:]), gaps


@given(
    fps=st.sampled_from([5, 10, 12.5, 15, 25, 30]),
    interval=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    seconds=st.integers(min_value=10, max_value=60),
    start=st.floats(min_value=0, max_value=1e5),
)
def test_sampler_takes_one_frame_per_interval(
    fps: float, interval: float, seconds: int, start: float
) -> None:
    """On a steady stream the sampler takes one frame per interval (never two within one)."""
    sampler = Sampler(interval)
    taken = []
    for i in range(int(seconds * fps)):
        t = start + i / fps
        if sampler.due(t):
            sampler.taken(t)
            taken.append(t)
    expected = seconds / max(interval, 1 / fps)
    assert abs(len(taken) - expected) <= 1.5
    assert all(
        b - a >= min(interval, 1 / fps) * 0.999 - sampler.tolerance
        for a, b in itertools.pairwise(taken)
    )


def test_sampler_recovers_from_clock_jumps() -> None:
    """A stream clock that jumps back (reconnect, loop) or far ahead restarts the schedule."""
    sampler = Sampler(1.0)
    for t in (100.0, 101.0, 3.0, 4.0, 5000.0):
        assert sampler.due(t)
        sampler.taken(t)
    assert not sampler.due(5000.5)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Server returned 404 Not Found: 'rtsp://admin:***@127.0.0.1:40123/nope'", "not_found"),
        ("Server returned 401 Unauthorized: 'rtsp://u:***@10.0.0.9:40404/a'", "auth_failed"),
        ("Server returned 403 Forbidden (access denied): 'rtsp://10.0.0.9/a'", "auth_failed"),
        ("[Errno 111] Connection refused: 'rtsp://127.0.0.1:40401/cam'", "refused"),
        ("Immediate exit requested: 'rtsp://127.0.0.1:4040/cam'", "error"),
    ],
)
def test_error_classes_ignore_numbers_in_the_url(message: str, expected: str) -> None:
    """A port such as 40123 or 40404 in the URL never reads as an HTTP 401 or 404."""
    assert classify_error(OSError(message)) == expected


def test_camera_reconnect_backoff_is_capped_by_its_config() -> None:
    """cameras.<id>.reconnect_max caps the reader's waits (default 30 s, was a fixed 120 s)."""
    wake = threading.Event()
    default = CameraReader(
        "c1", CameraConfig(url="rtsp://h/x"), stop=threading.Event(), slot=FrameSlot(wake)
    )
    capped = CameraReader(
        "c2",
        CameraConfig(url="rtsp://h/x", reconnect_max=7),
        stop=threading.Event(),
        slot=FrameSlot(wake),
    )
    for reader, cap in ((default, 30.0), (capped, 7.0)):
        waits = [reader._backoff.next_delay() for _ in range(20)]
        assert max(waits) <= cap
        assert waits[-1] >= cap / 2  # it got there


def has_frames(h: Harness, count: int) -> Callable[[], bool]:
    """A predicate for :meth:`Harness.wait`: ``h`` has taken ``count`` frames."""
    return lambda: len(h.frames) >= count


def _native_threads() -> int:
    """OS threads of this process that are not Python threads (decoder, converter pools)."""
    return len(os.listdir("/proc/self/task")) - threading.active_count()


def test_multi_camera_config_decodes_with_one_thread_and_passes_demuxer_options(
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a config of several cameras and the defaults, every opened decoder really runs
    one thread (read back from FFmpeg), the BGR conversion starts no thread of its own, and
    the demuxer gets the reader's options: no thread pool per camera on a box of few cores."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=4, fps=10, gop=10)})
    opened: list[dict[str, str]] = []
    plain_open = av.open

    def spy(url: Any, *args: Any, **kwargs: Any) -> Any:
        if str(url).startswith("rtsp://"):
            opened.append(dict(kwargs.get("options") or {}))
        return plain_open(url, *args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    data = {
        "identity": {"city": "hz", "school_id": "s1", "box_id": "b1"},
        "cameras": {f"cam-{i}": {"url": server.url("/cam")} for i in range(3)},
    }
    cameras = parse_config(yaml.safe_dump(data)).cameras
    native_before = _native_threads()
    runs = [harness(config) for config in cameras.values()]
    for h in runs:
        h.wait(has_frames(h, 2), 30, "2 analysed frames")
    native_during = _native_threads()
    expected = {
        "rtsp_transport": "tcp",
        "timeout": "10000000",
        "fflags": "nobuffer",
        "fpsprobesize": "0",
    }
    for h in runs:
        assert h.reader.config.decoder_threads == 1
        assert h.reader.stats.decoder_threads == 1, h.reader.stats
        assert h.reader.stats.demuxer_options == expected
    assert len(opened) >= 3
    assert all(options == expected for options in opened), opened
    assert native_during <= native_before, "a decoder or converter started threads of its own"


@pytest.mark.parametrize("threads", [2, "auto"])
def test_decoder_threads_setting_reaches_the_decoder(
    threads: int | str,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    harness: Callable[[CameraConfig], Harness],
) -> None:
    """cameras.<id>.decoder_threads is what the opened decoder runs; 'auto' leaves the count to
    FFmpeg, which gives a machine of several cores more than one thread."""
    server = rtsp_server_factory({"/cam": clip_factory(seconds=3, fps=10, gop=10)})
    h = harness(camera(server.url("/cam"), decoder_threads=threads))
    h.wait(lambda: h.reader.stats.decoder_threads > 0, 30, "an open decoder")
    h.wait(lambda: len(h.frames) >= 2, 30, "2 analysed frames")
    used = h.reader.stats.decoder_threads
    if threads == "auto":
        assert used >= 1
        if len(os.sched_getaffinity(0)) > 1:
            assert used > 1
    else:
        assert used == threads
    assert h.frames[-1].image.shape == (360, 640, 3)


def test_freed_frame_buffers_go_back_to_the_system() -> None:
    """After map_large_buffers(), frame-sized blocks freed in a thread leave the process's RSS
    (without it, glibc keeps them in the thread's arena once its threshold has risen)."""
    script = (
        "import sys, threading\n"
        "import numpy as np\n"
        "from agent.ingest.memory import map_large_buffers\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS'):\n"
        "            return int(line.split()[1]) / 1024\n"
        "applied = map_large_buffers() if sys.argv[1] == 'on' else False\n"
        "big = np.ones(8 << 20, np.uint8)\n"
        "del big  # a large block freed: glibc's own threshold rises to its size\n"
        "before = rss()\n"
        "grown = []\n"
        "def frames():\n"
        "    kept = [np.ones(2 << 20, np.uint8) for _ in range(40)][-1]  # 40 frames, keep 1\n"
        "    grown.append(rss() - before - kept.nbytes / 2**20)\n"
        "thread = threading.Thread(target=frames)\n"
        "thread.start()\n"
        "thread.join()\n"
        "print(applied, round(grown[0]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    results = {}
    for mode in ("off", "on"):
        done = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        applied, grown = done.stdout.split()
        results[mode] = (applied == "True", int(grown))
    assert results["on"][0], "glibc's mallopt was not applied"
    assert results["on"][1] < 10, results  # MB kept beyond the one frame still held
    assert results["off"][1] > 40, results  # the check above would pass without the setting
