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


Picture = Image | Path
"""A picture for a clip: an image array (BGR) or a file OpenCV can read."""
PixelBox = tuple[float, float, float, float]
"""x1, y1, x2, y2 in the picture's pixels."""
LETTERBOX_GREY = 60


def annotated_faces(picture: Path) -> list[tuple[str, PixelBox]]:
    """The faces annotated on a facemask picture: (class, box), in the annotation's order."""
    root = ET.parse(FACEMASK / "annotations" / f"{picture.stem}.xml").getroot()  # noqa: S314
    faces = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        x1, y1, x2, y2 = (float(box.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        faces.append((obj.findtext("name") or "", (x1, y1, x2, y2)))
    return faces


def held_out_groups(*, min_faces: int = 3, min_face_px: float = 32.0) -> list[Path]:
    """Held-out facemask pictures of a group all wearing masks: at least ``min_faces`` faces,
    every one ``with_mask`` and at least ``min_face_px`` tall; most faces first, then by name.

    Chosen by ground truth only. Empty when ``../shared/datasets/facemask`` is absent.
    """
    chosen = []
    for xml_path in sorted((FACEMASK / "annotations").glob("*.xml")):
        if split_of("facemask", xml_path.stem) != "val":
            continue
        picture = FACEMASK / "images" / f"{xml_path.stem}.jpg"
        faces = annotated_faces(picture)
        if (
            len(faces) >= min_faces
            and all(name == "with_mask" for name, _ in faces)
            and all(box[3] - box[1] >= min_face_px for _, box in faces)
        ):
            chosen.append((-len(faces), picture.name, picture))
    return [picture for _, _, picture in sorted(chosen)]


def read_picture(picture: Picture) -> Image:
    """The picture as a BGR uint8 array.

    Raises:
        ValueError: a file cannot be read, or an array is not HxWx3 uint8.
    """
    if isinstance(picture, Path):
        image = cv2.imread(str(picture))
        if image is None:
            raise ValueError(f"{picture}: cannot read the picture")
        return np.asarray(image, dtype=np.uint8)
    if picture.ndim != 3 or picture.shape[2] != 3 or picture.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 picture, got {picture.shape} {picture.dtype}")
    return picture


def close_up_picture(
    picture: Path, out: Path, face_px: float, *, width: int = 1280, height: int = 720
) -> Path:
    """A ``width`` x ``height`` close-up of a facemask picture's first annotated face, scaled
    so the face is ``face_px`` tall and centred, as a camera at the pass sees one person;
    what lies beyond the picture is letterbox grey. Written to ``out``; returns ``out``.

    Raises:
        ValueError: the picture cannot be read or has no annotated face.
    """
    faces = annotated_faces(picture)
    if not faces:
        raise ValueError(f"{picture}: no annotated face")
    x1, y1, x2, y2 = faces[0][1]
    scale = face_px / max(y2 - y1, 1.0)
    # Picture pixel (x, y) goes to (x * scale + tx, y * scale + ty): the face's centre to the
    # frame's centre. One affine warp crops, scales and pads in one step.
    tx = width / 2 - scale * (x1 + x2) / 2
    ty = height / 2 - scale * (y1 + y2) / 2
    matrix = np.array([[scale, 0.0, tx], [0.0, scale, ty]], dtype=np.float64)
    image = read_picture(picture)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    close = cv2.warpAffine(
        image,
        matrix,
        (width, height),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(LETTERBOX_GREY,) * 3,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), close)
    return out


def paste_face(
    image: Image, box: PixelBox, face: Image, face_box: PixelBox, *, pad: float = 0.15
) -> Image:
    """A copy of ``image`` with the face at ``face_box`` of picture ``face`` pasted over
    ``box`` (resized to it), blended in with soft edges: someone's mask taken off.

    Both boxes grow by ``pad`` of their size on each side; the pasted patch is opaque over
    ``box`` and fades out across the pad, so no seam shows and the whole box is covered.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    tx0, ty0 = max(0, round(x1 - pad * bw)), max(0, round(y1 - pad * bh))
    tx1, ty1 = min(width, round(x2 + pad * bw)), min(height, round(y2 + pad * bh))
    # Scale the face's picture so its box has the target box's size (area averaging when
    # shrinking: no aliasing), then shift it so box lands on box.
    fx1, fy1, fx2, fy2 = face_box
    kx, ky = bw / (fx2 - fx1), bh / (fy2 - fy1)
    fh, fw = face.shape[:2]
    size = (max(1, round(fw * kx)), max(1, round(fh * ky)))
    shrink = kx * ky < 1
    scaled = cv2.resize(face, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    kx, ky = size[0] / fw, size[1] / fh  # as rounded
    matrix = np.array([[1.0, 0.0, x1 - fx1 * kx - tx0], [0.0, 1.0, y1 - fy1 * ky - ty0]])
    patch = cv2.warpAffine(
        scaled,
        matrix,
        (tx1 - tx0, ty1 - ty0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    # Opacity: 1 over the box, falling linearly to 0 at the padded region's edge.
    ys = np.arange(ty0, ty1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(tx0, tx1, dtype=np.float32)[None, :] + 0.5
    edge_x = np.minimum(xs - (x1 - pad * bw), (x2 + pad * bw) - xs) / max(pad * bw, 1.0)
    edge_y = np.minimum(ys - (y1 - pad * bh), (y2 + pad * bh) - ys) / max(pad * bh, 1.0)
    alpha = np.clip(np.minimum(edge_x, edge_y), 0.0, 1.0)[..., None]
    out: Image = image.copy()
    region = out[ty0:ty1, tx0:tx1].astype(np.float32)
    blended = alpha * patch.astype(np.float32) + (1 - alpha) * region
    out[ty0:ty1, tx0:tx1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _overlap(a: PixelBox, b: PixelBox) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def take_mask_off(group: Path, bare: Path) -> tuple[Image, PixelBox]:
    """The ``group`` picture with one mask taken off: ``bare``'s first annotated face pasted
    (:func:`paste_face`) over the largest annotated face that overlaps no other face's box
    (the paste then hides no one else). Returns the picture and the box it changed.

    Chosen by ground truth only.

    Raises:
        ValueError: a picture cannot be read, ``bare`` has no annotated face, or every face of
            ``group`` overlaps another.
    """
    faces = [box for _, box in annotated_faces(group)]
    alone = [
        b
        for i, b in enumerate(faces)
        if not any(_overlap(b, o) for o in faces[:i] + faces[i + 1 :])
    ]
    bare_faces = annotated_faces(bare)
    if not alone or not bare_faces:
        raise ValueError(f"{group} or {bare}: no face to take the mask off or to paste")
    box = max(alone, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    unmasked = paste_face(read_picture(group), box, read_picture(bare), bare_faces[0][1])
    return unmasked, box


def _letterbox(image: Image, width: int, height: int) -> Image:
    canvas = np.full((height, width, 3), LETTERBOX_GREY, np.uint8)
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    scale = min(width / w, height / h)
    size = (round(w * scale), round(h * scale))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    y, x = (height - size[1]) // 2, (width - size[0]) // 2
    canvas[y : y + size[1], x : x + size[0]] = resized
    return canvas


def make_sequence_clip(
    path: Path,
    segments: Sequence[tuple[Picture, float]],
    *,
    width: int = 640,
    height: int = 360,
    fps: int = 5,
) -> Path:
    """An H.264 clip showing each (picture, seconds) in turn, letterboxed to ``width`` x
    ``height``, a keyframe every second and no B-frames, like a camera; returns ``path``.

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
        for picture, seconds in segments:
            boxed = _letterbox(read_picture(picture), width, height)
            for _ in range(max(1, round(seconds * fps))):
                frame = av.VideoFrame.from_ndarray(boxed, format="bgr24").reformat(format="yuv420p")
                frame.pts, frame.time_base = index, Fraction(1, fps)
                container.mux(stream.encode(frame))
                index += 1
        container.mux(stream.encode(None))
    return path


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
    return make_sequence_clip(
        path, [(p, hold) for p in pictures], width=width, height=height, fps=fps
    )
