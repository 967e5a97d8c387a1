"""Clips for the test cameras: a synthetic moving scene with squares, or real pictures."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from agent.detect.datasets import split_of
from mclz_testkit.common import REPO_ROOT

BGR = tuple[int, int, int]
Square = tuple[float, float, float, BGR]
"""A square to draw: centre x, centre y (fractions of width and height), side (fraction of
the frame height) and a BGR colour."""
SquaresFn = Callable[[int], Sequence[Square]]
Image = npt.NDArray[np.uint8]

# --------------------------------------------------------------------------- clips


def _background(width: int, height: int, rng: np.random.Generator) -> tuple[Image, Image]:
    """Return a static gradient with fine noise, and a wide noise band texture to scroll."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.empty((height, width, 3), np.float32)
    base[..., 0] = 60 + 100 * xs / max(width - 1, 1)  # blue grows to the right
    base[..., 1] = 50 + 90 * ys / max(height - 1, 1)  # green grows downwards
    base[..., 2] = 90 + 40 * np.sin(xs / 23.0) * np.cos(ys / 17.0)  # soft tiles in red
    base += rng.normal(0, 6, size=base.shape)
    band = rng.integers(0, 70, size=(height, 2 * width, 3)).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8), band.astype(np.uint8)


def _draw_square(img: Image, square: Square) -> None:
    height, width = img.shape[:2]
    cx, cy, side, colour = square
    half = side * height / 2
    x0, x1 = round(cx * width - half), round(cx * width + half)
    y0, y1 = round(cy * height - half), round(cy * height + half)
    img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = colour


def square_region(
    square: tuple[float, float, float], width: int, height: int, shrink: float = 0.5
) -> tuple[slice, slice]:
    """Return (rows, cols) slices of the central ``shrink`` part of a square, for checks."""
    cx, cy, side = square
    half = side * height * shrink / 2
    rows = slice(round(cy * height - half), round(cy * height + half))
    cols = slice(round(cx * width - half), round(cx * width + half))
    return rows, cols


def render_scene(
    index: int,
    *,
    width: int,
    height: int,
    fps: int,
    base: Image,
    band: Image,
    squares: SquaresFn | None = None,
) -> Image:
    """Return frame ``index`` of the scene: background with a noise band sliding right."""
    img: Image = base.copy()
    band_width = width // 4
    shift = int(index * width / (6 * fps)) % (2 * width)  # crosses the frame in ~6 s
    x0 = (shift - band_width) % width
    cols = (np.arange(band_width) + x0) % width
    texture = band[:, (np.arange(band_width) + shift) % band.shape[1]]
    img[:, cols] = np.clip(img[:, cols].astype(np.int16) + texture, 0, 255).astype(np.uint8)
    for square in squares(index) if squares is not None else ():
        _draw_square(img, square)
    return img


def make_clip(
    path: Path,
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 10,
    seconds: float = 4.0,
    gop: int = 10,
    codec: str = "libx264",
    squares: SquaresFn | None = None,
    seed: int = 0,
) -> Path:
    """Write an MP4 clip of a textured, slowly moving scene; return ``path``.

    H.264 (``libx264``, default) or H.265 (``libx265``), yuv420p, a keyframe every ``gop``
    frames and no B-frames, like a camera. ``squares(i)`` gives the squares drawn on frame
    ``i``: (cx, cy, side, BGR colour), cx and cy as fractions of width and height, side as a
    fraction of the height.

    Raises:
        ValueError: odd or non-positive sizes, or a clip shorter than one frame.
    """
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"width and height must be positive and even, not {width}x{height}")
    count = round(fps * seconds)
    if count < 1 or gop < 1:
        raise ValueError("the clip needs at least one frame and gop >= 1")
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
    if codec == "libx264":
        options = {"preset": "veryfast", "tune": "zerolatency", "profile": "main"}
        options["x264-params"] = params
    elif codec == "libx265":
        options = {"preset": "ultrafast", "tune": "zerolatency", "x265-params": params}
        options["x265-params"] += ":log-level=error"
    else:
        options = {}
    rng = np.random.default_rng(seed)
    base, band = _background(width, height, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.max_b_frames = 0
        for i in range(count):
            img = render_scene(
                i, width=width, height=height, fps=fps, base=base, band=band, squares=squares
            )
            frame = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


# --------------------------------------------------------------------------- real pictures

FACEMASK = REPO_ROOT.parent / "shared" / "datasets" / "facemask"


def held_out_faces(classes: set[str], *, min_height: float = 0.25) -> list[Path]:
    """Held-out facemask images whose only face is of ``classes`` and at least ``min_height``
    of the picture tall (staff at a counter, as a canteen camera sees them), by name.

    Chosen by ground truth only, never by what a model makes of them. Empty when
    ``../shared/datasets/facemask`` is absent.
    """
    chosen = []
    for xml_path in sorted((FACEMASK / "annotations").glob("*.xml")):
        if split_of("facemask", xml_path.stem) != "val":
            continue
        root = ET.parse(xml_path).getroot()  # noqa: S314 - the project's own dataset
        objects = root.findall("object")
        if len(objects) != 1 or objects[0].findtext("name") not in classes:
            continue
        box = objects[0].find("bndbox")
        height = float(root.findtext("size/height") or 0)
        if box is None or height <= 0:
            continue
        face = float(box.findtext("ymax") or 0) - float(box.findtext("ymin") or 0)
        if face / height >= min_height:
            chosen.append(FACEMASK / "images" / f"{xml_path.stem}.jpg")
    return chosen


def _letterbox(image: Image, width: int, height: int) -> Image:
    canvas = np.full((height, width, 3), 60, np.uint8)
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    y, x = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = resized
    return canvas


def make_picture_clip(
    path: Path,
    pictures: Sequence[Path],
    *,
    hold: float,
    width: int = 640,
    height: int = 360,
    fps: int = 5,
) -> Path:
    """An H.264 clip showing each picture (letterboxed) for ``hold`` seconds, a keyframe
    every second, like a camera looking at a counter where people stop one after another.

    Raises:
        ValueError: a picture cannot be read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(
            "libx264",
            rate=fps,
            options={
                "preset": "veryfast",
                "tune": "zerolatency",
                "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        index = 0
        for picture in pictures:
            image = cv2.imread(str(picture))
            if image is None:
                raise ValueError(f"{picture}: cannot read the picture")
            boxed = _letterbox(np.asarray(image, dtype=np.uint8), width, height)
            for _ in range(max(1, round(hold * fps))):
                frame = av.VideoFrame.from_ndarray(boxed, format="bgr24").reformat(format="yuv420p")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode(None))
    return path
