"""``camera snapshot``: a live frame with a coordinate grid, the camera's zones and its view.

The installer reads zone polygons (0..1 from the top-left) off the picture, puts them in the
config and takes another snapshot to check them; the crop and tiles the detector analyses
are outlined too (:class:`agent.detect.views.View`, pure geometry: no detector is loaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.config import CameraConfig
from agent.detect.views import View

_ZONE_COLOURS = {"zone": (80, 200, 60), "exclude": (60, 60, 230), "food": (0, 200, 255)}
_VIEW_COLOUR = (255, 160, 0)  # BGR light blue: the crop and its tiles


def draw_zones(frame: np.ndarray, camera: CameraConfig, font: Path | None = None) -> np.ndarray:
    """A copy of ``frame`` with a 0.1 coordinate grid and the camera's zones drawn.

    Zones: green, exclusion areas red, food zones yellow, each labelled with its id and name,
    so an installer can read polygon coordinates (0..1 from the top-left) off the picture.
    A crop or tiles (``view``) are outlined in blue, and what lies outside the crop is dimmed.
    """
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    image = frame.copy()
    height, width = image.shape[:2]
    grid = image.copy()
    for i in range(1, 10):
        x, y = round(i * width / 10), round(i * height / 10)
        cv2.line(grid, (x, 0), (x, height), (255, 255, 255), 1)
        cv2.line(grid, (0, y), (width, y), (255, 255, 255), 1)
    image = cv2.addWeighted(grid, 0.35, image, 0.65, 0)
    thickness = max(2, width // 400)
    labels: list[tuple[tuple[int, int], str, tuple[int, int, int]]] = []
    for zone_id, zone in camera.zones.items():
        kind = "exclude" if zone.exclude else "food" if zone.food else "zone"
        colour = _ZONE_COLOURS[kind]
        points = np.array(
            [(round(x * width), round(y * height)) for x, y in zone.polygon], dtype=np.int32
        ).reshape(-1, 1, 2)
        overlay = image.copy()
        cv2.fillPoly(overlay, [points], colour)
        image = cv2.addWeighted(overlay, 0.2, image, 0.8, 0)
        cv2.polylines(image, [points], True, colour, thickness, cv2.LINE_AA)
        top_left = (int(points[:, 0, 0].min()) + 4, int(points[:, 0, 1].min()) + 4)
        text = (
            zone_id
            + (f" {zone.name}" if zone.name else "")
            + (" (excluded)" if zone.exclude else " (food)" if zone.food else "")
        )
        labels.append((top_left, text, colour))
    view = View.from_config(camera.view)
    if not view.is_whole:
        left, top, right, bottom = view.bounds(width, height)
        shaded = (image * 0.45).astype(np.uint8)  # outside the crop: not analysed
        shaded[top:bottom, left:right] = image[top:bottom, left:right]
        image = shaded
        for x0, y0, x1, y1 in view.windows(width, height):
            cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), _VIEW_COLOUR, max(1, thickness // 2))
        text = f"analysed: {view.cols}x{view.rows} tile(s)"
        labels.append(((left + 4, bottom - max(14, height // 36) - 8), text, _VIEW_COLOUR))
    size = max(14, height // 36)
    pil = Image.fromarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    draw = ImageDraw.Draw(pil)
    face: Any = ImageFont.truetype(str(font), size) if font else ImageFont.load_default()
    for i in range(1, 10):
        for at in ((round(i * width / 10) + 2, 2), (2, round(i * height / 10) + 2)):
            draw.rectangle(draw.textbbox(at, f"{i / 10:.1f}", font=face), fill=(0, 0, 0))
            draw.text(at, f"{i / 10:.1f}", fill=(255, 255, 255), font=face)
    for (x, y), text, (b, g, r) in labels:
        box = draw.textbbox((x, y), text, font=face)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), text, fill=(r, g, b), font=face)
    return cv2.cvtColor(np.asarray(pil), cv2.COLOR_RGB2BGR)
