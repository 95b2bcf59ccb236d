"""ROC statistics of the memorization audit on synthetic scores of known separation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exposure_audit.audits.mia_stats import (
    auc,
    auc_interval,
    copies_bin,
    extracted_within,
    roc_curve,
    tpr_at_fpr,
)


def test_identical_distributions_give_auc_one_half():
    same = [0.1, 0.5, 0.5, 2.0, 3.0]
    assert auc(same, same) == 0.5
    lo, hi = auc_interval(same, same)
    assert lo < 0.5 < hi
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)
    lo, hi = auc_interval(a, b)
    assert lo < 0.5 < hi and hi - lo < 0.08


def test_perfect_separation_gives_auc_one_and_full_tpr():
    members, non = [5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0]
    assert auc(members, non) == 1.0
    assert auc(non, members) == 0.0
    assert tpr_at_fpr(members, non, 0.01).tpr == 1.0
    fpr, tpr = roc_curve(members, non)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert max(t for f, t in zip(fpr, tpr) if f == 0.0) == 1.0  # every member before any non-member


def test_auc_counts_ties_as_one_half_and_matches_pairs():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairs = np.mean([(xi > yi) + 0.5 * (xi == yi) for xi in x for yi in y])
    assert auc(x, y) == pytest.approx(pairs)
    # DeLong's variance against its direct O(mn) definition
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    var = psi.mean(1).var(ddof=1) / len(x) + psi.mean(0).var(ddof=1) / len(y)
    lo, hi = auc_interval(x, y)
    assert (hi - lo) / 2 == pytest.approx(1.959964 * math.sqrt(var), rel=1e-4)


def test_tpr_at_fpr_by_hand():
    non = list(range(100))  # 0..99: at 1% FPR one false positive is allowed, so "member iff > 98"
    members = [98.5, 99.5, 120, 50, 10]
    point = tpr_at_fpr(members, non, 0.01)
    assert (point.true_positives, point.false_positives, point.tpr) == (3, 1, 0.6)
    lo, hi = point.tpr_ci
    assert lo < 0.6 < hi
    # 0.1% of 100 non-members allows none: member iff above every non-member
    point = tpr_at_fpr(members, non, 0.001)
    assert (point.true_positives, point.false_positives) == (2, 0)
    # ties at the threshold count as negatives
    assert tpr_at_fpr([1.0, 1.0], [1.0, 0.0], 0.0).tpr == 0.0


def test_roc_curve_moves_both_rates_on_ties():
    fpr, tpr = roc_curve([2.0, 1.0], [1.0, 0.0])
    assert list(zip(fpr, tpr)) == [(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]


def test_extracted_within_n_queries():
    # 1 - (1 - p)^n >= 1/2  <=>  p >= 1 - 2^(-1/n)
    for n in (1, 10, 100, 1000):
        edge = 1 - 2 ** (-1 / n)
        assert extracted_within(math.log(edge * 1.001), n)
        assert not extracted_within(math.log(edge * 0.999), n)
    assert not extracted_within(-math.inf, 1000)
    assert extracted_within(0.0, 1)


def test_copies_bins():
    assert [copies_bin(c) for c in (1, 2, 4, 5, 16, 17, 64)] == ["1", "2-4", "2-4", "5-16", "5-16", "more", "more"]
