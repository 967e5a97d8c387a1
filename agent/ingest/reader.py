"""Camera ingest: one supervised PyAV reader per camera, decoding only what detection needs.

Each reader demuxes its stream and decodes as little as it can: when keyframes arrive at
least as often as the camera's detection interval, the decoder is told to skip every
non-key frame (``skip_frame = NONKEY``), which costs a fraction of a full decode; otherwise
it decodes every frame but converts to BGR only the frames that will be analysed. The
newest frame wins: a frame that detection has not taken before the next one arrives is
dropped and counted, so a slow detector never builds a queue.

Many cameras share a box of two cores, so a reader decodes and converts in its own thread
by default (``decoder_threads: 1``): FFmpeg's auto gave every camera a slice-thread pool of
one thread per core plus one, and PyAV's ``to_ndarray`` a new converter per frame with a
pool of its own (83 threads instead of 19 for 16 readers at 720p, for the same RSS and CPU;
scripts/bench/bench_decoder_memory.py). Frame threading is never used: it holds a frame
per thread and delays output by as many.

A camera's health is debounced: it is reported ``offline`` only after ``offline_after``
seconds without a frame, so a reboot or a blip does not flap the platform's board, but
every reconnect and stall is still counted.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from agent.backoff import Backoff
from agent.config import CameraConfig
from agent.errors import SecretError, StreamError
from agent.ingest.errors import classify_error
from agent.ingest.frames import Frame, FrameSink
from agent.records import CameraState, Transition
from agent.redact import redact_text, redact_url

logger = logging.getLogger(__name__)

BACKOFF_MIN = 1.0
ERROR_RING = 20
HOUR = 3600.0
FPS_WINDOW = 5.0  # seconds of packets behind the input fps
DETECT_FPS_WINDOW = 60.0  # seconds of analysed frames behind the detection fps


class Quality(str, enum.Enum):
    """Connection-quality grade of a camera, from fps against expected, reconnects and stalls."""

    EXCELLENT = "excellent"
    FAIR = "fair"
    POOR = "poor"
    UNUSABLE = "unusable"


class Sampler:
    """Picks the frames detection gets: one per interval, on the stream's own clock.

    Deciding on stream timestamps rather than on when a frame finished decoding keeps a
    steady one frame per interval when the CPU is contended (decode times bunch up, stream
    times do not). The schedule is a grid (due, due + interval, ...), so in full-decode
    mode it can also tell that the next due frame is the next keyframe, and the rest of
    the GOP need not be decoded at all.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tolerance = min(0.05, interval * 0.1)  # about one frame of a 25 fps stream
        self.next_due: float | None = None

    def due(self, t: float) -> bool:
        """Whether the frame at stream time ``t`` should be analysed."""
        nxt = self.next_due
        if nxt is not None and (t < nxt - 2 * self.interval or t > nxt + 10 * self.interval):
            self.next_due = nxt = None  # the clock jumped: a reconnect, a loop, a pts reset
        return nxt is None or t >= nxt - self.tolerance

    def taken(self, t: float) -> None:
        """Record that the frame at ``t`` was analysed."""
        nxt = (self.next_due if self.next_due is not None else t) + self.interval
        self.next_due = nxt if nxt > t else t + self.interval  # fell behind: realign

    def wait_for_keyframe(self, next_key: float) -> bool:
        """Whether nothing before the keyframe at ``next_key`` will be due."""
        return self.next_due is not None and self.next_due >= next_key - self.tolerance


@dataclass(slots=True)
class CameraStats:
    """Counters of one camera, read by the heartbeat and status output."""

    packets: int = 0
    keyframes: int = 0
    decoded: int = 0
    analysed: int = 0
    decode_errors: int = 0
    reconnects: int = 0
    stalls: int = 0
    blips: int = 0
    gop_seconds: float | None = None
    decode_mode: str = "all"
    codec: str = ""
    width: int = 0
    height: int = 0
    expected_fps: float | None = None
    last_error: str = ""
    last_error_class: str = ""
    fps: float = 0.0
    # What the reader applied, read back from FFmpeg: the decoder's threads once it opened
    # (0 until the first frame) and the options the demuxer was opened with.
    decoder_threads: int = 0
    demuxer_options: dict[str, str] = field(default_factory=dict)


class _SessionError(StreamError):
    """A reading session ended; ``had_frames`` says whether it decoded anything first."""

    def __init__(self, message: str, had_frames: bool) -> None:
        super().__init__(message)
        self.had_frames = had_frames


class CameraReader:
    """Reads one camera in its own thread, supervised: reconnects with backoff, never gives up.

    :meth:`run` is the thread's body and ends when ``stop`` is set. The agent's service
    starts that thread itself, named :attr:`thread_name` (``agent.service.runtime.Cameras``);
    :meth:`start` and :meth:`join` are for a reader used on its own (tools, tests).
    """

    def __init__(
        self,
        camera_id: str,
        config: CameraConfig,
        *,
        stop: threading.Event,
        slot: FrameSink,
        on_transition: Callable[[Transition], None] | None = None,
        role: str = "",
    ) -> None:
        """``role`` names a second stream of the same camera (``main``) in threads and logs."""
        self.camera_id = camera_id
        self.label = f"{camera_id}/{role}" if role else camera_id
        self.config = config
        self.stop = stop
        self.slot = slot
        self.on_transition = on_transition
        self.stats = CameraStats()
        self.errors: collections.deque[tuple[float, str]] = collections.deque(maxlen=ERROR_RING)
        self.display_url = redact_url(config.url)
        self._lock = threading.Lock()
        self._state = CameraState.CONNECTING
        self._since = time.time()
        self._started_mono = time.monotonic()
        self._last_frame_mono: float | None = None
        self._last_frame_wall: float | None = None
        self._fps_window: collections.deque[float] = collections.deque(maxlen=4096)
        self._emit_times: collections.deque[float] = collections.deque(maxlen=4096)
        self._reconnect_times: collections.deque[float] = collections.deque(maxlen=4096)
        self._stall_times: collections.deque[float] = collections.deque(maxlen=4096)
        self._backoff = Backoff(BACKOFF_MIN, config.reconnect_max)
        self._interrupted = False  # a session failed since the last frame
        # BGR conversion: one context per session, reused. PyAV's frame.to_ndarray() builds
        # a converter per frame, with a thread per core that lives as long as the frame.
        self._reformatter = VideoReformatter()
        # Set by the agent's load governor: detect_interval is stretched by this factor.
        self.interval_scale = 1.0
        self._thread: threading.Thread | None = None  # only when started by :meth:`start`

    # ------------------------------------------------------------------ public

    @property
    def thread_name(self) -> str:
        """The name of the thread that runs the reader: ``ingest-<camera>[/<role>]``."""
        return f"ingest-{self.label}"

    def start(self) -> None:
        """Run the reader in a thread of its own (a reader used on its own; see the class)."""
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the thread :meth:`start` started to end; return whether it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def state(self) -> CameraState:
        """The reported (debounced) state."""
        with self._lock:
            return self._state

    @property
    def since(self) -> float:
        """Wall time of the last state transition."""
        with self._lock:
            return self._since

    def tick(self, mono: float | None = None) -> Transition | None:
        """Advance the debounced state from the age of the last frame; called about once a second.

        ``online`` turns ``stalled`` after ``stall_timeout`` without a frame and anything turns
        ``offline`` after ``offline_after`` without one (from the start when none ever came).
        """
        mono = time.monotonic() if mono is None else mono
        cfg = self.config
        recent: list[tuple[float, str]] = []
        with self._lock:
            if self._state is CameraState.OFFLINE:
                return None
            last = self._last_frame_mono
            age = mono - (last if last is not None else self._started_mono)
            error = self.stats.last_error_class
            if age >= cfg.offline_after:
                reason = error or ("stall" if last is not None else "no_frames")
                transition = self._set_state(CameraState.OFFLINE, reason)
                recent = list(self.errors)[-5:]
            elif self._state is CameraState.ONLINE and age >= cfg.stall_timeout:
                self.stats.stalls += 1
                self._stall_times.append(mono)
                transition = self._set_state(CameraState.STALLED, error or "stall")
            else:
                return None
        self._announce(transition)
        if transition.new is CameraState.OFFLINE:
            # The error ring is printed only now, when it explains an outage.
            for stamp, text in recent:
                logger.warning(
                    "camera %s: error at %s: %s",
                    self.label,
                    time.strftime("%H:%M:%S", time.localtime(stamp)),
                    text,
                )
        return transition

    # ------------------------------------------------------------------ state

    def _set_state(self, new: CameraState, reason: str) -> Transition:
        # Caller holds self._lock.
        old = self._state
        self._state = new
        self._since = time.time()
        return Transition(self.camera_id, old, new, self._since, reason, self._last_frame_wall)

    def _announce(self, transition: Transition) -> None:
        logger.info(
            "camera %s: %s -> %s (%s)",
            self.label,
            transition.old.value,
            transition.new.value,
            transition.reason,
        )
        if self.on_transition is not None:
            try:
                self.on_transition(transition)
            except Exception:
                logger.exception("camera %s: state transition handler failed", self.label)

    def _record_error(self, exc: BaseException) -> str:
        kind = classify_error(exc)
        text = redact_text(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.stats.last_error = text
            self.stats.last_error_class = kind
        self.errors.append((time.time(), text))
        return kind

    # ------------------------------------------------------------------ thread

    def run(self) -> None:
        """Read, reconnecting with backoff, until ``stop`` is set: the reader thread's body."""
        try:
            while not self.stop.is_set():
                try:
                    good = self._session()
                except StreamError as exc:
                    good = self._failed(exc)
                else:
                    continue  # a looping file reached its end: reopen at once
                if self.stop.is_set():
                    break
                if good:
                    self._backoff.reset()
                delay = self._backoff.next_delay()
                logger.debug("camera %s: reconnecting in %.1f s", self.label, delay)
                self.stop.wait(delay)
        except Exception:
            logger.exception("camera %s: reader thread crashed", self.label)

    def _failed(self, exc: StreamError) -> bool:
        """Record a failed session; return whether it had decoded frames before failing."""
        kind = self._record_error(exc.__cause__ or exc)
        if not self.stop.is_set():
            logger.warning("camera %s (%s): %s [%s]", self.label, self.display_url, exc, kind)
        with self._lock:
            self.stats.reconnects += 1
            self._reconnect_times.append(time.monotonic())
            self._interrupted = True
        return exc.had_frames if isinstance(exc, _SessionError) else False

    def _is_loop(self) -> bool:
        return self.config.is_file and self.config.loop

    def _open(self) -> av.container.InputContainer:
        cfg = self.config
        try:
            url = cfg.source_url(self.camera_id)
        except SecretError as exc:
            raise StreamError(str(exc)) from exc
        options: dict[str, str] = {}
        if cfg.is_file:
            path = url[len("file://") :] if url.startswith("file://") else url
            if not Path(path).is_file():
                raise StreamError(f"video file {path} not found") from FileNotFoundError(path)
            url = path
        else:
            options = {
                "rtsp_transport": cfg.transport,
                # Socket I/O timeout in microseconds (FFmpeg's RTSP demuxer).
                "timeout": str(int(cfg.open_timeout * 1_000_000)),
                "fflags": "nobuffer",
                # Don't spend ~2 s estimating the frame rate at every (re)connect.
                "fpsprobesize": "0",
            }
            if urlsplit(url).scheme == "rtsps":
                options["rtsp_flags"] = "prefer_tcp"
        with self._lock:
            self.stats.demuxer_options = dict(options)
        t0 = time.monotonic()
        try:
            container = av.open(
                url, mode="r", options=options, timeout=(cfg.open_timeout, cfg.stall_timeout)
            )
        except (av.error.FFmpegError, OSError) as exc:
            text = redact_text(str(exc))
            if time.monotonic() - t0 >= 0.9 * cfg.open_timeout and classify_error(exc) in {
                "decode_error",
                "error",
            }:
                # A server that accepts but never answers: FFmpeg's RTSP demuxer reports the
                # empty reply as invalid data once its timeout runs out. It is a timeout.
                cause: BaseException = TimeoutError(f"no answer within {cfg.open_timeout:g} s")
                raise StreamError(f"cannot open stream: no answer ({text})") from cause
            raise StreamError(f"cannot open stream: {text}") from exc
        return container

    def _session(self) -> bool:
        """Open the stream and read it; return only when a looping file ends.

        Raises:
            StreamError: the stream could not be opened, failed, stalled or ended;
                ``had_frames`` says whether it decoded any frame first.
        """
        cfg = self.config
        container = self._open()
        self._reformatter = VideoReformatter()  # the picture size may differ after a reconnect
        got_frame = False
        try:
            if not container.streams.video:
                raise _SessionError("the source has no video stream", had_frames=False)
            stream = container.streams.video[0]
            ctx = stream.codec_context
            # Frame threading delays output by a frame per thread and holds a frame per thread.
            ctx.thread_type = "SLICE"
            # 0 is FFmpeg's auto: one slice thread per core plus one, for each camera.
            ctx.thread_count = 0 if cfg.decoder_threads == "auto" else cfg.decoder_threads
            time_base = stream.time_base or Fraction(1, 90000)
            rate = stream.average_rate or stream.guessed_rate
            with self._lock:
                self.stats.codec = ctx.name
                self.stats.width = ctx.width
                self.stats.height = ctx.height
                self.stats.expected_fps = float(rate) if rate else None
            logger.info(
                "camera %s: opened %s (%s %dx%d)",
                self.label,
                self.display_url,
                ctx.name,
                ctx.width,
                ctx.height,
            )
            got_frame = self._read(container, stream, time_base)
        except (av.error.FFmpegError, OSError, EOFError) as exc:
            if self.stop.is_set():
                return got_frame
            raise _SessionError(f"stream failed: {redact_text(str(exc))}", got_frame) from exc
        finally:
            container.close()
        if self.stop.is_set() or self._is_loop():
            return got_frame
        raise _SessionError("stream ended", got_frame) from EOFError("end of stream")

    def _read(
        self, container: av.container.InputContainer, stream: av.VideoStream, time_base: Fraction
    ) -> bool:
        cfg = self.config
        ctx = stream.codec_context
        # auto starts with keyframes only (the cheap guess, right for most cameras) and
        # switches to full decoding once the measured GOP is longer than the interval.
        mode = "all" if cfg.decode == "all" else "keyframes"
        self._apply_mode(ctx, mode)
        need_key = True  # never show a P-frame decoded without its references
        last_key_pts: float | None = None
        got_frame = False
        pace_origin: tuple[float, float] | None = None  # (pts seconds, mono) for file pacing
        session_start = time.monotonic()
        sampler = Sampler(cfg.detect_interval)
        skip_to_key = False  # full decode: the rest of this GOP holds no due frame
        for packet in container.demux(stream):
            if self.stop.is_set():
                break
            if packet.size == 0:
                continue
            mono = time.monotonic()
            pts = float(packet.pts * time_base) if packet.pts is not None else None
            self._count_packet(mono, session_start, got_frame)
            if packet.is_keyframe:
                key_time = pts if pts is not None else mono
                mode = self._on_keyframe(ctx, key_time, last_key_pts, mode)
                last_key_pts = key_time
                skip_to_key = False
            if cfg.is_file and pts is not None:
                pace_origin = self._pace(pts, pace_origin)
            if skip_to_key:
                continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as exc:
                with self._lock:
                    self.stats.decode_errors += 1
                self.errors.append((time.time(), redact_text(str(exc))))
                need_key = True
                continue
            for frame in frames:
                if need_key and not frame.key_frame:
                    continue
                need_key = False
                if not got_frame:
                    self._note_decoder(ctx)
                got_frame = True
                t = frame.time if frame.time is not None else time.monotonic() - session_start
                sampler.interval = cfg.detect_interval * self.interval_scale
                due = sampler.due(t)
                if due:
                    sampler.taken(t)
                self._on_decoded(frame, due)
                gop = self.stats.gop_seconds
                if due and mode == "all" and gop and last_key_pts is not None:
                    skip_to_key = sampler.wait_for_keyframe(last_key_pts + gop)
        return got_frame

    def _note_decoder(self, ctx: av.VideoCodecContext) -> None:
        """Record the decoder's threads, read back once it is open (FFmpeg resolves 0, auto)."""
        with self._lock:
            self.stats.decoder_threads = ctx.thread_count

    def _count_packet(self, mono: float, session_start: float, got_frame: bool) -> None:
        """Count a packet; raise when data keeps coming but no picture decodes (stall watchdog).

        Packets that never decode into a picture are no better than no packets. A few GOPs
        are allowed, since keyframes-only decoding waits for one.
        """
        with self._lock:
            self.stats.packets += 1
            self._fps_window.append(mono)
            last_frame = self._last_frame_mono
        patience = max(self.config.stall_timeout, 3 * (self.stats.gop_seconds or 0.0))
        if mono - max(last_frame or 0.0, session_start) > patience:
            raise _SessionError(
                f"no decodable frame for {patience:.0f} s although data arrives", got_frame
            ) from TimeoutError("stall")

    def _on_keyframe(
        self, ctx: av.VideoCodecContext, key_time: float, last: float | None, mode: str
    ) -> str:
        """Measure the GOP; in auto mode pick keyframes-only or full decoding; return the mode."""
        with self._lock:
            self.stats.keyframes += 1
        if last is None or key_time <= last:
            return mode
        gop = key_time - last
        self.stats.gop_seconds = gop
        if self.config.decode != "auto":
            return mode
        wanted = "keyframes" if gop <= self.config.detect_interval * 1.1 else "all"
        if wanted != mode:
            self._apply_mode(ctx, wanted)
            logger.info("camera %s: keyframe every %.2f s, decoding %s", self.label, gop, wanted)
        return wanted

    def _pace(self, pts: float, origin: tuple[float, float] | None) -> tuple[float, float]:
        """Sleep so that a file plays at its own speed, like a camera."""
        now = time.monotonic()
        if origin is None or pts < origin[0]:
            return (pts, now)
        delay = (pts - origin[0]) - (now - origin[1])
        if delay > 0:
            self.stop.wait(min(delay, 5.0))
        return origin

    def _apply_mode(self, ctx: av.VideoCodecContext, mode: str) -> None:
        ctx.skip_frame = "NONKEY" if mode == "keyframes" else "DEFAULT"
        self.stats.decode_mode = mode

    def _on_decoded(self, frame: av.VideoFrame, due: bool) -> None:
        mono = time.monotonic()
        transition = None
        with self._lock:
            self.stats.decoded += 1
            self._last_frame_mono = mono
            self._last_frame_wall = time.time()
            if self._interrupted:
                self._interrupted = False
                if self._state is CameraState.ONLINE:
                    self.stats.blips += 1  # dropped and back before offline_after
            if self._state is not CameraState.ONLINE:
                transition = self._set_state(CameraState.ONLINE, "frames")
            if due:
                self._emit_times.append(mono)
                self.stats.analysed += 1
        if transition is not None:
            self._backoff.reset()
            self._announce(transition)
        if due:
            image = self._to_bgr(frame)
            self.slot.put(Frame(self.camera_id, image, time.time(), mono, bool(frame.key_frame)))

    def _to_bgr(self, frame: av.VideoFrame) -> np.ndarray:
        """The frame's pixels as BGR, converted by this session's own context.

        It runs ``decoder_threads`` threads (one by default: the reader's own); only frames
        that detection takes are converted.
        """
        threads = self.config.decoder_threads
        bgr = self._reformatter.reformat(
            frame, format="bgr24", threads=0 if threads == "auto" else threads
        )
        return bgr.to_ndarray()

    def snapshot(self, mono: float | None = None) -> dict[str, Any]:
        """Health of this camera as plain data (for heartbeats, status and the CLI)."""
        mono = time.monotonic() if mono is None else mono
        with self._lock:
            s = self.stats
            _prune(self._fps_window, mono - FPS_WINDOW)
            s.fps = len(self._fps_window) / min(FPS_WINDOW, max(1.0, mono - self._started_mono))
            _prune(self._emit_times, mono - DETECT_FPS_WINDOW)
            _prune(self._reconnect_times, mono - HOUR)
            _prune(self._stall_times, mono - HOUR)
            age = None if self._last_frame_mono is None else round(mono - self._last_frame_mono, 2)
            window = min(DETECT_FPS_WINDOW, max(1e-9, mono - self._started_mono))
            snap = {
                "state": self._state.value,
                "since": self._since,
                "last_frame_age_s": age,
                "fps": round(s.fps, 2),
                "expected_fps": round(s.expected_fps, 2) if s.expected_fps else None,
                "detect_fps": round(len(self._emit_times) / window, 3),
                "codec": s.codec,
                "width": s.width,
                "height": s.height,
                "packets": s.packets,
                "keyframes": s.keyframes,
                "decoded": s.decoded,
                "analysed": s.analysed,
                "dropped": self.slot.dropped,
                "reconnects": s.reconnects,
                "reconnects_1h": len(self._reconnect_times),
                "stalls": s.stalls,
                "stalls_1h": len(self._stall_times),
                "blips": s.blips,
                "decode_errors": s.decode_errors,
                "decode_mode": s.decode_mode,
                "gop_seconds": round(s.gop_seconds, 3) if s.gop_seconds is not None else None,
                "last_error": s.last_error,
                "last_error_class": s.last_error_class,
            }
        snap["quality"] = grade(snap).value
        return snap


def _prune(times: collections.deque[float], before: float) -> None:
    while times and times[0] < before:
        times.popleft()


def grade(health: dict[str, Any]) -> Quality:
    """Grade a camera's connection from its health snapshot.

    unusable: not online; poor: under 60 % of the expected frame rate, or more than two
    reconnects or stalls in the last hour; fair: under 90 %, or any reconnect or stall in
    the last hour; excellent otherwise. Without an expected rate (some cameras do not say),
    only reconnects and stalls count.
    """
    if health["state"] != CameraState.ONLINE.value:
        return Quality.UNUSABLE
    expected = health.get("expected_fps")
    ratio = health["fps"] / expected if expected else 1.0
    troubles = health["reconnects_1h"] + health["stalls_1h"]
    if ratio < 0.6 or troubles > 2:
        return Quality.POOR
    if ratio < 0.9 or troubles > 0:
        return Quality.FAIR
    return Quality.EXCELLENT
