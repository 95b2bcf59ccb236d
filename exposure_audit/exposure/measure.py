"""``measure``: each canary's log-perplexity, rank and exposure, by the best method that fits.

Methods (``method=``):
- ``enumerate``: walk the whole prefix tree of the format once; every canary of that format is
  ranked from the same walk (exact).
- ``pruned``: per canary, walk only prefixes within its log-perplexity (exact; work grows with
  the rank). Past ``max_steps`` it keeps the proven rank bounds and falls back to the estimate.
- ``estimate``: from ``samples`` uniform candidates: the sampling estimate while enough samples
  score at or under the canary, else the skew-normal extrapolation; both with intervals.
- ``brute``: score every candidate's whole line (the naive reference).
- ``auto``: ``enumerate`` if the tree fits ``max_steps``; else the estimate, and ``pruned`` for
  each canary whose estimated rank says the walk fits the budget (a likely memorized one,
  where exactness matters).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ..errors import AuditError
from ..formats import Format
from ..models.base import Scorer
from ..progress import Progress
from . import engine
from .tree import CompiledFormat
from .math import combine_estimates, exposure_from_rank, log2_int, sampling_estimate, skewnorm_exposure

METHODS = ("auto", "enumerate", "pruned", "estimate", "brute")
DEFAULT_MAX_STEPS = 20_000_000
DEFAULT_SAMPLES = 10_000
# Pruned walks took 8-21 model steps per unit of rank on the default model (docs/benchmarks.md);
# auto tries the exact walk when the estimated rank says it should fit the budget.
PRUNED_STEPS_PER_RANK = 25


class CanaryLike(Protocol):
    format: str
    secret: str
    insertions: int


@dataclass
class CanaryResult:
    format: str
    secret: str
    text: str
    insertions: int
    space_size: int
    log_perplexity: float
    rank: int | None
    rank_bounds: tuple[int, int] | None
    exposure: float
    exposure_max: float
    method: str
    model_steps: int
    seconds: float
    exposure_ci: tuple[float, float] | None = None
    id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "format": self.format,
            "secret": self.secret,
            "text": self.text,
            "insertions": self.insertions,
            "space_size": str(self.space_size),
            "log_perplexity": self.log_perplexity,
            "rank": self.rank,
            "rank_bounds": list(self.rank_bounds) if self.rank_bounds else None,
            "exposure": self.exposure,
            "exposure_max": self.exposure_max,
            "exposure_ci": list(self.exposure_ci) if self.exposure_ci else None,
            "method": self.method,
            "model_steps": self.model_steps,
            "seconds": self.seconds,
        }
        out.update(self.details)
        return out


@dataclass
class FormatSamples:
    """Uniform samples of a format's candidates and their scores, shared by its canaries, with
    the skew-normal extrapolation of every canary of the format (one fit and one set of
    bootstrap refits per format)."""

    scores: np.ndarray
    steps: int
    seconds: float
    skewnorm: dict[str, Any] | str  # {"fit", "point", "ci"} or why no fit was possible


@dataclass(frozen=True)
class MeasureOptions:
    """How ``measure`` ranks (see the module docstring); one object instead of a dozen arguments."""

    method: str = "auto"
    max_steps: int = DEFAULT_MAX_STEPS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    batch: int = engine.DEFAULT_BATCH
    confidence: float = 0.9
    bootstrap: int = 100
    context: str | None = None  # text before each canary line; None = the model's default
    quiet: bool = True

    def check(self) -> None:
        if self.method not in METHODS:
            raise AuditError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.max_steps < 1:
            raise AuditError("the model-step budget (max_steps) must be at least 1")
        if self.samples < 1:
            raise AuditError("the number of samples must be at least 1")


def _result(c: CanaryLike, fmt: Format, px: float, **fields: Any) -> CanaryResult:
    """A canary's result: what every method reports about the canary itself, plus ``fields``."""
    return CanaryResult(
        format=c.format,
        secret=c.secret,
        text=fmt.render(c.secret),
        insertions=c.insertions,
        space_size=fmt.space_size,
        log_perplexity=px,
        exposure_max=log2_int(fmt.space_size),
        id=getattr(c, "id", None),
        **fields,
    )


def _exact(
    c: CanaryLike, fmt: Format, px: float, rank: int, method: str, steps: int, seconds: float, **details: Any
) -> CanaryResult:
    rank = min(rank, fmt.space_size)
    return _result(
        c,
        fmt,
        px,
        rank=rank,
        rank_bounds=(rank, rank),
        exposure=exposure_from_rank(rank, fmt.space_size),
        method=method,
        model_steps=steps,
        seconds=seconds,
        details=dict(details),
    )


def measure(
    model: Any,
    canaries: Sequence[CanaryLike],
    *,
    method: str = "auto",
    max_steps: int = DEFAULT_MAX_STEPS,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    batch: int = engine.DEFAULT_BATCH,
    confidence: float = 0.9,
    bootstrap: int = 100,
    context: str | None = None,
    quiet: bool = True,
    collect: dict[str, Any] | None = None,
) -> list[CanaryResult]:
    """Measure every canary; results come back in the order given.

    ``collect``, if given, receives per format the uniform samples' log-perplexities and the
    skew-normal fit (``{"scores": [...], "fit": {...}}``), for the report's histogram.
    """
    opts = MeasureOptions(
        method=method,
        max_steps=max_steps,
        samples=samples,
        seed=seed,
        batch=batch,
        confidence=confidence,
        bootstrap=bootstrap,
        context=context,
        quiet=quiet,
    )
    return measure_with(model, canaries, opts, collect=collect)


def measure_with(
    model: Any, canaries: Sequence[CanaryLike], opts: MeasureOptions, *, collect: dict[str, Any] | None = None
) -> list[CanaryResult]:
    """:func:`measure` with its options as one object."""
    opts.check()
    scorer = Scorer.of(model)
    results: list[CanaryResult | None] = [None] * len(canaries)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(canaries):
        groups.setdefault(c.format, []).append(i)
    for source, idxs in groups.items():
        fmt = Format.parse(source)
        out, cf, shared = _measure_format(scorer, fmt, [canaries[i] for i in idxs], opts)
        for i, r in zip(idxs, out):
            results[i] = r
        if collect is not None:
            if shared is None:
                shared = _sample_scores(scorer, cf, [], replace(opts, bootstrap=0))
            sk = shared.skewnorm
            collect[source] = {"scores": shared.scores.tolist(), "fit": None if isinstance(sk, str) else sk["fit"]}
    return [r for r in results if r is not None]


def _measure_format(
    scorer: Scorer, fmt: Format, group: list[CanaryLike], opts: MeasureOptions
) -> tuple[list[CanaryResult], CompiledFormat, FormatSamples | None]:
    t0 = time.perf_counter()
    s0 = scorer.steps
    secrets = [c.secret for c in group]
    cf = engine.compile_format(scorer, fmt, opts.context, canaries=secrets, seed=opts.seed)
    px = engine.score_secrets(scorer, cf, secrets, opts.batch)
    setup_steps, setup_seconds = scorer.steps - s0, time.perf_counter() - t0
    size = fmt.space_size
    tree_steps = cf.tree_steps()
    method = opts.method

    if method == "brute" or method == "enumerate":
        need = engine.brute_force_steps(cf) if method == "brute" else tree_steps
        if need > opts.max_steps:
            raise AuditError(
                f"format {fmt.source!r}: |R| = {size} needs {need} model steps by {method}, over the "
                f"budget of {opts.max_steps} model steps; rank it by pruned walks or estimates instead"
            )
    if method == "auto" and tree_steps <= opts.max_steps:
        method = "enumerate"

    if method in ("enumerate", "brute"):
        t1 = time.perf_counter()
        s1 = scorer.steps
        with Progress(
            total=tree_steps if method == "enumerate" else size,
            desc=f"{method} {fmt.source}",
            quiet=opts.quiet,
            unit="step" if method == "enumerate" else "cand",
        ) as bar:
            if method == "enumerate":
                counts, _ = engine.enumerate_counts(scorer, cf, px, batch=opts.batch, progress=bar.update)
            else:
                counts = engine.brute_force_counts(
                    scorer, fmt, px, context=opts.context, batch=opts.batch, progress=bar.update
                )
        steps = scorer.steps - s1 + setup_steps
        seconds = time.perf_counter() - t1 + setup_seconds
        results = [
            _exact(c, fmt, float(p), int(n), method, steps, seconds, work_shared_by=len(group))
            for c, p, n in zip(group, px, counts)
        ]
        return results, cf, None

    # pruned / estimate / auto on a large space
    shared: FormatSamples | None = None
    if method in ("estimate", "auto"):
        shared = _sample_scores(scorer, cf, px, opts)
    out: list[CanaryResult] = []
    for i, (c, p) in enumerate(zip(group, px)):
        t1 = time.perf_counter()
        s1 = scorer.steps
        try_pruned = method == "pruned"
        if method == "auto" and shared is not None:
            # Exact work is worth it where exposure is high (a likely memorized canary): the
            # estimated rank tells whether the pruned walk should fit the budget.
            predicted_rank = size * 2.0 ** (-_estimate(float(p), i, shared, size, opts)[0])
            try_pruned = PRUNED_STEPS_PER_RANK * predicted_rank <= opts.max_steps
        bounds: tuple[int, int] | None = None
        if try_pruned:
            with Progress(total=opts.max_steps, desc=f"pruned {fmt.source}", quiet=opts.quiet, unit="step") as bar:
                pr = engine.pruned_rank(
                    scorer, cf, float(p), max_steps=opts.max_steps, batch=opts.batch, progress=bar.update
                )
            if pr.rank is not None:
                out.append(_exact(c, fmt, float(p), pr.rank, "pruned", scorer.steps - s1, time.perf_counter() - t1))
                continue
            bounds = pr.bounds
        if shared is None:
            shared = _sample_scores(scorer, cf, px, opts)
        out.append(_estimated(c, fmt, float(p), i, shared, bounds, opts, scorer.steps - s1, time.perf_counter() - t1))
    return out, cf, shared


def _sample_scores(scorer: Scorer, cf: CompiledFormat, px: Sequence[float], opts: MeasureOptions) -> FormatSamples:
    """Score ``opts.samples`` uniform candidates; fit the skew-normal and extrapolate every canary."""
    fmt = cf.fmt
    t0 = time.perf_counter()
    s0 = scorer.steps
    rng = random.Random(f"exposure-audit:{opts.seed}:samples:{fmt.source}")
    distinct = opts.samples <= fmt.space_size // 2
    secrets = fmt.sample(rng, opts.samples, distinct=distinct)
    scores = np.empty(len(secrets))
    with Progress(total=len(secrets), desc=f"sample {fmt.source}", quiet=opts.quiet, unit="cand") as bar:
        for lo in range(0, len(secrets), opts.batch):
            chunk = secrets[lo : lo + opts.batch]
            scores[lo : lo + len(chunk)] = engine.score_secrets(scorer, cf, chunk, opts.batch)
            bar.update(len(chunk))
    try:
        fit, point, ci = skewnorm_exposure(
            np.asarray(px, dtype=np.float64),
            scores,
            fmt.space_size,
            confidence=opts.confidence,
            bootstrap=opts.bootstrap,
            seed=opts.seed,
        )
        skewnorm: dict[str, Any] | str = {
            "fit": {"a": fit.a, "loc": fit.loc, "scale": fit.scale, "ks_statistic": fit.ks_statistic},
            "point": point.tolist(),
            "ci": ci.tolist(),
        }
    except ValueError as e:
        skewnorm = str(e)
    return FormatSamples(scores=scores, steps=scorer.steps - s0, seconds=time.perf_counter() - t0, skewnorm=skewnorm)


def _estimate(
    px: float, i: int, shared: FormatSamples, size: int, opts: MeasureOptions
) -> tuple[float, tuple[float, float], str, dict[str, Any]]:
    """Canary ``i``'s estimated exposure from its format's samples: (exposure, interval, method, details)."""
    samp, k = sampling_estimate(px, shared.scores, size, opts.confidence, engine.TIE_TOLERANCE)
    details: dict[str, Any] = {
        "samples": len(shared.scores),
        "samples_at_or_below": k,
        "estimate_sampling": {"exposure": samp.exposure, "ci": list(samp.ci)},
    }
    sk = shared.skewnorm
    if isinstance(sk, str):
        point = None
        details["estimate_skewnorm"] = {"error": sk}
    else:
        point = float(sk["point"][i])
        lo, hi = sk["ci"][i]
        details["estimate_skewnorm"] = {
            "exposure": point,
            "ci_bootstrap": [min(lo, point), max(hi, point)],
            "fit": sk["fit"],
        }
    exposure, ci, how = combine_estimates(samp, k, point)
    return exposure, ci, how, details


def _estimated(
    c: CanaryLike,
    fmt: Format,
    px: float,
    i: int,
    shared: FormatSamples,
    bounds: tuple[int, int] | None,
    opts: MeasureOptions,
    steps: int,
    seconds: float,
) -> CanaryResult:
    size = fmt.space_size
    emax = log2_int(size)
    exposure, ci, how, details = _estimate(px, i, shared, size, opts)
    if bounds is not None:
        # The pruned walk proved lo <= rank <= hi: the estimate must sit inside that.
        e_lo, e_hi = exposure_from_rank(bounds[1], size), exposure_from_rank(bounds[0], size)
        exposure = min(max(exposure, e_lo), e_hi)
        ci = (min(max(ci[0], e_lo), e_hi), min(max(ci[1], e_lo), e_hi))
        how = "pruned-bounds+" + how
    return _result(
        c,
        fmt,
        px,
        rank=None,
        rank_bounds=bounds,
        exposure=float(min(max(exposure, 0.0), emax)),
        method=how,
        model_steps=steps + shared.steps,
        seconds=seconds + shared.seconds,
        exposure_ci=(float(ci[0]), float(ci[1])),
        details=details,
    )


__all__ = ["METHODS", "CanaryResult", "MeasureOptions", "measure", "measure_with"]
