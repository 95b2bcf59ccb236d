"""Errors and exit codes: the tool's contract with CI (README, "Exit codes").

- 0: the command did its work, and any gate passed;
- 1: a gate failed, and nothing else: produced only by :func:`gate_exit` from a verdict
  (an exposure above ``--fail-above``, a violated privacy claim under ``--fail-if-violated``);
- 2: bad input or an impossible request (an :class:`AuditError`: one ``error: ...`` line),
  running out of memory included (:class:`OutOfMemoryError`, naming ``--max-memory``);
- 3: under torchrun, another rank died or stopped answering;
- 70: an internal error, that is a bug (sysexits' EX_SOFTWARE): one line naming the file that
  holds the traceback (``--debug`` prints it). Never 1, so a bug cannot pass for a failed gate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USAGE = 2
EXIT_LOST = 3
EXIT_INTERNAL = 70


class AuditError(Exception):
    """Bad input or an impossible request: the user can fix it, so no traceback is shown."""


class OutOfMemoryError(AuditError):
    """An allocation failed: the search budget (``--max-memory``) is more than the machine can
    give, or the model's own working memory does not fit beside it."""


def gate_exit(failed: bool) -> int:
    """The exit status of a gate's verdict: the one place that produces exit 1."""
    return EXIT_GATE_FAILED if failed else EXIT_OK


# Phrases of the allocators' failures: torch's CPU allocator ("DefaultCPUAllocator: can't allocate
# memory", "not enough memory"), CUDA's ("CUDA out of memory"), numpy's ("Unable to allocate").
_OUT_OF_MEMORY = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "defaultcpuallocator",
    "unable to allocate",
)


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's failure (torch's RuntimeError / OutOfMemoryError, numpy's,
    or Python's own MemoryError)."""
    if isinstance(e, MemoryError) or type(e).__name__ in ("OutOfMemoryError", "_ArrayMemoryError"):
        return not isinstance(e, AuditError)
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _OUT_OF_MEMORY)


def out_of_memory_error(e: BaseException, limit: int | None = None) -> OutOfMemoryError:
    """The one-line error for an allocation failure, naming ``--max-memory`` (``limit`` in bytes)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    budget = f" (the search budget was {limit / 2**30:.2f} GiB)" if limit else ""
    return OutOfMemoryError(
        f"out of memory{budget}: lower --max-memory (or measure.batch, train.batch_size) so that the "
        f"search state and the model fit in this machine's memory [{first[:160]}]"
    )


@contextmanager
def memory_errors_as_audit_errors(limit: int | None = None) -> Iterator[None]:
    """Turn an allocator's failure inside the block into :class:`OutOfMemoryError` (exit 2)."""
    try:
        yield
    except AuditError:
        raise
    except (RuntimeError, MemoryError) as e:
        if is_out_of_memory(e):
            raise out_of_memory_error(e, limit) from None
        raise
