"""Face-first mask check: find every face with YuNet, then decide mask / no mask per face crop.

The project's YOLO detector, trained on about 2,400 proxy images, loses faces before any mask
decision is made (28 % of unmasked faces found on held-out images; nothing for a face 300+ px
tall in a 1280x720 close-up). Here the two questions are asked separately:

1. :class:`FaceDetector` runs YuNet-n (Apache-2.0, 317 kB) on the whole frame at its own
   size, plus one upscaled pass for small faces; the two passes are merged by NMS. YuNet runs
   in onnxruntime from a copy with free input size (1.5-1.7x faster on one core than OpenCV's
   ``cv2.FaceDetectorYN``, the same faces), or in OpenCV from the original file.
2. :class:`MaskClassifier` runs a small CNN (``scripts/train/mask_classifier.py``) on a square
   crop around each face, with onnxruntime, all faces of a frame in one batch. Its classes are
   ``mask``, ``no_mask`` and ``mask_incorrect``; a mask worn wrongly does not protect, so it
   counts as no mask.
3. :class:`FaceMaskStage` turns a BGR frame into :class:`agent.records.Detection` records
   labelled ``face_mask`` / ``face_no_mask`` (the agent's labels and class ids), boxes
   normalised to 0..1 like the detector's, so the rules engine takes them unchanged.

Small faces: whole frame upscaled, not tiles. Measured on the 108 val images of
``facemask`` (452 faces, 81 unmasked; images about 400x300; YuNet score >= 0.6, NMS 0.3,
one OpenCV thread on the shared 2-core machine; a face counts as found at IoU >= 0.3 with
its annotated box; false faces: found boxes on no annotated face), second pass added to
the native-size pass:

================================  ====  ========  =======  ===========  ==========
second pass                       all   unmasked  < 16 px  false faces  ms / image
================================  ====  ========  =======  ===========  ==========
none (native only)                0.80  0.85      0.55     54           7
whole frame upscaled 1.5x         0.87  0.91      0.76     72           23
whole frame upscaled 2x           0.89  0.96      0.79     72           33
2x2 tiles, 20 % overlap, each 2x  0.88  0.95      0.78     91           40
2x2 tiles, 20 % overlap, native   0.82  0.85      0.57     73           17
================================  ====  ========  =======  ===========  ==========

Tiles at the same magnification cost more (the overlap is analysed twice), cut faces at
their edges and gave more false faces; tiles at native size add little, because YuNet is
fully convolutional and sees the same pixels. So the second pass is the whole frame
upscaled by ``upscale`` (2x). The native pass stays for large faces: on the 2x frame alone,
a 400 px face in a 1280x720 close-up came out as a part of the face (IoU 0.21 with it;
0.70 at native size). YuNet costs about 60 ms per megapixel on one core, so the upscaled
pass is capped at ``max_upscaled_pixels`` (1 MP, about 60 ms): a 640x360 sub-stream gets
the full 2x, 960x540 1.39x, and 1280x720 or more none, since a kitchen camera's 40-80 px
heads in 1080p are found at native size (YuNet-n native: 0.91 of faces 32-64 px, 0.97
above 64 px, ``../shared/weights/README.md``). A cap of 2.1 MP made a 1280x720 frame
(1.51x pass) cost more than a 1080p frame: 290 against 196 ms on one busy core.

Faces cut by the frame's edge below the eyes (mouth corners outside the frame) are left
undecided: their crop shows forehead and eyes only, and on val 4 such faces were called "no
mask", none of them rightly.

What it reaches on the val split (``scripts/train/eval_face.py``; confidence = face score x
P(no mask); recall of the 81 unmasked faces / precision of the no-mask decisions):

==========  ===========  ===========  ======================================
confidence  all faces    >= 32 px     per bucket 32-64 / 64-128 / >128 recall
==========  ===========  ===========  ======================================
0.5         0.91 / 0.59  0.93 / 0.79  0.89 / 1.00 / 1.00
0.6         0.88 / 0.72  0.93 / 0.90  0.89 / 1.00 / 1.00
0.7         0.80 / 0.86  0.90 / 0.93  0.89 / 1.00 / 0.67
==========  ===========  ===========  ======================================

Faces of 32 px and more (a kitchen camera's) reach the issue's target at 0.6; all faces do
not: precision 0.90 only from 0.76 on (recall 0.74), held down by faces under 32 px, where
YuNet's false faces and faces the annotators skipped count against it (on annotated faces
alone the precision is 0.93 at 0.6). For comparison, the YOLO detector found 28 % of
unmasked held-out faces (the model issue's figure).

Nothing here imports torch; onnxruntime is imported when a classifier is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.datasets import AGENT_LABELS
from agent.detect.model import FACE_LOOKS, verified_file
from agent.errors import ModelError
from agent.records import Detection

logger = logging.getLogger(__name__)

UInt8Array = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]
PixelBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels

#: Classifier classes, in output order; ``scripts/train/mask_classifier.py`` writes them.
CLASSIFIER_LABELS: Final = ("mask", "no_mask", "mask_incorrect")
#: Classifier classes that count as no mask for the agent.
NO_MASK_CLASSES: Final = frozenset({"no_mask", "mask_incorrect"})
#: The agent labels this stage emits, with the detector's class ids.
MASK_LABEL: Final = "face_mask"
NO_MASK_LABEL: Final = "face_no_mask"
MASK_CLASS_ID: Final = AGENT_LABELS.index(MASK_LABEL)
NO_MASK_CLASS_ID: Final = AGENT_LABELS.index(NO_MASK_LABEL)

YUNET_FILE: Final = "yunet_n_640_640.onnx"
#: The same network with free input size, for onnxruntime (``scripts/train/yunet_dynamic.py``).
YUNET_DYNAMIC_FILE: Final = "yunet_n_dynamic.onnx"
CLASSIFIER_FILE: Final = "mask_classifier.onnx"
META_FILE: Final = "mask_classifier.json"
META_FORMAT: Final = "mclz-face/1"

#: YuNet score below which a candidate is no face. 0.6 as in ``../shared/weights/README.md``;
#: on the val split 0.5 found two more of the 81 unmasked faces and 40 more false faces.
DEFAULT_SCORE_THRESHOLD: Final = 0.6
DEFAULT_NMS_THRESHOLD: Final = 0.3
DEFAULT_TOP_K: Final = 200
DEFAULT_UPSCALE: Final = 2.0
DEFAULT_MAX_UPSCALED_PIXELS: Final = 1_000_000
#: An upscaled pass below this factor is skipped: it would see faces hardly larger than the
#: native pass does (not measured below 1.5x, which found 0.91 of unmasked faces, native 0.85).
MIN_USEFUL_UPSCALE: Final = 1.25
# YuNet's output row: x, y, w, h, 5 landmarks (x, y), score.
_SCORE_COLUMN: Final = 14
#: YuNet's feature strides; its input is padded to a multiple of the largest.
_YUNET_STRIDES: Final = (8, 16, 32)
_YUNET_DIVISOR: Final = 32
#: How YuNet can be run (:class:`FaceDetector`'s ``backend``).
FACE_BACKENDS: Final = ("onnxruntime", "opencv")
#: Where the stage's closer look goes (:class:`FaceMaskStage`'s ``look``): ``frame``, the
#: whole frame upscaled; ``people``, only around the people, heads and faces the detector
#: found (:func:`look_regions`).
LOOKS: Final = FACE_LOOKS
#: Label prefixes of the detector's boxes that say where faces can be.
HINT_PREFIXES: Final = ("person", "head", "face")
#: A person's box: the top share of it holds the head (standing or bending over a counter).
PERSON_HEAD_SHARE: Final = 0.45
#: A look region is a square this many times the hint's side, centred on it: YuNet needs
#: some context around a face, and a head box from a small picture is loose.
REGION_SCALE: Final = 1.6
#: Regions are at least this wide (frame pixels): a 6 px head box still gets a useful crop.
MIN_REGION_PX: Final = 48.0
#: When the regions cover more than this share of the frame, the whole frame is looked at.
MAX_REGION_SHARE: Final = 0.6


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _side(box: PixelBox) -> float:
    """A face's size: sqrt of its box area."""
    return math.sqrt(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def _check_frame(frame_bgr: UInt8Array) -> None:
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
        raise ValueError(
            f"expected an HxWx3 uint8 BGR frame, got shape {frame_bgr.shape} {frame_bgr.dtype}"
        )


# --------------------------------------------------------------------------- crops


def crop_face(
    frame_bgr: UInt8Array,
    box: PixelBox,
    *,
    size: int,
    margin: float,
    angle: float = 0.0,
) -> UInt8Array:
    """The classifier's view of a face: a ``size`` x ``size`` BGR square around ``box``.

    The square is centred on the box, its side the box's longer side plus ``margin`` of it on
    each side (context: a mask's straps, the chin), rotated by ``angle`` degrees (training
    only). Parts outside the frame repeat the frame's edge. Large faces are shrunk with area
    averaging first, so a 400 px face does not alias on its way to 64 px. Training and
    inference both crop here, so the classifier sees at run time what it learned on.
    """
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = max(x2 - x1, y2 - y1, 1.0) * (1.0 + 2.0 * margin)
    scale = size / side
    source = frame_bgr
    if scale < 0.5:
        # Shrink the region the crop can reach (the rotated square's circumcircle) first.
        half = side * 0.75
        height, width = frame_bgr.shape[:2]
        rx0, ry0 = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
        rx1, ry1 = min(width, math.ceil(cx + half)), min(height, math.ceil(cy + half))
        if rx1 > rx0 and ry1 > ry0:
            region = frame_bgr[ry0:ry1, rx0:rx1]
            new_w = max(1, round((rx1 - rx0) * scale))
            new_h = max(1, round((ry1 - ry0) * scale))
            source = np.asarray(
                cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA), dtype=np.uint8
            )
            fx, fy = new_w / (rx1 - rx0), new_h / (ry1 - ry0)
            cx, cy = (cx - rx0) * fx, (cy - ry0) * fy
            scale /= fx
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[0, 2] += size / 2.0 - cx
    matrix[1, 2] += size / 2.0 - cy
    crop = cv2.warpAffine(
        source, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(crop, dtype=np.uint8)


def look_regions(
    hints: Sequence[tuple[str, PixelBox]], width: int, height: int
) -> list[PixelBox] | None:
    """Where a closer look can find faces: squares around the detector's people and heads.

    ``hints`` are (label, box in frame pixels). A person's box gives its top
    :data:`PERSON_HEAD_SHARE`; a head or face box itself. Each becomes a square of
    :data:`REGION_SCALE` times its longer side (at least :data:`MIN_REGION_PX`), clipped to
    the frame; overlapping squares are merged into the rectangle around both. Returns None
    when the regions cover more than :data:`MAX_REGION_SHARE` of the frame (look at all of
    it), an empty list when there is no hint (no closer look).
    """
    boxes: list[list[float]] = []
    for label, (x1, y1, x2, y2) in hints:
        if not label.startswith(HINT_PREFIXES):
            continue
        bottom = y1 + PERSON_HEAD_SHARE * (y2 - y1) if label.startswith("person") else y2
        half = max(x2 - x1, bottom - y1, MIN_REGION_PX / REGION_SCALE) * REGION_SCALE / 2.0
        cx, cy = (x1 + x2) / 2.0, (y1 + bottom) / 2.0
        box = [
            max(0.0, cx - half),
            max(0.0, cy - half),
            min(width, cx + half),
            min(height, cy + half),
        ]
        if box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0:
            boxes.append(box)
    merged = True
    while merged:  # a handful of boxes: the quadratic merge is cheap
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
    if area > MAX_REGION_SHARE * width * height:
        return None
    return [(b[0], b[1], b[2], b[3]) for b in boxes]


def crops_to_tensor(crops: Sequence[UInt8Array]) -> FloatArray:
    """BGR uint8 crops as the classifier's input: NCHW float32 RGB in 0..1."""
    batch = np.stack([c[:, :, ::-1] for c in crops]).astype(np.float32)
    batch *= np.float32(1.0 / 255.0)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- face detector


@dataclass(frozen=True, slots=True)
class Face:
    """A face YuNet found: ``box`` in frame pixels (clipped to the frame), YuNet's score
    (0..1) and its five landmarks (right eye, left eye, nose tip, right and left mouth
    corner; x, y in frame pixels, possibly outside the frame)."""

    box: PixelBox
    score: float
    landmarks: tuple[tuple[float, float], ...] = ()

    def mouth_in(self, width: int, height: int) -> bool:
        """Whether both mouth corners lie inside a ``width`` x ``height`` frame.

        A face cut by the frame's edge below the eyes shows no mouth to judge a mask by;
        without landmarks, True.
        """
        return all(0.0 <= x < width and 0.0 <= y < height for x, y in self.landmarks[3:5])


class FaceDetector:
    """YuNet on a frame at its size plus one upscaled pass; boxes merged by NMS.

    ``backend`` runs the network: ``"onnxruntime"`` (a copy of YuNet whose input height and
    width are left free, ``scripts/train/yunet_dynamic.py``; the outputs decoded here as OpenCV
    decodes them) or ``"opencv"`` (``cv2.FaceDetectorYN`` on the original file). Both give the
    same faces (``tests/test_face.py`` compares them); onnxruntime is 1.5-1.7x faster on one
    core (11 against 19 ms for a 768x432 frame) and honours ``threads``.

    ``upscale`` is the second pass's factor (1 disables it), capped so the upscaled frame
    holds at most ``max_upscaled_pixels``; a cap below 1.25x skips the pass. Both passes use
    ``score_threshold``; their faces are merged by NMS at ``nms_threshold`` and the best
    ``top_k`` kept. Not safe to share across threads (the OpenCV object holds its input size).

    Raises:
        ValueError: a setting is out of range.
        ModelError: the ONNX file is missing, unreadable or not a YuNet model (the message
            names the file).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = DEFAULT_NMS_THRESHOLD,
        top_k: int = DEFAULT_TOP_K,
        upscale: float = DEFAULT_UPSCALE,
        max_upscaled_pixels: int = DEFAULT_MAX_UPSCALED_PIXELS,
        max_pixels: int | None = None,
        backend: str = "opencv",
        threads: int = 1,
    ) -> None:
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        if not 0.0 < score_threshold < 1.0:
            raise ValueError(f"score_threshold must be in (0, 1), got {score_threshold}")
        if not 0.0 < nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {nms_threshold}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not 1.0 <= upscale <= 4.0:
            raise ValueError(f"upscale must be in [1, 4], got {upscale}")
        if max_upscaled_pixels < 1:
            raise ValueError(f"max_upscaled_pixels must be >= 1, got {max_upscaled_pixels}")
        if backend not in FACE_BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(FACE_BACKENDS)}, got {backend!r}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.path = Path(model_path)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.upscale = upscale
        self.max_upscaled_pixels = max_upscaled_pixels
        self.max_pixels = max_pixels
        self.backend = backend
        if not self.path.is_file():
            raise ModelError(f"{self.path}: face detector model not found")
        if backend == "onnxruntime":
            self._net: Any = None
            self._session = _yunet_session(self.path, threads)
            self._errors = _onnxruntime_errors()
            # Read once: the session's metadata calls cost more than the decoding per pass.
            self._input_name = self._session.get_inputs()[0].name
            self._output_names = [o.name for o in self._session.get_outputs()]
        else:
            try:
                # Per pass, YuNet keeps more candidates than the merged result: NMS across passes.
                self._net = cv2.FaceDetectorYN.create(
                    str(self.path), "", (320, 320), score_threshold, nms_threshold, 5 * top_k
                )
            except cv2.error as exc:
                raise ModelError(
                    f"{self.path}: OpenCV cannot load the face detector: {exc}"
                ) from exc
        # A file that loads but is not YuNet fails only when run: find out now.
        self._run(np.zeros((64, 64, 3), dtype=np.uint8))

    def upscale_for(self, width: int, height: int) -> float:
        """The second pass's factor for a ``width`` x ``height`` frame; 1.0 when it is skipped."""
        factor = min(self.upscale, math.sqrt(self.max_upscaled_pixels / (width * height)))
        return factor if factor >= MIN_USEFUL_UPSCALE else 1.0

    def native_scale_for(self, width: int, height: int) -> float:
        """The first pass's factor: 1.0, or below 1 when the frame holds over ``max_pixels``.

        YuNet costs about 60 ms per megapixel on one core: a 1080p frame at its size costs
        four detector inferences. Shrunk to ``max_pixels``, its 40-80 px kitchen faces stay
        above 16 px, where YuNet-n finds 0.83-0.91 of faces.
        """
        if self.max_pixels is None or width * height <= self.max_pixels:
            return 1.0
        return math.sqrt(self.max_pixels / (width * height))

    def _run(self, image: UInt8Array) -> npt.NDArray[np.float32]:
        if self._net is None:
            return self._run_onnxruntime(image)
        height, width = image.shape[:2]
        try:
            self._net.setInputSize((width, height))
            result: Any = self._net.detect(image)  # (status, faces or None when none)
        except cv2.error as exc:
            raise ModelError(
                f"{self.path}: face detection failed (not a YuNet model?): {exc}"
            ) from exc
        if result[1] is None:
            return np.zeros((0, _SCORE_COLUMN + 1), dtype=np.float32)
        faces = np.asarray(result[1], dtype=np.float32)
        if faces.ndim != 2 or faces.shape[1] < _SCORE_COLUMN + 1:
            raise ModelError(f"{self.path}: unexpected face detector output {faces.shape}")
        return faces

    def _run_onnxruntime(self, image: UInt8Array) -> npt.NDArray[np.float32]:
        """One pass through YuNet with onnxruntime, decoded as ``cv2.FaceDetectorYN`` does.

        The picture is padded at the right and bottom to a multiple of 32, fed as float BGR
        0..255; per stride s (8, 16, 32) and cell (row r, column c): score =
        sqrt(clip(cls) x clip(obj)), centre ((c + dx) s, (r + dy) s), size (e^dw s, e^dh s),
        landmark k at ((c + kx) s, (r + ky) s); then NMS at ``nms_threshold``, best 5 x top_k.
        """
        height, width = image.shape[:2]
        pad_h = ((height - 1) // _YUNET_DIVISOR + 1) * _YUNET_DIVISOR
        pad_w = ((width - 1) // _YUNET_DIVISOR + 1) * _YUNET_DIVISOR
        blob = np.zeros((1, 3, pad_h, pad_w), dtype=np.float32)
        blob[0, :, :height, :width] = image.transpose(2, 0, 1)
        try:
            outputs = self._session.run(None, {self._input_name: blob})
        except self._errors as exc:
            raise ModelError(f"{self.path}: face detection failed: {exc}") from exc
        named = dict(zip(self._output_names, outputs, strict=True))
        rows: list[npt.NDArray[np.float32]] = []
        try:
            for stride in _YUNET_STRIDES:
                cols = pad_w // stride
                cells = (pad_h // stride) * cols
                cls = np.clip(named[f"cls_{stride}"].reshape(cells), 0.0, 1.0)
                obj = np.clip(named[f"obj_{stride}"].reshape(cells), 0.0, 1.0)
                score = np.sqrt(cls * obj)
                keep = np.flatnonzero(score >= self.score_threshold)
                if keep.size == 0:
                    continue
                bbox = named[f"bbox_{stride}"].reshape(cells, 4)[keep]
                kps = named[f"kps_{stride}"].reshape(cells, 10)[keep]
                col = (keep % cols).astype(np.float32)
                row = (keep // cols).astype(np.float32)
                w = np.exp(bbox[:, 2]) * stride
                h = np.exp(bbox[:, 3]) * stride
                out = np.empty((keep.size, _SCORE_COLUMN + 1), dtype=np.float32)
                out[:, 0] = (col + bbox[:, 0]) * stride - w / 2
                out[:, 1] = (row + bbox[:, 1]) * stride - h / 2
                out[:, 2] = w
                out[:, 3] = h
                out[:, 4:14:2] = (kps[:, 0::2] + col[:, None]) * stride
                out[:, 5:14:2] = (kps[:, 1::2] + row[:, None]) * stride
                out[:, _SCORE_COLUMN] = score[keep]
                rows.append(out)
        except (KeyError, ValueError) as exc:
            raise ModelError(f"{self.path}: not a YuNet model (outputs: {exc})") from exc
        if not rows:
            return np.zeros((0, _SCORE_COLUMN + 1), dtype=np.float32)
        found = np.concatenate(rows)
        keep_nms = np.asarray(
            cv2.dnn.NMSBoxes(
                found[:, :4].tolist(),
                found[:, _SCORE_COLUMN].tolist(),
                self.score_threshold,
                self.nms_threshold,
                top_k=5 * self.top_k,
            ),
            dtype=np.intp,
        ).reshape(-1)
        return found[keep_nms]

    def detect(
        self, frame_bgr: UInt8Array, regions: Sequence[PixelBox] | None = None
    ) -> list[Face]:
        """Faces in a BGR frame, best score first; boxes in the frame's pixels.

        ``regions`` (frame pixels; see :func:`look_regions`) restrict the upscaled pass to
        those parts of the frame, all at one factor chosen so they hold at most
        ``max_upscaled_pixels`` together (up to ``upscale``); a region is looked at only
        when that is at least :data:`MIN_USEFUL_UPSCALE` times closer than the native pass.
        None: the whole frame, as :meth:`upscale_for` says.

        Raises:
            ValueError: the frame is not HxWx3 uint8.
            ModelError: the model fails to run.
        """
        _check_frame(frame_bgr)
        height, width = frame_bgr.shape[:2]
        native = self.native_scale_for(width, height)
        if native < 1.0:
            size = (max(1, round(width * native)), max(1, round(height * native)))
            rows = [self._run(shrink(frame_bgr, size))]
        else:
            rows = [self._run(frame_bgr)]
        passes: list[tuple[float, float, float]] = [(native, 0.0, 0.0)]  # scale, x0, y0
        if regions is None:
            factor = self.upscale_for(width, height)
            if factor > 1.0:
                size = (round(width * factor), round(height * factor))
                upscaled = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_LINEAR)
                rows.append(self._run(np.asarray(upscaled, dtype=np.uint8)))
                passes.append((factor, 0.0, 0.0))
        elif regions:
            self._look_closer(frame_bgr, regions, native, rows, passes)
        boxes: list[list[float]] = []  # x, y, w, h in frame pixels
        points: list[tuple[tuple[float, float], ...]] = []
        scores: list[float] = []
        for found, (scale, ox, oy) in zip(rows, passes, strict=True):
            for row in found:
                x, y, w, h = (float(v) / scale for v in row[:4])
                boxes.append([x + ox, y + oy, w, h])
                points.append(
                    tuple(
                        (float(row[k]) / scale + ox, float(row[k + 1]) / scale + oy)
                        for k in range(4, 14, 2)
                    )
                )
                scores.append(float(row[_SCORE_COLUMN]))
        if not boxes:
            return []
        keep = np.asarray(
            cv2.dnn.NMSBoxes(boxes, scores, self.score_threshold, self.nms_threshold),
            dtype=np.intp,
        ).reshape(-1)
        keep = keep[np.argsort([-scores[i] for i in keep], kind="stable")][: self.top_k]
        faces = []
        for i in keep:
            x, y, w, h = boxes[i]
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(width), x + w), min(float(height), y + h)
            if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
                faces.append(Face((x1, y1, x2, y2), min(1.0, scores[i]), points[i]))
        return faces

    def _look_closer(
        self,
        frame_bgr: UInt8Array,
        regions: Sequence[PixelBox],
        native: float,
        rows: list[npt.NDArray[np.float32]],
        passes: list[tuple[float, float, float]],
    ) -> None:
        """The upscaled pass over ``regions`` only; appends each region's rows and pass."""
        height, width = frame_bgr.shape[:2]
        area = sum(max(1.0, (x2 - x1) * (y2 - y1)) for x1, y1, x2, y2 in regions)
        factor = min(self.upscale, math.sqrt(self.max_upscaled_pixels / area))
        if factor < native * MIN_USEFUL_UPSCALE:
            return
        for x1, y1, x2, y2 in regions:
            rx0, ry0 = max(0, math.floor(x1)), max(0, math.floor(y1))
            rx1, ry1 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
            if rx1 - rx0 < 2 or ry1 - ry0 < 2:
                continue
            size = (round((rx1 - rx0) * factor), round((ry1 - ry0) * factor))
            crop = frame_bgr[ry0:ry1, rx0:rx1]
            closer = cv2.resize(crop, size, interpolation=cv2.INTER_LINEAR)
            rows.append(self._run(np.asarray(closer, dtype=np.uint8)))
            passes.append((factor, float(rx0), float(ry0)))

    def __repr__(self) -> str:
        return (
            f"FaceDetector({self.path.name}, {self.backend}, score>={self.score_threshold}, "
            f"upscale={self.upscale}, max_upscaled_pixels={self.max_upscaled_pixels})"
        )


def shrink(frame: UInt8Array, size: tuple[int, int]) -> UInt8Array:
    """``frame`` made smaller to ``size`` (width, height) by area averaging, cheaply.

    Area averaging at a non-integer factor costs 9.6 ms for a 1080p frame on one core (5.5 ms
    for 720p); at exactly 1/2 it has a fast path. So a frame at least twice ``size`` is halved
    by area averaging as often as it stays at least ``size`` (1080p to a third of a megapixel:
    1.2 ms in all), and the rest, a factor above 1/2 of a picture already averaged, is
    bilinear; a frame less than twice ``size`` is area-averaged in one step.
    """
    height, width = frame.shape[:2]
    factor = 1
    while width // (factor * 2) >= size[0] and height // (factor * 2) >= size[1]:
        factor *= 2
    if factor == 1:
        return np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    out: Any = cv2.resize(frame, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    if (out.shape[1], out.shape[0]) != size:
        out = cv2.resize(out, size, interpolation=cv2.INTER_LINEAR)
    return np.asarray(out, dtype=np.uint8)


def session_options(threads: int) -> Any:
    """onnxruntime session options for a small model beside the detector: ``threads``
    intra-op threads that sleep when idle, one inter-op thread, warnings and above only, and
    no memory patterns.

    YuNet's input size follows each frame, and onnxruntime plans and keeps a memory pattern
    per input shape: the face sessions held about 25 MB less without them after 2 detectors
    ran 16 frames of 720p, for no measurable CPU (scripts/bench/bench_decoder_memory.py
    --detect-memory / --detect-cpu). Their arenas stay: without them YuNet's large tensors
    are mapped afresh on every pass (agent.ingest.memory), +46 % CPU per detect_batch.
    """
    import onnxruntime as ort  # noqa: PLC0415 - keep import time off the CLI's fast paths

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    return options


def _yunet_session(path: Path, threads: int) -> Any:
    """An onnxruntime session for a YuNet file whose input height and width are free."""
    import onnxruntime as ort  # noqa: PLC0415 - keep import time off the CLI's fast paths

    try:
        session = ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except _onnxruntime_errors() as exc:
        raise ModelError(f"{path}: onnxruntime cannot load the face detector: {exc}") from exc
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or isinstance(shape[2], int) or isinstance(shape[3], int):
        raise ModelError(
            f"{path}: the face detector's input must have free height and width for "
            f"onnxruntime (got {shape}); make one with scripts/train/yunet_dynamic.py"
        )
    return session


# --------------------------------------------------------------------------- classifier


def _onnxruntime_errors() -> tuple[type[BaseException], ...]:
    """What onnxruntime raises; its pybind errors derive from Exception directly."""
    errors: list[type[BaseException]] = [RuntimeError, ValueError, OSError]
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state  # noqa: PLC0415
    except ImportError:  # pragma: no cover - layout of onnxruntime's private module changed
        return tuple(errors)
    errors += [
        cls
        for cls in vars(state).values()
        if isinstance(cls, type) and issubclass(cls, Exception) and cls not in errors
    ]
    return tuple(errors)


class MaskClassifier:
    """The mask classifier on face crops, with onnxruntime on the CPU.

    The ONNX takes NCHW float32 RGB in 0..1 of ``input_size`` squares (any batch) and gives
    one probability per label. ``margin`` is the crop's context margin the model was trained
    with; :func:`crop_face` applies it.

    Raises:
        ValueError: ``labels`` name no no-mask class, or a setting is out of range.
        ModelError: the ONNX file is missing or corrupt, or its input or output does not
            match ``input_size`` and ``labels`` (the message names the file).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        labels: Sequence[str] = CLASSIFIER_LABELS,
        input_size: int = 64,
        margin: float = 0.2,
        threads: int = 1,
    ) -> None:
        if not NO_MASK_CLASSES.intersection(labels) or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct and name a no-mask class, got {labels}")
        if not 8 <= input_size <= 512 or not 0.0 <= margin <= 1.0 or threads < 1:
            raise ValueError(f"bad classifier settings: {input_size=}, {margin=}, {threads=}")
        self.path = Path(model_path)
        self.labels = tuple(labels)
        self.input_size = input_size
        self.margin = margin
        self._no_mask = np.array([label in NO_MASK_CLASSES for label in self.labels])
        if not self.path.is_file():
            raise ModelError(f"{self.path}: mask classifier model not found")
        import onnxruntime as ort  # noqa: PLC0415 - keep import time off the CLI's fast paths

        self._errors = _onnxruntime_errors()
        options = session_options(threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except self._errors as exc:
            raise ModelError(f"{self.path}: onnxruntime cannot load the model: {exc}") from exc
        model_input = self._session.get_inputs()[0]
        shape = list(model_input.shape)
        if len(shape) != 4 or shape[1:] != [3, input_size, input_size]:
            raise ModelError(
                f"{self.path}: input shape {shape} does not match "
                f"[batch, 3, {input_size}, {input_size}]"
            )
        self._input_name: str = model_input.name
        self._output_name: str = self._session.get_outputs()[0].name
        probe = self.probabilities(np.zeros((1, 3, input_size, input_size), dtype=np.float32))
        if probe.shape != (1, len(self.labels)):
            raise ModelError(
                f"{self.path}: output shape {probe.shape[1:]} does not match "
                f"{len(self.labels)} labels ({', '.join(self.labels)})"
            )

    def probabilities(self, batch: FloatArray) -> FloatArray:
        """Class probabilities for an NCHW batch of crops, one row per crop.

        Raises:
            ModelError: onnxruntime fails.
        """
        try:
            outputs = self._session.run([self._output_name], {self._input_name: batch})
        except self._errors as exc:
            raise ModelError(f"{self.path}: inference failed: {exc}") from exc
        return np.asarray(outputs[0], dtype=np.float32).reshape(len(batch), -1)

    def classify(self, frame_bgr: UInt8Array, boxes: Sequence[PixelBox]) -> FloatArray:
        """Class probabilities for the faces at ``boxes`` (frame pixels) of a BGR frame."""
        if not boxes:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        crops = [
            crop_face(frame_bgr, box, size=self.input_size, margin=self.margin) for box in boxes
        ]
        return self.probabilities(crops_to_tensor(crops))

    def no_mask_probability(self, probabilities: FloatArray) -> npt.NDArray[np.float32]:
        """P(no mask) per row: the no-mask classes summed (a mask worn wrongly is no mask)."""
        return np.asarray(probabilities[:, self._no_mask].sum(axis=1), dtype=np.float32)

    def __repr__(self) -> str:
        return f"MaskClassifier({self.path.name}, {self.input_size}px, margin={self.margin})"


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True, slots=True)
class FaceDecision:
    """One face and the classifier's verdict on it."""

    box: PixelBox
    face_score: float
    no_mask: float  # P(no mask), mask_incorrect included

    @property
    def label(self) -> str:
        """``face_no_mask`` when no mask is the likelier answer, else ``face_mask``."""
        return NO_MASK_LABEL if self.no_mask > 0.5 else MASK_LABEL

    @property
    def confidence(self) -> float:
        """YuNet's face score times the probability of :attr:`label`.

        Read as P(a face) x P(this class | a face): what a rule's threshold should bound.
        The class probability alone ranks worse, because the classifier never saw a crop
        that is no face and calls many of them "no mask" (it was trained on annotated faces
        only): on the val split the no-mask decisions ranked by the product have an average
        precision of 0.87, by the class probability 0.70 (``scripts/train/eval_face.py``).
        """
        p = self.no_mask if self.no_mask > 0.5 else 1.0 - self.no_mask
        return self.face_score * p


def load_meta(model_dir: Path) -> dict[str, Any]:
    """Read and check ``mask_classifier.json`` of a face model folder.

    Raises:
        ModelError: the file is missing, not JSON, of another format, or lacks a field.
    """
    path = Path(model_dir) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: face model description not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read face model description: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ModelError(f"{path}: not a {META_FORMAT} description")
    for key in ("labels", "input_size", "margin", "file", "sha256", "face_detector"):
        if key not in meta:
            raise ModelError(f"{path}: missing field {key!r}")
    detector = meta["face_detector"]
    if not isinstance(detector, Mapping) or not {"file", "sha256"} <= detector.keys():
        raise ModelError(f"{path}: face_detector must name a file and its sha256")
    return meta


def _checked(path: Path, expected: str, meta_path: Path) -> Path:
    verified_file(path, expected, named_by=meta_path, who=str(meta_path))
    return path


class FaceMaskStage:
    """BGR frame -> ``face_mask`` / ``face_no_mask`` detections for the rules engine.

    Faces whose mouth lies outside the frame (cut by its edge) are left undecided when
    ``skip_cut_faces`` (the crop would show only eyes and forehead), and faces smaller than
    ``min_face_px`` (sqrt of the box area, frame pixels) are left out. ``look`` says where
    the upscaled pass looks (:data:`LOOKS`): ``people`` only around the detector's people,
    heads and faces given as ``hints`` (:func:`look_regions`), which costs a fraction of the
    whole frame where few people are and looks closer at them. ``last_ms`` holds the time
    the last frame took: (finding faces, deciding masks), milliseconds.
    """

    def __init__(
        self,
        detector: FaceDetector,
        classifier: MaskClassifier,
        *,
        skip_cut_faces: bool = True,
        min_face_px: float = 0.0,
        look: str = "frame",
    ) -> None:
        if min_face_px < 0:
            raise ValueError(f"min_face_px must be >= 0, got {min_face_px}")
        if look not in LOOKS:
            raise ValueError(f"look must be one of {', '.join(LOOKS)}, got {look!r}")
        self.look = look
        self.detector = detector
        self.classifier = classifier
        self.skip_cut_faces = skip_cut_faces
        self.min_face_px = min_face_px
        self.last_ms = (0.0, 0.0)

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        *,
        threads: int = 1,
        skip_cut_faces: bool = True,
        min_face_px: float = 0.0,
        look: str = "frame",
        **detector_options: Any,
    ) -> FaceMaskStage:
        """Load a face model folder (``models/default/face``), both files checked by sha256.

        ``detector_options`` go to :class:`FaceDetector` (score_threshold, upscale, ...);
        ``backend`` is ``auto`` (onnxruntime when the folder has YuNet with free input size,
        ``face_detector.dynamic`` in its description, else OpenCV), ``onnxruntime`` or
        ``opencv``.

        Raises:
            ModelError: the description or a model file is missing, corrupt or does not
                match; the message names the file.
        """
        model_dir = Path(model_dir)
        meta = load_meta(model_dir)
        meta_path = model_dir / META_FILE
        described = meta["face_detector"]
        dynamic = described.get("dynamic")
        backend = str(detector_options.pop("backend", "auto"))
        if backend == "auto":
            backend = "onnxruntime" if isinstance(dynamic, Mapping) else "opencv"
        if backend == "onnxruntime":
            if not isinstance(dynamic, Mapping) or not {"file", "sha256"} <= dynamic.keys():
                raise ModelError(
                    f"{meta_path}: face_detector.dynamic (file, sha256) is needed to run "
                    "YuNet with onnxruntime; add it with scripts/train/yunet_dynamic.py"
                )
            described = dynamic
        yunet = _checked(model_dir / str(described["file"]), str(described["sha256"]), meta_path)
        onnx = _checked(model_dir / str(meta["file"]), str(meta["sha256"]), meta_path)
        try:
            classifier = MaskClassifier(
                onnx,
                labels=[str(label) for label in meta["labels"]],
                input_size=int(meta["input_size"]),
                margin=float(meta["margin"]),
                threads=threads,
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{meta_path}: {exc}") from exc
        try:
            finder = FaceDetector(yunet, backend=backend, threads=threads, **detector_options)
        except TypeError as exc:  # an option the detector does not know, from a manifest
            raise ModelError(f"{meta_path}: face stage option: {exc}") from exc
        try:
            return cls(
                finder,
                classifier,
                skip_cut_faces=skip_cut_faces,
                min_face_px=min_face_px,
                look=look,
            )
        except ValueError as exc:
            raise ModelError(f"{meta_path}: face stage option: {exc}") from exc

    def analyse(
        self, frame_bgr: UInt8Array, hints: Sequence[tuple[str, PixelBox]] | None = None
    ) -> list[FaceDecision]:
        """Every face in the frame with its P(no mask), best face score first.

        ``hints``: the detector's boxes (label, frame pixels), used when ``look`` is
        ``people``; None (no detector ran) looks at the whole frame either way.

        Raises:
            ValueError: the frame is not HxWx3 uint8.
            ModelError: a model fails to run.
        """
        started = time.perf_counter()
        height, width = frame_bgr.shape[:2]
        regions = (
            look_regions(hints, width, height)
            if self.look == "people" and hints is not None
            else None
        )
        faces = [
            face
            for face in self.detector.detect(frame_bgr, regions)
            if (not self.skip_cut_faces or face.mouth_in(width, height))
            and _side(face.box) >= self.min_face_px
        ]
        found = time.perf_counter()
        probabilities = self.classifier.classify(frame_bgr, [f.box for f in faces])
        no_mask = self.classifier.no_mask_probability(probabilities)
        self.last_ms = ((found - started) * 1000.0, (time.perf_counter() - found) * 1000.0)
        return [
            FaceDecision(face.box, face.score, float(p))
            for face, p in zip(faces, no_mask, strict=True)
        ]

    def detect(
        self, frame_bgr: UInt8Array, hints: Sequence[tuple[str, PixelBox]] | None = None
    ) -> list[Detection]:
        """Faces as detections (boxes normalised to 0..1, the detector's labels and class ids).

        Raises:
            ValueError: the frame is not HxWx3 uint8.
            ModelError: a model fails to run.
        """
        height, width = frame_bgr.shape[:2]
        return to_detections(self.analyse(frame_bgr, hints), width, height)


def to_detections(decisions: Sequence[FaceDecision], width: int, height: int) -> list[Detection]:
    """Decisions of a ``width`` x ``height`` frame as the detector's :class:`Detection` s."""
    detections = []
    for d in decisions:
        x1, y1, x2, y2 = d.box
        box = (
            min(max(x1 / width, 0.0), 1.0),
            min(max(y1 / height, 0.0), 1.0),
            min(max(x2 / width, 0.0), 1.0),
            min(max(y2 / height, 0.0), 1.0),
        )
        class_id = NO_MASK_CLASS_ID if d.label == NO_MASK_LABEL else MASK_CLASS_ID
        detections.append(Detection(d.label, class_id, d.confidence, box))
    return detections
