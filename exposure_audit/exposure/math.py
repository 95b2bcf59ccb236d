"""Exposure math as small pure functions over numbers and arrays (no torch).

Definitions (Secret Sharer, arXiv 1802.08232; docs/method.md):
- rank(s[r]) = #{r' in R : Px(s[r']) <= Px(s[r])}  (ties count against the canary; rank >= 1)
- exposure   = log2|R| - log2 rank, in [0, log2|R|]
"""

from __future__ import annotations

import math
import warnings
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
    sampling: Estimate, k: int, skewnorm_point: float | None, degenerate: bool = False
) -> tuple[float, tuple[float, float], str]:
    """The estimate ``measure`` reports: (exposure, interval, method).

    The interval is always the Clopper-Pearson one of the sampling estimate: it makes no
    assumption about the shape of the distribution, so it keeps its coverage where the
    skew-normal's tail is wrong (measured: benchmarks/engine.py). The point is the sampling
    estimate while at least MIN_SAMPLING_COUNT samples score at or under the canary, else the
    skew-normal extrapolation, kept inside that interval; never a degenerate fit's (its tail is
    an artefact of the fit, not of the samples).
    """
    if k >= MIN_SAMPLING_COUNT or skewnorm_point is None or degenerate:
        return sampling.exposure, sampling.ci, "estimate:sampling"
    lo, hi = sampling.ci
    return float(min(max(skewnorm_point, lo), hi)), sampling.ci, "estimate:skewnorm"


# The skew-normal's largest possible skewness (shape a -> infinity): a sample more skewed than
# this cannot be fitted, and the maximum-likelihood fit runs off to a huge a (the fit is degenerate).
SKEWNORM_MAX_SKEWNESS = float(math.sqrt(2.0) * (4.0 - math.pi) / (math.pi - 2.0) ** 1.5)

# scipy's CDF is Phi(z) - 2 T(z, a) (Owen's T): for a > 0 left of the mode the two terms nearly
# cancel. Its figure is kept where the CDF is at least this share of Phi(z) (relative error
# below ~1e-9); elsewhere the CDF is integrated.
_CANCELLATION_SHARE = 1e-7


def _log_cdf_integrated(z: float, a: float) -> float:
    """ln CDF(z) of the standard skew-normal with shape ``a``, by quadrature in log space.

    CDF(z) = 2 * integral_{-inf}^{z} phi(t) Phi(a t) dt. The log of the integrand,
    g(t) = ln phi(t) + ln Phi(a t), is concave (a sum of two log-concave terms), so it has one
    maximum t* on (-inf, z]; the integral of exp(g - g(t*)) over [lo, z] is of order one and
    never underflows, and lo is where g has fallen 80 nats below g(t*). The points handed to the
    quadrature are t*, 0 and -1/a, 1/a: where Phi(a t) turns from its tail to its plateau.
    """
    from scipy.integrate import IntegrationWarning, quad
    from scipy.optimize import minimize_scalar
    from scipy.special import log_ndtr

    def g(t: float) -> float:
        return -0.5 * t * t - 0.5 * math.log(2 * math.pi) + float(log_ndtr(a * t))

    # the unconstrained mode lies between -|a|-1 and 1 (g' = -t + a * mills(a t) changes sign there)
    hi = min(z, 1.0)
    lo_m = min(hi - 1e-12, -abs(a) - 1.0)
    if hi <= lo_m:
        t_star = z
    else:
        res = minimize_scalar(lambda t: -g(t), bounds=(lo_m, hi), method="bounded", options={"xatol": 1e-14})
        t_star = float(res.x) if g(float(res.x)) > g(hi) else hi
    g_star = g(t_star)
    # the integrand's scale at t*: 1/sqrt(-g'') there (>= 1/sqrt(1 + a^2)), or 1/g' at the edge
    width = 1.0 / math.sqrt(1.0 + a * a)
    step = max(width, 1e-300)
    lo = t_star - step
    while g(lo) > g_star - 80.0:
        step *= 2.0
        lo = t_star - step
    points = sorted({p for p in (t_star, 0.0, -1.0 / a if a else 0.0, 1.0 / a if a else 0.0) if lo < p < z})
    total = 0.0
    edges = [lo, *points, z]
    with warnings.catch_warnings():
        # asking for 1e-12 makes quad warn of roundoff where it reaches ~1e-14 instead: harmless
        warnings.simplefilter("ignore", IntegrationWarning)
        for left, right in zip(edges[:-1], edges[1:]):
            part, _ = quad(lambda t: math.exp(g(t) - g_star), left, right, epsabs=0.0, epsrel=1e-12, limit=200)
            total += part
    return math.log(2.0) + g_star + math.log(total)


def _log_cdf_left_tail(z: float, a: float) -> float:
    """ln CDF(z) far in the left tail of a positive shape: CDF ~ exp(-(1+a^2) z^2 / 2) / (pi a (1+a^2) z^2),
    i.e. 2 phi(z) phi(a z) / (a (1 + a^2) z^2). Its relative error is of order 1/(a z)^2 + 1/((1 + a^2) z^2)
    (the Mills ratio of Phi(a t) and the expansion of E1), so it is used only where both are below 1e-10."""
    b = 1.0 + a * a
    return -math.log(math.pi * a * b) - 2.0 * math.log(-z) - b * z * z / 2.0


def _tail_valid(z: float, a: float) -> bool:
    return a > 0 and z < 0 and (a * z) ** 2 > 1e10 and (1.0 + a * a) * z * z > 1e10


def skewnorm_log2_cdf(x: float | np.ndarray, a: float, loc: float, scale: float) -> np.ndarray:
    """log2 CDF of a skew-normal, finite everywhere and accurate at every shape (|a| up to 1e8 and beyond).

    - z = 0: the closed form CDF = 1/2 - arctan(a)/pi (written arctan(1/a)/pi for a > 0, which does not cancel);
    - where scipy's Owen's-T formula does not cancel (the CDF is not a tiny share of Phi(z)): scipy;
    - far in the left tail of a positive shape, where the asymptote's relative error is below 1e-10: the
      asymptote;
    - elsewhere (the cancelling region left of the mode, and wherever scipy underflows): quadrature of the
      density in log space (:func:`_log_cdf_integrated`).
    """
    from scipy.special import log_ndtr, ndtr
    from scipy.stats import skewnorm

    x = np.asarray(x, dtype=np.float64)
    z_all = (x - loc) / scale
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        c = np.asarray(skewnorm.cdf(z_all, a), dtype=np.float64)
        phi = np.asarray(ndtr(z_all), dtype=np.float64)
        ok = np.isfinite(c) & (c > 0) & (c >= _CANCELLATION_SHARE * phi)
        out = np.where(ok, np.log(np.where(ok, c, 1.0)), np.nan)
    flat_out, flat_z = out.reshape(-1), z_all.reshape(-1)
    for j in np.flatnonzero(~np.isfinite(flat_out)):
        z = float(flat_z[j])
        if z == 0.0:
            cdf0 = math.atan(1.0 / a) / math.pi if a > 0 else 0.5 - math.atan(a) / math.pi
            flat_out[j] = math.log(cdf0)
        elif a == 0.0:
            flat_out[j] = float(log_ndtr(z))
        elif _tail_valid(z, a):
            flat_out[j] = _log_cdf_left_tail(z, a)
        else:
            flat_out[j] = _log_cdf_integrated(z, a)
    return flat_out.reshape(out.shape) / LN2


@dataclass
class SkewNormFit:
    a: float
    loc: float
    scale: float
    ks_statistic: float  # Kolmogorov-Smirnov distance of the samples from the fit (goodness of fit)
    # The samples are more skewed than any skew-normal can be (SKEWNORM_MAX_SKEWNESS): the fit
    # ran off to a huge shape with its location at the sample minimum, and its tail means nothing.
    degenerate: bool = False
    sample_skewness: float = math.nan

    def exposure(self, canary: float | np.ndarray, space_size: int) -> np.ndarray:
        e = -skewnorm_log2_cdf(canary, self.a, self.loc, self.scale)
        return np.clip(e, 0.0, log2_int(space_size))


def fit_skewnorm(samples: np.ndarray, with_ks: bool = True) -> SkewNormFit:
    from scipy.stats import kstest, skewnorm

    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < 10 or np.ptp(samples) == 0:
        raise ValueError("need at least 10 distinct sample scores to fit a skew-normal")
    from scipy.stats import skew

    a, loc, scale = skewnorm.fit(samples)
    ks = float(kstest(samples, skewnorm(a, loc, scale).cdf).statistic) if with_ks else math.nan
    g1 = float(skew(samples))
    return SkewNormFit(float(a), float(loc), float(scale), ks, abs(g1) > SKEWNORM_MAX_SKEWNESS, g1)


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
