"""Process memory for many cameras: large buffers go back to the system when they are freed.

Every analysed frame is a fresh BGR array (2.8 MB at 720p, 6.2 MB at 1080p), converted in
its camera's reader thread and freed in the detect thread. glibc serves such sizes from the
heap once its mmap threshold has risen (it follows the largest block freed, up to 32 MB),
and a freed block then stays in its thread's arena: about one frame per camera that the
process holds and never uses. A fixed threshold of 1 MiB maps those blocks instead and
unmaps them when they are freed; smaller allocations are untouched.

Measured 2026-12-06 (2-core AMD EPYC, a training job beside it; docs/performance.md,
"Decoder memory"): the whole agent (scripts/bench/bench.py) 529-535 -> 453-477 MB with 16
cameras at 720p and 585-593 -> 484-485 MB with 8 at 1080p; the readers alone
(scripts/bench/bench_decoder_memory.py) 9.2 -> 6.6 MB per 720p camera. The price: the pages
of every new frame are faulted in afresh, 0.3 (720p) to 0.6 (1080p) points more of a core
per camera, about 5 %. ``MALLOC_MMAP_THRESHOLD_`` in the environment (glibc reads it at
start) overrides this with any threshold.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: Blocks of this size and more are mapped and returned when freed: every BGR frame (2.8 MB
#: at 720p) and the larger planes of decoded pictures, not the small objects of the agent.
MMAP_THRESHOLD_BYTES = 1024 * 1024
#: Set in the environment, glibc's own tunable wins and nothing is changed here.
ENV_OVERRIDE = "MALLOC_MMAP_THRESHOLD_"


def map_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc map blocks of ``threshold`` bytes and more, and unmap them when freed.

    Process-wide; call it once at start, before the reader threads. Returns whether it was
    applied: not where the C library is not glibc, nor where ``MALLOC_MMAP_THRESHOLD_`` is
    set (the operator's choice). Never raises.
    """
    if ENV_OVERRIDE in os.environ:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if applied:
        logger.debug("malloc: blocks of %d bytes and more are mapped and unmapped", threshold)
    return applied
