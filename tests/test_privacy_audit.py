"""The epsilon lower bounds on synthetic scores with known separation (no torch, fast)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from exposure_audit.audits.privacy_audit import (
    audit_bounds,
    check_audit_settings,
    eps_lower_one_run,
    group_claim,
    group_size,
    guess_grid,
    minimum_canaries,
    one_run_bound,
    p_value_one_run,
    threshold_bound,
    tpr_at_fpr,
)
from exposure_audit.errors import AuditError

DELTA = 1e-5


def flags(m: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(m) < 0.5


def direct_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The theorem's right-hand side summed term by term with exact binomial coefficients."""
    q = Fraction(math.exp(eps) / (1 + math.exp(eps)))

    def pmf(j: int) -> Fraction:
        return math.comb(r, j) * q**j * (1 - q) ** (r - j)

    def f(x: int) -> Fraction:  # P[Binomial(r, q) >= x]
        return sum((pmf(j) for j in range(max(x, 0), r + 1)), Fraction(0))

    alpha = max(((f(v - i) - f(v)) / i for i in range(1, v + 1)), default=Fraction(0))
    return min(float(f(v) + 2 * m * Fraction(delta) * alpha), 1.0)


@pytest.mark.parametrize("m,r,v,eps", [(30, 20, 15, 0.7), (30, 30, 30, 2.0), (50, 10, 4, 0.1), (40, 25, 22, 1.3)])
def test_p_value_matches_a_direct_computation(m, r, v, eps):
    assert p_value_one_run(m, r, v, eps, 1e-3) == pytest.approx(direct_p_value(m, r, v, eps, 1e-3), rel=1e-9)


@pytest.mark.parametrize("m,r,v", [(40, 30, 27), (100, 60, 55), (40, 40, 40)])
def test_bound_is_exactly_where_the_binomial_tail_stops_rejecting(m, r, v):
    """The returned eps is rejected at the level and a hair above it is not (direct computation)."""
    alpha = 0.05
    eps = eps_lower_one_run(m, r, v, DELTA, alpha)
    assert eps > 0
    assert direct_p_value(m, r, v, eps, DELTA) < alpha
    assert direct_p_value(m, r, v, eps + 1e-6, DELTA) >= alpha


def test_identical_distributions_give_a_bound_near_zero():
    m = 1000
    planted = flags(m)
    scores = np.random.default_rng(1).normal(size=m)  # independent of the flags
    b = audit_bounds(scores, planted, delta=DELTA)
    assert b.one_run.eps < 0.1 and b.threshold.eps < 0.1
    assert b.best[1] < 0.1


def test_perfect_separation_reaches_the_most_m_allows():
    m = 1000
    planted = flags(m)
    scores = np.where(planted, 0.0, 10.0) + np.random.default_rng(2).random(m)
    b = one_run_bound(scores, planted, delta=DELTA)
    assert b.correct == b.guesses  # every guess right
    # the best grid point guesses on 90% of the canaries: within 3% of all m guesses right
    assert b.eps == pytest.approx(b.max_possible, rel=0.03)
    assert b.eps <= b.max_possible
    # and more canaries can certify more
    assert one_run_bound(scores[:200], planted[:200], delta=DELTA).eps < b.eps - 1


def test_partial_separation_lies_between():
    m = 1000
    planted = flags(m)
    scores = np.random.default_rng(3).normal(size=m) - 2.0 * planted  # a strong but imperfect signal
    b = audit_bounds(scores, planted, delta=DELTA)
    assert 0.5 < b.best[1] < b.one_run.max_possible


def test_union_bound_divides_the_level_by_the_grid():
    m = 500
    planted = flags(m)
    scores = np.random.default_rng(4).normal(size=m) - 1.5 * planted
    b = one_run_bound(scores, planted, delta=DELTA, confidence=0.95)
    alpha = 0.05 / len(guess_grid(m))
    assert b.grid_size == len(guess_grid(m))
    assert b.eps == pytest.approx(eps_lower_one_run(m, b.guesses, b.correct, DELTA, alpha))
    # the same count without the union bound would claim more: the search is paid for
    assert eps_lower_one_run(m, b.guesses, b.correct, DELTA, 0.05) > b.eps


def test_threshold_bound_uses_clopper_pearson_upper_bounds():
    m = 1000
    planted = flags(m)
    scores = np.where(planted, 0.0, 10.0) + np.random.default_rng(5).random(m)
    t = threshold_bound(scores, planted, delta=DELTA)
    assert t.eps == pytest.approx(math.log((1 - DELTA - t.fnr_upper) / t.fpr_upper))
    assert 0 < t.fpr_upper < 0.05


def test_tpr_at_low_fpr():
    m = 1000
    planted = flags(m)
    scores = np.where(planted, 0.0, 10.0)
    scores[np.flatnonzero(planted)[:100]] = 20.0  # 100 planted canaries look unplanted
    r = tpr_at_fpr(scores, planted, 0.01)
    n_in = int(planted.sum())
    assert r.false_positives == 0
    assert r.tpr == pytest.approx((n_in - 100) / n_in)
    assert r.tpr_interval[0] < r.tpr < r.tpr_interval[1]


def test_group_claim():
    assert group_size(31, 100) == 2  # a short line: at most two windows (it can straddle a boundary)
    assert group_size(101, 100) == 3
    # k = 1 is the accountant's own figure; k = 2 at least doubles it (group privacy)
    eps_of = lambda d: 1.0 + 0.2 * math.log(1 / d)  # noqa: E731 - a made-up accountant
    assert group_claim(eps_of, 1, 1e-5)[0] == pytest.approx(eps_of(1e-5))
    eps2, d0 = group_claim(eps_of, 2, 1e-5)
    assert 2 * math.exp(eps_of(d0)) * d0 == pytest.approx(1e-5, rel=1e-6)
    assert eps2 == pytest.approx(2 * eps_of(d0)) and eps2 > 2 * eps_of(1e-5)


def test_settings_the_bounds_cannot_work_with():
    need = minimum_canaries(DELTA, 0.95)
    assert max(1, need - 1) < need
    with pytest.raises(AuditError, match=f"the minimum is {need}"):
        check_audit_settings(need - 1, DELTA, 0.95)
    check_audit_settings(need, DELTA, 0.95)
    for bad in (0.0, 1.0, -1e-5, 2.0):
        with pytest.raises(AuditError, match="audit.delta"):
            check_audit_settings(1000, bad, 0.95)


# -- the one-run f-DP bound (Mahloujifar et al.) -----------------------------------------
from statistics import NormalDist  # noqa: E402 - an implementation independent of scipy's

from exposure_audit.audits.privacy_audit import (
    FDP_GRID,
    _other_world_eps_delta,
    _other_world_gaussian,
    fdp_bound,
    fdp_rejects,
    gdp_epsilon,
)

N = NormalDist()


def direct_rejects_gaussian(m: int, r: int, v: int, tau: float, mu: float) -> bool:
    """The recursion written out once more, scalar, with the standard library's normal."""
    q, h = tau * (r / m) * v / r, tau * (r / m) * (r - v) / r
    for i in range(v - 1, -1, -1):
        x = min(max(q, 0.0), 1.0)
        other = 0.0 if x == 0 else 1.0 if x == 1 else N.cdf(N.inv_cdf(x) - mu)
        h_next = max(h, other)
        q, h = q + i / (r - i) * (h_next - h), h_next
        if q + h > r / m:  # the sums only grow: settled
            return True
    return q + h > r / m


@pytest.mark.parametrize("r,tau", [(20, 0.0025), (100, 0.0025), (100, 0.05), (400, 0.05)])
def test_fdp_recursion_at_zero_is_the_exact_binomial_test(r, tau):
    """At mu -> 0 (and at eps = 0, delta = 0) the guesses are fair coins, so the exact test is
    the binomial tail. The recursion must never reject where that tail is above tau (sound),
    and it lags it by at most one correct guess (it is an upper bound on the tail, tight or
    one guess conservative)."""
    from scipy import stats

    gaussian, pure = _other_world_gaussian(np.array([1e-9])), _other_world_eps_delta(np.array([0.0]), 0.0)
    first = {"exact": None, "gaussian": None, "eps-delta": None}
    for v in range(r + 1):
        exact = stats.binom.sf(v - 1, r, 0.5) <= tau
        for name, f in (("gaussian", gaussian), ("eps-delta", pure)):
            rejected = fdp_rejects(f, 1000, r, v, tau, 1)[0]
            assert not rejected or exact, (name, v)
            if rejected and first[name] is None:
                first[name] = v
        if exact and first["exact"] is None:
            first["exact"] = v
    assert first["exact"] is not None
    for name in ("gaussian", "eps-delta"):
        assert first[name] in (first["exact"], first["exact"] + 1), (name, first)


@pytest.mark.parametrize("sep", [1.0, 2.5])
def test_fdp_bound_never_exceeds_a_direct_computation(sep):
    m = 300
    planted = flags(m)
    scores = np.random.default_rng(7).normal(size=m) - sep * planted
    b = fdp_bound(scores, planted, delta=DELTA, curve="gaussian")
    tau = 0.05 / b.grid_size
    assert b.mu > 0
    assert direct_rejects_gaussian(m, b.guesses, b.correct, tau, b.mu)  # the reported mu is rejected...
    assert not direct_rejects_gaussian(m, b.guesses, b.correct, tau, b.mu + 0.005)  # ...the next one is not
    assert b.eps == pytest.approx(gdp_epsilon(b.mu, DELTA))


def test_gdp_conversion_matches_its_formula():
    from scipy.stats import norm

    for mu in (0.3, 1.0, 2.0):
        eps = gdp_epsilon(mu, DELTA)
        direct = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert direct == pytest.approx(DELTA, rel=1e-6)
    assert gdp_epsilon(0.0, DELTA) == 0.0
    assert gdp_epsilon(1.0, 1e-3) < gdp_epsilon(1.0, DELTA) < gdp_epsilon(2.0, DELTA)


def test_fdp_identical_distributions_give_about_zero():
    m = 1000
    planted = flags(m)
    scores = np.random.default_rng(1).normal(size=m)
    for curve in ("gaussian", "eps-delta"):
        assert fdp_bound(scores, planted, delta=DELTA, curve=curve).eps < 0.1


@pytest.mark.parametrize("sep", [1.0, 2.0, 100.0])
def test_fdp_bounds_are_at_least_steinke_on_separated_scores(sep):
    m = 1000
    planted = flags(m)
    scores = np.random.default_rng(8).normal(size=m) - sep * planted
    b = audit_bounds(scores, planted, delta=DELTA)
    assert b.one_run.eps > 0.5
    assert b.fdp_eps_delta.eps >= b.one_run.eps
    assert b.fdp_gaussian.eps >= b.fdp_eps_delta.eps
    assert b.best == ("one-run f-DP, Gaussian curve (Mahloujifar et al.; assumes GDP)", b.fdp_gaussian.eps)
    assert b.best_assumption_free[1] == b.fdp_eps_delta.eps
    j = b.to_json()
    assert j["assumes_gaussian"] and j["eps_lower"] == b.fdp_gaussian.eps and j["fdp_gaussian"]["mu"] > 0


def test_gdp_bound_is_sound_on_gaussian_mechanisms():
    """Scores of a mu-GDP mechanism per canary (planted: N(-mu, 1), else N(0, 1)): the bound on
    mu stays below the true mu in every trial (95% each; the union bound makes it conservative),
    and it is not vacuous."""
    m, mu = 300, 1.5
    found = []
    for trial in range(6):
        rng = np.random.default_rng(100 + trial)
        planted = rng.random(m) < 0.5
        b = fdp_bound(rng.normal(size=m) - mu * planted, planted, delta=DELTA, curve="gaussian")
        found.append(b.mu)
    assert max(found) <= mu
    assert min(found) > 0.2 * mu


def test_a_bound_at_a_delta_where_it_is_undefined():
    planted = flags(100)
    with pytest.raises(AuditError, match="audit.delta: the GDP bound has no epsilon at delta 0"):
        fdp_bound(np.zeros(100), planted, delta=0.0, curve="gaussian")
    with pytest.raises(AuditError, match="the GDP bound has no epsilon"):
        check_audit_settings(1000, 0.0, 0.95)
    with pytest.raises(AuditError, match="curve"):
        fdp_bound(np.zeros(100), planted, delta=DELTA, curve="laplace")
    assert FDP_GRID[0] > 0 and FDP_GRID[-1] == 12.0
