"""Errors that the CLI turns into a one-line ``error: ...`` message and exit status 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# What torch's CPU and CUDA allocators say when an allocation fails (RuntimeError or
# torch.OutOfMemoryError, a RuntimeError subclass); a plain MemoryError is Python's own.
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "defaultcpuallocator", "cannot allocate memory")


class AuditError(Exception):
    """Bad input or an impossible request: the user can fix it, so no traceback is shown."""


class OutOfMemoryError(AuditError):
    """An allocation failed during a search: the memory budget (``--max-memory``) is more than the
    machine can give, or the model's own working memory does not fit beside it."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocator's failure (torch's RuntimeError / OutOfMemoryError, MemoryError)."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _OUT_OF_MEMORY)


def out_of_memory_error(e: BaseException, limit: int | None = None) -> OutOfMemoryError:
    """The one-line error for an allocation failure, naming ``--max-memory`` (``limit`` in bytes)."""
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    budget = f" (the search budget was {limit / 2**30:.2f} GiB)" if limit else ""
    return OutOfMemoryError(
        f"out of memory during the search{budget}: lower --max-memory (or the batch) so that the search "
        f"state and the model fit in this machine's memory [{first[:160]}]"
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
