"""The MQTT uplink against a real mosquitto: ordered at-least-once delivery, availability, will."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent.config import AgentConfig, parse_config
from agent.errors import SecretError, UplinkError
from agent.install.doctor import check_broker
from agent.store.store import Store
from agent.uplink.client import Uplink
from mclz_testkit.broker import Broker
from mclz_testkit.factories import BrokerFactory, CollectorFactory
from mclz_testkit.mqtt import MqttCollector, load_schema
from mclz_testkit.pki import Pki

ROOT = "mclz/hz/s1/box-01"


def make_config(url: str, *, protocol: str = "5", **mqtt: object) -> AgentConfig:
    data = {
        "identity": {"city": "hz", "school_id": "s1", "box_id": "box-01"},
        "mqtt": {"url": url, "protocol": protocol, "reconnect_min": 1, "reconnect_max": 2, **mqtt},
    }
    return parse_config(yaml.safe_dump(data))


def start_uplink(config: AgentConfig, box: Store) -> Uplink:
    uplink = Uplink(config, box)
    uplink.start()
    return uplink


def ids_on(collector: MqttCollector, topic: str) -> list[str]:
    return [json.loads(m.payload)["id"] for m in collector.messages(topic)]


def test_availability_and_ordered_delivery(
    broker: Broker, tmp_path: Path, mqtt_collector: CollectorFactory
) -> None:
    """After CONNACK the box is retained 'online'; messages arrive in order, then leave."""
    collector = mqtt_collector(broker.url, f"{ROOT}/#")
    box = Store(tmp_path / "agent.db")
    sent = [
        box.enqueue(f"{ROOT}/heartbeat", json.dumps({"id": f"m{i}"}).encode(), kind="heartbeat")
        for i in range(50)
    ]
    uplink = start_uplink(make_config(broker.url), box)
    try:
        assert uplink.wait_connected(10)
        collector.wait_for(lambda ms: len(ms) >= 50, 15, topic_filter=f"{ROOT}/heartbeat")
        assert ids_on(collector, f"{ROOT}/heartbeat") == [f"m{i}" for i in range(50)]
        avail = collector.wait_for_count(1, 5, topic_filter=f"{ROOT}/availability")
        body = json.loads(avail[-1].payload)
        jsonschema.validate(body, load_schema("availability"))
        assert body["state"] == "online"
        assert body["agent_started"] <= body["ts"]
        assert body["boot_time"] < body["agent_started"]
        deadline = time.monotonic() + 5
        while box.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert box.backlog() == {}, "acknowledged messages must leave the outbox"
        assert len(sent) == uplink.acked
    finally:
        uplink.stop()
    retained = MqttCollector(broker.url, f"{ROOT}/availability")
    try:
        msg = retained.wait_for_count(1, 5)[0]
        assert msg.retain
        assert json.loads(msg.payload)["state"] == "offline"
        assert json.loads(msg.payload)["reason"] == "shutdown"
    finally:
        retained.close()


def test_messages_wait_while_broker_is_down(
    broker_factory: BrokerFactory, tmp_path: Path, mqtt_collector: CollectorFactory
) -> None:
    """Nothing is lost while the broker is unreachable; 'connected' is false until a CONNACK."""
    broker: Broker = broker_factory()
    broker.stop()
    box = Store(tmp_path / "agent.db")
    uplink = start_uplink(make_config(broker.url), box)
    try:
        for i in range(20):
            box.enqueue(f"{ROOT}/alert", json.dumps({"id": f"a{i}"}).encode(), kind="alert")
            uplink.wake()
        time.sleep(1.5)
        assert not uplink.connected
        assert box.backlog() == {"alert": 20}
        broker.start()
        collector = mqtt_collector(broker.url, f"{ROOT}/alert")
        assert uplink.wait_connected(15)
        collector.wait_for_count(20, 15)
        assert ids_on(collector, f"{ROOT}/alert") == [f"a{i}" for i in range(20)]
    finally:
        uplink.stop()


def test_broker_restarts_lose_nothing(
    broker_factory: BrokerFactory, tmp_path: Path, mqtt_collector: CollectorFactory
) -> None:
    """Messages committed across two broker kills all arrive (at least once)."""
    broker: Broker = broker_factory()
    box = Store(tmp_path / "agent.db")
    # The box reconnects no sooner than 2 s after a drop, the test's subscriber after 1 s, so
    # the subscriber is back before the box resends (the test broker keeps no sessions).
    uplink = start_uplink(make_config(broker.url, reconnect_min=2, reconnect_max=4), box)
    collector = mqtt_collector(broker.url, f"{ROOT}/alert")
    total = 0
    try:
        assert uplink.wait_connected(10)
        for round_ in range(3):
            for _ in range(40):
                box.enqueue(f"{ROOT}/alert", json.dumps({"id": f"a{total}"}).encode(), kind="alert")
                uplink.wake()
                total += 1
                time.sleep(0.005)
            if round_ < 2:
                before = uplink.connects
                broker.kill()  # no clean shutdown: in-flight messages are cut off
                time.sleep(0.3)
                broker.start()
                deadline = time.monotonic() + 15
                while uplink.connects == before and time.monotonic() < deadline:
                    time.sleep(0.05)
        collector.wait_for(
            lambda ms: {json.loads(m.payload)["id"] for m in ms} >= {f"a{i}" for i in range(total)},
            30,
        )
        deadline = time.monotonic() + 10
        while box.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert box.backlog() == {}
        assert uplink.connects >= 3
    finally:
        uplink.stop()


def test_wrong_password_is_refused_and_nothing_is_lost(
    broker_factory: BrokerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mqtt_collector: CollectorFactory,
) -> None:
    """A refused CONNACK leaves 'connected' false and the messages in the outbox."""
    broker: Broker = broker_factory(users={"box-01": "right-password"})
    monkeypatch.setenv("MQTT_PW", "wrong-password")
    config = make_config(broker.url, username="box-01", password={"env": "MQTT_PW"})
    box = Store(tmp_path / "agent.db")
    box.enqueue(f"{ROOT}/alert", b'{"id":"a0"}', kind="alert")
    uplink = start_uplink(config, box)
    try:
        time.sleep(2.0)
        assert not uplink.connected
        assert "refused" in uplink.last_error
        assert box.backlog() == {"alert": 1}
    finally:
        uplink.stop()
    monkeypatch.setenv("MQTT_PW", "right-password")
    collector = mqtt_collector(broker.url_with("box-01", "right-password"), f"{ROOT}/alert")
    uplink = start_uplink(config, box)
    try:
        assert uplink.wait_connected(10)
        collector.wait_for_count(1, 10)
    finally:
        uplink.stop()


def test_mqtt_311_works(broker: Broker, tmp_path: Path, mqtt_collector: CollectorFactory) -> None:
    """protocol 3.1.1 is selectable and delivers the same way."""
    collector = mqtt_collector(broker.url, f"{ROOT}/heartbeat")
    box = Store(tmp_path / "agent.db")
    box.enqueue(f"{ROOT}/heartbeat", b'{"id":"h1"}', kind="heartbeat")
    uplink = start_uplink(make_config(broker.url, protocol="3.1.1"), box)
    try:
        assert uplink.wait_connected(10)
        collector.wait_for_count(1, 10)
    finally:
        uplink.stop()


VANISHING_BOX = """
import sys, time
from agent.config import parse_config
from agent.store.store import Store
from agent.errors import UplinkError
from agent.uplink.client import Uplink
from pathlib import Path
cfg = parse_config(
    "identity: {city: hz, school_id: s1, box_id: box-01}\\nmqtt: {url: '%s', keepalive: 5}\\n"
)
uplink = Uplink(cfg, Store(Path(sys.argv[1])))
uplink.start()
assert uplink.wait_connected(10)
print("connected", flush=True)
time.sleep(60)
"""


def test_last_will_marks_a_vanished_box_offline(broker: Broker, tmp_path: Path) -> None:
    """kill -9 of the box makes the broker publish the retained 'offline' last will."""
    proc = subprocess.Popen(
        [sys.executable, "-c", VANISHING_BOX % broker.url, str(tmp_path / "agent.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "connected"
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        collector = MqttCollector(broker.url, f"{ROOT}/availability")
        try:
            msgs = collector.wait_for(
                lambda ms: any(json.loads(m.payload)["state"] == "offline" for m in ms), 15
            )
            body = json.loads(msgs[-1].payload)
            jsonschema.validate(body, load_schema("availability"))
            assert body == {**body, "state": "offline", "reason": "connection_lost"}
            assert "ts" not in body
        finally:
            collector.close()
    finally:
        proc.kill()


def deliver_over(config: AgentConfig, tmp_path: Path, timeout: float = 10.0) -> Uplink:
    """Start an uplink with one queued alert; return it (stopped) after waiting for delivery."""
    box = Store(tmp_path / "agent.db")
    box.enqueue(f"{ROOT}/alert", b'{"id":"tls-1"}', kind="alert")
    uplink = start_uplink(config, box)
    try:
        deadline = time.monotonic() + timeout
        while box.backlog() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        uplink.stop()
    return uplink


def test_tls_with_the_platform_ca(
    broker_factory: BrokerFactory, test_pki: Pki, tmp_path: Path
) -> None:
    """mqtts:// with the platform's CA: the server certificate is verified, the alert delivered."""
    broker = broker_factory(tls=test_pki)
    uplink = deliver_over(make_config(broker.url, tls={"ca_file": str(test_pki.ca_cert)}), tmp_path)
    assert uplink.acked == 1
    assert uplink.connects >= 1


def test_tls_refuses_a_server_from_another_ca(
    broker_factory: BrokerFactory, test_pki: Pki, tmp_path: Path
) -> None:
    """A broker whose certificate the configured CA did not sign is never trusted."""
    broker = broker_factory(tls=test_pki)
    config = make_config(broker.url, tls={"ca_file": str(test_pki.other_ca_cert)})
    uplink = deliver_over(config, tmp_path, timeout=3)
    assert uplink.connects == 0
    assert uplink.acked == 0
    assert Store(tmp_path / "agent.db").backlog() == {"alert": 1}


def test_mutual_tls_with_the_box_certificate(
    broker_factory: BrokerFactory, test_pki: Pki, tmp_path: Path
) -> None:
    """A broker that requires client certificates accepts the box's and refuses a stranger's."""
    broker = broker_factory(tls=test_pki, require_client_cert=True)
    good = make_config(
        broker.url,
        tls={
            "ca_file": str(test_pki.ca_cert),
            "cert_file": str(test_pki.client_cert),
            "key_file": str(test_pki.client_key),
        },
    )
    assert deliver_over(good, tmp_path / "good").acked == 1
    stranger = make_config(
        broker.url,
        tls={
            "ca_file": str(test_pki.ca_cert),
            "cert_file": str(test_pki.stranger_cert),
            "key_file": str(test_pki.stranger_key),
        },
    )
    refused = deliver_over(stranger, tmp_path / "stranger", timeout=3)
    assert refused.connects == 0
    no_cert = deliver_over(
        make_config(broker.url, tls={"ca_file": str(test_pki.ca_cert)}),
        tmp_path / "none",
        timeout=3,
    )
    assert no_cert.connects == 0


def test_unreadable_tls_material_is_a_clear_error(test_pki: Pki, tmp_path: Path) -> None:
    """A missing key file is an UplinkError naming mqtt.tls, not a traceback from ssl."""
    config = make_config(
        "mqtts://127.0.0.1:8883",
        tls={
            "ca_file": str(test_pki.ca_cert),
            "cert_file": str(test_pki.client_cert),
            "key_file": str(tmp_path / "nope.key"),
        },
    )
    with pytest.raises(UplinkError, match=r"mqtt\.tls"):
        Uplink(config, Store(tmp_path / "agent.db"))


def test_uplink_and_broker_check_refuse_the_same_bad_settings(
    test_pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One client factory (agent.uplink.mqtt): a password without a user name and an
    unreadable key file stop the uplink and fail the installer's broker check alike."""
    monkeypatch.setenv("MQTT_PW", "secret-pw")
    no_user = make_config("mqtt://127.0.0.1:1883", password={"env": "MQTT_PW"})
    with pytest.raises(SecretError, match=r"mqtt\.username is empty"):
        Uplink(no_user, Store(tmp_path / "a.db"))
    check = check_broker(no_user, timeout=1)
    assert (check.verdict, check.detail) == (
        "FAIL",
        "mqtt.password is set but mqtt.username is empty",
    )
    bad_key = make_config(
        "mqtts://127.0.0.1:8883",
        tls={
            "ca_file": str(test_pki.ca_cert),
            "cert_file": str(test_pki.client_cert),
            "key_file": str(tmp_path / "nope.key"),
        },
    )
    with pytest.raises(UplinkError, match=r"mqtt\.tls: cannot load TLS material"):
        Uplink(bad_key, Store(tmp_path / "b.db"))
    check = check_broker(bad_key, timeout=1)
    assert check.verdict == "FAIL"
    assert check.detail.startswith("127.0.0.1:8883: mqtt.tls: cannot load TLS material")


def test_broker_check_presents_the_box_certificate(
    broker_factory: BrokerFactory, test_pki: Pki
) -> None:
    """The broker check's client is the uplink's: a broker that requires a client certificate
    accepts the check with the box's certificate and not without one."""
    broker = broker_factory(tls=test_pki, require_client_cert=True)
    ca = {"ca_file": str(test_pki.ca_cert)}
    box_cert = {"cert_file": str(test_pki.client_cert), "key_file": str(test_pki.client_key)}

    with_cert = check_broker(make_config(broker.url, tls=ca | box_cert))
    without = check_broker(make_config(broker.url, tls=ca))

    assert with_cert.verdict == "ok", with_cert.detail
    assert "TLS" in with_cert.detail
    assert without.verdict == "FAIL"


def test_publish_rate_limit_spreads_a_backlog(
    broker: Broker, tmp_path: Path, mqtt_collector: CollectorFactory
) -> None:
    """A backlog drains no faster than max_rate (after one burst), all of it, in order."""
    collector = mqtt_collector(broker.url, f"{ROOT}/heartbeat")
    box = Store(tmp_path / "agent.db")
    for i in range(60):
        box.enqueue(f"{ROOT}/heartbeat", json.dumps({"id": f"h{i}"}).encode(), kind="heartbeat")
    uplink = start_uplink(make_config(broker.url, max_rate=20), box)
    try:
        got = collector.wait_for(lambda ms: len(ms) >= 60, 30)
    finally:
        uplink.stop()
    assert ids_on(collector, f"{ROOT}/heartbeat") == [f"h{i}" for i in range(60)]
    # 20 may go at once (the burst), the other 40 at 20/s: at least about 2 s. Slowness of
    # the machine can only make it longer, so this bound cannot flake.
    assert got[-1].received_at - got[0].received_at >= 1.6


def test_reconnect_backoff_grows_is_capped_and_spreads_boxes_apart() -> None:
    """Each wait lies in the upper half of its doubling step, capped; boxes do not agree."""
    import random  # noqa: PLC0415

    from agent.backoff import Backoff  # noqa: PLC0415

    boxes = [Backoff(1.0, 120.0, random.Random(seed)) for seed in range(200)]
    for attempt in range(12):
        step = min(120.0, 1.0 * 2**attempt)
        waits = [box.next_delay() for box in boxes]
        assert all(step / 2 <= w <= step for w in waits), attempt
        assert max(waits) - min(waits) > step / 4  # 200 boxes spread over the half-step
    boxes[0].reset()
    assert boxes[0].next_delay() <= 1.0


def test_paho_not_connected_noise_is_not_logged_while_the_broker_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that is down: one warning from the uplink, no per-second paho ERROR lines."""
    from mclz_testkit.common import free_port  # noqa: PLC0415

    config = make_config(f"mqtt://127.0.0.1:{free_port()}")
    with caplog.at_level(logging.DEBUG, logger="agent"):
        box = Store(tmp_path / "box.db")
        uplink = Uplink(config, box)
        uplink.start()
        time.sleep(4)
        uplink.stop(drain_timeout=0.2)
        box.close()
    assert not [r for r in caplog.records if "Client is not connected" in r.getMessage()]
    assert any("cannot reach" in r.getMessage() for r in caplog.records)
