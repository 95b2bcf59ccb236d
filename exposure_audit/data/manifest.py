"""The canaries manifest (``canaries.json``): what was planted where, checked on load.

The file carries a schema version and a SHA-256 of its canonical content, so a truncated or
hand-edited manifest is refused rather than silently measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..files import atomic_write_json, canonical_sha256, read_json
from .formats import Format

SCHEMA = 1
KIND = "exposure-audit/canaries"


@dataclass
class Canary:
    """A planted secret, from the draw (``corpus.draw_canaries``) through the manifest to
    ``measure`` (whose results point to it) and extraction."""

    id: str | None  # c0, c1, ... in a manifest; None while only drawn, or as handed to measure without one
    format: str
    secret: str  # the hole characters, concatenated
    text: str  # the canary line as inserted (format with the secret filled in)
    insertions: int
    positions: list[int] = field(default_factory=list)  # 0-based line numbers in train.txt (records: record index)
    # records only: where each insertion went, {"record", "line"} (+ "message" for chat), optional on read
    locations: list[dict[str, Any]] | None = None
    # dp-audit: whether this canary was planted (drawn with probability 1/2). None in manifests
    # of plain insertions, and then absent from the JSON, so older manifests read (and hash) as before.
    planted: bool | None = None

    @property
    def fmt(self) -> Format:
        return Format.parse(self.format)

    @property
    def space_size(self) -> int:
        return self.fmt.space_size

    @classmethod
    def of(cls, c: Any) -> Canary:
        """``c`` itself, or a Canary of anything with a ``format``, ``secret`` and ``insertions``
        (and an ``id``): what ``measure`` accepts."""
        if isinstance(c, Canary):
            return c
        fmt = Format.parse(c.format)
        return cls(
            id=getattr(c, "id", None),
            format=c.format,
            secret=c.secret,
            text=fmt.render(c.secret),
            insertions=c.insertions,
        )


@dataclass
class Manifest:
    seed: int
    corpus: dict[str, Any]
    settings: dict[str, Any]
    train: dict[str, Any]
    valid: dict[str, Any]
    canaries: list[Canary]
    # corpora of records only: {"format", "field" | "column", "placement", "train", "valid", ...};
    # absent for plain text, so manifests of text corpora are as before and older files read as text
    data: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        body = {
            "schema": SCHEMA,
            "kind": KIND,
            "seed": self.seed,
            "corpus": self.corpus,
            "settings": self.settings,
            "train": self.train,
            "valid": self.valid,
            "canaries": [_canary_json(c) for c in self.canaries],
        }
        if self.data is not None:
            body["data"] = self.data
        return {**body, "sha256": canonical_sha256(body)}

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_json(read_json(path, "manifest"), str(path))

    @classmethod
    def from_json(cls, data: Any, where: str = "manifest") -> Manifest:
        def bad(msg: str) -> AuditError:
            return AuditError(f"manifest {where}: {msg}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("kind") != KIND:
            raise bad('not an exposure-audit canaries file (no "kind": "exposure-audit/canaries")')
        if data.get("schema") != SCHEMA:
            raise bad(f"schema {data.get('schema')!r} is not supported (this version reads schema {SCHEMA})")
        body = {k: v for k, v in data.items() if k != "sha256"}
        if data.get("sha256") != canonical_sha256(body):
            raise bad("content does not match its sha256 (the file was edited or damaged)")
        for key, typ in (
            ("seed", int),
            ("corpus", dict),
            ("settings", dict),
            ("train", dict),
            ("valid", dict),
            ("canaries", list),
        ):
            if not isinstance(data.get(key), typ) or isinstance(data.get(key), bool):
                raise bad(f"key {key!r} missing or not a {typ.__name__}")
        canaries: list[Canary] = []
        seen: set[str] = set()
        for i, raw in enumerate(data["canaries"]):
            if not isinstance(raw, dict):
                raise bad(f"canary {i} is not an object")
            try:
                c = Canary(
                    id=_typed(raw, "id", str),
                    format=_typed(raw, "format", str),
                    secret=_typed(raw, "secret", str),
                    text=_typed(raw, "text", str),
                    insertions=_typed(raw, "insertions", int),
                    positions=_typed(raw, "positions", list),
                    locations=_typed(raw, "locations", list) if "locations" in raw else None,
                    planted=raw.get("planted"),
                )
            except KeyError as e:
                raise bad(f"canary {i}: {e.args[0]}") from None
            fmt = Format.parse(c.format)
            if fmt.render(c.secret) != c.text:
                raise bad(f"canary {c.id}: text does not match its format and secret")
            if raw.get("space_size") != str(fmt.space_size):
                raise bad(f"canary {c.id}: space_size does not match its format")
            if c.locations is not None and (
                len(c.locations) != c.insertions or not all(isinstance(loc, dict) for loc in c.locations)
            ):
                raise bad(f"canary {c.id}: locations do not match its {c.insertions} insertions")
            if c.insertions < 0 or len(c.positions) != c.insertions:
                raise bad(f"canary {c.id}: {len(c.positions)} positions for {c.insertions} insertions")
            if c.planted is not None and (not isinstance(c.planted, bool) or c.insertions != int(c.planted)):
                raise bad(f"canary {c.id}: 'planted' must be true (inserted once) or false (never inserted)")
            if c.id in seen:
                raise bad(f"canary id {c.id} appears twice")
            seen.add(c.id)
            canaries.append(c)
        if not canaries:
            raise bad("holds no canaries")
        data_entry = data.get("data")
        if data_entry is not None and not (isinstance(data_entry, dict) and isinstance(data_entry.get("format"), str)):
            raise bad("key 'data' is not an object with a 'format'")
        return cls(
            seed=data["seed"],
            corpus=data["corpus"],
            settings=data["settings"],
            train=data["train"],
            valid=data["valid"],
            canaries=canaries,
            data=data_entry,
        )


def _canary_json(c: Canary) -> dict[str, Any]:
    out = {**asdict(c), "space_size": str(c.space_size)}
    for key in ("locations", "planted"):  # optional keys: absent when unset, so older manifests hash as before
        if out[key] is None:
            del out[key]
    return out


def _typed(raw: dict[str, Any], key: str, typ: type) -> Any:
    value = raw.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise KeyError(f"key {key!r} missing or not a {typ.__name__}")
    return value
