import math

import numpy as np
import pytest

from exposure_audit.exposure.math import (
    SKEWNORM_MAX_SKEWNESS,
    combine_estimates,
    exposure_from_rank,
    fit_skewnorm,
    rank_from_scores,
    sampling_estimate,
    skewnorm_exposure,
    skewnorm_log2_cdf,
)


def test_exposure_from_rank():
    assert exposure_from_rank(1, 1024) == 10.0
    assert exposure_from_rank(1024, 1024) == 0.0
    assert exposure_from_rank(512, 1024) == pytest.approx(1.0)
    huge = 36**20
    assert exposure_from_rank(1, huge) == pytest.approx(20 * math.log2(36))
    with pytest.raises(ValueError):
        exposure_from_rank(0, 10)


def test_rank_counts_ties_against_the_canary():
    scores = np.array([1.0, 2.0, 2.0, 3.0])
    assert rank_from_scores(2.0, scores) == 3
    assert rank_from_scores(0.5, scores) == 1  # rank is at least 1
    assert rank_from_scores(3.0, scores) == 4


def test_expected_exposure_of_random_canary_is_about_1_44_bits():
    rng = np.random.default_rng(0)
    size = 4096
    exps = []
    for _ in range(300):
        scores = rng.normal(size=size)
        exps.append(exposure_from_rank(rank_from_scores(scores[0], scores), size))
    assert abs(np.mean(exps) - 1 / math.log(2)) < 0.2


def test_sampling_estimate_point_and_interval():
    samples = np.arange(1000, dtype=float)
    est, k = sampling_estimate(99.0, samples, 10**6)
    assert k == 100
    assert est.exposure == pytest.approx(-math.log2(101 / 1001))
    assert est.ci[0] <= est.exposure <= est.ci[1]
    top, k0 = sampling_estimate(-5.0, samples, 10**6)
    assert k0 == 0
    assert top.exposure == pytest.approx(math.log2(1001))
    assert top.ci[1] == pytest.approx(math.log2(10**6))  # nothing bounds it from above


def test_skewnorm_estimate_tracks_true_tail_and_never_infinite():
    from scipy.stats import skewnorm

    a, loc, scale = 4.0, 50.0, 6.0
    samples = skewnorm.rvs(a, loc, scale, size=10_000, random_state=1)
    size = 10**9
    canaries = np.array([skewnorm.ppf(2**-3, a, loc, scale), skewnorm.ppf(2**-14, a, loc, scale), -1e6])
    fit, point, ci = skewnorm_exposure(canaries, samples, size, bootstrap=30)
    truth = -skewnorm.logcdf(canaries[:2], a, loc, scale) / math.log(2)
    assert np.all(np.abs(point[:2] - truth) < 1.0)
    assert np.all(np.isfinite(point)) and np.all(np.isfinite(ci))
    assert point[2] == pytest.approx(math.log2(size))  # capped, not infinite
    assert np.all(ci[:, 0] <= point + 1e-9) and np.all(point <= ci[:, 1] + 1e-9)
    assert 0 <= fit.ks_statistic < 0.05


def test_log2_cdf_is_finite_and_monotone_deep_in_the_tail():
    xs = np.linspace(-1e4, 0, 200)
    for a in (5.0, 0.0, -3.0):
        v = skewnorm_log2_cdf(xs, a, 40.0, 5.0)
        assert np.all(np.isfinite(v))
        assert np.all(np.diff(v) >= -1e-6)


def _reference_log2_cdf(z: float, a: float) -> float:
    """log2 CDF of the standard skew-normal in 30-digit arithmetic: tanh-sinh quadrature of
    2 phi(t) Phi(a t) on segments scaled to the integrand's width around its one peak (the
    density is log-concave), so no cancellation and no underflow."""
    import mpmath

    with mpmath.workdps(30):
        z, a = mpmath.mpf(z), mpmath.mpf(a)

        def g(t):
            return mpmath.log(2) + mpmath.log(mpmath.npdf(t)) + mpmath.log(mpmath.ncdf(a * t))

        def dg(t):
            return -t + a * mpmath.npdf(a * t) / mpmath.ncdf(a * t)

        if dg(z) >= 0:
            peak, width = z, 1 / max(dg(z), mpmath.mpf(1))
        else:
            lo, hi = -abs(a) - 2, z
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if dg(mid) > 0 else (lo, mid)
            peak = (lo + hi) / 2
            width = 1 / mpmath.sqrt(-mpmath.diff(g, peak, 2))
        top = g(peak)
        pts = sorted({peak} | {peak + s * width * mpmath.mpf(2) ** k for k in range(-8, 26, 3) for s in (-1, 1)})
        pts = [p for p in pts if p < z] + [z]
        pts = [pts[0] - width * mpmath.mpf(2) ** 40, *pts]
        total = mpmath.quad(lambda t: mpmath.exp(g(t) - top), pts)
        return float((top + mpmath.log(total)) / mpmath.log(2))


@pytest.mark.parametrize("a", [-1e8, -30.0, 0.0, 2.0, 30.0, 1e3, 1e5, 9e7, 1e8])
def test_log2_cdf_equals_a_high_precision_reference_at_extreme_shapes_and_around_zero(a):
    for z in (-3.0, -0.5, -1e-3, -1e-7, 0.0, 3e-9, 2.8e-8, 1e-6, 1e-3, 0.5, 4.0):
        got = float(skewnorm_log2_cdf(z, a, 0.0, 1.0))
        want = _reference_log2_cdf(z, a)
        # 1e-6 relative to the CDF (|ln ratio|), or to the figure itself where the CDF is
        # beyond float64's reach (log2 CDF of order 1e15 has no 1e-6 absolute resolution)
        assert abs(got - want) * math.log(2) <= max(1e-6, 1e-12 * abs(want)), (a, z, got, want)
    assert float(skewnorm_log2_cdf(0.0, a, 0.0, 1.0)) == pytest.approx(math.log2(0.5 - math.atan(a) / math.pi))


def test_a_degenerate_fit_is_flagged_and_its_edge_is_not_the_cap():
    """Samples more skewed than a skew-normal can be: the fit runs off to a huge shape with its
    location at the sample minimum. A canary at that minimum sits at z slightly above 0, where the
    old code took the left-tail asymptote with z forced to -1 and reported log2|R|."""
    rng = np.random.default_rng(0)
    samples = 60.0 + 8.0 * rng.gamma(1.0, size=2000)  # skewness ~2 > 0.995
    fit = fit_skewnorm(samples)
    assert fit.degenerate and fit.a > 1e6 and fit.sample_skewness > SKEWNORM_MAX_SKEWNESS
    z = (samples.min() - fit.loc) / fit.scale
    assert 0 < z < 1e-6
    size = 10**9
    got = float(fit.exposure(samples.min(), size))
    assert got == pytest.approx(-_reference_log2_cdf(z, fit.a), rel=1e-6)
    assert got < math.log2(size) - 2  # 25.4 bits here, not the 29.90 cap
    # and the estimate measure reports falls back to the sampling one
    samp, k = sampling_estimate(samples.min(), samples, size)
    assert combine_estimates(samp, k, got, degenerate=True)[2] == "estimate:sampling"
    assert combine_estimates(samp, k, got)[2] == "estimate:skewnorm"
    assert not fit_skewnorm(np.random.default_rng(1).normal(size=2000)).degenerate
