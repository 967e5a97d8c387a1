"""The SQLite store (agent/store): write first, send second; survives kill -9, corruption and
a full disk; and its read-only view, which never migrates, moves or write-locks the file."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SmallDiskFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.errors import StoreBusyError, StoreError
from agent.records import AlertRecord
from agent.store import database as database_module
from agent.store.database import DB_FILENAME, READ_BUSY_TIMEOUT, WRITE_BUSY_TIMEOUT, db_path
from agent.store.store import Store, StoreView
from mclz_testkit.common import free_port


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


def fill(box: Store, count: int, size: int) -> None:
    for _ in range(count):
        box.enqueue("t", b"z" * size, kind="heartbeat")


def test_messages_come_out_in_commit_order_until_acked(tmp_path: Path) -> None:
    """Due messages are returned oldest first and stay until acknowledged."""
    box = Store(db_path(tmp_path))
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
    box = Store(db_path(tmp_path))
    box.record_alert(make_alert("a1"), "root/alert", b"{}")
    assert [a.id for a in box.alerts()] == ["a1"]
    assert [m.id for m in box.due(10)] == ["a1"]
    with pytest.raises(StoreError):
        box.record_alert(make_alert("a1"), "root/alert", b"{}")  # duplicate id: whole write fails
    assert len(box.alerts()) == 1
    assert len(box.due(10)) == 1


def test_data_survives_reopen_and_migrations_apply_once(tmp_path: Path) -> None:
    """Reopening keeps the data and does not re-run migrations."""
    path = db_path(tmp_path)
    box = Store(path)
    box.enqueue("t", b"x", kind="alert")
    box.bump("restarts")
    box.close()
    box = Store(path)
    assert box.backlog() == {"alert": 1}
    assert box.counters() == {"restarts": 1}
    with sqlite3.connect(path) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert names == [name for name, _ in database_module.MIGRATIONS]
    assert mode == "wal"


def test_failed_migration_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way is rolled back whole and not recorded; the file is not
    taken for corrupt (it stays where it is, with the migrations that did apply)."""

    def broken(db: object) -> None:
        conn = db.conn  # type: ignore[attr-defined]
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("simulated failure in the middle of a migration")

    monkeypatch.setattr(
        database_module, "MIGRATIONS", (*database_module.MIGRATIONS, ("999_broken", broken))
    )
    path = db_path(tmp_path)
    with pytest.raises(StoreError, match="simulated failure"):
        Store(path)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
    assert "half_done" not in tables
    assert "999_broken" not in done
    assert "012_supersede" in done
    assert not list(tmp_path.glob("*.corrupt-*")), "a failed migration is not corruption"


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    """An unreadable file is moved aside, a fresh database starts, and the event is counted."""
    path = db_path(tmp_path)
    box = Store(path)
    box.enqueue("t", b"x", kind="alert")
    box.close()
    path.write_bytes(b"this is not a database at all" * 200)
    box = Store(path)
    assert box.recovered_from is not None
    assert box.recovered_from.exists()
    assert box.recovered_from.read_bytes().startswith(b"this is not a database")
    assert box.counters() == {"db_recovered": 1}
    assert box.backlog() == {}
    box.enqueue("t", b"y", kind="alert")
    assert box.integrity_ok()


def test_full_database_raises_outbox_error_and_keeps_committed_data(tmp_path: Path) -> None:
    """When SQLite reports the disk full, the write fails cleanly and earlier data stays."""
    box = Store(db_path(tmp_path))
    first = box.enqueue("t", b"kept", kind="alert")
    page_count = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count={page_count + 1}")
    with pytest.raises(StoreError, match="full"):
        fill(box, 100, 8192)
    assert box.due(100)[0].id == first
    assert box.integrity_ok()


def test_expired_messages_are_deleted_and_counted(tmp_path: Path) -> None:
    """Messages past their TTL are removed and counted per kind."""
    box = Store(db_path(tmp_path))
    box.enqueue("t", b"old", kind="heartbeat", ttl=0.05)
    keep = box.enqueue("t", b"new", kind="alert", ttl=3600)
    time.sleep(0.1)
    assert [m.id for m in box.due(10)] == [keep]  # expired ones are never sent
    assert box.expire() == 1
    assert box.counters() == {"expired_heartbeat": 1}
    assert box.backlog() == {"alert": 1}


def test_deferred_message_waits(tmp_path: Path) -> None:
    """A message the broker refused is not due again until its delay has passed."""
    box = Store(db_path(tmp_path))
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
    box = Store(db_path(tmp_path_factory.mktemp("rt")))
    for i, payload in enumerate(payloads):
        box.enqueue(topics[i % len(topics)], payload, kind="heartbeat")
    out = box.due(len(payloads))
    assert [m.payload for m in out] == payloads
    assert [m.topic for m in out] == [topics[i % len(topics)] for i in range(len(payloads))]
    box.close()


WRITER = """
import sys
from pathlib import Path
from agent.store.store import Store
box = Store(Path(sys.argv[1]))
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
    path = db_path(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    # Read through the same buffered reader as readline: communicate() reads the pipe's fd
    # directly and would miss the ids already buffered with "ready".
    out = proc.stdout.read()
    proc.wait(10)
    committed = [line for line in out.splitlines() if line.startswith("m")]
    assert committed, "the writer committed nothing before being killed"
    box = Store(path)
    assert box.recovered_from is None
    assert box.integrity_ok()
    stored = {m.id for m in box.due(len(committed) + 10)}
    assert set(committed) <= stored
    assert len(stored) - len(committed) <= 1  # at most the one committed but not yet printed


def test_real_full_disk(small_disk: SmallDiskFactory) -> None:
    """On a real full filesystem (a 2 MB tmpfs), writes fail cleanly and committed data stays."""
    mount = small_disk("small", "2m")
    box = Store(db_path(mount))
    first = box.enqueue("t", b"kept", kind="alert")
    with pytest.raises(StoreError):
        fill(box, 1000, 16384)
    assert box.due(1)[0].id == first
    box._conn.close()
    reopened = Store(db_path(mount))
    assert reopened.recovered_from is None
    assert reopened.due(1)[0].id == first
    reopened._conn.close()


def test_size_cap_evicts_telemetry_then_evidence_then_oldest_alerts(tmp_path: Path) -> None:
    """Over the cap: heartbeats go first, then the oldest alerts' images, then the oldest alerts."""
    box = Store(db_path(tmp_path))
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
    with Store(db_path(tmp_path)) as box:
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
    with Store(db_path(tmp_path)) as box:  # the key survives a restart
        box.enqueue(topic, b"refresh-4", kind="camera_status", supersede_key="refresh:k1")
        assert [m.payload for m in box.due(10)] == [
            b"offline",
            b"online",
            b"refresh-k2",
            b"refresh-4",
        ]


def test_the_database_has_one_name(tmp_path: Path) -> None:
    """Every user finds the database through db_path: <state_dir>/agent.db."""
    assert DB_FILENAME == "agent.db"
    assert db_path(tmp_path) == tmp_path / "agent.db"


# --------------------------------------------------------------------------- read-only view

CONFIG = """\
identity: {{city: hz, school_id: s1, box_id: b1}}
mqtt: {{url: "mqtt://127.0.0.1:{port}"}}
model: {{path: {state}/no-model}}
storage: {{state_dir: {state}}}
"""

# Holds a write transaction on the database until its stdin closes. ``exclusive-mode``
# also sets locking_mode=EXCLUSIVE: then the lock blocks readers too (in WAL mode a plain
# BEGIN EXCLUSIVE blocks only writers and checkpoints).
HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
if sys.argv[2] == "exclusive-mode":
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO counters (name, value) VALUES ('held', 1)")
print("held", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
conn.close()
"""

runner = CliRunner()


@pytest.fixture
def agent_state(tmp_path: Path) -> tuple[Path, Path]:
    """A config and its database with two alerts (one delivered) and a heartbeat."""
    state = tmp_path / "state"
    with Store(db_path(state)) as store:
        for i in range(2):
            store.record_alert(make_alert(f"a{i}"), "t/alert", json.dumps({"id": f"a{i}"}).encode())
        store.ack(store.due(1)[0].seq)
        store.enqueue("t/heartbeat", b'{"uptime_s": 5}', kind="heartbeat")
        store.save_camera_health({"kitchen-1": {"state": "online", "since": 1.0}}, time.time())
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG.format(port=free_port(), state=state))
    return config, db_path(state)


@contextmanager
def lock_held(db: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Another process holding a write transaction on ``db`` for as long as the block runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the holder rolls back and exits
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def timed(args: list[str]) -> tuple[Result, float]:
    started = time.monotonic()
    result = runner.invoke(app, args)
    return result, time.monotonic() - started


def database_check(result: Result) -> dict[str, str]:
    return next(row for row in json.loads(result.stdout) if row["name"] == "database")


def assert_untouched(db: Path, inode: int) -> None:
    """The database is where it was, the same file, intact, and nothing was moved aside."""
    assert not list(db.parent.glob("*.corrupt-*")), "the live database was moved aside"
    assert db.stat().st_ino == inode
    with Store(db) as store:  # reopening it for writing must find it healthy
        assert store.recovered_from is None
        assert store.integrity_ok()
        assert [a.id for a in store.alerts()] == ["a1", "a0"]
        assert "held" not in store.counters(), "the holder's transaction was rolled back"


def test_readers_answer_while_another_process_holds_the_write_lock(
    agent_state: tuple[Path, Path],
) -> None:
    """A long write transaction elsewhere (as the agent's): status, alerts list and check
    answer at once. The read-write opener they used before waited for the write lock on
    close (its WAL checkpoint) for its whole 10 s busy timeout."""
    config, db = agent_state
    inode = db.stat().st_ino
    with lock_held(db, "wal"):
        probe = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                probe.execute("BEGIN IMMEDIATE")  # the write lock is taken ...
            busy = probe.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            assert busy == 1, "... and the old opener's checkpoint on close could not run"
        finally:
            probe.close()
        status, took_status = timed(["status", "--config", str(config), "--json"])
        listed, took_list = timed(["alerts", "list", "--config", str(config), "--json"])
        checked, took_check = timed(["check", "--config", str(config), "--json", "--skip-cameras"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["backlog"]["alert"]["messages"] == 1
    assert listed.exit_code == 0, listed.output
    assert [(r["id"], r["delivered"]) for r in json.loads(listed.stdout)] == [
        ("a1", False),
        ("a0", True),
    ]
    assert database_check(checked)["verdict"] == "ok", checked.stdout
    assert max(took_status, took_list) < READ_BUSY_TIMEOUT, (took_status, took_list)
    assert took_check < WRITE_BUSY_TIMEOUT  # broker refused, model missing: all fast
    assert_untouched(db, inode)


def test_a_lock_that_blocks_readers_is_reported_busy_and_moves_nothing(
    agent_state: tuple[Path, Path],
) -> None:
    """A lock that blocks readers too (an exclusive-mode connection): each read-only command
    gives up after its bounded wait with 'database busy' (status and alerts list: exit 9;
    check: a warning line), and the read-write opener raises StoreBusyError. Before, the
    read-write opener took 'database is locked' for corruption and moved the live database
    aside as agent.db.corrupt-*."""
    config, db = agent_state
    inode = db.stat().st_ino
    bound = READ_BUSY_TIMEOUT + 5  # the wait, plus a busy machine's slack
    with lock_held(db, "exclusive-mode"):
        reader = sqlite3.connect(db, timeout=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                reader.execute("PRAGMA quick_check")  # what the old opener ran first
        finally:
            reader.close()
        status, took_status = timed(["status", "--config", str(config)])
        listed, took_list = timed(["alerts", "list", "--config", str(config)])
        checked, took_check = timed(["check", "--config", str(config), "--json", "--skip-cameras"])
        started = time.monotonic()
        with pytest.raises(StoreBusyError, match="database busy"):
            Store(db)
        took_store = time.monotonic() - started
        assert not list(db.parent.glob("*.corrupt-*")), "the live database was moved aside"
    for result, took in ((status, took_status), (listed, took_list)):
        assert result.exit_code == 9, result.output
        assert "database busy" in result.output
        assert READ_BUSY_TIMEOUT - 0.5 <= took < bound, took
    row = database_check(checked)
    assert row["verdict"] == "warn", row
    assert "database busy" in row["detail"]
    assert took_check < bound + WRITE_BUSY_TIMEOUT
    assert WRITE_BUSY_TIMEOUT - 0.5 <= took_store < WRITE_BUSY_TIMEOUT + 5
    assert_untouched(db, inode)


def test_a_read_only_command_does_not_migrate_an_older_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database from an older agent (migrations up to 008) stays as it is: alerts list
    reads it, status says what the schema lacks, check warns; no migration is recorded,
    no column added, not a byte of the file changes."""
    state = tmp_path / "state"
    db = db_path(state)
    old = database_module.MIGRATIONS[:8]
    with monkeypatch.context() as patch:
        patch.setattr(database_module, "MIGRATIONS", old)
        Store(db).close()
    with sqlite3.connect(db) as conn:  # rows as that agent wrote them
        conn.execute(
            "INSERT INTO outbox (id, topic, payload, qos, retain, kind, created_at, expires_at)"
            " VALUES ('a0', 't/alert', x'7b7d', 1, 0, 'alert', 2, 1e12)"
        )
        conn.execute(
            "INSERT INTO alerts (id, camera, type, severity, started_at, raised_at, confidence,"
            " detections, payload) VALUES ('a0', 'k1', 'no_hat', 'warning', 1, 2, 0.8, '[]', '{}')"
        )
    conn.close()
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG.format(port=free_port(), state=state))
    before = db.read_bytes()

    view = StoreView(db)
    assert view.missing_migrations == tuple(name for name, _ in database_module.MIGRATIONS[8:])
    view.close()
    listed = runner.invoke(app, ["alerts", "list", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [(r["id"], r["delivered"]) for r in json.loads(listed.stdout)] == [("a0", False)]
    status = runner.invoke(app, ["status", "--config", str(config)])
    assert status.exit_code == 4, status.output
    assert "schema is older than this mclz-agent" in status.output
    assert "009_alert_lifecycle" in status.output
    checked = runner.invoke(app, ["check", "--config", str(config), "--json", "--skip-cameras"])
    row = database_check(checked)
    assert row["verdict"] == "warn", row
    assert "schema older than this mclz-agent" in row["detail"]

    assert db.read_bytes() == before
    with sqlite3.connect(db) as conn:
        done = [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY name")]
        columns = {r[1] for r in conn.execute("PRAGMA table_info(alerts)")}
    conn.close()
    assert done == [name for name, _ in old]
    assert "zone" not in columns


def test_the_view_never_creates_a_database(tmp_path: Path) -> None:
    """No database yet: the view and the read-only commands say so and create nothing."""
    state = tmp_path / "state"
    with pytest.raises(StoreError, match="no database yet"):
        StoreView(db_path(state))
    config = tmp_path / "agent.yaml"
    config.write_text(CONFIG.format(port=free_port(), state=state))
    for args in (["alerts", "list"], ["outbox", "stats"], ["status"], ["camera", "list"]):
        result = runner.invoke(app, [*args, "--config", str(config)])
        if args == ["camera", "list"]:
            assert result.exit_code == 0, result.output  # no state yet: the config only
        else:
            assert result.exit_code == 4, result.output
            assert "no database yet" in result.output
    assert not state.exists()


def test_the_view_cannot_write(agent_state: tuple[Path, Path]) -> None:
    """The view has no write methods, and its connection is read-only underneath."""
    _config, db = agent_state
    assert not hasattr(StoreView, "enqueue")
    assert not hasattr(StoreView, "put_setting")
    with StoreView(db) as view:
        assert view.backlog() == {"alert": 1, "heartbeat": 1}
        assert view.integrity_check() == ["ok"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            view._conn.execute("DELETE FROM outbox")
    assert_untouched(db, db.stat().st_ino)


def test_commands_recorded_before_the_source_column_read_as_the_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database from before migration 013 keeps its command rows: the migration adds
    ``source`` and they say ``platform`` (nothing else wrote commands then); a change from
    the installer page is recorded with its own source beside them."""
    db = db_path(tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(database_module, "MIGRATIONS", database_module.MIGRATIONS[:12])
        old = Store(db)
        with sqlite3.connect(db) as conn:  # a row as that agent wrote it: no source column
            conn.execute(
                "INSERT INTO commands (received_at, request_id, command, payload, ok)"
                " VALUES (1.0, 'r1', 'mute', x'7b7d', 1)"
            )
        old.close()
    box = Store(db)
    box.record_command(None, "zones", b'{"camera": "k1"}', ok=True, source="web:192.168.1.5")
    log = box.command_log(10)
    assert [(r["source"], r["command"], r["ok"]) for r in log] == [
        ("web:192.168.1.5", "zones", True),
        ("platform", "mute", True),
    ]
    assert log[0]["payload"] == '{"camera": "k1"}'
    assert [c[2] for c in box.commands(10)] == ["zones", "mute"]
    box.close()
