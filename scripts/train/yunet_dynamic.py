#!/usr/bin/env python3
"""Make the face stage's YuNet runnable by onnxruntime at any picture size.

``yunet_n_640_640.onnx`` (OpenCV Zoo / libfacedetection.train, Apache-2.0) declares a fixed
1x3x640x640 input and fixed output lengths; ``cv2.FaceDetectorYN`` reshapes the network itself,
onnxruntime refuses any other size. The network is fully convolutional and its outputs are
flattened per stride, so nothing in the graph depends on 640: this script copies the file with
the input's height and width and the outputs' length made symbolic (and the stored
intermediate shapes dropped, onnxruntime infers them), checks that onnxruntime runs it at two
sizes, and records the copy in the folder's ``mask_classifier.json`` as
``face_detector.dynamic`` (file, sha256, the original's sha256). The weights are not touched.
:class:`agent.detect.face.FaceDetector` then runs YuNet with onnxruntime (1.5-1.7x faster than
OpenCV's DNN on one core here) and decodes the outputs as OpenCV does.

Runs in ``.venv`` (onnx is a dev dependency; the box only reads the result)::

    .venv/bin/python scripts/train/yunet_dynamic.py models/default/face

Idempotent: the same input gives the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a plain script, from any directory
    sys.path.insert(0, str(REPO))

from agent.detect.face import META_FILE, YUNET_DYNAMIC_FILE, load_meta  # noqa: E402


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_dynamic(source: Path, target: Path) -> None:
    """Write ``source`` to ``target`` with free input height/width and free output lengths."""
    import onnx  # noqa: PLC0415 - dev dependency

    model = onnx.load(str(source))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise SystemExit(f"{source}: expected a 4-d input, got {len(dims)} dimensions")
    for axis, name in ((2, "height"), (3, "width")):
        dims[axis].ClearField("dim_value")
        dims[axis].dim_param = name
    for output in model.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        if len(out_dims) >= 2:
            out_dims[1].ClearField("dim_value")
            out_dims[1].dim_param = "cells"
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    target.write_bytes(model.SerializeToString())


def check_runs(path: Path) -> None:
    """onnxruntime loads the copy and runs it at two sizes with the expected output lengths."""
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((320, 320), (448, 768)):
        outputs = session.run(
            None, {session.get_inputs()[0].name: np.zeros((1, 3, height, width), np.float32)}
        )
        cells = {
            o.name: out.shape[1] for o, out in zip(session.get_outputs(), outputs, strict=True)
        }
        for stride in (8, 16, 32):
            expected = (height // stride) * (width // stride)
            if cells[f"cls_{stride}"] != expected:
                raise SystemExit(
                    f"{path}: stride {stride} gives {cells[f'cls_{stride}']} cells at "
                    f"{width}x{height}, expected {expected}"
                )
    print(
        f"yunet_dynamic: {path.name} runs in onnxruntime {ort.__version__} at 320x320 and 768x448"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("folder", type=Path, help="face model folder (with mask_classifier.json)")
    args = ap.parse_args(argv)

    meta = load_meta(args.folder)
    source = args.folder / str(meta["face_detector"]["file"])
    if _sha256(source) != meta["face_detector"]["sha256"]:
        raise SystemExit(f"{source}: sha256 does not match {args.folder / META_FILE}")
    target = args.folder / YUNET_DYNAMIC_FILE
    make_dynamic(source, target)
    check_runs(target)
    meta["face_detector"]["dynamic"] = {
        "file": YUNET_DYNAMIC_FILE,
        "sha256": _sha256(target),
        "derived_from_sha256": meta["face_detector"]["sha256"],
        "how": "scripts/train/yunet_dynamic.py: input height/width and output lengths made "
        "symbolic, stored intermediate shapes dropped; weights unchanged",
    }
    (args.folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(f"yunet_dynamic: wrote {target} and face_detector.dynamic in {args.folder / META_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
