"""Benchmark camera ingest: CPU per camera for the agent's reader, OpenCV and an ffmpeg subprocess.

N simulated cameras (H.264 clips served over RTSP on loopback by ``scripts/tools/rtsp_server.py``)
are read at one analysed frame per second each, by four methods in turn:

``agent``
    the agent's own ``CameraReader`` per camera (``decode: auto``, detect_interval 1 s) and
    one thread taking each ``FrameSlot``, as the service does, without a detector;
``opencv``
    ``cv2.VideoCapture(url, CAP_FFMPEG).read()`` of every frame, one thread per camera,
    keeping one frame in 25 (the common script);
``ffmpeg``
    one ``ffmpeg -rtsp_transport tcp -i URL -vf fps=1 -f rawvideo -pix_fmt bgr24 pipe:1``
    process per camera, frames read from its stdout (the Frigate way; Frigate asks for
    yuv420p, ``--ffmpeg-pix-fmt``, and stamps packets with the wall clock, left out here so
    that an ffmpeg falling behind the live stream delivers fewer frames instead of hiding it;
    needs the ``ffmpeg`` program, Debian package ``ffmpeg``);
``floor``
    the compute floor: a bare PyAV demux/decode loop per camera, no queues or bookkeeping;
    it decodes only the packets the sampled frames need (keyframes alone when the GOP
    allows, else from the keyframe up to the sampled frame, skipping the rest of the GOP)
    and converts one frame per second to BGR.

For each method N doubles from 1 until it falls behind (analysed frames/s below 90 % of
the target, input below 90 % of the stream's frame rate, or more CPU than ``--cores``) or
reaches ``--max-cameras``; when one camera's cost says a larger N fits easily, the powers
of two in between are skipped (``--every-power`` measures them all). CPU is the measured
process's CPU-seconds (``getrusage``) plus, for ffmpeg, its children's (``/proc/PID/stat``),
so other load on the machine does not inflate it; it can still make a method fall behind.
Clips are generated once into ``--clips``. The defaults (two 1080p profiles, 8 s per point,
up to 16 cameras) take about 5-6 minutes on two cores, plus ~45 s the first time for clips.

    .venv/bin/python scripts/bench/bench_ingest.py
    .venv/bin/python scripts/bench/bench_ingest.py --seconds 5 --max-cameras 2 \\
        --profiles 720p25-gop25 --methods agent,ffmpeg --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import av
import cv2
import numpy as np

from agent.config import CameraConfig
from agent.ingest.frames import FrameSlot
from agent.ingest.reader import CameraReader
from mclz_testkit.clips import Image, render_scene
from mclz_testkit.rtsp import RtspServer

REPO = Path(__file__).resolve().parents[2]

METHODS = ("agent", "opencv", "ffmpeg", "floor")
#: The main-stream worst and best case for the agent; 720p25-gop50,720p25-gop25 on request.
DEFAULT_PROFILES = "1080p25-gop50,1080p25-gop25"
#: Typical main-stream bit rates of IP cameras (kbit/s), by frame height.
BITRATES = {2160: 8192, 1440: 6144, 1080: 4096, 720: 2048, 576: 1024, 480: 768, 360: 512}
CLIP_RECIPE = "v1"  # bump when the clip content or encoding changes: the cache key
KEPT_UP_SHARE = 0.9
READY_TIMEOUT_S = 30.0
SETTLE_S = 1.0
STOP_TIMEOUT_S = 5.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROFILE_RE = re.compile(r"^(?:(\d+)x)?(\d+)p(\d+)-gop(\d+)$")


class BenchError(RuntimeError):
    """The benchmark cannot run (a missing tool, a server that died)."""


# --------------------------------------------------------------------------- profiles, clips


@dataclass(frozen=True)
class Profile:
    """A simulated camera stream: size, frame rate, keyframe interval and bit rate."""

    name: str
    width: int
    height: int
    fps: int
    gop: int
    kbps: int

    @property
    def gop_seconds(self) -> float:
        """Seconds between keyframes."""
        return self.gop / self.fps


def parse_profile(text: str) -> Profile:
    """Parse ``1080p25-gop50`` (height, frame rate, keyframe interval in frames; 16:9) or
    ``704x576p25-gop25`` (width given: an NVR's D1 sub-stream).

    Raises:
        ValueError: the text does not match or the numbers are out of range.
    """
    match = PROFILE_RE.match(text.strip())
    if match is None:
        raise ValueError(
            f"profile {text!r}: expected [WIDTHx]HEIGHTpFPS-gopFRAMES, e.g. 1080p25-gop50 or "
            "704x576p25-gop25"
        )
    raw_width, raw_height, raw_fps, raw_gop = match.groups()
    height, fps, gop = int(raw_height), int(raw_fps), int(raw_gop)
    given_width = int(raw_width) if raw_width else None
    if not (120 <= height <= 2160 and height % 2 == 0 and 1 <= fps <= 60 and 1 <= gop <= 600):
        raise ValueError(f"profile {text!r}: height 120-2160 (even), fps 1-60, gop 1-600")
    width = given_width if given_width is not None else round(height * 16 / 9 / 2) * 2
    if not (160 <= width <= 3840 and width % 2 == 0):
        raise ValueError(f"profile {text!r}: width 160-3840 (even)")
    kbps = BITRATES.get(height) or max(256, round(4096 * height * width / (1920 * 1080)))
    return Profile(text.strip(), width, height, fps, gop, kbps)


def _scene(width: int, height: int, seed: int) -> tuple[Image, Image]:
    """Return a kitchen stand-in: smooth shading, mild sensor noise, and a textured band.

    ``render_scene`` slides the band across the frame (people moving), so P-frames carry
    real motion; the encoder's rate control then sets the bit rate, as in a camera.
    """
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    base[..., 0] = 70 + 90 * xs / max(width - 1, 1)
    base[..., 1] = 60 + 80 * ys / max(height - 1, 1)
    base[..., 2] = 100 + 40 * np.sin(xs * 80 / width) * np.cos(ys * 60 / height)
    base += rng.normal(0, 2, size=base.shape)
    # 4x4-pixel blocks of noise: texture a camera sees (clothes, steam), not per-pixel noise.
    coarse = rng.integers(0, 70, size=(height // 4 + 1, width // 2 + 1, 3), dtype=np.uint8)
    band = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, : 2 * width]
    return np.clip(base, 0, 255).astype(np.uint8), np.ascontiguousarray(band)


def _squares(index: int) -> list[tuple[float, float, float, tuple[int, int, int]]]:
    """Two squares walking across the kitchen, one per 8 s and one per 5 s."""
    t = index / 25
    return [
        (0.1 + 0.8 * ((t / 8) % 1), 0.55, 0.35, (40, 40, 200)),
        (0.9 - 0.8 * ((t / 5) % 1), 0.4, 0.25, (220, 220, 220)),
    ]


def ensure_clip(profile: Profile, directory: Path, seconds: float) -> Path:
    """Return the cached clip of ``profile``, writing it first if missing.

    H.264 main profile, no B-frames, a keyframe every ``gop`` frames (no scene cuts), and
    average-bit-rate control capped by a VBV like a camera's (``profile.kbps``).
    """
    path = directory / f"{profile.name}-{profile.kbps}k-{seconds:g}s-{CLIP_RECIPE}.mp4"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    params = (
        f"keyint={profile.gop}:min-keyint={profile.gop}:scenecut=0:bframes=0:"
        f"bitrate={profile.kbps}:vbv-maxrate={profile.kbps}:vbv-bufsize={2 * profile.kbps}"
    )
    options = {"preset": "veryfast", "profile": "main", "x264-params": params}
    base, band = _scene(profile.width, profile.height, seed=profile.height)
    count = round(profile.fps * seconds)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=profile.fps, options=options)
        stream.width = profile.width
        stream.height = profile.height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = profile.gop
        stream.codec_context.max_b_frames = 0
        for i in range(count):
            img = render_scene(
                i,
                width=profile.width,
                height=profile.height,
                fps=profile.fps,
                base=base,
                band=band,
                squares=_squares,
            )
            frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, profile.fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.replace(path)
    print(f"  wrote {path} in {time.monotonic() - started:.0f} s", flush=True)
    return path


def clip_facts(path: Path) -> dict[str, Any]:
    """Bit rate and mean keyframe / other frame sizes of a clip, for the report."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        keys: list[int] = []
        others: list[int] = []
        for packet in container.demux(stream):
            if packet.size:
                (keys if packet.is_keyframe else others).append(packet.size)
        seconds = float(container.duration or 0) / 1_000_000
    total = sum(keys) + sum(others)
    return {
        "path": str(path),
        "seconds": round(seconds, 2),
        "kbps": round(total * 8 / seconds / 1000) if seconds else None,
        "keyframe_kb": round(sum(keys) / len(keys) / 1000, 1) if keys else None,
        "pframe_kb": round(sum(others) / len(others) / 1000, 1) if others else None,
    }


# --------------------------------------------------------------------------- CPU accounting


def self_cpu() -> float:
    """CPU-seconds (user + system) of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float | None:
    """CPU-seconds of a running process from ``/proc/PID/stat``; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return float(total - idle), float(total)


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- methods


class Tally:
    """Analysed frames per camera and when the last one came; each camera has one writer."""

    def __init__(self, cameras: int) -> None:
        self.frames = [0] * cameras
        self.last = [0.0] * cameras

    def hit(self, i: int) -> None:
        """Count an analysed frame of camera ``i``."""
        self.last[i] = time.monotonic()
        self.frames[i] += 1


@dataclass
class Counters:
    """What a method delivered so far."""

    frames: list[int]  # analysed (sampled) frames handed on, per camera
    last: list[float]  # monotonic time of each camera's last analysed frame
    inputs: int | None  # frames or packets read from all streams; None when not visible

    @classmethod
    def of(cls, tally: Tally, inputs: int | None) -> Counters:
        """A snapshot of ``tally``."""
        return cls(list(tally.frames), list(tally.last), inputs)


def analysed_rate(c0: Counters, c1: Counters, t0: float, t1: float) -> float:
    """Analysed frames/s per camera between two snapshots, averaged over the cameras.

    Each camera's rate is taken between its last frames before and at the end of the
    window, so a short window does not gain or lose a frame at its edges; a camera whose
    frames stopped more than two intervals before the end counts frames over the window.
    """
    rates = []
    for k0, k1, l0, l1 in zip(c0.frames, c1.frames, c0.last, c1.last, strict=True):
        if k1 - k0 >= 2 and l0 > 0 and t1 - l1 <= 2.0:
            rates.append((k1 - k0) / (l1 - l0))
        else:
            rates.append((k1 - k0) / (t1 - t0))
    return sum(rates) / len(rates) if rates else 0.0


class Method(Protocol):
    """N camera readers of one kind."""

    def start(self) -> None: ...

    def ready(self) -> bool: ...

    def counters(self) -> Counters: ...

    def child_pids(self) -> list[int]: ...

    def stop(self) -> None: ...

    def problems(self) -> list[str]: ...


class AgentMethod:
    """The agent's ``CameraReader`` per camera and one consumer thread over the frame slots."""

    def __init__(self, urls: Sequence[str], profile: Profile) -> None:
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.slots = [FrameSlot(self.wake) for _ in urls]
        self.readers = [
            CameraReader(
                f"cam{i}",
                CameraConfig(url=url, detect_interval=1.0, decode="auto"),
                stop=self.stop_event,
                slot=slot,
            )
            for i, (url, slot) in enumerate(zip(urls, self.slots, strict=True))
        ]
        self.tally = Tally(len(urls))
        self.consumer = threading.Thread(target=self._consume, name="bench-consumer", daemon=True)

    def start(self) -> None:
        for reader in self.readers:
            reader.start()
        self.consumer.start()

    def _consume(self) -> None:
        while not self.stop_event.is_set():
            self.wake.wait(1.0)
            self.wake.clear()
            for i, slot in enumerate(self.slots):
                if slot.take() is not None:
                    self.tally.hit(i)

    def ready(self) -> bool:
        # decode auto settles once a reader has measured its GOP (two keyframes).
        return all(
            self.tally.frames[i] > 0 and reader.stats.gop_seconds is not None
            for i, reader in enumerate(self.readers)
        )

    def counters(self) -> Counters:
        return Counters.of(self.tally, sum(r.stats.packets for r in self.readers))

    def child_pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for reader in self.readers:
            reader.join(max(0.1, deadline - time.monotonic()))
        self.consumer.join(1.0)

    def problems(self) -> list[str]:
        out = [
            f"{r.camera_id}: {r.stats.reconnects} reconnects ({r.stats.last_error})"
            for r in self.readers
            if r.stats.reconnects
        ]
        modes = sorted({r.stats.decode_mode for r in self.readers})
        return [*out, f"decode mode: {', '.join(modes)}"]


class OpenCvMethod:
    """``cv2.VideoCapture.read()`` of every frame, a thread per camera, one kept per second."""

    def __init__(self, urls: Sequence[str], profile: Profile) -> None:
        self.urls = list(urls)
        self.every = max(1, round(profile.fps * 1.0))
        self.stop_event = threading.Event()
        self.reads = [0] * len(urls)
        self.tally = Tally(len(urls))
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._read, args=(i,), name=f"bench-cv-{i}", daemon=True)
            for i in range(len(urls))
        ]

    def start(self) -> None:
        # Read by OpenCV's FFmpeg backend at every open: RTSP over TCP, like the others.
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        for thread in self.threads:
            thread.start()

    def _read(self, i: int) -> None:
        cap = cv2.VideoCapture(self.urls[i], cv2.CAP_FFMPEG)
        try:
            if not cap.isOpened():
                self.errors.append(f"cam{i}: VideoCapture did not open")
                return
            while not self.stop_event.is_set():
                ok, _frame = cap.read()
                if not ok:
                    self.errors.append(f"cam{i}: read() failed after {self.reads[i]} frames")
                    return
                if self.reads[i] % self.every == 0:
                    self.tally.hit(i)  # the frame a detector would get
                self.reads[i] += 1
        finally:
            cap.release()

    def ready(self) -> bool:
        return all(self.tally.frames)

    def counters(self) -> Counters:
        return Counters.of(self.tally, sum(self.reads))

    def child_pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def problems(self) -> list[str]:
        return list(self.errors)


class FfmpegMethod:
    """One ``ffmpeg`` process per camera decoding to raw frames at the detection rate."""

    def __init__(self, urls: Sequence[str], profile: Profile, pix_fmt: str) -> None:
        self.urls = list(urls)
        self.pix_fmt = pix_fmt
        per_pixel = 3 if pix_fmt == "bgr24" else 1.5
        self.frame_bytes = int(profile.width * profile.height * per_pixel)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stderr: list[IO[bytes]] = []
        self.tally = Tally(len(urls))
        self.threads: list[threading.Thread] = []

    def command(self, url: str) -> list[str]:
        """The ffmpeg command line for one camera."""
        return [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-rtsp_transport",
            "tcp",
            "-i",
            url,
            "-an",
            "-vf",
            "fps=1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            self.pix_fmt,
            "pipe:1",
        ]

    def start(self) -> None:
        for i, url in enumerate(self.urls):
            err = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
            self.stderr.append(err)
            proc = subprocess.Popen(
                self.command(url), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
            CHILDREN.append(proc)
            self.procs.append(proc)
            thread = threading.Thread(
                target=self._read, args=(i, proc), name=f"bench-ff-{i}", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _read(self, i: int, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdout is None:
            return
        fd = proc.stdout.fileno()
        view = memoryview(bytearray(self.frame_bytes))
        while True:
            got = 0
            while got < self.frame_bytes:
                n = os.readv(fd, [view[got:]])  # unbuffered: one copy per frame
                if not n:
                    return
                got += n
            self.tally.hit(i)

    def ready(self) -> bool:
        return all(self.tally.frames)

    def counters(self) -> Counters:
        return Counters.of(self.tally, None)

    def child_pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            if proc.stdout is not None:
                proc.stdout.close()
            with contextlib.suppress(ValueError):
                CHILDREN.remove(proc)
        for thread in self.threads:
            thread.join(1.0)

    def problems(self) -> list[str]:
        out = []
        for i, (proc, err) in enumerate(zip(self.procs, self.stderr, strict=True)):
            err.seek(0)
            text = err.read().decode(errors="replace").strip()
            if text and proc.returncode not in (0, -signal.SIGTERM, 255):
                out.append(f"cam{i}: ffmpeg exit {proc.returncode}: {text.splitlines()[-1]}")
            err.close()
        return out


@dataclass
class _FloorCamera:
    container: Any
    packets: Iterator[Any]
    time_base: Fraction
    decoding: bool = False
    gop_start: float = 0.0
    next_due: float | None = None
    packets_read: int = 0


class FloorMethod:
    """The compute floor: a bare PyAV loop per camera that decodes only what sampling needs.

    One thread per camera only because demuxing blocks (one thread taking turns leaves a
    camera opened first with a backlog it never drains); no queues, locks or bookkeeping.
    """

    def __init__(self, urls: Sequence[str], profile: Profile) -> None:
        self.urls = list(urls)
        self.gop_s = profile.gop_seconds
        self.interval = 1.0
        self.keyframes_only = self.gop_s <= self.interval * 1.1
        self.stop_event = threading.Event()
        self.cameras: list[_FloorCamera | None] = [None] * len(urls)
        self.tally = Tally(len(urls))
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), name=f"bench-floor-{i}", daemon=True)
            for i in range(len(urls))
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _open(self, url: str) -> _FloorCamera:
        options = {"rtsp_transport": "tcp", "timeout": "10000000", "fpsprobesize": "0"}
        container = av.open(url, options=options, timeout=(10.0, 20.0))
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # no decoder threads: the floor
        return _FloorCamera(
            container, container.demux(stream), stream.time_base or Fraction(1, 90000)
        )

    def _run(self, i: int) -> None:
        cam: _FloorCamera | None = None
        try:
            cam = self.cameras[i] = self._open(self.urls[i])
            while not self.stop_event.is_set():
                self._step(i, cam)
        except (av.error.FFmpegError, OSError, StopIteration) as exc:
            if not self.stop_event.is_set():
                self.errors.append(f"cam{i}: {type(exc).__name__}: {exc}")
        finally:
            if cam is not None:
                cam.container.close()

    def _step(self, i: int, cam: _FloorCamera) -> None:
        packet = next(cam.packets)
        if packet.size == 0 or packet.pts is None:
            return
        cam.packets_read += 1
        pts = float(packet.pts * cam.time_base)
        slack = 0.1 * self.interval  # sampled frames may come up to 10 % early, as the agent's
        if packet.is_keyframe:
            cam.gop_start = pts
            due = cam.next_due is None or pts >= cam.next_due - slack
            # A keyframe is decoded when it is sampled, or when it starts the chain to one.
            cam.decoding = due or not self.keyframes_only
        if not cam.decoding:
            return
        for frame in packet.decode():
            if cam.next_due is None or pts >= cam.next_due - slack:
                self.deliver(i, frame.to_ndarray(format="bgr24"))
                cam.next_due = pts + self.interval
                # Keep decoding this GOP only while a later sampled frame lies inside it.
                cam.decoding = cam.next_due < cam.gop_start + self.gop_s - slack
            elif self.keyframes_only:
                cam.decoding = False

    def deliver(self, i: int, _image: np.ndarray) -> None:
        """Hand on camera ``i``'s sampled BGR frame; here only counted (scripts/bench/bench.py
        subclasses it to run the detector on it)."""
        self.tally.hit(i)

    def ready(self) -> bool:
        return all(self.tally.frames)

    def counters(self) -> Counters:
        return Counters.of(self.tally, sum(c.packets_read for c in self.cameras if c is not None))

    def child_pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))

    def problems(self) -> list[str]:
        mode = "keyframes only" if self.keyframes_only else "keyframe up to each sampled frame"
        return [*self.errors, f"decodes {mode}"]


CHILDREN: list[subprocess.Popen[bytes]] = []  # every ffmpeg started, for cleanup on exit


def make_method(name: str, urls: Sequence[str], profile: Profile, pix_fmt: str) -> Method:
    """Build the readers of one method for ``urls``."""
    if name == "agent":
        return AgentMethod(urls, profile)
    if name == "opencv":
        return OpenCvMethod(urls, profile)
    if name == "ffmpeg":
        return FfmpegMethod(urls, profile, pix_fmt)
    return FloorMethod(urls, profile)


# --------------------------------------------------------------------------- measuring


@dataclass
class Point:
    """One measurement: a method reading N cameras of one profile for a window of seconds."""

    profile: str
    method: str
    cameras: int
    seconds: float = 0.0
    cpu_s: float = 0.0
    cpu_per_camera_s: float = 0.0
    frames_per_camera_s: float = 0.0
    input_fps_per_camera: float | None = None
    kept_up: bool = False
    why_not: str = ""
    server_cores: float = 0.0
    machine_busy: float = 0.0  # share of all CPUs busy, every process included
    startup_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def children_cpu(pids: Sequence[int]) -> dict[int, float]:
    """CPU-seconds of each running child."""
    out = {}
    for pid in pids:
        cpu = pid_cpu(pid)
        if cpu is not None:
            out[pid] = cpu
    return out


def measure(
    method_name: str,
    profile: Profile,
    urls: Sequence[str],
    *,
    seconds: float,
    cores: float,
    server: RtspServer,
    pix_fmt: str,
) -> Point:
    """Run one method on ``urls`` and measure it over ``seconds`` after it has settled."""
    point = Point(profile.name, method_name, len(urls))
    method = make_method(method_name, urls, profile, pix_fmt)
    started = time.monotonic()
    try:
        method.start()
        deadline = started + READY_TIMEOUT_S + 2 * profile.gop_seconds
        while not method.ready():
            if time.monotonic() > deadline:
                point.why_not = f"not every camera delivered within {deadline - started:.0f} s"
                return point
            time.sleep(0.1)
        point.startup_s = round(time.monotonic() - started, 2)
        time.sleep(SETTLE_S)
        server_pid = server.pid or 0
        pids = method.child_pids()
        c0, cpu0, kids0 = method.counters(), self_cpu(), children_cpu(pids)
        srv0, busy0, t0 = pid_cpu(server_pid) or 0.0, machine_busy(), time.monotonic()
        time.sleep(seconds)
        c1, cpu1, kids1 = method.counters(), self_cpu(), children_cpu(pids)
        srv1, busy1, t1 = pid_cpu(server_pid) or 0.0, machine_busy(), time.monotonic()
    finally:
        method.stop()
        point.notes = method.problems()
        time.sleep(0.5)  # let the server drop the sessions before the next point
    window = t1 - t0
    kids = sum(kids1[p] - kids0[p] for p in kids1 if p in kids0)
    if len(kids1) < len(pids) or len(kids0) < len(pids):
        point.notes.append(f"{len(pids) - len(kids1)} ffmpeg processes died during the window")
    n = len(urls)
    point.seconds = round(window, 2)
    point.cpu_s = round(cpu1 - cpu0 + kids, 3)
    point.cpu_per_camera_s = point.cpu_s / (n * window)
    point.frames_per_camera_s = analysed_rate(c0, c1, t0, t1)
    if c1.inputs is not None and c0.inputs is not None:
        point.input_fps_per_camera = (c1.inputs - c0.inputs) / (n * window)
    point.server_cores = (srv1 - srv0) / window
    point.machine_busy = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1.0)
    reasons = []
    if point.frames_per_camera_s < KEPT_UP_SHARE * 1.0:
        reasons.append(f"{point.frames_per_camera_s:.2f} analysed frames/s per camera")
    if (
        point.input_fps_per_camera is not None
        and point.input_fps_per_camera < KEPT_UP_SHARE * profile.fps
    ):
        reasons.append(f"reads {point.input_fps_per_camera:.1f} of {profile.fps} fps")
    if point.cpu_s / window > cores:
        reasons.append(f"uses {point.cpu_s / window:.2f} cores")
    point.kept_up = not reasons
    point.why_not = "; ".join(reasons)
    return point


def camera_counts(
    method: str,
    profile: Profile,
    urls_for: Callable[[int], list[str]],
    args: argparse.Namespace,
    server: RtspServer,
) -> Iterator[Point]:
    """Measure N = 1, 2, 4, ... until the method falls behind or reaches --max-cameras."""
    n = 1
    while True:
        point = measure(
            method,
            profile,
            urls_for(n),
            seconds=args.seconds,
            cores=args.cores,
            server=server,
            pix_fmt=args.ffmpeg_pix_fmt,
        )
        yield point
        if not point.kept_up or n >= args.max_cameras:
            return
        nxt = 2 * n
        if not args.every_power and point.cpu_per_camera_s > 0:
            # Skip powers of two that one camera's cost says fit with a wide margin.
            fits = args.cores * 0.6 / point.cpu_per_camera_s
            while 2 * nxt <= min(args.max_cameras, fits):
                nxt *= 2
        n = min(nxt, args.max_cameras)


# --------------------------------------------------------------------------- reporting


def row(point: Point) -> str:
    """One markdown table row."""
    inputs = f"{point.input_fps_per_camera:.1f}" if point.input_fps_per_camera is not None else "-"
    kept = "yes" if point.kept_up else f"no ({point.why_not})"
    used = point.cpu_s / point.seconds if point.seconds else 0.0
    return (
        f"| {point.method} | {point.cameras} | {point.cpu_per_camera_s:.4f} | "
        f"{100 * point.cpu_per_camera_s:.1f} % | {point.frames_per_camera_s:.2f} | {inputs} | "
        f"{kept} | {used:.2f} | {point.server_cores:.2f} | {100 * point.machine_busy:.0f} % |"
    )


TABLE_HEAD = (
    "| method | N | CPU-s per camera-s | % of one core per camera | analysed frames/s per "
    "camera (target 1) | input fps per camera | kept up | cores used | RTSP server (cores) | "
    "machine busy |\n"
    "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"
)


def summarize(points: Sequence[Point], cores: float) -> dict[str, Any]:
    """Per method: CPU per camera-s at its largest kept-up N, and max cameras on ``cores``."""
    out: dict[str, Any] = {}
    for method in METHODS:
        mine = [p for p in points if p.method == method]
        if not mine:
            continue
        good = [p for p in mine if p.kept_up]
        bad = [p for p in mine if not p.kept_up]
        basis_point = max(good, key=lambda p: p.cameras) if good else mine[0]
        cost = basis_point.cpu_per_camera_s
        kept_n = basis_point.cameras if good else 0
        behind = min(bad, key=lambda p: p.cameras) if bad else None
        behind_n = behind.cameras if behind is not None else None
        estimate = math.floor(cores / cost) if cost > 0 else None
        # Only a method that fell behind while using (nearly) all the cores hit its own
        # limit; one that fell behind with cores to spare lost them to other processes.
        saturated = [p.cameras for p in bad if p.cpu_s / max(p.seconds, 1e-9) >= 0.9 * cores]
        bound = min(saturated) - 1 if saturated else None
        candidates = [c for c in (estimate, bound) if c is not None]
        capped = min(candidates) if candidates else kept_n
        max_cameras = max(kept_n, capped)
        out[method] = {
            "cpu_per_camera_s": cost,
            "at_cameras": basis_point.cameras,
            "kept_up_at": kept_n,
            "fell_behind_at": behind_n,
            "fell_behind_cores": (
                round(behind.cpu_s / behind.seconds, 2) if behind and behind.seconds else None
            ),
            "saturated_at": min(saturated) if saturated else None,
            "cpu_estimate": estimate,
            "max_cameras": max_cameras,
            "basis": "measured" if max_cameras == kept_n else "extrapolated",
        }
    return out


def print_summary(profile: str, summary: dict[str, Any], cores: float) -> list[str]:
    """Print the summary of one profile; return its ratio lines."""
    print(f"\nSummary {profile}: max cameras on {cores:g} cores (ingest only, no detector)\n")
    print(
        "| method | CPU-s per camera-s (at N) | kept up at N | fell behind at N | "
        f"{cores:g} cores / CPU per camera | max cameras | basis |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for method, s in summary.items():
        behind = "-"
        if s["fell_behind_at"] is not None:
            state = "saturated" if s["saturated_at"] == s["fell_behind_at"] else "contended"
            behind = f"{s['fell_behind_at']} ({state}, {s['fell_behind_cores']} cores used)"
        estimate = s["cpu_estimate"] if s["cpu_estimate"] is not None else "-"
        print(
            f"| {method} | {s['cpu_per_camera_s']:.4f} ({s['at_cameras']}) | {s['kept_up_at']} | "
            f"{behind} | {estimate} | {s['max_cameras']} | {s['basis']} |"
        )
    lines = []
    agent = summary.get("agent")
    if agent and agent["cpu_per_camera_s"] > 0:
        for other in ("opencv", "ffmpeg"):
            s = summary.get(other)
            if s:
                cpu_ratio = s["cpu_per_camera_s"] / agent["cpu_per_camera_s"]
                lines.append(
                    f"{profile}: {other} uses {cpu_ratio:.1f}x "
                    f"the agent's CPU per camera; cameras on {cores:g} cores: agent "
                    f"{agent['max_cameras']} vs {other} {s['max_cameras']} "
                    f"({agent['max_cameras'] / max(s['max_cameras'], 1):.1f}x)"
                )
        floor = summary.get("floor")
        if floor and floor["cpu_per_camera_s"] > 0:
            lines.append(
                f"{profile}: the agent uses "
                f"{agent['cpu_per_camera_s'] / floor['cpu_per_camera_s']:.1f}x the compute floor"
            )
    print()
    for line in lines:
        print(f"- {line}")
    return lines


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="measured window per point (default 8)"
    )
    parser.add_argument("--max-cameras", type=int, default=16, help="largest N to try (default 16)")
    parser.add_argument(
        "--profiles",
        default=DEFAULT_PROFILES,
        help=f"comma-separated HEIGHTpFPS-gopN profiles (default {DEFAULT_PROFILES})",
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}"
    )
    parser.add_argument(
        "--cores", type=float, default=2.0, help="the box's cores for max cameras (default 2)"
    )
    parser.add_argument(
        "--every-power",
        action="store_true",
        help="measure every power of two up to the limit instead of skipping easy ones",
    )
    parser.add_argument(
        "--ffmpeg-pix-fmt",
        choices=("bgr24", "yuv420p"),
        default="bgr24",
        help="ffmpeg's output format: bgr24 (what the detector takes) or yuv420p (Frigate's)",
    )
    parser.add_argument(
        "--clips",
        type=Path,
        default=Path(tempfile.gettempdir()) / "mclz-bench-clips",
        help="cache of generated clips (default %(default)s)",
    )
    parser.add_argument(
        "--clip-seconds", type=float, default=10.0, help="clip length, looped (default 10)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        args.profile_list = [parse_profile(p) for p in args.profiles.split(",") if p.strip()]
    except ValueError as exc:
        parser.error(str(exc))
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.method_list) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.seconds < 2 or args.max_cameras < 1 or args.cores <= 0:
        parser.error("--seconds must be >= 2, --max-cameras >= 1, --cores > 0")
    return args


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the clips, serve them, measure every method; return the results."""
    if "ffmpeg" in args.method_list and shutil.which("ffmpeg") is None:
        raise BenchError("ffmpeg is not installed (apt-get install ffmpeg), or drop it: --methods")
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "loadavg_start": loadavg(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "opencv": cv2.__version__,
        },
        "settings": {
            "seconds": args.seconds,
            "max_cameras": args.max_cameras,
            "cores": args.cores,
            "detect_interval_s": 1.0,
            "ffmpeg_pix_fmt": args.ffmpeg_pix_fmt,
            "every_power": args.every_power,
        },
        "clips": {},
        "points": [],
        "summary": {},
        "ratios": [],
    }
    print(f"# Ingest benchmark, {result['started']}\n")
    print(f"- machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs")
    print(f"- load average at start: {result['machine']['loadavg_start']}")
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if autogroup.is_file() and autogroup.read_text().strip() == "1":
        result["machine"]["sched_autogroup"] = True
        print(
            "- kernel autogroup scheduling is on: a busy process in another session gets its "
            "session's share of the CPUs whatever its nice value, so this run may get only "
            "part of the machine"
        )
    print(
        "- CPU is counted for the measured process(es) only (ffmpeg children included), so "
        "other load on the machine does not inflate it; but other load (and the RTSP server, "
        "on the same cores) can make a method fall behind: see 'machine busy'"
    )
    print("- clips:")
    clips = {}
    for profile in args.profile_list:
        path = ensure_clip(profile, args.clips, args.clip_seconds)
        facts = clip_facts(path)
        result["clips"][profile.name] = facts
        clips[profile.name] = path
        print(
            f"  - {profile.name}: {profile.width}x{profile.height} H.264, keyframe every "
            f"{profile.gop_seconds:g} s, {facts['kbps']} kbit/s, keyframes {facts['keyframe_kb']} "
            f"kB, other frames {facts['pframe_kb']} kB ({path.name})"
        )
    ffmpeg_version = ""
    if shutil.which("ffmpeg"):
        out = subprocess.run(
            ["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True, check=False
        )
        ffmpeg_version = " ".join(out.stdout.split()[:3])  # "ffmpeg version X"
        result["machine"]["ffmpeg"] = ffmpeg_version
    print(
        f"- PyAV {av.__version__}, OpenCV {cv2.__version__}, {ffmpeg_version or 'no ffmpeg CLI'};"
        f" ffmpeg outputs {args.ffmpeg_pix_fmt}"
    )
    server = RtspServer({f"/{name}": path for name, path in clips.items()}, loop=True).start()
    try:
        for profile in args.profile_list:
            url = server.url(f"/{profile.name}")

            def urls_for(n: int, url: str = url) -> list[str]:
                # Every client of a mount gets its own stream from the clip's start.
                return [url] * n

            print(
                f"\n## {profile.name}: {profile.width}x{profile.height}, {profile.fps} fps, "
                f"keyframe every {profile.gop_seconds:g} s; {args.seconds:g} s per point\n"
            )
            print(TABLE_HEAD, flush=True)
            points: list[Point] = []
            for method in args.method_list:
                for point in camera_counts(method, profile, urls_for, args, server):
                    points.append(point)
                    result["points"].append(asdict(point))
                    print(row(point), flush=True)
                    if not server.running:
                        raise BenchError(f"the RTSP server died:\n{server.stderr[-2000:]}")
            notes = sorted({f"{p.method}: {n}" for p in points for n in p.notes})
            if notes:
                print("\nNotes: " + "; ".join(notes))
            summary = summarize(points, args.cores)
            result["summary"][profile.name] = summary
            result["ratios"] += print_summary(profile.name, summary, args.cores)
    finally:
        server.close()
    result["machine"]["loadavg_end"] = loadavg()
    print(f"\n- load average at end: {result['machine']['loadavg_end']}")
    print(
        "- max cameras counts ingest only (no detection, no RTSP server); 'extrapolated' means "
        "it was not measured: cores / CPU per camera, capped below an N that saturated the "
        "cores; a method that fell behind with cores to spare ('contended') lost them to "
        "other processes (or the RTSP server), which does not cap the estimate"
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Both stop the run with cleanup, even where a shell started us with SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_ingest: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in list(CHILDREN):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"- JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
