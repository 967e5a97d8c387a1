"""Evidence snapshots: the alert's frame with its boxes drawn, saved as a JPEG.

Files are written atomically (temporary file, fsync, rename) under
``<state_dir>/evidence/<YYYY-MM-DD>/<alert id>.jpg`` before the alert is committed, so a
stored alert never points at a half-written image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from agent.config import EvidenceConfig
from agent.errors import OutboxError
from agent.rules import Alert

logger = logging.getLogger(__name__)

_RED = (0, 0, 255)
_WHITE = (255, 255, 255)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A saved snapshot."""

    path: Path
    jpeg: bytes
    sha256: str
    width: int
    height: int
    source: str = "sub"  # which stream the picture came from: "sub" (detection) or "main"


def _downscale(frame: np.ndarray, max_width: int) -> np.ndarray:
    """``frame`` shrunk to ``max_width`` (aspect kept), or ``frame`` itself when narrow enough."""
    height, width = frame.shape[:2]
    if width <= max_width:
        return frame
    size = (max_width, round(height * max_width / width))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def encode_jpeg(frame: np.ndarray, config: EvidenceConfig) -> tuple[bytes, int, int]:
    """``frame`` (downscaled to ``max_width``) as JPEG bytes, with its width and height.

    Raises:
        ValueError: OpenCV could not encode it.
    """
    frame = _downscale(frame, config.max_width)
    height, width = frame.shape[:2]
    return _fit(frame, config), width, height


def render(alert: Alert, frame: np.ndarray, config: EvidenceConfig) -> tuple[bytes, int, int]:
    """Draw the alert's boxes and caption on a copy of ``frame``; return JPEG bytes and size."""
    image = _downscale(frame, config.max_width)
    if image is frame:
        image = frame.copy()  # drawing must not touch the caller's frame
    height, width = image.shape[:2]
    thickness = max(2, width // 400)
    font_scale = max(0.5, width / 1600)
    for det in alert.detections:
        x1, y1, x2, y2 = det.box
        p1 = (round(x1 * width), round(y1 * height))
        p2 = (round(x2 * width), round(y2 * height))
        cv2.rectangle(image, p1, p2, _RED, thickness)
        label = f"{det.label} {det.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = max(p1[1], th + base + 2)
        cv2.rectangle(image, (p1[0], ty - th - base - 2), (p1[0] + tw + 4, ty), _RED, -1)
        cv2.putText(
            image, label, (p1[0] + 2, ty - base), cv2.FONT_HERSHEY_SIMPLEX, font_scale, _WHITE, 1
        )
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert.raised_at))
    caption = f"{alert.camera_id}  {alert.type}  {stamp}"
    (cw, ch), cbase = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
    cv2.rectangle(image, (0, height - ch - cbase - 8), (cw + 12, height), (0, 0, 0), -1)
    cv2.putText(
        image, caption, (6, height - cbase - 4), cv2.FONT_HERSHEY_SIMPLEX, font_scale, _WHITE, 1
    )
    return _fit(image, config), width, height


def _fit(image: np.ndarray, config: EvidenceConfig) -> bytes:
    """JPEG bytes at the configured quality, lowered step by step until under max_bytes."""
    quality = config.jpeg_quality
    while True:
        ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("JPEG encoding failed")
        if buffer.nbytes <= config.max_bytes or quality <= 30:
            return bytes(buffer.tobytes())
        quality -= 10


def save(
    alert: Alert, frame: np.ndarray, config: EvidenceConfig, directory: Path, source: str = "sub"
) -> Evidence:
    """Render and durably write the evidence of ``alert``.

    Raises:
        OutboxError: the file cannot be written (disk full, permissions).
    """
    jpeg, width, height = render(alert, frame, config)
    day = time.strftime("%Y-%m-%d", time.localtime(alert.raised_at))
    path = directory / day / f"{alert.id}.jpg"
    tmp = path.with_suffix(".jpg.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            handle.write(jpeg)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutboxError(f"{path}: cannot write evidence: {exc.strerror}") from exc
    return Evidence(path, jpeg, hashlib.sha256(jpeg).hexdigest(), width, height, source)
