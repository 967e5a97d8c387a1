"""An RTSP camera on loopback (``scripts/tools/rtsp_server.py`` in a subprocess) and a reader."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote

import av

from mclz_testkit.clips import Image
from mclz_testkit.common import (
    LOOPBACK,
    REPO_ROOT,
    MissingDependencyError,
    ServiceError,
    kill_process,
    tail,
    terminate_process,
)

RTSP_SERVER_SCRIPT = REPO_ROOT / "scripts" / "tools" / "rtsp_server.py"
SYSTEM_PYTHON = Path("/usr/bin/python3")
RTSP_APT_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad"
)
# PyAV options for reading a camera in tests: TCP interleaving, 5 s socket timeout (in µs),
# and no frame-rate probing, which would otherwise read ~2 s of stream inside av.open().
RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000", "fpsprobesize": "0"}
_RTSP_EXIT_MISSING_DEPENDENCY = 3  # rtsp_server.py's exit status for a missing GStreamer


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
            f"{tail(done.stderr.decode(errors='replace'), 5)}"
        )


class RtspServer:
    """``scripts/tools/rtsp_server.py`` in a subprocess: a camera serving clips on loopback.

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
            kill_process(self._proc)
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
                kill_process(self._proc)
                raise ServiceError(
                    f"rtsp_server.py not READY within {timeout:.0f} s:\n{tail(self.stderr)}"
                )
            ready = _wait_readable(fd, min(remaining, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if chunk:
                    buf += chunk
                    continue
            if self._proc.poll() is not None:
                err = tail(self.stderr)
                if self._proc.returncode == _RTSP_EXIT_MISSING_DEPENDENCY:
                    raise MissingDependencyError(err)
                raise ServiceError(
                    f"rtsp_server.py exited with {self._proc.returncode} before READY:\n{err}"
                )
        return buf.split(b"\n", 1)[0].decode(errors="replace").strip()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM (resuming it if paused) and wait for it to exit."""
        if self._proc is not None:
            terminate_process(self._proc, timeout)
            self._close_pipes()

    def kill(self) -> None:
        """Kill the server with SIGKILL: the camera dies and its connections drop."""
        if self._proc is not None:
            kill_process(self._proc)
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
