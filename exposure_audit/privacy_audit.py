"""Empirical lower bounds on epsilon from canaries planted with probability 1/2 (numpy/scipy only).

Two bounds, each at a stated confidence, from the canaries' scores (log-perplexity: lower means
"looks planted") and which canaries were planted:

* :func:`one_run_bound`: Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training
  Run" (NeurIPS 2023, arXiv 2305.08846). The auditor guesses "in" for the k+ lowest scores,
  "out" for the k- highest and abstains on the rest; if the training run is (eps, delta)-DP with
  respect to each canary, the number of correct guesses W out of r guesses satisfies (their
  main theorem, in its form for delta > 0)

      P[W >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v - i) - f(v)) / i,
      f(v) = P[Binomial(r, e^eps / (1 + e^eps)) >= v],

  so the largest eps whose p-value stays below 1 - confidence is a lower bound. The paper picks
  (k+, k-) by looking at the result; here the search is over a fixed grid and paid for with a
  union bound (Bonferroni): each grid point is tested at (1 - confidence) / |grid|.
* :func:`threshold_bound`: the classic hypothesis-test bound. At a threshold t, FPR and FNR of
  "planted iff score <= t" get one-sided Clopper-Pearson upper bounds, and
  eps >= log((1 - delta - FNR_upper) / FPR_upper) (and the same with FPR and FNR swapped).
  Thresholds come from a fixed grid of score quantiles, again with a union bound over the grid
  and the two rates. It treats the canaries as independent trials, which holds across
  independent training runs; within one run it is the usual heuristic (the one-run theorem is
  what makes one run rigorous), so reports say which bound gave the headline figure.

:func:`group_claim` turns an accountant's per-example epsilon into the claim for a group of k
examples (a canary line can touch more than one training window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from .errors import AuditError

BISECTION_STEPS = 40
GRID_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5)  # of m, for k+ (and k-)
THRESHOLD_QUANTILES = 40  # thresholds of the classic bound


def p_value_one_run(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[W >= v] allowed by (eps, delta)-DP for r guesses over m canaries (Steinke et al.)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v} r={r} m={m}")
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of eps-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(beta, 1.0)
    # alpha = max_i (f(v - i) - f(v)) / i = max_i P[v - i <= Binomial < v] / i
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # v-1, v-2, ..., 0
    alpha = float(np.max(np.cumsum(pmf) / np.arange(1, v + 1)))
    return min(beta + 2 * m * delta * alpha, 1.0)


def eps_lower_one_run(m: int, r: int, v: int, delta: float, alpha: float) -> float:
    """The largest eps rejected at level ``alpha`` by v correct guesses out of r (0 if none).

    Bisection on eps: the p-value falls as eps falls, so everything below the returned value is
    rejected too."""
    if p_value_one_run(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value_one_run(m, r, v, hi, delta) < alpha:
        lo, hi = hi, hi * 2
        if hi > 1e4:  # pragma: no cover - cannot happen for alpha > 0 and finite m
            break
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        if p_value_one_run(m, r, v, mid, delta) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


def guess_grid(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) pairs searched: k+ from fixed fractions of m, and k- either 0 (guess only
    "in": memorization shows as unusually low scores) or k+ (the paper's symmetric guesses).
    Fixed before seeing any score, so a union bound over it is valid; kept small (about 20)
    because each pair divides the level."""
    ks = sorted({max(1, round(f * m)) for f in GRID_FRACTIONS})
    return sorted({(kp, km) for kp in ks for km in (0, kp) if kp + km <= m})


def max_bound_for(m: int, delta: float, confidence: float) -> float:
    """The best the one-run bound can certify with m canaries: every one of m guesses correct."""
    alpha = (1 - confidence) / len(guess_grid(m))
    return eps_lower_one_run(m, m, m, delta, alpha)


def minimum_canaries(delta: float, confidence: float) -> int:
    """The fewest canaries for which perfect guessing certifies any eps > 0 at this confidence."""
    m = 2
    while max_bound_for(m, delta, confidence) <= 0:
        m += 1
        if m > 100_000:  # pragma: no cover
            break
    return m


def check_audit_settings(m: int, delta: float, confidence: float) -> None:
    """Settings the bounds cannot work with, as one-line errors naming the setting."""
    if not 0 < delta < 1:
        raise AuditError(f"audit.delta: {delta!r} is outside (0, 1)")
    if not 0 < confidence < 1:
        raise AuditError(f"audit.confidence: {confidence!r} is outside (0, 1)")
    need = minimum_canaries(delta, confidence)
    if m < need:
        raise AuditError(
            f"audit.canaries: {m} canaries cannot certify any epsilon at confidence {confidence:g}; "
            f"the minimum is {need}"
        )


def _check_scores(scores: Sequence[float], planted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float)
    p = np.asarray(planted, dtype=bool)
    if s.shape != p.shape or s.ndim != 1:
        raise AuditError("scores and planted flags must be two lists of the same length")
    if not np.all(np.isfinite(s)):
        raise AuditError("a canary's score is not finite")
    return s, p


def _order(s: np.ndarray) -> np.ndarray:
    """Canaries from the lowest score (most "in") up; ties broken by index, deterministically."""
    return np.lexsort((np.arange(len(s)), s))


@dataclass
class OneRunBound:
    eps: float  # the lower bound
    confidence: float
    delta: float
    m: int
    k_plus: int  # the grid point that gave it
    k_minus: int
    guesses: int  # r = k+ + k-
    correct: int  # v
    grid_size: int  # the union bound's divisor
    max_possible: float  # what m canaries could certify at best (all guesses right)


def one_run_bound(
    scores: Sequence[float], planted: Sequence[bool], *, delta: float, confidence: float = 0.95
) -> OneRunBound:
    """Steinke et al.'s one-run bound, the best over :func:`guess_grid` at level
    (1 - confidence) / |grid| each (union bound)."""
    s, p = _check_scores(scores, planted)
    m = len(s)
    grid = guess_grid(m)
    alpha = (1 - confidence) / len(grid)
    ranked = p[_order(s)]
    in_prefix = np.concatenate([[0], np.cumsum(ranked)])  # planted among the i lowest
    out_suffix = np.concatenate([[0], np.cumsum(~ranked[::-1])])  # unplanted among the i highest
    best = None
    for kp, km in grid:
        v = int(in_prefix[kp] + out_suffix[km])
        eps = eps_lower_one_run(m, kp + km, v, delta, alpha)
        if best is None or eps > best[0]:
            best = (eps, kp, km, v)
    eps, kp, km, v = best
    return OneRunBound(
        eps=eps,
        confidence=confidence,
        delta=delta,
        m=m,
        k_plus=kp,
        k_minus=km,
        guesses=kp + km,
        correct=v,
        grid_size=len(grid),
        max_possible=eps_lower_one_run(m, m, m, delta, alpha),
    )


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a binomial proportion (k successes of n)."""
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound at level 1 - alpha."""
    return 1.0 if k >= n else float(stats.beta.ppf(1 - alpha, k + 1, n - k))


@dataclass
class ThresholdBound:
    eps: float
    confidence: float
    delta: float
    threshold: float | None  # score at or below which a canary is called planted
    fpr_upper: float | None
    fnr_upper: float | None
    direction: str | None  # "fnr/fpr" or "fpr/fnr": which of the two symmetric forms won
    grid_size: int


def threshold_bound(
    scores: Sequence[float], planted: Sequence[bool], *, delta: float, confidence: float = 0.95
) -> ThresholdBound:
    """The classic bound at the best of THRESHOLD_QUANTILES fixed score quantiles, with a union
    bound over the thresholds and the two rates (each upper bound at (1 - confidence) / (2 T))."""
    s, p = _check_scores(scores, planted)
    n_in, n_out = int(p.sum()), int((~p).sum())
    qs = np.linspace(0, 1, THRESHOLD_QUANTILES + 2)[1:-1]
    thresholds = np.unique(np.quantile(s, qs, method="lower"))
    grid = THRESHOLD_QUANTILES  # fixed divisor even where quantiles coincide (conservative)
    alpha = (1 - confidence) / (2 * grid)
    best = ThresholdBound(0.0, confidence, delta, None, None, None, None, grid)
    if n_in == 0 or n_out == 0:
        return best
    for t in thresholds:
        fp = int(np.sum(~p & (s <= t)))
        fn = int(np.sum(p & (s > t)))
        fpr_u, fnr_u = cp_upper(fp, n_out, alpha), cp_upper(fn, n_in, alpha)
        for direction, num, den in (("fnr/fpr", fnr_u, fpr_u), ("fpr/fnr", fpr_u, fnr_u)):
            top = 1 - delta - num
            if top > 0 and den > 0:
                eps = math.log(top / den)
                if eps > best.eps:
                    best = ThresholdBound(eps, confidence, delta, float(t), fpr_u, fnr_u, direction, grid)
    return best


@dataclass
class RocPoint:
    fpr_target: float
    tpr: float
    tpr_interval: tuple[float, float]
    false_positives: int
    threshold: float | None


def tpr_at_fpr(scores: Sequence[float], planted: Sequence[bool], fpr: float, confidence: float = 0.95) -> RocPoint:
    """TPR of "planted iff score <= t" at the largest t with at most fpr * (unplanted) false
    positives, with a Clopper-Pearson interval over the planted canaries."""
    s, p = _check_scores(scores, planted)
    ins, outs = np.sort(s[p]), np.sort(s[~p])
    allowed = int(math.floor(fpr * len(outs)))
    # below the (allowed+1)-th lowest unplanted score: exactly `allowed` false positives at most
    limit = outs[allowed] if allowed < len(outs) else np.inf
    tp = int(np.sum(ins < limit))
    fp = int(np.sum(outs < limit))
    lo, hi = clopper_pearson(tp, len(ins), confidence) if len(ins) else (0.0, 1.0)
    return RocPoint(fpr, tp / len(ins) if len(ins) else 0.0, (lo, hi), fp, float(limit) if np.isfinite(limit) else None)


def roc_curve(scores: Sequence[float], planted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of "planted iff score <= t" over every threshold."""
    s, p = _check_scores(scores, planted)
    ranked = p[_order(s)]
    tpr = np.concatenate([[0], np.cumsum(ranked)]) / max(1, ranked.sum())
    fpr = np.concatenate([[0], np.cumsum(~ranked)]) / max(1, (~ranked).sum())
    return fpr, tpr


# -- the claim ---------------------------------------------------------------------------
def group_size(line_chars: int, seq_len: int) -> int:
    """Training windows a line of ``line_chars`` characters (newline included) can touch.

    Windows hold seq_len + 1 characters and start seq_len apart (neighbours share one
    character), so a span of n characters meets at most floor((n - 1) / seq_len) + 2 of them
    per epoch. Across epochs the windows are redrawn, but each step samples each window
    independently, so per step the canary is in at most that many sampled examples: the
    composition is that of a fixed group of this size."""
    return (line_chars - 1) // seq_len + 2


def group_claim(eps_of_delta: Callable[[float], float], k: int, delta: float) -> tuple[float, float]:
    """The per-example accountant's claim for a group of k, at the audit's ``delta``.

    Group privacy: (eps, d)-DP per example gives (k eps, k e^((k-1) eps) d)-DP for a group of
    k. The accountant gives eps for any per-example d, so d is solved for (bisection in log d)
    such that k e^((k-1) eps(d)) d = delta: the tightest claim this route gives at that delta.
    Returns (group eps, per-example d used)."""
    if k == 1:
        return eps_of_delta(delta), delta

    def group_delta(log_d: float) -> float:
        d = math.exp(log_d)
        return k * math.exp(min((k - 1) * eps_of_delta(d), 700.0)) * d

    lo, hi = math.log(delta) - 60.0, math.log(delta / k)  # group_delta(hi) >= delta
    for _ in range(60):
        mid = (lo + hi) / 2
        if group_delta(mid) <= delta:
            lo = mid
        else:
            hi = mid
    d = math.exp(lo)
    return k * eps_of_delta(d), d


@dataclass
class AuditBounds:
    """Both bounds and the headline (the better of the two)."""

    one_run: OneRunBound
    threshold: ThresholdBound
    roc: list[RocPoint] = field(default_factory=list)

    @property
    def best(self) -> tuple[str, float]:
        if self.threshold.eps > self.one_run.eps:
            return "threshold (Clopper-Pearson)", self.threshold.eps
        return "one-run (Steinke et al.)", self.one_run.eps

    def to_json(self) -> dict[str, Any]:
        method, eps = self.best
        return {
            "eps_lower": eps,
            "method": method,
            "one_run": asdict(self.one_run),
            "threshold": asdict(self.threshold),
            "tpr_at_fpr": [asdict(r) for r in self.roc],
        }


def audit_bounds(
    scores: Sequence[float], planted: Sequence[bool], *, delta: float, confidence: float = 0.95
) -> AuditBounds:
    return AuditBounds(
        one_run=one_run_bound(scores, planted, delta=delta, confidence=confidence),
        threshold=threshold_bound(scores, planted, delta=delta, confidence=confidence),
        roc=[tpr_at_fpr(scores, planted, f, confidence) for f in (0.01, 0.001)],
    )
