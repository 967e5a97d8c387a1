"""A box that commits and publishes alerts until it is killed; run by tests/test_uplink_faults.py.

    publisher_child.py DB URL --prefix r3     enqueue alerts r3-0, r3-1, ... until killed
    publisher_child.py DB URL --drain         send what the outbox holds, stop, exit 0

It prints ``started`` once its imports are done, then each alert id only after
``Store.enqueue`` returned: a printed id is committed, so it must reach the broker some day.
The drain run prints ``drained`` and exits 0 when the outbox is empty, or exits 1 when it
is not within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import NoReturn

import yaml

from agent.config import AgentConfig, parse_config
from agent.store.store import Store
from agent.uplink.client import Uplink

ROOT = "mclz/hz/s1/box-01"
ALERT_TOPIC = f"{ROOT}/alert"


def make_config(url: str, *, max_rate: float) -> AgentConfig:
    """The box's configuration: this broker, quick reconnects."""
    data = {
        "identity": {"city": "hz", "school_id": "s1", "box_id": "box-01"},
        "mqtt": {"url": url, "reconnect_min": 1, "reconnect_max": 2, "max_rate": max_rate},
    }
    return parse_config(yaml.safe_dump(data))


def publish_forever(box: Store, uplink: Uplink, prefix: str, rng: random.Random) -> NoReturn:
    """Commit alerts one by one, printing each id once its commit returned."""
    n = 0
    while True:
        msg_id = f"{prefix}-{n}"
        payload = json.dumps({"id": msg_id, "n": n}, separators=(",", ":")).encode()
        box.enqueue(ALERT_TOPIC, payload, kind="alert", msg_id=msg_id)
        print(msg_id, flush=True)
        uplink.wake()
        n += 1
        time.sleep(rng.uniform(0.0, 0.02))


def drain(box: Store, uplink: Uplink, timeout: float) -> bool:
    """Wait until the outbox is empty; return whether it is."""
    deadline = time.monotonic() + timeout
    while box.backlog() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not box.backlog()


def main(argv: list[str] | None = None) -> int:
    """Run the box until killed (publish) or until the outbox is empty (drain)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the outbox database")
    parser.add_argument("url", help="the broker, mqtt://host:port")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prefix", help="publish alerts with ids PREFIX-0, PREFIX-1, ...")
    mode.add_argument("--drain", action="store_true", help="only send what is queued")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pauses between alerts")
    parser.add_argument("--timeout", type=float, default=30.0, help="drain timeout, seconds")
    args = parser.parse_args(argv)
    print("started", flush=True)
    box = Store(args.db)
    # Publishing: the default rate limit, so a backlog builds up and is cut by the kills.
    # Draining: no limit, so the test stays short.
    uplink = Uplink(make_config(args.url, max_rate=0 if args.drain else 20), box)
    uplink.start()
    if not args.drain:
        publish_forever(box, uplink, args.prefix, random.Random(args.seed))
    empty = drain(box, uplink, args.timeout)
    uplink.stop()
    print("drained" if empty else f"not drained: {box.backlog()}", flush=True)
    return 0 if empty else 1


if __name__ == "__main__":
    sys.exit(main())
