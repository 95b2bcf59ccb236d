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
  each canary that beats every sample (a likely memorized one, where exactness matters).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import AuditError
from ..formats import Format
from ..models.base import Scorer
from ..progress import Progress
from . import engine
from .math import SkewNormFit, combine_estimates, exposure_from_rank, fit_skewnorm, log2_int, sampling_estimate

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
    """Uniform samples of a format's candidates and their scores, shared by its canaries.

    The skew-normal fit and its bootstrap refits are made once per format, on first use.
    """

    scores: np.ndarray
    steps: int
    seconds: float
    _fits: Any = None

    def fits(self, bootstrap: int, seed: int) -> tuple[SkewNormFit, list[SkewNormFit]] | str:
        if self._fits is None:
            try:
                fit = fit_skewnorm(self.scores)
            except ValueError as e:
                self._fits = str(e)
                return self._fits
            rng = np.random.default_rng(seed)
            refits = []
            for _ in range(bootstrap):
                try:
                    refits.append(
                        fit_skewnorm(self.scores[rng.integers(0, len(self.scores), len(self.scores))], with_ks=False)
                    )
                except ValueError:
                    continue
            self._fits = (fit, refits)
        return self._fits


def check_method(method: str, max_steps: int, samples: int) -> None:
    if method not in METHODS:
        raise AuditError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if max_steps < 1:
        raise AuditError("--max-steps must be at least 1")
    if samples < 1:
        raise AuditError("--samples must be at least 1")


def _exact(
    c: CanaryLike, fmt: Format, px: float, rank: int, method: str, steps: int, seconds: float, **details: Any
) -> CanaryResult:
    size = fmt.space_size
    rank = min(rank, size)
    return CanaryResult(
        format=c.format,
        secret=c.secret,
        text=fmt.render(c.secret),
        insertions=c.insertions,
        space_size=size,
        log_perplexity=px,
        rank=rank,
        rank_bounds=(rank, rank),
        exposure=exposure_from_rank(rank, size),
        exposure_max=log2_int(size),
        method=method,
        model_steps=steps,
        seconds=seconds,
        id=getattr(c, "id", None),
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
    context: str = engine.NEWLINE,
    quiet: bool = True,
    collect: dict[str, Any] | None = None,
) -> list[CanaryResult]:
    """Measure every canary; results come back in the order given.

    ``collect``, if given, receives per format the uniform samples' log-perplexities and the
    skew-normal fit (``{"scores": [...], "fit": {...}}``), for the report's histogram.
    """
    check_method(method, max_steps, samples)
    scorer = model if isinstance(model, Scorer) else Scorer(model)
    results: list[CanaryResult | None] = [None] * len(canaries)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(canaries):
        groups.setdefault(c.format, []).append(i)
    for source, idxs in groups.items():
        fmt = Format.parse(source)
        group = [canaries[i] for i in idxs]
        shared: dict[str, FormatSamples] = {}
        for i, r in zip(
            idxs,
            _measure_format(
                scorer,
                fmt,
                group,
                method,
                max_steps,
                samples,
                seed,
                batch,
                confidence,
                bootstrap,
                context,
                quiet,
                shared,
            ),
        ):
            results[i] = r
        if collect is not None:
            fs = shared.get("samples")
            if fs is None:
                fs = _sample_scores(scorer, engine.compile_format(scorer, fmt, context), samples, seed, batch, quiet)
            fits = fs.fits(0, seed)
            collect[source] = {
                "scores": fs.scores.tolist(),
                "fit": None if isinstance(fits, str) else {"a": fits[0].a, "loc": fits[0].loc, "scale": fits[0].scale},
            }
    return [r for r in results if r is not None]


def _measure_format(
    scorer: Scorer,
    fmt: Format,
    group: list[CanaryLike],
    method: str,
    max_steps: int,
    samples: int,
    seed: int,
    batch: int,
    confidence: float,
    bootstrap: int,
    context: str,
    quiet: bool,
    keep: dict[str, FormatSamples],
) -> list[CanaryResult]:
    t0 = time.perf_counter()
    s0 = scorer.steps
    tail = engine.compile_format(scorer, fmt, context)
    px = engine.score_tail(scorer, tail, [c.secret for c in group], batch)
    setup_steps, setup_seconds = scorer.steps - s0, time.perf_counter() - t0
    size = fmt.space_size
    tree_steps = tail.tree_steps()

    if method == "brute" or method == "enumerate":
        need = engine.brute_force_steps(fmt, context) if method == "brute" else tree_steps
        if need > max_steps:
            raise AuditError(
                f"format {fmt.source!r}: |R| = {size} needs {need} model steps by {method}, over the "
                f"budget of {max_steps} (--max-steps); use --method pruned or estimate"
            )
    if method == "auto" and tree_steps <= max_steps:
        method = "enumerate"

    if method in ("enumerate", "brute"):
        t1 = time.perf_counter()
        s1 = scorer.steps
        with Progress(
            total=tree_steps if method == "enumerate" else size,
            desc=f"{method} {fmt.source}",
            quiet=quiet,
            unit="step" if method == "enumerate" else "cand",
        ) as bar:
            if method == "enumerate":
                counts, _ = engine.enumerate_counts(scorer, tail, px, batch=batch, progress=bar.update)
            else:
                counts = engine.brute_force_counts(scorer, fmt, px, context=context, batch=batch, progress=bar.update)
        steps = scorer.steps - s1 + setup_steps
        seconds = time.perf_counter() - t1 + setup_seconds
        return [
            _exact(c, fmt, float(p), int(n), method, steps, seconds, work_shared_by=len(group))
            for c, p, n in zip(group, px, counts)
        ]

    # pruned / estimate / auto on a large space
    shared: FormatSamples | None = None
    out: list[CanaryResult] = []
    for c, p in zip(group, px):
        t1 = time.perf_counter()
        s1 = scorer.steps
        estimate: CanaryResult | None = None
        if method in ("estimate", "auto"):
            if shared is None:
                shared = keep["samples"] = _sample_scores(scorer, tail, samples, seed, batch, quiet)
            estimate = _estimated(c, fmt, float(p), shared, None, confidence, bootstrap, seed, 0, 0.0)
        try_pruned = method == "pruned"
        if method == "auto" and estimate is not None:
            # Exact work is worth it where exposure is high (a likely memorized canary): the
            # estimated rank tells whether the pruned walk should fit the budget.
            predicted_rank = size * 2.0 ** (-estimate.exposure)
            try_pruned = PRUNED_STEPS_PER_RANK * predicted_rank <= max_steps
        bounds: tuple[int, int] | None = None
        if try_pruned:
            with Progress(total=max_steps, desc=f"pruned {fmt.source}", quiet=quiet, unit="step") as bar:
                pr = engine.pruned_rank(scorer, tail, float(p), max_steps=max_steps, batch=batch, progress=bar.update)
            if pr.rank is not None:
                out.append(_exact(c, fmt, float(p), pr.rank, "pruned", scorer.steps - s1, time.perf_counter() - t1))
                continue
            bounds = pr.bounds
        if shared is None:
            shared = keep["samples"] = _sample_scores(scorer, tail, samples, seed, batch, quiet)
        out.append(
            _estimated(
                c,
                fmt,
                float(p),
                shared,
                bounds,
                confidence,
                bootstrap,
                seed,
                scorer.steps - s1,
                time.perf_counter() - t1,
            )
        )
    return out


def _sample_scores(
    scorer: Scorer, tail: engine.Tail, samples: int, seed: int, batch: int, quiet: bool
) -> FormatSamples:
    fmt = tail.fmt
    t0 = time.perf_counter()
    s0 = scorer.steps
    rng = random.Random(f"exposure-audit:{seed}:samples:{fmt.source}")
    distinct = samples <= fmt.space_size // 2
    secrets = fmt.sample(rng, samples, distinct=distinct)
    scores = np.empty(len(secrets))
    with Progress(total=len(secrets), desc=f"sample {fmt.source}", quiet=quiet, unit="cand") as bar:
        for lo in range(0, len(secrets), batch):
            chunk = secrets[lo : lo + batch]
            scores[lo : lo + len(chunk)] = engine.score_tail(scorer, tail, chunk, batch)
            bar.update(len(chunk))
    return FormatSamples(scores=scores, steps=scorer.steps - s0, seconds=time.perf_counter() - t0)


def _estimated(
    c: CanaryLike,
    fmt: Format,
    px: float,
    shared: FormatSamples,
    bounds: tuple[int, int] | None,
    confidence: float,
    bootstrap: int,
    seed: int,
    steps: int,
    seconds: float,
) -> CanaryResult:
    size = fmt.space_size
    emax = log2_int(size)
    samp, k = sampling_estimate(px, shared.scores, size, confidence, engine.TIE_TOLERANCE)
    details: dict[str, Any] = {
        "samples": len(shared.scores),
        "samples_at_or_below": k,
        "estimate_sampling": {"exposure": samp.exposure, "ci": list(samp.ci)},
    }
    fits = shared.fits(bootstrap, seed)
    if isinstance(fits, str):
        sk = None
        details["estimate_skewnorm"] = {"error": fits}
    else:
        fit, refits = fits
        point = float(fit.exposure(px, size))
        if refits:
            draws = np.array([float(f.exposure(px, size)) for f in refits])
            alpha = 1.0 - confidence
            ci_sk = (float(np.quantile(draws, alpha / 2)), float(np.quantile(draws, 1 - alpha / 2)))
        else:
            ci_sk = (point, point)
        sk = point
        details["estimate_skewnorm"] = {
            "exposure": point,
            "ci_bootstrap": [min(ci_sk[0], point), max(ci_sk[1], point)],
            "fit": {"a": fit.a, "loc": fit.loc, "scale": fit.scale, "ks_statistic": fit.ks_statistic},
        }
    exposure, ci, how = combine_estimates(samp, k, sk)
    if bounds is not None:
        # The pruned walk proved lo <= rank <= hi: the estimate must sit inside that.
        e_lo, e_hi = exposure_from_rank(bounds[1], size), exposure_from_rank(bounds[0], size)
        exposure = min(max(exposure, e_lo), e_hi)
        ci = (min(max(ci[0], e_lo), e_hi), min(max(ci[1], e_lo), e_hi))
        how = "pruned-bounds+" + how
    return CanaryResult(
        format=c.format,
        secret=c.secret,
        text=fmt.render(c.secret),
        insertions=c.insertions,
        space_size=size,
        log_perplexity=px,
        rank=None,
        rank_bounds=bounds,
        exposure=float(min(max(exposure, 0.0), emax)),
        exposure_max=emax,
        method=how,
        model_steps=steps + shared.steps,
        seconds=seconds + shared.seconds,
        exposure_ci=(float(ci[0]), float(ci[1])),
        id=getattr(c, "id", None),
        details=details,
    )


__all__ = ["METHODS", "CanaryResult", "measure"]
