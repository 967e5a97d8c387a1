"""Detector throughput by batch size, backend and threads on real video frames; stage timings.

The main table: for a model package at its input size, batch sizes (1, 2, 4, 8) x backend
(onnxruntime, and OpenVINO when importable) x intra-op threads (1 and 2), it times
``Detector.detect_batch`` end to end (letterbox, inference, decode + NMS) on frames decoded
with PyAV from ``../shared/videos/bareheaded_people_indoor.mp4`` (768x432). Per cell: images
per second, ms per batch (median and p90 over the timed calls), the CPU cores the process
really used (process CPU time / wall time from ``resource.getrusage``, all threads) and images
per second per core used. Configurations are measured in interleaved rounds (each round times
every configuration once, in an order rotated per round), so a slow spell on this shared
machine hits them all alike: compare cells of one run, not across runs. Here ``detect_batch``
runs a batch in one inference call (``max_batch=8``); the agent makes calls of
``agent.detect.detector.MAX_BATCH`` (1) frame, since a larger batch gains nothing per image
on a CPU and holds more memory.

``--stages`` adds the older tables: letterbox, inference, decode + NMS and detect_batch in ms
per frame at batch 1 and 4 per backend, and cv2 NMS against a numpy loop. With
``--model synthetic`` they use the pattern model from mclz_testkit.synthetic_model (needs the dev
extra's ``onnx``) on frames with solid patches, which give a few hundred NMS candidates.

    .venv/bin/python scripts/bench/bench_detect.py                   # models/default, ~4 min
    .venv/bin/python scripts/bench/bench_detect.py --rounds 4 --json /tmp/detect.json
    .venv/bin/python scripts/bench/bench_detect.py --batches 1 4 --threads 2 --backend onnxruntime
    .venv/bin/python scripts/bench/bench_detect.py --stages --model synthetic --runs 200
    .venv/bin/python scripts/bench/bench_detect.py --compare /tmp/detector-only-package

``--compare BASE`` answers "what does a frame cost with this package against BASE": both
packages on one thread, batch 1 (one analysed frame, as a camera sends it), interleaved
rounds, at the video's size and upscaled to 1280x720 and 1920x1080; with a face stage its
two parts (finding faces, deciding masks) are shown too.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.detector import Detector, nms
from agent.detect.model import ModelPackage, load_model_package

ROOT = Path(__file__).resolve().parents[2]

Frame = npt.NDArray[np.uint8]
DEFAULT_VIDEO = ROOT.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"
DEFAULT_MODEL = ROOT / "models" / "default"


# --------------------------------------------------------------------------- frames


def decode_frames(video: Path, count: int) -> list[Frame]:
    """Decode ``count`` BGR frames spread evenly over ``video`` (every k-th decoded frame).

    Raises:
        SystemExit: the video is missing or holds no decodable frame.
    """
    if not video.is_file():
        raise SystemExit(f"bench_detect: video {video} not found (pass --video)")
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        total = stream.frames or count
        step = max(1, total // count)
        frames: list[Frame] = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0:
                frames.append(frame.to_ndarray(format="bgr24"))
                if len(frames) == count:
                    break
    if not frames:
        raise SystemExit(f"bench_detect: no frame decoded from {video}")
    return frames


def make_frames(count: int, width: int, height: int) -> list[Frame]:
    """Noise frames with magenta and cyan patches: the pattern model's NMS gets candidates."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        frame = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
        side = height // 4
        frame[20 : 20 + side, 30 + 10 * i : 30 + 10 * i + side] = (255, 0, 255)
        frame[height - side - 10 : height - 10, width // 2 : width // 2 + side] = (255, 0, 255)
        frame[40 : 40 + side, width - side - 20 : width - 20] = (255, 255, 0)
        frames.append(frame)
    return frames


# --------------------------------------------------------------------------- throughput


@dataclass
class Cell:
    """One configuration and what was measured for it, summed over the rounds."""

    backend: str
    threads: int
    batch: int
    calls_ms: list[float] = field(default_factory=list)  # wall ms per detect_batch call
    wall_s: float = 0.0
    cpu_s: float = 0.0
    images: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s else 0.0

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0

    @property
    def per_core(self) -> float:
        return self.images_per_s / self.cores if self.cores else 0.0

    def summary(self) -> dict[str, Any]:
        row = asdict(self)
        del row["calls_ms"]
        row.update(
            calls=len(self.calls_ms),
            ms_per_batch_median=statistics.median(self.calls_ms),
            ms_per_batch_p90=float(np.percentile(self.calls_ms, 90)),
            images_per_s=self.images_per_s,
            cores_used=self.cores,
            images_per_s_per_core=self.per_core,
        )
        return row


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_slice(detector: Detector, cell: Cell, frames: list[Frame], images: int, at: int) -> int:
    """Time ``images // batch`` detect_batch calls for ``cell``; return the next frame index."""
    calls = max(1, images // cell.batch)
    batches = []
    for _ in range(calls):
        batches.append([frames[(at + j) % len(frames)] for j in range(cell.batch)])
        at += cell.batch
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    for batch in batches:
        start = time.perf_counter()
        detector.detect_batch(batch)
        cell.calls_ms.append((time.perf_counter() - start) * 1000)
    cell.wall_s += time.perf_counter() - wall0
    cell.cpu_s += cpu_seconds() - cpu0
    cell.images += calls * cell.batch
    return at


def bench_throughput(
    package: ModelPackage,
    frames: list[Frame],
    *,
    backends: Sequence[str],
    threads: Sequence[int],
    batches: Sequence[int],
    rounds: int,
    images_per_round: int,
) -> list[Cell]:
    """Measure every (backend, threads, batch) in ``rounds`` interleaved rounds."""
    detectors = {
        (backend, n): Detector(package, backend=backend, threads=n, max_batch=8)
        for backend in backends
        for n in threads
    }
    cells = [Cell(b, n, size) for b in backends for n in threads for size in batches]
    for cell in cells:  # warm-up: first runs of a new batch shape allocate and plan
        detectors[cell.backend, cell.threads].detect_batch(frames[: cell.batch])
        detectors[cell.backend, cell.threads].detect_batch(frames[: cell.batch])
    at = 0
    for r in range(rounds):
        shift = (r * 5) % len(cells)  # rotate the order so no cell always follows the same one
        for cell in cells[shift:] + cells[:shift]:
            at = time_slice(
                detectors[cell.backend, cell.threads], cell, frames, images_per_round, at
            )
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return cells


def throughput_table(cells: list[Cell]) -> str:
    base = {(c.backend, c.threads): c.images_per_s for c in cells if c.batch == 1}
    lines = [
        "| backend | threads | batch | images/s | ms/batch median | ms/batch p90 "
        "| cores used | images/s per core | vs batch 1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        row = c.summary()
        ref = base.get((c.backend, c.threads))
        ratio = f"{c.images_per_s / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {c.backend} | {c.threads} | {c.batch} | {c.images_per_s:.1f} "
            f"| {row['ms_per_batch_median']:.1f} | {row['ms_per_batch_p90']:.1f} "
            f"| {c.cores:.2f} | {c.per_core:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def ratio_table(cells: list[Cell], other: str, base: str = "onnxruntime") -> str:
    """``other`` / ``base`` images/s and images/s per core, per (threads, batch)."""
    by = {(c.backend, c.threads, c.batch): c for c in cells}
    lines = [
        f"| threads | batch | {other} / {base} images/s | per core |",
        "|---:|---:|---:|---:|",
    ]
    for (backend, n, size), c in by.items():
        ref = by.get((base, n, size))
        if backend != other or ref is None or not ref.images_per_s or not ref.per_core:
            continue
        lines.append(
            f"| {n} | {size} | {c.images_per_s / ref.images_per_s:.2f}x "
            f"| {c.per_core / ref.per_core:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- stages (older)


def median_ms(fn: Callable[[], object], runs: int, per: int) -> float:
    """Median wall time of ``fn`` over ``runs`` calls, in ms, divided by ``per`` frames."""
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / per


def bench_detector(detector: Detector, frames: list[Frame], runs: int) -> list[float]:
    """Return ms per frame for letterbox, inference, decode + NMS, and detect_batch end to end."""
    n = len(frames)
    batch, geometries = detector.preprocess(frames)
    output = detector._backend.run(batch)  # the stage alone, without pre/post
    pre = median_ms(lambda: detector.preprocess(frames), runs, n)
    infer = median_ms(lambda: detector._backend.run(batch), runs, n)
    post = median_ms(
        lambda: [detector.postprocess(output[i], geometries[i]) for i in range(n)], runs, n
    )
    total = median_ms(lambda: detector.detect_batch(frames), runs, n)
    return [pre, infer, post, total]


def numpy_nms(
    boxes: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    classes: npt.NDArray[np.intp],
    thr: float,
) -> list[int]:
    """Greedy class-aware NMS in numpy, one kept box per iteration (the alternative measured)."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        h = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.clip(w, 0, None) * np.clip(h, 0, None)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[(overlap <= thr) | (classes[rest] != classes[i])]
    return keep


def bench_nms(runs: int) -> list[tuple[int, float, float]]:
    rng = np.random.default_rng(1)
    rows = []
    for count in (10, 50, 200, 1000):
        centres = rng.uniform(0, 320, (count, 2)).astype(np.float32)
        sizes = rng.uniform(10, 80, (count, 2)).astype(np.float32)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        scores = rng.uniform(0.25, 1, count).astype(np.float32)
        classes = rng.integers(0, 4, count).astype(np.intp)
        run_cv = partial(nms, boxes, scores, classes, iou_threshold=0.45, max_detections=count)
        cv = median_ms(run_cv, runs, 1)
        npy = median_ms(partial(numpy_nms, boxes, scores, classes, 0.45), runs, 1)
        rows.append((count, cv, npy))
    return rows


def print_stages(
    package: ModelPackage,
    frames: list[Frame],
    backends: Sequence[str],
    threads: int,
    runs: int,
) -> list[dict[str, Any]]:
    print(f"\nStages at {threads} thread(s), ms per frame, median of {runs} runs:\n")
    print(
        "| backend | batch | letterbox ms/frame | inference ms/frame "
        "| decode+NMS ms/frame | detect_batch ms/frame |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows: list[dict[str, Any]] = []
    for backend in backends:
        detector = Detector(package, backend=backend, threads=threads, max_batch=8)
        for batch in (1, 4):
            cells = bench_detector(detector, (frames * 4)[:batch], runs)
            print(f"| {backend} | {batch} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
            names = ("letterbox_ms", "inference_ms", "decode_nms_ms", "detect_batch_ms")
            rows.append(
                {"backend": backend, "batch": batch, **dict(zip(names, cells, strict=True))}
            )
    print("\n| NMS candidates | cv2.dnn.NMSBoxesBatched ms | numpy greedy ms |")
    print("|---:|---:|---:|")
    for count, cv, npy in bench_nms(max(20, runs // 4)):
        print(f"| {count} | {cv:.3f} | {npy:.3f} |")
        rows.append({"nms_candidates": count, "cv2_ms": cv, "numpy_ms": npy})
    return rows


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help="model package dir, or 'synthetic' for the pattern model (default: %(default)s)",
    )
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="frames come from here")
    parser.add_argument("--frames", type=int, default=48, help="distinct frames decoded (48)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (8)")
    parser.add_argument(
        "--images", type=int, default=24, help="images per configuration per round (24)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads")
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["onnxruntime", "openvino"],
        help="backends (openvino is skipped when not importable)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--stages", action="store_true", help="add the per-stage and NMS tables")
    parser.add_argument("--runs", type=int, default=100, help="--stages: runs per cell (median)")
    parser.add_argument(
        "--frame", default="640x360", help="--stages with the synthetic model: frame size WxH"
    )
    parser.add_argument(
        "--compare",
        type=Path,
        help="a second package: ms per analysed frame of both side by side (1 thread, batch 1)",
    )
    return parser.parse_args(argv)


def compare_packages(base_dir: Path, model_dir: Path, video: Path, rounds: int) -> None:
    """Print ms per analysed frame of two packages, side by side, at three frame sizes."""
    base = Detector(load_model_package(base_dir), threads=1)
    model = Detector(load_model_package(model_dir), threads=1)
    frames = decode_frames(video, 12)
    sizes = [(frames[0].shape[1], frames[0].shape[0]), (1280, 720), (1920, 1080)]
    print(f"base  {base.package.name} {base.package.version}")
    print(f"model {model.package.name} {model.package.version}; {cpu_name()}, 1 thread, batch 1")
    print(
        f"{'frame':>10} {'base ms':>8} {'model ms':>9} {'ratio':>6} {'faces ms':>9} {'masks ms':>9}"
    )
    for width, height in sizes:
        scaled = [np.asarray(cv2.resize(f, (width, height)), dtype=np.uint8) for f in frames]
        times: dict[str, list[float]] = {"base": [], "model": [], "find": [], "decide": []}
        for _ in range(rounds):
            for frame in scaled:
                for name, detector in (("base", base), ("model", model)):
                    t0 = time.perf_counter()
                    detector.detect(frame)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
                    stage = detector.face_stage
                    if name == "model" and stage is not None:
                        times["find"].append(stage.last_ms[0])
                        times["decide"].append(stage.last_ms[1])
        med = {k: statistics.median(v) if v else 0.0 for k, v in times.items()}
        print(
            f"{width:>5}x{height:<4} {med['base']:>8.1f} {med['model']:>9.1f} "
            f"{med['model'] / med['base']:>6.2f} {med['find']:>9.1f} {med['decide']:>9.1f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare is not None:
        compare_packages(args.compare, Path(args.model), args.video, max(1, args.rounds // 2))
        return
    backends = [b for b in args.backend if b != "openvino" or importlib.util.find_spec("openvino")]
    skipped = sorted(set(args.backend) - set(backends))
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = args.model == "synthetic"
        if synthetic:
            # dev-only (mclz_testkit, needs onnx)
            from mclz_testkit.synthetic_model import build_pattern_model  # noqa: PLC0415

            model_dir = build_pattern_model(Path(tmp), input_size=416)
        else:
            model_dir = Path(args.model)
        package = load_model_package(model_dir)
        frames = decode_frames(args.video, args.frames)
        probe = Detector(package, backend=backends[0], threads=1)
        batch_axis = "dynamic" if probe.batch_size is None else f"fixed at {probe.batch_size}"
        versions = {"onnxruntime": importlib.import_module("onnxruntime").__version__}
        if "openvino" in backends:
            versions["openvino"] = importlib.import_module("openvino").__version__
        meta: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M %z"),
            "model": f"{package.name} {package.version}",
            "input": f"{package.input_width}x{package.input_height}",
            "batch_axis": batch_axis,
            "frames": (
                f"{len(frames)} x {frames[0].shape[1]}x{frames[0].shape[0]} from {args.video}"
            ),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "versions": versions,
            "opencv": cv2.__version__,
            "rounds": args.rounds,
            "images_per_round": args.images,
        }
        print(
            f"model {meta['model']}, input {meta['input']}, batch axis {batch_axis} "
            f"({'one inference call per batch' if probe.batch_size is None else 'looped'}); "
            f"{meta['frames']}; {meta['cpu']}, {os.cpu_count()} CPUs, "
            f"load {os.getloadavg()[0]:.1f}; "
            + ", ".join(f"{k} {v}" for k, v in versions.items())
            + (f"; not installed: {', '.join(skipped)}" if skipped else "")
        )
        print(
            f"{args.rounds} interleaved rounds of {args.images} images per configuration; "
            "detect_batch end to end (letterbox + inference + decode/NMS)\n",
            flush=True,
        )
        del probe
        cells = bench_throughput(
            package,
            frames,
            backends=backends,
            threads=args.threads,
            batches=args.batches,
            rounds=args.rounds,
            images_per_round=args.images,
        )
        meta["loadavg_end"] = os.getloadavg()
        print(throughput_table(cells))
        if "openvino" in backends and "onnxruntime" in backends:
            print()
            print(ratio_table(cells, "openvino"))
        stages: list[dict[str, Any]] = []
        if args.stages:
            width, height = (int(v) for v in args.frame.split("x"))
            stage_frames = make_frames(4, width, height) if synthetic else frames[:4]
            stages = print_stages(package, stage_frames, backends, args.threads[0], args.runs)
    if args.json is not None:
        result = {"meta": meta, "cells": [c.summary() for c in cells], "stages": stages}
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
