"""Character vocabulary: id 0 is the unknown symbol, ids 1.. are characters in sorted order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..errors import AuditError

UNKNOWN_ID = 0


@dataclass(frozen=True)
class Vocabulary:
    chars: tuple[str, ...]  # id i+1 is chars[i]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise AuditError("vocabulary must list distinct single characters")
        object.__setattr__(self, "_index", {c: i + 1 for i, c in enumerate(self.chars)})

    @classmethod
    def from_chars(cls, chars: Iterable[str]) -> Vocabulary:
        return cls(tuple(sorted(set(chars))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def __contains__(self, c: object) -> bool:
        return c in self._index

    def id(self, c: str) -> int:
        return self._index.get(c, UNKNOWN_ID)

    def encode(self, text: str) -> np.ndarray:
        return np.fromiter((self._index.get(c, UNKNOWN_ID) for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in ids)

    def require(self, text: str, what: str) -> None:
        """Error if ``text`` has a character the model cannot produce."""
        missing = sorted({c for c in text if c not in self._index})
        if missing:
            shown = ", ".join(repr(c) for c in missing[:10])
            raise AuditError(f"{what} uses characters missing from the model's vocabulary: {shown}")
