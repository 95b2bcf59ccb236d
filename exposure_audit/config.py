"""YAML config <-> dataclasses, checked against the dataclasses as a schema.

An unknown key, a wrong type or an out-of-range value is an :class:`AuditError` that names
the key (``train.epochs``) and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import AuditError
from .exposure.options import ESTIMATORS, MeasureOptions, config_fields
from .memory import DEFAULT_MAX_MEMORY, parse_size
from .models import registry as model_kinds

# (min, max) bounds, inclusive unless noted, per "section.key" (or a field's metadata["range"]:
# model: and its kinds' sections are bounded so, in models/)
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, 2**63 - 1),
    "insert.per_count": (1, 100_000),
    "insert.valid_fraction": (0.0, 0.9),
    "train.epochs": (1, 100_000),
    "train.batch_size": (1, 65536),
    "train.seq_len": (2, 100_000),
    "train.learning_rate": (1e-9, 10.0),
    "train.weight_decay": (0.0, 10.0),
    "train.grad_clip": (0.0, 1e6),
    "train.max_chars": (1, None),
    "train.threads": (0, 1024),
    "train.checkpoint_every": (0, None),
    "measure.max_steps": (1, None),
    "measure.exact_budget": (0, None),
    "measure.samples": (10, 100_000_000),
    "measure.batch": (1, 1 << 20),
    "measure.confidence": (0.5, 0.999),
    "measure.bootstrap": (0, 100_000),
    "measure.fail_above": (0.0, None),
    "train.dp.noise_multiplier": (0.0, 1e4),
    "train.dp.target_epsilon": (1e-6, 1e6),
    "train.dp.delta": (1e-300, 0.5),
    "train.dp.max_grad_norm": (1e-9, 1e6),
    "train.track.every": (0, None),
    "train.track.samples": (10, 10_000_000),
    "train.track.max_steps": (1, None),
    "extract.top": (1, 1_000_000),
    "audit.canaries": (1, 10_000_000),
    "audit.fresh_tokens": (1, 1_000_000),
    "audit.canary_length": (1, 64),
    "extract.max_steps": (1, None),
    "memorization.records": (1, None),
    "memorization.prefix_tokens": (1, 100_000),
    "memorization.suffix_tokens": (1, 100_000),
    "memorization.k": (1e-9, 1.0),
    "memorization.top_k": (1, None),
    "memorization.fail_above_extractable": (0.0, 1.0),
    "memorization.fail_above_auc": (0.0, 1.0),
}


@dataclass
class InsertConfig:
    formats: list[str] = field(default_factory=lambda: ["the random number is {d:9}"])
    schedule: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16, 32])
    per_count: int = 2
    valid_fraction: float = 0.1
    # the corpus's format (None: from its extension, or a folder); see records.py
    corpus_format: str | None = None
    text_field: str | None = None  # JSONL: the field holding the text (default "text"; "messages": chat)
    text_column: str | None = None  # CSV/TSV/Parquet: the column holding the text (default "text")
    placement: str | None = None  # "record" (new records) or "line" (inside records); default by format


@dataclass
class DPConfig:
    """DP-SGD through Opacus (per-window gradient clipping + Gaussian noise, RDP accountant).

    Give ``noise_multiplier`` or ``target_epsilon`` (then the noise is solved for the schedule)."""

    enabled: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    # AUDITOR CHECK ONLY, never for real training: clip as usual but add NO noise, while the
    # checkpoint still records the epsilon the noise would have bought. A deliberately broken
    # DP-SGD that `dp-audit` must flag (configs/dp-audit-broken.yaml, tests).
    broken_no_noise: bool = False


@dataclass
class DPAuditConfig:
    """`dp-audit` (and `audit` with ``enabled``): an empirical epsilon lower bound from one run.

    ``canaries`` secrets of ``format`` are drawn; each is planted once with probability 1/2."""

    enabled: bool = False  # `audit` also runs the DP audit (into OUT/dp-audit/)
    canaries: int = 1000
    format: str = "the random number is {d:9}"
    confidence: float = 0.95
    delta: float | None = None  # None: train.dp.delta
    fail_if_violated: bool = False  # exit 1 when the lower bound exceeds the claim
    # canary design (exposure_audit/canary_design.py): random | new-token | new-char
    canary: str = "random"
    fresh_tokens: int | None = None  # new-token/new-char: fresh symbols (None: canaries x canary_length)
    canary_length: int = 1  # new-token/new-char: fresh symbols per canary
    one_window: bool | None = None  # each planted canary in its own training window (None: yes for designs)
    # what fills a canary's own window: "context" (the text before it) or "repeat" (the canary
    # line over and over: still one example, so the same per-window claim; a stronger signal)
    window_fill: str = "context"
    fresh_init: str = "random"  # new-token/new-char: "random" rows, or "alike" (all from one draw)


@dataclass
class TrackConfig:
    """Measure the canaries during training (exact where the budget allows, else estimated)."""

    enabled: bool = False
    every: int = 0  # steps between measurements (0 = only at epoch ends)
    samples: int = 2000
    max_steps: int = 2_000_000
    estimator: str = "importance"  # the same estimator as measure (see measure.estimator)
    max_memory: str = DEFAULT_MAX_MEMORY  # search state the measurements may hold ("4GB", "512MB")


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 32
    seq_len: int = 100
    learning_rate: float = 0.003
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # max gradient norm (0 = off)
    max_chars: int | None = None  # train on at most this many characters per epoch (None = all)
    threads: int = 0  # torch threads (0 = all cores)
    checkpoint_every: int = 200  # steps between resumable training states (0 = only at epoch ends)
    dp: DPConfig = field(default_factory=DPConfig)
    track: TrackConfig = field(default_factory=TrackConfig)


@dataclass
class ExtractConfig:
    """Extraction in `audit`: best-first search for each format's most likely secrets."""

    enabled: bool = True
    top: int = 10
    max_steps: int = 200_000
    max_memory: str = DEFAULT_MAX_MEMORY  # search state the extraction may hold


@dataclass
class MemorizationConfig:
    """`audit` also runs `memorization` on its own data and model (docs/memorization.md):
    discoverable and probabilistic extraction of training records, membership inference."""

    enabled: bool = False
    records: int | None = None  # member records drawn with the seed (None = all)
    prefix_tokens: int = 32
    suffix_tokens: int = 32
    k: float = 0.2  # min-k%
    temperature: float = 1.0  # the deployed sampler (probabilistic extraction)
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    fail_above_extractable: float | None = None  # exit 1 above this discoverable exact-match rate
    fail_above_auc: float | None = None  # exit 1 when any membership attack's AUC is above this


def __getattr__(name: str) -> Any:
    if name == "ModelConfig":  # model: -- its dataclass is the model registry's (each kind adds its section)
        return model_kinds.model_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _model_config() -> Any:
    return model_kinds.model_config_class()()


@dataclass
class AuditConfig:
    seed: int = 0
    corpus: str | None = None  # a UTF-8 file; None = the built-in default corpus
    insert: InsertConfig = field(default_factory=InsertConfig)
    model: Any = field(default_factory=_model_config, metadata={"schema": model_kinds.model_config_class})
    train: TrainConfig = field(default_factory=TrainConfig)
    # exposure/options.py; the API's max_memory None (a Scorer's own budget) is the default size here
    measure: MeasureOptions = field(default_factory=lambda: MeasureOptions(max_memory=DEFAULT_MAX_MEMORY))
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    audit: DPAuditConfig = field(default_factory=DPAuditConfig)
    memorization: MemorizationConfig = field(default_factory=MemorizationConfig)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)


def _as_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` over the config keys only (a section's per-run fields are not keys)."""
    return {
        f.name: _as_dict(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else copy.deepcopy(v)
        for f in config_fields(obj)
    }


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false"}.get(t, str(t))


def _check_value(value: Any, t: Any, key: str, bounds: tuple[Any, Any] | None = None) -> Any:
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, key, bounds)
    if origin is list:
        (inner,) = typing.get_args(t)
        if not isinstance(value, list):
            raise AuditError(f"{key}: expected a list, got {value!r}")
        if not value:
            raise AuditError(f"{key}: must not be empty")
        return [_check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AuditError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise AuditError(f"{key}: expected a finite number, got {value!r}")
    elif t is bool:
        if not isinstance(value, bool):
            raise AuditError(f"{key}: expected true or false, got {value!r}")
    elif t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AuditError(f"{key}: expected an integer, got {value!r}")
    elif t is str:
        if not isinstance(value, str):
            raise AuditError(f"{key}: expected text, got {value!r}")
    bounds = bounds or _BOUNDS.get(key.split("[")[0])
    if bounds and isinstance(value, (int, float)):
        lo, hi = bounds
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise AuditError(f"{key}: {value!r} is out of range ({rng})")
    return value


def _build(cls: type, data: Any, prefix: str, default: Any = None) -> Any:
    """``cls`` from ``data``; keys not given keep ``default``'s values (the section's default in
    its parent, e.g. ``measure.max_memory: 4GB``), else the class's own defaults."""
    if not isinstance(data, dict):
        raise AuditError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    keys = {f.name: f for f in config_fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in keys:
            raise AuditError(f"unknown key {full!r} (known: {', '.join(sorted(keys))})")
        schema = keys[key].metadata.get("schema")
        t = schema() if schema else hints[key]
        if dataclasses.is_dataclass(t):
            factory = keys[key].default_factory
            section = factory() if factory is not dataclasses.MISSING else None
            kwargs[key] = _build(t, value if value is not None else {}, full, section)
        else:
            kwargs[key] = _check_value(value, t, full, keys[key].metadata.get("range"))
    return dataclasses.replace(default, **kwargs) if default is not None else cls(**kwargs)


_NOTED: set[str] = set()  # where the old model: layout was noted (once each)


def _upgrade(data: Any, where: str) -> Any:
    """``model:`` in the old flat layout (char-LSTM sizes at its top) read as the new one, with
    a one-line note on stderr, once per file, naming it and where the keys live now."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return data
    section, moved = model_kinds.upgrade(data["model"])
    if not moved:
        return data
    if where not in _NOTED:
        _NOTED.add(where)
        old, new = ", ".join(o for o, _ in moved), ", ".join(n for _, n in moved)
        from .distributed import note  # on stderr, from rank 0 only under torchrun

        note(f"{where} uses the old flat model: layout; read {old} as {new}")
    return {**data, "model": section}


def config_from_dict(data: Any, where: str = "config") -> AuditConfig:
    try:
        cfg = _build(AuditConfig, {} if data is None else _upgrade(data, where), "")
        validate(cfg)
        return cfg
    except AuditError as e:
        raise AuditError(f"{where}: {e}") from None


def validate(cfg: AuditConfig) -> None:
    """Checks across keys and of the values' meaning."""
    from .data.formats import Format

    for i, f in enumerate(cfg.insert.formats):
        try:
            Format.parse(f)
        except AuditError as e:
            raise AuditError(f"insert.formats[{i}]: {e}") from None
    if len(set(cfg.insert.formats)) != len(cfg.insert.formats):
        raise AuditError("insert.formats: a format is listed twice")
    from .data.records import FORMATS, PLACEMENTS

    if cfg.insert.corpus_format is not None and cfg.insert.corpus_format not in FORMATS:
        raise AuditError(f"insert.corpus_format: {cfg.insert.corpus_format!r} is not one of {', '.join(FORMATS)}")
    if cfg.insert.placement is not None and cfg.insert.placement not in PLACEMENTS:
        raise AuditError(f"insert.placement: {cfg.insert.placement!r} is not one of {', '.join(PLACEMENTS)}")
    if any(n < 0 for n in cfg.insert.schedule):
        raise AuditError("insert.schedule: insertion counts must be >= 0")
    if len(set(cfg.insert.schedule)) != len(cfg.insert.schedule):
        raise AuditError("insert.schedule: a count is listed twice")
    dp = cfg.train.dp
    if dp.enabled and (dp.noise_multiplier is None) == (dp.target_epsilon is None):
        raise AuditError("train.dp: give exactly one of noise_multiplier and target_epsilon")
    model_kinds.check_config(cfg)  # the kind, its base, each kind's own section
    try:
        Format.parse(cfg.audit.format)
    except AuditError as e:
        raise AuditError(f"audit.format: {e}") from None
    from .audits.canary_design import DESIGNS

    if cfg.audit.canary not in DESIGNS:
        raise AuditError(f"audit.canary: {cfg.audit.canary!r} is not one of {', '.join(DESIGNS)}")
    from .audits.canary_design import FRESH_INITS, WINDOW_FILLS

    if cfg.audit.fresh_init not in FRESH_INITS:
        raise AuditError(f"audit.fresh_init: {cfg.audit.fresh_init!r} is not one of {', '.join(FRESH_INITS)}")

    if cfg.audit.window_fill not in WINDOW_FILLS:
        raise AuditError(f"audit.window_fill: {cfg.audit.window_fill!r} is not one of {', '.join(WINDOW_FILLS)}")
    if dp.broken_no_noise and not dp.enabled:
        raise AuditError("train.dp.broken_no_noise: only meaningful with train.dp.enabled (an auditor check)")
    cfg.measure.check("measure.")
    if cfg.train.track.estimator not in ESTIMATORS:
        raise AuditError(f"train.track.estimator: {cfg.train.track.estimator!r} is not one of {', '.join(ESTIMATORS)}")
    if cfg.memorization.enabled:
        from .audits.memorization import options_from_config

        try:
            options_from_config(cfg, Path("."), Path(".")).check_settings()
        except AuditError as e:
            raise AuditError(f"memorization: {e}") from None
    for key, value in (
        ("extract.max_memory", cfg.extract.max_memory),
        ("train.track.max_memory", cfg.train.track.max_memory),
    ):
        try:
            parse_size(value)
        except AuditError as e:
            raise AuditError(f"{key}: {e}") from None


def load_config(path: str | Path | None) -> AuditConfig:
    """Read a YAML config (None: the defaults, as in configs/default.yaml)."""
    if path is None:
        return AuditConfig()
    path = Path(path)
    if not path.exists():
        raise AuditError(f"config {path} does not exist")
    if path.is_dir():
        raise AuditError(f"config {path} is a folder, not a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise AuditError(f"config {path} is not valid YAML{where}") from None
    return config_from_dict(data, str(path))


def apply_overrides(cfg: AuditConfig, overrides: dict[str, Any]) -> AuditConfig:
    """Set ``section.key`` values from the command line, checked like the file's."""
    data = cfg.to_dict()
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config_from_dict(data, "command line")
