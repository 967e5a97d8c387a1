"""The soak (``scripts/bench/soak.py``): its matching rules, and a short run with every fault kind.

The short run is the soak at a smaller scale: three cameras, a fault every ~15 s for two
minutes (broker and agent kill -9, camera kill -9 and SIGSTOP), then every verdict must
pass. The hour-long run is ``scripts/bench/soak.py`` itself.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SOAK_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "soak.py"
SHORT_SEED = 167  # its schedule: all four kinds, two long camera outages the agent watches


def load_soak() -> ModuleType:
    """scripts/bench/soak.py as a module (scripts/ is not a package)."""
    if "soak" in sys.modules:
        return sys.modules["soak"]
    spec = importlib.util.spec_from_file_location("soak", SOAK_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak = load_soak()


def fault(kind: str, start: float, seconds: float, target: str = "cam-01") -> object:
    return soak.Fault(kind, target, seconds, start=start, end=start + seconds)


def test_expectations_follow_offline_after_and_the_reconnect_backoff() -> None:
    """Long outages must give an episode, blips must not, in-between ones may; a fault the
    agent did not watch from its start (it was just restarted) is never held against it."""
    runs = [soak.AgentRun(0, 1, started=0.0)]
    assert soak.expectation(fault("camera", 100, 20), runs) == "offline"
    assert soak.expectation(fault("stall", 100, 20), runs) == "offline"
    assert soak.expectation(fault("camera", 100, 1.5), runs) == "online"
    assert soak.expectation(fault("stall", 100, 2.0), runs) == "online"
    assert soak.expectation(fault("camera", 100, 8), runs) == "either"
    assert soak.expectation(fault("stall", 100, 4), runs) == "either"
    restarted = [soak.AgentRun(0, 1, started=0.0, ended=98.0), soak.AgentRun(1, 2, started=99.0)]
    assert soak.expectation(fault("camera", 100, 20), restarted) == "either"
    # The reconnect after a 1.5 s kill comes at the third try at worst: 7 s plus overhead.
    assert soak.worst_reconnect(1.5) == pytest.approx(3 + soak.RECONNECT_OVERHEAD_S)
    assert soak.worst_reconnect(3.0) == pytest.approx(7 + soak.RECONNECT_OVERHEAD_S)


def test_an_episode_is_explained_only_by_a_fault_on_its_camera() -> None:
    """The episode's start (last frame) must fall in a camera or stall window of the same
    camera, give or take the tolerance; broker faults and other cameras explain nothing."""
    episode = soak.Episode("cam-01", 101.0, 130.0, 29.0, "refused", "frames")
    assert soak.explained_by(episode, fault("camera", 100, 20))
    assert soak.explained_by(episode, fault("stall", 102, 20))
    assert not soak.explained_by(episode, fault("camera", 100, 20, target="cam-02"))
    assert not soak.explained_by(episode, fault("broker", 100, 20, target="broker"))
    assert not soak.explained_by(episode, fault("camera", 60, 20))
    # A stall blip just before a kill of the same camera: the kill is the cause.
    blip, kill = fault("stall", 97, 2), fault("camera", 101.5, 20)
    assert soak.explained_by(episode, blip)
    assert soak.cause_of(episode, [blip, kill]) is kill
    assert soak.cause_of(episode, [fault("broker", 100, 20, target="broker")]) is None


@pytest.mark.slow
def test_short_soak_passes_every_check(tmp_path: Path) -> None:
    """Two minutes of faults of every kind on three cameras: no alert lost, the database
    intact, no leak, no crash, offline episodes where (and only where) outages were."""
    options = soak.SoakOptions(
        duration=120.0,
        cameras=3,
        seed=SHORT_SEED,
        fault_every=15.0,
        max_outage=25.0,
        recovery_timeout=45.0,
        workdir=tmp_path,
    )
    report = soak.run_soak(options)
    print(report.table())
    kinds = {f.kind for f in report.observations.faults}
    assert kinds == set(soak.FAULT_KINDS), report.table()
    assert report.ok, f"{report.table()}\n{report.failure_details()}\nwork directory {tmp_path}"
