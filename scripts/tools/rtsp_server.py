#!/usr/bin/python3
"""Serve MP4 clips over RTSP on loopback, the way a kitchen camera streams, for tests and demos.

Run it with Debian's interpreter, which has GStreamer's Python bindings (the venv does not)::

    /usr/bin/python3 scripts/tools/rtsp_server.py --port 0 --mount /cam1=clip.mp4 --loop
    RTSP_PASS=secret /usr/bin/python3 scripts/tools/rtsp_server.py --port 8554 \\
        --mount /cam1=clip.mp4 --user admin --password-env RTSP_PASS

Once it accepts connections it prints exactly one line, ``READY rtsp://127.0.0.1:PORT``, on
stdout; everything else goes to stderr. Errors (missing file, bad mount, port taken) exit
non-zero. SIGTERM and SIGINT exit 0.

How it streams: each clip is demuxed once at start-up into its H.264 (or H.265) access units,
kept in memory. Every client gets its own pipeline
``appsrc ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1`` fed from that list; the
server's sinks are synchronised to the clock, so a reader sees the clip's own frame rate, like a
camera. With ``--loop`` the feeder starts the list again at the end and shifts the timestamps
by one clip length per pass, so RTP timestamps keep growing and the stream never ends, without
seeking or re-encoding. Without ``--loop`` the feeder sends end-of-stream after the last frame:
the server sends RTCP BYE and the client sees the stream end, as when a camera dies.

Requires the Debian packages python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-rtsp,
gstreamer1.0-plugins-base, gstreamer1.0-plugins-good and gstreamer1.0-plugins-bad.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)
EXIT_USAGE = 2
EXIT_MISSING_DEPENDENCY = 3
EXIT_BAD_CLIP = 4
EXIT_BIND_FAILED = 5
LOAD_TIMEOUT_S = 30.0
SESSION_CLEANUP_S = 2
# Payloaders per codec; the parser in front re-inserts SPS/PPS (VPS) before every keyframe.
PAYLOADERS = {
    "video/x-h264": "h264parse ! rtph264pay name=pay0 pt=96 config-interval=1",
    "video/x-h265": "h265parse ! rtph265pay name=pay0 pt=96 config-interval=1",
}

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstApp, GstRtspServer
except (ImportError, ValueError) as exc:
    sys.stderr.write(
        f"rtsp_server: GStreamer RTSP server bindings are missing ({exc}); run it with "
        f"/usr/bin/python3 and apt-get install {APT_PACKAGES}\n"
    )
    raise SystemExit(EXIT_MISSING_DEPENDENCY) from exc


class ClipError(Exception):
    """A clip cannot be read or holds no H.264/H.265 video track."""


@dataclass(frozen=True)
class Clip:
    """A clip's compressed video, demuxed once and replayed to every client."""

    path: Path
    caps: Any  # Gst.Caps of the access units, codec_data included
    units: list[Any]  # Gst.Buffer per access unit, timestamps relative to the first one
    period_ns: int  # one pass of the clip; the timestamp shift applied per loop

    @property
    def media_type(self) -> str:
        """Return the caps' media type, ``video/x-h264`` or ``video/x-h265``."""
        return str(self.caps.get_structure(0).get_name())


def load_clip(path: Path) -> Clip:
    """Demux the first H.264/H.265 video track of an MP4 into memory.

    Raises:
        ClipError: the file is missing, not a readable MP4, or has no H.264/H.265 track.
    """
    if not path.is_file():
        raise ClipError(f"{path}: no such file")
    description = (
        "filesrc name=src ! qtdemux name=demux demux. ! "
        'appsink name=sink sync=false caps="video/x-h264;video/x-h265"'
    )
    try:
        pipeline = Gst.parse_launch(description)
    except GLib.Error as exc:
        raise ClipError(f"{path}: cannot build demuxer: {exc.message}") from exc
    pipeline.get_by_name("src").set_property("location", str(path))
    sink = pipeline.get_by_name("sink")
    bus = pipeline.get_bus()
    caps: Any = None
    raw: list[Any] = []
    try:
        if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            raise ClipError(f"{path}: cannot start demuxer")
        deadline = GLib.get_monotonic_time() + int(LOAD_TIMEOUT_S * 1_000_000)
        while True:
            sample = GstApp.AppSink.try_pull_sample(sink, 100 * Gst.MSECOND)
            if sample is not None:
                caps = caps or sample.get_caps()
                raw.append(sample.get_buffer())
                continue
            message = bus.pop_filtered(Gst.MessageType.ERROR)
            if message is not None:
                error, _debug = message.parse_error()
                raise ClipError(f"{path}: {error.message}")
            if GstApp.AppSink.is_eos(sink):
                break
            if GLib.get_monotonic_time() > deadline:
                raise ClipError(f"{path}: demuxing took longer than {LOAD_TIMEOUT_S:.0f} s")
    finally:
        pipeline.set_state(Gst.State.NULL)
    if not raw or caps is None:
        raise ClipError(f"{path}: no H.264 or H.265 video track")
    return _rebase(path, caps, raw)


def _valid(ts: int) -> bool:
    return bool(ts != Gst.CLOCK_TIME_NONE)


def _new_buffer(buf: Any) -> Any:
    """Return a new buffer sharing ``buf``'s memory, with its own timestamps and flags.

    ``Gst.Buffer.copy()`` in PyGObject is the boxed copy, which only adds a reference: the
    timestamps set on the "copy" would change the original too.
    """
    flags = (
        Gst.BufferCopyFlags.FLAGS
        | Gst.BufferCopyFlags.TIMESTAMPS
        | Gst.BufferCopyFlags.META
        | Gst.BufferCopyFlags.MEMORY
    )
    return buf.copy_region(flags, 0, buf.get_size())


def _rebase(path: Path, caps: Any, raw: list[Any]) -> Clip:
    """Shift timestamps so that the clip starts at 0 and measure one pass of it."""
    starts = [b.dts if _valid(b.dts) else b.pts for b in raw]
    base = min(ts for ts in starts if _valid(ts))
    units: list[Any] = []
    end = 0
    for buf in raw:
        unit = _new_buffer(buf)
        if _valid(buf.pts):
            unit.pts = buf.pts - base
        if _valid(buf.dts):
            unit.dts = buf.dts - base
        anchor = unit.pts if _valid(unit.pts) else unit.dts
        if _valid(anchor):
            end = max(end, anchor + (buf.duration if _valid(buf.duration) else 0))
        units.append(unit)
    if end == 0:
        raise ClipError(f"{path}: video track has no timestamps")
    if not _valid(raw[-1].duration):
        end += end // max(len(units) - 1, 1)  # no duration: assume one average frame
    return Clip(path=path, caps=caps, units=units, period_ns=end)


@dataclass
class Feeder:
    """Push one client's copy of a clip into its pipeline's appsrc, looping if asked."""

    clip: Clip
    loop: bool
    index: int = 0
    offset_ns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_need_data(self, appsrc: Any, _length: int) -> None:
        """Push the next access unit; at the end loop with shifted timestamps or send EOS."""
        with self.lock:
            if self.index >= len(self.clip.units):
                if not self.loop:
                    GstApp.AppSrc.end_of_stream(appsrc)
                    return
                self.index = 0
                self.offset_ns += self.clip.period_ns
            unit = _new_buffer(self.clip.units[self.index])
            self.index += 1
            if _valid(unit.pts):
                unit.pts += self.offset_ns
            if _valid(unit.dts):
                unit.dts += self.offset_ns
        GstApp.AppSrc.push_buffer(appsrc, unit)


def make_factory(clip: Clip, *, loop: bool) -> Any:
    """Return a media factory that gives each client its own feeder over ``clip``."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        "( appsrc name=src format=time stream-type=stream is-live=false max-buffers=2 ! "
        f"{PAYLOADERS[clip.media_type]} )"
    )
    factory.set_shared(False)  # every client starts at the clip's first frame

    def on_media_configure(_factory: Any, media: Any) -> None:
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", clip.caps)
        appsrc.connect("need-data", Feeder(clip=clip, loop=loop).on_need_data)

    factory.connect("media-configure", on_media_configure)
    return factory


def parse_mount(text: str) -> tuple[str, Path]:
    """Parse ``/cam1=/path/clip.mp4`` into the mount point and the file.

    Raises:
        argparse.ArgumentTypeError: no ``=``, or the mount does not start with ``/``.
    """
    mount, sep, file = text.partition("=")
    if not sep or not file:
        raise argparse.ArgumentTypeError(f"{text!r}: expected /MOUNT=FILE")
    if not mount.startswith("/") or mount == "/" or " " in mount:
        raise argparse.ArgumentTypeError(f"{text!r}: mount must look like /cam1")
    return mount, Path(file)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; argparse exits 2 on a usage error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--mount",
        type=parse_mount,
        action="append",
        required=True,
        metavar="/MOUNT=FILE",
        help="serve FILE (MP4, H.264 or H.265) at rtsp://127.0.0.1:PORT/MOUNT; repeatable",
    )
    parser.add_argument("--loop", action="store_true", help="repeat each clip forever")
    parser.add_argument("--user", help="require RTSP basic auth with this user name")
    parser.add_argument(
        "--password-env", metavar="VAR", help="environment variable holding the password"
    )
    args = parser.parse_args(argv)
    mounts = [m for m, _ in args.mount]
    if len(set(mounts)) != len(mounts):
        parser.error("each --mount point may be given once")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be within 0..65535")
    if (args.user is None) != (args.password_env is None):
        parser.error("--user and --password-env go together")
    if args.password_env is not None and args.password_env not in os.environ:
        parser.error(f"--password-env: variable {args.password_env} is not set")
    return args


def make_auth(user: str, password: str) -> tuple[Any, Any]:
    """Build basic auth for one user and the permissions that let that user play."""
    role = "viewer"
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, role)
    auth = GstRtspServer.RTSPAuth()
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_permission_for_role(role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    permissions.add_permission_for_role(role, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, True)
    return auth, permissions


def main(argv: list[str] | None = None) -> int:
    """Serve the mounts until SIGTERM or SIGINT; return the exit status."""
    args = parse_args(argv)
    Gst.init(None)
    missing = [e for e in ("qtdemux", "appsrc", "appsink", "h264parse", "rtph264pay")
               if Gst.ElementFactory.find(e) is None]  # fmt: skip
    if missing:
        sys.stderr.write(
            f"rtsp_server: GStreamer elements missing: {', '.join(missing)}; "
            f"apt-get install {APT_PACKAGES}\n"
        )
        return EXIT_MISSING_DEPENDENCY

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    permissions: Any = None
    if args.user is not None:
        auth, permissions = make_auth(args.user, os.environ[args.password_env])
        server.set_auth(auth)

    mount_points = server.get_mount_points()
    for mount, path in args.mount:
        try:
            clip = load_clip(path)
        except ClipError as exc:
            sys.stderr.write(f"rtsp_server: {mount}: {exc}\n")
            return EXIT_BAD_CLIP
        factory = make_factory(clip, loop=args.loop)
        if permissions is not None:
            factory.set_permissions(permissions)
        mount_points.add_factory(mount, factory)

    if server.attach(None) == 0:
        sys.stderr.write(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}\n")
        return EXIT_BIND_FAILED

    loop = GLib.MainLoop()

    def stop(_signum: int) -> bool:
        loop.quit()
        return False  # GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signum, stop, signum)

    def cleanup_sessions() -> bool:
        server.get_session_pool().cleanup()
        return True  # GLib.SOURCE_CONTINUE

    GLib.timeout_add_seconds(SESSION_CLEANUP_S, cleanup_sessions)

    sys.stdout.write(f"READY rtsp://127.0.0.1:{server.get_bound_port()}\n")
    sys.stdout.flush()
    loop.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
