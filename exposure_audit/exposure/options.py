"""How ``measure`` ranks: the one options object (and its checks) of every measurement.

:class:`MeasureOptions` is read from the YAML config's ``measure:`` section (``config.py``), set
by the CLI's flags through it, and handed to :func:`~.measure.measure` by the canary audit, the
training tracker, the Trainer callback and the scan audit. A new option is one field here.

Fields marked :data:`PER_RUN` are set by each run (the top-level seed, ``--context``, ``-q``, the
scan's terminator), not in the ``measure:`` section: ``config.py`` neither reads nor writes them.
This module imports no engine code (only ``errors`` and ``memory``), so ``config.py`` can import
it without a cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuditError
from ..memory import MemoryBudget

METHODS = ("auto", "enumerate", "pruned", "estimate", "brute")
ESTIMATORS = ("importance", "uniform", "skewnorm")
PREFER = ("balanced", "exact", "fast")
DEFAULT_MAX_STEPS = 20_000_000
# auto, prefer="balanced": model steps of exact work (walks, enumeration) per format beyond the
# estimate; about 25 s of char-LSTM walks on 2 cores (docs/method.md, ``auto``)
DEFAULT_EXACT_BUDGET = 2_000_000
# ... for a model whose step costs at most this (the default 2x200 char-LSTM's step, 1.11 MFLOP,
# rounded up); a costlier step gets proportionally fewer steps (SmolLM2-135M, 0.27 GFLOP: 8,9xx),
# so the default budget is about the same work, and time, whatever the model (exact_budget_steps)
EXACT_BUDGET_STEP_FLOPS = 1.2e6
DEFAULT_SAMPLES = 10_000
DEFAULT_BATCH = 1024  # candidates (or tree nodes) per model call; engine.DEFAULT_BATCH is this
# a bfloat16 measure rescored in float32 (rescore.py): candidates per canary rescored; past it, the
# rank interval the rounding allows
DEFAULT_MAX_BAND = 10_000

PER_RUN = {"per_run": True}  # field metadata: set per run, not a key of the config's measure: section


def config_fields(cls: Any) -> list[dataclasses.Field]:
    """The fields of a dataclass that are config keys (all but the :data:`PER_RUN` ones)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("per_run")]


@dataclass(frozen=True)
class MeasureOptions:
    """How ``measure`` ranks (see ``measure.py``'s docstring for the methods and estimators)."""

    method: str = "auto"
    max_steps: int = DEFAULT_MAX_STEPS  # model-step budget of a walk (per format)
    samples: int = DEFAULT_SAMPLES  # draws of the estimate
    estimator: str = "importance"  # the estimate reported where a rank is not exact
    # auto: "balanced" (exact where it fits exact_budget, cheapest first; the others estimated),
    # "exact" (exact wherever max_steps allows) or "fast" (exact only where it costs no more than
    # the estimate)
    prefer: str = "balanced"
    # prefer="balanced": exact work per format (model steps); None: DEFAULT_EXACT_BUDGET scaled
    # down by the model's step cost (exact_budget_steps)
    exact_budget: int | None = None
    batch: int = DEFAULT_BATCH
    confidence: float = 0.9
    bootstrap: int = 100
    # the audit's gate (exit 1 above it, by an inserted canary); ranking does not read it
    fail_above: float | None = None
    # search state (KV caches, frontier) a walk may hold: "4GB", "512MB" (or an int of bytes); None:
    # a Scorer's own budget, memory.DEFAULT_MAX_MEMORY for a new one (the config's default)
    max_memory: str | None = None
    seed: int = field(default=0, metadata=PER_RUN)  # of sampled candidates (the config's top-level seed)
    context: str | None = field(default=None, metadata=PER_RUN)  # text before each line; None = the model's
    quiet: bool = field(default=True, metadata=PER_RUN)  # no progress bars
    terminator: str = field(default="\n", metadata=PER_RUN)  # closes each candidate (scan: next char, or "")
    # with a float32 reference (`measure --rescore`): candidates per canary rescored in float32;
    # a canary whose band is larger gets the rank interval the rounding allows (rescore.py)
    max_band: int = field(default=DEFAULT_MAX_BAND, metadata=PER_RUN)

    def check(self, where: str = "") -> None:
        """Refuse bad values before any work; ``where`` prefixes the key (``"measure."``)."""
        for key, value, choices in (
            ("method", self.method, METHODS),
            ("estimator", self.estimator, ESTIMATORS),
            ("prefer", self.prefer, PREFER),
        ):
            if value not in choices:
                raise AuditError(f"{where}{key}: {value!r} is not one of {', '.join(choices)}")
        if self.max_steps < 1:
            raise AuditError(f"{where}max_steps: the model-step budget must be at least 1")
        if self.exact_budget is not None and self.exact_budget < 0:
            raise AuditError(f"{where}exact_budget: the exact work's model-step budget must be at least 0")
        if self.samples < 1:
            raise AuditError(f"{where}samples: the number of samples must be at least 1")
        if self.max_band < 0:
            raise AuditError(f"{where}max_band: the candidates rescored per canary must be at least 0")
        try:
            MemoryBudget.of(self.max_memory)  # None: memory.DEFAULT_MAX_MEMORY
        except AuditError as e:
            raise AuditError(f"{where}max_memory: {e}") from None

    def settings(self) -> dict[str, Any]:
        """The config keys' values, in the config's order (the report's ``model.measure``)."""
        return {f.name: getattr(self, f.name) for f in config_fields(self)}


def exact_budget_steps(budget: int | None, step_flops: float | None) -> int:
    """The exact budget in model steps: ``budget`` where given; else :data:`DEFAULT_EXACT_BUDGET`,
    times ``EXACT_BUDGET_STEP_FLOPS / step_flops`` where a step costs more than that (a model
    that does not say what its step costs gets the full default)."""
    if budget is not None:
        return budget
    if not step_flops or step_flops <= EXACT_BUDGET_STEP_FLOPS:
        return DEFAULT_EXACT_BUDGET
    return max(1, int(DEFAULT_EXACT_BUDGET * EXACT_BUDGET_STEP_FLOPS / step_flops))


def check_extraction(*, top: int, max_steps: int, beam: int | None = None) -> None:
    if top < 1:
        raise AuditError("the number of candidates to extract (top) must be at least 1")
    if max_steps < 1:
        raise AuditError("the model-step budget (max_steps) must be at least 1")
    if beam is not None and beam < 1:
        raise AuditError("the beam width must be at least 1")


@dataclass(frozen=True)
class ExtractOptions:
    """How ``extract`` searches each format (best-first, or beam search with ``beam``)."""

    top: int = 10  # candidates to recover per format
    max_steps: int = 1_000_000  # model-step budget per format
    beam: int | None = None  # beam width (fast, approximate); None: best-first (exact order)
    context: str | None = None  # text before each candidate; None = the model's default
    max_memory: str | int | None = None  # search state per format; None = memory.DEFAULT_MAX_MEMORY
    quiet: bool = True  # no progress bars

    def check(self) -> None:
        check_extraction(top=self.top, max_steps=self.max_steps, beam=self.beam)
        MemoryBudget.of(self.max_memory)  # a bad size fails before any work


__all__ = [
    "DEFAULT_EXACT_BUDGET",
    "DEFAULT_MAX_BAND",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_SAMPLES",
    "EXACT_BUDGET_STEP_FLOPS",
    "ESTIMATORS",
    "METHODS",
    "PER_RUN",
    "PREFER",
    "ExtractOptions",
    "MeasureOptions",
    "check_extraction",
    "exact_budget_steps",
]
