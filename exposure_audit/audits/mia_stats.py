"""The statistics of the memorization audit, pure and torch-free (in the spirit of exposure/math.py).

Membership scores follow one orientation: higher = more likely a member. An attack says
"member" for every score strictly above a threshold.

- :func:`auc`: the probability that a random member scores above a random non-member, ties
  counting one half (the Mann-Whitney statistic), with DeLong's interval (:func:`auc_interval`).
- :func:`tpr_at_fpr`: the true-positive rate at the lowest threshold whose false positives are at
  most ``floor(fpr * non_members)``, with a Clopper-Pearson interval over the members. With fewer
  than ``1 / fpr`` non-members no false positive is allowed at all, so the point is "TPR at 0 FPR"
  (the row says how many false positives it allowed).
- :func:`extracted_within`: 1 - (1 - p)^n >= 1/2, computed in logs so tiny p stay exact.
- :func:`copies_bin`: the bins of the duplication breakdown (1, 2-4, 5-16, more).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from .privacy_audit import clopper_pearson

COPIES_BINS = ((1, 1, "1"), (2, 4, "2-4"), (5, 16, "5-16"), (17, None, "more"))
QUERIES = (1, 10, 100, 1000)


def _arrays(members: Sequence[float], non_members: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(members, dtype=np.float64)
    y = np.asarray(non_members, dtype=np.float64)
    if x.size == 0 or y.size == 0:
        raise ValueError("needs at least one member and one non-member score")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite")
    return x, y


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """P(member score > non-member score) + P(equal) / 2, from midranks (O(n log n))."""
    x, y = _arrays(members, non_members)
    ranks = stats.rankdata(np.concatenate([x, y]))  # midranks: a tie counts one half
    m, n = x.size, y.size
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def auc_interval(
    members: Sequence[float], non_members: Sequence[float], confidence: float = 0.95
) -> tuple[float, float]:
    """DeLong et al. (1988): the AUC's variance from its structural components, a normal interval
    clipped to [0, 1]. Deterministic (no resampling); degenerate ([1, 1]) when the sets are fully
    separated, which a reader should read together with the set sizes."""
    x, y = _arrays(members, non_members)
    m, n = x.size, y.size
    a = auc(x, y)
    if m < 2 or n < 2:
        return 0.0, 1.0
    all_ranks = stats.rankdata(np.concatenate([x, y]))
    v10 = (all_ranks[:m] - stats.rankdata(x)) / n  # per member: share of non-members below it
    v01 = 1.0 - (all_ranks[m:] - stats.rankdata(y)) / m  # per non-member: share of members above it
    var = np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n
    half = float(stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var, 0.0)))
    return max(0.0, a - half), min(1.0, a + half)


@dataclass(frozen=True)
class TprPoint:
    fpr_target: float
    tpr: float
    tpr_ci: tuple[float, float]
    false_positives: int  # at the chosen threshold (at most floor(fpr_target * non_members))
    true_positives: int


def tpr_at_fpr(
    members: Sequence[float], non_members: Sequence[float], fpr: float, confidence: float = 0.95
) -> TprPoint:
    """TPR of "member iff score > t" at the lowest t with at most floor(fpr * N) false positives:
    t is the (allowed + 1)-th highest non-member score (so ties at t count as negatives)."""
    x, y = _arrays(members, non_members)
    allowed = int(math.floor(fpr * y.size + 1e-9))
    ys = np.sort(y)[::-1]
    limit = ys[allowed] if allowed < y.size else -np.inf
    tp = int(np.sum(x > limit))
    fp = int(np.sum(y > limit))
    return TprPoint(fpr, tp / x.size, clopper_pearson(tp, x.size, confidence), fp, tp)


def roc_curve(
    members: Sequence[float], non_members: Sequence[float], max_points: int = 201
) -> tuple[list[float], list[float]]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1); tied scores move both at once.
    Thinned to about ``max_points`` points (always keeping the ends) for the JSON report."""
    x, y = _arrays(members, non_members)
    scores = np.concatenate([x, y])
    is_member = np.concatenate([np.ones(x.size, bool), np.zeros(y.size, bool)])
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], is_member[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold sits after the last of each tied run
    tpr = np.r_[0.0, np.cumsum(lab)[last_of_tie] / x.size]
    fpr = np.r_[0.0, np.cumsum(~lab)[last_of_tie] / y.size]
    if tpr.size > max_points:
        keep = np.unique(np.r_[np.linspace(0, tpr.size - 1, max_points).round().astype(int)])
        tpr, fpr = tpr[keep], fpr[keep]
    return [float(v) for v in fpr], [float(v) for v in tpr]


def extracted_within(log_p: float, n: int) -> bool:
    """Whether 1 - (1 - p)^n >= 1/2, with p = exp(log_p) (log_p = -inf: p = 0, never)."""
    if log_p == -math.inf:
        return False
    p = math.exp(min(log_p, 0.0))
    if p >= 1.0:
        return True
    return -math.expm1(n * math.log1p(-p)) >= 0.5


def copies_bin(copies: int) -> str:
    for lo, hi, name in COPIES_BINS:
        if copies >= lo and (hi is None or copies <= hi):
            return name
    raise ValueError(f"copies must be >= 1, not {copies}")


def rate(k: int, n: int, confidence: float = 0.95) -> dict[str, float | list[float] | int]:
    """A proportion with its two-sided Clopper-Pearson interval (as the JSON report writes it)."""
    lo, hi = clopper_pearson(k, n, confidence) if n else (0.0, 1.0)
    return {"k": k, "n": n, "rate": k / n if n else 0.0, "ci": [lo, hi]}


def quantiles(
    values: Sequence[float], qs: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
) -> dict[str, float | None]:
    """Quantiles of values that may hold -inf (a zero probability): None stands for -inf in JSON."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    out: dict[str, float | None] = {}
    for q in qs:
        if v.size == 0:
            out[f"{q:g}"] = None
            continue
        x = float(v[min(v.size - 1, int(math.floor(q * (v.size - 1) + 0.5)))])
        out[f"{q:g}"] = x if math.isfinite(x) else None
    return out


__all__ = [
    "COPIES_BINS",
    "QUERIES",
    "TprPoint",
    "auc",
    "auc_interval",
    "copies_bin",
    "extracted_within",
    "quantiles",
    "rate",
    "roc_curve",
    "tpr_at_fpr",
]
