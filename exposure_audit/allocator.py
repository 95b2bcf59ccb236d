"""The C allocator's settings for this tool's own processes (the ``exposure-audit`` command).

glibc's malloc gives a large freed block back to the kernel at once (its *trim threshold* and
*mmap threshold* adapt, to at most 64 MB and 32 MB). A training step of the char-LSTM frees and
allocates far more than that in activations, so every step faulted the same pages back in.
``benchmarks/allocator.py`` (2x128 LSTM training steps, one thread), two runs: at batch 32,
72.6 and 68.8 ms a step (standard deviation 10.3 and 7.5) with glibc's defaults against 57.8
and 57.3 ms (3.1 and 3.4) with the settings below; at batch 64, 166.2 and 153.1 ms against
108.6 and 110.0. The jitter matters twice under ``torchrun``: every rank waits for the slowest
at each gradient all-reduce.

:func:`tune` keeps blocks of up to ``MMAP_BYTES`` (256 MiB) in the heap (mmap threshold; at
32 MB, glibc's ceiling for its adaptive one, batch-64 steps still re-faulted) and up to
``TRIM_BYTES`` of free memory at the heap's top (trim threshold). That holds on to memory
already used (up to ``TRIM_BYTES`` more than is in use, more where the heap is fragmented): it
changes how fast memory goes back to the system, not how much a run needs. It is applied only
by the command-line entry point
(a library caller's process keeps its own allocator), only with glibc, and not where the user
chose already: any ``MALLOC_*`` setting in the environment, or ``EXPOSURE_AUDIT_MALLOC=default``,
leaves glibc's defaults.
"""

from __future__ import annotations

import os

ENV = "EXPOSURE_AUDIT_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 256 << 20  # blocks up to this size come from the heap (glibc adapts up to 32 MB only)
MMAP_FALLBACK = 32 << 20  # where a glibc refuses MMAP_BYTES (some cap it at HEAP_MAX_SIZE / 2)
TRIM_BYTES = 512 << 20


def tune() -> bool:
    """Set the thresholds above for this process; whether they were set."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user's own tuning (MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_, glibc tunables)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl, macOS: nothing to do)
        # Setting either one stops glibc adapting both, so both are set, or neither: a glibc that
        # refuses both mmap thresholds would otherwise be left at a fixed 128 KiB one.
        if not any(libc.mallopt(M_MMAP_THRESHOLD, n) == 1 for n in (MMAP_BYTES, MMAP_FALLBACK)):
            return False
        return libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    except (OSError, AttributeError):
        return False
