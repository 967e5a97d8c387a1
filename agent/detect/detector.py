"""Detection stage: letterbox frames, run the model package's ONNX graph, decode boxes.

:class:`Detector` runs a verified model package (:mod:`agent.detect.model`) on one of the
backends of :mod:`agent.detect.backends`; pre- and post-processing (letterbox, NMS) live here,
shared by every backend, and the views of :mod:`agent.detect.views` (crop and tiles) are cut
from the frames and merged back here too.

Output convention ``yolo`` is the ultralytics YOLOv8/YOLO11 ONNX export: one output
``[B, 4 + nc, N]`` whose rows are cx, cy, w, h in input pixels followed by ``nc`` class scores
already in 0..1 (no objectness). The transposed ``[B, N, 4 + nc]`` is accepted when the shape
says unambiguously which axis is which.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.backends import FloatArray, OnnxRuntimeBackend, make_backend
from agent.detect.face import HINT_PREFIXES, FaceMaskStage
from agent.detect.model import ModelPackage, _is_int
from agent.detect.views import TileDetection, View, Window, merge_tiles, touches_inner_edge
from agent.errors import ModelError
from agent.records import Detection

logger = logging.getLogger(__name__)

PAD_VALUE: Final = 114

# Candidates kept for NMS after the confidence threshold, highest first. Bounds NMS cost when a
# badly chosen threshold lets thousands of anchors through.
MAX_NMS_CANDIDATES: Final = 2048
#: Images per inference call for a model with a dynamic batch axis (``Detector(max_batch=)``).
#: On a CPU a larger batch buys nothing per image (0.91-1.08x, scripts/bench/bench_detect.py;
#: int8 with two workers on 16 720p frames, side by side: 18.6-19.7 ms per frame at batch 1,
#: 19.2-19.4 at 4) but the runtime keeps the activations of the largest batch it ever ran:
#: batch 4 held 35 MB more than batch 1 with two workers (20 MB with one), and 24 tiles in one
#: call about 670 MB more than 6 (scripts/bench.py --tiles 2x2).
MAX_BATCH: Final = 1

UInt8Array = npt.NDArray[np.uint8]


# --------------------------------------------------------------------------- pre/post-processing


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a frame was placed in the model input: resized size and top-left padding."""

    frame_width: int
    frame_height: int
    resized_width: int
    resized_height: int
    pad_left: int
    pad_top: int


def check_frame(frame_bgr: UInt8Array) -> None:
    """Raise ValueError unless ``frame_bgr`` is an HxWx3 uint8 array."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 BGR frame, got shape {frame_bgr.shape} {frame_bgr.dtype}"
        )


def letterbox(
    frame_bgr: UInt8Array, width: int, height: int, out: UInt8Array | None = None
) -> tuple[UInt8Array, Letterbox]:
    """Resize ``frame_bgr`` into ``width`` x ``height`` keeping its aspect ratio, pad with grey.

    The resized frame is centred; the rest is (114, 114, 114). Returns the HWC BGR image and the
    geometry needed to map boxes back to the frame.

    Raises:
        ValueError: the frame is not an HxWx3 uint8 array.
    """
    check_frame(frame_bgr)
    fh, fw = frame_bgr.shape[:2]
    if fh == 0 or fw == 0:
        raise ValueError(f"empty frame of shape {frame_bgr.shape}")
    ratio = min(width / fw, height / fh)
    rw = min(width, max(1, round(fw * ratio)))
    rh = min(height, max(1, round(fh * ratio)))
    left = (width - rw) // 2
    top = (height - rh) // 2
    geometry = Letterbox(fw, fh, rw, rh, left, top)
    resized = (
        frame_bgr
        if (rw, rh) == (fw, fh)
        else cv2.resize(frame_bgr, (rw, rh), interpolation=cv2.INTER_LINEAR)
    )
    if out is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
    if (rw, rh) != (width, height):
        # Only the borders are filled; the resized frame overwrites the middle.
        out[:top] = PAD_VALUE
        out[top + rh :] = PAD_VALUE
        out[top : top + rh, :left] = PAD_VALUE
        out[top : top + rh, left + rw :] = PAD_VALUE
    out[top : top + rh, left : left + rw] = resized
    return out, geometry


def _to_tensor(image_bgr: UInt8Array, out: FloatArray, *, scale: float, rgb: bool) -> None:
    """Write an HWC BGR uint8 image into a CHW float32 slot, scaled and in the model's order."""
    # cv2.split gives contiguous planes; scaling those is faster than a strided transpose.
    planes = cv2.split(image_bgr)
    if rgb:
        planes = planes[::-1]
    factor = np.float32(scale)
    for channel, plane in enumerate(planes):
        np.multiply(plane, factor, out=out[channel], casting="unsafe")


def nms(
    boxes: FloatArray,
    scores: FloatArray,
    class_ids: npt.NDArray[np.intp],
    *,
    iou_threshold: float,
    max_detections: int,
) -> npt.NDArray[np.intp]:
    """Greedy class-aware non-maximum suppression; returns kept indices, best score first.

    Boxes are x1, y1, x2, y2. A box is dropped when it overlaps a kept, higher-scoring box of
    the same class by IoU above ``iou_threshold``; boxes of different classes never suppress
    each other. Uses OpenCV's batched NMS: at the tens to hundreds of candidates a frame
    gives, it is 10-50 times faster than a numpy loop (see scripts/bench/bench_detect.py).
    """
    if len(scores) == 0:
        return np.empty(0, dtype=np.intp)
    xywh = np.empty((len(boxes), 4), dtype=np.float64)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    # score_threshold -1: candidates are already thresholded; OpenCV keeps only score > it.
    # Python lists convert faster than arrays here, and floats select the Rect2d overload.
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.tolist(), scores.tolist(), class_ids.tolist(), -1.0, float(iou_threshold)
    )
    indices = np.asarray(kept, dtype=np.intp).reshape(-1)
    # OpenCV already returns best first; sort again so ties and versions cannot reorder.
    indices = indices[np.argsort(-scores[indices], kind="stable")]
    return indices[:max_detections]


# --------------------------------------------------------------------------- detector

#: A detector face overlapping a face-stage face at least this much is the same face.
SECOND_OPINION_IOU: Final = 0.3


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Detector:
    """Runs a model package on BGR frames and returns detections in frame coordinates.

    One instance per thread: the OpenVINO backend reuses a single inference request.
    """

    def __init__(
        self,
        package: ModelPackage,
        *,
        backend: str = "onnxruntime",
        threads: int = 1,
        conf_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 100,
        stages: bool = True,
        precision: str = "auto",
        max_batch: int = MAX_BATCH,
    ) -> None:
        """Load the package's ONNX file with ``backend`` and check it against the manifest.

        ``stages=False`` runs the detector alone even when the package has further stages
        (``model eval --stage detector`` scores it that way). ``precision`` picks the
        detector's variant: ``auto`` the package's ``default_variant`` where it is meant for
        ``backend``, ``fp32`` its main file, ``int8`` (or another name) that variant.
        ``max_batch``: frames per inference call when the batch axis is dynamic.

        Raises:
            ModelError: unknown or missing backend, the ONNX file cannot be loaded, or its input
                or output shape does not match the manifest (size, channels, label count).
            ValueError: a threshold, ``threads`` or ``max_detections`` is out of range.
        """
        if not _is_int(threads) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, not {threads!r}")
        if not 0.0 <= conf_threshold <= 1.0:
            raise ValueError(f"conf_threshold must be in 0..1, not {conf_threshold!r}")
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], not {iou_threshold!r}")
        if not _is_int(max_batch) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, not {max_batch!r}")
        if not _is_int(max_detections) or max_detections < 1:
            raise ValueError(f"max_detections must be an integer >= 1, not {max_detections!r}")
        self._package = package
        self._conf = float(conf_threshold)
        self._iou = float(iou_threshold)
        self._max_det = int(max_detections)
        self._max_batch = int(max_batch)
        self._width = package.input_width
        self._height = package.input_height
        self._scale = package.scale
        self._rgb = package.color == "RGB"
        self._labels = package.labels
        self.variant = package.variant(precision, backend)
        self._threads = threads
        self._backend = make_backend(backend, self.variant.onnx_path, threads)
        self._batch_size = self._check_input()
        self._transposed = self._check_output()
        self._canvas = np.empty((self._height, self._width, 3), dtype=np.uint8)
        face = package.stages.get("face") if stages else None
        self._face_spec = face
        self._faces = (
            FaceMaskStage.from_dir(face.path, threads=threads, **face.options)
            if face is not None
            else None
        )
        self._face_labels = frozenset(face.replaces) if face is not None else frozenset()
        self._second_opinion = face is not None and face.second_opinion
        logger.info(
            "loaded model %s %s (%s, %dx%d, %d labels) on %s with %d thread(s)",
            package.name,
            package.version,
            self.variant.name,
            self._width,
            self._height,
            len(self._labels),
            self._backend.name,
            threads,
        )

    def twin(self) -> Detector:
        """Another detector of the same package for another thread, sharing what is safe.

        onnxruntime sessions may run from several threads at once, so the twin shares them:
        the weights and the runtime's working memory are held once, not per detect worker
        (one running detector holds about 140 MB, most of it the sessions' arenas). It gets
        its own letterbox canvas. OpenVINO's single inference request and OpenCV's YuNet
        object keep per-call state: those are made anew.

        Raises:
            ModelError: a backend made anew cannot load (it loaded once already: rare).
        """
        twin = copy.copy(self)
        twin._canvas = np.empty_like(self._canvas)
        if not isinstance(self._backend, OnnxRuntimeBackend):
            twin._backend = make_backend(self._backend.name, self.variant.onnx_path, self._threads)
        if self._faces is not None and self._face_spec is not None:
            if self._faces.detector.backend == "onnxruntime":
                twin._faces = copy.copy(self._faces)  # its own last_ms; the sessions shared
            else:
                twin._faces = FaceMaskStage.from_dir(
                    self._face_spec.path, threads=self._threads, **self._face_spec.options
                )
        return twin

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, indexed by class id."""
        return self._labels

    @property
    def package(self) -> ModelPackage:
        """The model package this detector runs."""
        return self._package

    @property
    def backend_name(self) -> str:
        """``onnxruntime`` or ``openvino``."""
        return self._backend.name

    @property
    def batch_size(self) -> int | None:
        """Fixed batch size of the model, or None when its batch axis is dynamic."""
        return self._batch_size

    def _check_input(self) -> int | None:
        path = self._package.onnx_path
        shape = self._backend.input_shape
        if len(shape) != 4:
            raise ModelError(f"{path}: input has shape {list(shape)}, expected [batch, 3, H, W]")
        batch, channels, height, width = shape
        if channels not in (None, 3):
            raise ModelError(f"{path}: input has {channels} channels, expected 3 (NCHW)")
        for axis, got, want in (("height", height, self._height), ("width", width, self._width)):
            if got is not None and got != want:
                raise ModelError(
                    f"{path}: input {axis} is {got} but the manifest says {want}: "
                    "model and manifest do not belong together"
                )
        return batch

    def _check_output(self) -> bool:
        """Run a blank batch once: warms the backend up and reveals the real output layout."""
        path = self._package.onnx_path
        blank = np.full(
            (self._batch_size or 1, 3, self._height, self._width),
            PAD_VALUE * self._scale,
            dtype=np.float32,
        )
        output = self._backend.run(blank)
        if output.ndim != 3:
            raise ModelError(
                f"{path}: output has shape {list(output.shape)}, "
                "expected [batch, 4 + classes, boxes]"
            )
        rows = 4 + len(self._labels)
        if output.shape[1] == rows:
            transposed = False
        elif output.shape[2] == rows:
            transposed = True
        else:
            raise ModelError(
                f"{path}: output has shape {list(output.shape)}, which does not fit the manifest's "
                f"{len(self._labels)} labels (expected {rows} = 4 box values + one score per label "
                "on axis 1 or 2): the label count does not match the model"
            )
        scores = output[0, :, 4:] if transposed else output[0, 4:]
        if scores.size and (float(scores.min()) < -1e-3 or float(scores.max()) > 1 + 1e-3):
            raise ModelError(
                f"{path}: class scores range {float(scores.min()):.3g}..{float(scores.max()):.3g}, "
                "expected 0..1: export the model with its final sigmoid (ultralytics does)"
            )
        return transposed

    def detect(self, frame_bgr: UInt8Array) -> list[Detection]:
        """Detect objects in one BGR frame.

        Raises:
            ValueError: the frame is not an HxWx3 uint8 array.
            ModelError: inference failed.
        """
        return self.detect_batch([frame_bgr])[0]

    @property
    def face_stage(self) -> FaceMaskStage | None:
        """The package's face-first mask check, when it has one."""
        return self._faces

    @property
    def face_labels(self) -> frozenset[str]:
        """The labels the face stage decides instead of the detector (empty without one)."""
        return self._face_labels

    def detect_batch(self, frames_bgr: Sequence[UInt8Array]) -> list[list[Detection]]:
        """Detect objects in several frames, batched: calls of the model's fixed batch size, or
        of up to ``max_batch`` frames when its batch axis is dynamic (memory stays bounded).

        Frames may differ in size. Returns one list per frame, in order. A package with a
        face stage also runs it on every frame (see :meth:`_with_faces`).

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array.
            ModelError: inference failed.
        """
        found = self._detect_batch(frames_bgr)
        if self._faces is None:
            return found
        return [
            self._with_faces(frame, dets, None)
            for frame, dets in zip(frames_bgr, found, strict=True)
        ]

    def _with_faces(
        self, frame: UInt8Array, found: list[Detection], view: View | None
    ) -> list[Detection]:
        """Put the face stage's decisions in place of the detector's face labels.

        The face stage looks at the view's crop (not its tiles: it finds small faces with its
        own upscaled pass). With ``second_opinion``, a detector face that overlaps no face the
        stage found (IoU < 0.3) is kept as well.
        """
        assert self._faces is not None  # noqa: S101 - callers check
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = view.bounds(width, height) if view is not None else (0, 0, width, height)
        part = frame[y0:y1, x0:x1] if (x0, y0, x1, y1) != (0, 0, width, height) else frame
        cw, ch = x1 - x0, y1 - y0
        # The detector's boxes in the part's pixels: where to look closer (look: people).
        hints = (
            None
            if self._faces.look != "people"
            else [
                (
                    d.label,
                    (
                        d.box[0] * width - x0,
                        d.box[1] * height - y0,
                        d.box[2] * width - x0,
                        d.box[3] * height - y0,
                    ),
                )
                for d in found
                if d.label.startswith(HINT_PREFIXES)
            ]
        )
        faces = [
            Detection(
                d.label,
                d.class_id,
                d.confidence,
                (
                    (x0 + d.box[0] * cw) / width,
                    (y0 + d.box[1] * ch) / height,
                    (x0 + d.box[2] * cw) / width,
                    (y0 + d.box[3] * ch) / height,
                ),
            )
            for d in self._faces.detect(part, hints)
            if d.confidence >= self._conf
        ]
        kept = [d for d in found if d.label not in self._face_labels]
        if self._second_opinion:
            kept.extend(
                d
                for d in found
                if d.label in self._face_labels
                and all(_iou(d.box, f.box) < SECOND_OPINION_IOU for f in faces)
            )
        merged = kept + faces
        merged.sort(key=lambda d: -d.confidence)
        return merged[: self._max_det]

    def _detect_batch(self, frames_bgr: Sequence[UInt8Array]) -> list[list[Detection]]:
        """The detector alone on whole frames (or tiles), batched."""
        if not frames_bgr:
            return []
        chunk = self._batch_size or min(len(frames_bgr), self._max_batch)
        results: list[list[Detection]] = []
        for start in range(0, len(frames_bgr), chunk):
            part = frames_bgr[start : start + chunk]
            # A fixed batch axis needs the last chunk padded; a dynamic one takes it as it is.
            batch, geometries = self.preprocess(part, batch_size=self._batch_size)
            output = self._backend.run(batch)
            results.extend(self.postprocess(output[i], geometries[i]) for i in range(len(part)))
        return results

    def detect_views(
        self,
        frames_bgr: Sequence[UInt8Array],
        views: Sequence[View],
        faces: Sequence[bool] | None = None,
    ) -> list[list[Detection]]:
        """Detect in each frame's view (crop and tiles); boxes are 0..1 of the whole frame.

        All tiles of all frames go through the model together (in batches where the batch
        axis allows). ``faces`` says per frame whether the face stage runs on it (default:
        on every frame); a frame without it keeps the detector's own face labels. The stage
        costs more than the detector on a sub-stream picture, and a camera whose rules look
        at no face label has no use for it.

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array, or views, faces and frames
                differ in number.
            ModelError: inference failed.
        """
        if len(views) != len(frames_bgr):
            raise ValueError(f"{len(frames_bgr)} frame(s) but {len(views)} view(s)")
        if faces is not None and len(faces) != len(frames_bgr):
            raise ValueError(f"{len(frames_bgr)} frame(s) but {len(faces)} face flag(s)")
        if self._faces is None or (faces is not None and not any(faces)):
            if all(v.is_whole for v in views):
                return self._detect_batch(frames_bgr)
            return self.detect_views_plain(frames_bgr, views)
        found = (
            self._detect_batch(frames_bgr)
            if all(v.is_whole for v in views)
            else self.detect_views_plain(frames_bgr, views)
        )
        wanted = [True] * len(frames_bgr) if faces is None else faces
        return [
            self._with_faces(frame, dets, None if view.is_whole else view) if want else dets
            for frame, dets, view, want in zip(frames_bgr, found, views, wanted, strict=True)
        ]

    def detect_views_plain(
        self, frames_bgr: Sequence[UInt8Array], views: Sequence[View]
    ) -> list[list[Detection]]:
        """:meth:`detect_views` for the detector alone (no face stage)."""
        crops: list[UInt8Array] = []
        owners: list[tuple[int, Window, tuple[bool, ...]]] = []
        for i, (frame, view) in enumerate(zip(frames_bgr, views, strict=True)):
            check_frame(frame)
            height, width = frame.shape[:2]
            windows = view.windows(width, height)
            left, top, right, bottom = view.bounds(width, height)
            for x0, y0, x1, y1 in windows:
                crops.append(frame[y0:y1, x0:x1])
                inner = (x0 > left, y0 > top, x1 < right, y1 < bottom)
                owners.append((i, (x0, y0, x1, y1), inner))
        results = self._detect_batch(crops)
        per_frame: list[list[TileDetection]] = [[] for _ in frames_bgr]
        for tile, ((i, (x0, y0, x1, y1), edges), found) in enumerate(
            zip(owners, results, strict=True)
        ):
            height, width = frames_bgr[i].shape[:2]
            tw, th = x1 - x0, y1 - y0
            for det in found:
                bx1, by1, bx2, by2 = det.box
                box = (
                    (x0 + bx1 * tw) / width,
                    (y0 + by1 * th) / height,
                    (x0 + bx2 * tw) / width,
                    (y0 + by2 * th) / height,
                )
                per_frame[i].append(
                    TileDetection(
                        Detection(det.label, det.class_id, det.confidence, box),
                        tile,
                        touches_inner_edge(det.box, edges),
                    )
                )
        merged = []
        for view, tiled in zip(views, per_frame, strict=True):
            detections = (
                [f.detection for f in tiled]
                if view.tiles == 1
                else merge_tiles(tiled, iou_threshold=self._iou)
            )
            detections.sort(key=lambda d: -d.confidence)
            merged.append(detections[: self._max_det])
        return merged

    def preprocess(
        self, frames_bgr: Sequence[UInt8Array], *, batch_size: int | None = None
    ) -> tuple[FloatArray, list[Letterbox]]:
        """Letterbox frames into an NCHW float32 batch; slots past the frames stay grey.

        Raises:
            ValueError: a frame is not an HxWx3 uint8 array.
        """
        size = max(batch_size or len(frames_bgr), len(frames_bgr))
        batch = np.empty((size, 3, self._height, self._width), dtype=np.float32)
        geometries: list[Letterbox] = []
        for i, frame in enumerate(frames_bgr):
            image, geometry = letterbox(frame, self._width, self._height, out=self._canvas)
            _to_tensor(image, batch[i], scale=self._scale, rgb=self._rgb)
            geometries.append(geometry)
        if size > len(frames_bgr):
            batch[len(frames_bgr) :] = np.float32(PAD_VALUE * self._scale)
        return batch, geometries

    def postprocess(self, prediction: FloatArray, geometry: Letterbox) -> list[Detection]:
        """Decode one image's raw output: best class per box, threshold, NMS, map to the frame."""
        pred = prediction.T if self._transposed else prediction  # -> [4 + nc, N]
        scores = pred[4:]
        best = scores.max(axis=0)
        candidates = np.flatnonzero(best >= self._conf)
        if candidates.size == 0:
            return []
        if candidates.size > MAX_NMS_CANDIDATES:
            top = np.argpartition(-best[candidates], MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
            candidates = candidates[top]
        conf = best[candidates]
        class_ids = scores[:, candidates].argmax(axis=0)
        cx, cy, w, h = pred[:4, candidates]
        boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1)
        keep = nms(boxes, conf, class_ids, iou_threshold=self._iou, max_detections=self._max_det)
        boxes = boxes[keep]
        # Input pixels -> 0..1 of the original frame: undo the padding, divide by resized size.
        boxes[:, (0, 2)] = (boxes[:, (0, 2)] - geometry.pad_left) / geometry.resized_width
        boxes[:, (1, 3)] = (boxes[:, (1, 3)] - geometry.pad_top) / geometry.resized_height
        np.clip(boxes, 0.0, 1.0, out=boxes)
        labels = self._labels
        return [
            Detection(
                label=labels[cid],
                class_id=cid,
                confidence=score,
                box=(x1, y1, x2, y2),
            )
            for cid, score, (x1, y1, x2, y2) in zip(
                class_ids[keep].tolist(), conf[keep].tolist(), boxes.tolist(), strict=True
            )
        ]

    def __repr__(self) -> str:
        return (
            f"Detector({self._package.name} {self._package.version}, backend={self.backend_name}, "
            f"input={self._width}x{self._height}, labels={len(self._labels)})"
        )
