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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import AuditError
from .formats import Format
from .manifest import Canary

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
    from .records import open_file

    return open_file(Path(source), "corpus")


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
class InsertionResult:
    stats: CorpusStats
    canaries: list[Canary]
    train_lines: int
    valid_lines: int


def draw_canaries(formats: Sequence[Format], schedule: Sequence[int], per_count: int, seed: int) -> list[Canary]:
    """Secrets for every format x insertion count, distinct within a format, uniform over R."""
    out: list[Canary] = []
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
                out.append(Canary(id=None, format=fmt.source, secret=s, text=fmt.render(s), insertions=n))
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
    canaries: list[Canary] | None = None,
) -> InsertionResult:
    """Write ``train_path`` (corpus + canaries) and ``valid_path`` (held-out corpus lines only).

    Each canary is inserted ``n`` times as its own line, at distinct line boundaries chosen
    uniformly from the training lines. Same inputs and seed give byte-identical files.
    ``canaries`` already drawn (e.g. dp-audit's, planted with probability 1/2) replace the
    ones ``formats``, ``schedule`` and ``per_count`` would draw.
    """
    _check_plan(schedule, per_count, valid_fraction)
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
    at = _plan_slots(random.Random(f"exposure-audit:{seed}:positions"), canaries, train_lines + 1)

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


# ---------------------------------------------------------------- corpora of records


def _holdout(seed: int, fraction: float) -> Callable[[int], bool]:
    """Whether record ``i`` goes to validation: a keyed hash of its index below ``fraction``.

    Decided record by record from the seed, so the split needs no memory whatever the corpus's
    size and both passes agree without storing it."""
    if fraction <= 0:
        return lambda i: False
    key = hashlib.sha256(f"exposure-audit:{seed}:valid-records".encode()).digest()[:32]
    cut = int(fraction * (1 << 64))

    def held(i: int) -> bool:
        d = hashlib.blake2b(i.to_bytes(8, "little"), key=key, digest_size=8).digest()
        return int.from_bytes(d, "little") < cut

    return held


@dataclass
class RecordStats:
    source: str
    sha256: str
    records: int
    train_records: int
    train_boundaries: int  # line boundaries inside the training records (line placement)
    characters: int
    skipped: int = 0


def scan_records(source: Path, spec, seed: int, fraction: float, progress=None) -> RecordStats:
    """Pass 1 over a corpus of records: validate every record, hash, count, plan the split."""
    from ..files import sha256_file
    from . import records as rec_mod

    digest = hashlib.sha256()
    held = _holdout(seed, fraction)
    n = train = boundaries = chars = 0
    nonblank = False
    by_line = spec.placement == "line"
    for rec in rec_mod.iter_records(source, spec, digest):
        if rec.extra.get("header"):
            continue
        if not held(n):
            train += 1
            if by_line:
                boundaries += rec_mod.line_boundaries(rec.texts)
        n += 1
        chars += sum(len(t) for t in rec.texts)
        nonblank = nonblank or any(t.strip() for t in rec.texts)
        if progress is not None and n % 4096 == 0:
            progress(0)
    if not nonblank:
        raise AuditError(f"corpus {source} is empty (no record holds text)")
    if train == 0:
        raise AuditError(f"corpus {source}: all {n} records were held out for validation; lower valid_fraction")
    sha = digest.hexdigest() if spec.format in ("jsonl", "folder") else sha256_file(source)
    skipped = 0
    if spec.format == "folder":
        skipped = len(rec_mod.folder_files(Path(source))) - n
    return RecordStats(str(source), sha, n, train, boundaries, chars, skipped)


@dataclass
class RecordInsertion:
    stats: RecordStats
    canaries: list[Canary]
    locations: list[list[dict]]  # per canary: {"record": index in the training output, "line": ...}
    train_records: int  # records written to the training output (canary records included)
    valid_records: int


def _check_plan(schedule: Sequence[int], per_count: int, valid_fraction: float) -> None:
    if per_count < 1:
        raise AuditError("per-count must be at least 1")
    if any(n < 0 for n in schedule) or not schedule:
        raise AuditError("the schedule needs insertion counts >= 0, e.g. 0,1,2,4")
    if not 0 <= valid_fraction < 1:
        raise AuditError("valid_fraction must be in [0, 1)")


def _plan_slots(rng: random.Random, canaries: Sequence[Canary], slots: int) -> dict[int, list[int]]:
    """For every canary, ``insertions`` distinct slots out of ``slots``: slot -> canaries there.
    Several canaries at one slot are shuffled, so no canary order is favoured."""
    at: dict[int, list[int]] = {}
    for ci, c in enumerate(canaries):
        for b in sorted(rng.sample(range(slots), c.insertions)):
            at.setdefault(b, []).append(ci)
    for b in at:
        rng.shuffle(at[b])
    return at


def insert_records(
    source: Path,
    spec,
    train_path: Path,
    valid_path: Path,
    formats: Sequence[Format],
    *,
    schedule: Sequence[int] = DEFAULT_SCHEDULE,
    per_count: int = 2,
    seed: int = 0,
    valid_fraction: float = 0.1,
    progress: Callable[[int], None] | None = None,
) -> RecordInsertion:
    """Plant canaries into a corpus of records, writing train and valid in the corpus's format.

    ``spec.placement`` "record": each insertion is a new record at a record boundary chosen
    uniformly; "line": each insertion is a line inside a training record, at a line boundary
    chosen uniformly among all training records' line boundaries. Validation holds whole records
    (never a canary). Same inputs and seed give byte-identical files. The writers
    (``records.open_writer``) say where each canary went."""
    from . import records as rec_mod

    _check_plan(schedule, per_count, valid_fraction)
    stats = scan_records(source, spec, seed, valid_fraction, progress)
    canaries = draw_canaries(formats, schedule, per_count, seed)
    total = sum(c.insertions for c in canaries)
    by_record = spec.placement == "record"
    slots = stats.train_records + 1 if by_record else stats.train_boundaries
    if total > slots:
        unit = "record boundaries" if by_record else "line boundaries in training records"
        raise AuditError(
            f"corpus too small: {slots} {unit} for {total} canary insertions "
            "(use a larger corpus, a shorter schedule or a smaller --per-count)"
        )
    at = _plan_slots(random.Random(f"exposure-audit:{seed}:positions:{spec.placement}"), canaries, slots)
    planting = _Planting(canaries, at, rec_mod.open_writer(train_path, spec, source))
    held = _holdout(seed, valid_fraction)
    valid_out = rec_mod.open_writer(valid_path, spec, source)
    valid_n = 0  # records written to valid
    try:
        n = 0
        for rec in rec_mod.iter_records(source, spec, parse=not by_record):
            if rec.extra.get("header"):
                planting.out.copy(rec)
                valid_out.copy(rec)
                continue
            i, n = n, n + 1
            if progress is not None and n % 4096 == 0:
                progress(0)
            if held(i):
                valid_out.copy(rec)
                valid_n += 1
            elif by_record:
                planting.records_before(planting.seen)
                planting.out.copy(rec)
                planting.next_record()
            else:
                planting.lines_into(rec)
                planting.next_record()
        if by_record:
            planting.records_before(planting.seen)
    finally:
        planting.out.close()
        valid_out.close()
    for c, locs in zip(canaries, planting.locations):
        c.positions = sorted(loc["record"] for loc in locs)
        locs.sort(key=lambda d: (d["record"], d.get("message", 0), d["line"]))
    return RecordInsertion(stats, canaries, planting.locations, planting.written, valid_n)


class _Planting:
    """The training output of :func:`insert_records` as it is written: the planned canaries go
    in at their slots, and the writer records where each went."""

    def __init__(self, canaries: list[Canary], at: dict[int, list[int]], out) -> None:
        self.canaries, self.at, self.out = canaries, at, out
        self.locations: list[list[dict]] = [[] for _ in canaries]
        self.written = 0  # records written to the training output
        self.seen = 0  # training records of the corpus seen
        self.boundary = 0  # line boundaries seen (line placement)

    def next_record(self) -> None:
        self.written += 1
        self.seen += 1

    def records_before(self, t: int) -> None:
        """Record placement: the canaries planned before training record ``t``, each a record."""
        for ci in self.at.get(t, ()):
            self.locations[ci].append(self.out.canary(self.canaries[ci].text, self.written))
            self.written += 1

    def lines_into(self, rec) -> None:
        """Line placement: the canaries planned at this record's line boundaries, as lines."""
        from .records import split_lines

        new_texts, changed = [], False
        for m, text in enumerate(rec.texts):
            lines, trailing = split_lines(text)
            out: list[str] = []
            for j in range(len(lines) + 1):
                for ci in self.at.get(self.boundary, ()):
                    self.locations[ci].append(self.out.location(self.written, rec, m, len(out)))
                    out.append(self.canaries[ci].text)
                    changed = True
                self.boundary += 1
                if j < len(lines):
                    out.append(lines[j])
            new_texts.append("\n".join(out) + ("\n" if trailing else ""))
        if changed:
            self.out.changed(rec, new_texts)
        else:
            self.out.copy(rec)


def data_spec(folder: Path):
    """How to read the data files of an ``insert`` folder: from its manifest's ``data`` entry,
    or ``train.txt`` (plain text) when there is none (``records.Spec.from_manifest``)."""
    from .manifest import Manifest
    from .records import Spec

    manifest_path = Path(folder) / "canaries.json"
    return Spec.from_manifest(Manifest.read(manifest_path).data if manifest_path.exists() else None)


def data_path(folder: Path, which: str, spec=None) -> Path:
    """``train.txt`` / ``train.jsonl`` / ``train/`` ... of an insert folder (``which``: train or valid)."""
    from . import records as rec_mod

    spec = spec or data_spec(folder)
    return rec_mod.output_path(Path(folder), which, spec.format)


def iter_training_text(folder: Path, which: str = "train", spec=None, size: int = 1 << 24) -> Iterator[str]:
    """The training (or validation) text of an ``insert`` folder, in pieces, whatever its format:
    a text file decoded strictly as it is; records as their texts, each text on its own lines
    (so a canary line always follows a line break). Streaming: memory stays bounded."""
    from . import records as rec_mod

    spec = spec or data_spec(folder)
    path = data_path(folder, which, spec)
    what = "training text" if which == "train" else "validation text"
    if not path.exists():
        raise AuditError(f"{what} {path} is missing")
    if spec.format == "txt":
        with open(path, "rb") as fh:
            yield from decode_utf8(iter(lambda: fh.read(size), b""), f"{what} {path}")
        return
    yield from rec_mod.iter_text_pieces(path, spec, f"{what} {path}")
