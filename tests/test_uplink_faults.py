"""The MQTT uplink under network and process faults, with a real mosquitto, SQLite and paho.

A silent partition (a veth set down in a network namespace: no RST, no ICMP) must be noticed
within 1.5 x ``mqtt.keepalive``; repeated kill -9 of a publishing box must lose no
committed alert and leave a sound database.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from agent.config import AgentConfig, parse_config
from agent.store.store import Store
from agent.uplink.client import Uplink
from mclz_testkit.broker import Broker
from mclz_testkit.common import REPO_ROOT
from mclz_testkit.factories import CollectorFactory, NetnsSubscriberFactory
from mclz_testkit.mqtt import MqttMessage
from mclz_testkit.netns import NetnsBroker

logger = logging.getLogger(__name__)

ROOT = "mclz/hz/s1/box-01"
ALERT_TOPIC = f"{ROOT}/alert"
AVAILABILITY_TOPIC = f"{ROOT}/availability"
KEEPALIVE = 6
PUBLISHER_CHILD = Path(__file__).with_name("publisher_child.py")
KILL_SEED = 20240611


def make_config(url: str, **mqtt: object) -> AgentConfig:
    data = {
        "identity": {"city": "hz", "school_id": "s1", "box_id": "box-01"},
        "mqtt": {"url": url, "reconnect_min": 1, "reconnect_max": 2, **mqtt},
    }
    return parse_config(yaml.safe_dump(data))


def alert_ids(messages: list[MqttMessage]) -> list[str]:
    return [json.loads(m.payload)["id"] for m in messages if m.topic == ALERT_TOPIC]


def bodies_since(start: float, messages: list[MqttMessage]) -> list[dict[str, Any]]:
    """The JSON payloads of the messages received after ``start`` (monotonic)."""
    return [json.loads(m.payload) for m in messages if m.received_at > start]


def states_since(start: float, messages: list[MqttMessage]) -> list[str]:
    """The availability states received after ``start``."""
    return [str(body["state"]) for body in bodies_since(start, messages)]


def wait_until_empty(box: Store, timeout: float) -> dict[str, int]:
    """Poll the outbox until it holds nothing or ``timeout`` passed; return what is left."""
    deadline = time.monotonic() + timeout
    while box.backlog() and time.monotonic() < deadline:
        time.sleep(0.1)
    return box.backlog()


def test_silent_partition_is_noticed_within_the_keepalive(
    netns_broker: NetnsBroker, netns_subscriber: NetnsSubscriberFactory, tmp_path: Path
) -> None:
    """A link that silently drops everything counts as down within 1.5 x mqtt.keepalive.

    Alerts committed before, during and after the partition all reach the broker once it
    heals (at least once), and the outbox ends empty; meanwhile the broker published the
    box's 'offline' last will, and 'online' again after the reconnect.
    """
    subscriber = netns_subscriber([ALERT_TOPIC, AVAILABILITY_TOPIC])
    box = Store(tmp_path / "agent.db")
    uplink = Uplink(make_config(netns_broker.url, keepalive=KEEPALIVE), box)
    uplink.start()
    enqueued: list[str] = []

    def enqueue(phase: str) -> None:
        msg_id = f"{phase}-{len(enqueued)}"
        box.enqueue(ALERT_TOPIC, json.dumps({"id": msg_id}).encode(), kind="alert", msg_id=msg_id)
        uplink.wake()
        enqueued.append(msg_id)

    def arrived(messages: list[MqttMessage]) -> bool:
        return set(alert_ids(messages)) >= set(enqueued)

    try:
        assert uplink.wait_connected(10), uplink.last_error
        for _ in range(5):
            enqueue("before")
        subscriber.wait_for(arrived, 10)
        # The PUBACKs are the last bytes from the broker: the silence starts now.
        assert wait_until_empty(box, 5) == {}

        netns_broker.netns.partition()
        cut = time.monotonic()
        detected: float | None = None
        for tick in range(30 * KEEPALIVE):  # 0.1 s ticks: gives up after about 3 x keepalive
            if not uplink.connected:
                detected = time.monotonic() - cut
                break
            if tick % 5 == 0:
                enqueue("during")  # published into the void: paho's socket still takes them
            time.sleep(0.1)
        assert detected is not None, f"still 'connected' {3 * KEEPALIVE} s into the partition"
        logger.info("silent partition noticed after %.2f s (keepalive %d s)", detected, KEEPALIVE)
        assert detected <= 1.5 * KEEPALIVE, f"partition noticed after {detected:.2f} s"

        # The broker heard nothing from the box either: it publishes the will on its own.
        deadline = time.monotonic() + 2 * KEEPALIVE
        while "offline" not in states_since(cut, subscriber.messages(AVAILABILITY_TOPIC)):
            assert time.monotonic() < deadline, "the broker never published the last will"
            enqueue("during")
            time.sleep(0.2)
        will = next(
            m
            for m in subscriber.messages(AVAILABILITY_TOPIC)
            if m.received_at > cut and json.loads(m.payload)["state"] == "offline"
        )
        logger.info("last will published %.2f s into the partition", will.received_at - cut)
        assert json.loads(will.payload)["reason"] == "connection_lost"
        assert not uplink.connected
        assert box.backlog() == {"alert": len(enqueued) - 5}

        netns_broker.netns.heal()
        healed = time.monotonic()
        for _ in range(3):
            enqueue("after")
        assert uplink.wait_connected(20), f"no reconnect after the heal: {uplink.last_error}"
        logger.info("reconnected %.1f s after the heal", time.monotonic() - healed)
        for _ in range(3):
            enqueue("after")
        subscriber.wait_for(arrived, 20)
        assert wait_until_empty(box, 10) == {}, "acknowledged alerts must leave the outbox"
        subscriber.wait_for(
            lambda ms: states_since(cut, ms)[-1:] == ["online"], 5, topic_filter=AVAILABILITY_TOPIC
        )
        assert uplink.disconnects >= 1
    finally:
        uplink.stop()
    received = Counter(alert_ids(subscriber.messages()))
    logger.info(
        "partition: %d alerts enqueued, %d received, %d duplicate(s)",
        len(enqueued),
        sum(received.values()),
        sum(received.values()) - len(received),
    )
    assert set(received) == set(enqueued), "nothing arrives that was not enqueued"


def read_lines(path: Path) -> list[str]:
    """Complete lines of a child's stdout (a line cut by the kill is not one)."""
    text = path.read_text()
    return text.splitlines()[: text.count("\n")]


def run_child(tmp_path: Path, db: Path, url: str, name: str, *mode: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.out").open("wb") as out, (tmp_path / f"{name}.err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, str(PUBLISHER_CHILD), str(db), url, *mode],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )


def wait_started(proc: subprocess.Popen[bytes], out: Path, err: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (out.exists() and out.read_text().startswith("started\n")):
        assert proc.poll() is None, f"the child exited with {proc.returncode}:\n{err.read_text()}"
        assert time.monotonic() < deadline, f"the child did not start within {timeout} s"
        time.sleep(0.02)


def test_repeated_kill_9_while_publishing_loses_no_committed_alert(
    broker: Broker, mqtt_collector: CollectorFactory, tmp_path: Path
) -> None:
    """kill -9 at random moments, 9 times over one database, loses no committed alert.

    Every id the box reported committed reaches the broker at least once (after a final
    drain run), the database passes PRAGMA integrity_check and was never recovered, and
    nothing arrives that the box did not commit: each kill may leave at most the one alert
    committed but not yet reported.
    """
    logger.info("kill seed %d", KILL_SEED)
    rng = random.Random(KILL_SEED)
    collector = mqtt_collector(broker.url, ALERT_TOPIC)
    db = tmp_path / "agent.db"
    printed: dict[str, list[str]] = {}
    for run in range(9):
        name = f"r{run}"
        proc = run_child(tmp_path, db, broker.url, name, "--prefix", name, "--seed", str(run))
        out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        try:
            # Timed from the end of the child's imports (about a second on a busy machine),
            # so the kills land in opening the outbox, connecting and publishing.
            wait_started(proc, out, err, 30)
            time.sleep(rng.uniform(0.3, 1.5))
            assert proc.poll() is None, f"the child died by itself:\n{err.read_text()}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        printed[name] = read_lines(out)[1:]
        logger.info("run %s: %d alert(s) committed before the kill", name, len(printed[name]))
    committed = {msg_id for ids in printed.values() for msg_id in ids}
    assert len(committed) >= 20, f"too few alerts committed to test anything: {len(committed)}"

    proc = run_child(tmp_path, db, broker.url, "drain", "--drain", "--timeout", "30")
    try:
        assert proc.wait(45) == 0, (tmp_path / "drain.out").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    got = collector.wait_for(lambda ms: set(alert_ids(ms)) >= committed, 15)
    received = Counter(alert_ids(got))
    # At most one id per run was committed but not printed when the kill came: the next one.
    maybe = {f"{name}-{len(ids)}" for name, ids in printed.items()}
    assert set(received) <= committed | maybe, set(received) - committed - maybe
    duplicates = sum(received.values()) - len(received)
    logger.info(
        "kill -9: %d committed, %d received, %d duplicate(s) (at-least-once)",
        len(committed),
        sum(received.values()),
        duplicates,
    )

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)
        recovered = conn.execute("SELECT value FROM counters WHERE name = 'db_recovered'")
        assert recovered.fetchone() is None, "the database was found corrupt and replaced"
    finally:
        conn.close()
    assert not list(tmp_path.glob("agent.db.corrupt-*"))
