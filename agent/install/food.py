"""The installer's food-zone steps on given frames: record references, classify a zone.

``mclz-agent food calibrate/test/show`` run them on frames grabbed from the stream; the
installer page runs them on the running agent's newest frame. One code path for both, so a
reference recorded on the page is the same as one recorded on the command line. The
features, the classifier and the reference store are :mod:`agent.detect.food`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from agent.config import AgentConfig
from agent.detect.food import (
    STATES,
    FoodStore,
    ZoneState,
    build_classifier,
    food_zone,
    food_zones,
    zone_crop,
)

Box = tuple[float, float, float, float]


def check_state(state: str) -> None:
    """Raise when ``state`` is not one a reference can have.

    Raises:
        ValueError: not covered, uncovered or empty.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")


def reference_counts(store: FoodStore, camera: str, zone: str) -> dict[str, int]:
    """How many references of each state the zone has."""
    counts = dict.fromkeys(STATES, 0)
    for ref in store.references(camera, zone):
        counts[ref.state] = counts.get(ref.state, 0) + 1
    return counts


def record_references(
    store: FoodStore,
    config: AgentConfig,
    camera: str,
    zone: str,
    *,
    state: str,
    frames: Sequence[np.ndarray],
) -> dict[str, Any]:
    """Store the zone's crop of each of ``frames`` as a ``state`` reference.

    Returns ``camera``, ``zone``, ``state``, ``stored`` (how many now), ``references`` (the
    count per state) and ``ready`` (whether two states have references, which the zone needs
    before it can be classified).

    Raises:
        ConfigError: no such camera, no such zone, or the zone is not ``food: true``.
        ValueError: ``state`` is not a food state, or the zone has no area in a frame.
        StoreError: a reference cannot be written.
    """
    check_state(state)
    polygon = food_zone(config, camera, zone)
    for frame in frames:
        crop, mask = zone_crop(frame, polygon)
        store.add(camera, zone, state, crop, mask)
    counts = reference_counts(store, camera, zone)
    return {
        "camera": camera,
        "zone": zone,
        "state": state,
        "stored": len(frames),
        "references": counts,
        "ready": sum(1 for n in counts.values() if n) >= 2,
    }


def classify_zones(
    store: FoodStore,
    config: AgentConfig,
    camera: str,
    frame: np.ndarray,
    *,
    occluders: Sequence[Box] = (),
) -> dict[str, tuple[ZoneState, dict[str, int]]]:
    """Each food zone of ``camera`` classified on ``frame``, with its reference counts.

    ``occluders`` are the frame's person/face/head boxes (normalised), as the agent passes
    them; the command line has none (keep people away from the zone while testing).

    Raises:
        ConfigError: no such camera.
        ValueError: a zone has no area in ``frame``.
        StoreError: the references cannot be read.
    """
    out: dict[str, tuple[ZoneState, dict[str, int]]] = {}
    for zone, polygon in food_zones(config, camera).items():
        classifier = build_classifier(store, config.food, camera, zone, polygon)
        crop, mask = zone_crop(frame, polygon)
        out[zone] = (classifier.classify(crop, mask, occluders), classifier.counts)
    return out


def classify_zone(
    store: FoodStore,
    config: AgentConfig,
    camera: str,
    zone: str,
    frame: np.ndarray,
    *,
    occluders: Sequence[Box] = (),
) -> dict[str, Any]:
    """One food zone classified on ``frame``: what ``food test --json`` prints.

    ``camera``, ``zone``, ``state``, ``margin``, ``distance``, ``detail``, ``distances``
    and ``references`` (the count per state).

    Raises:
        ConfigError: no such camera, no such zone, or the zone is not ``food: true``.
        ValueError: the zone has no area in ``frame``.
        StoreError: the references cannot be read.
    """
    polygon = food_zone(config, camera, zone)
    classifier = build_classifier(store, config.food, camera, zone, polygon)
    crop, mask = zone_crop(frame, polygon)
    result = classifier.classify(crop, mask, occluders)
    return {"camera": camera, "zone": zone, **result.to_dict(), "references": classifier.counts}
