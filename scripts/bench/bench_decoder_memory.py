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

    .venv/bin/python scripts/bench/bench_decoder_memory.py                # ~4-6 min, 2 cores
    .venv/bin/python scripts/bench/bench_decoder_memory.py --variants today,threads-1 \\
        --counts 1,4 --profiles 1080p25-gop50 --seconds 4 --json /tmp/mem.json
"""

from __future__ import annotations

import argparse
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
from collections.abc import Sequence
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
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="camera counts (default 1,4,8,16)")
    ap.add_argument("--seconds", type=float, default=6.0, help="hold after every camera decodes")
    ap.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "mclz-bench-clips")
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variant_list) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    try:
        args.count_list = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    except ValueError:
        ap.error("--counts: whole numbers, e.g. 1,4,8,16")
    if not args.count_list or args.count_list[0] < 1:
        ap.error("--counts: at least one camera")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return child(argv)
    args = parse_args(argv)
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
