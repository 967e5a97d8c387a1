"""The agent under systemd: logging to the journal, ``sd_notify`` and the watchdog interval.

Outside systemd every function here degrades to the plain behaviour: logs go to stderr with
timestamps, notifications are dropped, and there is no watchdog to ping.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from agent.config import LoggingConfig
from agent.redact import RedactingFilter

logger = logging.getLogger(__name__)


def setup_logging(config: LoggingConfig) -> None:
    """Log with secrets masked: under systemd to stdout without timestamps (journald adds
    them), elsewhere to stderr with timestamps."""
    under_systemd = bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))
    stamps = config.timestamps == "yes" or (config.timestamps == "auto" and not under_systemd)
    fmt = "%(levelname)s %(name)s: %(message)s"
    if stamps:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stdout if under_systemd else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    logging.getLogger("agent.uplink.client.paho").setLevel(logging.WARNING)
    logging.getLogger("libav").setLevel(logging.CRITICAL)


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to systemd's notify socket; false if not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logger.warning("sd_notify(%s) failed: %s", state.split("=", maxsplit=1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``); None without a watchdog
    or when it is meant for another process (``WATCHDOG_PID``)."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2  # ping at half the timeout, as systemd recommends
