"""Time the detection stage per frame: letterbox, inference, decode + NMS; batch 1 and 4.

Prints markdown tables (median of --runs runs, milliseconds per frame). By default it builds
the synthetic pattern model from tests/synthetic_model.py (needs the dev extra's ``onnx``);
``--model DIR`` times a real model package instead. Frames are 640x360 with three solid
patches, so the pattern model gives a few hundred NMS candidates per frame.

    .venv/bin/python scripts/bench_detect.py --runs 200 --backend onnxruntime openvino
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.detect import Detector, load_model_package, nms  # noqa: E402

Frame = npt.NDArray[np.uint8]


def median_ms(fn: Callable[[], object], runs: int, per: int) -> float:
    """Median wall time of ``fn`` over ``runs`` calls, in ms, divided by ``per`` frames."""
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / per


def make_frames(count: int, width: int, height: int) -> list[Frame]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per cell (median)")
    parser.add_argument("--threads", type=int, default=1, help="inference threads")
    parser.add_argument("--model", type=Path, help="model package dir (default: synthetic)")
    parser.add_argument("--frame", default="640x360", help="frame size WxH")
    parser.add_argument(
        "--backend", nargs="+", default=["onnxruntime", "openvino"], help="backends to time"
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.frame.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            sys.path.insert(0, str(ROOT / "tests"))
            synthetic = importlib.import_module("synthetic_model")  # dev-only, needs onnx
            model_dir = synthetic.build_pattern_model(Path(tmp))
        else:
            model_dir = args.model
        package = load_model_package(model_dir)
        print(
            f"model {package.name} {package.version}, input {package.input_width}x"
            f"{package.input_height}, frames {width}x{height}, threads {args.threads}, "
            f"median of {args.runs} runs, {platform.processor() or platform.machine()}, "
            f"opencv {cv2.__version__}, numpy {np.__version__}\n"
        )
        print(
            "| backend | batch | letterbox ms/frame | inference ms/frame "
            "| decode+NMS ms/frame | detect_batch ms/frame |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for backend in args.backend:
            if backend == "openvino" and importlib.util.find_spec("openvino") is None:
                print(f"| {backend} | - | not installed | | | |")
                continue
            detector = Detector(package, backend=backend, threads=args.threads)
            for batch in (1, 4):
                cells = bench_detector(detector, make_frames(batch, width, height), args.runs)
                print(f"| {backend} | {batch} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")

    print("\n| NMS candidates | cv2.dnn.NMSBoxesBatched ms | numpy greedy ms |")
    print("|---:|---:|---:|")
    for count, cv, npy in bench_nms(max(20, args.runs // 4)):
        print(f"| {count} | {cv:.3f} | {npy:.3f} |")


if __name__ == "__main__":
    main()
