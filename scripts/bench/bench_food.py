"""Measure the food-zone classifier: features compared, held-out accuracy, cost per check.

    .venv/bin/python scripts/bench/bench_food.py [--scenes 120] [--json out.json]

Scenes come from ``mclz_testkit/food_scenes.py`` (real photographs as dishes, lids and film drawn
over them, brightness x0.7..1.3, noise, shifts of up to 4 px). References: 4 dishes x 3
states x 2 lighting variants per tray. Held out: scenes with the same dishes, scenes with
dishes never seen at calibration, and scenes with a person leaning over a tray. Prints
markdown tables: accuracy per feature set, the agent's classifier (with unknowns), and
milliseconds per zone check (crop + features + classify) on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from agent.config import AgentConfig
from agent.detect.food import (
    STATES,
    UNKNOWN,
    FoodClassifier,
    Vector,
    distances,
    features,
    zone_crop,
)
from agent.records import Detection
from agent.rules.engine import RuleEngine
from mclz_testkit import food_scenes as fs

REPO = Path(__file__).resolve().parents[2]

Blocks = list[npt.NDArray[np.float32]]


def _prep(crop: fs.Image, mask: fs.Image) -> tuple[fs.Image, npt.NDArray[np.bool_]]:
    small = cv2.resize(crop, (64, 64), interpolation=cv2.INTER_AREA)
    inside = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST)
    return np.asarray(small, dtype=np.uint8), np.asarray(
        cv2.erode(inside, np.ones((3, 3), np.uint8)) > 0
    )


def _norm(h: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    total = float(h.sum())
    return np.asarray(h / total if total else h, dtype=np.float32)


def alt_lab(crop: fs.Image, mask: fs.Image) -> Blocks:
    """Lab a*b* histogram, 8 x 8 bins over the central range."""
    small, inside = _prep(crop, mask)
    lab = cv2.cvtColor(small, cv2.COLOR_BGR2LAB)
    h, _, _ = np.histogram2d(
        lab[..., 1][inside], lab[..., 2][inside], bins=(8, 8), range=((96, 160), (96, 160))
    )
    return [_norm(h.ravel())]


def alt_ncc(crop: fs.Image, mask: fs.Image) -> Blocks:
    """Blurred grey 32 x 32, zero mean and unit norm (an NCC / SSIM-like comparison)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32)
    small = np.asarray(
        cv2.GaussianBlur(cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA), (0, 0), 1.5),
        dtype=np.float32,
    )
    grey = (small - small.mean()) / (small.std() + 1e-6)
    return [np.asarray(grey.ravel() / np.sqrt(grey.size), dtype=np.float32)]


def agent_blocks(crop: fs.Image, mask: fs.Image) -> Blocks:
    """The agent's features split into chroma and texture."""
    vector = features(crop, mask)
    return [vector[:37], vector[37:]]


def _chi(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    s = a + b
    nz = s > 0
    return 0.5 * float(np.sum((a[nz] - b[nz]) ** 2 / s[nz]))


Extract = Callable[[fs.Image, fs.Image], dict[str, Blocks]]


def extract_all(crop: fs.Image, mask: fs.Image) -> dict[str, Blocks]:
    """Every candidate feature of a crop."""
    vector = features(crop, mask)
    return {
        "hue-sat": [vector[:37]],
        "texture": [vector[37:45], vector[45:]],
        "lab": alt_lab(crop, mask),
        "ncc": alt_ncc(crop, mask),
    }


def distance(a: dict[str, Blocks], b: dict[str, Blocks], kinds: tuple[str, ...]) -> float:
    """Mean per-block distance over the feature sets ``kinds``."""
    out = []
    for kind in kinds:
        for x, y in zip(a[kind], b[kind], strict=True):
            out.append((1 - float(np.dot(x, y))) / 2 if kind == "ncc" else _chi(x, y))
    return float(np.mean(out))


def build(scenes: int, seed: int) -> dict[str, Any]:
    """References and held-out crops per tray."""
    rng = np.random.default_rng(seed)
    refs: dict[str, list[tuple[str, fs.Image, fs.Image]]] = {z: [] for z in fs.ZONES}
    tests: dict[str, list[tuple[str, str, fs.Image, fs.Image, list[fs.Box]]]] = {
        "same dishes": [],
        "new dishes": [],
        "person over tray": [],
    }
    n = seed * 10000
    for dish in range(4):
        for state in STATES:
            for _ in range(2):
                n += 1
                scene = fs.render(
                    dict.fromkeys(fs.ZONES, state),
                    dishes={z: dish * 13 + i for i, z in enumerate(fs.ZONES)},
                    seed=n,
                    **fs.nuisance(rng),  # type: ignore[arg-type]
                )
                for zone, polygon in fs.ZONES.items():
                    refs[zone].append((state, *zone_crop(scene.frame, polygon)))
    for i in range(scenes):
        n += 1
        states = {z: STATES[int(rng.integers(3))] for z in fs.ZONES}
        kind = ("same dishes", "new dishes", "person over tray")[i % 3]
        if kind == "new dishes":
            dishes = {z: 400 + i * 7 + j for j, z in enumerate(fs.ZONES)}
        else:
            dishes = {z: int(rng.integers(4)) * 13 + j for j, z in enumerate(fs.ZONES)}
        occlude = list(fs.ZONES)[i % 2] if kind == "person over tray" else None
        scene = fs.render(
            states,
            dishes=dishes,
            seed=n,
            occlude=occlude,
            **fs.nuisance(rng),  # type: ignore[arg-type]
        )
        for zone, polygon in fs.ZONES.items():
            if occlude is not None and zone != occlude:
                continue
            crop, mask = zone_crop(scene.frame, polygon)
            tests[kind].append((zone, states[zone], crop, mask, scene.occluders))
    return {"refs": refs, "tests": tests}


def compare_features(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Nearest-reference accuracy of each feature set on the unoccluded held-out crops."""
    ref_feats = {
        z: [(s, extract_all(c, m)) for s, c, m in rows] for z, rows in data["refs"].items()
    }
    test_feats = {
        kind: [(z, s, extract_all(c, m)) for z, s, c, m, _ in rows]
        for kind, rows in data["tests"].items()
        if kind != "person over tray"
    }
    out = []
    for kinds in (
        ("hue-sat",),
        ("lab",),
        ("texture",),
        ("ncc",),
        ("hue-sat", "texture"),
        ("lab", "texture"),
        ("hue-sat", "texture", "ncc"),
    ):
        row: dict[str, Any] = {"features": " + ".join(kinds)}
        for kind, rows in test_feats.items():
            hits = 0
            for zone, state, feats in rows:
                best: dict[str, float] = {}
                for ref_state, ref in ref_feats[zone]:
                    d = distance(feats, ref, kinds)
                    best[ref_state] = min(best.get(ref_state, 9.0), d)
                hits += min(best, key=best.__getitem__) == state
            row[kind] = hits / len(rows)
        out.append(row)
    return out


def evaluate_agent(data: dict[str, Any], unknown_distance: float) -> dict[str, Any]:
    """The agent's classifier: accuracy, unknowns, occlusion caught, with and without boxes."""
    classifiers = {
        zone: FoodClassifier(
            [(s, features(c, m)) for s, c, m in rows],
            fs.ZONES[zone],
            unknown_distance=unknown_distance,
        )
        for zone, rows in data["refs"].items()
    }
    result: dict[str, Any] = {"unknown_distance": unknown_distance}
    for kind, rows in data["tests"].items():
        states = [
            classifiers[z].classify(c, m, boxes if kind == "person over tray" else ()).state
            for z, _s, c, m, boxes in rows
        ]
        truth = [s for _z, s, _c, _m, _b in rows]
        if kind == "person over tray":
            blind = [classifiers[z].classify(c, m).state for z, _s, c, m, _b in rows]
            result["occluded: unknown with boxes"] = states.count(UNKNOWN) / len(rows)
            result["occluded: unknown without boxes"] = blind.count(UNKNOWN) / len(rows)
            result["occluded: wrong state without boxes"] = sum(
                p not in {UNKNOWN, t} for p, t in zip(blind, truth, strict=True)
            ) / len(rows)
            continue
        decided = [(p, t) for p, t in zip(states, truth, strict=True) if p != UNKNOWN]
        result[f"{kind}: n"] = len(rows)
        result[f"{kind}: accuracy (unknown = wrong)"] = sum(
            p == t for p, t in zip(states, truth, strict=True)
        ) / len(rows)
        result[f"{kind}: unknown"] = states.count(UNKNOWN) / len(rows)
        result[f"{kind}: accuracy of decided"] = (
            sum(p == t for p, t in decided) / len(decided) if decided else 0.0
        )
    return result


def cost(data: dict[str, Any], repeats: int = 200) -> dict[str, float]:
    """Milliseconds per zone check: crop + features + classify, and the parts."""
    scene = fs.render(dict.fromkeys(fs.ZONES, "uncovered"), dishes={}, seed=1)
    polygon = fs.ZONES["tray-a"]
    refs = data["refs"]["tray-a"]
    vectors: list[tuple[str, Vector]] = [(s, features(c, m)) for s, c, m in refs]
    # 50 references per state, the default cap: the worst case of the nearest-reference search
    big = FoodClassifier([vectors[i % len(vectors)] for i in range(150)], polygon)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    for _ in range(repeats):
        crop, mask = zone_crop(scene.frame, polygon)
    timings["crop ms"] = (time.perf_counter() - t0) / repeats * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        vector = features(crop, mask)
    timings["features ms"] = (time.perf_counter() - t0) / repeats * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        distances(vector, big._matrix)  # the search alone
    timings["search 150 refs ms"] = (time.perf_counter() - t0) / repeats * 1000
    t0 = time.perf_counter()
    for _ in range(repeats):
        crop, mask = zone_crop(scene.frame, polygon)
        big.classify(crop, mask)
    timings["whole check ms"] = (time.perf_counter() - t0) / repeats * 1000
    h, w = crop.shape[:2]
    timings["zone px"] = float(w * h)
    return timings


def false_alerts(data: dict[str, Any], hours: float, seed: int) -> dict[str, float]:
    """Alerts of the default food_uncovered rule over ``hours`` of a counter with no violation.

    Every ``food.check_interval`` (5 s) each tray is in one of the situations a real service
    has: covered or empty most of the time, uncovered for 20-120 s while dishes are served
    (under the rule's 5 min), a person leaning over it (with the detection box) now and then;
    light, noise and camera shifts vary per check; dishes come from the whole pool, so most
    were never seen at calibration. Each classification goes through the agent's rule
    engine exactly as the detect loop feeds it (an uncovered zone is a detection until the
    next check). Any alert is a false one.
    """
    rng = np.random.default_rng(seed)
    config = AgentConfig.model_validate(
        {
            "identity": {"city": "c", "school_id": "s", "box_id": "b"},
            "cameras": {
                "counter": {
                    "url": "rtsp://cam/x",
                    "zones": {z: {"polygon": poly, "food": True} for z, poly in fs.ZONES.items()},
                }
            },
        }
    )
    classifiers = {
        zone: FoodClassifier([(s, features(c, m)) for s, c, m in rows], fs.ZONES[zone])
        for zone, rows in data["refs"].items()
    }
    engine = RuleEngine({"food_uncovered": config.rules["food_uncovered"]}, cameras=config.cameras)
    interval = 5.0
    checks = int(hours * 3600 / interval)
    state = dict.fromkeys(fs.ZONES, "covered")
    serving_until = dict.fromkeys(fs.ZONES, -1.0)
    alerts = uncovered_calls = 0
    for i in range(checks):
        t = i * interval
        for zone in fs.ZONES:
            if t < serving_until[zone]:
                state[zone] = "uncovered"
            elif rng.random() < 0.01:  # a serving about every 8 minutes
                serving_until[zone] = t + float(rng.uniform(20, 120))
                state[zone] = "uncovered"
            else:
                state[zone] = "empty" if rng.random() < 0.2 else "covered"
        occlude = str(rng.choice(list(fs.ZONES))) if rng.random() < 0.1 else None
        scene = fs.render(
            state,
            dishes={z: int(rng.integers(0, 60)) for z in fs.ZONES},
            seed=int(rng.integers(1 << 30)),
            occlude=occlude,
            **fs.nuisance(rng),  # type: ignore[arg-type]
        )
        found = []
        for zone, polygon in fs.ZONES.items():
            crop, mask = zone_crop(scene.frame, polygon)
            result = classifiers[zone].classify(crop, mask, scene.occluders)
            if result.state == "uncovered":
                uncovered_calls += 1
                xs, ys = [x for x, _ in polygon], [y for _, y in polygon]
                box = (min(xs), min(ys), max(xs), max(ys))
                found.append(Detection("food_uncovered", -1, 0.5 + 0.5 * result.margin, box))
        for step in range(5):  # one analysed frame a second between checks
            events = engine.update("counter", found, mono=t + step, wall=1e9 + t + step)
            alerts += sum(1 for e in events if e.phase == "start")
    return {
        "hours": hours,
        "checks per tray": float(checks),
        "uncovered calls": float(uncovered_calls),
        "false alerts": float(alerts),
        "false alerts per hour": alerts / hours,
    }


def main() -> int:
    """Run the measurements and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenes", type=int, default=120, help="held-out scenes (default 120)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--hours", type=float, default=2.0, help="simulated service without violations"
    )
    args = parser.parse_args()
    if not fs.available():
        print("needs ../shared (datasets/facemask, datasets/headcover, videos)", file=sys.stderr)
        return 2
    cv2.setNumThreads(1)
    data = build(args.scenes, args.seed)
    compared = compare_features(data)
    print("| features | same dishes | new dishes |\n|---|---|---|")
    for row in compared:
        print(f"| {row['features']} | {row['same dishes']:.3f} | {row['new dishes']:.3f} |")
    agent = [evaluate_agent(data, factor) for factor in (0.75, 1.0, 1.5, 2.0)]
    print("\n| measure | " + " | ".join(f"x{a['unknown_distance']}" for a in agent) + " |")
    print("|---|" + "---|" * len(agent))
    for key in agent[0]:
        if key == "unknown_distance":
            continue
        print(f"| {key} | " + " | ".join(f"{a[key]:.3f}" for a in agent) + " |")
    timings = cost(data)
    print("\n| cost (1 thread) | value |\n|---|---|")
    for key, value in timings.items():
        print(f"| {key} | {value:.3f} |")
    long_run = false_alerts(data, args.hours, args.seed)
    print("\n| no violations, default food_uncovered rule | value |\n|---|---|")
    for key, value in long_run.items():
        print(f"| {key} | {value:.2f} |")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"features": compared, "agent": agent, "cost": timings, "long_run": long_run},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
