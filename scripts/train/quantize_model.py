#!/usr/bin/env python3
"""Add a static int8 variant of a package's detector, measured against fp32 on the val split.

Steps (runs in ``.venv``: onnxruntime's quantization tools and the dev extra's ``onnx``)::

    .venv/bin/python scripts/train/quantize_model.py models/default

1. calibration pictures: every k-th training picture of ``data/mclz-v1`` (``--calibration``,
   160 by default, the same ones every run), letterboxed and scaled exactly as
   :class:`agent.detect.detector.Detector` feeds the network;
2. ``onnxruntime.quantization.quantize_static``: QDQ format (onnxruntime and OpenVINO both run
   it as int8), weights int8 per output channel, activations uint8, MinMax calibration. The
   detect head's decoding (the DFL softmax and its conv, the anchor arithmetic, the sigmoid
   and the final concatenation of box pixels with class scores) stays float: one int8 scale
   for a tensor that holds 0..416 pixels and 0..1 scores would erase the scores;
3. ``model.int8.onnx`` is written into the package and listed in its manifest as
   ``variants.int8`` (sha256, how it was made, ``backends: [onnxruntime]``: OpenVINO runs the
   QDQ file slower than its own fp32 on the development machine, see ``BACKENDS``);
4. both variants are scored with the agent's own evaluation (``agent.detect.evaluate``, the
   detector alone, per source, the manifest's thresholds) on the val split; the differences
   go into the variant's ``eval`` entry, and ``default_variant`` becomes ``int8`` when no
   violation class loses more than ``--max-ap50-loss`` (0.01) AP50, else stays ``fp32``
   (``--default int8|fp32`` overrides; the card must then say why).

Re-exporting the package with ``export_model.py`` rewrites the manifest without variants: run
this script again after every export.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from agent.detect.datasets import load_dataset  # noqa: E402
from agent.detect.detector import Detector, letterbox  # noqa: E402
from agent.detect.evaluate import evaluate  # noqa: E402
from agent.detect.model import ModelPackage, add_variant, load_model_package  # noqa: E402

INT8_FILE = "model.int8.onnx"
#: Where ``precision: auto`` runs the int8 file. OpenVINO reads QDQ too, but on the AMD EPYC
#: development machine it ran it slower than its own fp32 (27.5 against 20.1 ms a frame, one
#: thread): its int8 path wants NNCF's own quantization, not done yet.
BACKENDS = ("onnxruntime",)
DEFAULT_DATA = REPO / "data" / "mclz-v1"


def calibration_pictures(data: Path, count: int) -> list[Path]:
    """``count`` training pictures spread evenly over the sorted list (deterministic)."""
    pictures = sorted((data / "images" / "train").glob("*.jpg"))
    pictures = [p for p in pictures if "__r" not in p.stem]  # rare-class repeats are copies
    if not pictures:
        raise SystemExit(f"error: no training pictures in {data / 'images' / 'train'}")
    step = max(1, len(pictures) // count)
    return pictures[::step][:count]


def network_input(package: ModelPackage, picture: Path) -> npt.NDArray[np.float32]:
    """One picture as the detector feeds it: letterboxed, channel order, scale, NCHW."""
    frame = cv2.imread(str(picture))
    if frame is None:
        raise SystemExit(f"error: {picture}: not a readable picture")
    image, _ = letterbox(
        np.ascontiguousarray(frame, dtype=np.uint8), package.input_width, package.input_height
    )
    if package.color == "RGB":
        image = image[:, :, ::-1]
    chw = image.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(package.scale)
    return np.ascontiguousarray(chw)


def head_decode_nodes(model_path: Path) -> list[str]:
    """Names of the nodes that decode the detect head (kept float): every node of the last
    ``/model.N/`` module that is not a convolution, and the DFL's convolution."""
    import onnx  # noqa: PLC0415 - dev dependency

    return _decode_nodes(onnx.load(str(model_path)).graph.node, model_path)


def _decode_nodes(nodes: Sequence[Any], where: Path) -> list[str]:
    modules = [n.name.split("/")[1] for n in nodes if n.name.startswith("/model.")]
    if not modules:
        raise SystemExit(f"error: {where}: node names are not ultralytics' (/model.N/...)")
    head = f"/{modules[-1]}/"
    return [
        n.name
        for n in nodes
        if n.name.startswith(head) and (n.op_type != "Conv" or "/dfl/" in n.name)
    ]


def quantize(package: ModelPackage, pictures: Sequence[Path], target: Path) -> dict[str, Any]:
    """Write the int8 QDQ model to ``target``; return how it was made."""
    from onnxruntime.quantization import (  # noqa: PLC0415
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, input_name: str) -> None:
            self._input_name = input_name
            self._it: Iterator[Path] = iter(pictures)

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            picture = next(self._it, None)
            if picture is None:
                return None
            return {self._input_name: network_input(package, picture)}

    import onnx  # noqa: PLC0415 - dev dependency

    with tempfile.TemporaryDirectory(prefix="mclz-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(package.onnx_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared)).graph
        excluded = _decode_nodes(graph.node, prepared)
        started = time.monotonic()
        quantize_static(
            str(prepared),
            str(target),
            Reader(graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
        seconds = round(time.monotonic() - started, 1)
    return {
        "method": "onnxruntime quantize_static, QDQ, weights int8 per channel, activations "
        "uint8, MinMax calibration",
        "calibration": f"{len(pictures)} training pictures of data/mclz-v1 (every k-th)",
        "float_nodes": f"{len(excluded)} nodes decoding the detect head",
        "seconds": seconds,
    }


def score(package: ModelPackage, data: Path, precision: str) -> dict[str, float | None]:
    """AP50 per labelled class of the detector alone on the val split."""
    detector = Detector(
        package,
        threads=1,
        conf_threshold=0.001,
        max_detections=300,
        stages=False,
        precision=precision,
    )
    report = evaluate(
        detector,
        load_dataset(data, split="val"),
        thresholds=package.thresholds,
        violations=package.violations,
    )
    return {c.label: c.ap for c in report.classes}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("package", type=Path, help="model package directory")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="prepared dataset")
    ap.add_argument("--calibration", type=int, default=160, help="calibration pictures")
    ap.add_argument("--max-ap50-loss", type=float, default=0.01, help="per violation class")
    ap.add_argument("--default", choices=["auto", "int8", "fp32"], default="auto")
    args = ap.parse_args(argv)

    package = load_model_package(args.package)
    pictures = calibration_pictures(args.data, args.calibration)
    how = quantize(package, pictures, package.path / INT8_FILE)
    print(f"quantize: wrote {package.path / INT8_FILE} in {how['seconds']} s")
    add_variant(
        package.path,
        "int8",
        INT8_FILE,
        precision="int8",
        make_default=False,
        backends=list(BACKENDS),
        quantization=how,
    )
    package = load_model_package(args.package)
    fp32, int8 = score(package, args.data, "fp32"), score(package, args.data, "int8")
    delta = {
        label: None
        if fp32[label] is None or int8.get(label) is None
        else round(float(int8[label] or 0.0) - float(fp32[label] or 0.0), 4)
        for label in fp32
    }
    mean = {
        name: round(float(np.mean([v for v in aps.values() if v is not None])), 4)
        for name, aps in (("fp32", fp32), ("int8", int8))
    }
    worst = min(
        (d for label, d in delta.items() if label in package.violations and d is not None),
        default=0.0,
    )
    make_default = args.default == "int8" or (
        args.default == "auto" and worst >= -args.max_ap50_loss
    )

    def cell(value: float | None) -> str:
        return "        -" if value is None else f"{value:9.3f}"

    print("class               fp32 AP50  int8 AP50   change")
    for label in fp32:
        change = delta[label]
        shown = "       -" if change is None else f"{change:+8.4f}"
        print(f"{label:18} {cell(fp32[label])}  {cell(int8.get(label))}  {shown}")
    gap = mean["int8"] - mean["fp32"]
    print(f"{'mean':18} {cell(mean['fp32'])}  {cell(mean['int8'])}  {gap:+8.4f}")
    evaluation = {
        "split": "val of data/mclz-v1, detector alone, per source",
        "ap50_fp32": fp32,
        "ap50_int8": int8,
        "ap50_change": delta,
        "mean_ap50": mean,
        "rule": f"default when no violation class loses more than {args.max_ap50_loss} AP50",
    }
    add_variant(
        package.path,
        "int8",
        INT8_FILE,
        precision="int8",
        make_default=make_default,
        backends=list(BACKENDS),
        quantization=how,
        eval=evaluation,
    )
    print(
        f"quantize: default_variant {'int8' if make_default else 'fp32'} "
        f"(worst violation-class AP50 change {worst:+.4f}, limit -{args.max_ap50_loss})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
