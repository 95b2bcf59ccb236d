"""The report JSON (schema 1) as types: :class:`Report` and its parts, each with
``from_json`` and ``to_json``.

``report.json`` is written by the canary audit (``audits/canaries.py``, through
``report.report_json``) and read back by the review page and the Markdown summary
(``review.py``), the figures (``plots.py``) and the sweep (``sweep_row``); those readers use
these attributes, not string keys.

Reading and writing back gives the same JSON, key order included: a record remembers the keys
it was read with (an older report lacks some, e.g. ``data`` or ``search_memory``) and keeps
keys it does not know (a canary's estimator details, a tracker's extra epoch figures) as they
were. A field set after reading that the file lacked is written after the others. Free-form
parts (the model's own description, the measure options, the plans) stay plain dicts.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")
KIND = "exposure-audit/report"
SWEEP_KIND = "exposure-audit/sweep"
_OWN = ("_extra", "_keys")


@dataclass(kw_only=True)
class Record:
    """A JSON object with typed fields named as its keys.

    Subclasses say which fields hold records (``ONE``: a record or None; ``MANY``: a list of
    records; ``BY_KEY``: a dict of records), which integers are written as text (``TEXT_INTS``,
    e.g. a space size above 2^53) and which keys a new record leaves out while they are None
    (``OPTIONAL``: sections only some runs have)."""

    ONE: ClassVar[dict[str, type]] = {}
    MANY: ClassVar[dict[str, type]] = {}
    BY_KEY: ClassVar[dict[str, type]] = {}
    TEXT_INTS: ClassVar[tuple[str, ...]] = ()
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    _extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown keys, as read
    _keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)  # key order, as read

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name not in _OWN]

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        if isinstance(data, cls):
            return data
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = set(cls._names())
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in names:
                known[key] = cls._decode(key, value)
            else:
                extra[key] = value
        return cls(**known, _extra=extra, _keys=tuple(data))

    @classmethod
    def _decode(cls, key: str, value: Any) -> Any:
        if value is None:
            return None
        if key in cls.ONE:
            return cls.ONE[key].from_json(value)
        if key in cls.MANY:
            return [cls.MANY[key].from_json(v) for v in value]
        if key in cls.BY_KEY:
            return {k: cls.BY_KEY[key].from_json(v) for k, v in value.items()}
        if key in cls.TEXT_INTS:
            return int(value)
        return value

    def _encode(self, key: str) -> Any:
        value = getattr(self, key)
        if value is None:
            return None
        if key in self.ONE:
            return value.to_json()
        if key in self.MANY:
            return [v.to_json() for v in value]
        if key in self.BY_KEY:
            return {k: v.to_json() for k, v in value.items()}
        if key in self.TEXT_INTS:
            return str(value)
        return value

    def to_json(self) -> dict[str, Any]:
        names = self._names()
        read = self._keys is not None
        order = list(self._keys) if read else [*names, *self._extra]
        order += [k for k in names if k not in order]  # fields set after reading, not in the file
        out: dict[str, Any] = {}
        for key in order:
            if key in self._extra:
                out[key] = self._extra[key]
            elif key in names and key not in out:
                value = getattr(self, key)
                if read:  # as in the file, plus what was set since (an older file lacks some keys)
                    keep = key in self._keys or value != self._default(key)
                else:  # a new record: every key, less the optional sections it does not have
                    keep = key not in self.OPTIONAL or value is not None
                if keep:
                    out[key] = self._encode(key)
        return out

    @classmethod
    def _default(cls, key: str) -> Any:
        f = next(f for f in fields(cls) if f.name == key)
        return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass(kw_only=True)
class CanaryRow(Record):
    """One measured canary (``CanaryResult.to_json``; ``secret`` masked and ``text`` None when redacted)."""

    TEXT_INTS = ("space_size",)

    id: str | None = None
    format: str = ""
    secret: str = ""
    text: str | None = None
    insertions: int = 0
    space_size: int = 0
    log_perplexity: float = 0.0
    rank: int | None = None
    rank_bounds: list[int] | None = None
    exposure: float = 0.0
    exposure_max: float = 0.0
    exposure_ci: list[float] | None = None
    method: str = ""
    model_steps: int = 0
    seconds: float = 0.0

    @property
    def key(self) -> str:
        """How extraction rows name this canary: its id, else its secret."""
        return self.id or self.secret

    @property
    def details(self) -> dict[str, Any]:
        """The measurement's own details (estimator fits, predicted steps), as written."""
        return self._extra


@dataclass(kw_only=True)
class Privacy(Record):
    """How the model was trained with DP-SGD (``training.loop``), as its checkpoint records it."""

    mechanism: str = ""
    epsilon: float = 0.0
    delta: float = 0.0
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    unit: str = ""
    broken_no_noise: bool | None = None

    OPTIONAL = ("broken_no_noise",)


@dataclass(kw_only=True)
class Epoch(Record):
    """One epoch's line of ``metrics.jsonl`` (losses in bits per character; a tracker may add figures)."""

    event: str = "epoch"
    epoch: int = 0
    step: int = 0
    train_bpc: float | None = None
    valid_bpc: float | None = None
    valid_bits_per_token: float | None = None
    seconds: float | None = None
    epsilon: float | None = None

    OPTIONAL = ("epsilon",)


@dataclass(kw_only=True)
class Training(Record):
    """The audit's training run: its duration and its last epoch."""

    ONE = {"final": Epoch}

    seconds: float = 0.0
    final: Epoch | None = None


@dataclass(kw_only=True)
class ModelInfo(Record):
    """The measured model and how it was measured (``report["model"]``)."""

    ONE = {"privacy": Privacy, "training": Training}
    OPTIONAL = ("training",)

    model_path: str = ""
    model_description: str | None = None
    privacy: Privacy | None = None
    seed: int | None = None
    measure: dict[str, Any] = field(default_factory=dict)  # the measure options (config.MeasureConfig)
    context: str | None = None
    context_used: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the model's own description (model.describe())
    trained_on_manifest_data: bool = False
    plan: dict[str, Any] = field(default_factory=dict)
    search_memory: dict[str, Any] = field(default_factory=dict)
    training: Training | None = None  # the audit's training run (absent from ``measure``'s report)


@dataclass(kw_only=True)
class DataInfo(Record):
    """Where the manifest's data came from."""

    corpus_source: str | None = None
    corpus_sha256: str | None = None
    format: str | None = None
    train_sha256: str | None = None
    manifest_sha256: str | None = None
    manifest_seed: int | None = None


@dataclass(kw_only=True)
class FormatExtraction(Record):
    """One format's extraction (``Extraction.to_json``): its candidates, best first."""

    TEXT_INTS = ("space_size",)

    schema: int = 1
    format: str = ""
    method: str = ""
    approximate: bool = False
    candidates: list[dict[str, Any]] = field(default_factory=list)  # {"secret", "log_perplexity"}
    mass: float = 0.0
    model_steps: int = 0
    seconds: float = 0.0
    proven: bool = False
    space_size: int = 0


@dataclass(kw_only=True)
class ExtractedCanary(Record):
    """Where one canary landed in its format's extraction (None: not in the top)."""

    id: str | None = None
    format: str = ""
    secret: str = ""
    insertions: int = 0
    position: int | None = None

    @property
    def key(self) -> str:
        return self.id or self.secret


@dataclass(kw_only=True)
class Success(Record):
    canaries: int = 0
    extracted_top1: int = 0
    in_top_k: int = 0


@dataclass(kw_only=True)
class ExtractionSummary(Record):
    """Extracting every format of a manifest (``extract.extraction_summary``); in a report
    without its own ``schema`` and ``kind``."""

    MANY = {"formats": FormatExtraction, "canaries": ExtractedCanary}
    BY_KEY = {"success_by_insertions": Success}
    OPTIONAL = ("schema", "kind")

    schema: int | None = None
    kind: str | None = None
    top: int = 0
    formats: list[FormatExtraction] = field(default_factory=list)
    canaries: list[ExtractedCanary] = field(default_factory=list)
    success_by_insertions: dict[str, Success] = field(default_factory=dict)  # insertion count (text) -> rates


@dataclass(kw_only=True)
class Memorization(Record):
    """The memorization section's headline figures (the full report is ``file``)."""

    file: str = "memorization.json"
    exact_match_rate: float | None = None
    by_copies: dict[str, Any] = field(default_factory=dict)
    extractable_fraction: float | None = None
    auc: dict[str, float] = field(default_factory=dict)  # attack -> AUC
    tpr_at_1pct_fpr: dict[str, float] = field(default_factory=dict)
    failed: Any = None


@dataclass(kw_only=True)
class Report(Record):
    """``report.json``: the verdict, the model, the data, the printed tables and every canary;
    the audit adds its extraction and memorization sections."""

    ONE = {"model": ModelInfo, "data": DataInfo, "extraction": ExtractionSummary, "memorization": Memorization}
    MANY = {"canaries": CanaryRow}
    OPTIONAL = ("extraction", "memorization")

    schema: int = 1
    kind: str = KIND
    model: ModelInfo | None = None
    threshold: float | None = None
    passed: bool | None = None
    data: DataInfo | None = None
    table: str | None = None
    canaries: list[CanaryRow] = field(default_factory=list)
    extraction: ExtractionSummary | None = None
    memorization: Memorization | None = None

    @classmethod
    def of(cls, report: Report | dict[str, Any]) -> Report:
        """A report, from its JSON or as it is."""
        return report if isinstance(report, Report) else cls.from_json(report)

    @property
    def inserted(self) -> list[CanaryRow]:
        return [c for c in self.canaries if c.insertions > 0]

    @property
    def training(self) -> Training | None:
        return self.model.training if self.model else None

    @property
    def privacy(self) -> Privacy | None:
        return self.model.privacy if self.model else None


@dataclass(kw_only=True)
class Exposures(Record):
    mean: float = 0.0
    max: float = 0.0


@dataclass(kw_only=True)
class SweepRow(Record):
    """One setting of a sweep (``sweep.json``'s ``runs``): utility, epsilon, exposure per insertion count."""

    BY_KEY = {"exposure_by_insertions": Exposures}

    name: str = ""
    valid_bpc: float | None = None
    train_bpc: float | None = None
    epsilon: float | None = None
    delta: float | None = None
    dropout: float | None = None
    weight_decay: float | None = None
    training_seconds: float | None = None
    exposure_inserted_mean: float = 0.0
    exposure_by_insertions: dict[str, Exposures] = field(default_factory=dict)  # insertion count (text) ->


@dataclass(kw_only=True)
class Sweep(Record):
    """``sweep.json``: one row per run."""

    MANY = {"runs": SweepRow}

    schema: int = 1
    kind: str = SWEEP_KIND
    runs: list[SweepRow] = field(default_factory=list)
