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

* :func:`fdp_bound`: Mahloujifar, Melis and Chaudhuri, "Auditing f-Differential Privacy in One
  Run" (ICML 2025, arXiv 2410.22235), on the same guesses and the same grid as
  :func:`one_run_bound`. For a hypothesised trade-off curve f it bounds the probability of v
  correct guesses out of r by a backward recursion (with x -> f(1 - x), the least probability
  the other world gives an event of probability x):

      h_v = tau (r/m) (r - v)/r,   q_v = tau (r/m) v/r,
      h_i = max(h_{i+1}, f(1 - q_{i+1})),   q_i = q_{i+1} + i/(r - i) (h_i - h_{i+1}),

  and the curve is rejected at level tau when q_0 + h_0 > r/m. With the curve of
  (eps, delta)-DP, f(x) = max(0, 1 - delta - e^eps x, e^-eps (1 - delta - x)), the largest
  rejected eps is an (eps, delta) lower bound with no further assumption (``curve="eps-delta"``).
  With Gaussian curves (mu-GDP, f(x) = Phi(Phi^-1(1 - x) - mu)) the largest rejected mu is a
  GDP lower bound, turned into epsilon at the audit's delta by the GDP -> (eps, delta)
  conversion of Dong, Roth and Su (Corollary 2.13): delta = Phi(-eps/mu + mu/2) -
  e^eps Phi(-eps/mu - mu/2) (``curve="gaussian"``). That epsilon bounds the run's epsilon
  only if its trade-off curve is Gaussian (DP-SGD's is close to one after many steps: the
  central limit theorem of Dong et al.); it is the figure the f-DP audits publish, and reports
  mark it as resting on that assumption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from ..errors import AuditError

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
    if delta == 0:
        gdp_epsilon(1.0, delta)  # the GDP bound's own message: undefined at delta 0
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


# -- the one-run f-DP bound (Mahloujifar et al.) ------------------------------------------
# Candidate parameters (mu for Gaussian curves, eps for (eps, delta) curves), tested all at
# once: 0.005 apart up to 12, beyond anything 100,000 canaries could certify. The family is
# nested (a mu-GDP run is mu'-GDP for every mu' > mu), so the largest rejected value is a
# lower bound at the level of one test: no union bound over this grid is owed.
FDP_GRID = np.linspace(0.0, 12.0, 2401)[1:]
FDP_CURVES = ("gaussian", "eps-delta")
_CAP = 2.0  # q and h only grow along the recursion; past r/m <= 1 the verdict is settled


def _other_world_gaussian(mu: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """x -> f(1 - x) = Phi(Phi^-1(x) - mu): the least probability of an event of probability x."""
    from scipy import special

    return lambda x: special.ndtr(special.ndtri(np.clip(x, 0.0, 1.0)) - mu)


def _other_world_eps_delta(eps: np.ndarray, delta: float) -> Callable[[np.ndarray], np.ndarray]:
    """x -> f(1 - x) for the (eps, delta)-DP curve: max(0, 1 - delta - e^eps (1 - x), e^-eps (x - delta))."""
    e = np.exp(eps)

    def g(x: np.ndarray) -> np.ndarray:
        x = np.clip(x, 0.0, 1.0)
        return np.maximum(0.0, np.maximum(1.0 - delta - e * (1.0 - x), (x - delta) / e))

    return g


def fdp_rejects(
    other_world: Callable[[np.ndarray], np.ndarray], m: int, r: int, v: int, tau: float, n: int
) -> np.ndarray:
    """Which of n hypothesised curves (vectorised in ``other_world``) the recursion rejects at
    level ``tau`` after v correct guesses of r over m canaries (see the module docstring)."""
    if not 0 <= v <= r <= m or r == 0:
        return np.zeros(n, dtype=bool)
    scale = tau * r / m
    q = np.full(n, scale * v / r)
    h = np.full(n, scale * (r - v) / r)
    for i in range(v - 1, -1, -1):
        h_next = np.minimum(np.maximum(h, other_world(q)), _CAP)
        q = np.minimum(q + (i / (r - i)) * (h_next - h), _CAP)
        h = h_next
    return q + h > r / m


def gdp_epsilon(mu: float, delta: float) -> float:
    """The epsilon at ``delta`` of mu-GDP (Dong, Roth, Su, Corollary 2.13), by bisection.

    Undefined at delta = 0 (a Gaussian curve with mu > 0 is (eps, 0)-DP for no finite eps)."""
    from scipy import special

    if not 0 < delta < 1:
        raise AuditError(
            f"audit.delta: the GDP bound has no epsilon at delta {delta!r} "
            "(a Gaussian trade-off curve is (eps, 0)-DP for no finite eps); use a delta in (0, 1)"
        )
    if mu <= 0:
        return 0.0

    def delta_of(eps: float) -> float:  # in the log domain: the second term underflows otherwise
        a = special.log_ndtr(-eps / mu + mu / 2)
        b = eps + special.log_ndtr(-eps / mu - mu / 2)
        return math.exp(a) * -math.expm1(b - a) if b < a else 0.0

    if delta_of(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_of(hi) > delta:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return lo


@dataclass
class FdpBound:
    eps: float  # the lower bound on epsilon at delta (for "gaussian": of the Gaussian curve)
    curve: str  # "gaussian" (mu-GDP, then converted) or "eps-delta"
    mu: float | None  # the GDP lower bound ("gaussian" only)
    assumes_gaussian: bool  # eps holds only if the run's trade-off curve is Gaussian
    confidence: float
    delta: float
    m: int
    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    grid_size: int  # the union bound's divisor (the same (k+, k-) grid as the one-run bound)
    max_possible: float  # every one of m guesses right


def _fdp_param(curve: str, m: int, r: int, v: int, tau: float, delta: float) -> float:
    """The largest rejected grid parameter (mu or eps), 0 if none."""
    other = _other_world_gaussian(FDP_GRID) if curve == "gaussian" else _other_world_eps_delta(FDP_GRID, delta)
    with np.errstate(over="ignore", invalid="ignore"):
        rejected = fdp_rejects(other, m, r, v, tau, len(FDP_GRID))
    return float(FDP_GRID[rejected].max()) if rejected.any() else 0.0


def fdp_bound(
    scores: Sequence[float],
    planted: Sequence[bool],
    *,
    delta: float,
    confidence: float = 0.95,
    curve: str = "gaussian",
) -> FdpBound:
    """Mahloujifar et al.'s one-run f-DP bound, the best over :func:`guess_grid` at level
    (1 - confidence) / |grid| each (the union bound of :func:`one_run_bound`)."""
    if curve not in FDP_CURVES:
        raise AuditError(f"f-DP curve {curve!r} is not one of {', '.join(FDP_CURVES)}")
    if curve == "gaussian":
        gdp_epsilon(1.0, delta)  # refuses a delta where the conversion is undefined, before any work
    s, p = _check_scores(scores, planted)
    m = len(s)
    grid = guess_grid(m)
    tau = (1 - confidence) / len(grid)
    ranked = p[_order(s)]
    in_prefix = np.concatenate([[0], np.cumsum(ranked)])
    out_suffix = np.concatenate([[0], np.cumsum(~ranked[::-1])])
    best = (-1.0, 0, 0, 0)
    for kp, km in grid:
        v = int(in_prefix[kp] + out_suffix[km])
        param = _fdp_param(curve, m, kp + km, v, tau, delta)
        if param > best[0]:
            best = (param, kp, km, v)
    param, kp, km, v = best
    top = _fdp_param(curve, m, m, m, tau, delta)
    as_eps = (lambda x: gdp_epsilon(x, delta)) if curve == "gaussian" else (lambda x: x)
    return FdpBound(
        eps=as_eps(param),
        curve=curve,
        mu=param if curve == "gaussian" else None,
        assumes_gaussian=curve == "gaussian",
        confidence=confidence,
        delta=delta,
        m=m,
        k_plus=kp,
        k_minus=km,
        guesses=kp + km,
        correct=v,
        grid_size=len(grid),
        max_possible=as_eps(top),
    )


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


BOUND_NAMES = {
    "one_run": "one-run (Steinke et al.)",
    "threshold": "threshold (Clopper-Pearson)",
    "fdp_eps_delta": "one-run f-DP, (eps, delta) curve (Mahloujifar et al.)",
    "fdp_gaussian": "one-run f-DP, Gaussian curve (Mahloujifar et al.; assumes GDP)",
}


@dataclass
class AuditBounds:
    """Every bound, and the headline: the largest, named (ties go to the earlier, assumption-free one)."""

    one_run: OneRunBound
    threshold: ThresholdBound
    fdp_eps_delta: FdpBound | None = None
    fdp_gaussian: FdpBound | None = None
    roc: list[RocPoint] = field(default_factory=list)

    def all(self) -> dict[str, float]:
        out = {"one_run": self.one_run.eps, "threshold": self.threshold.eps}
        for key in ("fdp_eps_delta", "fdp_gaussian"):
            b = getattr(self, key)
            if b is not None:
                out[key] = b.eps
        return out

    def _best_of(self, keys: Sequence[str]) -> tuple[str, float]:
        values = {k: v for k, v in self.all().items() if k in keys}
        key = max(values, key=lambda k: (values[k], -list(BOUND_NAMES).index(k)))
        return BOUND_NAMES[key], values[key]

    @property
    def best(self) -> tuple[str, float]:
        return self._best_of(list(BOUND_NAMES))

    @property
    def best_assumption_free(self) -> tuple[str, float]:
        """The best bound that does not rest on the Gaussian-curve assumption."""
        return self._best_of([k for k in BOUND_NAMES if k != "fdp_gaussian"])

    def to_json(self) -> dict[str, Any]:
        method, eps = self.best
        free_method, free_eps = self.best_assumption_free
        out: dict[str, Any] = {
            "eps_lower": eps,
            "method": method,
            "assumes_gaussian": method == BOUND_NAMES["fdp_gaussian"],
            "eps_lower_assumption_free": free_eps,
            "method_assumption_free": free_method,
            "one_run": asdict(self.one_run),
            "threshold": asdict(self.threshold),
        }
        for key in ("fdp_eps_delta", "fdp_gaussian"):
            b = getattr(self, key)
            out[key] = asdict(b) if b is not None else None
        out["tpr_at_fpr"] = [asdict(r) for r in self.roc]
        return out


def audit_bounds(
    scores: Sequence[float], planted: Sequence[bool], *, delta: float, confidence: float = 0.95
) -> AuditBounds:
    return AuditBounds(
        one_run=one_run_bound(scores, planted, delta=delta, confidence=confidence),
        threshold=threshold_bound(scores, planted, delta=delta, confidence=confidence),
        fdp_eps_delta=fdp_bound(scores, planted, delta=delta, confidence=confidence, curve="eps-delta"),
        fdp_gaussian=fdp_bound(scores, planted, delta=delta, confidence=confidence, curve="gaussian"),
        roc=[tpr_at_fpr(scores, planted, f, confidence) for f in (0.01, 0.001)],
    )
