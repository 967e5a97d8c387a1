"""Benchmark the outbox and the uplink: durable commits per second, and a backlog drained.

    .venv/bin/python scripts/bench/bench_outbox.py [--alerts 2000] [--backlog 100000] [--json OUT]

1. Alerts committed per second, each durably (WAL, synchronous=FULL: an fsync per
   commit), with a 2 kB payload and a 60 kB evidence message, like a real alert.
2. A backlog of N heartbeat-sized messages drained to a local mosquitto at QoS 1 with
   the rate limit off: time, messages per second, and the agent process's RSS during
   the drain. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.config import parse_config
from agent.records import AlertRecord
from agent.store.store import Store
from agent.uplink.client import Uplink
from mclz_testkit.broker import Broker

REPO = Path(__file__).resolve().parents[2]


def rss_mb() -> float:
    """Current resident set size in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_commits(directory: Path, count: int) -> dict[str, float]:
    """Durable alert commits per second (alert row + message + evidence, one transaction)."""
    box = Store(directory / "commits.db")
    payload = json.dumps({"id": "x", "pad": "p" * 2000}).encode()
    image = b"J" * 60_000
    t0 = time.perf_counter()
    for i in range(count):
        record = AlertRecord(f"a{i}", "cam", "no_hat", "warning", 0.0, 1.0, 0.9, [], None)
        box.record_alert(record, "t/alert", payload, ("t/evidence", image))
    seconds = time.perf_counter() - t0
    box.close()
    return {"alerts": count, "seconds": round(seconds, 2), "per_second": round(count / seconds, 1)}


def bench_drain(directory: Path, count: int) -> dict[str, float]:
    """Drain ``count`` queued messages to a local mosquitto at QoS 1."""
    broker = Broker(directory / "broker").start()
    try:
        box = Store(directory / "drain.db")
        body = json.dumps({"id": "h", "pad": "p" * 400}).encode()
        t0 = time.perf_counter()
        for start in range(0, count, 1000):
            with box._transaction() as conn:  # one transaction per thousand: setup only
                for i in range(start, min(count, start + 1000)):
                    box._insert(
                        conn,
                        "bench/heartbeat",
                        body,
                        kind="heartbeat",
                        qos=1,
                        retain=False,
                        msg_id=f"m{i}",
                        now=time.time(),
                        ttl=86400,
                    )
        fill_s = time.perf_counter() - t0
        config = parse_config(
            f"identity: {{city: b, school_id: b, box_id: b}}\n"
            f"mqtt: {{url: '{broker.url}', max_rate: 0, inflight: 100}}\n"
        )
        peak = [rss_mb()]
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.2):
                peak[0] = max(peak[0], rss_mb())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        uplink = Uplink(config, box)
        t0 = time.perf_counter()
        uplink.start()
        while box.backlog():
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        uplink.stop()
        stop.set()
        box.close()
        return {
            "messages": count,
            "fill_s": round(fill_s, 1),
            "drain_s": round(seconds, 1),
            "per_second": round(count / seconds, 1),
            "peak_rss_mb": round(peak[0], 1),
        }
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=2000, help="alerts to commit (default 2000)")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages to drain")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mclz-bench-outbox-") as tmp:
        directory = Path(tmp)
        commits = bench_commits(directory, args.alerts)
        drain = bench_drain(directory, args.backlog)
    print("| measure | value |")
    print("|---|---:|")
    print(
        f"| durable alert commits/s (alert, 2 kB message, 60 kB image) | {commits['per_second']} |"
    )
    print(f"| backlog drained at QoS 1 | {drain['messages']} messages in {drain['drain_s']} s |")
    print(f"| drain rate | {drain['per_second']} messages/s |")
    print(f"| peak RSS during the drain | {drain['peak_rss_mb']} MB |")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"| process CPU | {ru.ru_utime + ru.ru_stime:.1f} s |")
    if args.json:
        args.json.write_text(json.dumps({"commits": commits, "drain": drain}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
