"""The SQLite outbox: write first, send second; survives kill -9, corruption and a full disk."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SmallDiskFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import OutboxError
from agent.records import AlertRecord
from agent.store import outbox as outbox_module
from agent.store.outbox import Outbox


def make_alert(alert_id: str = "a1") -> AlertRecord:
    return AlertRecord(
        id=alert_id,
        camera="kitchen-1",
        type="no_hat",
        severity="warning",
        started_at=1.0,
        raised_at=4.0,
        confidence=0.9,
        detections=[{"label": "head_bare", "confidence": 0.9, "box": [0.1, 0.1, 0.2, 0.2]}],
        evidence_path=None,
    )


def fill(box: Outbox, count: int, size: int) -> None:
    for _ in range(count):
        box.enqueue("t", b"z" * size, kind="heartbeat")


def test_messages_come_out_in_commit_order_until_acked(tmp_path: Path) -> None:
    """Due messages are returned oldest first and stay until acknowledged."""
    box = Outbox(tmp_path / "agent.db")
    ids = [box.enqueue(f"t/{i % 3}", f"m{i}".encode(), kind="heartbeat") for i in range(10)]
    due = box.due(100)
    assert [m.id for m in due] == ids
    assert [m.payload for m in due] == [f"m{i}".encode() for i in range(10)]
    box.ack(due[0].seq)
    box.ack(due[1].seq)
    assert [m.id for m in box.due(100)] == ids[2:]
    assert [m.id for m in box.due(3, exclude={due[2].seq})] == ids[3:6]
    assert box.backlog() == {"heartbeat": 8}


def test_alert_and_its_message_commit_together(tmp_path: Path) -> None:
    """record_alert stores the alert row and its outgoing message in one transaction."""
    box = Outbox(tmp_path / "agent.db")
    box.record_alert(make_alert("a1"), "root/alert", b"{}")
    assert [a.id for a in box.alerts()] == ["a1"]
    assert [m.id for m in box.due(10)] == ["a1"]
    with pytest.raises(OutboxError):
        box.record_alert(make_alert("a1"), "root/alert", b"{}")  # duplicate id: whole write fails
    assert len(box.alerts()) == 1
    assert len(box.due(10)) == 1


def test_data_survives_reopen_and_migrations_apply_once(tmp_path: Path) -> None:
    """Reopening keeps the data and does not re-run migrations."""
    path = tmp_path / "agent.db"
    box = Outbox(path)
    box.enqueue("t", b"x", kind="alert")
    box.bump("restarts")
    box.close()
    box = Outbox(path)
    assert box.backlog() == {"alert": 1}
    assert box.counters() == {"restarts": 1}
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert names == [name for name, _ in outbox_module.MIGRATIONS]
    assert mode == "wal"


def test_failed_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way is rolled back whole and not recorded."""

    def broken(db: object) -> None:
        conn = db.conn  # type: ignore[attr-defined]
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("simulated failure in the middle of a migration")

    monkeypatch.setattr(
        outbox_module, "MIGRATIONS", (*outbox_module.MIGRATIONS, ("999_broken", broken))
    )
    path = tmp_path / "agent.db"
    with pytest.raises(OutboxError):
        Outbox(path)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    assert "half_done" not in tables
    assert "999_broken" not in done
    assert "001_outbox" in done


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    """An unreadable file is moved aside, a fresh database starts, and the event is counted."""
    path = tmp_path / "agent.db"
    box = Outbox(path)
    box.enqueue("t", b"x", kind="alert")
    box.close()
    path.write_bytes(b"this is not a database at all" * 200)
    box = Outbox(path)
    assert box.recovered_from is not None
    assert box.recovered_from.exists()
    assert box.recovered_from.read_bytes().startswith(b"this is not a database")
    assert box.counters() == {"db_recovered": 1}
    assert box.backlog() == {}
    box.enqueue("t", b"y", kind="alert")
    assert box.integrity_ok()


def test_full_database_raises_outbox_error_and_keeps_committed_data(tmp_path: Path) -> None:
    """When SQLite reports the disk full, the write fails cleanly and earlier data stays."""
    box = Outbox(tmp_path / "agent.db")
    first = box.enqueue("t", b"kept", kind="alert")
    page_count = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count={page_count + 1}")
    with pytest.raises(OutboxError, match="full"):
        fill(box, 100, 8192)
    assert box.due(100)[0].id == first
    assert box.integrity_ok()


def test_expired_messages_are_deleted_and_counted(tmp_path: Path) -> None:
    """Messages past their TTL are removed and counted per kind."""
    box = Outbox(tmp_path / "agent.db")
    box.enqueue("t", b"old", kind="heartbeat", ttl=0.05)
    keep = box.enqueue("t", b"new", kind="alert", ttl=3600)
    time.sleep(0.1)
    assert [m.id for m in box.due(10)] == [keep]  # expired ones are never sent
    assert box.expire() == 1
    assert box.counters() == {"expired_heartbeat": 1}
    assert box.backlog() == {"alert": 1}


def test_deferred_message_waits(tmp_path: Path) -> None:
    """A message the broker refused is not due again until its delay has passed."""
    box = Outbox(tmp_path / "agent.db")
    box.enqueue("t", b"a", kind="alert")
    seq = box.due(1)[0].seq
    box.defer(seq, 60)
    assert box.due(10) == []
    assert box.backlog() == {"alert": 1}


@settings(max_examples=50, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=2000), min_size=1, max_size=30),
    topics=st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=5),
)
def test_payloads_round_trip_exactly(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], topics: list[str]
) -> None:
    """Any bytes and any topic text come back out of the outbox unchanged."""
    box = Outbox(tmp_path_factory.mktemp("rt") / "agent.db")
    for i, payload in enumerate(payloads):
        box.enqueue(topics[i % len(topics)], payload, kind="heartbeat")
    out = box.due(len(payloads))
    assert [m.payload for m in out] == payloads
    assert [m.topic for m in out] == [topics[i % len(topics)] for i in range(len(payloads))]
    box.close()


WRITER = """
import sys
from pathlib import Path
from agent.store.outbox import Outbox
box = Outbox(Path(sys.argv[1]))
print("ready", flush=True)
i = 0
while True:
    msg_id = box.enqueue("t/" + str(i % 4), b"x" * (i % 5000), kind="alert", msg_id=f"m{i:08d}")
    print(msg_id, flush=True)  # printed only after the commit returned
    i += 1
"""


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.1])
def test_kill_9_loses_no_committed_message(tmp_path: Path, delay: float) -> None:
    """After kill -9 in the middle of writes, every message reported committed is present."""
    path = tmp_path / "agent.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    committed = [line for line in out.splitlines() if line.startswith("m")]
    assert committed, "the writer committed nothing before being killed"
    box = Outbox(path)
    assert box.recovered_from is None
    assert box.integrity_ok()
    stored = {m.id for m in box.due(len(committed) + 10)}
    assert set(committed) <= stored
    assert len(stored) - len(committed) <= 1  # at most the one committed but not yet printed


def test_real_full_disk(small_disk: SmallDiskFactory) -> None:
    """On a real full filesystem (a 2 MB tmpfs), writes fail cleanly and committed data stays."""
    mount = small_disk("small", "2m")
    box = Outbox(mount / "agent.db")
    first = box.enqueue("t", b"kept", kind="alert")
    with pytest.raises(OutboxError):
        fill(box, 1000, 16384)
    assert box.due(1)[0].id == first
    box._conn.close()
    reopened = Outbox(mount / "agent.db")
    assert reopened.recovered_from is None
    assert reopened.due(1)[0].id == first
    reopened._conn.close()


def test_size_cap_evicts_telemetry_then_evidence_then_oldest_alerts(tmp_path: Path) -> None:
    """Over the cap: heartbeats go first, then the oldest alerts' images, then the oldest alerts."""
    box = Outbox(tmp_path / "agent.db")
    for i in range(30):
        box.record_alert(
            make_alert(f"a{i}"), "t/alert", json.dumps({"id": f"a{i}"}).encode(),
            (f"t/evidence/a{i}", b"J" * 20_000),
        )  # fmt: skip
    for i in range(100):
        box.enqueue("t/heartbeat", b"h" * 2000, kind="heartbeat", msg_id=f"h{i}")
    full = box.used_bytes()

    first = box.enforce_cap(full - 150_000)
    assert first == {"telemetry": 100, "evidence": 0, "alert": 0}
    assert box.backlog() == {"alert": 30, "evidence": 30}

    second = box.enforce_cap(box.used_bytes() - 200_000)
    assert second["alert"] == 0
    assert second["evidence"] >= 10
    left = [m.topic for m in box.due(100) if m.kind == "evidence"]
    gone = 30 - len(left)
    assert left == [f"t/evidence/a{i}" for i in range(gone, 30)], "the oldest images go first"

    third = box.enforce_cap(60_000)
    assert third["alert"] > 0
    remaining = [m.id for m in box.due(100)]
    assert box.backlog().get("evidence", 0) == 0
    assert remaining == [f"a{i}" for i in range(30 - len(remaining), 30)], "the newest alerts stay"
    counters = box.counters()
    assert counters["evicted_telemetry"] == 100
    assert counters["evicted_evidence"] == 30
    assert counters["evicted_alert"] == third["alert"]
    assert len(box.alerts(100)) == 30, "the local alert records are never evicted"


def test_a_refresh_supersedes_the_unsent_one_but_never_a_transition(tmp_path: Path) -> None:
    """Queued while offline: transitions all stay, in order; of the refreshes only the newest."""
    with Outbox(tmp_path / "agent.db") as box:
        topic = "mclz/hz/s/b/camera/k1/status"
        box.enqueue(topic, b"refresh-1", kind="camera_status", supersede_key="refresh:k1")
        box.enqueue(topic, b"offline", kind="camera_status")
        box.enqueue(topic, b"refresh-2", kind="camera_status", supersede_key="refresh:k1")
        box.enqueue(topic, b"online", kind="camera_status")
        box.enqueue(topic, b"refresh-3", kind="camera_status", supersede_key="refresh:k1")
        box.enqueue("other/k2", b"refresh-k2", kind="camera_status", supersede_key="refresh:k2")
        assert [m.payload for m in box.due(10)] == [
            b"offline",
            b"online",
            b"refresh-3",
            b"refresh-k2",
        ]
        assert box.counters()["superseded"] == 2
    with Outbox(tmp_path / "agent.db") as box:  # the key survives a restart
        box.enqueue(topic, b"refresh-4", kind="camera_status", supersede_key="refresh:k1")
        assert [m.payload for m in box.due(10)] == [
            b"offline",
            b"online",
            b"refresh-k2",
            b"refresh-4",
        ]
