#!/usr/bin/env python3
"""Export a trained checkpoint as an agent model package (``models/<name>/``: ONNX + manifest).

Steps (run from ``.venv-train``, which has ultralytics)::

    .venv-train/bin/python scripts/train/export_model.py runs/mclz-v1-n416/weights/best.pt

1. copy the checkpoint aside (a running training may rewrite it) and read its recipe;
2. validate it on the dataset's val split for per-class P / R / AP50 / AP50-95 (``--no-val``
   skips this, and the metrics are then taken from the checkpoint's last validation);
3. export ONNX with ultralytics (opset 17: onnxruntime >= 1.14 and OpenVINO read it), batch
   axis dynamic, height and width fixed to the training size, then simplify with onnxslim;
4. write ``manifest.json`` with ``agent.detect.model.write_manifest`` (sha256, input, labels,
   metrics);
5. verify with the agent's own loader in the main venv (``.venv``, onnxruntime): load the
   package, run one frame of ``../shared/videos/bareheaded_people_indoor.mp4`` at batch 1 and 2,
   print the output shape and the detections.

``--verify-only models/<name>`` runs step 5 alone (it needs only onnxruntime and cv2).
``--openvino`` also writes OpenVINO IR next to the ONNX file (needs ``openvino`` installed).
``--face-stage DIR`` copies a face stage (YuNet + mask classifier, as ``models/default/face``)
into the package and lists it in the manifest's ``stages`` (format ``mclz-model/2``), with the
options ``--face-options`` gives (default: those the shipped package was tuned with).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(REPO / ".yolo"))
os.environ.setdefault("MPLCONFIGDIR", str(REPO / ".yolo" / "matplotlib"))  # not ~/.config

DEFAULT_VIDEO = REPO.parent / "shared" / "videos" / "bareheaded_people_indoor.mp4"
MAIN_PYTHON = REPO / ".venv" / "bin" / "python"
OPSET = 17
_ORIGIN_SCRATCH = (
    "Weights: trained from scratch by the mclz-agent project (no pretrained weights), with "
    "Ultralytics YOLO11 (AGPL-3.0) code."
)
_ORIGIN_COCO = (
    "Weights: fine-tuned by the mclz-agent project from the COCO-pretrained Ultralytics YOLO11n "
    "(AGPL-3.0; rebuilt here from its int8 exports by scripts/train/rebuild_pretrained.py), "
    "with Ultralytics YOLO11 (AGPL-3.0) code."
)
_DATA_LICENSE = (
    " Training data: 'Face Mask Detection' (andrewmvd, CC0 "
    "1.0) and a relabelled SFCHD helmet/workwear subset (Huazhong University of Science and "
    "Technology; no licence stated upstream, used as research and evaluation data only). "
    "Check both before any commercial deployment; see models/default/MODEL_CARD.md."
)
_FACE_LICENSE = (
    " Face stage: YuNet (OpenCV Zoo, Apache-2.0) and a mask classifier trained by the project"
    " on face crops of the facemask data (see face/MODEL_CARD.md)."
)
#: The face stage's options in the shipped package (chosen on val, see the model card).
FACE_OPTIONS: dict[str, Any] = {
    "upscale": 2.0,
    "max_upscaled_pixels": 500000,
    "max_pixels": 350000,
    "look": "people",
}
#: Labels the face stage decides instead of the detector.
FACE_REPLACES = ("face_mask", "face_no_mask")
# Which labels are violations, and of which type (the rule names in configs/example.yaml).
VIOLATIONS = {"face_no_mask": "no_mask", "head_bare": "no_hat", "person_no_uniform": "no_uniform"}


def license_text(*, pretrained: bool, face_stage: bool) -> str:
    """The manifest's licence line for a detector of that origin, with or without a face stage."""
    origin = _ORIGIN_COCO if pretrained else _ORIGIN_SCRATCH
    return origin + _DATA_LICENSE + (_FACE_LICENSE if face_stage else "")


def _options(text: str) -> dict[str, Any]:
    """Parse ``key=value,...`` face-stage options; numbers become int or float."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{part!r}: expected key=value")
        raw = value.strip()
        try:
            out[key.strip()] = int(raw)
        except ValueError:
            try:
                out[key.strip()] = float(raw)
            except ValueError:
                out[key.strip()] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def _thresholds(text: str) -> dict[str, float]:
    """Parse ``label=0.4,label=0.5`` into a mapping."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        label, _, value = part.partition("=")
        out[label.strip()] = float(value)
    return out


NOTES = (
    "Proxy classes: head_covered/head_bare were learned from hard hats on building sites, not "
    "chef hats; person_uniform/person_no_uniform from safety workwear. Facemask images carry no "
    "head/person labels and headcover images no face labels (partial labelling). Metrics are on "
    "the fixed val split that also picked best.pt, so slightly optimistic. See MODEL_CARD.md."
)


def _dynamic_batch_only(src: Path, dst: Path, imgsz: int) -> tuple[list[Any], list[Any]]:
    """Pin height/width of an ultralytics ``dynamic=True`` export, keep the batch dynamic, slim.

    With H and W fixed, onnxslim folds the in-graph anchor computation to constants, so the
    graph is as lean as a static export but still accepts any batch size.
    """
    import onnx  # noqa: PLC0415 - training venv only
    import onnxslim  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis in (2, 3):
        dims[axis].ClearField("dim_param")
        dims[axis].dim_value = imgsz
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    n_anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    out_dims[2].ClearField("dim_param")
    out_dims[2].dim_value = n_anchors
    slim = onnxslim.slim(model)
    onnx.checker.check_model(slim)
    onnx.save(slim, str(dst))

    def shape(vi: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return shape(slim.graph.input[0]), shape(slim.graph.output[0])


def _metrics_from_val(
    model: Any, data: str, imgsz: int, names: list[str], workdir: Path
) -> dict[str, Any]:
    res = model.val(
        data=data,
        imgsz=imgsz,
        batch=16,
        plots=False,
        device="cpu",
        workers=0,
        project=str(workdir),
        name="val",
    )
    per_class: dict[str, Any] = {}
    for i, name in enumerate(names):
        p, r, ap50, ap = (round(float(v), 4) for v in res.box.class_result(i))
        per_class[name] = {"P": p, "R": r, "AP50": ap50, "AP50-95": ap}
    return {
        "split": "val",
        "all": {
            "P": round(float(res.box.mp), 4),
            "R": round(float(res.box.mr), 4),
            "AP50": round(float(res.box.map50), 4),
            "AP50-95": round(float(res.box.map), 4),
        },
        "per_class": per_class,
    }


def _metrics_from_ckpt(ckpt: dict[str, Any]) -> dict[str, Any]:
    tm = ckpt.get("train_metrics") or {}
    return {
        "split": "val (from the checkpoint's last validation; no per-class figures)",
        "all": {
            "P": tm.get("metrics/precision(B)"),
            "R": tm.get("metrics/recall(B)"),
            "AP50": tm.get("metrics/mAP50(B)"),
            "AP50-95": tm.get("metrics/mAP50-95(B)"),
        },
    }


def export(args: argparse.Namespace) -> Path:
    """Export ``args.weights`` into ``models/<name>/`` and return the package directory."""
    import torch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415 - training venv only
    from ultralytics import YOLO  # noqa: PLC0415

    from agent.detect.model import stage_entry, write_manifest  # noqa: PLC0415

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights.resolve()
    out_dir: Path = (args.out or REPO / "models" / "default").resolve()
    with tempfile.TemporaryDirectory(prefix="mclz-export-") as tmp:
        pt = Path(tmp) / "model.pt"
        shutil.copy2(weights, pt)  # a running training rewrites best.pt/last.pt in place
        ckpt = torch.load(pt, map_location="cpu", weights_only=False)
        train_args = ckpt.get("train_args") or {}
        results = ckpt.get("train_results") or {}
        epochs_done = int(max(results.get("epoch") or [ckpt.get("epoch", -1) + 1]))
        imgsz = int(args.imgsz or train_args.get("imgsz") or 416)
        data = str(args.data or train_args.get("data") or "")
        model = YOLO(str(pt))
        names = [model.names[i] for i in range(len(model.names))]

        if args.val and data:
            metrics = _metrics_from_val(model, data, imgsz, names, Path(tmp))
            model = YOLO(str(pt))  # val() may fuse layers; export from a fresh load
        else:
            metrics = _metrics_from_ckpt(ckpt)

        raw = Path(
            model.export(
                format="onnx",
                imgsz=imgsz,
                opset=OPSET,
                dynamic=True,
                simplify=False,
                nms=False,
                batch=1,
                device="cpu",
            )
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "model.onnx"
        in_shape, out_shape = _dynamic_batch_only(raw, onnx_path, imgsz)
        print(f"export: {onnx_path} input {in_shape} output {out_shape}")

        if args.openvino:
            ov = Path(model.export(format="openvino", imgsz=imgsz, dynamic=False))
            shutil.copytree(ov, out_dir / "openvino", dirs_exist_ok=True)
            print(f"export: OpenVINO IR in {out_dir / 'openvino'}")

    stages: dict[str, dict[str, Any]] = {}
    notes = NOTES
    if args.face_stage:
        source = args.face_stage.resolve()
        target = out_dir / "face"
        if source != target:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
        options = {**FACE_OPTIONS, **(args.face_options or {})}
        stages["face"] = stage_entry(
            out_dir,
            "face",
            replaces=FACE_REPLACES,
            second_opinion=args.second_opinion,
            options=options,
        )
        notes += (
            " Face stage (stages.face): YuNet finds faces, a small CNN decides mask / no mask per"
            " face crop, instead of the detector's face classes"
            + (
                " (the detector's faces the stage did not find are kept)."
                if args.second_opinion
                else "."
            )
        )
        print(f"export: face stage from {source}, options {options}")
    # train.py passes pretrained=True exactly when it starts from a .pt (the COCO checkpoint);
    # a resumed run's "model" is its own last.pt, so the flag, not the path, tells.
    pretrained = bool(train_args.get("pretrained"))
    run_name = weights.parent.parent.name if weights.parent.name == "weights" else weights.stem
    version = args.version or f"{dt.date.today():%Y.%m.%d}-{run_name}-e{epochs_done}"
    manifest = write_manifest(
        out_dir,
        name=args.name,
        version=version,
        onnx_file="model.onnx",
        labels=names,
        input_width=imgsz,
        input_height=imgsz,
        violations=VIOLATIONS,
        thresholds=args.thresholds or {},
        stages=stages or None,
        license=license_text(pretrained=pretrained, face_stage=bool(stages)),
        training={
            "data": data,
            "model": str(train_args.get("model", "")),
            "checkpoint": f"{run_name}/{weights.name}",
            "epochs": epochs_done,
            "epochs_planned": train_args.get("epochs"),
            "imgsz": imgsz,
            "batch": train_args.get("batch"),
            "ultralytics": ckpt.get("version"),
            "checkpoint_date": ckpt.get("date"),
            "metrics": metrics,
        },
        export={"opset": OPSET, "dynamic_batch": True, "simplified": "onnxslim"},
        notes=notes,
    )
    print(f"export: wrote {manifest}")
    print(json.dumps(metrics, indent=2))
    return out_dir


def verify(package_dir: Path, video: Path, threads: int = 1) -> None:
    """Load the package like the agent does and run one video frame through it (batch 1 and 2).

    Raises:
        RuntimeError: the video has no readable frame or the output shape is unexpected.
    """
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    from agent.detect.detector import Detector, letterbox  # noqa: PLC0415
    from agent.detect.model import load_model_package  # noqa: PLC0415

    package = load_model_package(package_dir)
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 300)  # 30 s in: a person is near the table
    ok, raw = cap.read()
    cap.release()
    if not ok:
        raise RuntimeError(f"{video}: no frame could be read")
    frame = np.ascontiguousarray(raw, dtype=np.uint8)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(package.onnx_path), opts, providers=["CPUExecutionProvider"])
    image, _ = letterbox(frame, package.input_width, package.input_height)
    x = image[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) * package.scale
    for batch in (1, 2):
        inp = np.repeat(x, batch, axis=0)
        (out,) = sess.run(None, {sess.get_inputs()[0].name: inp})
        print(f"verify: onnxruntime {ort.__version__} batch {batch}: output shape {out.shape}")
        if out.shape[:2] != (batch, 4 + len(package.labels)):
            raise RuntimeError(f"unexpected output shape {out.shape}")

    detector = Detector(package, threads=threads, conf_threshold=0.25)
    dets = detector.detect(frame)
    print(f"verify: frame {frame.shape[1]}x{frame.shape[0]}: {len(dets)} detections (conf>=0.25)")
    for det in dets[:10]:
        print(f"  {det}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("weights", type=Path, nargs="?", help="best.pt or last.pt")
    ap.add_argument("--name", default="mclz-default", help="package name (models/<name>/)")
    ap.add_argument("--out", type=Path, help="package directory (default models/default)")
    ap.add_argument("--version", help="manifest version (default <date>-<run>-e<epochs>)")
    ap.add_argument("--imgsz", type=int, help="input size (default: the training imgsz)")
    ap.add_argument("--data", help="dataset.yaml for metrics (default: the training data)")
    ap.add_argument(
        "--val",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="validate for per-class metrics (default on)",
    )
    ap.add_argument("--openvino", action="store_true", help="also write OpenVINO IR")
    ap.add_argument(
        "--thresholds",
        type=_thresholds,
        help="default confidence per label for the manifest, e.g. head_bare=0.4,face_no_mask=0.4",
    )
    ap.add_argument(
        "--face-stage",
        type=Path,
        metavar="DIR",
        help="face stage folder to include (YuNet + mask classifier, e.g. models/default/face)",
    )
    ap.add_argument(
        "--face-options",
        type=_options,
        help=f"face stage options over the defaults {FACE_OPTIONS}, e.g. upscale=1.5",
    )
    ap.add_argument(
        "--second-opinion",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the detector's faces the face stage did not find (default on)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="frame source for verify")
    ap.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify the package after export (default on)",
    )
    ap.add_argument("--verify-only", type=Path, metavar="PACKAGE_DIR", help="only verify")
    args = ap.parse_args(argv)

    if args.verify_only:
        verify(args.verify_only, args.video, args.threads)
        return 0
    if args.weights is None:
        ap.error("weights is required unless --verify-only is given")
    package_dir = export(args)
    if not args.verify:
        return 0
    # Verify with the agent's runtime environment, not the training one.
    python = MAIN_PYTHON if MAIN_PYTHON.exists() else Path(sys.executable)
    cmd = [str(python), str(Path(__file__).resolve()), "--verify-only", str(package_dir)]
    cmd += ["--video", str(args.video), "--threads", str(args.threads)]
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
