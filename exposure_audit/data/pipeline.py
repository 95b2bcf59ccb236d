"""Preparing a run: ``insert_folder`` (plant canaries, write the data folder and its manifest)
and ``load_sweep`` (a sweep config: the base audit config and one config per run).

Training is in ``train.py``; measuring, extraction, the audit and sweeps in ``audit.py``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import AuditConfig, InsertConfig
from ..errors import AuditError
from ..files import sha256_file
from .corpus import DEFAULT_CORPUS, data_path, insert_canaries, insert_records
from .formats import Format
from .manifest import Canary, Manifest


def insert_folder(
    folder: Path, corpus: str | Path | None, cfg: InsertConfig, seed: int, quiet: bool = True
) -> Manifest:
    """Write ``train.txt``, ``valid.txt`` and ``canaries.json`` into ``folder`` (a staging folder);
    for a corpus of records (JSONL, CSV/TSV, Parquet, a folder), train and valid in its format."""
    import os

    from ..progress import Progress
    from .records import detect_chat, make_spec

    folder = Path(folder)
    formats = [Format.parse(f) for f in cfg.formats]
    source = DEFAULT_CORPUS if corpus is None else Path(corpus)
    if source == DEFAULT_CORPUS:
        spec = make_spec("x.txt", cfg.corpus_format or "txt", cfg.text_field, cfg.text_column, cfg.placement)
        if spec.format != "txt":
            raise AuditError(f"the built-in corpus is plain text, not {spec.format}; pass --corpus")
    else:
        spec = make_spec(source, cfg.corpus_format, cfg.text_field, cfg.text_column, cfg.placement)
        if cfg.text_field is None:
            spec = detect_chat(source, spec)
    if spec.format != "txt":
        with Progress(total=None, desc="insert", quiet=quiet, unit="rec") as bar:
            result = insert_records(
                source,
                spec,
                data_path(folder, "train", spec),
                data_path(folder, "valid", spec),
                formats,
                schedule=cfg.schedule,
                per_count=cfg.per_count,
                seed=seed,
                valid_fraction=cfg.valid_fraction,
                progress=lambda _: bar.update(4096),
            )
        return _records_manifest(folder, source, spec, cfg, seed, result)
    size = os.path.getsize(source) if source != DEFAULT_CORPUS and Path(source).is_file() else None
    # two passes over the corpus (validate and count, then write): the bar counts both
    with Progress(total=2 * size if size else None, desc="insert", quiet=quiet or not size, unit="B") as bar:
        result = _insert(source, folder, formats, cfg, seed, bar.update)
    return _manifest(folder, source, _settings(cfg), seed, result)


def _insert(source, folder: Path, formats, cfg: InsertConfig, seed: int, progress):
    return insert_canaries(
        source,
        folder / "train.txt",
        folder / "valid.txt",
        formats,
        schedule=cfg.schedule,
        per_count=cfg.per_count,
        seed=seed,
        valid_fraction=cfg.valid_fraction,
        progress=progress,
    )


def _manifest(folder: Path, source, settings: dict[str, Any], seed: int, result, planted: bool = False) -> Manifest:
    manifest = Manifest(
        seed=seed,
        corpus={
            "source": "default (pydoc_data.topics)" if source == DEFAULT_CORPUS else str(source),
            "sha256": result.stats.sha256,
            "lines": result.stats.lines,
            "characters": result.stats.characters,
        },
        settings=settings,
        train={
            "file": "train.txt",
            "sha256": sha256_file(folder / "train.txt"),
            "lines": result.train_lines + sum(c.insertions for c in result.canaries),
        },
        valid={"file": "valid.txt", "sha256": sha256_file(folder / "valid.txt"), "lines": result.valid_lines},
        canaries=_canaries(
            result.canaries, [{"planted": c.insertions == 1} if planted else {} for c in result.canaries]
        ),
    )
    manifest.write(folder / "canaries.json")
    return manifest


def _canaries(planned: list[Any], extra: list[dict[str, Any]]) -> list[Canary]:
    """The manifest's canaries (ids c0, c1, ... padded to one width), each with its ``extra`` keys."""
    width = len(str(len(planned)))
    return [
        Canary(
            id=f"c{i:0{width}d}",
            format=c.format,
            secret=c.secret,
            text=c.text,
            insertions=c.insertions,
            positions=c.positions,
            **more,
        )
        for i, (c, more) in enumerate(zip(planned, extra))
    ]


def _settings(cfg: InsertConfig) -> dict[str, Any]:
    """The insert settings; the corpus-format keys only where set (text manifests stay as they were)."""
    optional = ("corpus_format", "text_field", "text_column", "placement")
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in optional or v is not None}


def _records_manifest(folder: Path, source: Path, spec, cfg: InsertConfig, seed: int, result) -> Manifest:
    from .records import data_sha256

    stats = result.stats
    train = data_path(folder, "train", spec)
    valid = data_path(folder, "valid", spec)
    corpus = {"source": str(source), "sha256": stats.sha256, "records": stats.records, "characters": stats.characters}
    if spec.format == "folder":
        corpus["files_skipped"] = stats.skipped  # binary or non-UTF-8 files, left out
    manifest = Manifest(
        seed=seed,
        corpus=corpus,
        settings=_settings(cfg),
        train={"file": train.name, "sha256": data_sha256(train), "records": result.train_records},
        valid={"file": valid.name, "sha256": data_sha256(valid), "records": result.valid_records},
        canaries=_canaries(result.canaries, [{"locations": locs} for locs in result.locations]),
        data=spec.to_manifest(),
    )
    manifest.write(folder / "canaries.json")
    return manifest


def plant_folder(
    folder: Path,
    corpus: str | Path | None,
    fmt: str,
    m: int,
    valid_fraction: float,
    seed: int,
    design: dict[str, Any] | None = None,
) -> Manifest:
    """dp-audit's data: ``m`` distinct secrets of ``fmt``, each planted exactly once with
    probability 1/2 (independently, from the seed), the rest never inserted. Only the manifest
    says which were planted (its ``planted`` flags); the training text alone does not."""
    import random

    from ..errors import AuditError
    from .corpus import draw_canaries

    f = Format.parse(fmt)
    if f.space_size < m:
        raise AuditError(f"audit.format {fmt!r} has only {f.space_size} secrets, fewer than audit.canaries = {m}")
    canaries = draw_canaries([f], [0], m, seed)
    coin = random.Random(f"exposure-audit:{seed}:planted")
    for c in canaries:
        c.insertions = int(coin.random() < 0.5)
    source = DEFAULT_CORPUS if corpus is None else Path(corpus)
    result = insert_canaries(
        source,
        folder / "train.txt",
        folder / "valid.txt",
        [f],
        seed=seed,
        valid_fraction=valid_fraction,
        canaries=canaries,
    )
    # ``design``: the canary design (canary_design.Design.to_json), which training reads back
    audit = {"format": fmt, "canaries": m, "probability": 0.5, **(design or {})}
    settings = {"dp_audit": audit, "valid_fraction": valid_fraction}
    return _manifest(folder, source, settings, seed, result, planted=True)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_sweep(path: str | Path) -> tuple[AuditConfig, list[tuple[str, AuditConfig]]]:
    """A sweep config: an audit config plus ``runs``, each ``{name, <overrides>}``.

    Runs share the insertion, so they may not override ``seed``, ``corpus`` or ``insert``."""
    import yaml

    from ..config import config_from_dict, load_config
    from ..errors import AuditError

    load_config_text = Path(path)
    base_cfg = None
    try:
        raw = yaml.safe_load(load_config_text.read_text(encoding="utf-8")) if load_config_text.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict) or "runs" not in raw:
        if raw is None:
            load_config(path)  # raises the precise error (missing, folder, bad YAML)
        raise AuditError(f"sweep config {path}: needs a 'runs' list of {{name: ..., overrides}}")
    runs_raw = raw.pop("runs")
    base_cfg = config_from_dict(raw, str(path))
    if not isinstance(runs_raw, list) or not runs_raw:
        raise AuditError(f"sweep config {path}: 'runs' must be a non-empty list")
    runs: list[tuple[str, AuditConfig]] = []
    for i, run in enumerate(runs_raw):
        if not isinstance(run, dict) or not isinstance(run.get("name"), str) or not run["name"].strip():
            raise AuditError(f"sweep config {path}: runs[{i}] needs a name")
        name = run["name"]
        if not all(c.isalnum() or c in "-_." for c in name) or name in ("data",) or name.startswith("."):
            raise AuditError(f"sweep config {path}: run name {name!r} must be letters, digits, '-', '_' or '.'")
        over = {k: v for k, v in run.items() if k != "name"}
        shared = {"seed", "corpus", "insert"} & set(over)
        if shared:
            raise AuditError(f"sweep config {path}: run {name!r} overrides {sorted(shared)}, which all runs share")
        runs.append((name, config_from_dict(_merge(base_cfg.to_dict(), over), f"{path} (run {name})")))
    names = [n for n, _ in runs]
    if len(set(names)) != len(names):
        raise AuditError(f"sweep config {path}: run names must be distinct")
    return base_cfg, runs
