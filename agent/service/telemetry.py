"""The box's own health for the heartbeat: load, CPU, memory, disk, temperature.

Read from /proc and /sys without extra dependencies; anything a box does not expose (a
VM has no thermal zone) is simply left out rather than guessed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any

THERMAL = Path("/sys/class/thermal")


class ProcessCpu:
    """CPU used by this process between two calls, as a share of one core."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._cpu_seconds())

    @staticmethod
    def _cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def sample(self) -> float:
        """Percent of one core used since the previous sample (200 = two full cores)."""
        now, cpu = time.monotonic(), self._cpu_seconds()
        then, before = self._last
        self._last = (now, cpu)
        return round(100 * (cpu - before) / max(1e-6, now - then), 1)


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in kB."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            value = rest.split()
            if value and value[0].isdigit():
                out[key] = int(value[0])
    except OSError:
        pass
    return out


def _rss_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _threads() -> int | None:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def temperatures() -> dict[str, float]:
    """Readable thermal zones in °C by zone type (e.g. ``x86_pkg_temp``, ``cpu-thermal``)."""
    out: dict[str, float] = {}
    if not THERMAL.is_dir():
        return out
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            millideg = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        out[kind] = round(millideg / 1000, 1)
    return out


def system_metrics(state_dir: Path, cpu: ProcessCpu) -> dict[str, Any]:
    """What the heartbeat reports about the box itself."""
    load1, load5, load15 = os.getloadavg()
    mem = _meminfo()
    metrics: dict[str, Any] = {
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "cpus": os.cpu_count() or 1,
        "agent_cpu_percent": cpu.sample(),
        "agent_rss_mb": round((_rss_kb() or 0) / 1024, 1),
        "agent_threads": _threads(),
    }
    if "MemTotal" in mem:
        metrics["mem_total_mb"] = round(mem["MemTotal"] / 1024)
        metrics["mem_available_mb"] = round(mem.get("MemAvailable", 0) / 1024)
    try:
        disk = shutil.disk_usage(state_dir)
        metrics["disk_total_gb"] = round(disk.total / 1e9, 2)
        metrics["disk_free_gb"] = round(disk.free / 1e9, 2)
    except OSError:
        pass
    temps = temperatures()
    if temps:
        metrics["temperature_c"] = temps
    return metrics


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """``struct timex`` of adjtimex(2) (Linux, any word size)."""

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


_STA_UNSYNC = 0x0040
_STA_NANO = 0x2000
_TIME_ERROR = 5


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded once (the heartbeat asks every interval)."""
    return ctypes.CDLL(None, use_errno=True)


def clock_status() -> dict[str, Any]:
    """How far the box's clock can be trusted, from the kernel's NTP state (adjtimex).

    Alert times reach regulators, so the platform must know when a box's clock is not
    disciplined. A read-only ``adjtimex`` call (modes 0, no privilege needed) gives
    whether an NTP client (chrony, systemd-timesyncd, ntpd) keeps the clock synchronised,
    the kernel's current offset estimate and the maximum and estimated error. Where the
    call is unavailable (not Linux, seccomp) only ``synchronized: null`` is reported.
    """
    try:
        timex = _Timex()
        state = _libc().adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        return {"synchronized": None, "source": "unavailable"}
    if state < 0:
        return {"synchronized": None, "source": "unavailable"}
    unit = 1e-9 if timex.status & _STA_NANO else 1e-6
    synced = state != _TIME_ERROR and not timex.status & _STA_UNSYNC
    return {
        "synchronized": synced,
        "source": "adjtimex",
        "offset_s": round(timex.offset * unit, 6),
        "max_error_s": round(timex.maxerror * 1e-6, 6),
        "est_error_s": round(timex.esterror * 1e-6, 6),
    }
