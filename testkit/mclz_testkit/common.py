"""What every test service shares: its errors, loopback ports and stopping child processes.

The services bind 127.0.0.1 on ephemeral ports (:func:`free_port`), except
:class:`mclz_testkit.netns.NetnsBroker`, which has a network namespace of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path

# The testkit is installed editable from this checkout (scripts/bootstrap), so the repository
# is two folders up: the services start its scripts and read its docs/mqtt schemas.
REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


class ServiceError(RuntimeError):
    """A test service failed to start, stop or answer in time."""


class MissingDependencyError(ServiceError):
    """A program or package a test service needs is not installed; the message says which."""


# --------------------------------------------------------------------------- ports


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Return whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def terminate_process(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (and SIGCONT, in case it is paused) then wait; SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once resumed
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def kill_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
