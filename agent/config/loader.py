"""Loading the file: YAML with unique keys, validation errors mapped to their line, paths
anchored at the file's directory, secrets checked, and the effective config shown redacted.

Every error names the file, the line and the YAML path, for example
``agent.yaml:42 cameras.kitchen-1.detect_interval: must be >= 0.1 s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agent.config.base import ID_PATTERN, SecretRef
from agent.config.models import AgentConfig
from agent.config.web import WebConfig
from agent.errors import ConfigError, SecretError


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys (YAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a key must be a plain value, not {type(key).__name__}",
                key_node.start_mark,
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the deepest node of ``root`` that ``loc`` reaches."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    node = value_node
                    line = key_node.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif parts:
            parts.append(f".{part}")
        else:
            parts.append(str(part))
    return "".join(parts) or "(top level)"


def _clean_loc(loc: tuple[int | str, ...], data: object = None) -> tuple[int | str, ...]:
    """``loc`` without what pydantic adds (validator names like ``function-after[...]``,
    union branches). A part that names a key or index of ``data`` (the parsed file) at that
    depth is always kept, so a camera called ``functional-kitchen`` stays in the path."""
    out: list[int | str] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]  # type: ignore[index]
        elif not (isinstance(part, str) and ("[" in part or part.startswith("function-"))):
            out.append(part)
            node = None
    return tuple(out)


def _message(error: Any) -> str:
    kind = error["type"]
    msg: str = error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == ID_PATTERN:
        return (
            "must be 1-63 lower-case letters, digits, '-' or '_', starting with a letter or digit"
        )
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif msg.startswith("Assertion failed, "):
        msg = msg[len("Assertion failed, ") :]
    return msg


def describe_validation(exc: ValidationError, prefix: str = "") -> list[str]:
    """One readable line per problem of a pydantic error, located under ``prefix``."""
    out = []
    for error in exc.errors():
        loc = (prefix, *_clean_loc(tuple(error["loc"]))) if prefix else _clean_loc(error["loc"])
        out.append(f"{_format_loc(loc)}: {_message(error)}")
    return out


def parse_config(text: str, source: str = "<config>") -> AgentConfig:
    """Validate YAML text; ``source`` names the file in error messages.

    Raises:
        ConfigError: with every problem listed in ``problems``.
    """
    try:
        root = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}:1: the file must be a mapping of sections (identity, mqtt, ...)"
        )
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = _clean_loc(tuple(error["loc"]), data)
            line = _line_of(root, loc)
            where = f"{source}:{line}" if line is not None else source
            problems.append(f"{where} {_format_loc(loc)}: {_message(error)}")
        summary = f"{source}: {len(problems)} problem(s) in the configuration"
        raise ConfigError(summary, problems) from None
    problems = []
    for loc, message in config.cross_check():
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line is not None else source
        problems.append(f"{where} {_format_loc(loc)}: {message}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s) in the configuration", problems)
    return config


def _anchor(path: Path | None, base: Path) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return base / path


def _anchor_secret(ref: SecretRef | None, base: Path) -> SecretRef | None:
    if ref is None or ref.file is None:
        return ref
    return ref.model_copy(update={"file": _anchor(ref.file, base)})


def _anchor_web(config: AgentConfig, base: Path) -> WebConfig:
    web = config.web
    update: dict[str, Any] = {"password": _anchor_secret(web.password, base)}
    if web.tls is not None:
        update["tls"] = web.tls.model_copy(
            update={
                "cert_file": _anchor(web.tls.cert_file, base),
                "key_file": _anchor(web.tls.key_file, base),
            }
        )
    return web.model_copy(update=update)


def with_base_dir(config: AgentConfig, base: Path) -> AgentConfig:
    """Resolve the config's relative paths against ``base`` (the config file's directory)."""
    cameras = {}
    for camera_id, camera in config.cameras.items():
        update: dict[str, Any] = {"password": _anchor_secret(camera.password, base)}
        if camera.is_file and not camera.url.startswith("file://"):
            update["url"] = str(_anchor(Path(camera.url), base))
        if camera.main_url is not None and "://" not in camera.main_url:
            update["main_url"] = str(_anchor(Path(camera.main_url), base))
        cameras[camera_id] = camera.model_copy(update=update)
    tls = config.mqtt.tls.model_copy(
        update={
            "ca_file": _anchor(config.mqtt.tls.ca_file, base),
            "cert_file": _anchor(config.mqtt.tls.cert_file, base),
            "key_file": _anchor(config.mqtt.tls.key_file, base),
        }
    )
    mqtt = config.mqtt.model_copy(
        update={"tls": tls, "password": _anchor_secret(config.mqtt.password, base)}
    )
    return config.model_copy(
        update={
            "cameras": cameras,
            "mqtt": mqtt,
            "model": config.model.model_copy(update={"path": _anchor(config.model.path, base)}),
            "storage": config.storage.model_copy(
                update={"state_dir": _anchor(config.storage.state_dir, base)}
            ),
            "evidence": config.evidence.model_copy(
                update={"font": _anchor(config.evidence.font, base)}
            ),
            "capture": config.capture.model_copy(
                update={"directory": _anchor(config.capture.directory, base)}
            ),
            "web": _anchor_web(config, base),
            "alarm": config.alarm.model_copy(
                update={
                    "sounder": config.alarm.sounder.model_copy(
                        update={
                            "directory": _anchor(config.alarm.sounder.directory, base),
                            "password": _anchor_secret(config.alarm.sounder.password, base),
                        }
                    ),
                    "prompts": {k: _anchor(v, base) for k, v in config.alarm.prompts.items()},
                    "place_prompts": {
                        k: _anchor(v, base) for k, v in config.alarm.place_prompts.items()
                    },
                }
            ),
        }
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file at ``path``.

    Relative paths in the file (model, state directory, TLS and secret files, video
    files) are taken relative to the file's own directory, so a config means the same
    whatever the working directory of the process.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or not valid.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    return with_base_dir(parse_config(text, source=str(path)), path.resolve().parent)


def check_secrets(config: AgentConfig) -> list[str]:
    """Resolve every secret reference and return the problems found (empty when all resolve)."""
    problems = []
    for where, ref in config.secret_refs():
        try:
            ref.resolve(where)
        except SecretError as exc:
            problems.append(str(exc))
    return problems


def redacted_dict(config: AgentConfig) -> dict[str, Any]:
    """The effective config as plain data, secrets shown only as where they come from."""
    data = config.model_dump(mode="json")
    for where, ref in config.secret_refs():
        node: Any = data
        *parents, leaf = where.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = f"<secret from {ref.describe()}>"
    return data
