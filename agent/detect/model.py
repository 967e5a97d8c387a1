"""Model packages: the manifest that pins a detection model, read and verified, or written.

A model package is a directory with ``manifest.yaml`` and the ONNX file it names. The
manifest pins the file's sha256, the input size and preprocessing, the output convention and
the class labels, so a box never runs a model other than the one that was shipped; it also
says which labels are violations of which type and each label's default threshold::

    format: mclz-model/1
    name: mclz-default
    version: 2026.11.26-e30
    file: model.onnx
    sha256: <64 hex digits>
    input: {width: 416, height: 416, layout: NCHW, color: RGB, scale: 0.00392156862745098}
    output: yolo
    labels: [face_mask, face_no_mask, head_covered, head_bare, person_uniform, person_no_uniform]
    violations: {face_no_mask: no_mask, head_bare: no_hat}     # optional: label -> violation type
    thresholds: {face_no_mask: 0.4, head_bare: 0.4}            # optional: label -> confidence
    license: ...

A ``manifest.json`` with the same fields is read too (JSON is YAML).

Format ``mclz-model/2`` adds ``stages``: further models that run beside the detector on every
analysed frame. Today one kind, the face-first mask check (:mod:`agent.detect.face`)::

    format: mclz-model/2
    ...                                       # the detector, as in /1
    stages:
      face:
        dir: face                             # a folder of the package: mask_classifier.json,
        meta_sha256: <64 hex digits>          #   the classifier and YuNet (their sha256 in it)
        replaces: [face_mask, face_no_mask]   # the detector's labels this stage decides instead
        second_opinion: false                 # keep detector faces the stage did not find
        options: {upscale: 2.0, max_upscaled_pixels: 1000000}   # FaceDetector settings

The format is bumped so that an agent that does not know stages refuses the package instead
of running it without them.

Either format may carry ``variants``: the same detector in another numeric precision, each
pinned by sha256, and ``default_variant``, the one the agent runs unless told otherwise
(``model.precision`` in the config; ``fp32`` names the main ``file``)::

    variants:
      int8:
        file: model.int8.onnx                 # static int8 (QDQ), scripts/train/quantize_model.py
        sha256: <64 hex digits>
        precision: int8
        backends: [onnxruntime]               # where "auto" picks it (default: everywhere)
        quantization: {...}                   # how it was made, free-form
        eval: {...}                           # its accuracy against fp32, free-form
    default_variant: int8

An agent that does not know ``variants`` ignores them and runs the main file (fp32), so they
need no new format.

Nothing here loads the ONNX graph: :class:`agent.detect.detector.Detector` does.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from agent.errors import ModelError

MANIFEST_NAME: Final = "manifest.yaml"
MANIFEST_NAMES: Final = (MANIFEST_NAME, "manifest.json")
MANIFEST_FORMAT: Final = "mclz-model/1"
#: Written when the package has ``stages``; both are read.
STAGED_FORMAT: Final = "mclz-model/2"
FORMATS: Final = (MANIFEST_FORMAT, STAGED_FORMAT)
#: Stage kinds this agent runs, and the options each passes on to its models.
STAGE_KINDS: Final = ("face",)
FACE_OPTIONS: Final = frozenset(
    {
        "score_threshold",
        "nms_threshold",
        "top_k",
        "upscale",
        "max_upscaled_pixels",
        "max_pixels",
        "look",
    }
)
#: The face stage's ``look`` option (where its upscaled pass looks; agent.detect.face.LOOKS).
FACE_LOOKS: Final = ("frame", "people")
OUTPUT_CONVENTIONS: Final = ("yolo",)
DEFAULT_SCALE: Final = 1.0 / 255.0

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_FIELDS: Final = (
    "format",
    "name",
    "version",
    "file",
    "sha256",
    "input",
    "output",
    "labels",
)
_RESERVED_FIELDS: Final = frozenset(
    (*_REQUIRED_FIELDS, "violations", "thresholds", "stages", "variants", "default_variant")
)
#: The main ``file`` of a package, as a variant name.
MAIN_VARIANT: Final = "fp32"
#: Numeric precisions a variant may declare.
PRECISIONS: Final = ("fp32", "fp16", "int8")
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Stage:
    """A verified further stage of a package (``stages.<kind>`` of the manifest)."""

    kind: str
    path: Path  # the stage's folder inside the package
    replaces: tuple[str, ...]  # detector labels this stage decides instead
    second_opinion: bool  # keep the detector's detections of those labels the stage missed
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    """A verified variant of the detector (``variants.<name>``, or the main file as ``fp32``)."""

    name: str
    onnx_path: Path
    sha256: str
    precision: str
    backends: tuple[str, ...] = ()  # where ``auto`` picks it; empty: every backend


@dataclass(frozen=True)
class ModelPackage:
    """A verified model package: manifest fields plus the resolved ONNX path."""

    path: Path
    name: str
    version: str
    onnx_path: Path
    sha256: str
    input_width: int
    input_height: int
    labels: tuple[str, ...]
    manifest: dict[str, Any] = field(repr=False, compare=False)
    violations: dict[str, str] = field(default_factory=dict)  # label -> violation type
    thresholds: dict[str, float] = field(default_factory=dict)  # label -> default confidence
    stages: dict[str, Stage] = field(default_factory=dict)  # kind -> verified stage
    variants: dict[str, Variant] = field(default_factory=dict)  # name -> verified variant
    default_variant: str = MAIN_VARIANT

    def variant(self, precision: str = "auto", backend: str | None = None) -> Variant:
        """The detector file to run: ``auto`` is ``default_variant`` (unless it names backends
        and ``backend`` is not one of them: then the main file), ``fp32`` the main file, any
        other name that variant.

        Raises:
            ModelError: the package has no such variant (the message lists those it has).
        """
        name = self.default_variant if precision == "auto" else precision
        if precision == "auto" and name in self.variants:
            backends = self.variants[name].backends
            if backend is not None and backends and backend not in backends:
                name = MAIN_VARIANT
        if name == MAIN_VARIANT:
            return Variant(MAIN_VARIANT, self.onnx_path, self.sha256, MAIN_VARIANT)
        if name not in self.variants:
            have = ", ".join([MAIN_VARIANT, *self.variants])
            raise ModelError(f"{self.path}: the package has no {name!r} variant (it has {have})")
        return self.variants[name]

    @property
    def color(self) -> str:
        """Channel order the model expects, ``RGB`` or ``BGR``."""
        return str(self.manifest.get("input", {}).get("color", "RGB"))

    @property
    def scale(self) -> float:
        """Factor applied to 0..255 pixel values before inference."""
        return float(self.manifest.get("input", {}).get("scale", DEFAULT_SCALE))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_file(
    path: Path, expected: str, *, named_by: Path, who: str, what: str = "model file"
) -> str:
    """Check that ``path`` exists and its sha256 is ``expected``; return the sha256.

    ``named_by`` (the file that names it), ``who`` (how messages call that) and ``what``
    (how they call this file) go into the messages.

    Raises:
        ModelError: the file is missing, unreadable or different; the message names it.
    """
    if not path.is_file():
        raise ModelError(f"{path}: {what} not found (named by {named_by})")
    try:
        actual = _sha256_of(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read {what}: {exc}") from exc
    if actual != expected.lower():
        raise ModelError(
            f"{path} sha256 is {actual}, {who} says {expected.lower()}: "
            "the file is corrupt or was replaced"
        )
    return actual


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _format_problems(value: object) -> list[str]:
    if value not in FORMATS:
        known = " or ".join(repr(f) for f in FORMATS)
        return [f"unknown format {value!r} (this agent reads {known})"]
    return []


def _stages_problems(data: dict[str, Any]) -> list[str]:
    stages = data.get("stages")
    if stages is None:
        return []
    if data.get("format") != STAGED_FORMAT:
        return [f"'stages' needs format {STAGED_FORMAT!r}"]
    if not isinstance(stages, dict) or not stages:
        return ["'stages' must map stage kinds to their settings"]
    raw_labels = data.get("labels")
    labels: list[Any] = raw_labels if isinstance(raw_labels, list) else []
    problems: list[str] = []
    for kind, spec in stages.items():
        where = f"stages.{kind}"
        if kind not in STAGE_KINDS:
            problems.append(f"'{where}': unknown stage kind (this agent runs {STAGE_KINDS})")
        elif not isinstance(spec, dict):
            problems.append(f"'{where}' must be a mapping")
        else:
            problems.extend(_stage_problems(where, spec, labels))
    return problems


def _stage_problems(where: str, spec: dict[str, Any], labels: list[Any]) -> list[str]:
    problems: list[str] = []
    unknown = sorted(set(spec) - {"dir", "meta_sha256", "replaces", "second_opinion", "options"})
    if unknown:
        problems.append(f"'{where}' has unknown fields: {', '.join(map(str, unknown))}")
    folder = spec.get("dir")
    if (
        not isinstance(folder, str)
        or not folder.strip()
        or Path(folder).is_absolute()
        or ".." in Path(folder).parts
    ):
        problems.append(f"'{where}.dir' must be a folder inside the package, not {folder!r}")
    if not _SHA256_RE.match(str(spec.get("meta_sha256")).lower()):
        problems.append(f"'{where}.meta_sha256' must be 64 hexadecimal digits")
    replaces = spec.get("replaces", [])
    if not isinstance(replaces, list) or any(r not in labels for r in replaces):
        problems.append(f"'{where}.replaces' must list labels of the model, not {replaces!r}")
    if not isinstance(spec.get("second_opinion", False), bool):
        problems.append(f"'{where}.second_opinion' must be true or false")
    options = spec.get("options", {})
    if not isinstance(options, dict) or not set(options) <= FACE_OPTIONS:
        problems.append(f"'{where}.options' may set only {', '.join(sorted(FACE_OPTIONS))}")
    elif options.get("look", "frame") not in FACE_LOOKS:
        problems.append(
            f"'{where}.options.look' must be one of {', '.join(FACE_LOOKS)}, "
            f"not {options['look']!r}"
        )
    elif any(
        isinstance(v, bool) or not isinstance(v, int | float)
        for k, v in options.items()
        if k != "look"
    ):
        problems.append(f"'{where}.options' values must be numbers (look: a word)")
    return problems


def _text_problems(key: str) -> Callable[[object], list[str]]:
    def check(value: object) -> list[str]:
        if not isinstance(value, str) or not value.strip():
            return [f"'{key}' must be a non-empty string"]
        return []

    return check


def _file_problems(value: object) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        return ["'file' must be a non-empty string"]
    if Path(value).is_absolute() or ".." in Path(value).parts:
        return [f"'file' must be a path inside the package directory, not {value!r}"]
    return []


def _sha256_problems(value: object) -> list[str]:
    if not isinstance(value, str) or not _SHA256_RE.match(value.lower()):
        return ["'sha256' must be 64 hexadecimal digits"]
    return []


def _output_problems(value: object) -> list[str]:
    if value not in OUTPUT_CONVENTIONS:
        supported = ", ".join(OUTPUT_CONVENTIONS)
        return [f"unknown output convention {value!r} (supported: {supported})"]
    return []


def _labels_problems(value: object) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(x, str) and x.strip() for x in value)
    ):
        return ["'labels' must be a non-empty list of non-empty strings"]
    if len(set(value)) != len(value):
        return ["'labels' must not repeat a name"]
    return []


def _mapping_problems(data: dict[str, Any]) -> list[str]:
    raw_labels = data.get("labels")
    labels: list[Any] = raw_labels if isinstance(raw_labels, list) else []
    problems: list[str] = []
    violations = data.get("violations", {})
    if not isinstance(violations, dict):
        problems.append("'violations' must map labels to violation types")
    else:
        for label, kind in violations.items():
            if label not in labels:
                problems.append(f"'violations' names {label!r}, which is not one of the labels")
            if not isinstance(kind, str) or not _TYPE_RE.match(kind):
                problems.append(f"'violations.{label}' must be a type id like no_hat, not {kind!r}")
    thresholds = data.get("thresholds", {})
    if not isinstance(thresholds, dict):
        problems.append("'thresholds' must map labels to confidences")
    else:
        for label, value in thresholds.items():
            if label not in labels:
                problems.append(f"'thresholds' names {label!r}, which is not one of the labels")
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                problems.append(f"'thresholds.{label}' must be a number in (0, 1], not {value!r}")
    return problems


def _manifest_problems(data: object) -> list[str]:
    """Return every problem with a parsed manifest, each phrased for a person; empty when valid."""
    if not isinstance(data, dict):
        return [f"must be a mapping of fields (format, name, ...), not {type(data).__name__}"]
    checks: dict[str, Callable[[object], list[str]]] = {
        "format": _format_problems,
        "name": _text_problems("name"),
        "version": _text_problems("version"),
        "file": _file_problems,
        "sha256": _sha256_problems,
        "input": _input_problems,
        "output": _output_problems,
        "labels": _labels_problems,
    }
    problems: list[str] = []
    for key in _REQUIRED_FIELDS:
        if key not in data:
            problems.append(f"missing field '{key}'")
        else:
            problems.extend(checks[key](data[key]))
    problems.extend(_mapping_problems(data))
    problems.extend(_stages_problems(data))
    problems.extend(_variants_problems(data))
    return problems


def _variants_problems(data: dict[str, Any]) -> list[str]:
    variants = data.get("variants")
    problems: list[str] = []
    names: set[str] = {MAIN_VARIANT}
    if variants is not None:
        if not isinstance(variants, dict) or not variants:
            return ["'variants' must map variant names to their file and sha256"]
        for name, spec in variants.items():
            where = f"variants.{name}"
            if not isinstance(name, str) or not _TYPE_RE.match(name) or name == MAIN_VARIANT:
                problems.append(f"'{where}': a variant name is a word like int8, not 'fp32'")
                continue
            if not isinstance(spec, dict):
                problems.append(f"'{where}' must be an object with file and sha256")
                continue
            for key, check in (("file", _file_problems), ("sha256", _sha256_problems)):
                if key not in spec:
                    problems.append(f"missing field '{where}.{key}'")
                else:
                    problems.extend(
                        p.replace(f"'{key}'", f"'{where}.{key}'", 1) for p in check(spec[key])
                    )
            backends = spec.get("backends", [])
            if not isinstance(backends, list) or not all(isinstance(b, str) for b in backends):
                problems.append(f"'{where}.backends' must be a list of backend names")
            if spec.get("precision", name) not in PRECISIONS:
                problems.append(
                    f"'{where}.precision' must be one of {', '.join(PRECISIONS)}, "
                    f"not {spec.get('precision')!r}"
                )
            names.add(name)
    default = data.get("default_variant", MAIN_VARIANT)
    if default not in names:
        problems.append(
            f"'default_variant' {default!r} is not a variant of the package "
            f"({', '.join(sorted(names))})"
        )
    return problems


def _input_problems(spec: object) -> list[str]:
    if not isinstance(spec, dict):
        return ["'input' must be an object with width and height"]
    problems: list[str] = []
    for key in ("width", "height"):
        value = spec.get(key)
        if value is None:
            problems.append(f"missing field 'input.{key}'")
        elif not _is_int(value) or not 0 < value <= 8192:
            problems.append(f"'input.{key}' must be an integer in 1..8192, not {value!r}")
    if spec.get("layout", "NCHW") != "NCHW":
        problems.append(f"'input.layout' must be 'NCHW', not {spec['layout']!r}")
    if spec.get("color", "RGB") not in ("RGB", "BGR"):
        problems.append(f"'input.color' must be 'RGB' or 'BGR', not {spec['color']!r}")
    scale = spec.get("scale", DEFAULT_SCALE)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= 1:
        problems.append(f"'input.scale' must be a number in (0, 1], not {scale!r}")
    return problems


def load_model_package(path: Path) -> ModelPackage:
    """Read and verify a model package directory (or its manifest file).

    Checks the manifest's format and fields, that the ONNX file exists inside the package and
    that its sha256 matches the manifest. Does not load the ONNX graph: :class:`Detector` does.

    Raises:
        ModelError: the directory, manifest or ONNX file is missing, the manifest is not valid
            YAML or lacks a field, or the file's sha256 differs. The message names the path.
    """
    path = Path(path)
    if path.is_file() or path.suffix in {".json", ".yaml", ".yml"}:
        manifest_path = path
    else:
        manifest_path = next(
            (path / n for n in MANIFEST_NAMES if (path / n).is_file()), path / MANIFEST_NAME
        )
    package_dir = manifest_path.parent
    if not package_dir.is_dir():
        raise ModelError(f"{package_dir}: model package directory not found")
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{manifest_path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest_path}: cannot read manifest: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{manifest_path}:{mark.line + 1}:{mark.column + 1}" if mark else str(manifest_path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelError(f"{where}: invalid YAML: {problem}") from None
    problems = _manifest_problems(data)
    if problems:
        raise ModelError(f"{manifest_path}: " + "; ".join(problems))

    onnx_path = package_dir / data["file"]
    actual = verified_file(onnx_path, data["sha256"], named_by=manifest_path, who="manifest")
    stages = {
        str(kind): _load_stage(package_dir, manifest_path, str(kind), spec)
        for kind, spec in (data.get("stages") or {}).items()
    }
    variants = {
        str(name): _load_variant(package_dir, manifest_path, str(name), spec)
        for name, spec in (data.get("variants") or {}).items()
    }
    return ModelPackage(
        path=package_dir,
        name=data["name"],
        version=data["version"],
        onnx_path=onnx_path,
        sha256=actual,
        input_width=data["input"]["width"],
        input_height=data["input"]["height"],
        labels=tuple(data["labels"]),
        manifest=data,
        violations={str(k): str(v) for k, v in data.get("violations", {}).items()},
        thresholds={str(k): float(v) for k, v in data.get("thresholds", {}).items()},
        stages=stages,
        variants=variants,
        default_variant=str(data.get("default_variant", MAIN_VARIANT)),
    )


def _load_variant(
    package_dir: Path, manifest_path: Path, name: str, spec: dict[str, Any]
) -> Variant:
    """Check that a variant's file is in the package and matches its sha256."""
    path = package_dir / spec["file"]
    actual = verified_file(
        path, str(spec["sha256"]), named_by=manifest_path, who=f"manifest (variant {name!r})"
    )
    backends = tuple(str(b) for b in spec.get("backends", []))
    return Variant(name, path, actual, str(spec.get("precision", name)), backends)


#: The file of a face stage's folder whose sha256 the manifest pins; it pins the others.
FACE_META_FILE: Final = "mask_classifier.json"


def _load_stage(package_dir: Path, manifest_path: Path, kind: str, spec: dict[str, Any]) -> Stage:
    """Check a stage's folder and the sha256 of its description (which pins its models)."""
    folder = package_dir / spec["dir"]
    meta = folder / FACE_META_FILE
    verified_file(
        meta,
        str(spec["meta_sha256"]),
        named_by=manifest_path,
        who="manifest",
        what="stage description",
    )
    return Stage(
        kind=kind,
        path=folder,
        replaces=tuple(str(r) for r in spec.get("replaces", [])),
        second_opinion=bool(spec.get("second_opinion", False)),
        options=dict(spec.get("options", {})),
    )


def stage_entry(
    package_dir: Path,
    folder: str,
    *,
    replaces: Sequence[str],
    second_opinion: bool = False,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest's ``stages.face`` entry for a face-model folder copied into the package.

    Raises:
        ModelError: the folder has no stage description.
    """
    meta = Path(package_dir) / folder / FACE_META_FILE
    if not meta.is_file():
        raise ModelError(f"{meta}: stage description not found")
    return {
        "dir": folder,
        "meta_sha256": _sha256_of(meta),
        "replaces": list(replaces),
        "second_opinion": second_opinion,
        "options": dict(options or {}),
    }


def write_manifest(
    package_dir: Path,
    *,
    name: str,
    version: str,
    onnx_file: str,
    labels: Sequence[str],
    input_width: int,
    input_height: int,
    color: str = "RGB",
    scale: float = DEFAULT_SCALE,
    output: str = "yolo",
    violations: dict[str, str] | None = None,
    thresholds: dict[str, float] | None = None,
    stages: dict[str, dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    """Hash ``package_dir/onnx_file`` and write ``package_dir/manifest.yaml`` atomically.

    ``extra`` keys (``license``, ``notes``, metrics, provenance) are stored at the top level.
    Returns the manifest's path.

    Raises:
        ModelError: the ONNX file is missing or the fields do not make a valid manifest.
        ValueError: an ``extra`` key would overwrite one of the manifest's own fields.
    """
    package_dir = Path(package_dir)
    clashes = sorted(_RESERVED_FIELDS.intersection(extra))
    if clashes:
        raise ValueError(f"extra manifest keys clash with reserved fields: {', '.join(clashes)}")
    onnx_path = package_dir / onnx_file
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found")
    data: dict[str, Any] = {
        "format": STAGED_FORMAT if stages else MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "file": onnx_file,
        "sha256": _sha256_of(onnx_path),
        "input": {
            "width": input_width,
            "height": input_height,
            "layout": "NCHW",
            "color": color,
            "scale": scale,
        },
        "output": output,
        "labels": list(labels),
        "violations": dict(violations or {}),
        "thresholds": dict(thresholds or {}),
        **({"stages": stages} if stages else {}),
        **extra,
    }
    return _dump_manifest(package_dir, data)


def _dump_manifest(package_dir: Path, data: dict[str, Any]) -> Path:
    """Validate ``data`` and write it as ``package_dir/manifest.yaml``, atomically."""
    manifest_path = package_dir / MANIFEST_NAME
    problems = _manifest_problems(data)
    if problems:
        raise ModelError(f"{manifest_path}: " + "; ".join(problems))
    fd, tmp_name = tempfile.mkstemp(prefix=".manifest-", suffix=".yaml", dir=package_dir)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; the agent may run as another user
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# mclz-agent model package manifest, written by write_manifest\n")
            yaml.safe_dump(data, fh, allow_unicode=True, sort_keys=False)
        Path(tmp_name).replace(manifest_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return manifest_path


def add_variant(
    package_dir: Path,
    name: str,
    onnx_file: str,
    *,
    precision: str,
    make_default: bool,
    **info: Any,
) -> Path:
    """Add (or replace) ``variants.<name>`` in a package's manifest, pinning the file's sha256.

    ``make_default`` sets ``default_variant`` to it; otherwise a ``default_variant`` that
    named it falls back to ``fp32``. ``info`` (how it was made, its evaluation) is stored in
    the variant's entry. Returns the manifest's path.

    Raises:
        ModelError: the package or the file is missing or the result is not a valid manifest.
    """
    package_dir = Path(package_dir)
    manifest_path = package_dir / MANIFEST_NAME
    path = package_dir / onnx_file
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        data = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{manifest_path}: cannot read manifest: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{manifest_path}: not a manifest")
    # Not load_model_package first: the variant's file may just have been replaced.
    variants = dict(data.get("variants") or {})
    variants[name] = {"file": onnx_file, "sha256": _sha256_of(path), "precision": precision, **info}
    data["variants"] = variants
    if make_default:
        data["default_variant"] = name
    elif data.get("default_variant") == name:
        data["default_variant"] = MAIN_VARIANT
    written = _dump_manifest(package_dir, data)
    load_model_package(package_dir)  # every file of the result matches its sha256
    return written
