"""Run-time control: ``set`` rule overrides, ``mute``, config ``reload`` (command and SIGHUP).

Unit tests on the control module with a real SQLite file; end-to-end tests drive a real
agent process over a real mosquitto with a real RTSP stream.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from test_e2e import ROOT, magenta_after, payloads, write_config

from agent.config import RuleConfig, parse_config
from agent.records import Detection
from agent.rules.engine import RuleEngine
from agent.service.telemetry import clock_status
from agent.store.store import Store
from agent.uplink.commands import CommandError
from agent.uplink.overrides import (
    Mute,
    RuleOverrides,
    apply_live,
    diff_config,
    effective_rules,
    merge_rule,
)
from mclz_testkit.agentproc import AgentProcess
from mclz_testkit.broker import Broker
from mclz_testkit.factories import ClipFactory, CollectorFactory, RtspServerFactory
from mclz_testkit.mqtt import MqttCollector, load_schema, mqtt_publish
from mclz_testkit.synthetic_model import build_pattern_model

BOX = "identity: {city: hz, school_id: s-001, box_id: box-01}\n"
RULES = {"no_hat": RuleConfig(labels=("head_bare",), min_duration=3.0, cooldown=600.0)}


# ---------------------------------------------------------------------- unit: overrides, mute


def test_merge_rule_validates_like_the_config_file() -> None:
    """Settable fields are validated with the config's rules; the error names the field."""
    rule = merge_rule("no_hat", RULES["no_hat"], {"min_duration": "5s", "min_confidence": 0.4})
    assert (rule.min_duration, rule.min_confidence) == (5.0, 0.4)
    with pytest.raises(CommandError, match=r"rules\.no_hat\.min_confidence"):
        merge_rule("no_hat", RULES["no_hat"], {"min_confidence": 1.5})
    with pytest.raises(CommandError, match=r"rules\.no_hat\.cooldown"):
        merge_rule("no_hat", RULES["no_hat"], {"cooldown": "soon"})
    with pytest.raises(CommandError, match="cannot set labels"):
        merge_rule("no_hat", RULES["no_hat"], {"labels": ["face_mask"]})


def test_overrides_persist_across_a_reopen_and_reset(tmp_path: Path) -> None:
    """A stored override applies on top of the config after a restart, until it is reset."""
    db = tmp_path / "agent.db"
    outbox = Store(db)
    name, rule, stored = RuleOverrides(outbox).set(RULES, {"rule": "no_hat", "cooldown": "2m"})
    assert (name, rule.cooldown, stored) == ("no_hat", 120.0, {"cooldown": 120.0})
    RuleOverrides(outbox).set(RULES, {"rule": "no_hat", "min_duration": 7})
    outbox.close()

    outbox = Store(db)
    overrides = RuleOverrides(outbox)
    assert overrides.load() == {"no_hat": {"cooldown": 120.0, "min_duration": 7.0}}
    effective = effective_rules(RULES, overrides.load())
    assert (effective["no_hat"].cooldown, effective["no_hat"].min_duration) == (120.0, 7.0)
    assert effective["no_hat"].labels == ("head_bare",)  # untouched fields from the config

    overrides.set(RULES, {"rule": "no_hat", "reset": True})
    assert overrides.load() == {}
    assert effective_rules(RULES, overrides.load())["no_hat"] == RULES["no_hat"]
    outbox.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"rule": "no_such"}, "must name a configured rule"),
        ({"cooldown": 5}, "must name a configured rule"),
        ({"rule": "no_hat"}, "nothing to set"),
        ({"rule": "no_hat", "reset": "yes"}, "'reset' must be true or false"),
        ({"rule": "no_hat", "reset": True, "cooldown": 5}, "cannot be combined"),
        ({"rule": "no_hat", "severity": "apocalyptic"}, r"rules\.no_hat\.severity"),
    ],
)
def test_bad_set_arguments_are_refused_and_store_nothing(
    tmp_path: Path, args: dict[str, Any], message: str
) -> None:
    """Every bad ``set`` is a CommandError with the reason; no override is stored."""
    with Store(tmp_path / "agent.db") as outbox:
        with pytest.raises(CommandError, match=message):
            RuleOverrides(outbox).set(RULES, args)
        assert RuleOverrides(outbox).load() == {}


def test_stored_override_for_a_vanished_rule_is_skipped(tmp_path: Path) -> None:
    """An override whose rule left the config is ignored (and kept for its return)."""
    with Store(tmp_path / "agent.db") as outbox:
        RuleOverrides(outbox).set(RULES, {"rule": "no_hat", "cooldown": 60})
        assert effective_rules({}, RuleOverrides(outbox).load()) == {}
        assert RuleOverrides(outbox).load() == {"no_hat": {"cooldown": 60.0}}


def test_mute_survives_a_restart_and_ends(tmp_path: Path) -> None:
    """mute N stores the end time; a new process sees it; 0 unmutes; bad values refused."""
    db = tmp_path / "agent.db"
    with Store(db) as outbox:
        mute = Mute(outbox)
        assert mute.until is None
        assert not mute.muted()
        until = mute.set(30, source="test")
        assert until is not None
        assert abs(until - (time.time() + 1800)) < 5
        for bad in (-1, 1441, "10", True, float("nan"), None):
            with pytest.raises(CommandError, match="'minutes' must be a number"):
                mute.set(bad, source="test")
    with Store(db) as outbox:
        again = Mute(outbox)
        assert again.muted()
        assert again.until == until
        assert not again.muted(until + 1)
        assert again.set(0, source="test") is None
        assert not again.muted()
    with Store(db) as outbox:
        assert not Mute(outbox).muted()


def test_rule_engine_configure_keeps_the_open_episode() -> None:
    """A changed min_duration applies to the episode already running; a disabled rule stops."""
    engine = RuleEngine({"no_hat": RuleConfig(labels=("head_bare",), min_duration=100.0)})
    hit = [Detection("head_bare", 0, 0.9, (0.1, 0.1, 0.2, 0.2))]
    for t in range(5):
        assert engine.update("cam", hit, mono=float(t), wall=1000.0 + t) == []
    engine.configure({"no_hat": RuleConfig(labels=("head_bare",), min_duration=4.0)})
    alerts = engine.update("cam", hit, mono=5.0, wall=1005.0)
    assert [a.type for a in alerts] == ["no_hat"]
    assert alerts[0].started_at == 1000.0  # the episode began before the change
    engine.configure({"no_hat": RuleConfig(labels=("head_bare",), enabled=False)})
    assert engine.rules == {}
    assert engine.update("cam", hit, mono=50.0, wall=1050.0) == []


def test_diff_config_sorts_live_and_restart_sections() -> None:
    """Cameras, rules, evidence and heartbeat apply live; mqtt needs a restart."""
    old = parse_config(BOX + "cameras: {a: {url: 'rtsp://h/a'}, b: {url: 'rtsp://h/b'}}\n")
    new = parse_config(
        BOX
        + "cameras: {a: {url: 'rtsp://h/a2'}, c: {url: 'rtsp://h/c'}}\n"
        + "mqtt: {keepalive: 60}\nheartbeat: {interval: 10}\n"
    )
    change = diff_config(old, new)
    assert sorted(change.live) == ["cameras", "heartbeat"]
    assert change.restart_required == ["mqtt"]
    assert (change.cameras_added, change.cameras_removed, change.cameras_changed) == (
        ["c"],
        ["b"],
        ["a"],
    )
    running = apply_live(old, new)
    assert running.mqtt == old.mqtt
    assert running.heartbeat == new.heartbeat
    assert diff_config(old, old).empty


def test_clock_status_reads_the_kernel() -> None:
    """On Linux the kernel's NTP state is read: a boolean sync flag and error bounds."""
    clock = clock_status()
    assert clock["source"] == "adjtimex"
    assert isinstance(clock["synchronized"], bool)
    assert clock["max_error_s"] >= clock["est_error_s"] >= 0


# ---------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pattern_model(tmp_path_factory.mktemp("model") / "pattern")


def agent_config(
    tmp_path: Path,
    broker: Broker,
    cameras: dict[str, str],
    model: Path,
    *,
    enabled: bool = True,
    keepalive: int = 30,
) -> Path:
    """test_e2e's config with these cameras (id -> URL), rule switch and keepalive."""
    path = write_config(tmp_path, broker, next(iter(cameras.values())), model)
    data = yaml.safe_load(path.read_text())
    data["cameras"] = {cid: {"url": url, "offline_after": 5} for cid, url in cameras.items()}
    data["rules"]["no_hat"]["enabled"] = enabled
    data["mqtt"]["keepalive"] = keepalive
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def command(
    broker: Broker, collector: MqttCollector, rid: str, name: str, **args: Any
) -> dict[str, Any]:
    """Send a command and wait for its reply (validated against the schema)."""
    mqtt_publish(
        broker.url, f"{ROOT}/command", json.dumps({"id": rid, "command": name, "args": args})
    )

    def answered(messages: list[Any]) -> bool:
        return any(json.loads(m.payload).get("request_id") == rid for m in messages)

    replies = collector.wait_for(answered, 20, topic_filter=f"{ROOT}/command/reply")
    body: dict[str, Any] = next(
        b for b in (json.loads(m.payload) for m in replies) if b["request_id"] == rid
    )
    jsonschema.validate(body, load_schema("command_reply"))
    return body


def next_heartbeat(collector: MqttCollector) -> dict[str, Any]:
    """The first heartbeat that arrives from now on."""
    after = time.monotonic()

    def fresh(messages: list[Any]) -> bool:
        return any(m.received_at > after for m in messages)

    beats = collector.wait_for(fresh, 20, topic_filter=f"{ROOT}/heartbeat")
    body: dict[str, Any] = json.loads(next(m for m in beats if m.received_at > after).payload)
    jsonschema.validate(body, load_schema("heartbeat"))
    return body


def test_set_enables_a_rule_live_and_overrides_and_mute_survive_a_restart(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """A disabled rule raises nothing; ``set enabled`` makes the same scene alert at once;
    bad ``set``/``mute`` get error replies; override and mute are in the heartbeat, and
    still there after a restart."""
    server = rtsp_server_factory({"/k": clip_factory(seconds=4, squares=magenta_after(0))})
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    config = agent_config(
        tmp_path, broker, {"kitchen-1": server.url("/k")}, model_dir, enabled=False
    )
    agent = AgentProcess(config).start()
    agents.append(agent)
    beats = collector.wait_for(
        lambda ms: any(json.loads(m.payload)["detector"]["frames"] >= 4 for m in ms),
        40,
        topic_filter=f"{ROOT}/heartbeat",
    )
    assert beats
    assert payloads(collector, "alert") == []

    reply = command(broker, collector, "s1", "set", rule="no_hat", enabled=True, cooldown="20m")
    assert reply["ok"] is True, reply
    assert reply["result"]["override"] == {"enabled": True, "cooldown": 1200.0}
    assert reply["result"]["effective"]["min_duration"] == 1.0  # from the file
    alerts = collector.wait_for(lambda ms: len(ms) >= 1, 30, topic_filter=f"{ROOT}/alert")
    assert json.loads(alerts[0].payload)["type"] == "no_hat"

    bad = command(broker, collector, "s2", "set", rule="no_hat", min_confidence=2)
    assert bad["ok"] is False
    assert "rules.no_hat.min_confidence" in bad["error"]
    bad = command(broker, collector, "s3", "set", rule="no_mask", cooldown=5)
    assert bad["ok"] is False
    assert "must name a configured rule" in bad["error"]
    bad = command(broker, collector, "m0", "mute", minutes="lots")
    assert bad["ok"] is False
    assert "'minutes'" in bad["error"]
    muted = command(broker, collector, "m1", "mute", minutes=30)
    assert muted["ok"] is True
    assert muted["result"]["muted_until"] is not None

    beat = next_heartbeat(collector)
    assert beat["control"]["rule_overrides"] == {"no_hat": {"enabled": True, "cooldown": 1200.0}}
    assert beat["control"]["alarm_muted_until"] == muted["result"]["muted_until"]
    assert beat["clock"]["source"] == "adjtimex"
    code, _ = agent.terminate()
    assert code == 0, agent.log

    again = AgentProcess(config).start()
    agents.append(again)
    beat = next_heartbeat(collector)
    assert beat["uptime_s"] < 30  # the new process
    assert beat["control"]["rule_overrides"] == {"no_hat": {"enabled": True, "cooldown": 1200.0}}
    assert beat["control"]["alarm_muted_until"] == muted["result"]["muted_until"]
    code, _ = again.terminate()
    assert code == 0, again.log
    assert "rule no_hat changed by the platform" in agent.log


def test_reload_adds_and_removes_cameras_and_refuses_a_bad_file(
    broker: Broker,
    rtsp_server_factory: RtspServerFactory,
    clip_factory: ClipFactory,
    mqtt_collector: CollectorFactory,
    model_dir: Path,
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    """SIGHUP adds a camera and reports the mqtt change as needing a restart; a broken file
    is refused with its line and the agent runs on; a removed camera's retained status is
    cleared."""
    server = rtsp_server_factory({"/k": clip_factory(seconds=4)})
    url = server.url("/k")
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    config = agent_config(tmp_path, broker, {"kitchen-1": url}, model_dir)
    agent = AgentProcess(config).start()
    agents.append(agent)
    collector.wait_for(lambda ms: len(ms) >= 1, 40, topic_filter=f"{ROOT}/camera/kitchen-1/status")

    agent_config(tmp_path, broker, {"kitchen-1": url, "kitchen-2": url}, model_dir, keepalive=40)
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)

    def online(messages: list[Any]) -> bool:
        return any(json.loads(m.payload)["state"] == "online" for m in messages if m.payload)

    collector.wait_for(online, 40, topic_filter=f"{ROOT}/camera/kitchen-2/status")
    beat = next_heartbeat(collector)
    assert sorted(beat["cameras"]) == ["kitchen-1", "kitchen-2"]
    assert beat["control"]["restart_required"] == ["mqtt"]
    assert beat["control"]["config_reloaded_at"] is not None

    config.write_text(config.read_text() + "heartbeat: {interval: 2}\n")  # duplicate key
    bad = command(broker, collector, "r1", "reload")
    assert bad["ok"] is False
    assert f"{config}:" in bad["error"], bad["error"]
    assert "duplicate key 'heartbeat'" in bad["error"], bad["error"]
    assert sorted(next_heartbeat(collector)["cameras"]) == ["kitchen-1", "kitchen-2"]

    agent_config(tmp_path, broker, {"kitchen-1": url}, model_dir)
    done = command(broker, collector, "r2", "reload")
    assert done["ok"] is True, done
    assert done["result"]["cameras_removed"] == ["kitchen-2"]
    assert done["result"]["restart_required"] == []  # back to what the agent runs with
    collector.wait_for(
        lambda ms: bool(ms) and ms[-1].payload == b"",
        20,
        topic_filter=f"{ROOT}/camera/kitchen-2/status",
    )
    assert sorted(next_heartbeat(collector)["cameras"]) == ["kitchen-1"]
    code, _ = agent.terminate()
    assert code == 0, agent.log
    assert "reload refused" not in agent.log  # the bad file came by command, not SIGHUP
