"""Config edits for ``camera add``, ``camera remove`` and the installer page's zone editor
(:func:`set_zones`): the file's comments are kept.

The YAML document is changed in a ruamel.yaml round trip (comments, key order and quoting
survive), and the changed text replaces the file only when it passes the same validation as
``config check`` (:func:`agent.install.provision.validate_text`), atomically and keeping the
file's permissions. A camera's password never goes into the file: :func:`split_password`
takes it out of the URL, and the entry names a credential (:func:`camera_credential`) that
the caller keeps in the credential store.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from agent.config import ID_PATTERN, AgentConfig
from agent.errors import ConfigError
from agent.install.provision import validate_text, write_config

_ID_RE = re.compile(ID_PATTERN)


def _yaml() -> Any:
    from ruamel.yaml import YAML  # noqa: PLC0415

    yaml = YAML()  # round trip: comments, order and quoting are kept
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def edit_config(path: Path, change: Callable[[Any], None]) -> AgentConfig:
    """Apply ``change`` to the config's YAML document and save it if the result is valid.

    The file keeps its comments and permissions; it is replaced atomically and only when the
    changed text passes the same validation as ``config check``.

    Raises:
        ConfigError: the file cannot be read or parsed, ``change`` refuses, or the result is
            invalid (every problem listed, the file untouched).
        StoreError: the file cannot be written.
    """
    from ruamel.yaml.error import YAMLError  # noqa: PLC0415

    yaml = _yaml()
    try:
        original = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o7777
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        document = yaml.load(original)
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    change(document)
    out = io.StringIO()
    yaml.dump(document, out)
    text = out.getvalue()
    try:
        config = validate_text(text, path)
    except ConfigError as exc:
        raise ConfigError(
            f"{path}: the change would make the config invalid", exc.problems
        ) from None
    write_config(path, text, mode)
    return config


def split_password(url: str) -> tuple[str, str | None]:
    """``rtsp://admin:pw@host/p`` -> (``rtsp://admin@host/p``, ``pw``); no password: None."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, unquote(parts.password)


def camera_credential(camera_id: str) -> str:
    """The credential name of a camera's password."""
    return f"camera-{camera_id}"


def add_camera(
    path: Path,
    camera_id: str,
    url: str,
    *,
    main_url: str | None = None,
    name: str = "",
    credential: str | None = None,
    replace: bool = False,
) -> AgentConfig:
    """Add (or with ``replace``, redefine) camera ``camera_id`` in the config at ``path``.

    ``url`` is the stream detection reads (the sub-stream), ``main_url`` the full-resolution
    stream evidence comes from. Zones and rules of a replaced camera are kept.

    Raises:
        ConfigError: the id is invalid, the camera exists (without ``replace``) or the result
            is invalid.
        StoreError: the file cannot be written.
    """
    if not _ID_RE.match(camera_id):
        _bad_id(camera_id)

    def change(document: Any) -> None:
        cameras = document.get("cameras")
        if cameras is None or not isinstance(cameras, dict):
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            cameras = CommentedMap()
            document["cameras"] = cameras
        entry = cameras.get(camera_id)
        if entry is not None and not replace:
            raise ConfigError(
                f"{path}: camera {camera_id!r} exists: use --replace to change its streams, "
                "or camera remove first"
            )
        if entry is None or not isinstance(entry, dict):
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            entry = CommentedMap()
            cameras[camera_id] = entry
        if name or "name" not in entry:
            entry["name"] = name
        entry["url"] = url
        if main_url is not None:
            entry["main_url"] = main_url
        elif "main_url" in entry:
            del entry["main_url"]
        if credential is not None:
            from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

            ref = CommentedMap()
            ref["credential"] = credential
            ref.fa.set_flow_style()
            entry["password"] = ref
        elif "password" in entry:
            del entry["password"]

    return edit_config(path, change)


def _bad_id(camera_id: str) -> None:
    raise ConfigError(
        f"camera id {camera_id!r}: lower-case letters, digits, '-' and '_' (it appears in topics)"
    )


def remove_camera(path: Path, camera_id: str) -> tuple[AgentConfig, str | None]:
    """Remove camera ``camera_id``; return the new config and its password credential's name.

    Raises:
        ConfigError: no such camera, or a rule still needs one of its zones.
        StoreError: the file cannot be written.
    """
    removed: list[str | None] = []

    def change(document: Any) -> None:
        cameras = document.get("cameras") or {}
        if camera_id not in cameras:
            known = ", ".join(sorted(cameras)) or "none"
            raise ConfigError(f"{path}: no camera {camera_id!r} (configured: {known})")
        ref = cameras[camera_id].get("password") if isinstance(cameras[camera_id], dict) else None
        removed.append(ref.get("credential") if isinstance(ref, dict) else None)
        del cameras[camera_id]

    config = edit_config(path, change)
    return config, removed[0] if removed else None


#: Decimals kept of a zone corner: 1e-4 of the picture is a fifth of a pixel at 1920 wide.
CORNER_DECIMALS = 4


def _flow(items: Sequence[Any]) -> Any:
    """A YAML sequence written on one line (``[a, b]``), as zone corners are by hand."""
    from ruamel.yaml.comments import CommentedSeq  # noqa: PLC0415

    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _corners(polygon: object) -> object:
    """Corners rounded to :data:`CORNER_DECIMALS` in flow style; anything else as it is (the
    validation that follows names what is wrong with it)."""
    if not isinstance(polygon, list | tuple):
        return polygon
    points: list[Any] = []
    for point in polygon:
        if isinstance(point, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in point
        ):
            points.append(_flow([round(float(v), CORNER_DECIMALS) for v in point]))
        else:
            points.append(point)
    return _flow(points)


def rule_zones(config: AgentConfig, camera_id: str) -> dict[str, tuple[str, ...]]:
    """The zones each rule uses on the camera: its own ``rules.<name>.zones``, else the rule's."""
    camera = config.cameras[camera_id]
    out = {}
    for name, rule in config.rules.items():
        own = camera.rules.get(name)
        out[name] = own.zones if own is not None and own.zones is not None else rule.zones
    return out


def set_zones(
    path: Path,
    camera_id: str,
    zones: Mapping[str, Mapping[str, Any]],
    rules: Mapping[str, Sequence[str]],
) -> AgentConfig:
    """Make ``zones`` the camera's zones and ``rules`` the zones its rules use; save if valid.

    ``zones``: zone id -> ``name`` (text, may be Chinese), ``polygon`` (corners [x, y],
    0..1), ``exclude``, ``food``; zones not named are removed. Kept zones keep their place
    and comments; corners are rounded to 4 decimals. ``rules``: rule name -> zone ids (``@food``:
    all food zones; empty: the whole picture); a rule whose zones on this camera are already
    those is left as it is, any other gets the camera's own ``rules.<name>.zones``. The result
    passes the same validation as ``config check`` or the file is untouched.

    Raises:
        ConfigError: no such camera, the file is not valid now, or the result is invalid
            (every problem listed as ``config check`` lists it).
        StoreError: the file cannot be written.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    current = validate_text(text, path)
    if camera_id not in current.cameras:
        known = ", ".join(sorted(current.cameras)) or "none"
        raise ConfigError(f"{path}: no camera {camera_id!r} (configured: {known})")
    in_force = rule_zones(current, camera_id)

    def change(document: Any) -> None:
        entry = document["cameras"][camera_id]
        _write_zones(entry, zones)
        _write_rule_zones(entry, rules, in_force)

    return edit_config(path, change)


def _write_zones(entry: Any, zones: Mapping[str, Mapping[str, Any]]) -> None:
    """Make ``zones`` the camera ``entry``'s zones, keeping the kept ones' place and comments."""
    from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

    existing = entry.get("zones")
    if not isinstance(existing, dict):
        if not zones:
            return
        existing = CommentedMap()
        entry["zones"] = existing
    for zone_id in [z for z in existing if z not in zones]:
        del existing[zone_id]
    for zone_id, zone in zones.items():
        node = existing.get(zone_id)
        if not isinstance(node, dict):
            node = CommentedMap()
            existing[zone_id] = node
        name = zone.get("name") or ""
        if name or "name" in node:
            node["name"] = name
        node["polygon"] = _corners(zone.get("polygon"))
        for flag in ("exclude", "food"):
            value = zone.get(flag, False)
            if value or flag in node:  # the defaults stay unwritten
                node[flag] = value


def _write_rule_zones(
    entry: Any, rules: Mapping[str, Sequence[str]], in_force: Mapping[str, tuple[str, ...]]
) -> None:
    """Give the camera ``entry`` its own ``rules.<name>.zones`` where ``rules`` differ from
    what is in force on it."""
    from ruamel.yaml.comments import CommentedMap  # noqa: PLC0415

    for rule, used in rules.items():
        if tuple(used) == in_force.get(rule):
            continue
        own_rules = entry.get("rules")
        if not isinstance(own_rules, dict):
            own_rules = CommentedMap()
            entry["rules"] = own_rules
        own = own_rules.get(rule)
        if not isinstance(own, dict):
            own = CommentedMap()
            own_rules[rule] = own
        own["zones"] = _flow(list(used))
