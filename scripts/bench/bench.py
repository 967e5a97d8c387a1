"""How many cameras one box handles: the whole agent against the usual alternatives.

N cameras are served over RTSP on loopback by ``scripts/tools/rtsp_server.py`` (H.264, 25 fps,
``--profiles``, default ``1080p25-gop50`` and ``720p25-gop25``: a keyframe every 2 s, as many
NVRs are set, and every 1 s). The clip shows held-out pictures of the facemask dataset (a
person without a mask for 3 s, then one with a mask for 3 s, four times), with sensor noise
on every frame so P-frames carry data as a camera's do. Each method must look at one frame
per second per camera with the default model (``models/default``, input 416); N grows
(``--counts``) until it falls behind (below 0.9 analysed frames/s per camera, or more CPU
than ``--cores``).

``agent``
    the real agent (``agent.service.agent.Agent``: readers, detector, rules, evidence JPEGs,
    SQLite outbox, MQTT uplink to a local mosquitto) with the rule ``no_mask`` at
    ``min_duration 0``, so each unmasked person raises an alert (``--faces off``: the rule
    ``no_hat`` on ``head_bare`` instead, and the face stage does not run); frame gating is off (it
    would skip the still pictures and flatter the agent). Latency: the firing frame's decode
    time (``Frame.wall``) to the alert's commit in SQLite returning (fsync included).
``ffmpeg``
    the Frigate way: one ``ffmpeg -vf fps=1 -f rawvideo -pix_fmt bgr24`` process per camera,
    a reader thread per pipe, one thread running the same ONNX detector on the newest frames.
    Latency: frame read from the pipe to detections returned (no rules, no storage).
``common``
    the usual script: ``cv2.VideoCapture.read()`` of every frame, a thread per camera, one
    frame in 25 given to ``ultralytics`` ``YOLO(weights).predict`` (torch, the same trained
    network as ``.pt``); run by ``--train-python`` (the ``.venv-train`` with torch). Latency as
    for ffmpeg.
``floor``
    the compute floor: a bare PyAV demux per camera that decodes only the frames sampling
    needs (keyframes, or from a keyframe up to the sampled frame), then one inference per
    sampled frame on the same detector: what the agent's job costs with no bookkeeping.

The loopback camera server and the broker run at nice 10: on a real box the cameras and the
broker are other machines, and the agent's load governor, which judges the whole box's CPU,
counts niced work as room (``agent.detect.gate``). Every point runs in a fresh child process,
so RSS and threads are that method's own; CPU is
the child's (and its ffmpeg children's) CPU-seconds over the window, so other load on the
machine does not inflate it, though it can make a method fall behind. The detector uses
``--threads`` intra-op threads (default 1) and ``--workers`` detectors sharing each turn's frames
(default ``auto``: the cores / threads, as the agent's ``model.workers``; see
``agent.detect.pool``) in ``agent``, ``ffmpeg`` and ``floor``; torch uses its default (all
cores). ``--precisions fp32,int8`` runs those three once per detector variant (default
``auto``: the package's default variant); ``common`` runs torch's fp32 once.

    .venv/bin/python scripts/bench/bench.py                            # ~20 min on 2 cores
    .venv/bin/python scripts/bench/bench.py --profiles 720p25-gop25 --methods agent,floor \\
        --counts 1,4 --seconds 10 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

METHODS = ("agent", "ffmpeg", "common", "floor")
DEFAULT_PROFILES = "1080p25-gop50,720p25-gop25"
DEFAULT_COUNTS = "1,2,4,8,12,16,24,32,48,64"
#: NVR boxes analyse the cameras' sub-streams (main stream only for evidence): 640x360 and
#: D1 (704x576), a keyframe every 1 or 2 s. ``--profiles substreams`` runs these four.
SUBSTREAM_PROFILES = "360p25-gop25,360p25-gop50,704x576p25-gop25,704x576p25-gop50"
KEPT_UP = 0.9  # analysed frames/s per camera, of the 1/s asked for
HARNESS_NICE = 10  # the loopback cameras and broker: not the box's own work
READY_TIMEOUT_S = 60.0
HOLD_S = 3.0
CLIP_RECIPE = "faces-v1"
DEFAULT_WEIGHTS = (
    REPO / "runs" / "mclz-v1-n416" / "weights" / "best.pt",
    REPO / "models" / "checkpoints" / "mclz-v1-n416" / "last.pt",
)


class BenchError(RuntimeError):
    """The benchmark cannot run (a missing tool, a child that failed)."""


# --------------------------------------------------------------------------- clips


def face_clip(profile: Any, directory: Path, seconds: float) -> Path:
    """The cached clip of ``profile`` (bench_ingest.Profile) showing people at a counter."""
    import av  # noqa: PLC0415
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from mclz_testkit.clips import _letterbox, held_out_faces  # noqa: PLC0415

    path = directory / f"{profile.name}-{profile.kbps}k-{seconds:g}s-{CLIP_RECIPE}.mp4"
    if path.is_file():
        return path
    bare = held_out_faces({"without_mask"})
    masked = held_out_faces({"with_mask"})
    if len(bare) < 4 or len(masked) < 4:
        raise BenchError("../shared/datasets/facemask is needed for the clips")
    order = [x for pair in zip(bare[:4], masked[:4], strict=False) for x in pair]
    directory.mkdir(parents=True, exist_ok=True)
    params = (
        f"keyint={profile.gop}:min-keyint={profile.gop}:scenecut=0:bframes=0:"
        f"bitrate={profile.kbps}:vbv-maxrate={profile.kbps}:vbv-bufsize={2 * profile.kbps}"
    )
    rng = np.random.default_rng(0)
    noise = [
        rng.normal(0, 3, (profile.height, profile.width, 3)).astype(np.int16) for _ in range(8)
    ]
    per_picture = round(HOLD_S * profile.fps)
    count = round(seconds * profile.fps)
    tmp = path.with_suffix(".part.mp4")
    from fractions import Fraction  # noqa: PLC0415

    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(
            "libx264",
            rate=profile.fps,
            options={"preset": "veryfast", "profile": "main", "x264-params": params},
        )
        stream.width, stream.height, stream.pix_fmt = profile.width, profile.height, "yuv420p"
        boxed = []
        for picture in order:
            image = cv2.imread(str(picture))
            if image is None:
                raise BenchError(f"{picture}: cannot read")
            picture_u8 = np.asarray(image, dtype=np.uint8)
            boxed.append(_letterbox(picture_u8, profile.width, profile.height).astype(np.int16))
        for i in range(count):
            base = boxed[(i // per_picture) % len(boxed)]
            img = np.clip(base + noise[i % len(noise)], 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, profile.fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- child: shared


def _proc_status(pid: int | str = "self") -> tuple[float, int]:
    """(RSS in MB, threads) of a process."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def _pid_cpu(pid: int) -> float:
    """CPU-seconds of a running process (0 when it is gone); no imports beyond the stdlib,
    since the 'common' child runs in the training venv."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu(children: Sequence[int] = ()) -> float:
    """CPU-seconds of this process plus the running ``children``."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime + sum(_pid_cpu(p) for p in children)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def per_camera_rate(times: Sequence[Sequence[float]], w0: float, w1: float) -> float:
    """Analysed frames/s per camera in the window [w0, w1], averaged over the cameras.

    Each camera's rate is taken between its first and last frame inside the window, so a
    window does not gain or lose a frame at its edges; a camera whose frames stopped more
    than two seconds before the end counts its frames over the whole window.
    """
    rates = []
    for stamps in times:
        inside = [t for t in stamps if w0 <= t <= w1]
        if len(inside) >= 3 and w1 - inside[-1] <= 2.0:
            rates.append((len(inside) - 1) / (inside[-1] - inside[0]))
        else:
            rates.append(len(inside) / (w1 - w0))
    return sum(rates) / len(rates) if rates else 0.0


class Slots:
    """The newest frame of each camera with its arrival time; a detect loop takes them."""

    def __init__(self, cameras: int) -> None:
        self.frames: list[tuple[float, Any] | None] = [None] * cameras
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def put(self, i: int, image: Any) -> None:
        with self.lock:
            self.frames[i] = (time.time(), image)
        self.wake.set()

    def take(self) -> list[tuple[int, float, Any]]:
        with self.lock:
            out = [(i, f[0], f[1]) for i, f in enumerate(self.frames) if f is not None]
            self.frames = [None] * len(self.frames)
        return out


class DetectLoop(threading.Thread):
    """Runs ``detect`` on every fresh frame; counts frames per camera and latency."""

    def __init__(self, slots: Slots, detect: Callable[[list[Any]], object]) -> None:
        super().__init__(name="bench-detect", daemon=True)
        self.slots, self.detect = slots, detect
        self.stop = threading.Event()
        self.counts = [0] * len(slots.frames)
        self.times: list[list[float]] = [[] for _ in slots.frames]
        self.latencies: list[tuple[float, float]] = []  # (done at, seconds)

    def run(self) -> None:
        while not self.stop.is_set():
            self.slots.wake.wait(0.5)
            self.slots.wake.clear()
            taken = self.slots.take()
            if not taken:
                continue
            self.detect([image for _, _, image in taken])
            done = time.time()
            for i, arrived, _ in taken:
                self.counts[i] += 1
                self.times[i].append(done)
                self.latencies.append((done, done - arrived))


@dataclass
class ChildResult:
    """What one child measured over its window."""

    method: str
    profile: str
    cameras: int
    seconds: float = 0.0
    cpu_cores: float = 0.0
    frames_per_camera_s: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_n: int = 0
    rss_mb: float = 0.0
    threads: int = 0
    startup_s: float = 0.0
    precision: str = "auto"
    workers: int = 1
    kept_up: bool = False
    why_not: str = ""
    notes: list[str] = field(default_factory=list)


def _finish(
    result: ChildResult,
    *,
    rate: float,
    cpu: float,
    window: float,
    latencies: Sequence[float],
    cores: float,
    pid: int | str = "self",
) -> ChildResult:
    result.seconds = round(window, 2)
    result.cpu_cores = round(cpu / window, 3)
    result.frames_per_camera_s = round(rate, 3)
    p50, p95 = _percentile(latencies, 0.5), _percentile(latencies, 0.95)
    result.latency_p50_ms = None if p50 is None else round(1000 * p50, 1)
    result.latency_p95_ms = None if p95 is None else round(1000 * p95, 1)
    result.latency_n = len(latencies)
    result.rss_mb, result.threads = _proc_status(pid)
    reasons = []
    if result.frames_per_camera_s < KEPT_UP:
        reasons.append(f"{result.frames_per_camera_s:.2f} frames/s per camera")
    if result.cpu_cores > cores:
        reasons.append(f"uses {result.cpu_cores:.2f} cores")
    result.kept_up = not reasons
    result.why_not = "; ".join(reasons)
    return result


def _wait(ready: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > READY_TIMEOUT_S:
            raise BenchError(f"{what}: not every camera delivered within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


# --------------------------------------------------------------------------- child: methods


def child_agent(a: argparse.Namespace) -> ChildResult:
    """The whole agent, in this process, on ``a.cameras`` copies of the stream."""
    import yaml  # noqa: PLC0415

    from agent.config import load_config  # noqa: PLC0415
    from agent.service.agent import Agent  # noqa: PLC0415

    result = ChildResult("agent", a.profile, a.cameras)
    work = Path(tempfile.mkdtemp(prefix="bench-agent-", dir=a.workdir))
    cameras = {
        f"cam-{i + 1}": {
            "url": a.url,
            "detect_interval": 1,
            "offline_after": 30,
            "gating": {"enabled": False},
            "picture": {"enabled": False},
            "view": {"tiles": [a.tile_cols, a.tile_rows]},
        }
        for i in range(a.cameras)
    }
    config = {
        "identity": {"city": "bench", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"url": a.broker},
        "cameras": cameras,
        "model": {
            "path": str(a.model),
            "threads": a.threads,
            "workers": a.workers if a.workers == "auto" else int(a.workers),
            "precision": a.precision,
        },
        "rules": {
            # --faces off: a rule on head labels only, so the face stage does not run.
            ("no_mask" if a.faces == "on" else "no_hat"): {
                "labels": ["face_no_mask"] if a.faces == "on" else ["head_bare"],
                "min_duration": 0,
                "end_after": 2,
                "cooldown": 0,
            }
        },
        "storage": {"state_dir": str(work / "state")},
        "heartbeat": {"interval": 10},
        "alarm": {"enabled": False},
        "logging": {"level": "warning"},
    }
    path = work / "agent.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    running = Agent(load_config(path), path)
    commits: list[tuple[float, float]] = []
    record_alert = running.outbox.record_alert

    def timed(record: Any, *args: Any, **kwargs: Any) -> Any:
        out = record_alert(record, *args, **kwargs)
        done = time.time()
        commits.append((done, done - record.raised_at))
        return out

    running.outbox.record_alert = timed  # type: ignore[method-assign,assignment]
    analysed: dict[str, list[float]] = {camera_id: [] for camera_id in cameras}
    analyse = running.pipeline.analyse

    def timed_analyse(frames: list[Any]) -> None:
        analyse(frames)
        done = time.time()
        for frame in frames:
            analysed[frame.camera_id].append(done)

    running.pipeline.analyse = timed_analyse  # type: ignore[method-assign]
    thread = threading.Thread(target=running.run, name="bench-agent", daemon=True)
    thread.start()
    try:
        result.startup_s = round(
            _wait(
                lambda: (
                    running.pipeline.frames_analysed >= 2 * a.cameras
                    and all(
                        r.stats.gop_seconds is not None for r in running.cameras.readers.values()
                    )
                ),
                "agent",
            ),
            2,
        )
        time.sleep(2.0)
        c0, t0, w0 = _cpu(), time.monotonic(), time.time()
        time.sleep(a.seconds)
        c1, t1, w1 = _cpu(), time.monotonic(), time.time()
        lat = [s for at, s in commits if at >= w0]
        _finish(
            result,
            rate=per_camera_rate(list(analysed.values()), w0, w1),
            cpu=c1 - c0,
            window=t1 - t0,
            latencies=lat,
            cores=a.cores,
        )
        result.workers = running.pipeline.detector.workers
        governor = running.pipeline.governor.snapshot()
        modes = sorted({r.stats.decode_mode for r in running.cameras.readers.values()})
        result.notes.append(
            f"decode {', '.join(modes)}; governor x{governor['interval_scale']}, box CPU "
            f"{governor['box_cpu']}; {running.pipeline.detector.parallel_turns} turns shared; "
            f"{len(lat)} alerts committed in the window"
        )
    finally:
        running.request_stop()
        thread.join(15)
    return result


def _onnx_detect(a: argparse.Namespace) -> Callable[[list[Any]], object]:
    """The agent's detectors (``--workers`` of them, ``--precision``) as a detect function."""
    from agent.detect.detector import Detector  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415
    from agent.detect.pool import DetectorPool, resolve_workers  # noqa: PLC0415
    from agent.detect.views import View  # noqa: PLC0415

    package = load_model_package(a.model)
    workers = resolve_workers(a.workers, a.threads)
    pool = DetectorPool(
        lambda: Detector(package, backend="onnxruntime", threads=a.threads, precision=a.precision),
        workers,
    )
    a.workers_used = workers
    whole = View()

    faces = a.faces == "on"

    def detect(frames: list[Any]) -> object:
        return pool.detect_views(frames, [whole] * len(frames), [faces] * len(frames))

    return detect


def measure_loop(
    result: ChildResult, loop: DetectLoop, a: argparse.Namespace, children: Sequence[int] = ()
) -> None:
    """Wait for every camera, settle, then measure ``loop`` over the window into ``result``."""
    result.startup_s = round(_wait(lambda: all(loop.counts), result.method), 2)
    time.sleep(2.0)
    c0, t0, w0 = _cpu(children), time.monotonic(), time.time()
    time.sleep(a.seconds)
    c1, t1, w1 = _cpu(children), time.monotonic(), time.time()
    _finish(
        result,
        rate=per_camera_rate(loop.times, w0, w1),
        cpu=c1 - c0,
        window=t1 - t0,
        latencies=[s for at, s in loop.latencies if at >= w0],
        cores=a.cores,
    )


def child_ffmpeg(a: argparse.Namespace) -> ChildResult:
    """An ffmpeg per camera decoding to BGR at 1 fps; the same detector on the newest frames."""
    import numpy as np  # noqa: PLC0415

    result = ChildResult("ffmpeg", a.profile, a.cameras)
    slots = Slots(a.cameras)
    loop = DetectLoop(slots, _onnx_detect(a))
    frame_bytes = a.width * a.height * 3
    procs = []
    for _ in range(a.cameras):
        procs.append(
            subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                 "-rtsp_transport", "tcp", "-i", a.url, "-an", "-vf", "fps=1",
                 "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip

    def read(i: int, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdout is None:
            return
        while True:
            data = proc.stdout.read(frame_bytes)
            if len(data) < frame_bytes:
                return
            slots.put(i, np.frombuffer(data, np.uint8).reshape(a.height, a.width, 3))

    readers = [threading.Thread(target=read, args=(i, p), daemon=True) for i, p in enumerate(procs)]
    for thread in readers:
        thread.start()
    loop.start()
    try:
        pids = [p.pid for p in procs]
        measure_loop(result, loop, a, pids)
        rss_children = sum(_proc_status(p)[0] for p in pids)
        result.notes.append(f"ffmpeg processes' RSS {rss_children:.0f} MB (not in rss_mb)")
        result.rss_mb = round(result.rss_mb + rss_children, 1)
    finally:
        loop.stop.set()
        for proc in procs:
            proc.kill()
            proc.wait(5)
    return result


def child_floor(a: argparse.Namespace) -> ChildResult:
    """bench_ingest's floor reader feeding the detector: demux, minimal decode, inference."""
    from bench_ingest import FloorMethod, parse_profile  # noqa: PLC0415

    result = ChildResult("floor", a.profile, a.cameras)
    slots = Slots(a.cameras)
    loop = DetectLoop(slots, _onnx_detect(a))

    class Feeding(FloorMethod):
        def deliver(self, i: int, image: Any) -> None:
            super().deliver(i, image)
            slots.put(i, image)

    method = Feeding([a.url] * a.cameras, parse_profile(a.profile))
    method.start()
    loop.start()
    try:
        measure_loop(result, loop, a)
        result.notes += method.problems()
    finally:
        loop.stop.set()
        method.stop()
    return result


def child_common(a: argparse.Namespace) -> ChildResult:
    """OpenCV reading every frame, ultralytics predicting on one frame per second."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
    import cv2  # noqa: PLC0415
    from ultralytics import YOLO  # noqa: PLC0415

    result = ChildResult("common", a.profile, a.cameras)
    model = YOLO(str(a.weights))
    slots = Slots(a.cameras)

    def predict(frames: list[Any]) -> object:
        return model.predict(frames, imgsz=416, conf=0.25, verbose=False, device="cpu")

    loop = DetectLoop(slots, predict)
    stop = threading.Event()
    errors: list[str] = []

    def read(i: int) -> None:
        cap = cv2.VideoCapture(a.url, cv2.CAP_FFMPEG)
        n = 0
        while not stop.is_set():
            ok, frame = cap.read()
            if not ok:
                errors.append(f"cam{i}: read failed after {n} frames")
                break
            if n % a.fps == 0:
                slots.put(i, frame)
            n += 1
        cap.release()

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(a.cameras)]
    for thread in readers:
        thread.start()
    loop.start()
    try:
        measure_loop(result, loop, a)
        import torch  # type: ignore[import-not-found]  # noqa: PLC0415

        result.notes.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        result.notes += errors
    finally:
        stop.set()
        loop.stop.set()
        for thread in readers:
            thread.join(5)
    return result


CHILDREN = {
    "agent": child_agent,
    "ffmpeg": child_ffmpeg,
    "floor": child_floor,
    "common": child_common,
}


def child_main(argv: Sequence[str]) -> int:
    """Run one point and print its result as the last line of stdout (JSON)."""
    ap = argparse.ArgumentParser(prog="bench.py --child")
    ap.add_argument("--child", choices=METHODS, required=True)
    for name in ("profile", "url", "broker"):
        ap.add_argument(f"--{name}", default="")
    for name in ("cameras", "width", "height", "fps", "threads", "tile-cols", "tile-rows"):
        ap.add_argument(f"--{name}", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--cores", type=float, default=2)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--workers", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--faces", choices=("on", "off"), default="on")
    a = ap.parse_args(argv)
    a.workers_used = 1
    import logging  # noqa: PLC0415

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = CHILDREN[a.child](a)
    except BenchError as exc:
        result = ChildResult(a.child, a.profile, a.cameras, why_not=str(exc))
    if a.child == "common":
        result.precision = "fp32 (torch)"
    else:
        result.precision = a.precision
        if a.child != "agent":
            result.workers = a.workers_used
    print(json.dumps(asdict(result)), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


def run_point(
    args: argparse.Namespace,
    method: str,
    profile: Any,
    url: str,
    n: int,
    *,
    precision: str = "auto",
) -> ChildResult:
    python = args.train_python if method == "common" else Path(sys.executable)
    command = [
        str(python), str(Path(__file__).resolve()), "--child", method,
        "--profile", profile.name, "--url", url, "--broker", args.broker_url,
        "--cameras", str(n), "--width", str(profile.width), "--height", str(profile.height),
        "--fps", str(profile.fps), "--threads", str(args.threads), "--seconds", str(args.seconds),
        "--cores", str(args.cores), "--model", str(args.model), "--workdir", str(args.workdir),
        "--workers", args.workers, "--precision", precision, "--faces", args.faces,
    ]  # fmt: skip
    if method == "common":
        command += ["--weights", str(args.weights)]
    if method == "agent":
        command += ["--tile-cols", str(args.tiles[0]), "--tile-rows", str(args.tiles[1])]
    timeout = READY_TIMEOUT_S + args.seconds + 120
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return ChildResult(
            method,
            profile.name,
            n,
            precision=precision,
            why_not=f"child did not finish in {timeout} s",
        )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr or done.stdout)[-1500:]
        return ChildResult(
            method, profile.name, n, precision=precision, why_not=f"child failed: {tail}"
        )
    return ChildResult(**json.loads(lines[-1]))


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


TABLE_HEAD = (
    "| method | N | cores used | % of a core per camera | frames/s per camera (target 1) | "
    "latency p50 / p95 (ms) | RSS (MB) | threads | kept up |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def label(r: ChildResult) -> str:
    """The method as the tables name it: with its detector variant when one was asked for."""
    return r.method if r.precision in ("auto", "fp32 (torch)") else f"{r.method} {r.precision}"


def table_row(r: ChildResult) -> str:
    per_camera = 100 * r.cpu_cores / r.cameras if r.cameras else 0.0
    kept = "yes" if r.kept_up else f"no ({r.why_not[:120]})"
    return (
        f"| {label(r)} | {r.cameras} | {r.cpu_cores:.2f} | {per_camera:.1f} % | "
        f"{r.frames_per_camera_s:.2f} | {fmt(r.latency_p50_ms)} / {fmt(r.latency_p95_ms)} | "
        f"{r.rss_mb:.0f} | {r.threads} | {kept} |"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--profiles",
        default=DEFAULT_PROFILES,
        help="[WIDTHx]HEIGHTpFPS-gopFRAMES,... or 'substreams' (" + SUBSTREAM_PROFILES + ")",
    )
    ap.add_argument("--methods", default=",".join(METHODS), help="agent,ffmpeg,common,floor")
    ap.add_argument("--counts", default=DEFAULT_COUNTS, help="camera counts to try, in order")
    ap.add_argument("--seconds", type=float, default=15.0, help="measuring window per point")
    ap.add_argument("--cores", type=float, default=float(os.cpu_count() or 2))
    ap.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads per detector")
    ap.add_argument(
        "--workers", default="auto", help="detectors sharing a turn's frames (agent, ffmpeg, floor)"
    )
    ap.add_argument(
        "--faces",
        choices=("on", "off"),
        default="on",
        help="off: the agent's rule looks at head_bare (no face label), so the package's face "
        "stage does not run; ffmpeg and floor skip it too",
    )
    ap.add_argument(
        "--precisions",
        default="auto",
        help="detector variants for agent, ffmpeg and floor: auto (the package's default), "
        "fp32, int8, or a list such as fp32,int8",
    )
    ap.add_argument("--model", type=Path, default=REPO / "models" / "default")
    ap.add_argument("--weights", type=Path, help="the .pt for 'common' (default: the run's)")
    ap.add_argument("--train-python", type=Path, default=REPO / ".venv-train" / "bin" / "python")
    ap.add_argument("--clips", type=Path, default=Path(tempfile.gettempdir()) / "mclz-bench")
    ap.add_argument("--clip-seconds", type=float, default=24.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--tiles",
        default="1x1",
        help="COLSxROWS: the agent's cameras analysed in tiles (view.tiles)",
    )
    args = ap.parse_args(argv)
    from agent.detect.views import parse_tiles  # noqa: PLC0415 - the same parser as model eval

    try:
        args.tiles = parse_tiles(args.tiles)
    except ValueError as exc:
        ap.error(f"--tiles: {exc}")
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.method_list) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; known: {', '.join(METHODS)}")
    args.count_list = [int(c) for c in args.counts.split(",")]
    args.precision_list = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.workers != "auto" and not (args.workers.isdigit() and int(args.workers) >= 1):
        ap.error(f"--workers must be auto or an integer >= 1, not {args.workers!r}")
    if args.weights is None:
        args.weights = next((w for w in DEFAULT_WEIGHTS if w.is_file()), DEFAULT_WEIGHTS[-1])
    return args


def summarize(points: Sequence[ChildResult]) -> dict[str, Any]:
    """Max cameras kept up per method, CPU per camera there, and ratios to the agent."""
    best: dict[str, ChildResult] = {}
    for p in points:
        if p.kept_up and (label(p) not in best or p.cameras > best[label(p)].cameras):
            best[label(p)] = p
    out: dict[str, Any] = {}
    for method in dict.fromkeys(label(p) for p in points):
        tried = [p for p in points if label(p) == method]
        top = best.get(method)
        capped = bool(top) and all(p.kept_up for p in tried)
        out[method] = {
            "max_cameras": top.cameras if top else 0,
            "limit_reached": not capped,
            "cpu_per_camera": round(top.cpu_cores / top.cameras, 4) if top else None,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--child" in argv:
        return child_main(argv)
    args = parse_args(argv)
    from bench_ingest import cpu_model, loadavg, parse_profile  # noqa: PLC0415

    from mclz_testkit.broker import Broker  # noqa: PLC0415
    from mclz_testkit.rtsp import RtspServer  # noqa: PLC0415

    if "common" in args.method_list:
        if not args.train_python.exists():
            raise SystemExit(f"bench: {args.train_python} missing: run scripts/train-env")
        if not args.weights.is_file():
            raise SystemExit(f"bench: weights {args.weights} missing (--weights)")
    names = SUBSTREAM_PROFILES if args.profiles == "substreams" else args.profiles
    profiles = [parse_profile(p) for p in names.split(",")]
    (REPO / ".bench").mkdir(exist_ok=True)  # on the repository's disk: real fsyncs
    args.workdir = Path(tempfile.mkdtemp(prefix="mclz-bench-", dir=REPO / ".bench"))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    print(f"# Whole-agent benchmark, {started}\n")
    print(f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, load {loadavg()} at start")
    print(
        f"- one analysed frame per second per camera, {args.seconds:g} s windows, "
        f"detector threads {args.threads}, workers {args.workers}, face stage {args.faces}, "
        f"weights for 'common': {args.weights.name}"
    )
    if args.tiles != (1, 1):
        print(f"- the agent's cameras are analysed in {args.tiles[0]}x{args.tiles[1]} tiles")
    clips = {}
    for profile in profiles:
        clips[profile.name] = face_clip(profile, args.clips, args.clip_seconds)
        print(
            f"- {profile.name}: {profile.width}x{profile.height} H.264 {profile.kbps} kbit/s, "
            f"keyframe every {profile.gop_seconds:g} s ({clips[profile.name].name})"
        )
    # The loopback cameras and the broker stand for machines that are not the box: they run
    # at nice 10, so the agent's load governor (which counts niced work as room, and looks
    # at the whole box's CPU) does not take them for the box's own load.
    os.nice(HARNESS_NICE)
    broker = Broker(args.workdir / "mosquitto").start()
    args.broker_url = broker.url
    server = RtspServer({f"/{n}": p for n, p in clips.items()}, loop=True).start()
    try:
        os.nice(-HARNESS_NICE)  # the methods measured run at the usual priority
    except PermissionError:
        print("- warning: not root, so the methods run at nice 10 too", flush=True)
    points: list[ChildResult] = []
    summary: dict[str, Any] = {}
    try:
        for profile in profiles:
            url = server.url(f"/{profile.name}")
            print(f"\n## {profile.name}\n\n{TABLE_HEAD}", flush=True)
            mine: list[ChildResult] = []
            for method in args.method_list:
                variants = ["auto"] if method == "common" else args.precision_list
                for precision in variants:
                    for n in args.count_list:
                        point = run_point(args, method, profile, url, n, precision=precision)
                        mine.append(point)
                        print(table_row(point), flush=True)
                        if not point.kept_up:
                            break
            # In run order (method, then N), each note once.
            notes = list(
                dict.fromkeys(f"{p.method} N={p.cameras}: {n}" for p in mine for n in p.notes)
            )
            if notes:
                print("\n" + "\n".join(f"- {n}" for n in notes))
            summary[profile.name] = summarize(mine)
            points += mine
            print(f"\nMax cameras kept up ({profile.name}):\n")
            print("| method | max cameras | % of a core per camera there | vs agent |")
            print("|---|---:|---:|---:|")
            agents = [v for k, v in summary[profile.name].items() if k.split()[0] == "agent"]
            agent_max = max((v.get("max_cameras") or 0 for v in agents), default=0)
            for method, s in summary[profile.name].items():
                more = "" if s["limit_reached"] else " (not reached)"
                share = fmt(
                    None if s["cpu_per_camera"] is None else 100 * s["cpu_per_camera"], ".1f"
                )
                ratio = f"{agent_max / s['max_cameras']:.1f}x" if s["max_cameras"] else "-"
                print(f"| {method} | {s['max_cameras']}{more} | {share} | {ratio} |")
    finally:
        server.close()
        broker.stop()
    result = {
        "started": started,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {k: str(v) for k, v in vars(args).items()},
        "points": [asdict(p) for p in points],
        "summary": summary,
    }
    print(f"\n- load at end: {loadavg()}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"- JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
