"""Alert latency on a real RTSP stream: firing frame decoded -> alert committed in SQLite.

What runs: a clip generated here (640x360, 15 fps, a keyframe every second, a textured
scene with a moving band) in which a large magenta square is on for 2 s of every 4.2 s,
and every frame carries its own index as a black/white barcode along the bottom edge. It is
served by ``scripts/tools/rtsp_server.py`` on loopback (as mclz_testkit.rtsp starts it, looping),
and read by the real agent, ``agent.service.agent.Agent``, run in this process for ``--seconds``
per configuration with the pattern model of mclz_testkit.synthetic_model (input 416, class 0
``head_bare`` fires on magenta), one rule ``no_hat`` with ``min_duration 0``, ``end_after
1.5 s`` and ``cooldown 1 s``, so each appearance of the
square starts one alert per camera and its disappearance ends it (the agent commits the end
too, with its own evidence, on the detect thread), evidence JPEGs on, and MQTT pointed at a
closed loopback port (alerts stay in the outbox).
The state directory is on the same disk as the repository, so SQLite's fsyncs are real.

Timestamps, all wall clock (``time.time()``):

* ``raised_at`` (alerts table): ``Frame.wall`` of the frame that fired, taken by the camera
  reader right after decoding it and converting it to BGR. This is the start of every
  latency here; the RTP/demux/decode time before it is not included.
* ``created_at`` (outbox table): taken by ``Store.record_alert`` when it starts its
  transaction, so it comes *before* the insert and the commit's fsync.
* commit: when ``Store.record_alert`` returns, i.e. the transaction is durable. This is
  the better end point and the headline number; the script gets it by wrapping
  ``record_alert`` on the running agent's outbox instance (and ``detect_batch``,
  ``AlertWriter.raised`` and ``agent.evidence.save`` for the breakdown). Nothing in agent/ is
  changed; the wrappers add microseconds.

The breakdown per alert: *wait* (frame decoded -> its detect_batch call starts: the detect
thread's wake-up, or the previous batch still running), *detect* (that detect_batch call, for
every frame taken in that turn), *rules* (detect_batch returned -> this alert's store starts:
picture checks and rules, and earlier alerts of the same turn), *evidence* (JPEG render +
write + fsync), *commit* (``record_alert``, one transaction with an fsync), and
``created_at - raised_at`` (what the database alone tells). *Sampling* is the stream time from
the square's first frame to the frame that fired (read from the barcode): the part of the
end-to-end reaction that ``detect_interval`` and keyframe spacing decide.

Configurations: detect_interval 1.0 and 0.5 x 1 and 4 cameras (the same URL: 4 RTSP
sessions, each from the clip's start, so the 4 cameras see the square at the same moment),
measured in ``--rounds`` interleaved rounds, a fresh agent and database each time. The
pattern model is cheap; the default model's inference (``scripts/bench/bench_detect.py``) would
add to *detect* (about 50-75 ms per frame on this machine, times the frames in one batch).

    .venv/bin/python scripts/bench/bench_latency.py                # ~7 min: 2 rounds x 4 x 45 s
    .venv/bin/python scripts/bench/bench_latency.py --seconds 30 --rounds 1 --json /tmp/lat.json
    .venv/bin/python scripts/bench/bench_latency.py --intervals 1.0 --cameras 1 2 4 8

Needs GStreamer's RTSP server for /usr/bin/python3 (see scripts/tools/rtsp_server.py) and the
dev extra (``onnx``, for the pattern model).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import yaml

import agent.evidence
from agent.config import load_config
from agent.rules.engine import Alert
from agent.service.agent import Agent
from agent.store.database import db_path
from mclz_testkit.common import free_port
from mclz_testkit.rtsp import RtspServer
from mclz_testkit.synthetic_model import build_pattern_model

ROOT = Path(__file__).resolve().parents[2]

Image = npt.NDArray[np.uint8]

WIDTH, HEIGHT, FPS, GOP = 640, 360, 15, 15
PERIOD = 63  # frames: the square comes back every 4.2 s, so its onset drifts against keyframes
ON_FROM, ON_TO = 9, 39  # frames within the period during which the square is shown (2 s)
PERIODS = 10  # clip length: 630 frames, 42 s; the pattern continues across the loop
MAGENTA = (255, 0, 255)  # BGR
BITS = 10  # frame index barcode: a white guard block, 10 bits, a black guard block
BLOCK_W, BLOCK_H, BLOCK_GAP = 28, 18, 6
INPUT_SIZE = 416  # like the default model
WARMUP_S = 3.0  # alerts raised this soon after the agent starts are not counted


# --------------------------------------------------------------------------- the clip


def _blocks() -> list[tuple[int, int]]:
    """x positions of the barcode blocks: guard, BITS bits (most significant first), guard."""
    return [(8 + i * (BLOCK_W + BLOCK_GAP), BLOCK_W) for i in range(BITS + 2)]


def draw_barcode(img: Image, index: int) -> None:
    y0 = HEIGHT - BLOCK_H - 6
    values = [1, *((index >> (BITS - 1 - b)) & 1 for b in range(BITS)), 0]
    for (x0, w), bit in zip(_blocks(), values, strict=True):
        img[y0 : y0 + BLOCK_H, x0 : x0 + w] = 255 if bit else 0


def read_barcode(img: Image) -> int | None:
    """The frame index drawn by :func:`draw_barcode`, or None if the guards do not read."""
    if img.shape[:2] != (HEIGHT, WIDTH):
        return None
    y0 = HEIGHT - BLOCK_H - 6
    bits = []
    for x0, w in _blocks():
        patch = img[y0 + 4 : y0 + BLOCK_H - 4, x0 + 6 : x0 + w - 6]
        bits.append(int(patch.mean() > 128))
    if bits[0] != 1 or bits[-1] != 0:
        return None
    value = 0
    for bit in bits[1:-1]:
        value = value * 2 + bit
    return value


def square_on(index: int) -> bool:
    return ON_FROM <= index % PERIOD < ON_TO


def make_clip(path: Path) -> Path:
    """Write the benchmark clip (H.264, no B-frames, fixed GOP, like a camera's sub-stream)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack(
        [60 + 100 * xs / WIDTH, 50 + 90 * ys / HEIGHT, 90 + 40 * np.sin(xs / 23) * np.cos(ys / 17)],
        axis=2,
    )
    base = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    band = rng.integers(0, 70, (HEIGHT, 2 * WIDTH, 3), dtype=np.uint8)
    side = int(HEIGHT * 0.4)
    sq_y, sq_x = (HEIGHT - side) // 2 - 20, (WIDTH - side) // 2
    params = f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0"
    options = {"preset": "veryfast", "tune": "zerolatency", "x264-params": params}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(PERIOD * PERIODS):
            img = base.copy()
            shift = (i * WIDTH // (6 * FPS)) % (2 * WIDTH)  # a noise band crossing in ~6 s
            cols = (np.arange(WIDTH // 4) + shift) % WIDTH
            texture = band[:, (np.arange(WIDTH // 4) + shift) % band.shape[1]]
            img[:, cols] = np.clip(img[:, cols].astype(np.int16) + texture, 0, 255).astype(np.uint8)
            if square_on(i):
                img[sq_y : sq_y + side, sq_x : sq_x + side] = MAGENTA
            draw_barcode(img, i)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------- instrumentation


@dataclass
class Timing:
    """Wall-clock stamps of one alert, filled by the hooks; None where a hook did not run."""

    camera: str
    raised_at: float
    frame_index: int | None
    detect_start: float | None
    detect_end: float | None
    batch: int | None
    store_start: float
    evidence_s: float = 0.0
    commit_start: float | None = None
    commit_end: float | None = None
    created_at: float | None = None  # from SQLite, after the run


def hook(obj: object, name: str, wrapper: Callable[..., Any]) -> None:
    """Replace ``obj.name`` (an instance's method or a module's function) with ``wrapper``."""
    setattr(obj, name, wrapper)


class Probe:
    """Wraps the running agent's stages and records per-alert timestamps (no agent edits)."""

    def __init__(self, running: Agent) -> None:
        self.timings: dict[str, Timing] = {}
        self._lock = threading.Lock()
        self._last_detect: tuple[float, float, int] | None = None
        detect_views = running.detector.detect_views
        store_alert = running.alerts.raised
        record_alert = running.outbox.record_alert

        def timed_detect(frames: Sequence[Image], *args: Any, **kwargs: Any) -> Any:
            start = time.time()
            result = detect_views(frames, *args, **kwargs)
            self._last_detect = (start, time.time(), len(frames))
            return result

        def timed_store(alert: Alert) -> None:
            detect = self._last_detect  # same thread: the turn that raised this alert
            index = read_barcode(alert.frame) if alert.frame is not None else None
            with self._lock:
                self.timings[alert.id] = Timing(
                    camera=alert.camera_id,
                    raised_at=alert.raised_at,
                    frame_index=index,
                    detect_start=detect[0] if detect else None,
                    detect_end=detect[1] if detect else None,
                    batch=detect[2] if detect else None,
                    store_start=time.time(),
                )
            store_alert(alert)

        def timed_record(record: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.time()
            result = record_alert(record, *args, **kwargs)
            end = time.time()
            with self._lock:
                timing = self.timings.get(record.id)
                if timing is not None and timing.commit_end is None:
                    timing.commit_start, timing.commit_end = start, end
            return result

        hook(running.detector, "detect_views", timed_detect)
        hook(running.alerts, "raised", timed_store)
        hook(running.outbox, "record_alert", timed_record)

    def evidence_saved(self, alert_id: str, seconds: float) -> None:
        with self._lock:
            timing = self.timings.get(alert_id)
            if timing is not None:
                timing.evidence_s += seconds


class EvidenceHook:
    """Times ``agent.evidence.save`` (a module function, looked up at call time) for a probe."""

    def __init__(self) -> None:
        self.probe: Probe | None = None
        self._save = agent.evidence.save

        def timed_save(alert: Alert, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return self._save(alert, *args, **kwargs)
            finally:
                if self.probe is not None:
                    self.probe.evidence_saved(alert.id, time.perf_counter() - start)

        hook(agent.evidence, "save", timed_save)

    def restore(self) -> None:
        hook(agent.evidence, "save", self._save)


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Setup:
    interval: float
    cameras: int

    @property
    def label(self) -> str:
        return f"interval {self.interval:g} s, {self.cameras} camera(s)"


def write_config(state: Path, model: Path, url: str, setup: Setup, mqtt_port: int) -> Path:
    cameras = {
        f"cam-{i + 1}": {
            "url": url,
            "detect_interval": setup.interval,
            "offline_after": 10,
            "picture": {"enabled": False},
        }
        for i in range(setup.cameras)
    }
    data = {
        "identity": {"city": "bench", "school_id": "s-001", "box_id": "box-01"},
        "mqtt": {"url": f"mqtt://127.0.0.1:{mqtt_port}", "reconnect_min": 5, "reconnect_max": 30},
        "cameras": cameras,
        "model": {"path": str(model), "conf_threshold": 0.3},
        "rules": {
            "no_hat": {
                "labels": ["head_bare"],
                "min_confidence": 0.5,
                "min_duration": 0,
                "end_after": 1.5,
                "cooldown": 1,
            }
        },
        "storage": {"state_dir": str(state)},
        "heartbeat": {"interval": 60},
    }
    path = state.parent / "agent.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclass
class RunResult:
    setup: Setup
    timings: list[Timing]
    cpu_cores: float
    wall_s: float
    interrupted: bool


def run_once(
    setup: Setup, *, model: Path, url: str, work: Path, seconds: float, evidence: EvidenceHook
) -> RunResult:
    """Run a fresh agent on ``setup`` for ``seconds``; return the alerts' timings."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    state = run_dir / "state"
    config_path = write_config(state, model, url, setup, free_port())
    running = Agent(load_config(config_path), config_path)
    probe = Probe(running)
    evidence.probe = probe
    started = time.time()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    running.run(seconds)
    wall = time.monotonic() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    evidence.probe = None
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    with sqlite3.connect(db_path(state)) as conn:
        created = dict(conn.execute("SELECT id, created_at FROM outbox WHERE kind = 'alert'"))
    timings = []
    for alert_id, timing in probe.timings.items():
        timing.created_at = created.get(alert_id)
        if timing.raised_at >= started + WARMUP_S and timing.commit_end is not None:
            timings.append(timing)
    return RunResult(setup, timings, cpu / wall, wall, wall < seconds - 1)


# --------------------------------------------------------------------------- report


def stats(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, p90, max); NaN for an empty list."""
    if not values:
        return (float("nan"),) * 3
    return statistics.median(values), float(np.percentile(values, 90)), max(values)


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.0f}"


def sampling_delay(index: int | None) -> float | None:
    """Stream seconds from the square's first frame to frame ``index`` (None: unreadable)."""
    if index is None or not square_on(index):
        return None
    return (index % PERIOD - ON_FROM) / FPS


def summarize(setup: Setup, runs: list[RunResult]) -> dict[str, Any]:
    timings = [t for r in runs if r.setup == setup for t in r.timings]
    expected = sum(
        setup.cameras * max(0.0, r.wall_s - WARMUP_S) / (PERIOD / FPS)
        for r in runs
        if r.setup == setup
    )

    def span(a: str, b: str) -> list[float]:
        out = []
        for t in timings:
            start, end = getattr(t, a), getattr(t, b)
            if start is not None and end is not None:
                out.append(end - start)
        return out

    samples = [d for t in timings if (d := sampling_delay(t.frame_index)) is not None]
    cpu = [r.cpu_cores for r in runs if r.setup == setup]
    return {
        "detect_interval": setup.interval,
        "cameras": setup.cameras,
        "alerts": len(timings),
        "alerts_expected": round(expected),
        "cpu_cores": statistics.mean(cpu) if cpu else float("nan"),
        "commit": stats(span("raised_at", "commit_end")),
        "created": stats(span("raised_at", "created_at")),
        "wait": stats(span("raised_at", "detect_start")),
        "detect": stats(span("detect_start", "detect_end")),
        "rules": stats(span("detect_end", "store_start")),
        "evidence": stats([t.evidence_s for t in timings]),
        "commit_only": stats(span("commit_start", "commit_end")),
        "sampling": stats(samples),
        "batch_mean": statistics.mean([t.batch for t in timings if t.batch] or [float("nan")]),
    }


def tables(rows: list[dict[str, Any]]) -> str:
    out = [
        "| detect_interval | cameras | alerts (expected) "
        "| decoded → committed median / p90 / max ms "
        "| created_at − raised_at median / p90 / max ms | square onset → firing frame "
        "median / p90 / max ms | agent CPU cores |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['detect_interval']:g} s | {r['cameras']} "
            f"| {r['alerts']} ({r['alerts_expected']}) "
            f"| {' / '.join(ms(v) for v in r['commit'])} "
            f"| {' / '.join(ms(v) for v in r['created'])} "
            f"| {' / '.join(ms(v) for v in r['sampling'])} | {r['cpu_cores']:.2f} |"
        )
    out += [
        "",
        "Breakdown of decoded → committed, median / p90 ms per alert:",
        "",
        "| detect_interval | cameras | frames per detect_batch (mean) | wait for detect thread "
        "| detect_batch | rules (+ earlier alerts of the turn) | evidence JPEG + fsync "
        "| record_alert (commit + fsync) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            " / ".join(ms(v) for v in r[k][:2])
            for k in ("wait", "detect", "rules", "evidence", "commit_only")
        ]
        out.append(
            f"| {r['detect_interval']:g} s | {r['cameras']} | {r['batch_mean']:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="run time per config (45)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (2)")
    parser.add_argument("--intervals", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--cameras", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--keep", type=Path, help="work here and keep clip, configs, databases and the log"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setups = [Setup(i, c) for i in args.intervals for c in args.cameras]
    # Same disk as the repository (not a tmpfs), so the commits' fsyncs cost what they cost.
    work = args.keep or Path(tempfile.mkdtemp(prefix=".bench-latency-", dir=ROOT))
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "agent.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    logging.getLogger("agent.uplink.client").setLevel(
        logging.ERROR
    )  # the broker is absent on purpose

    clip = make_clip(work / "clip.mp4")
    model = build_pattern_model(work / "model", input_size=INPUT_SIZE)
    server = RtspServer({"/kitchen": clip}, loop=True).start()
    evidence = EvidenceHook()
    runs: list[RunResult] = []
    print(
        f"clip {WIDTH}x{HEIGHT} {FPS} fps, keyframe every {GOP / FPS:g} s, square on "
        f"{(ON_TO - ON_FROM) / FPS:g} s of every {PERIOD / FPS:g} s; pattern model input "
        f"{INPUT_SIZE}; {args.rounds} round(s) x {len(setups)} configs x {args.seconds:g} s; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; work dir {work}",
        flush=True,
    )
    try:
        for r in range(args.rounds):
            shift = r % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                result = run_once(
                    setup,
                    model=model,
                    url=server.url("/kitchen"),
                    work=work,
                    seconds=args.seconds,
                    evidence=evidence,
                )
                runs.append(result)
                print(
                    f"  round {r + 1}: {setup.label}: {len(result.timings)} alerts, "
                    f"{result.cpu_cores:.2f} cores",
                    file=sys.stderr,
                    flush=True,
                )
                if result.interrupted:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        evidence.restore()
        server.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    rows = [summarize(s, runs) for s in setups]
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f} at the end\n")
    print(tables(rows))
    if args.json is not None:
        raw = [
            {"setup": asdict(r.setup), "cpu_cores": r.cpu_cores, "wall_s": r.wall_s}
            | {"alerts": [asdict(t) for t in r.timings]}
            for r in runs
        ]
        args.json.write_text(json.dumps({"rows": rows, "runs": raw}, indent=1) + "\n", "utf-8")
        print(f"\nwrote {args.json}")
    if args.keep is None:
        shutil.rmtree(work)
    else:
        print(f"kept {work} (log: {log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
