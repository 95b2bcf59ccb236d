"""Errors and exit codes: the tool's contract with CI (README, "Exit codes").

- 0: the command did its work, and any gate passed;
- 1: a gate failed, and nothing else: produced only by :func:`gate_exit` from a verdict
  (an exposure above ``--fail-above``, a violated privacy claim under ``--fail-if-violated``);
- 2: bad input or an impossible request (an :class:`AuditError`: one ``error: ...`` line);
- 3: under torchrun, another rank died or stopped answering;
- 70: an internal error, that is a bug (sysexits' EX_SOFTWARE): one line naming the file that
  holds the traceback (``--debug`` prints it). Never 1, so a bug cannot pass for a failed gate.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_INTERNAL = 70


class AuditError(Exception):
    """Bad input or an impossible request: the user can fix it, so no traceback is shown."""


class OutOfMemory(AuditError):
    """An allocation failed: the run needs more memory than it may take. The message names the
    setting that bounds it."""


def gate_exit(failed: bool) -> int:
    """The exit status of a gate's verdict: the one place that produces exit 1."""
    return EXIT_GATE_FAILED if failed else EXIT_OK


# Phrases of the allocators' failures: torch's CPU allocator ("DefaultCPUAllocator: can't allocate
# memory", "not enough memory"), CUDA's ("CUDA out of memory"), and numpy's ("Unable to allocate").
_OOM_PHRASES = ("can't allocate memory", "not enough memory", "out of memory", "unable to allocate", "cannot allocate")

MEMORY_HINT = (
    "lower measure.batch in the config (rows per model step) or train.batch_size, or give the process more memory"
)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation failure (torch, CUDA, numpy or Python's own MemoryError)."""
    if isinstance(e, MemoryError):
        return True
    name = type(e).__name__
    if name in ("OutOfMemoryError", "_ArrayMemoryError"):
        return True
    return isinstance(e, RuntimeError) and any(p in str(e).lower() for p in _OOM_PHRASES)


def out_of_memory(e: BaseException, hint: str = MEMORY_HINT) -> OutOfMemory:
    """The one-line error for an allocation failure, naming what bounds the memory."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return OutOfMemory(f"out of memory ({first[:160]}); {hint}")
