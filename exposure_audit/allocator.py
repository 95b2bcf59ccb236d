"""The C allocator's settings for this tool's own processes (the ``exposure-audit`` command).

glibc's malloc gives a large freed block back to the kernel at once (its *trim threshold* and
*mmap threshold* adapt, to at most 64 MB and 32 MB). A training step of the char-LSTM frees and
allocates far more than that in activations, so every step faulted the same pages back in:
a 2x128 LSTM step at batch 32 took 70-83 ms (standard deviation 8-10 ms) with glibc's defaults,
and 62-65 ms (2.3-2.9 ms) with the settings below, in the same session (docs/distributed.md,
"Scaling"). The jitter matters twice under ``torchrun``: every rank waits for the slowest at
each gradient all-reduce.

:func:`tune` keeps blocks of up to 32 MB in the heap (mmap threshold, glibc's own ceiling for
its adaptive one) and up to ``TRIM_BYTES`` of free memory at the heap's top (trim threshold).
That holds on to memory already used, never more than the peak: it changes how fast memory goes
back to the system, not how much a run needs. It is applied only by the command-line entry point
(a library caller's process keeps its own allocator), only with glibc, and not where the user
chose already: any ``MALLOC_*`` setting in the environment, or ``EXPOSURE_AUDIT_MALLOC=default``,
leaves glibc's defaults.
"""

from __future__ import annotations

import os

ENV = "EXPOSURE_AUDIT_MALLOC"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 256 << 20  # blocks up to this size come from the heap (glibc adapts up to 32 MB only)
TRIM_BYTES = 512 << 20


def tune() -> bool:
    """Set the thresholds above for this process; whether they were set."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        return False  # the user's own tuning (MALLOC_ARENA_MAX, MALLOC_TRIM_THRESHOLD_, ...)
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only (musl, macOS: nothing to do)
        # setting either one stops glibc adapting both, so both are set
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1
        return libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1 and ok
    except (OSError, AttributeError):
        return False
