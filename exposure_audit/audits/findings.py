"""Pass over a corpus: every secret found, grouped by value, with its locations and context.

Streaming: one record (one line of a text file) at a time; what is kept is one entry per
distinct value (its first ``max_locations`` locations, the context of its first occurrence),
capped at ``max_findings`` distinct values, so memory does not grow with the corpus's size.

The **context** of a value is the text before it in its record *as trained*: the record's
texts each on their own lines (``records.training_text``), or, for a chat record and a model
with a chat template, the template's rendering of its messages; the last ``context_chars``
characters of it. A plain text file is one record: its context runs across lines. The
**terminator** is the character that really follows the value there (``None`` at the very end
of the rendering). docs/method.md, "Real secrets in the data".
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import records
from ..data.corpus import iter_lines
from ..errors import AuditError
from ..files import sha256_file
from ..progress import Progress
from .secrets import Hit, derive_format, detect

ChatRenderer = Callable[[list[dict[str, Any]]], str]


@dataclass
class Location:
    record: int | None  # 1-based record number (None: a plain text file)
    message: int | None  # chat: 0-based message index
    line: int  # 1-based line: in the record's text (a text file: in the file)
    column: int  # 0-based character offset in that line
    offset: int  # 0-based character offset in the record's text (a text file: in its line)

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "message": self.message,
            "line": self.line,
            "column": self.column,
            "offset": self.offset,
        }


@dataclass
class Finding:
    """One distinct value of one kind, wherever it occurs. ``value`` is the raw secret: only
    the report's renderers decide what of it is shown."""

    kind: str
    value: str
    format: str | None
    occurrences: int = 0
    locations: list[Location] = field(default_factory=list)
    context: str = ""  # the first occurrence's context (bounded window; "" = at the record's start)
    terminator: str | None = None  # the character after the first occurrence, as trained
    chat_template: bool = False  # the context was rendered with the model's chat template
    source: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.value.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ScanInput:
    corpus: Path
    corpus_format: str | None = None
    text_field: str | None = None
    text_column: str | None = None
    context_chars: int = 256
    max_locations: int = 100
    max_findings: int = 100_000
    credentials: bool = True

    def check(self) -> None:
        if self.context_chars < 1:
            raise AuditError("--context-chars must be at least 1")
        if self.max_locations < 1:
            raise AuditError("--max-locations must be at least 1")


@dataclass
class Collected:
    findings: list[Finding]
    corpus: dict[str, Any]  # path, format, sha256, records, characters
    dropped: int  # occurrences of new values left out past max_findings


@dataclass
class _Unit:
    """One text to scan: its record, message index, the training text before it in the record
    (already bounded), and where its own text sits in the line numbering."""

    record: int | None
    message: int | None
    text: str
    before: str
    first_line: int
    after: str | None  # the character after the text in the record as trained


def _chat_units(rec: records.Record, n: int, spec: records.Spec, render: ChatRenderer | None, window: int):
    msgs = rec.extra["obj"][spec.field]
    rendered = render([{"role": m.get("role", "user"), "content": m["content"]} for m in msgs]) if render else None
    if rendered is not None:
        cursor, spans = 0, []
        for t in rec.texts:
            at = rendered.find(t, cursor)
            if at < 0:
                spans = None
                break
            spans.append(at)
            cursor = at + len(t)
        if spans is not None:
            for k, (t, at) in enumerate(zip(rec.texts, spans)):
                end = at + len(t)
                yield (
                    _Unit(
                        n, k, t, rendered[max(0, at - window) : at], 1, rendered[end] if end < len(rendered) else None
                    ),
                    True,
                )
            return
    yield from ((u, False) for u in _plain_units(rec.texts, n, True, window))


def _plain_units(texts: list[str], n: int, chat: bool, window: int) -> Iterator[_Unit]:
    before = ""
    for k, t in enumerate(texts):
        yield _Unit(n, k if chat else None, t, before[-window:], 1, None if t.endswith("\n") else "\n")
        before = (before + t + ("" if t.endswith("\n") else "\n"))[-window:]


def _units(inp: ScanInput, spec: records.Spec | None, render: ChatRenderer | None) -> Iterator[tuple[_Unit, bool]]:
    window = inp.context_chars
    if spec is None:  # a plain text file: one record, read line by line
        before = ""
        for ln, line in enumerate(iter_lines(inp.corpus), 1):
            yield _Unit(None, None, line, before, ln, "\n"), False
            before = (before + line + "\n")[-window:]
        return
    for n, rec in enumerate(records.iter_records(inp.corpus, spec), 1):
        if not rec.texts:
            continue  # a table's header
        if spec.chat:
            yield from _chat_units(rec, n, spec, render, window)
        else:
            yield from ((u, False) for u in _plain_units(rec.texts, n, False, window))


def _location(u: _Unit, text: str, at: int) -> Location:
    line = text.count("\n", 0, at)
    col = at - (text.rfind("\n", 0, at) + 1)
    if u.record is None:
        return Location(None, None, u.first_line, col, at)
    return Location(u.record, u.message, 1 + line, col, at)


BATCH_CHARS = 1 << 16  # texts are scanned ~64K characters at a time: one detector call per batch, not per record


def _detect_batch(batch: list[tuple[_Unit, bool]], credentials: bool) -> Iterator[tuple[_Unit, bool, Hit]]:
    """The hits of every text of the batch, found in one pass over the texts joined by line
    breaks (each detector is called once per batch: records are short and the calls' overhead
    dominated). A hit is mapped back to its text; one that would span two texts is dropped, so
    the hits are those of scanning each text alone (up to a look-around at a text's edge, where a
    line break stands in either way)."""
    if not batch:
        return
    starts, pos = [], 0
    for u, _ in batch:
        starts.append(pos)
        pos += len(u.text) + 1
    joined = "\n".join(u.text for u, _ in batch)
    for h in detect(joined, credentials=credentials):
        k = bisect.bisect_right(starts, h.start) - 1
        u, templated = batch[k]
        at = h.start - starts[k]
        if at + len(h.value) <= len(u.text):
            yield u, templated, Hit(h.kind, h.value, at, h.source)


def collect(inp: ScanInput, *, render: ChatRenderer | None = None, quiet: bool = True) -> Collected:
    """Scan the corpus (docs/scan.md); ``render`` is the model's chat template, if it has one."""
    inp.check()
    path = Path(inp.corpus)
    if not path.exists():
        raise AuditError(f"corpus {path} does not exist")
    fmt = records.detect_format(path, inp.corpus_format)
    spec = None
    if fmt != "txt":
        spec = records.make_spec(path, fmt, inp.text_field, inp.text_column, None)
        spec = records.detect_chat(path, spec)
    found: dict[tuple[str, str], Finding] = {}
    stats = {"dropped": 0, "units": 0, "chars": 0, "last_record": 0}
    batch: list[tuple[_Unit, bool]] = []
    size = path.stat().st_size if path.is_file() else None

    def flush() -> None:
        for u, templated, h in _detect_batch(batch, inp.credentials):
            key = (h.kind, h.value)
            f = found.get(key)
            if f is None:
                if len(found) >= inp.max_findings:
                    stats["dropped"] += 1
                    continue
                f = found[key] = _new_finding(h, u, inp.context_chars, templated)
            f.occurrences += 1
            if len(f.locations) < inp.max_locations:
                f.locations.append(_location(u, u.text, h.start))
        batch.clear()

    with Progress(total=size, desc="scan", quiet=quiet, unit="B") as bar:
        held = 0
        for u, templated in _units(inp, spec, render):
            stats["units"] += 1
            stats["chars"] += len(u.text)
            stats["last_record"] = max(stats["last_record"], u.record or 0)
            bar.update(len(u.text.encode("utf-8")) + 1)
            batch.append((u, templated))
            held += len(u.text)
            if held >= BATCH_CHARS:
                flush()
                held = 0
        flush()
    dropped, units, chars, last_record = stats["dropped"], stats["units"], stats["chars"], stats["last_record"]
    corpus = {
        "path": str(path),
        "format": fmt if spec is None else spec.format,
        "chat": bool(spec and spec.chat),
        "sha256": records.folder_sha256(path) if path.is_dir() else sha256_file(path),
        "records": last_record if spec is not None else None,
        "texts": units,
        "characters": chars,
    }
    return Collected(sorted(found.values(), key=lambda f: (f.kind, f.sha256)), corpus, dropped)


def _new_finding(h: Hit, u: _Unit, window: int, templated: bool) -> Finding:
    end = h.start + len(h.value)
    context = (u.before + u.text[: h.start])[-window:]
    terminator = u.text[end] if end < len(u.text) else u.after
    return Finding(
        kind=h.kind,
        value=h.value,
        format=derive_format(h.kind, h.value),
        context=context,
        terminator=terminator,
        chat_template=templated,
        source=h.source,
    )
