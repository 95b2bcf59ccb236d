"""Corpora: read (streaming, strictly UTF-8), plant canaries, split train/validation.

The corpus is read twice, line by line, so inserting into a corpus of any size holds only
counters and the planned insertions in memory: pass 1 validates, hashes and counts lines;
the plan (validation blocks, canary secrets, insertion points) is drawn from the seed; pass 2
streams the lines out with the canaries inserted.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import AuditError
from .formats import Format

DEFAULT_CORPUS = "<default>"
DEFAULT_SCHEDULE = (0, 1, 2, 4, 8, 16, 32)
VALID_BLOCK_LINES = 64  # validation is held out in blocks of lines, so paragraphs stay whole


def default_corpus_text() -> str:
    """CPython's bundled English reference text (``pydoc_data.topics``), read at run time."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - every CPython ships it, some distributions strip it
        raise AuditError("this Python has no pydoc_data.topics; pass --corpus FILE") from None
    return "\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


def _open(source: str | Path) -> BinaryIO:
    if str(source) == DEFAULT_CORPUS:
        return io.BytesIO(default_corpus_text().encode("utf-8"))
    path = Path(source)
    if not path.exists():
        raise AuditError(f"corpus {path} does not exist")
    if path.is_dir():
        raise AuditError(f"corpus {path} is a folder; give a UTF-8 text file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise AuditError(f"cannot read corpus {path}: {e.strerror or e}") from None


def decode_utf8(blocks: Iterable[bytes], what: str) -> Iterator[str]:
    """Decode consecutive pieces of one byte stream strictly as UTF-8, one text piece per block.

    A NUL byte (binary data), an invalid byte or a truncated last character is an
    :class:`AuditError` that starts with ``what`` (e.g. "corpus c.txt") and names the byte
    offset. Streaming: a character split across two blocks is carried over, so memory stays
    one block whatever the stream's size.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    for raw in blocks:
        nul = raw.find(b"\0")
        if nul >= 0:
            raise AuditError(f"{what} looks binary: NUL byte at byte offset {offset + nul}")
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError as e:
            raise AuditError(f"{what} is not UTF-8: invalid byte at byte offset {offset + e.start}") from None
        offset += len(raw)
        yield text
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise AuditError(f"{what} is not UTF-8: truncated character at byte offset {offset}") from None


def _hashed(blocks: Iterable[bytes], digest: "hashlib._Hash") -> Iterator[bytes]:
    for raw in blocks:
        digest.update(raw)
        yield raw


def iter_lines(source: str | Path, digest: "hashlib._Hash | None" = None) -> Iterator[str]:
    """The corpus's lines without their line breaks, decoded strictly by :func:`decode_utf8`.

    ``digest``, if given, is updated with the raw bytes (so the corpus hash is the file's own
    SHA-256).
    """
    with _open(source) as fh:
        # binary lines end in b"\n", which never sits inside a UTF-8 sequence: one text line each
        raw_lines: Iterable[bytes] = fh if digest is None else _hashed(fh, digest)
        for text in decode_utf8(raw_lines, f"corpus {source}"):
            yield text.rstrip("\n")


@dataclass
class CorpusStats:
    source: str
    sha256: str
    lines: int
    characters: int


def scan(source: str | Path, progress: Callable[[int], None] | None = None) -> CorpusStats:
    """Pass 1: validate, hash and count the corpus."""
    h = hashlib.sha256()
    lines = chars = 0
    nonblank = False
    pending = 0
    for line in iter_lines(source, h):
        if progress is not None:
            pending += len(line) + 1
            if pending >= 1 << 20:
                progress(pending)
                pending = 0
        lines += 1
        chars += len(line) + 1
        nonblank = nonblank or bool(line.strip())
    if not nonblank:
        raise AuditError(f"corpus {source} is empty")
    return CorpusStats(source=str(source), sha256=h.hexdigest(), lines=lines, characters=chars)


@dataclass
class PlannedCanary:
    format: str
    secret: str
    text: str
    insertions: int
    positions: list[int] = field(default_factory=list)


@dataclass
class InsertionResult:
    stats: CorpusStats
    canaries: list[PlannedCanary]
    train_lines: int
    valid_lines: int


def draw_canaries(formats: Sequence[Format], schedule: Sequence[int], per_count: int, seed: int) -> list[PlannedCanary]:
    """Secrets for every format x insertion count, distinct within a format, uniform over R."""
    out: list[PlannedCanary] = []
    for k, fmt in enumerate(formats):
        rng = random.Random(f"exposure-audit:{seed}:secrets:{k}:{fmt.source}")
        need = per_count * len(schedule)
        if need > fmt.space_size:
            raise AuditError(
                f"format {fmt.source!r} has {fmt.space_size} secrets; {need} distinct canaries were asked for"
            )
        secrets = iter(fmt.sample(rng, need))
        for n in schedule:
            for _ in range(per_count):
                s = next(secrets)
                out.append(PlannedCanary(format=fmt.source, secret=s, text=fmt.render(s), insertions=n))
    return out


def _valid_blocks(lines: int, fraction: float, seed: int) -> set[int]:
    blocks = -(-lines // VALID_BLOCK_LINES)
    if fraction <= 0 or blocks < 2:
        return set()
    count = min(blocks - 1, max(1, round(fraction * blocks)))
    rng = random.Random(f"exposure-audit:{seed}:valid")
    return set(rng.sample(range(blocks), count))


def insert_canaries(
    source: str | Path,
    train_path: Path,
    valid_path: Path,
    formats: Sequence[Format],
    *,
    schedule: Sequence[int] = DEFAULT_SCHEDULE,
    per_count: int = 2,
    seed: int = 0,
    valid_fraction: float = 0.1,
    progress: Callable[[int], None] | None = None,
    canaries: list[PlannedCanary] | None = None,
) -> InsertionResult:
    """Write ``train_path`` (corpus + canaries) and ``valid_path`` (held-out corpus lines only).

    Each canary is inserted ``n`` times as its own line, at distinct line boundaries chosen
    uniformly from the training lines. Same inputs and seed give byte-identical files.
    ``canaries`` already drawn (e.g. dp-audit's, planted with probability 1/2) replace the
    ones ``formats``, ``schedule`` and ``per_count`` would draw.
    """
    if per_count < 1:
        raise AuditError("per-count must be at least 1")
    if any(n < 0 for n in schedule) or not schedule:
        raise AuditError("the schedule needs insertion counts >= 0, e.g. 0,1,2,4")
    if not 0 <= valid_fraction < 1:
        raise AuditError("valid_fraction must be in [0, 1)")
    stats = scan(source, progress)
    valid_blocks = _valid_blocks(stats.lines, valid_fraction, seed)
    valid_lines = sum(min(VALID_BLOCK_LINES, stats.lines - b * VALID_BLOCK_LINES) for b in valid_blocks)
    train_lines = stats.lines - valid_lines
    if canaries is None:
        canaries = draw_canaries(formats, schedule, per_count, seed)
    total = sum(c.insertions for c in canaries)
    if total > train_lines:
        raise AuditError(
            f"corpus too small: {train_lines} training lines for {total} canary insertions "
            "(use a larger corpus, a shorter schedule or a smaller --per-count)"
        )
    # Plan: for every canary, distinct boundaries 0..train_lines (insert before that train line).
    rng = random.Random(f"exposure-audit:{seed}:positions")
    at: dict[int, list[int]] = {}
    for ci, c in enumerate(canaries):
        for b in sorted(rng.sample(range(train_lines + 1), c.insertions)):
            at.setdefault(b, []).append(ci)
    for b in at:
        rng.shuffle(at[b])  # several canaries at one boundary: no canary-order bias

    def emit_canaries(boundary: int, out: io.TextIOBase, line_no: int) -> int:
        for ci in at.get(boundary, ()):
            canaries[ci].positions.append(line_no)
            out.write(canaries[ci].text + "\n")
            line_no += 1
        return line_no

    with (
        open(train_path, "w", encoding="utf-8", newline="\n") as train,
        open(valid_path, "w", encoding="utf-8", newline="\n") as valid,
    ):
        t = 0  # training corpus lines seen
        out_line = 0  # lines written to train.txt
        pending = 0
        for i, line in enumerate(iter_lines(source)):
            if progress is not None:
                pending += len(line) + 1
                if pending >= 1 << 20:
                    progress(pending)
                    pending = 0
            if i // VALID_BLOCK_LINES in valid_blocks:
                valid.write(line + "\n")
                continue
            out_line = emit_canaries(t, train, out_line)
            train.write(line + "\n")
            out_line += 1
            t += 1
        emit_canaries(t, train, out_line)
    for c in canaries:
        c.positions.sort()
    return InsertionResult(stats=stats, canaries=canaries, train_lines=train_lines, valid_lines=valid_lines)
