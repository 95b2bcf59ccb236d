"""The canary format language.

A format is a template with holes: ``the random number is {d:9}``. A hole is a character
class and a length. The randomness space ``R`` is every filling of the holes; this module
gives its exact size (a Python int, it may exceed 2**64), a bijection between indices
``0 <= i < |R|`` and fillings, and unbiased uniform sampling (by index, never character by
character with rejection).

Index order is lexicographic over the hole characters, the first hole character most
significant, each alphabet in its listed order. That is the order of the prefix tree the
exposure engine walks, so a contiguous index range is a contiguous set of subtrees.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from functools import cached_property

from ..errors import AuditError

CLASSES: dict[str, str] = {
    "d": string.digits,
    "x": "0123456789abcdef",
    "a": string.ascii_lowercase,
    "A": string.ascii_uppercase,
    "w": string.ascii_lowercase + string.digits,
}
MAX_HOLE_LENGTH = 1024


@dataclass(frozen=True)
class Hole:
    alphabet: str
    length: int
    spec: str  # as written, e.g. "d" or "[ACGT]"


Part = str | Hole


def _parse_set(body: str, source: str) -> str:
    """Parse the inside of ``[...]``: characters and ``x-y`` ranges; ``\\`` escapes the next one."""
    chars: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            if i + 1 >= len(body):
                raise AuditError(f"format {source!r}: dangling backslash in character set")
            chars.append(body[i + 1])
            i += 2
            continue
        if i + 2 < len(body) and body[i + 1] == "-":
            lo, hi = c, body[i + 2]
            if hi == "\\":
                raise AuditError(f"format {source!r}: escaped range end in character set")
            if ord(hi) < ord(lo):
                raise AuditError(f"format {source!r}: empty range {lo}-{hi} in character set")
            chars.extend(chr(o) for o in range(ord(lo), ord(hi) + 1))
            i += 3
            continue
        chars.append(c)
        i += 1
    if not chars:
        raise AuditError(f"format {source!r}: empty character set []")
    dupes = sorted({c for c in chars if chars.count(c) > 1})
    if dupes:
        raise AuditError(f"format {source!r}: character set repeats {''.join(dupes)!r} (that would bias sampling)")
    return "".join(chars)


def _parse_hole(body: str, source: str) -> Hole:
    spec, sep, count = body.rpartition(":") if not body.endswith("]") else (body, "", "")
    if not sep:
        spec, count = body, "1"
    if not count.isdigit() or not count.isascii():
        raise AuditError(f"format {source!r}: hole {{{body}}} needs a length like {{d:9}}")
    length = int(count)
    if not 1 <= length <= MAX_HOLE_LENGTH:
        raise AuditError(f"format {source!r}: hole length must be 1..{MAX_HOLE_LENGTH}, got {length}")
    if spec in CLASSES:
        alphabet = CLASSES[spec]
    elif len(spec) >= 2 and spec[0] == "[" and spec[-1] == "]":
        alphabet = _parse_set(spec[1:-1], source)
    else:
        known = ", ".join(CLASSES)
        raise AuditError(f"format {source!r}: unknown hole class {spec!r} (use {known} or [chars])")
    if "\n" in alphabet or "\r" in alphabet:
        raise AuditError(f"format {source!r}: a hole cannot produce a line break")
    return Hole(alphabet=alphabet, length=length, spec=spec)


def _parse(source: str) -> tuple[Part, ...]:
    if not isinstance(source, str):
        raise AuditError(f"format must be text, got {type(source).__name__}")
    if "\n" in source or "\r" in source:
        raise AuditError(f"format {source!r}: a canary is one line; no line breaks")
    parts: list[Part] = []
    text: list[str] = []
    i = 0
    while i < len(source):
        c = source[i]
        if c == "{" and source.startswith("{{", i):
            text.append("{")
            i += 2
        elif c == "}" and source.startswith("}}", i):
            text.append("}")
            i += 2
        elif c == "{":
            end = _find_close(source, i)
            if text:
                parts.append("".join(text))
                text = []
            parts.append(_parse_hole(source[i + 1 : end], source))
            i = end + 1
        elif c == "}":
            raise AuditError(f"format {source!r}: unmatched '}}' at column {i + 1} (write '}}}}' for a brace)")
        else:
            text.append(c)
            i += 1
    if text:
        parts.append("".join(text))
    if not any(isinstance(p, Hole) for p in parts):
        raise AuditError(f"format {source!r} has no hole such as {{d:9}}")
    return tuple(parts)


def _find_close(source: str, start: int) -> int:
    """Index of the '}' closing the hole opened at ``start``; a ']' inside [...] may be escaped."""
    i = start + 1
    in_set = False
    while i < len(source):
        c = source[i]
        if c == "\\" and in_set:
            i += 2
            continue
        if c == "[" and not in_set and i == start + 1:
            in_set = True
        elif c == "]" and in_set:
            in_set = False
        elif c == "}" and not in_set:
            return i
        i += 1
    raise AuditError(f"format {source!r}: unclosed '{{' at column {start + 1} (write '{{{{' for a brace)")


@dataclass(frozen=True)
class Format:
    """A parsed canary format. Build with ``Format.parse(text)``."""

    source: str
    parts: tuple[Part, ...]

    @classmethod
    def parse(cls, source: str) -> Format:
        return cls(source=source, parts=_parse(source))

    def __str__(self) -> str:
        return self.source

    @cached_property
    def holes(self) -> tuple[Hole, ...]:
        return tuple(p for p in self.parts if isinstance(p, Hole))

    @cached_property
    def radices(self) -> tuple[str, ...]:
        """The alphabet of every secret character, in order (one entry per hole character)."""
        return tuple(h.alphabet for h in self.holes for _ in range(h.length))

    @cached_property
    def space_size(self) -> int:
        """|R|: the number of distinct fillings (exact; may exceed 2**64)."""
        size = 1
        for alphabet in self.radices:
            size *= len(alphabet)
        return size

    @property
    def secret_length(self) -> int:
        return len(self.radices)

    @cached_property
    def slots(self) -> tuple[str, ...]:
        """Every character of a rendered canary as the set of characters it can be.

        A fixed character is a 1-character string, a hole character its alphabet. The hole
        alphabets are marked by position in :attr:`hole_slots`, since an alphabet may have one
        character too.
        """
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, Hole):
                out.extend([p.alphabet] * p.length)
            else:
                out.extend(p)
        return tuple(out)

    @cached_property
    def hole_slots(self) -> tuple[int, ...]:
        """Positions in :attr:`slots` that are secret characters."""
        out: list[int] = []
        pos = 0
        for p in self.parts:
            if isinstance(p, Hole):
                out.extend(range(pos, pos + p.length))
                pos += p.length
            else:
                pos += len(p)
        return tuple(out)

    @cached_property
    def prefix(self) -> str:
        """The fixed text before the first hole (shared by every candidate)."""
        first = self.parts[0]
        return first if isinstance(first, str) else ""

    @property
    def characters(self) -> set[str]:
        """Every character a canary of this format can contain."""
        return {c for slot in self.slots for c in slot}

    # -- bijection -------------------------------------------------------------------
    def fill(self, index: int) -> str:
        """The secret (hole characters concatenated) with the given index."""
        if not isinstance(index, int) or not 0 <= index < self.space_size:
            raise AuditError(f"index {index!r} outside 0..{self.space_size - 1} for format {self.source!r}")
        chars: list[str] = []
        for alphabet in reversed(self.radices):
            index, digit = divmod(index, len(alphabet))
            chars.append(alphabet[digit])
        return "".join(reversed(chars))

    def index(self, secret: str) -> int:
        """Inverse of :meth:`fill`."""
        if len(secret) != self.secret_length:
            raise AuditError(
                f"secret {secret!r} has {len(secret)} characters; format {self.source!r} needs {self.secret_length}"
            )
        value = 0
        for c, alphabet in zip(secret, self.radices):
            digit = alphabet.find(c)
            if digit < 0:
                raise AuditError(f"secret {secret!r}: {c!r} is not allowed in format {self.source!r}")
            value = value * len(alphabet) + digit
        return value

    def render(self, secret: str) -> str:
        """The canary text: the format with its holes filled by ``secret``."""
        self.index(secret)  # validates
        out: list[str] = []
        pos = 0
        for p in self.parts:
            if isinstance(p, Hole):
                out.append(secret[pos : pos + p.length])
                pos += p.length
            else:
                out.append(p)
        return "".join(out)

    def secret_of(self, text: str) -> str:
        """The secret inside a rendered canary; error if ``text`` is not of this format."""
        if len(text) != len(self.slots):
            raise AuditError(f"{text!r} is not a canary of format {self.source!r}")
        for c, slot in zip(text, self.slots):
            if c not in slot:
                raise AuditError(f"{text!r} is not a canary of format {self.source!r}")
        secret = "".join(text[i] for i in self.hole_slots)
        if self.render(secret) != text:
            raise AuditError(f"{text!r} is not a canary of format {self.source!r}")
        return secret

    # -- sampling ----------------------------------------------------------------------
    def sample_indices(self, rng: random.Random, n: int, *, distinct: bool = True) -> list[int]:
        """``n`` indices drawn uniformly from R (distinct ones by default).

        ``random.Random.randrange`` is exact for arbitrary big integers, so every index is
        equally likely whatever |R| is. Rejecting repeats keeps the draw uniform over sets.
        """
        if n < 0:
            raise AuditError("sample size must be >= 0")
        if distinct and n > self.space_size:
            raise AuditError(f"format {self.source!r} has only {self.space_size} distinct secrets; {n} were asked for")
        if not distinct:
            return [rng.randrange(self.space_size) for _ in range(n)]
        seen: set[int] = set()
        out: list[int] = []
        while len(out) < n:
            i = rng.randrange(self.space_size)
            if i not in seen:
                seen.add(i)
                out.append(i)
        return out

    def sample(self, rng: random.Random, n: int, *, distinct: bool = True) -> list[str]:
        """``n`` secrets drawn uniformly (distinct by default)."""
        return [self.fill(i) for i in self.sample_indices(rng, n, distinct=distinct)]
