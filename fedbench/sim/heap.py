"""Keep freed memory in the process instead of handing it back to the OS every step.

A training step allocates and frees the same few-MB activations over and over. glibc
serves a block above its mmap threshold (128 KiB, raised only to the largest block freed
so far) with a fresh ``mmap`` and unmaps it on free, and trims the heap's free top once
it passes twice that threshold; either way the next step's block comes back as fresh
pages, and the kernel faults and zeroes every one of them. On the engine benchmark
that page traffic cost 10-20% of a client-round (see the README's Speed section). Raising both
limits keeps those pages resident: blocks under 32 MiB come from the heap, and up to
256 MiB of free heap top stays mapped. The cost is that much resident memory held after
a peak; the numbers a run computes do not change (allocation is not arithmetic).

Only glibc has ``mallopt``; elsewhere, or where the user set glibc's own malloc
tunables in the environment (``MALLOC_*_`` or ``GLIBC_TUNABLES=glibc.malloc.*``: they
win), this does nothing. (The kernel-benchmark gate
pins the same two thresholds through the environment: ``benchmarks/gate.py``.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling for it on 64-bit systems
TRIM_THRESHOLD = 256 * 2**20
USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_done: bool | None = None


def keep_heap() -> bool:
    """Raise glibc's mmap and trim thresholds, once a process; True when they are set."""
    global _done
    if _done is None:
        _done = _set()
    return _done


def _set() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    if any(k in os.environ for k in USER_TUNABLES):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt is a no-op
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.debug("mallopt refused the heap thresholds; allocation stays glibc's default")
    return ok
