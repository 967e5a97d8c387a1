"""One-off reads of a stream for the installer's commands: ``camera probe`` and frame grabs.

Unlike :class:`~agent.ingest.reader.CameraReader` these open a stream once, read it for a
bounded time and return: no supervision, no reconnects. Errors carry the same classes as
the readers' (:func:`~agent.ingest.errors.classify_error`), with credentials redacted.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.error
import numpy as np

from agent.errors import StreamError
from agent.ingest.errors import classify_error
from agent.redact import redact_text, redact_url

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What ``camera probe`` measured on a stream."""

    url: str  # redacted
    codec: str
    width: int
    height: int
    expected_fps: float | None
    measured_fps: float
    keyframe_interval_s: float | None
    first_frame_s: float
    seconds: float
    packets: int
    keyframes: int
    bitrate_kbps: float
    snapshot: np.ndarray = field(repr=False)  # BGR, the first decoded frame


def _open_for_cli(
    url: str, shown: str, *, transport: str, timeout: float, fast: bool = False
) -> av.container.InputContainer:
    """Open a stream for a one-off command (probe, grab); ``shown`` is its redacted URL.

    Raises:
        StreamError: it cannot be opened; the message names the error class.
    """
    options: dict[str, str] = {}
    if "://" in url and not url.startswith("file://"):
        options = {"rtsp_transport": transport, "timeout": str(int(timeout * 1_000_000))}
        if fast:
            options["fpsprobesize"] = "0"
    try:
        return av.open(url, mode="r", options=options, timeout=(timeout, timeout))
    except (av.error.FFmpegError, OSError) as exc:
        kind = classify_error(exc)
        raise StreamError(f"{shown}: cannot open ({kind}): {redact_text(str(exc))}") from exc


def probe(
    url: str, *, transport: str = "tcp", seconds: float = 5.0, timeout: float = 10.0
) -> ProbeResult:
    """Open ``url`` and measure it like an installer would want: codec, size, fps, GOP.

    Raises:
        StreamError: the stream cannot be opened or gives no frame; the message names the
            error class (auth_failed, not_found, refused, timeout, ...), credentials redacted.
    """
    shown = redact_url(url)
    t0 = time.monotonic()
    container = _open_for_cli(url, shown, transport=transport, timeout=timeout)
    try:
        if not container.streams.video:
            raise StreamError(f"{shown}: no video stream")
        stream = container.streams.video[0]
        time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate
        first: np.ndarray | None = None
        first_at = 0.0
        packets = keyframes = size = 0
        key_times: list[float] = []
        started = None
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            now = time.monotonic()
            started = started if started is not None else now
            packets += 1
            size += packet.size
            if packet.is_keyframe:
                keyframes += 1
                pts = float(packet.pts * time_base) if packet.pts is not None else now
                key_times.append(pts)
            if first is None:
                for frame in packet.decode():
                    first = frame.to_ndarray(format="bgr24")
                    first_at = time.monotonic() - t0
                    break
            if now - started >= seconds:
                break
        if first is None:
            raise StreamError(f"{shown}: no frame could be decoded")
        elapsed = max(1e-6, time.monotonic() - (started or t0))
        gaps = [b - a for a, b in itertools.pairwise(key_times) if b > a]
        ctx = stream.codec_context
        return ProbeResult(
            url=shown,
            codec=ctx.name,
            width=ctx.width,
            height=ctx.height,
            expected_fps=float(rate) if rate else None,
            measured_fps=packets / elapsed,
            keyframe_interval_s=sum(gaps) / len(gaps) if gaps else None,
            first_frame_s=first_at,
            seconds=elapsed,
            packets=packets,
            keyframes=keyframes,
            bitrate_kbps=size * 8 / elapsed / 1000,
            snapshot=first,
        )
    except (av.error.FFmpegError, OSError) as exc:
        kind = classify_error(exc)
        raise StreamError(f"{shown}: stream failed ({kind}): {redact_text(str(exc))}") from exc
    finally:
        container.close()


def grab_frames(
    url: str,
    *,
    count: int,
    seconds: float,
    transport: str = "tcp",
    timeout: float = 10.0,
) -> list[np.ndarray]:
    """Decode ``count`` BGR frames spread evenly over ``seconds`` of the stream.

    Spacing follows the stream's timestamps, so a live camera takes about ``seconds`` and
    a file is read as fast as it decodes. Fewer frames come back when the stream ends early.

    Raises:
        StreamError: the stream cannot be opened or gives no frame (credentials redacted).
    """
    shown = redact_url(url)
    step = seconds / (count - 1) if count > 1 else 0.0
    frames: list[np.ndarray] = []
    # As CameraReader: no ~5 s frame-rate probe per open.
    container = _open_for_cli(url, shown, transport=transport, timeout=timeout, fast=True)
    try:
        if not container.streams.video:
            raise StreamError(f"{shown}: no video stream")
        first: float | None = None
        deadline = time.monotonic() + seconds + timeout  # a stream whose clock stalls
        for frame in container.decode(video=0):
            if frame.pts is None:  # no timestamp (RTSP's first frame may lack one)
                continue
            first = float(frame.time) if first is None else first
            late = time.monotonic() > deadline
            if late or float(frame.time) - first >= step * len(frames) - 1e-6:
                frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) >= count or late:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        if not frames:
            kind = classify_error(exc)
            raise StreamError(f"{shown}: stream failed ({kind}): {redact_text(str(exc))}") from exc
        logger.warning("%s: stream failed after %d frame(s): %s", shown, len(frames), exc)
    finally:
        container.close()
    if not frames:
        raise StreamError(f"{shown}: no frame could be decoded")
    return frames
