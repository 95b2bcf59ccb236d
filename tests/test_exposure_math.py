import math

import numpy as np
import pytest

from exposure_audit.exposure.math import (
    exposure_from_rank,
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
