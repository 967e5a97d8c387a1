"""Synthetic-from-real canteen counter scenes for the food-zone classifier (issue #7).

There is no public dataset of covered and uncovered food containers, so scenes are built
from real photographs: a frame of ``../shared/videos/bareheaded_people_indoor.mp4`` is the
kitchen, crops of ``../shared/datasets/facemask`` images are the "dishes" in two trays,
and covers are drawn over them: a stainless lid with a handle and highlights on tray A,
cling film (a milky, specular layer through which the dish still shows) on tray B.
An empty tray shows its brushed-steel bottom. A head-and-shoulders crop of a real person
(``../shared/datasets/headcover``) leaning over a tray is the occluder.

Nuisances, as a fixed camera sees them over a day: brightness x0.7..1.3, sensor noise,
a camera shift of a few pixels, and (when streamed) H.264 compression.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from mclz_testkit.common import REPO_ROOT

SHARED = REPO_ROOT.parent / "shared"
FACEMASK_IMAGES = SHARED / "datasets" / "facemask" / "images"
HEADCOVER = SHARED / "datasets" / "headcover"
VIDEO = SHARED / "videos" / "bareheaded_people_indoor.mp4"

WIDTH, HEIGHT = 640, 360
Image = npt.NDArray[np.uint8]
Polygon = tuple[tuple[float, float], ...]
Box = tuple[float, float, float, float]

# Two trays on the counter, seen slightly in perspective (not axis-aligned rectangles).
ZONES: dict[str, Polygon] = {
    "tray-a": ((0.08, 0.58), (0.40, 0.56), (0.42, 0.92), (0.06, 0.94)),
    "tray-b": ((0.55, 0.57), (0.88, 0.58), (0.90, 0.93), (0.53, 0.92)),
}
COVER_KIND = {"tray-a": "lid", "tray-b": "film"}
STATES = ("covered", "uncovered", "empty")


def available() -> bool:
    """Whether the real photographs and the video are here (``../shared`` checked out)."""
    return FACEMASK_IMAGES.is_dir() and (HEADCOVER / "images").is_dir() and VIDEO.is_file()


@cache
def _background() -> Image:
    with av.open(str(VIDEO)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 25:
                image = frame.to_ndarray(format="bgr24")
                return np.asarray(cv2.resize(image, (WIDTH, HEIGHT)), dtype=np.uint8)
    raise FileNotFoundError(VIDEO)


@cache
def _dish_files() -> tuple[Path, ...]:
    return tuple(sorted(FACEMASK_IMAGES.glob("*.jpg")))


@cache
def _person_crops() -> tuple[tuple[Path, tuple[float, float, float, float]], ...]:
    out = []
    for label in sorted((HEADCOVER / "labels").glob("*.txt"))[:200]:
        lines = label.read_text().split("\n")
        parts = lines[0].split() if lines else []
        if len(parts) != 5:
            continue
        cx, cy, w, h = (float(v) for v in parts[1:])
        if 0.25 <= h <= 0.7 and 0.2 <= w <= 0.7:
            image = HEADCOVER / "images" / f"{label.stem}.jpg"
            if image.is_file():
                out.append((image, (cx, cy, w, h)))
    return tuple(out)


def dish(index: int, size: tuple[int, int]) -> Image:
    """A real photograph's crop as the food in a tray; ``index`` picks the photograph."""
    files = _dish_files()
    image = cv2.imread(str(files[index % len(files)]))
    if image is None:
        raise FileNotFoundError(files[index % len(files)])
    h, w = image.shape[:2]
    rng = np.random.default_rng(index)
    cw, ch = int(w * 0.55), int(h * 0.55)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    crop = image[y0 : y0 + ch, x0 : x0 + cw]
    # Food is more saturated than a crowd photo: boost chroma a little.
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.4 + 20, 0, 255)
    crop = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    return np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _steel(size: tuple[int, int], rng: np.random.Generator, base: float) -> npt.NDArray[np.float32]:
    w, h = size
    noise = rng.normal(0, 18, (h, w)).astype(np.float32)
    streaks = cv2.blur(noise, (31, 1))  # brushed along x
    ramp = np.linspace(-12, 12, w, dtype=np.float32)[None, :]
    grey = base + streaks * 1.5 + ramp
    return np.repeat(grey[..., None], 3, axis=2)


def _content(
    state: str, kind: str, dish_index: int, size: tuple[int, int], rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    w, h = size
    if state == "empty":
        steel = _steel(size, rng, 165.0)
        # a few stains and crumbs left in the tray: a faint, blurred real texture
        ghost = cv2.GaussianBlur(dish(dish_index + 7, size), (0, 0), 6).astype(np.float32)
        return 0.88 * steel + 0.12 * ghost
    food = dish(dish_index, size).astype(np.float32)
    if state == "uncovered":
        return food
    if kind == "lid":
        lid = _steel(size, rng, 185.0)
        cy, cx = h / 2, w / 2
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        glare = np.exp(-(((xx - cx * 0.7) / (w * 0.25)) ** 2 + ((yy - cy * 0.6) / (h * 0.15)) ** 2))
        lid += 55 * glare[..., None]
        hw, hh = max(4, w // 6), max(3, h // 12)
        cv2.rectangle(
            lid,
            (int(cx - hw), int(cy - hh)),
            (int(cx + hw), int(cy + hh)),
            (90.0, 90.0, 95.0),
            -1,
        )
        cv2.rectangle(lid, (2, 2), (w - 3, h - 3), (120.0, 120.0, 125.0), 2)
        return lid
    # cling film: the dish shows through, milky and blurred, with specular streaks
    seen = cv2.GaussianBlur(food, (0, 0), 2.0)
    film = 0.55 * seen + 0.45 * 225.0
    for _ in range(4):
        x1 = int(rng.integers(0, w))
        slope = float(rng.uniform(0.3, 1.2))
        pts = np.array([[x1, 0], [int(x1 + slope * h), h - 1]], dtype=np.int32)
        cv2.polylines(film, [pts], isClosed=False, color=(250.0, 250.0, 250.0), thickness=3)
    return np.asarray(cv2.GaussianBlur(film, (0, 0), 0.8), dtype=np.float32)


@dataclass
class Scene:
    """One rendered frame and what it shows per zone."""

    frame: Image
    states: dict[str, str]
    occluded: dict[str, bool] = field(default_factory=dict)
    occluders: list[Box] = field(default_factory=list)  # normalised boxes a detector would give


def _paste_person(
    canvas: npt.NDArray[np.float32], polygon: Polygon, index: int, rng: np.random.Generator
) -> Box:
    image_path, (cx, cy, bw, bh) = _person_crops()[index % len(_person_crops())]
    image = cv2.imread(str(image_path))
    if image is None:
        raise FileNotFoundError(image_path)
    ih, iw = image.shape[:2]
    # the head and shoulders: the labelled head box, grown downwards
    x1 = int(max(0, (cx - bw * 0.75) * iw))
    x2 = int(min(iw, (cx + bw * 0.75) * iw))
    y1 = int(max(0, (cy - bh * 0.6) * ih))
    y2 = int(min(ih, (cy + bh * 1.2) * ih))
    person = image[y1:y2, x1:x2]
    xs = [p[0] * WIDTH for p in polygon]
    ys = [p[1] * HEIGHT for p in polygon]
    zw, zh = max(xs) - min(xs), max(ys) - min(ys)
    share = float(rng.uniform(0.6, 0.85))
    pw, ph = int(zw * share), int(zh * share * 1.4)
    person = cv2.resize(person, (pw, ph))
    px = int(min(xs) + rng.uniform(0, zw - pw))
    py = int(max(0, min(ys) + zh * rng.uniform(0.1, 0.4) - ph * 0.5))
    ph = min(ph, HEIGHT - py)
    mask = np.zeros((ph, pw), np.float32)
    cv2.ellipse(mask, (pw // 2, ph // 2), (pw // 2, ph // 2), 0, 0, 360, 1.0, -1)
    alpha = np.asarray(cv2.GaussianBlur(mask, (0, 0), 2), dtype=np.float32)[..., None]
    region = canvas[py : py + ph, px : px + pw]
    region[:] = region * (1 - alpha) + person[:ph].astype(np.float32) * alpha
    return (px / WIDTH, py / HEIGHT, (px + pw) / WIDTH, (py + ph) / HEIGHT)


def render(
    states: Mapping[str, str],
    *,
    dishes: Mapping[str, int],
    seed: int = 0,
    brightness: float = 1.0,
    noise: float = 0.0,
    shift: tuple[int, int] = (0, 0),
    occlude: str | None = None,
) -> Scene:
    """A counter frame with each tray in ``states`` (covered/uncovered/empty)."""
    rng = np.random.default_rng(seed)
    canvas = _background().astype(np.float32)
    for zone, polygon in ZONES.items():
        pts = np.array([(x * WIDTH, y * HEIGHT) for x, y in polygon], dtype=np.float32)
        x, y, w, h = cv2.boundingRect(pts)
        # the tray: a steel rim, then its content inset by a few pixels
        rim = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.fillPoly(rim, [pts.astype(np.int32)], 255)
        canvas[rim > 0] = (140.0, 140.0, 145.0)
        inner = np.zeros((HEIGHT, WIDTH), np.uint8)
        centre = pts.mean(axis=0)
        inset = (centre + (pts - centre) * 0.9).astype(np.int32)
        cv2.fillPoly(inner, [inset], 255)
        content = _content(states[zone], COVER_KIND[zone], dishes.get(zone, 0), (w, h), rng)
        window = canvas[y : y + h, x : x + w]
        sel = inner[y : y + h, x : x + w] > 0
        window[sel] = content[sel]
    occluders: list[Box] = []
    occluded = dict.fromkeys(ZONES, False)
    if occlude is not None:
        occluders.append(_paste_person(canvas, ZONES[occlude], seed, rng))
        occluded[occlude] = True
    canvas *= brightness
    if noise:
        canvas += rng.normal(0, noise, canvas.shape).astype(np.float32)
    frame = np.clip(canvas, 0, 255).astype(np.uint8)
    if shift != (0, 0):
        matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]]], dtype=np.float32)
        frame = np.asarray(
            cv2.warpAffine(frame, matrix, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REPLICATE),
            dtype=np.uint8,
        )
    return Scene(np.asarray(frame, dtype=np.uint8), dict(states), occluded, occluders)


def nuisance(rng: np.random.Generator) -> dict[str, object]:
    """Random lighting, noise and camera shift, as over a day at a fixed camera."""
    return {
        "brightness": float(rng.uniform(0.7, 1.3)),
        "noise": float(rng.uniform(2.0, 7.0)),
        "shift": (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))),
    }
