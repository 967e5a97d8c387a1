"""Memory per camera of the agent's readers: decoder threads, demuxer options, decode mode.

N cameras are served over RTSP on loopback by ``scripts/tools/rtsp_server.py`` (bench_ingest's
clips: H.264, ``--profiles``, default ``720p25-gop25``, a keyframe every second, 2 Mbit/s).
For each variant (``--variants``) and each N (``--counts``) a fresh child process runs N
``agent.ingest.reader.CameraReader`` threads with one consumer thread taking every frame
slot (the detect thread's place; frames are dropped), waits until every camera decodes and
has measured its keyframe interval (so ``decode: auto`` has settled), holds ``--seconds``
more, and reports its RSS (VmRSS, median of the hold's last samples), peak (VmHWM),
anonymous memory, threads, CPU and frames analysed per camera. The slope of RSS over N is
the memory one more camera costs; the child's RSS before any reader is its base.

A variant is camera settings (``cameras.<id>.*`` in the agent's config, applied by the real
reader); for what the config does not have, FFmpeg options passed to ``av.open`` on top of
the reader's own, environment variables of the child, the old BGR conversion put back, or
the agent's malloc setting:

``today``        ``decoder_threads: auto`` and PyAV's ``frame.to_ndarray()``: what the reader did
                 before (FFmpeg's one slice thread per core plus one per camera, and a new
                 converter per analysed frame with a thread per core of its own);
``threads-1-old-convert``  ``decoder_threads: 1``, the old conversion;
``threads-1``    ``decoder_threads: 1`` and the reader's own converter, reused (the default);
``probe-small``  threads 1 + ``probesize`` 32 KiB and ``analyzeduration`` 0.5 s;
``rtsp-buffers`` threads 1 + ``reorder_queue_size`` 0, ``buffer_size`` 64 KiB, ``max_delay`` 0
                 (the RTSP demuxer's own buffers; with TCP interleaving it keeps no reorder
                 queue and opens no UDP socket, so these are expected to change nothing);
``decode-all``   threads 1 + ``decode: all``: every frame decoded, to show what keyframes-only
                 decoding (``decode: auto`` at a 1 s GOP) saves;
``arena-2``      threads 1 + ``MALLOC_ARENA_MAX=2``: glibc's per-thread malloc arenas capped;
``mmap-1m``      threads 1 + ``agent.ingest.memory.map_large_buffers()`` (what the agent calls
                 at start: blocks of 1 MiB and more mapped, and unmapped when freed);
``udp``          threads 1 over RTP/UDP (a 500-packet reorder queue per stream): on request.

``--agent`` measures the whole agent instead (``scripts/bench/bench.py``'s agent child, its
face clip and a local mosquitto), once per ``AGENT_VARIANTS`` entry and N, rounds interleaved:
RSS (median and max over the window), and at the window's end where it sits: by kind of
mapping (libraries and files, the main heap, the other malloc arenas' heaps, thread stacks,
the rest: blocks malloc mapped and onnxruntime's arenas), glibc's totals (mallinfo2) and the
BGR frames the service holds. A variant sets ``MALLOC_*`` in the child's environment, or
onnxruntime ``SessionOptions`` on every session the agent opens, or trims malloc. The
variants that set both levers explicitly (``before``, ``arenas-2-only``, ...) compare the
same whatever the code does now. ``--detect-memory`` runs the detectors alone (``--workers``
sharing sessions, 16 frames a turn) per variant in fresh children; ``--detect-cpu`` times
``detect_batch`` on 16 frames under each variant's settings in one process, interleaved.

    .venv/bin/python scripts/bench/bench_decoder_memory.py                # ~4-6 min, 2 cores
    .venv/bin/python scripts/bench/bench_decoder_memory.py --variants today,threads-1 \\
        --counts 1,4 --profiles 1080p25-gop50 --seconds 4 --json /tmp/mem.json
    .venv/bin/python scripts/bench/bench_decoder_memory.py --agent --counts 1,16 --rounds 2 \\
        --variants before,arenas-2-only,no-pattern-only,arenas-2-no-pattern   # ~20 min
    .venv/bin/python scripts/bench/bench_decoder_memory.py --detect-cpu --rounds 12 \\
        --variants agent,ort-no-pattern,ort-no-arena
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROFILES = "720p25-gop25"
DEFAULT_COUNTS = "1,4,8,16"
READY_TIMEOUT_S = 90.0
SAMPLE_S = 0.25


@dataclass(frozen=True)
class Variant:
    """Reader settings to measure: camera config, extra ``av.open`` options, environment."""

    name: str
    camera: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    old_convert: bool = False  # PyAV's frame.to_ndarray(): a converter per frame
    map_large: bool = False  # agent.ingest.memory.map_large_buffers(), as the agent does


VARIANTS = {
    v.name: v
    for v in (
        Variant("today", {"decoder_threads": "auto"}, old_convert=True),
        Variant("threads-1-old-convert", {"decoder_threads": 1}, old_convert=True),
        Variant("threads-1", {"decoder_threads": 1}),
        Variant(
            "probe-small",
            {"decoder_threads": 1},
            {"probesize": "32768", "analyzeduration": "500000"},
        ),
        Variant(
            "rtsp-buffers",
            {"decoder_threads": 1},
            {"reorder_queue_size": "0", "buffer_size": "65536", "max_delay": "0"},
        ),
        Variant("decode-all", {"decoder_threads": 1, "decode": "all"}),
        Variant("arena-2", {"decoder_threads": 1}, env={"MALLOC_ARENA_MAX": "2"}),
        Variant("mmap-1m", {"decoder_threads": 1}, map_large=True),
        Variant("udp", {"decoder_threads": 1, "transport": "udp"}),
    )
}
DEFAULT_VARIANTS = (
    "today,threads-1-old-convert,threads-1,probe-small,rtsp-buffers,decode-all,arena-2,mmap-1m"
)


class BenchError(RuntimeError):
    """The benchmark cannot run (a child that failed, a server that died)."""


# --------------------------------------------------------------------------- child


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon (MB) and Threads of this process, from /proc/self/status."""
    wanted = {"VmRSS", "VmHWM", "RssAnon", "Threads"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            number = float(value.split()[0])
            out[key] = number if key == "Threads" else number / 1024
    return out


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class Point:
    """What one child measured."""

    variant: str
    profile: str
    cameras: int
    base_mb: float = 0.0
    rss_mb: float = 0.0
    peak_mb: float = 0.0
    anon_mb: float = 0.0
    threads: int = 0
    cpu_per_camera: float = 0.0  # share of one core
    analysed_per_camera_s: float = 0.0
    first_frame_s: float = 0.0  # median over the cameras, from start to first frame
    ready_s: float = 0.0
    decoder_threads: list[int] = field(default_factory=list)
    decode_modes: list[str] = field(default_factory=list)
    reconnects: int = 0
    error: str = ""


def child(argv: Sequence[str]) -> int:
    """Run one point and print its result as the last line of stdout (JSON)."""
    ap = argparse.ArgumentParser(prog="bench_decoder_memory.py --child")
    ap.add_argument("--child", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--cameras", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    a = ap.parse_args(argv)
    variant = VARIANTS[a.child]
    point = Point(variant.name, a.profile, a.cameras)
    try:
        _measure(point, variant, a.url, a.seconds)
    except BenchError as exc:
        point.error = str(exc)
    print(json.dumps(asdict(point)), flush=True)
    return 0


def _measure(point: Point, variant: Variant, url: str, seconds: float) -> None:
    import logging  # noqa: PLC0415

    import av  # noqa: PLC0415

    from agent.config import CameraConfig  # noqa: PLC0415
    from agent.ingest.frames import FrameSlot  # noqa: PLC0415
    from agent.ingest.memory import map_large_buffers  # noqa: PLC0415
    from agent.ingest.reader import CameraReader  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if variant.options:
        plain_open = av.open

        def open_with_extras(*args: Any, **kwargs: Any) -> Any:
            kwargs["options"] = {**kwargs.get("options", {}), **variant.options}
            return plain_open(*args, **kwargs)

        av.open = open_with_extras
    if variant.old_convert:

        def old_convert(_reader: CameraReader, frame: Any) -> Any:
            return frame.to_ndarray(format="bgr24")

        CameraReader._to_bgr = old_convert  # type: ignore[method-assign,assignment]
    if variant.map_large and not map_large_buffers():
        raise BenchError("map_large_buffers() did not apply (not glibc, or the env sets it)")
    config = CameraConfig(url=url, detect_interval=1.0, **variant.camera)
    point.base_mb = round(proc_status()["VmRSS"], 1)
    stop = threading.Event()
    wake = threading.Event()
    slots = [FrameSlot(wake) for _ in range(point.cameras)]
    readers = [
        CameraReader(f"cam-{i + 1}", config, stop=stop, slot=slot) for i, slot in enumerate(slots)
    ]
    analysed = [0] * point.cameras
    first: list[float | None] = [None] * point.cameras

    def consume() -> None:
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            for i, slot in enumerate(slots):
                frame = slot.take()
                if frame is not None:
                    analysed[i] += 1
                    if first[i] is None:
                        first[i] = frame.mono

    consumer = threading.Thread(target=consume, name="bench-consumer", daemon=True)
    started = time.monotonic()
    for reader in readers:
        reader.start()
    consumer.start()
    try:
        while not all(
            f is not None and r.stats.gop_seconds is not None
            for f, r in zip(first, readers, strict=True)
        ):
            if time.monotonic() - started > READY_TIMEOUT_S:
                late = sum(1 for f in first if f is None)
                raise BenchError(f"{late} camera(s) without a frame after {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        point.ready_s = round(time.monotonic() - started, 2)
        point.first_frame_s = round(statistics.median(f - started for f in first if f), 2)
        c0, t0, n0 = _cpu_seconds(), time.monotonic(), sum(analysed)
        samples: list[float] = []
        while time.monotonic() - t0 < seconds:
            time.sleep(SAMPLE_S)
            samples.append(proc_status()["VmRSS"])
        c1, t1, n1 = _cpu_seconds(), time.monotonic(), sum(analysed)
        status = proc_status()
        point.rss_mb = round(statistics.median(samples[-max(1, len(samples) // 3) :]), 1)
        point.peak_mb = round(status["VmHWM"], 1)
        point.anon_mb = round(status["RssAnon"], 1)
        point.threads = int(status["Threads"])
        point.cpu_per_camera = round((c1 - c0) / (t1 - t0) / point.cameras, 4)
        point.analysed_per_camera_s = round((n1 - n0) / (t1 - t0) / point.cameras, 3)
        point.decoder_threads = sorted({r.stats.decoder_threads for r in readers})
        point.decode_modes = sorted({r.stats.decode_mode for r in readers})
        point.reconnects = sum(r.stats.reconnects for r in readers)
    finally:
        stop.set()
        wake.set()
        for reader in readers:
            reader.join(5)


# --------------------------------------------------------------------------- parent


def run_point(variant: Variant, profile: str, url: str, n: int, seconds: float) -> Point:
    """Measure one point in a fresh child process."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--child", variant.name,
        "--profile", profile, "--url", url, "--cameras", str(n), "--seconds", str(seconds),
    ]  # fmt: skip
    env = {**os.environ, **variant.env}
    timeout = READY_TIMEOUT_S + seconds + 60
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO, env=env
        )
    except subprocess.TimeoutExpired:
        return Point(variant.name, profile, n, error=f"child did not finish in {timeout:.0f} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout)[-1500:]
        return Point(variant.name, profile, n, error=f"child failed: {tail}")
    return Point(**json.loads(lines[-1]))


def slope(points: Sequence[Point]) -> float | None:
    """Least-squares MB of RSS per camera over the points that worked."""
    good = [(p.cameras, p.rss_mb) for p in points if not p.error]
    if len({n for n, _ in good}) < 2:
        return None
    mean_n = sum(n for n, _ in good) / len(good)
    mean_r = sum(r for _, r in good) / len(good)
    num = sum((n - mean_n) * (r - mean_r) for n, r in good)
    den = sum((n - mean_n) ** 2 for n, _ in good)
    return num / den


def steps(points: Sequence[Point]) -> list[str]:
    """MB per camera between consecutive N, e.g. ``1-4: 38.2``."""
    good = [p for p in points if not p.error]
    return [
        f"{a.cameras}-{b.cameras}: {(b.rss_mb - a.rss_mb) / (b.cameras - a.cameras):.1f}"
        for a, b in itertools.pairwise(good)
    ]


def describe(variant: Variant) -> str:
    """The variant's settings in one line."""
    parts = [f"{k}: {v}" for k, v in variant.camera.items()]
    parts += [f"{k}={v}" for k, v in variant.options.items()]
    parts += [f"env {k}={v}" for k, v in variant.env.items()]
    if variant.map_large:
        parts.append("mallopt(M_MMAP_THRESHOLD, 1 MiB) as the agent sets it")
    if variant.old_convert:
        parts.append("BGR by frame.to_ndarray() (a converter per frame, a thread per core)")
    else:
        parts.append("BGR by the reader's own converter (decoder_threads threads)")
    return ", ".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--profiles", default=DEFAULT_PROFILES, help="HEIGHTpFPS-gopFRAMES,...")
    ap.add_argument(
        "--agent", action="store_true", help="the whole agent (bench.py's) per AGENT_VARIANTS"
    )
    ap.add_argument(
        "--variants",
        help=f"readers: of {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS}); with --agent: "
        f"of {', '.join(AGENT_VARIANTS)} (default {DEFAULT_AGENT_VARIANTS})",
    )
    ap.add_argument(
        "--counts", help=f"camera counts ({DEFAULT_COUNTS}; --agent {DEFAULT_AGENT_COUNTS})"
    )
    ap.add_argument("--seconds", type=float, help="hold after every camera decodes (6; --agent 10)")
    ap.add_argument(
        "--detect-cpu",
        action="store_true",
        help="time detect_batch under the --agent variants' onnxruntime settings instead",
    )
    ap.add_argument(
        "--detect-memory",
        action="store_true",
        help="RSS of the detectors alone under the --agent variants' onnxruntime settings",
    )
    ap.add_argument(
        "--workers", type=int, default=2, help="--detect-memory: detectors (the agent's auto: 2)"
    )
    ap.add_argument(
        "--rounds", type=int, default=1, help="--agent: repeat every point, interleaved"
    )
    ap.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "mclz-bench-clips")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    args.agent = args.agent or args.detect_cpu or args.detect_memory
    known = AGENT_VARIANTS if args.agent else VARIANTS
    if args.variants is None:
        args.variants = DEFAULT_AGENT_VARIANTS if args.agent else DEFAULT_VARIANTS
    if args.counts is None:
        args.counts = DEFAULT_AGENT_COUNTS if args.agent else DEFAULT_COUNTS
    if args.seconds is None:
        args.seconds = 10.0 if args.agent else 6.0
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variant_list) - set(known))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        args.count_list = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        ap.error("--counts: whole numbers, e.g. 1,4,8,16")
    if not args.count_list or args.count_list[0] < 1:
        ap.error("--counts: at least one camera")
    return args


# --------------------------------------------------------------------------- whole agent


@dataclass(frozen=True)
class AgentVariant:
    """Process-wide memory settings to measure on the whole agent (``--agent``).

    ``env`` is the child's environment (glibc reads ``MALLOC_*`` at start); ``ort`` sets
    ``onnxruntime.SessionOptions`` attributes on every session the agent opens (detector,
    YuNet, mask classifier), after the agent's own; ``trim_s`` calls ``malloc_trim(0)`` that
    often from a thread of the bench, to show what the arenas hold free.
    """

    name: str
    env: dict[str, str] = field(default_factory=dict)
    ort: dict[str, bool] = field(default_factory=dict)
    trim_s: float = 0.0
    #: One CPU arena for every session (``session.use_env_allocators``), registered on
    #: onnxruntime's environment, growing by what is asked (kSameAsRequested), not doubling.
    shared_arena: bool = False
    #: Model file names ``ort`` applies to (all when empty), to find which session holds what.
    only: tuple[str, ...] = ()


#: glibc's own arena limit is 8 per core: 16 on the 2-core box, which is what the agent had
#: before it capped them; as an environment variable it wins over the agent's mallopt.
GLIBC_DEFAULT_ARENAS = str(8 * (os.cpu_count() or 1))

AGENT_VARIANTS = {
    v.name: v
    for v in (
        AgentVariant("agent"),
        AgentVariant("arenas-glibc", env={"MALLOC_ARENA_MAX": GLIBC_DEFAULT_ARENAS}),
        AgentVariant("arenas-1", env={"MALLOC_ARENA_MAX": "1"}),
        AgentVariant("arenas-2", env={"MALLOC_ARENA_MAX": "2"}),
        AgentVariant("arenas-4", env={"MALLOC_ARENA_MAX": "4"}),
        AgentVariant("trim-1s", trim_s=1.0),
        AgentVariant("ort-arena-on", ort={"enable_cpu_mem_arena": True}),
        AgentVariant("ort-no-arena", ort={"enable_cpu_mem_arena": False}),
        AgentVariant("ort-no-pattern", ort={"enable_mem_pattern": False}),
        AgentVariant(
            "ort-neither", ort={"enable_cpu_mem_arena": False, "enable_mem_pattern": False}
        ),
        AgentVariant(
            "ort-no-arena-yunet",
            ort={"enable_cpu_mem_arena": False},
            only=("yunet_n_dynamic.onnx",),
        ),
        AgentVariant(
            "ort-no-arena-detector", ort={"enable_cpu_mem_arena": False}, only=("model.int8.onnx",)
        ),
        AgentVariant(
            "ort-no-pattern-face",
            ort={"enable_mem_pattern": False},
            only=("yunet_n_dynamic.onnx", "mask_classifier.onnx"),
        ),
        AgentVariant(
            "ort-no-pattern-detector", ort={"enable_mem_pattern": False}, only=("model.int8.onnx",)
        ),
        AgentVariant("ort-shared-arena", shared_arena=True),
        AgentVariant("ort-shared-no-pattern", ort={"enable_mem_pattern": False}, shared_arena=True),
        # Explicit on both levers, whatever the code does now: the side-by-side comparison.
        AgentVariant(
            "arenas-2-only", env={"MALLOC_ARENA_MAX": "2"}, ort={"enable_mem_pattern": True}
        ),
        AgentVariant(
            "no-pattern-only",
            env={"MALLOC_ARENA_MAX": GLIBC_DEFAULT_ARENAS},
            ort={"enable_mem_pattern": False},
        ),
        AgentVariant(
            "arenas-2-no-pattern",
            env={"MALLOC_ARENA_MAX": "2"},
            ort={"enable_mem_pattern": False},
        ),
        AgentVariant(
            "before",
            env={"MALLOC_ARENA_MAX": GLIBC_DEFAULT_ARENAS},
            ort={"enable_cpu_mem_arena": True, "enable_mem_pattern": True},
        ),
    )
}
DEFAULT_AGENT_VARIANTS = "before,agent"
DEFAULT_AGENT_COUNTS = "1,16"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2, in order
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def malloc_totals() -> dict[str, float]:
    """glibc's totals over every arena (MB): held from the system by the arenas, in use
    there, free there (kept, not returned), and in mapped blocks; empty without glibc 2.33+."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    mb = 1024 * 1024
    return {
        "arena_held": round(info.arena / mb, 1),
        "arena_used": round(info.uordblks / mb, 1),
        "arena_free": round(info.fordblks / mb, 1),
        "mapped_blocks": round(info.hblkhd / mb, 1),
        "mapped_count": float(info.hblks),
    }


#: glibc gives each extra arena heaps of 64 MiB, aligned to their size (HEAP_MAX_SIZE).
_ARENA_HEAP = 64 * 1024 * 1024


def rss_by_kind() -> dict[str, float]:
    """Resident MB of this process by kind of mapping, from /proc/self/smaps.

    ``files``: code and data of libraries and mapped files; ``heap``: the main arena;
    ``arenas``: the heaps of the other malloc arenas (anonymous, 64 MiB aligned), with their
    count in ``arena_heaps``; ``stacks``: anonymous mappings of a thread stack's size;
    ``anon``: the rest (blocks malloc mapped, onnxruntime's and numpy's large buffers).
    """
    stack_kb = int(subprocess.run(["sh", "-c", "ulimit -s"], capture_output=True, text=True,
                                  check=False).stdout.strip() or 8192)  # fmt: skip
    out = dict.fromkeys(("files", "heap", "arenas", "stacks", "anon"), 0.0)
    heaps = 0
    kind = "anon"
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and len(head) >= 5:
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5] if len(head) > 5 else ""
            if path.startswith("/"):
                kind = "files"
            elif path == "[heap]":
                kind = "heap"
            elif path:
                kind = "anon"  # [stack], [vvar], ...
            elif start % _ARENA_HEAP == 0 and end - start <= _ARENA_HEAP:
                kind, heaps = "arenas", heaps + 1
            elif end - start == stack_kb * 1024:
                kind = "stacks"
            else:
                kind = "anon"
        elif head[0] == "Rss:":
            out[kind] += int(head[1]) / 1024
    return {**{k: round(v, 1) for k, v in out.items()}, "arena_heaps": float(heaps)}


def frames_held(running: Any) -> dict[str, float]:
    """MB of BGR frames the agent's service holds now: the newest analysed frame per camera
    (``Cameras.last_frames``) and frames waiting in the readers' slots."""
    cameras = running.cameras
    last = sum(f.image.nbytes for f in cameras.last_frames.values())
    waiting = sum(
        s._frame.image.nbytes for s in cameras.slots.values() if getattr(s, "_frame", None)
    )
    mb = 1024 * 1024
    return {"last_frames": round(last / mb, 1), "slot_frames": round(waiting / mb, 1)}


@dataclass
class AgentPoint:
    """What one whole-agent child measured."""

    variant: str
    profile: str
    cameras: int
    rss_mb: float = 0.0  # median VmRSS over the measuring window
    rss_max_mb: float = 0.0
    peak_mb: float = 0.0
    cpu_cores: float = 0.0
    frames_per_camera_s: float = 0.0
    threads: int = 0
    by_kind: dict[str, float] = field(default_factory=dict)
    malloc: dict[str, float] = field(default_factory=dict)
    frames: dict[str, float] = field(default_factory=dict)
    ort_applied: list[str] = field(default_factory=list)
    error: str = ""


_SHARED_ARENA: list[bool] = []  # registered once per process


@contextlib.contextmanager
def tuned_sessions(variant: AgentVariant, applied: list[str]) -> Iterator[None]:
    """Within the block, every ``onnxruntime.InferenceSession`` opened uses the variant's
    settings on top of the options its caller gave; what each session reports back goes to
    ``applied``."""
    import onnxruntime as ort  # noqa: PLC0415

    settings = variant.ort
    if variant.shared_arena and not _SHARED_ARENA:
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                                   ort.OrtMemType.DEFAULT)  # fmt: skip
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        _SHARED_ARENA.append(True)
    plain = ort.InferenceSession

    class Tuned(plain):  # type: ignore[misc,valid-type]
        def __init__(self, path: Any, sess_options: Any = None, *args: Any, **kw: Any) -> None:
            options = sess_options if sess_options is not None else ort.SessionOptions()
            chosen = not variant.only or Path(str(path)).name in variant.only
            for key, value in settings.items() if chosen else ():
                setattr(options, key, value)
            if variant.shared_arena:
                options.add_session_config_entry("session.use_env_allocators", "1")
            super().__init__(path, options, *args, **kw)
            got = self.get_session_options()
            shared = variant.shared_arena and (
                got.get_session_config_entry("session.use_env_allocators") == "1"
            )  # the getter raises for a key never set
            said = [f"{k}={getattr(got, k)}" for k in settings] + (["env arena"] if shared else [])
            applied.append(f"{Path(str(path)).name}: {', '.join(said)}")

    ort.InferenceSession = Tuned
    try:
        yield
    finally:
        ort.InferenceSession = plain


def agent_child(argv: Sequence[str]) -> int:
    """Run the whole agent (scripts/bench/bench.py's child) under one variant; print JSON."""
    import bench  # noqa: PLC0415 - scripts/bench is on sys.path when run as a script

    from agent.service.agent import Agent  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="bench_decoder_memory.py --agent-child")
    ap.add_argument("--agent-child", required=True)
    for name in ("profile", "url", "broker"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--cameras", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--workdir", type=Path, required=True)
    a = ap.parse_args(argv)
    variant = AGENT_VARIANTS[a.agent_child]
    point = AgentPoint(variant.name, a.profile, a.cameras)
    tuned = tuned_sessions(variant, point.ort_applied)
    tuned.__enter__()  # for the whole child: the agent opens its sessions in child_agent
    samples: list[tuple[float, float]] = []
    done = threading.Event()
    end: list[float] = []

    def sample() -> None:
        trim = ctypes.CDLL(None).malloc_trim if variant.trim_s else None
        last_trim = time.monotonic()
        while not done.wait(SAMPLE_S):
            samples.append((time.monotonic(), proc_status()["VmRSS"]))
            if trim is not None and time.monotonic() - last_trim >= variant.trim_s:
                trim(0)
                last_trim = time.monotonic()

    plain_stop = Agent.request_stop

    def stop_after_snapshot(running: Any, *args: Any, **kwargs: Any) -> Any:
        if not end:  # the end of bench.child_agent's window: the agent still runs
            end.append(time.monotonic())
            point.by_kind = rss_by_kind()
            point.malloc = malloc_totals()
            point.frames = frames_held(running)
        return plain_stop(running, *args, **kwargs)

    Agent.request_stop = stop_after_snapshot  # type: ignore[method-assign,assignment]
    sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
    sampler.start()
    passed = [
        "--child", "agent", "--profile", a.profile, "--url", a.url, "--broker", a.broker,
        "--cameras", str(a.cameras), "--seconds", str(a.seconds), "--workdir", str(a.workdir),
        "--threads", str(a.threads), "--workers", a.workers, "--model", str(a.model),
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # bench.py's own child, with its own arguments
        bench.child_main(passed)
    lines = [ln for ln in printed.getvalue().splitlines() if ln.startswith("{")]
    if not lines:
        point.error = f"bench.py's agent child printed no result: {printed.getvalue()[-500:]}"
    else:
        result = json.loads(lines[-1])
        point.cpu_cores = result["cpu_cores"]
        point.frames_per_camera_s = result["frames_per_camera_s"]
        point.threads = result["threads"]
        point.error = "" if result["kept_up"] else result["why_not"]
    done.set()
    if end:
        window = [rss for t, rss in samples if end[0] - a.seconds <= t <= end[0]]
        if window:
            point.rss_mb = round(statistics.median(window), 1)
            point.rss_max_mb = round(max(window), 1)
    point.peak_mb = round(proc_status()["VmHWM"], 1)
    print(json.dumps(asdict(point)), flush=True)
    return 0


def run_agent_point(
    args: argparse.Namespace, variant: AgentVariant, profile: str, url: str, n: int
) -> AgentPoint:
    """Measure one whole-agent point in a fresh child process."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--agent-child", variant.name,
        "--profile", profile, "--url", url, "--broker", args.broker_url,
        "--cameras", str(n), "--seconds", str(args.seconds), "--workdir", str(args.workdir),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    timeout = READY_TIMEOUT_S + args.seconds + 120
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO,
            env={**env, **variant.env},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return AgentPoint(variant.name, profile, n, error=f"child did not finish in {timeout} s")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout)[-1500:]
        return AgentPoint(variant.name, profile, n, error=f"child failed: {tail}")
    return AgentPoint(**json.loads(lines[-1]))


def agent_main(args: argparse.Namespace) -> int:
    """``--agent``: the whole agent's RSS per variant and camera count, rounds interleaved."""
    import bench  # noqa: PLC0415
    from bench_ingest import cpu_model, loadavg, parse_profile  # noqa: PLC0415

    from mclz_testkit.broker import Broker  # noqa: PLC0415
    from mclz_testkit.rtsp import RtspServer  # noqa: PLC0415

    names = args.variant_list
    profile = parse_profile(args.profiles.split(",")[0])
    (REPO / ".bench").mkdir(exist_ok=True)
    args.workdir = Path(tempfile.mkdtemp(prefix="mclz-mem-", dir=REPO / ".bench"))
    print(f"# Whole-agent memory, {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, load {loadavg()} at start")
    print(
        f"- {profile.name}, bench.py's face clip; {args.seconds:g} s windows, "
        f"{args.rounds} round(s)"
    )
    clip = bench.face_clip(profile, Path(tempfile.gettempdir()) / "mclz-bench", 24.0)
    broker = Broker(args.workdir / "mosquitto").start()
    args.broker_url = broker.url
    server = RtspServer({f"/{profile.name}": clip}, loop=True).start()
    points: list[AgentPoint] = []
    try:
        url = server.url(f"/{profile.name}")
        for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits all
            for n in args.count_list:
                for name in names:
                    point = run_agent_point(args, AGENT_VARIANTS[name], profile.name, url, n)
                    points.append(point)
                    k, m, f = point.by_kind, point.malloc, point.frames
                    print(
                        f"| {name} | {n} | {point.rss_mb:.0f} | {point.rss_max_mb:.0f} | "
                        f"{point.cpu_cores:.2f} | {point.frames_per_camera_s:.2f} | "
                        f"{k.get('files', 0):.0f} / {k.get('heap', 0):.0f} / "
                        f"{k.get('arenas', 0):.0f} ({k.get('arena_heaps', 0):.0f}) / "
                        f"{k.get('stacks', 0):.0f} / {k.get('anon', 0):.0f} | "
                        f"{m.get('arena_held', 0):.0f} / {m.get('arena_free', 0):.0f} / "
                        f"{m.get('mapped_blocks', 0):.0f} | "
                        f"{f.get('last_frames', 0):.0f} + {f.get('slot_frames', 0):.0f} | "
                        f"{point.error[-200:]} |",
                        flush=True,
                    )
                    if point.ort_applied:
                        print(f"  ort: {'; '.join(sorted(set(point.ort_applied)))}", flush=True)
    finally:
        server.close()
        broker.stop()
    print(
        "\ncolumns: variant | N | RSS median MB | RSS max | cores | frames/s per camera | "
        "RSS by kind: files / main heap / arena heaps (count) / stacks / other anon | "
        "malloc: arena held / free in arenas / mapped blocks | frames held by the service: "
        "last_frames + slots |"
    )
    print(f"- load at end: {loadavg()}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
        print(f"- JSON: {args.json}")
    return 0


def detect_cpu_main(args: argparse.Namespace) -> int:
    """``--detect-cpu``: ``Detector.detect_batch`` on 16 frames of the clip, once per agent
    variant's onnxruntime settings, all detectors in this one process and their rounds
    interleaved; prints wall and CPU seconds per call and the ratio to the first variant."""
    import av  # noqa: PLC0415
    import bench  # noqa: PLC0415
    from bench_ingest import cpu_model, loadavg, parse_profile  # noqa: PLC0415

    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.ingest.memory import map_large_buffers  # noqa: PLC0415

    profile = parse_profile(args.profiles.split(",")[0])
    clip = bench.face_clip(profile, Path(tempfile.gettempdir()) / "mclz-bench", 24.0)
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % round(1.5 * profile.fps) == 0:  # a new picture every 3 s: both kinds
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == 16:
                break
    package = load_model_package(REPO / "models" / "default")
    map_large_buffers()  # as the agent: without an arena, every large tensor is mapped afresh
    detectors = {}
    for name in args.variant_list:
        applied: list[str] = []
        with tuned_sessions(AGENT_VARIANTS[name], applied):
            detectors[name] = Detector(package, backend="onnxruntime", threads=1)
        detectors[name].detect_batch(frames)  # warm: first-run allocations and patterns
        print(f"- {name}: {'; '.join(applied) or 'the agent as it is'}")
    walls: dict[str, list[float]] = {n: [] for n in detectors}
    cpus: dict[str, list[float]] = {n: [] for n in detectors}
    for _ in range(args.rounds):
        for name, detector in detectors.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            detector.detect_batch(frames)
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(_cpu_seconds() - c0)
    first = args.variant_list[0]
    base_wall, base_cpu = statistics.median(walls[first]), statistics.median(cpus[first])
    print(f"\n# detect_batch on 16 frames of {profile.name}, {args.rounds} rounds interleaved")
    print(f"- machine: {cpu_model()}, load {loadavg()}\n")
    print("| variant | wall ms (median) | CPU ms (median) | wall ratio | CPU ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in detectors:
        wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
        print(
            f"| {name} | {1000 * wall:.0f} | {1000 * cpu:.0f} | {wall / base_wall:.3f} | "
            f"{cpu / base_cpu:.3f} |"
        )
    return 0


def _clip_frames(profile_text: str, count: int) -> list[Any]:
    """``count`` BGR frames of bench.py's face clip, 1.5 s apart (masked and bare faces)."""
    import av  # noqa: PLC0415
    import bench  # noqa: PLC0415
    from bench_ingest import parse_profile  # noqa: PLC0415

    profile = parse_profile(profile_text)
    clip = bench.face_clip(profile, Path(tempfile.gettempdir()) / "mclz-bench", 24.0)
    frames = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % round(1.5 * profile.fps) == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
            if len(frames) == count:
                break
    return frames


def detect_memory_child(argv: Sequence[str]) -> int:
    """One variant's detectors alone: ``--workers`` sharing sessions (the agent's pool: 2 on 2
    cores), each running ``detect_batch`` on its share of 16 frames at once, ``--rounds`` times;
    prints RSS before loading, after loading and after the rounds (JSON)."""
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.ingest.memory import map_large_buffers  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="bench_decoder_memory.py --detect-child")
    ap.add_argument("--detect-child", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    a = ap.parse_args(argv)
    variant = AGENT_VARIANTS[a.detect_child]
    map_large_buffers()
    frames = _clip_frames(a.profile, 16)
    out: dict[str, Any] = {"variant": variant.name, "applied": []}
    out["before_mb"] = round(proc_status()["VmRSS"], 1)
    with tuned_sessions(variant, out["applied"]):
        first = Detector(load_model_package(REPO / "models" / "default"), threads=1)
    detectors = [first, *(first.twin() for _ in range(a.workers - 1))]
    out["loaded_mb"] = round(proc_status()["VmRSS"], 1)
    samples = []
    n = len(detectors)
    for _ in range(a.rounds):
        helpers = [
            threading.Thread(target=d.detect_batch, args=(frames[k::n],))
            for k, d in enumerate(detectors[1:], 1)
        ]
        for helper in helpers:
            helper.start()
        detectors[0].detect_batch(frames[0::n])
        for helper in helpers:
            helper.join()
        samples.append(proc_status()["VmRSS"])
    out["after_mb"] = round(statistics.median(samples[len(samples) // 2 :]), 1)
    out["peak_mb"] = round(proc_status()["VmHWM"], 1)
    out["malloc"] = malloc_totals()
    print(json.dumps(out), flush=True)
    return 0


def detect_memory_main(args: argparse.Namespace) -> int:
    """``--detect-memory``: each variant's detectors in a fresh child; RSS they add."""
    print(
        f"# Detector memory: {args.workers} worker(s) sharing sessions, 16 frames of "
        f"{args.profiles} per round, {args.rounds} rounds; MB over the child before loading"
    )
    print("\n| variant | loaded MB | after rounds MB | peak | malloc mapped blocks | settings |")
    print("|---|---:|---:|---:|---:|---|")
    for name in args.variant_list:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--detect-child", name,
            "--profile", args.profiles.split(",")[0], "--rounds", str(args.rounds),
            "--workers", str(args.workers),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        done = subprocess.run(
            command, capture_output=True, text=True, check=False, cwd=REPO,
            env={**env, **AGENT_VARIANTS[name].env}, timeout=900,
        )  # fmt: skip
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            print(f"| {name} | failed: {(done.stderr or done.stdout)[-300:]} |")
            continue
        r = json.loads(lines[-1])
        base = r["before_mb"]
        print(
            f"| {name} | +{r['loaded_mb'] - base:.0f} | +{r['after_mb'] - base:.0f} | "
            f"+{r['peak_mb'] - base:.0f} | {r['malloc'].get('mapped_blocks', 0):.0f} | "
            f"{'; '.join(sorted(set(r['applied'])))[:160]} |",
            flush=True,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one return per mode
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return child(argv)
    if "--agent-child" in argv:
        return agent_child(argv)
    if "--detect-child" in argv:
        return detect_memory_child(argv)
    args = parse_args(argv)
    if args.detect_cpu:
        return detect_cpu_main(args)
    if args.detect_memory:
        return detect_memory_main(args)
    if args.agent:
        return agent_main(args)
    import av  # noqa: PLC0415
    from bench_ingest import cpu_model, ensure_clip, loadavg, parse_profile  # noqa: PLC0415

    from mclz_testkit.rtsp import RtspServer  # noqa: PLC0415

    profiles = [parse_profile(p) for p in args.profiles.split(",") if p.strip()]
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"# Decoder memory per camera, {started}\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, load {loadavg()} at start")
    libavcodec = ".".join(map(str, av.library_versions["libavcodec"]))
    print(f"- PyAV {av.__version__}, libavcodec {libavcodec}")
    print(f"- {args.seconds:g} s hold per point after every camera decodes; counts {args.counts}")
    clips = {p.name: ensure_clip(p, args.clips, args.clip_seconds) for p in profiles}
    server = RtspServer({f"/{n}": c for n, c in clips.items()}, loop=True).start()
    points: list[Point] = []
    summary: dict[str, dict[str, Any]] = {}
    try:
        for profile in profiles:
            url = server.url(f"/{profile.name}")
            print(
                f"\n## {profile.name}: {profile.width}x{profile.height}, keyframe every "
                f"{profile.gop_seconds:g} s\n"
            )
            head = " | ".join(f"N={n}" for n in args.count_list)
            print(
                f"| variant | {head} | MB per camera (fit) | steps | threads at "
                f"N={args.count_list[-1]} | decoder threads | % core per camera | "
                f"frames/s per camera | first frame s |"
            )
            print("|---|" + "---:|" * (len(args.count_list) + 1) + "---|" + "---:|" * 5)
            summary[profile.name] = {}
            for name in args.variant_list:
                variant = VARIANTS[name]
                mine = []
                for n in args.count_list:
                    point = run_point(variant, profile.name, url, n, args.seconds)
                    mine.append(point)
                    if point.error:
                        print(f"  {name} N={n}: {point.error[-300:]}", file=sys.stderr)
                    if not server.running:
                        raise BenchError(f"the RTSP server died:\n{server.stderr[-2000:]}")
                points += mine
                fit = slope(mine)
                last = mine[-1]
                cells = " | ".join("failed" if p.error else f"{p.rss_mb:.0f}" for p in mine)
                print(
                    f"| {name} | {cells} | {'-' if fit is None else f'{fit:.1f}'} | "
                    f"{'; '.join(steps(mine))} | {last.threads} | "
                    f"{','.join(map(str, last.decoder_threads))} | "
                    f"{100 * last.cpu_per_camera:.1f} | {last.analysed_per_camera_s:.2f} | "
                    f"{mine[0].first_frame_s:.2f} |",
                    flush=True,
                )
                summary[profile.name][name] = {
                    "settings": describe(variant),
                    "mb_per_camera": None if fit is None else round(fit, 2),
                    "base_mb": mine[0].base_mb,
                }
    finally:
        server.close()
    print("\nVariants:\n")
    for name in args.variant_list:
        print(f"- {name}: {describe(VARIANTS[name])}")
    print(f"\n- load at end: {loadavg()}")
    if args.json is not None:
        result = {
            "started": started,
            "machine": {
                "cpu": cpu_model(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "pyav": av.__version__,
            },
            "settings": {k: str(v) for k, v in vars(args).items()},
            "points": [asdict(p) for p in points],
            "summary": summary,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"- JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
