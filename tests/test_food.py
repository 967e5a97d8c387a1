"""Food zones (issue #7): crops, the state classifier, its references, the monitor and the CLI.

Scenes are synthetic-from-real (``mclz_testkit.food_scenes``): real photographs as dishes,
a lid or cling film drawn over them, brightness x0.7..1.3, noise and camera shifts, a real
person leaning over a tray. The CLI tests stream such scenes through a real RTSP server.
"""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli.main import app
from agent.config import parse_config
from agent.detect.food import (
    STATES,
    UNKNOWN,
    FoodClassifier,
    FoodMonitor,
    FoodStore,
    Vector,
    features,
    zone_crop,
    zone_share,
)
from agent.store.store import Store
from mclz_testkit import food_scenes as fs
from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.clips import make_picture_clip
from mclz_testkit.factories import CollectorFactory, RtspServerFactory
from mclz_testkit.mqtt import load_schema
from mclz_testkit.synthetic_model import build_pattern_model

pytestmark = pytest.mark.skipif(not fs.available(), reason="needs ../shared datasets and video")
runner = CliRunner()
REF_DISHES = (0, 13, 26, 39)


def _scene(states: dict[str, str], dishes: dict[str, int], seed: int, **kw: object) -> fs.Scene:
    rng = np.random.default_rng(seed)
    params: dict[str, object] = {**fs.nuisance(rng), **kw}
    return fs.render(states, dishes=dishes, seed=seed, **params)  # type: ignore[arg-type]


def _dishes(base: int) -> dict[str, int]:
    return {zone: base + i for i, zone in enumerate(fs.ZONES)}


@cache
def _references() -> dict[str, tuple[tuple[str, Vector], ...]]:
    """Per tray: each state with each of four dishes, under random light, noise and shift."""
    out: dict[str, list[tuple[str, Vector]]] = {zone: [] for zone in fs.ZONES}
    seed = 1000
    for dish in REF_DISHES:
        for state in STATES:
            seed += 1
            scene = _scene(dict.fromkeys(fs.ZONES, state), _dishes(dish), seed)
            for zone, polygon in fs.ZONES.items():
                out[zone].append((state, features(*zone_crop(scene.frame, polygon))))
    return {zone: tuple(refs) for zone, refs in out.items()}


def _classifier(zone: str) -> FoodClassifier:
    return FoodClassifier(list(_references()[zone]), fs.ZONES[zone])


def test_zone_crop_is_the_bounding_rect_with_the_polygon_mask() -> None:
    """The crop spans the polygon's bounding rectangle; the mask is 255 inside, 0 outside."""
    frame = np.zeros((100, 200, 3), np.uint8)
    crop, mask = zone_crop(frame, ((0.1, 0.2), (0.5, 0.2), (0.1, 0.6)))
    assert crop.shape == (40, 80, 3)
    assert mask.shape == (40, 80)
    assert mask[2, 2] == 255
    assert mask[37, 77] == 0
    assert 0.4 < float((mask > 0).mean()) < 0.6  # a right triangle: half the rectangle


def test_held_out_accuracy_over_light_noise_shift_and_new_dishes() -> None:
    """Held-out scenes (new light, noise, shifts; and dishes never seen) are classified right.

    Floors are below what was measured (same dishes 1.00; new dishes: 0.99 of the decided,
    about 10 % unknown), not tuned to pass.
    """
    classifiers = {zone: _classifier(zone) for zone in fs.ZONES}
    rng = np.random.default_rng(7)
    results: dict[str, list[tuple[str, str]]] = {"same": [], "new": []}
    for i in range(36):
        states = {zone: STATES[int(rng.integers(3))] for zone in fs.ZONES}
        new = i % 2 == 1
        dishes = _dishes(300 + i * 5) if new else _dishes(REF_DISHES[int(rng.integers(4))])
        scene = _scene(states, dishes, 5000 + i)
        for zone, polygon in fs.ZONES.items():
            got = classifiers[zone].classify(*zone_crop(scene.frame, polygon))
            results["new" if new else "same"].append((states[zone], got.state))
    same = sum(t == p for t, p in results["same"]) / len(results["same"])
    decided = [(t, p) for t, p in results["new"] if p != UNKNOWN]
    new_acc = sum(t == p for t, p in decided) / len(decided)
    new_unknown = 1 - len(decided) / len(results["new"])
    print(  # the figures the issue asks for, visible with -s
        f"held-out accuracy: same dishes {same:.3f} (n={len(results['same'])}), new dishes"
        f" {new_acc:.3f} of decided, {new_unknown:.0%} unknown (n={len(results['new'])})"
    )
    assert same >= 0.95
    assert new_acc >= 0.9
    assert new_unknown <= 0.3


@pytest.mark.parametrize("zone", list(fs.ZONES))
def test_empty_covered_uncovered_are_told_apart_with_a_margin(zone: str) -> None:
    """Each state of a tray, under new light, comes out as itself with a clear margin."""
    classifier = _classifier(zone)
    for k, state in enumerate(STATES):
        scene = _scene(dict.fromkeys(fs.ZONES, state), _dishes(REF_DISHES[k]), 9000 + k)
        got = classifier.classify(*zone_crop(scene.frame, fs.ZONES[zone]))
        assert got.state == state, got
        assert 0.3 < got.margin <= 1.0
        assert set(got.distances) == set(STATES)


def test_a_person_over_the_tray_makes_it_unknown() -> None:
    """A person detection over > 20 % of the zone: unknown, whatever the tray shows."""
    classifier = _classifier("tray-a")
    for seed in range(3):
        states = {"tray-a": "covered", "tray-b": "uncovered"}
        scene = _scene(states, _dishes(0), 7000 + seed, occlude="tray-a")
        crop, mask = zone_crop(scene.frame, fs.ZONES["tray-a"])
        assert zone_share(scene.occluders[0], fs.ZONES["tray-a"]) > 0.2
        got = classifier.classify(crop, mask, scene.occluders)
        assert got.state == UNKNOWN
        assert "occluded" in got.detail
    small = (0.0, 0.0, 0.1, 0.1)  # a head far from the tray does not count
    scene = _scene({"tray-a": "covered", "tray-b": "covered"}, _dishes(0), 7100)
    got = classifier.classify(*zone_crop(scene.frame, fs.ZONES["tray-a"]), [small])
    assert got.state == "covered"


def test_a_large_change_from_every_reference_is_unknown() -> None:
    """The zone showing something unlike every reference (here the bare floor and wall) is
    unknown, not the nearest state."""
    classifier = _classifier("tray-a")
    frame = fs.render(dict.fromkeys(fs.ZONES, "empty"), dishes={}).frame
    elsewhere = ((0.05, 0.05), (0.40, 0.05), (0.40, 0.40), (0.05, 0.40))  # no tray there
    got = classifier.classify(*zone_crop(frame, elsewhere))
    assert got.state == UNKNOWN, got
    assert "unlike every reference" in got.detail


def test_one_state_is_not_enough() -> None:
    """With references of only one state the zone is unknown (nothing to compare against)."""
    refs = [r for r in _references()["tray-a"] if r[0] == "covered"]
    scene = _scene(dict.fromkeys(fs.ZONES, "covered"), _dishes(0), 1)
    got = FoodClassifier(refs, fs.ZONES["tray-a"]).classify(
        *zone_crop(scene.frame, fs.ZONES["tray-a"])
    )
    assert got.state == UNKNOWN
    assert "2+ states" in got.detail


def test_references_persist_are_capped_and_forgotten(tmp_path: Path) -> None:
    """References survive reopening the database; the cap drops the oldest image; forget
    deletes rows and files."""
    scene = _scene(dict.fromkeys(fs.ZONES, "covered"), _dishes(0), 3)
    crop, mask = zone_crop(scene.frame, fs.ZONES["tray-a"])
    with Store(tmp_path / "agent.db") as database:
        store = FoodStore(database, tmp_path, keep=2)
        refs = [store.add("cam", "tray-a", "covered", crop, mask, 1000.0 + i) for i in range(3)]
        store.add("cam", "tray-a", "empty", crop, mask, 2000.0)
        version = database.food_refs_version()
    assert not Path(refs[0].path).exists()  # the oldest of three, over the cap of two
    assert Path(refs[2].path).parent == tmp_path / "food" / "cam" / "tray-a" / "covered"
    assert Path(refs[2].path).name == "19700101T001642000Z.png"
    with Store(tmp_path / "agent.db") as database:
        store = FoodStore(database, tmp_path, keep=2)
        stored = store.references("cam", "tray-a")
        assert [(r.state, r.captured_at) for r in stored] == [
            ("covered", 1001.0),
            ("covered", 1002.0),
            ("empty", 2000.0),
        ]
        vectors = store.vectors("cam", "tray-a")
        assert np.allclose(vectors[0][1], features(crop, mask))
        image = cv2.imread(stored[0].path, cv2.IMREAD_UNCHANGED)
        assert image is not None
        assert image.shape == (*crop.shape[:2], 4)
        assert database.food_refs_version() == version
        assert store.forget("cam", "tray-a", "covered") == 2
        assert database.food_refs_version() != version
        assert [r.state for r in store.references("cam")] == ["empty"]
    assert not Path(refs[2].path).exists()


CONFIG = """
identity: {{city: hz, school_id: s-1, box_id: box-01}}
storage: {{state_dir: {state}}}
food: {{check_interval: 5s}}
cameras:
  counter:
    url: {url}
    zones:
      tray-a: {{polygon: {a}, food: true}}
      tray-b: {{polygon: {b}, food: true}}
      door: {{polygon: [[0.9, 0.0], [1.0, 0.0], [1.0, 0.2]]}}
"""


def _config_text(state: Path, url: str) -> str:
    def poly(zone: str) -> str:
        return json.dumps([list(p) for p in fs.ZONES[zone]])

    return CONFIG.format(state=state, url=url, a=poly("tray-a"), b=poly("tray-b"))


def test_monitor_rate_limits_and_reloads_references(tmp_path: Path) -> None:
    """check() classifies each food zone at most every check_interval and picks up
    references added while it runs."""
    config = parse_config(_config_text(tmp_path, "rtsp://cam/x"))
    covered = _scene(dict.fromkeys(fs.ZONES, "covered"), _dishes(0), 11).frame
    with Store(tmp_path / "agent.db") as database:
        monitor = FoodMonitor(config, database, tmp_path)
        assert monitor.has_zones("counter")
        assert not monitor.has_zones("other")
        first = dict(monitor.check("counter", covered, mono=100.0))
        assert set(first) == {"tray-a", "tray-b"}
        assert all(s.state == UNKNOWN for s in first.values())  # no references yet
        assert monitor.check("counter", covered, mono=104.0) == []
        store = FoodStore(database, tmp_path)
        for state in STATES:
            scene = _scene(dict.fromkeys(fs.ZONES, state), _dishes(0), 20)
            for zone, polygon in fs.ZONES.items():
                store.add("counter", zone, state, *zone_crop(scene.frame, polygon))
        later = dict(monitor.check("counter", covered, mono=105.0))
        assert {z: s.state for z, s in later.items()} == dict.fromkeys(fs.ZONES, "covered")
        assert monitor.latest("counter") == later


# --------------------------------------------------------------------------- CLI, live


@pytest.fixture
def counter_stream(rtsp_server_factory: RtspServerFactory, tmp_path: Path) -> dict[str, str]:
    """An RTSP camera per situation: each state on both trays, and a mixed scene."""
    mounts: dict[str, Path] = {}
    situations = {
        **{state: dict.fromkeys(fs.ZONES, state) for state in STATES},
        "mixed": {"tray-a": "uncovered", "tray-b": "covered"},
    }
    for k, (name, states) in enumerate(situations.items()):
        pictures = []
        for j in range(2):  # two moments: the light and the camera move a little
            scene = _scene(states, _dishes(REF_DISHES[j]), 40 + 10 * k + j)
            path = tmp_path / "scenes" / f"{name}-{j}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), scene.frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            pictures.append(path)
        mounts[f"/{name}"] = make_picture_clip(
            tmp_path / f"{name}.mp4", pictures, hold=1.0, width=fs.WIDTH, height=fs.HEIGHT
        )
    server = rtsp_server_factory(mounts)
    return {name: server.url(f"/{name}") for name in situations}


def _write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(_config_text(tmp_path / "state", url))
    return path


def test_cli_calibrates_tests_and_shows_against_a_live_stream(
    counter_stream: dict[str, str], tmp_path: Path
) -> None:
    """calibrate stores references from the live stream; test and show classify it."""
    for state in STATES:
        config = _write_config(tmp_path, counter_stream[state])
        for zone in fs.ZONES:
            result = runner.invoke(
                app,
                ["food", "calibrate", "counter", zone, "--state", state,
                 "--frames", "3", "--seconds", "1", "--config", str(config)],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert f"3 reference(s) of counter/{zone} stored as {state}" in result.output
    config = _write_config(tmp_path, counter_stream["mixed"])
    result = runner.invoke(app, ["food", "refs", "counter", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    refs = json.loads(result.output)
    assert len(refs) == 18
    assert all(Path(r["path"]).is_file() for r in refs)
    expected = {"tray-a": "uncovered", "tray-b": "covered"}
    for zone, state in expected.items():
        result = runner.invoke(
            app, ["food", "test", "counter", zone, "--json", "--config", str(config)]
        )
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["state"] == state, body
        assert body["margin"] > 0.3
    shot = tmp_path / "food.png"
    result = runner.invoke(
        app, ["food", "show", "counter", "--out", str(shot), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "tray-a           uncovered" in result.output
    image = cv2.imread(str(shot))
    assert image is not None
    assert image.shape == (fs.HEIGHT, fs.WIDTH, 3)
    result = runner.invoke(
        app,
        ["food", "forget", "counter", "tray-b", "--state", "empty", "--config", str(config)],
    )
    assert result.exit_code == 0, result.output
    assert "3 reference(s) of counter/tray-b deleted" in result.output


@pytest.mark.parametrize(
    ("zone", "message"),
    [("door", "not a food zone"), ("nope", "has no zone 'nope'")],
)
def test_cli_refuses_a_zone_that_is_not_a_food_zone(
    tmp_path: Path, zone: str, message: str
) -> None:
    """calibrate exits 2, before touching the stream, for a missing or non-food zone."""
    config = _write_config(tmp_path, "rtsp://127.0.0.1:9/none")
    result = runner.invoke(
        app, ["food", "calibrate", "counter", zone, "--state", "covered", "--config", str(config)]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    result = runner.invoke(
        app, ["food", "calibrate", "counter", "tray-a", "--state", "lidded",
              "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--state must be one of" in result.output


# --------------------------------------------------------------------------- the agent, live


def test_agent_alerts_once_for_a_long_uncovering_and_never_for_a_brief_one(
    rtsp_server_factory: RtspServerFactory,
    broker: Broker,
    mqtt_collector: CollectorFactory,
    agents: list[AgentProcess],
    tmp_path: Path,
) -> None:
    """Through the running agent: tray-a is uncovered for 2 s (serving: no alert), covered
    again, then uncovered for 14 s: exactly one food_uncovered alert, in zone tray-a, with
    evidence; tray-b stays covered and never alerts."""
    state = tmp_path / "state"
    with Store(state / "agent.db") as database:
        store = FoodStore(database, state)
        for k, dishes in enumerate(REF_DISHES[:2]):
            for ref_state in STATES:
                scene = _scene(dict.fromkeys(fs.ZONES, ref_state), _dishes(dishes), 300 + k)
                for zone, polygon in fs.ZONES.items():
                    store.add("counter", zone, ref_state, *zone_crop(scene.frame, polygon))
    moments = ["covered"] * 2 + ["uncovered"] + ["covered"] * 2 + ["uncovered"] * 7
    pictures = []
    for i, tray_a in enumerate(moments):
        scene = _scene({"tray-a": tray_a, "tray-b": "covered"}, _dishes(REF_DISHES[0]), 400 + i)
        path = tmp_path / "scenes" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), scene.frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        pictures.append(path)
    clip = make_picture_clip(
        tmp_path / "counter.mp4", pictures, hold=2.0, width=fs.WIDTH, height=fs.HEIGHT
    )
    server = rtsp_server_factory({"/counter": clip})
    text = _config_text(state, server.url("/counter")).replace(
        "check_interval: 5s", "check_interval: 1s"
    )
    data = yaml.safe_load(text)
    data["mqtt"] = {"url": broker.url, "reconnect_min": 1, "reconnect_max": 2}
    data["model"] = {"path": str(build_pattern_model(tmp_path / "model"))}
    data["cameras"]["counter"].update({"name": "备餐台", "detect_interval": 0.5})
    data["rules"] = {
        "food_uncovered": {
            "labels": ["food_uncovered"],
            "zones": ["@food"],
            "zone_anchor": "overlap",
            "min_overlap": 0.4,
            "min_duration": 6,
            "end_after": 4,
            "cooldown": 600,
        }
    }
    data["heartbeat"] = {"interval": 2}
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    root = "mclz/hz/s-1/box-01"
    collector = mqtt_collector(broker.url, f"{root}/#")
    agent = AgentProcess(config).start()
    agents.append(agent)
    collector.wait_for(lambda ms: len(ms) >= 1, 60, topic_filter=f"{root}/alert")
    time.sleep(6)  # the rest of the long uncovering: still one alert
    code, _ = agent.terminate()
    assert code == 0, agent.log[-3000:]
    bodies = [json.loads(m.payload) for m in collector.messages(f"{root}/alert")]
    starts = [b for b in bodies if b["event"] == "start"]
    assert len(starts) == 1, bodies
    alert = starts[0]
    jsonschema.validate(alert, load_schema("alert"))
    assert (alert["type"], alert["zone"]) == ("food_uncovered", "tray-a")
    assert alert["duration_s"] >= 6 - 1.5 * 0.5  # the interval before the first hit counts in
    assert collector.messages(alert["evidence"]["topic"])
    beats = [json.loads(m.payload) for m in collector.messages(f"{root}/heartbeat")]
    food = [
        b["cameras"]["counter"].get("food") for b in beats if b["cameras"]["counter"].get("food")
    ]
    assert food, "the heartbeat reports the food zones' states"
    assert food[-1]["tray-b"]["state"] == "covered"
