"""Corpora of records in the user's own format: JSONL, CSV/TSV, Parquet and folders of text files.

A record is one JSONL line, one table row or one file of a folder; its text is one string
(the text field or column, a file's content) or, for chat JSONL (``messages``), one string per
message. Readers stream record by record, so memory holds one record (one file, for a folder;
one batch of rows, for Parquet) whatever the corpus's size. Writers write records back in the
same format: untouched JSONL records byte for byte, table rows through the same module that
read them, files under their own relative paths.

Plain text files (``txt``) are not records: ``corpus.py`` keeps today's line-by-line path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError

FORMATS = ("txt", "folder", "jsonl", "csv", "tsv", "parquet")
RECORD_FORMATS = ("folder", "jsonl", "csv", "tsv", "parquet")
PLACEMENTS = ("record", "line")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
OUTPUT_NAMES = {
    "txt": "{}.txt",
    "jsonl": "{}.jsonl",
    "csv": "{}.csv",
    "tsv": "{}.tsv",
    "parquet": "{}.parquet",
    "folder": "{}",
}
CHAT_FIELD = "messages"


@dataclass(frozen=True)
class Spec:
    """How a corpus is read: its format, the field or column holding the text, where canaries go."""

    format: str
    field: str | None = None  # JSONL: the text field ("messages": chat)
    column: str | None = None  # CSV/TSV/Parquet: the text column
    placement: str = "line"

    @property
    def chat(self) -> bool:
        return self.format == "jsonl" and self.field == CHAT_FIELD

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``data`` entry (``insert`` writes it; :meth:`from_manifest` reads it)."""
        out: dict[str, Any] = {"format": self.format}
        if self.field is not None:
            out["field"] = self.field
        if self.column is not None:
            out["column"] = self.column
        out["placement"] = self.placement
        return out

    @classmethod
    def from_manifest(cls, data: dict[str, Any] | None) -> Spec:
        """How to read an insert folder's data files, from its manifest's ``data`` entry: plain
        text (``txt``) where there is none (a text corpus's manifest has no ``data``)."""
        if not data:
            return cls(format="txt")
        return cls(
            format=data["format"],
            field=data.get("field"),
            column=data.get("column"),
            placement=data.get("placement", "line"),
        )


def detect_format(source: str | Path, given: str | None) -> str:
    """``given`` if set, else from the path: a folder, or the extension (anything else is text)."""
    if given is not None:
        if given not in FORMATS:
            raise AuditError(f"corpus format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    path = Path(source)
    if path.is_dir():
        return "folder"
    return _EXTENSIONS.get(path.suffix.lower(), "txt")


def make_spec(
    source: str | Path, fmt: str | None, field: str | None, column: str | None, placement: str | None
) -> Spec:
    """Check the options against the format (``--text-field`` only for JSONL, and so on)."""
    fmt = detect_format(source, fmt)
    if field is not None and fmt != "jsonl":
        raise AuditError(f"--text-field applies to JSONL corpora; this corpus is {fmt} (use --text-column for tables)")
    if column is not None and fmt not in ("csv", "tsv", "parquet"):
        raise AuditError(f"--text-column applies to CSV, TSV and Parquet corpora; this corpus is {fmt}")
    if placement is not None and placement not in PLACEMENTS:
        raise AuditError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
    if fmt in ("txt", "folder"):
        if placement == "record":
            raise AuditError(f"--placement record needs records (JSONL, CSV, TSV, Parquet); a {fmt} corpus takes line")
        return Spec(format=fmt, placement="line")
    if fmt == "jsonl":
        return Spec(format=fmt, field=field or "text", placement=placement or "record")
    return Spec(format=fmt, column=column or "text", placement=placement or "record")


def detect_chat(source: Path, spec: Spec) -> Spec:
    """With no ``--text-field``: a JSONL corpus whose first record has ``messages`` but no
    ``text`` is read as chat."""
    if spec.format != "jsonl" or spec.field != "text":
        return spec
    try:
        with open(source, "rb") as fh:
            for raw in fh:
                if raw.strip():
                    obj = json.loads(raw)
                    if isinstance(obj, dict) and "text" not in obj and isinstance(obj.get(CHAT_FIELD), list):
                        return Spec(format="jsonl", field=CHAT_FIELD, placement=spec.placement)
                    break
    except (OSError, ValueError):
        pass  # the reader reports it, with the line number
    return spec


@dataclass
class Record:
    """One record: its texts (one, or one per chat message) and what its writer needs to copy it."""

    texts: list[str]
    raw: Any = None  # JSONL: the line's bytes; CSV: the row; Parquet: the row dict; folder: the relative path
    where: str = ""  # "line 12", "row 3", "file a/b.txt": for error messages
    extra: dict[str, Any] = field(default_factory=dict)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _decode(raw: bytes, what: str) -> str:
    if b"\0" in raw:
        raise AuditError(f"{what} looks binary: NUL byte")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"{what} is not UTF-8: invalid byte at offset {e.start}") from None


def open_file(path: Path, what: str) -> Any:
    """A corpus file opened for reading bytes, or a one-line error saying why it cannot be."""
    if not path.exists():
        raise AuditError(f"{what} {path} does not exist")
    if path.is_dir():
        raise AuditError(f"{what} {path} is a folder; give --corpus-format folder or a file")
    try:
        return open(path, "rb")
    except OSError as e:
        raise AuditError(f"cannot read {what} {path}: {e.strerror or e}") from None


# ---------------------------------------------------------------- writers


class _Writer(ABC):
    """Writes records back in a corpus's format, and says where each planted canary went.

    ``copy`` writes a record as read, ``changed`` with new texts (canary lines inserted),
    ``canary`` a canary as a record of its own; the locations are the manifest's
    ``locations`` entries (``record``: the index in the training output)."""

    @abstractmethod
    def copy(self, rec: Record) -> None: ...

    @abstractmethod
    def changed(self, rec: Record, texts: list[str]) -> None: ...

    @abstractmethod
    def _write_canary(self, text: str) -> None: ...

    def location(self, index: int, rec: Record, message: int, line: int) -> dict[str, Any]:
        """Where a canary line inserted at ``line`` of text ``message`` of record ``rec`` went."""
        return {"record": index, "line": line}

    def canary(self, text: str, index: int) -> dict[str, Any]:
        """Write a canary as record ``index`` of its own; its location."""
        self._write_canary(text)
        return {"record": index, "line": 0}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------- JSONL


def _jsonl_texts(obj: Any, spec: Spec, where: str) -> list[str]:
    if not isinstance(obj, dict):
        raise AuditError(f"{where}: a JSON {_type_name(obj).split()[-1]}, not an object")
    if spec.field not in obj:
        raise AuditError(f"{where}: no field {spec.field!r} (fields: {', '.join(map(str, obj)) or 'none'})")
    value = obj[spec.field]
    if not spec.chat:
        if not isinstance(value, str):
            raise AuditError(f"{where}: field {spec.field!r} is {_type_name(value)}, not a string")
        return [value]
    if not isinstance(value, list) or not value:
        raise AuditError(f"{where}: field {spec.field!r} is {_type_name(value)}, not a non-empty list of messages")
    texts = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise AuditError(f"{where}: message {k} has no string 'content'")
        texts.append(m["content"])
    return texts


def _jsonl_records(path: Path, spec: Spec, digest, parse: bool = True) -> Iterator[Record]:
    with open_file(path, "corpus") as fh:
        if not parse:  # a second pass over records already checked: the raw lines are enough
            for raw in fh:
                if raw.strip():
                    yield Record(texts=[], raw=raw)
            return
        for n, raw in enumerate(fh, 1):
            if digest is not None:
                digest.update(raw)
            where = f"corpus {path} line {n}"
            text = _decode(raw, where)
            if not text.strip():
                continue  # blank lines separate nothing in JSONL; they are not records
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise AuditError(f"{where} is not JSON ({e.msg}, column {e.colno})") from None
            yield Record(texts=_jsonl_texts(obj, spec, where), raw=raw, where=where, extra={"obj": obj})


class _JsonlWriter(_Writer):
    def __init__(self, path: Path, spec: Spec):
        self.fh = open(path, "wb")
        self.spec = spec

    def copy(self, rec: Record) -> None:
        raw = rec.raw
        self.fh.write(raw if raw.endswith(b"\n") else raw + b"\n")

    def changed(self, rec: Record, texts: list[str]) -> None:
        obj = rec.extra["obj"]
        if self.spec.chat:
            obj[self.spec.field] = [{**m, "content": t} for m, t in zip(obj[self.spec.field], texts)]
        else:
            obj[self.spec.field] = texts[0]
        self.fh.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")

    def location(self, index: int, rec: Record, message: int, line: int) -> dict[str, Any]:
        if self.spec.chat:  # a conversation: which message the line went into
            return {"record": index, "message": message, "line": line}
        return super().location(index, rec, message, line)

    def _write_canary(self, text: str) -> None:
        obj: Any = [{"role": "user", "content": text}] if self.spec.chat else text
        self.fh.write(json.dumps({self.spec.field: obj}, ensure_ascii=False).encode("utf-8") + b"\n")

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------- CSV / TSV


def _delimiter(spec: Spec) -> str:
    return "\t" if spec.format == "tsv" else ","


def _csv_records(path: Path, spec: Spec, digest) -> Iterator[Record]:
    with open_file(path, "corpus") as raw_fh:
        csv.field_size_limit(1 << 30)  # documents in a cell may be long (the default limit is 128 KB)
        text_fh = io.TextIOWrapper(raw_fh, encoding="utf-8", errors="strict", newline="")
        reader = csv.reader(text_fh, delimiter=_delimiter(spec))
        try:
            header = next(reader, None)
            if header is None:
                raise AuditError(f"corpus {path} is empty")
            if spec.column not in header:
                raise AuditError(f"corpus {path}: no column {spec.column!r} (columns: {', '.join(header)})")
            col = header.index(spec.column)
            yield Record(texts=[], raw=header, where="header", extra={"header": True})
            for n, row in enumerate(reader, 1):
                where = f"corpus {path} row {n} (line {reader.line_num})"
                if len(row) != len(header):
                    raise AuditError(f"{where}: {len(row)} fields, the header has {len(header)}")
                if any("\0" in cell for cell in row):
                    raise AuditError(f"{where} looks binary: NUL character")
                yield Record(texts=[row[col]], raw=row, where=where, extra={"col": col})
        except UnicodeDecodeError as e:
            raise AuditError(f"corpus {path} is not UTF-8 (near line {reader.line_num + 1}, byte {e.start})") from None
        except csv.Error as e:
            raise AuditError(f"corpus {path} line {reader.line_num}: not valid {spec.format.upper()} ({e})") from None


class _CsvWriter(_Writer):
    def __init__(self, path: Path, spec: Spec):
        self.fh = open(path, "w", encoding="utf-8", newline="")
        self.writer = csv.writer(self.fh, delimiter=_delimiter(spec), lineterminator="\n")
        self.header: list[str] | None = None
        self.col = 0
        self.spec = spec

    def copy(self, rec: Record) -> None:
        if rec.extra.get("header"):
            self.header = rec.raw
            self.col = rec.raw.index(self.spec.column)
        self.writer.writerow(rec.raw)

    def changed(self, rec: Record, texts: list[str]) -> None:
        row = list(rec.raw)
        row[rec.extra["col"]] = texts[0]
        self.writer.writerow(row)

    def _write_canary(self, text: str) -> None:
        assert self.header is not None
        row = [""] * len(self.header)
        row[self.col] = text
        self.writer.writerow(row)

    def close(self) -> None:
        self.fh.close()


# ---------------------------------------------------------------- Parquet


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise AuditError(
            "Parquet corpora need pyarrow: pip install 'exposure-audit[parquet]' (or convert to JSONL or CSV)"
        ) from None
    return pq


def _parquet_records(path: Path, spec: Spec, digest) -> Iterator[Record]:
    pq = _pyarrow()
    if not path.exists():
        raise AuditError(f"corpus {path} does not exist")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid and OSError subclasses
        raise AuditError(f"corpus {path} is not a Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if spec.column not in names:
        raise AuditError(f"corpus {path}: no column {spec.column!r} (columns: {', '.join(names)})")
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            where = f"corpus {path} row {n}"
            value = row[spec.column]
            if not isinstance(value, str):
                raise AuditError(f"{where}: column {spec.column!r} is {_type_name(value)}, not a string")
            yield Record(texts=[value], raw=row, where=where)


class _ParquetWriter(_Writer):
    def __init__(self, path: Path, spec: Spec, schema: Any):
        import pyarrow as pa

        pq = _pyarrow()
        self.pa = pa
        self.schema = schema
        self.writer = pq.ParquetWriter(path, schema)
        self.rows: list[dict[str, Any]] = []
        self.spec = spec

    def _add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= 4096:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def copy(self, rec: Record) -> None:
        self._add(rec.raw)

    def changed(self, rec: Record, texts: list[str]) -> None:
        self._add({**rec.raw, self.spec.column: texts[0]})

    def _write_canary(self, text: str) -> None:
        self._add({name: (text if name == self.spec.column else None) for name in self.schema.names})

    def close(self) -> None:
        self._flush()
        self.writer.close()


# ---------------------------------------------------------------- folders


def folder_files(root: Path) -> list[Path]:
    """Every file under ``root`` (hidden names left out), in order of their relative paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _folder_records(root: Path, spec: Spec, digest) -> Iterator[Record]:
    if not root.is_dir():
        raise AuditError(f"corpus {root} is not a folder")
    files = folder_files(root)
    if not files:
        raise AuditError(f"corpus folder {root} is empty")
    texts = 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        try:
            text = _decode(data, rel)
        except AuditError:
            continue  # not a text file: left out (the manifest counts them)
        texts += 1
        if digest is not None:
            digest.update(rel.encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
        yield Record(texts=[text], raw=rel, where=f"corpus {root} file {rel}")
    if not texts:
        raise AuditError(f"corpus folder {root} holds no UTF-8 text files ({len(files)} binary or non-UTF-8 files)")


class _FolderWriter(_Writer):
    def __init__(self, path: Path, spec: Spec, source: Path):
        path.mkdir()
        self.root = path
        self.source = source

    def _write(self, rel: str, text: str) -> None:
        out = self.root / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(text.encode("utf-8"))

    def copy(self, rec: Record) -> None:
        self._write(rec.raw, rec.texts[0])

    def changed(self, rec: Record, texts: list[str]) -> None:
        self._write(rec.raw, texts[0])

    def location(self, index: int, rec: Record, message: int, line: int) -> dict[str, Any]:
        return {"record": index, "file": rec.raw, "line": line}  # the file's relative path

    def _write_canary(self, text: str) -> None:  # pragma: no cover - make_spec allows only line placement
        raise AssertionError("folders take canaries at line boundaries")


# ---------------------------------------------------------------- dispatch


def iter_records(source: Path, spec: Spec, digest=None, parse: bool = True) -> Iterator[Record]:
    """The records of a corpus, validated as they stream. ``digest`` (JSONL, folders) is updated
    with what identifies the corpus; tables are hashed as files by the caller. ``parse=False``
    (JSONL): records without their texts, for a pass that only copies records already checked."""
    source = Path(source)
    if spec.format == "jsonl":
        return _jsonl_records(source, spec, digest, parse)
    if spec.format in ("csv", "tsv"):
        return _csv_records(source, spec, digest)
    if spec.format == "parquet":
        return _parquet_records(source, spec, digest)
    if spec.format == "folder":
        return _folder_records(source, spec, digest)
    raise AssertionError(spec.format)


def open_writer(path: Path, spec: Spec, source: Path) -> _Writer:
    if spec.format == "jsonl":
        return _JsonlWriter(path, spec)
    if spec.format in ("csv", "tsv"):
        return _CsvWriter(path, spec)
    if spec.format == "parquet":
        return _ParquetWriter(path, spec, _pyarrow().ParquetFile(source).schema_arrow)
    if spec.format == "folder":
        return _FolderWriter(path, spec, source)
    raise AssertionError(spec.format)


def split_lines(text: str) -> tuple[list[str], bool]:
    """A text's lines and whether it ended with a line break (kept when lines are inserted)."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":
        lines.pop()
        return lines, True
    return lines, False


def line_boundaries(texts: list[str]) -> int:
    """Places a canary line can go inside a record: before each line of each text, and after its last."""
    return sum(len(split_lines(t)[0]) + 1 for t in texts)


def training_text(texts: list[str]) -> str:
    """A record's contribution to the training text: each text on its own lines."""
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts)


def output_path(folder: Path, which: str, fmt: str) -> Path:
    return Path(folder) / OUTPUT_NAMES[fmt].format(which)


def folder_sha256(root: Path) -> str:
    """A folder's identity: SHA-256 over (relative path, SHA-256 of content) of its files, in order."""
    h = hashlib.sha256()
    for path in folder_files(root):
        data = path.read_bytes()
        h.update(path.relative_to(root).as_posix().encode("utf-8") + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def data_sha256(path: Path) -> str:
    from ..files import sha256_file

    return folder_sha256(path) if Path(path).is_dir() else sha256_file(path)


def iter_text_pieces(path: Path, spec: Spec, what: str) -> Iterator[str]:
    """The training text of a data file written by ``insert``, about 1 MB a piece."""
    buf: list[str] = []
    size = 0
    if spec.format == "folder" and path.is_dir() and not folder_files(path):
        return  # an empty validation folder: no text
    try:
        for rec in iter_records(path, spec):
            if not rec.texts:
                continue
            piece = training_text(rec.texts)
            buf.append(piece)
            size += len(piece)
            if size >= 1 << 20:
                yield "".join(buf)
                buf, size = [], 0
    except AuditError as e:
        raise AuditError(f"{what}: {e}") from None
    if buf:
        yield "".join(buf)
