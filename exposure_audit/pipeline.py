"""The pipeline steps as library functions that write folders: insert, train, measure, audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .config import AuditConfig, InsertConfig
from .corpus import DEFAULT_CORPUS, insert_canaries
from .files import sha256_file
from .formats import Format
from .manifest import Canary, Manifest


def insert_folder(folder: Path, corpus: str | Path | None, cfg: InsertConfig, seed: int) -> Manifest:
    """Write ``train.txt``, ``valid.txt`` and ``canaries.json`` into ``folder`` (a staging folder)."""
    folder = Path(folder)
    formats = [Format.parse(f) for f in cfg.formats]
    source = DEFAULT_CORPUS if corpus is None else Path(corpus)
    result = insert_canaries(
        source,
        folder / "train.txt",
        folder / "valid.txt",
        formats,
        schedule=cfg.schedule,
        per_count=cfg.per_count,
        seed=seed,
        valid_fraction=cfg.valid_fraction,
    )
    width = len(str(len(result.canaries)))
    manifest = Manifest(
        seed=seed,
        corpus={
            "source": "default (pydoc_data.topics)" if source == DEFAULT_CORPUS else str(source),
            "sha256": result.stats.sha256,
            "lines": result.stats.lines,
            "characters": result.stats.characters,
        },
        settings=dataclasses.asdict(cfg),
        train={"file": "train.txt", "sha256": sha256_file(folder / "train.txt"), "lines": result.train_lines + sum(c.insertions for c in result.canaries)},
        valid={"file": "valid.txt", "sha256": sha256_file(folder / "valid.txt"), "lines": result.valid_lines},
        canaries=[
            Canary(
                id=f"c{i:0{width}d}",
                format=c.format,
                secret=c.secret,
                text=c.text,
                insertions=c.insertions,
                positions=c.positions,
            )
            for i, c in enumerate(result.canaries)
        ],
    )
    manifest.write(folder / "canaries.json")
    return manifest


def config_summary(cfg: AuditConfig) -> dict[str, Any]:
    return cfg.to_dict()
