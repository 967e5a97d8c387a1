"""Labelled datasets: read Pascal VOC and YOLO folders and map their classes to the agent's.

Why one file (about 600 lines): it does one thing, a folder on disk in, agent-labelled
boxes out, and its parts share what makes that thing right: the class map and its
families, the box convention, the list of problems. The VOC and YOLO readers are some 60
lines each; split out, each would import those shared parts back from a third module, and
the callers (``model eval``, the training scripts, the face stage's evaluation) come for
the loader, the split and the labels together.

Two layouts are read, told apart by the folder that sits next to ``images/``:

* **Pascal VOC** (``annotations/*.xml``, like ``../shared/datasets/facemask``): one xml per
  image, boxes in absolute pixels of the image size the xml states.
* **YOLO** (``labels/*.txt``, like ``../shared/datasets/headcover``): one txt per image, lines
  ``class xc yc w h`` normalised to 0..1. A line with more coordinates is a polygon and becomes
  the bounding box of its points; an empty file (or a missing one) is a background image.
  Class ids are named by ``classes.txt`` (one name a line) or the ``names:`` of ``data.yaml``
  or ``dataset.yaml`` in the folder; without one, the ``headcover`` names apply.

Source class names become agent labels through :data:`CLASS_MAP`; a name that already is an
agent label maps to itself. Boxes come out as (x1, y1, x2, y2) normalised to 0..1, clipped to
the image, the same convention as :class:`agent.records.Detection`.

A dataset labels only some of the agent's classes (facemask: the face classes; headcover: the
head and person classes). Its ``labelled_classes`` are the agent classes its mapping can
produce: those of the declared names (names file, or the headcover names of a plain YOLO
folder); for a VOC folder without a names file, the classes seen in its files together with
their counterparts (a folder with ``with_mask`` faces labels ``face_no_mask`` too). Evaluation
counts only those classes.

Malformed files and lines are skipped and listed in ``problems`` (file and line); a class
name the agent cannot map stops loading unless ``ignore_unknown`` is set, because a dataset
for another task would otherwise give meaningless figures.
"""

from __future__ import annotations

import hashlib
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

import yaml

from agent.errors import DatasetError

logger = logging.getLogger(__name__)

#: The agent's classes, in model output order. Never reorder: models and manifests depend on it.
AGENT_LABELS: Final = (
    "face_mask",
    "face_no_mask",
    "head_covered",
    "head_bare",
    "person_uniform",
    "person_no_uniform",
)

#: Prefix of a merged training picture's name (``scripts/train/prepare_data.py``) -> the agent
#: labels its source labels. The facemask pictures label no head or person, the headcover
#: pictures no face: a face found in a hard-hat picture is unlabelled, not a false positive.
SOURCE_LABELS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "fm": frozenset({"face_mask", "face_no_mask"}),
        "hc": frozenset({"head_covered", "head_bare", "person_uniform", "person_no_uniform"}),
    }
)


def labels_of_source(image_name: str) -> frozenset[str] | None:
    """The labels the source of a merged picture (``fm_x.jpg``) labels; None when unknown."""
    return SOURCE_LABELS.get(image_name.split("_", 1)[0]) if "_" in image_name else None


#: Source class name -> agent label, for the names of the two supported source datasets.
CLASS_MAP: Final[Mapping[str, str]] = MappingProxyType(
    {
        # facemask (Pascal VOC); a mask worn incorrectly does not protect: no mask.
        "with_mask": "face_mask",
        "without_mask": "face_no_mask",
        "mask_weared_incorrect": "face_no_mask",
        # headcover (YOLO)
        "helmet": "head_covered",
        "no_helmet": "head_bare",
        "no_wear": "person_no_uniform",
        "wear": "person_uniform",
    }
)

#: Class names of ``headcover`` by id: a YOLO folder without a names file is read with these.
HEADCOVER_NAMES: Final = ("helmet", "no_helmet", "no_wear", "wear")

# Classes that are labelled together: a dataset that marks one marks the other where it occurs.
_FAMILIES: Final = (
    ("face_mask", "face_no_mask"),
    ("head_covered", "head_bare"),
    ("person_uniform", "person_no_uniform"),
)

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
NAMES_FILES: Final = ("classes.txt", "data.yaml", "dataset.yaml")
MIN_BOX_PX: Final = 1.0  # VOC boxes narrower or lower than this (source pixels) are degenerate
MIN_BOX_NORM: Final = 1e-4  # the same for normalised YOLO boxes

Layout = Literal["voc", "yolo"]
ProblemKind = Literal["malformed", "unknown_class", "degenerate", "missing"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class LabelledBox:
    """One ground-truth object: an agent label and (x1, y1, x2, y2) normalised to 0..1."""

    label: str
    box: Box


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in a dataset file; ``where`` is ``file`` or ``file:line``."""

    kind: ProblemKind
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class LabelFile:
    """What one annotation file gave: its boxes in agent labels and its problems.

    ``usable`` is False when the file as a whole could not be read (its image is then left
    out); ``image_size`` is (width, height) as a VOC file states it.
    """

    boxes: list[LabelledBox] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    polygons: int = 0
    usable: bool = True
    image_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Sample:
    """One labelled image; no boxes means a background image."""

    image_path: Path
    boxes: list[LabelledBox]
    label_path: Path | None = None
    image_size: tuple[int, int] | None = None  # (width, height) the annotation states, if any


@dataclass
class Dataset:
    """A labelled dataset folder read into memory (image paths and boxes, not pixels)."""

    root: Path
    layout: Layout
    samples: list[Sample]
    labelled_classes: tuple[str, ...]
    problems: list[Problem] = field(default_factory=list)
    names: tuple[str, ...] | None = None  # class names by id (YOLO, or a VOC names file)
    names_source: str = ""  # where ``names`` came from
    polygons: int = 0

    def box_counts(self) -> Counter[str]:
        """Ground-truth boxes per agent label."""
        return Counter(b.label for s in self.samples for b in s.boxes)

    def problem_counts(self) -> Counter[str]:
        """Problems per kind (``malformed``, ``unknown_class``, ``degenerate``, ``missing``)."""
        return Counter(p.kind for p in self.problems)


VAL_PERCENT = 15  # share of each source that goes to val, by hash of "<source>/<stem>"


def split_of(source: str, stem: str) -> str:
    """``"val"`` or ``"train"`` for an image of ``source``; stable across runs and machines.

    The one definition of the training split: data preparation uses it to build the
    dataset, and the tests use it to pick images the model never trained on.
    """
    digest = hashlib.sha1(f"{source}/{stem}".encode(), usedforsecurity=False).hexdigest()
    return "val" if int(digest[:8], 16) % 100 < VAL_PERCENT else "train"


def agent_label(name: str) -> str | None:
    """The agent label a source class name maps to, or None when the agent has no such class."""
    if name in AGENT_LABELS:
        return name
    return CLASS_MAP.get(name)


def _known_names() -> str:
    return ", ".join((*CLASS_MAP, *AGENT_LABELS))


# --------------------------------------------------------------------------- single files


def _clip_box(x1: float, y1: float, x2: float, y2: float) -> Box:
    x1, x2 = sorted((min(max(x1, 0.0), 1.0), min(max(x2, 0.0), 1.0)))
    y1, y2 = sorted((min(max(y1, 0.0), 1.0), min(max(y2, 0.0), 1.0)))
    return x1, y1, x2, y2


def _image_size(image: Path) -> tuple[int, int] | None:
    """(width, height) of an image file, or None when it cannot be decoded."""
    import cv2  # noqa: PLC0415 - only for VOC files that do not state their image size

    pixels = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if pixels is None:
        return None
    height, width = pixels.shape[:2]
    return int(width), int(height)


def _voc_size(root: ET.Element) -> tuple[float, float]:
    size = root.find("size")
    if size is None:
        raise ValueError("no <size>")
    width = float(size.findtext("width", "0"))
    height = float(size.findtext("height", "0"))
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"bad image size {width:g}x{height:g}")
    return width, height


def read_voc(xml_path: Path, *, image_path: Path | None = None) -> LabelFile:
    """Read one Pascal VOC file into agent-labelled boxes, normalised by the stated image size.

    When the file's ``<size>`` is missing or zero and ``image_path`` is given, the size is
    taken from the image itself (decoded for that only).
    Never raises for bad content: an unparseable file comes back with ``usable`` False; bad,
    degenerate or unknown objects are left out and listed in ``problems``.
    """
    name = xml_path.name
    result = LabelFile()
    try:
        root = ET.parse(xml_path).getroot()  # noqa: S314 - local dataset files, not network input
    except ET.ParseError as exc:
        line = exc.position[0]
        result.usable = False
        result.problems.append(Problem("malformed", f"{name}:{line}", f"invalid XML: {exc}"))
        return result
    except OSError as exc:
        result.usable = False
        result.problems.append(Problem("malformed", name, f"cannot read: {exc.strerror}"))
        return result
    try:
        width, height = _voc_size(root)
    except ValueError as exc:
        real_size = _image_size(image_path) if image_path is not None else None
        if real_size is None:
            result.usable = False
            result.problems.append(Problem("malformed", name, str(exc)))
            return result
        width, height = float(real_size[0]), float(real_size[1])
    result.image_size = (round(width), round(height))
    for index, obj in enumerate(root.iter("object"), 1):
        where = f"{name} object {index}"
        source = (obj.findtext("name") or "").strip()
        label = agent_label(source)
        if label is None:
            result.problems.append(Problem("unknown_class", name, f"unknown class {source!r}"))
            continue
        bnd = obj.find("bndbox")
        try:
            if bnd is None:
                raise ValueError("no <bndbox>")
            x1, y1, x2, y2 = (
                float(bnd.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError as exc:
            result.problems.append(Problem("malformed", where, str(exc)))
            continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            result.problems.append(Problem("malformed", where, "missing or non-finite coordinate"))
            continue
        box = _clip_box(x1 / width, y1 / height, x2 / width, y2 / height)
        if (box[2] - box[0]) * width < MIN_BOX_PX or (box[3] - box[1]) * height < MIN_BOX_PX:
            result.problems.append(
                Problem("degenerate", where, f"degenerate box {x1:g},{y1:g},{x2:g},{y2:g}")
            )
            continue
        result.boxes.append(LabelledBox(label, box))
    return result


def _class_id(text: str) -> int:
    """A YOLO class id; some exporters write ``3.0``."""
    try:
        return int(text)
    except ValueError:
        value = float(text)
        if not value.is_integer():
            raise
        return int(value)


def read_yolo(txt_path: Path, names: Sequence[str]) -> LabelFile:
    """Read one YOLO label file into agent-labelled boxes; ``names`` names the class ids.

    Lines with four coordinates are boxes (centre, size); lines with an even number of at least
    six are polygons and give the bounding box of their points. Never raises for bad content:
    an unreadable file comes back with ``usable`` False; bad lines are listed in ``problems``.
    """
    name = txt_path.name
    result = LabelFile()
    try:
        text = txt_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        result.usable = False
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        result.problems.append(Problem("malformed", name, f"cannot read: {reason}"))
        return result
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{name}:{lineno}"
        try:
            class_id = _class_id(parts[0])
            nums = [float(p) for p in parts[1:]]
        except ValueError:
            result.problems.append(Problem("malformed", where, "not numeric"))
            continue
        if not 0 <= class_id < len(names):
            result.problems.append(
                Problem(
                    "unknown_class",
                    where,
                    f"class id {class_id} is not named (names: {', '.join(names)})",
                )
            )
            continue
        label = agent_label(names[class_id])
        if label is None:
            result.problems.append(
                Problem("unknown_class", where, f"unknown class {names[class_id]!r}")
            )
            continue
        if len(nums) == 4:
            cx, cy, w, h = nums
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(nums) >= 6 and len(nums) % 2 == 0:
            xs, ys = nums[0::2], nums[1::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            result.polygons += 1
        else:
            result.problems.append(Problem("malformed", where, f"{len(nums)} coordinates"))
            continue
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            result.problems.append(Problem("malformed", where, "NaN or infinite coordinate"))
            continue
        box = _clip_box(x1, y1, x2, y2)
        if box[2] - box[0] <= MIN_BOX_NORM or box[3] - box[1] <= MIN_BOX_NORM:
            result.problems.append(Problem("degenerate", where, "degenerate box"))
            continue
        result.boxes.append(LabelledBox(label, box))
    return result


# --------------------------------------------------------------------------- folders


def _names_from_yaml(path: Path) -> tuple[str, ...] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DatasetError(f"{path}: cannot read class names: {exc}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{path}: 'names' must be numbered 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise DatasetError(f"{path}: 'names' must be a list of class names")
    return tuple(n.strip() for n in names)


def read_names(root: Path, labels_dir: Path | None = None) -> tuple[tuple[str, ...], Path] | None:
    """Class names by id from ``classes.txt``, ``data.yaml`` or ``dataset.yaml``, with the file.

    Looks in ``root`` (and for ``classes.txt`` also in ``labels_dir``). Returns None when the
    folder names no classes.

    Raises:
        DatasetError: a names file exists but cannot be read or has no valid list of names.
    """
    candidates = [root / "classes.txt"]
    if labels_dir is not None:
        candidates.append(labels_dir / "classes.txt")
    candidates += [root / n for n in NAMES_FILES if n != "classes.txt"]
    for path in candidates:
        if not path.is_file():
            continue
        if path.suffix == ".txt":
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DatasetError(f"{path}: cannot read class names: {exc}") from None
            names = tuple(line.strip() for line in lines if line.strip())
            if not names:
                raise DatasetError(f"{path}: no class names in the file")
            return names, path
        yaml_names = _names_from_yaml(path)
        if yaml_names is not None:
            return yaml_names, path
    return None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _layout_of(root: Path) -> tuple[Layout, Path]:
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    voc, yolo = root / "annotations", root / "labels"
    if voc.is_dir() and yolo.is_dir():
        raise DatasetError(
            f"{root}: has both annotations/ (Pascal VOC) and labels/ (YOLO); "
            "keep one so the layout is unambiguous"
        )
    if voc.is_dir():
        return "voc", voc
    if yolo.is_dir():
        return "yolo", yolo
    raise DatasetError(
        f"{root}: not a labelled dataset: expected images/ next to annotations/ "
        "(Pascal VOC xml) or labels/ (YOLO txt)"
    )


def _image_folder(root: Path, split: str | None) -> Path:
    images_dir = root / "images" if split is None else root / "images" / split
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: image folder not found")
    return images_dir


def _no_images_error(images_dir: Path) -> DatasetError:
    subdirs = sorted(p.name for p in images_dir.iterdir() if p.is_dir())
    if subdirs:
        return DatasetError(
            f"{images_dir}: the images are in subfolders ({', '.join(subdirs)}): "
            "choose one with split (--split)"
        )
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    return DatasetError(f"{images_dir}: no images ({suffixes})")


def _labelled_classes(names: Sequence[str] | None, seen: set[str]) -> tuple[str, ...]:
    if names is not None:
        produced = {label for n in names if (label := agent_label(n)) is not None}
    else:
        produced = {c for family in _FAMILIES if seen.intersection(family) for c in family}
    return tuple(label for label in AGENT_LABELS if label in produced)


def _check_unknown(root: Path, problems: Sequence[Problem], ignore_unknown: bool) -> None:
    if ignore_unknown:
        return
    for problem in problems:
        if problem.kind == "unknown_class":
            raise DatasetError(
                f"{root}: {problem}: the agent has no class for it (known names: "
                f"{_known_names()}); skip such objects with ignore_unknown (--ignore-unknown)"
            )


def _load_voc(
    root: Path, images_dir: Path, ann_dir: Path, *, limit: int | None, ignore_unknown: bool
) -> tuple[list[Sample], list[Problem]]:
    by_stem: dict[str, Path] = {}
    for path in _images_in(images_dir):
        by_stem.setdefault(path.stem, path)
    if not by_stem:
        raise _no_images_error(images_dir)
    xmls = sorted(ann_dir.glob("*.xml"))
    samples: list[Sample] = []
    problems: list[Problem] = []
    for xml_path in xmls:
        if limit is not None and len(samples) >= limit:
            break
        image = by_stem.get(xml_path.stem)
        if image is None:
            problems.append(
                Problem("missing", xml_path.name, f"no image {xml_path.stem}.* in {images_dir}")
            )
            continue
        labels = read_voc(xml_path, image_path=image)
        _check_unknown(root, labels.problems, ignore_unknown)
        problems.extend(labels.problems)
        if labels.usable:
            samples.append(Sample(image, labels.boxes, xml_path, labels.image_size))
    unannotated = len(set(by_stem) - {x.stem for x in xmls})
    if unannotated and limit is None:
        problems.append(
            Problem(
                "missing",
                str(images_dir),
                f"{unannotated} image(s) have no annotation file and are not used",
            )
        )
    return samples, problems


def _load_yolo(
    root: Path,
    images_dir: Path,
    labels_dir: Path,
    names: Sequence[str],
    *,
    limit: int | None,
    ignore_unknown: bool,
) -> tuple[list[Sample], list[Problem], int]:
    images = _images_in(images_dir)
    if not images:
        raise _no_images_error(images_dir)
    samples: list[Sample] = []
    problems: list[Problem] = []
    polygons = 0
    for image in images:
        if limit is not None and len(samples) >= limit:
            break
        txt = labels_dir / f"{image.stem}.txt"
        if not txt.is_file():
            problems.append(
                Problem("missing", image.name, f"no label file {txt}: taken as background")
            )
            samples.append(Sample(image, [], None))
            continue
        labels = read_yolo(txt, names)
        _check_unknown(root, labels.problems, ignore_unknown)
        problems.extend(labels.problems)
        polygons += labels.polygons
        if labels.usable:
            samples.append(Sample(image, labels.boxes, txt))
    if limit is None:
        stems = {image.stem for image in images}
        orphans = sum(1 for t in labels_dir.glob("*.txt") if t.stem not in stems)
        orphans -= (labels_dir / "classes.txt").is_file()
        if orphans > 0:
            problems.append(
                Problem("missing", str(labels_dir), f"{orphans} label file(s) have no image")
            )
    return samples, problems, polygons


def load_dataset(
    root: Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    ignore_unknown: bool = False,
) -> Dataset:
    """Read a labelled folder in Pascal VOC or YOLO layout; the layout is detected.

    ``split`` picks a subfolder (``images/<split>`` with ``labels/<split>`` or
    ``annotations/<split>``), as in a prepared training set. ``limit`` keeps the first that
    many samples in file-name order. ``ignore_unknown`` skips objects whose class the agent
    cannot map instead of failing. Files are paired by stem; images are not decoded.

    Raises:
        DatasetError: the folder is missing or is neither layout, has no images, a names file
            is invalid, a class cannot be mapped (unless ``ignore_unknown``), or no usable
            labelled image remains. The message names the folder or file.
    """
    root = Path(root)
    layout, labels_root = _layout_of(root)
    images_dir = _image_folder(root, split)
    labels_dir = labels_root if split is None else labels_root / split
    if not labels_dir.is_dir():
        raise DatasetError(f"{labels_dir}: label folder not found")
    declared = read_names(root, labels_dir)
    names: tuple[str, ...] | None = declared[0] if declared else None
    names_source = str(declared[1]) if declared else ""
    polygons = 0
    if layout == "voc":
        samples, problems = _load_voc(
            root, images_dir, labels_dir, limit=limit, ignore_unknown=ignore_unknown
        )
    else:
        if names is None:
            names, names_source = HEADCOVER_NAMES, "built-in headcover names"
        samples, problems, polygons = _load_yolo(
            root, images_dir, labels_dir, names, limit=limit, ignore_unknown=ignore_unknown
        )
    if not samples:
        first = f"; first: {problems[0]}" if problems else ""
        raise DatasetError(f"{root}: no usable labelled image ({len(problems)} problem(s){first})")
    seen = {b.label for s in samples for b in s.boxes}
    dataset = Dataset(
        root=root,
        layout=layout,
        samples=samples,
        labelled_classes=_labelled_classes(names, seen),
        problems=problems,
        names=names,
        names_source=names_source,
        polygons=polygons,
    )
    logger.info(
        "read %s dataset %s: %d images, %d boxes, %d problem(s)",
        layout,
        root,
        len(samples),
        sum(dataset.box_counts().values()),
        len(problems),
    )
    return dataset
