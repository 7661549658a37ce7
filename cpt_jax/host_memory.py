"""Keep freed host memory in the process, so that XLA:CPU's per-step buffers are reused.

XLA:CPU allocates a step's temporaries as one block per execution (57 MB for the tiny benchmark
model, 770 MB for medium at L=256), from its worker threads. glibc serves a block above 32 MB
with a fresh mmap and unmaps it when freed, so every step faults the whole block in again and
the kernel zeroes it page by page: 14,000 page faults and about a third of a tiny CPU step
(benchmarks/bench_step.py). With one arena, no mmap and no trimming, the next step reuses the
freed block instead. The cost: memory the process once used is not returned to the system
before it exits (its peak stays resident).
"""

from __future__ import annotations

import ctypes
import os

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_SETTINGS = (
    (M_ARENA_MAX, 1),  # every thread allocates from the main heap: a worker's own arena is capped at 64 MB
    (M_MMAP_MAX, 0),  # large blocks come from the heap too, not from a fresh mmap per allocation
    (M_TRIM_THRESHOLD, 2**31 - 1),  # freed memory stays in the heap instead of going back to the system
)


def is_glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # not a glibc system (macOS, musl)
        return False


def keep_freed_memory() -> bool:
    """Apply KEEP_SETTINGS to this process's malloc; False where malloc is not glibc's (nothing
    changes there). Call it before JAX starts its backends: a thread that has already allocated
    keeps its own arena."""
    if not is_glibc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all(mallopt(option, value) == 1 for option, value in KEEP_SETTINGS)
