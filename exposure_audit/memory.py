"""The memory budget of a search: how many bytes of model states (a char-LSTM's ``(h, c)``, a
transformer's KV cache) and next-token log-probabilities a walk, an extraction or a beam may hold.

The budget is given as ``--max-memory`` (``measure`` / ``extract``) or ``max_memory`` in a config
(``4GB``, ``512MiB``, ``2.5G`` or a number of bytes). It bounds the *search state*, not the
process: the model's weights, Python and the model's own transient activations come on top. A
search measures what it holds with :func:`nbytes` (the bytes of every tensor inside a state,
whatever the model keeps there), keeps it under the limit, and records its peak (``peak``).
A search that cannot run even one model call within the limit fails before any work.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import torch

from .errors import AuditError

DEFAULT_MAX_MEMORY = "4GB"  # fits beside the model on a laptop with 8 GB
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_size(value: str | int | float) -> int:
    """Bytes in ``4GB`` (10^9), ``4GiB`` / ``4G`` (2^30: what ``free`` and ``ulimit`` say), ``512MB``, or a number."""
    if isinstance(value, bool):
        raise AuditError(f"memory size {value!r}: expected e.g. 4GB, 512MB or a number of bytes")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise AuditError(f"memory size {value!r}: expected e.g. 4GB, 512MB, 2GiB or a number of bytes")
        number, unit, binary, b = m.groups()
        unit = unit.lower()
        if unit and (binary or not b):  # GiB, G: powers of 2
            scale = 1024 ** (" kmgt".index(unit))
        else:
            scale = _UNITS[unit]
        n = int(float(number) * scale)
    if n < 1:
        raise AuditError(f"memory size {value!r} must be positive")
    return n


def human(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def nbytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (tensors, tuples, lists, dicts, dataclasses, nested)."""
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(nbytes(x) for x in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return 0


@dataclass
class MemoryBudget:
    """A limit on a search's state in bytes, and the peak the searches under it reached."""

    limit: int
    peak: int = 0

    @staticmethod
    def of(value: MemoryBudget | str | int | None) -> MemoryBudget:
        if isinstance(value, MemoryBudget):
            return value
        return MemoryBudget(parse_size(DEFAULT_MAX_MEMORY if value is None else value))

    def note(self, used: int) -> None:
        self.peak = max(self.peak, int(used))

    def require(self, need: int, what: str) -> None:
        """Fail before any work when the minimum a search needs does not fit."""
        if need > self.limit:
            raise AuditError(
                f"{what} needs at least {human(need)} of search state, more than the memory budget of "
                f"{human(self.limit)}: raise --max-memory (or max_memory in the config)"
            )

    def to_json(self) -> dict[str, Any]:
        return {"max_memory_bytes": self.limit, "peak_search_memory_bytes": self.peak}
