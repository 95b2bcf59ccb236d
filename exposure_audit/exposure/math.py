"""Exposure math as small pure functions over numbers and arrays (no torch).

Definitions (Secret Sharer, arXiv 1802.08232; docs/method.md):
- rank(s[r]) = #{r' in R : Px(s[r']) <= Px(s[r])}  (ties count against the canary; rank >= 1)
- exposure   = log2|R| - log2 rank, in [0, log2|R|]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


def log2_int(n: int) -> float:
    """log2 of a positive (possibly huge) integer, exact to float precision."""
    if n <= 0:
        raise ValueError("log2 of a non-positive number")
    return math.log2(n)


def exposure_from_rank(rank: int, space_size: int) -> float:
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank {rank} outside 1..{space_size}")
    return max(0.0, log2_int(space_size) - log2_int(rank))


def rank_from_scores(canary: float, scores: np.ndarray, tolerance: float = 0.0) -> int:
    """Rank of ``canary`` among ``scores`` (all of R): the count with score <= canary (+tolerance)."""
    return max(1, int(np.count_nonzero(np.asarray(scores) <= canary + tolerance)))


def clamp_exposure(value: float, space_size: int) -> float:
    return float(min(max(value, 0.0), log2_int(space_size)))


@dataclass
class Estimate:
    exposure: float
    ci: tuple[float, float]


def sampling_estimate(
    canary: float, samples: np.ndarray, space_size: int, confidence: float = 0.9, tolerance: float = 0.0
) -> tuple[Estimate, int]:
    """Interpolation: -log2((1 + k) / (m + 1)), k = samples scoring <= the canary.

    At most log2(m + 1). The interval is Clopper-Pearson for the share p = rank / |R| (exact
    binomial), turned into exposure bounds; with k = 0 the upper bound is log2|R|.
    """
    from scipy.stats import beta

    m = len(samples)
    k = int(np.count_nonzero(np.asarray(samples) <= canary + tolerance))
    point = -math.log2((1 + k) / (m + 1))
    alpha = 1.0 - confidence
    p_lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, m - k + 1))
    p_hi = 1.0 if k == m else float(beta.ppf(1 - alpha / 2, k + 1, m - k))
    lo = clamp_exposure(-math.log2(p_hi), space_size)
    hi = clamp_exposure(-math.log2(p_lo) if p_lo > 0 else math.inf, space_size)
    return Estimate(clamp_exposure(point, space_size), (lo, hi)), k


MIN_SAMPLING_COUNT = 20  # below this many samples at or under the canary, extrapolate instead


def combine_estimates(
    sampling: Estimate, k: int, skewnorm_point: float | None
) -> tuple[float, tuple[float, float], str]:
    """The estimate ``measure`` reports: (exposure, interval, method).

    The interval is always the Clopper-Pearson one of the sampling estimate: it makes no
    assumption about the shape of the distribution, so it keeps its coverage where the
    skew-normal's tail is wrong (measured: benchmarks/engine.py). The point is the sampling
    estimate while at least MIN_SAMPLING_COUNT samples score at or under the canary, else the
    skew-normal extrapolation, kept inside that interval.
    """
    if k >= MIN_SAMPLING_COUNT or skewnorm_point is None:
        return sampling.exposure, sampling.ci, "estimate:sampling"
    lo, hi = sampling.ci
    return float(min(max(skewnorm_point, lo), hi)), sampling.ci, "estimate:skewnorm"


def skewnorm_log2_cdf(x: float | np.ndarray, a: float, loc: float, scale: float) -> np.ndarray:
    """log2 CDF of a skew-normal, finite everywhere.

    ``scipy.stats.skewnorm.logcdf`` underflows to -inf far in the left tail (a well-memorized
    canary sits there). Where it does, use the tail asymptotics: for shape a > 0,
    CDF(z) ~ phi(z) phi(a z) / (pi a (1 + a^2) z^2) ; for a <= 0, CDF(z) ~ 2 Phi(z) (a < 0) or Phi(z).
    """
    from scipy.special import log_ndtr
    from scipy.stats import skewnorm

    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(skewnorm.logcdf(x, a, loc, scale), dtype=np.float64)
    bad = ~np.isfinite(out)
    if np.any(bad):
        z = (x[bad] - loc) / scale
        if a > 0:
            z = np.minimum(z, -1.0)
            tail = -np.log(math.pi * a * (1 + a * a)) - 2 * np.log(-z) - (1 + a * a) * z * z / 2
        else:
            tail = log_ndtr(z) + (math.log(2.0) if a < 0 else 0.0)
        out = out.copy()
        out[bad] = tail
    return out / LN2


@dataclass
class SkewNormFit:
    a: float
    loc: float
    scale: float
    ks_statistic: float  # Kolmogorov-Smirnov distance of the samples from the fit (goodness of fit)

    def exposure(self, canary: float | np.ndarray, space_size: int) -> np.ndarray:
        e = -skewnorm_log2_cdf(canary, self.a, self.loc, self.scale)
        return np.clip(e, 0.0, log2_int(space_size))


def fit_skewnorm(samples: np.ndarray, with_ks: bool = True) -> SkewNormFit:
    from scipy.stats import kstest, skewnorm

    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < 10 or np.ptp(samples) == 0:
        raise ValueError("need at least 10 distinct sample scores to fit a skew-normal")
    a, loc, scale = skewnorm.fit(samples)
    ks = float(kstest(samples, skewnorm(a, loc, scale).cdf).statistic) if with_ks else math.nan
    return SkewNormFit(float(a), float(loc), float(scale), ks)


def skewnorm_exposure(
    canaries: np.ndarray,
    samples: np.ndarray,
    space_size: int,
    *,
    confidence: float = 0.9,
    bootstrap: int = 100,
    seed: int = 0,
) -> tuple[SkewNormFit, np.ndarray, np.ndarray]:
    """Extrapolation: fit a skew-normal to the samples' log-perplexities; exposure ~ -log2 CDF(Px).

    Returns the fit, the point exposures and a ``[n, 2]`` array of percentile-bootstrap
    intervals (refitting on resampled samples). Capped at log2|R|; never infinite.
    """
    canaries = np.atleast_1d(np.asarray(canaries, dtype=np.float64))
    fit = fit_skewnorm(samples)
    point = fit.exposure(canaries, space_size)
    if bootstrap <= 0:
        return fit, point, np.stack([point, point], axis=1)
    rng = np.random.default_rng(seed)
    draws = np.empty((bootstrap, len(canaries)))
    for b in range(bootstrap):
        res = samples[rng.integers(0, len(samples), len(samples))]
        try:
            draws[b] = fit_skewnorm(res, with_ks=False).exposure(canaries, space_size)
        except ValueError:
            draws[b] = point
    alpha = 1.0 - confidence
    ci = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0).T
    return fit, point, ci
