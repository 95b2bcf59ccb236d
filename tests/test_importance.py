"""Importance-sampling estimate (#13): unbiased, bounded weights, non-canonical paths count zero,
and auto's planner picks the cheaper plan."""

import copy
import math

import numpy as np
import pytest
import torch

from exposure_audit.data.formats import Format
from exposure_audit.exposure import engine
from exposure_audit.exposure.importance import Proposal, importance_samples
from exposure_audit.exposure.measure import measure
from exposure_audit.models import Scorer, load_model

from .hf_models import tiny_model as tiny_hf_model


class C:
    def __init__(self, fmt, secret, insertions=1):
        self.format, self.secret, self.insertions = fmt, secret, insertions


def exact_order(scorer, cf):
    got = []
    engine.walk(scorer, cf, lambda c, i: got.append(c.copy()))
    return np.sort(np.concatenate(got))


def exact_rank(order, t):
    return int(np.searchsorted(order, t + engine.TIE_TOLERANCE, side="right"))


def assert_unbiased(scorer, cf, order, ranks, m, seeds):
    """The mean of the estimates of independent sample sets lands within 3 of its own standard
    errors (from each set's reported standard error) of the exact rank, at every exposure."""
    thresholds = [float(order[r - 1]) for r in ranks]
    sets = [importance_samples(scorer, cf, m, seed=s) for s in range(seeds)]
    for t in thresholds:
        exact = exact_rank(order, t)
        est = np.array([s.rank(t)[:2] for s in sets])
        mean, se = est[:, 0].mean(), math.sqrt((est[:, 1] ** 2).sum()) / seeds
        assert abs(mean - exact) <= 3 * se + 1e-9, (exact, mean, se)
        # and the reported standard errors are honest: they match the spread between sets
        if seeds >= 4 and se > 0:
            assert 0.3 < est[:, 0].std(ddof=1) / (se * math.sqrt(seeds)) < 3


def test_importance_estimate_is_unbiased_on_a_small_space(tiny_model):
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, Format.parse("id {d:3}"))
    order = exact_order(scorer, cf)
    assert_unbiased(scorer, cf, order, [1, 4, 40, 400, 1000], m=1000, seeds=6)


def test_counting_the_last_level_exactly_keeps_the_estimate_unbiased_and_cuts_its_spread(tiny_model):
    """Rao-Blackwellizing the last branching level (every sibling of a drawn candidate scored):
    unbiased at every exposure, also with fixed text after the last hole (several forced tokens
    per sibling), with less spread between sample sets than the plain estimate at the top ranks,
    at the step count importance.predicted_steps says."""
    from exposure_audit.exposure.importance import _last_level, predicted_steps

    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, Format.parse("id {d:3} ok"))
    (tail,) = _last_level(cf).values()
    assert len(tail) == 4  # " ok" and the newline, forced after the last digit
    order = exact_order(scorer, cf)
    assert_unbiased(scorer, cf, order, [1, 4, 40, 400, 1000], m=1000, seeds=6)
    s = importance_samples(scorer, cf, 500, seed=0)
    assert s.sibling_cost.shape == (500, 10) and np.isfinite(s.sibling_cost).all()
    assert s.steps == predicted_steps(cf, 500)
    # each draw's own candidate is one of its siblings, at its own cost
    assert np.all(np.isclose(s.sibling_cost, s.px[:, None]).any(axis=1))

    # a wide last alphabet followed by long fixed text: the siblings would cost too much, and
    # the plain term is kept (the estimate's cost stays one path per draw)
    wide = engine.compile_format(scorer, Format.parse("id {[a-z0-9]:2} and then some more words"))
    assert _last_level(wide) and importance_samples(scorer, wide, 50, seed=0).sibling_cost is None
    assert predicted_steps(wide, 50) == 50 * (wide.path_tokens - 1)

    cf = engine.compile_format(scorer, Format.parse("id {d:4}"))
    order = exact_order(scorer, cf)
    spread = {}
    for siblings in (False, True):
        sets = [importance_samples(scorer, cf, 400, seed=k, proposal=Proposal(siblings=siblings)) for k in range(8)]
        spread[siblings] = [np.std([x.rank(float(order[r - 1]))[0] for x in sets]) for r in (3, 10, 30)]
        assert (sets[0].sibling_cost is not None) == siblings
    assert sum(spread[True]) < sum(spread[False])


def test_a_subword_tree_of_one_character_tokens_counts_its_last_level_unbiased(tmp_path):
    """Split digits: the tree has one path per candidate, so its last level is counted exactly as
    for a character model, and the estimate stays unbiased."""
    from exposure_audit.exposure.importance import _last_level

    scorer = Scorer(load_model(tiny_hf_model(tmp_path, arch="llama", tokenizer="split-digits")))
    cf = engine.compile_format(scorer, Format.parse("n {d:3}"))
    assert not cf.ambiguous and _last_level(cf)
    assert importance_samples(scorer, cf, 50, seed=0).sibling_cost is not None
    order = exact_order(scorer, cf)
    assert len(order) == 1000
    assert_unbiased(scorer, cf, order, [1, 4, 40, 400, 1000], m=400, seeds=4)


def test_defensive_mixture_bounds_every_weight(tiny_model):
    """Normalized weight (1/|R|)/q'(x) <= 1/a for every draw (q' >= a/|R| on every candidate),
    even where the model's proposal is very peaked (a model that strongly prefers '7')."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.bias[model.vocab.id("7")] += 12.0
    scorer = Scorer(model)
    for a in (0.1, 0.3):
        proposal = Proposal(a, ((1.0, (1 - a) / 2), (2.0, (1 - a) / 2)))
        cf = engine.compile_format(scorer, Format.parse("{d:5}"))
        s = importance_samples(scorer, cf, 300, seed=3, proposal=proposal)
        y = np.exp2(s.log2_y)
        assert y.max() <= 1 / a * (1 + 1e-9)
        assert s.components[0] == round(a * 300)
        # most draws are the peaked proposal's: weights far below the bound, and the memorized
        # candidate is drawn (its weight is tiny: the model puts most of its mass there)
        assert np.median(y) < 1 / a and s.rank(float(engine.score_secrets(scorer, cf, ["77777"])[0]))[0] < 3


def test_pruned_steps_prediction_matches_the_walk(tiny_model):
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, Format.parse("id {d:3}"))
    order = exact_order(scorer, cf)
    s = importance_samples(scorer, cf, 3000, seed=0)
    for r in (2, 50, 500):
        t = float(order[r - 1])
        walked = engine.pruned_rank(scorer, cf, t).result.steps
        assert s.pruned_steps(t) == pytest.approx(walked, rel=0.25)


def test_noncanonical_token_paths_count_zero(tmp_path):
    """A BPE with merged digit tokens: the tree proposal draws non-canonical spellings; they count
    zero and the estimate of the canonical rank stays unbiased."""
    model = load_model(tiny_hf_model(tmp_path, arch="gpt2", tokenizer="merged-digits"))
    scorer = Scorer(model)
    fmt = Format.parse("n {d:3}")
    cf = engine.compile_format(scorer, fmt)
    assert cf.ambiguous
    order = exact_order(scorer, cf)  # canonical leaves only
    assert len(order) == fmt.space_size
    s = importance_samples(scorer, cf, 400, seed=1)
    assert s.noncanonical > 0
    dead = ~np.isfinite(s.log2_y)
    assert dead.sum() == s.noncanonical and np.all(np.isinf(s.px[dead]))
    assert s.rank(math.inf)[0] == pytest.approx(np.exp2(s.log2_y).mean() * fmt.space_size)
    assert_unbiased(scorer, cf, order, [1, 10, 100, 300, 1000], m=1000, seeds=5)


def peaked(tiny_model):
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.bias[model.vocab.id("7")] += 12.0
    return model


def test_auto_prunes_a_memorized_canary_when_cheaper_than_enumeration(tiny_model):
    model = peaked(tiny_model)
    plans = {}
    (r,) = measure(model, [C("{d:4}", "7777")], method="auto", samples=400, bootstrap=0, plans=plans)
    plan = plans["{d:4}"]
    assert plan["chosen"] == "pruned+estimate" and plan["pruned"] == [0]
    assert plan["predicted"]["pruned+estimate"] < plan["predicted"]["enumerate"]
    assert r.method == "pruned" and r.rank == 1
    assert plan["exact"] == plan["exact_possible"] == 1
    assert plan["actual_steps"] < Format.parse("{d:4}").space_size


def test_auto_enumerates_when_a_random_canary_makes_walks_dearer(tiny_model):
    model = peaked(tiny_model)
    plans = {}
    group = [C("{d:4}", "7777"), C("{d:4}", "1234", 0)]
    res = measure(model, group, method="auto", samples=400, bootstrap=0, plans=plans)
    plan = plans["{d:4}"]
    assert plan["chosen"] == "enumerate"
    assert plan["predicted"]["enumerate"] < plan["predicted"]["pruned+estimate"]
    assert all(r.rank is not None for r in res)
    # prefer fast: the memorized one exact (cheap), the other estimated
    fast = {}
    res = measure(model, group, method="auto", samples=400, bootstrap=0, prefer="fast", plans=fast)
    assert fast["{d:4}"]["chosen"] == "pruned+estimate"
    assert res[0].rank == 1 and res[1].rank is None and res[1].method == "estimate:importance"
    assert fast["{d:4}"]["actual_steps"] < plan["actual_steps"]


def test_balanced_default_spends_at_most_its_exact_budget(tiny_model):
    """prefer="balanced" (the default): exact work within exact_budget, cheapest walk first; the
    memorized canary is exact on any budget that holds its short walk, the random ones are
    estimated with intervals, and a budget large enough for the tree enumerates everything."""
    model = peaked(tiny_model)
    group = [C("{d:5}", "77777", 8), C("{d:5}", "12345", 0), C("{d:5}", "50713", 0)]
    tree = engine.compile_format(Scorer.of(model), Format.parse("{d:5}"), None).tree_steps()
    exact_by_budget = []
    for budget in (0, 400, 20_000, tree):
        plans = {}
        res = measure(model, group, samples=400, bootstrap=0, exact_budget=budget, plans=plans)
        plan = plans["{d:5}"]
        assert plan["prefer"] == "balanced" and plan["exact_budget"] == budget
        assert plan["exact_steps"] <= budget
        assert plan["exact"] == sum(r.rank is not None for r in res)
        for r in res:
            if r.rank is None:
                lo, hi = r.exposure_ci
                assert r.method.endswith("estimate:importance") and lo <= r.exposure <= hi < lo + 3
        exact_by_budget.append([r.rank is not None for r in res])
    assert exact_by_budget[0] == [False, False, False]
    assert exact_by_budget[1] == [True, False, False]  # the memorized one's walk is short
    assert exact_by_budget[3] == [True, True, True]  # the tree fits: enumerated
    assert plan["chosen"] == "enumerate"
    (exact,) = measure(model, group[1:2], samples=400, bootstrap=0, method="enumerate")
    assert res[1].rank == exact.rank
    # the estimates are the same draws whatever the budget: only exactness changes
    assert measure(model, group, samples=400, bootstrap=0, exact_budget=0)[0].rank is None


def test_the_default_exact_budget_is_the_same_work_whatever_the_model(tiny_model, monkeypatch):
    """With no exact_budget, balanced spends DEFAULT_EXACT_BUDGET steps on a model whose step costs
    no more than the default char-LSTM's, and proportionally fewer on a costlier one (so a
    default measure of a real model finishes in about the char-LSTM's time); a given budget is
    kept as it is."""
    from exposure_audit.exposure.options import DEFAULT_EXACT_BUDGET, EXACT_BUDGET_STEP_FLOPS, exact_budget_steps

    model = peaked(tiny_model)
    lstm = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embed."))
    assert Scorer.of(model).step_flops == 2.0 * lstm
    assert exact_budget_steps(None, 2.0 * lstm) == DEFAULT_EXACT_BUDGET
    group = [C("{d:5}", "77777", 8), C("{d:5}", "12345", 0)]
    plans = {}
    measure(model, group, samples=400, bootstrap=0, plans=plans)
    assert plans["{d:5}"]["exact_budget"] == DEFAULT_EXACT_BUDGET
    # the same model, said to cost 1,000x the reference step: a thousandth of the steps
    monkeypatch.setattr(model, "step_flops", lambda: 1000 * EXACT_BUDGET_STEP_FLOPS, raising=False)
    plans = {}
    res = measure(model, group, samples=400, bootstrap=0, plans=plans)
    plan = plans["{d:5}"]
    assert plan["exact_budget"] == DEFAULT_EXACT_BUDGET // 1000 and plan["exact_steps"] <= plan["exact_budget"]
    assert res[0].rank == 1 and res[1].rank is None  # the memorized canary's walk still fits
    plans = {}
    measure(model, group, samples=400, bootstrap=0, plans=plans, exact_budget=5)
    assert plans["{d:5}"]["exact_budget"] == 5


def test_balanced_budget_is_shared_by_a_formats_context_groups(tiny_model):
    """Chat canaries each carry their own context (one group each): the format's exact budget is
    spent once over all of them, not once per group."""
    model = peaked(tiny_model)

    class K(C):
        def __init__(self, id, secret):
            super().__init__("{d:5}", secret, 8)
            self.id = id

    group = [K("a", "77777"), K("b", "77777"), K("c", "77777")]
    contexts = {"a": "\n", "b": "x\n", "c": "y\n"}
    alone = {}
    measure(model, group[:1], samples=400, bootstrap=0, contexts=contexts, plans=alone)
    budget = alone["{d:5}"]["predicted_pruned_steps"][0]  # what the first group's walk is predicted to take
    plans = {}
    res = measure(model, group, samples=400, bootstrap=0, contexts=contexts, exact_budget=budget, plans=plans)
    first, *rest = plans.values()
    assert len(plans) == 3 and res[0].rank == 1 and 0 < first["exact_steps"] <= budget
    # each later group may spend only what the earlier ones left
    left = budget - first["exact_steps"]
    for p in rest:
        assert p["exact_budget"] == left and p["exact_steps"] <= left
        left -= p["exact_steps"]
    assert sum(p["exact_steps"] for p in plans.values()) <= budget


def test_estimators_are_selectable_and_reported_side_by_side(tiny_model):
    group = [C("{d:5}", "12345", 0)]
    by = {}
    for est in ("importance", "uniform", "skewnorm"):
        collect = {}
        (r,) = measure(tiny_model, group, method="estimate", estimator=est, samples=300, bootstrap=5, collect=collect)
        by[est] = r
        assert len(collect["{d:5}"]["scores"]) == 300
        # every figure whose draws were made: the histogram's uniform samples always are here
        assert {"estimate_sampling", "estimate_skewnorm"} <= set(r.details)
        assert ("estimate_importance" in r.details) == (est == "importance")
    assert by["importance"].method == "estimate:importance"
    assert by["uniform"].method == "estimate:sampling"
    assert by["skewnorm"].method in ("estimate:sampling", "estimate:skewnorm")
    with pytest.raises(Exception, match="estimator"):
        measure(tiny_model, group, method="estimate", estimator="nope")


def test_a_walk_cut_off_then_estimated_counts_each_model_step_once(tiny_model):
    """A pruned walk that runs out of budget, then the estimate: a canary's model steps are its
    walk's plus the draws', each once (the draws were counted twice for the canary they were
    made for), so one canary's add up to what the scorer stepped."""
    opts = dict(method="pruned", max_steps=300, samples=400, bootstrap=0)

    def overhead(secrets):  # the shared tokens' and the canaries' own scoring: in no canary's figure
        s = Scorer.of(tiny_model)
        engine.score_secrets(s, engine.compile_format(s, Format.parse("{d:5}"), None), secrets)
        return s.steps

    cf = engine.compile_format(Scorer.of(tiny_model), Format.parse("{d:5}"), None)
    draws = importance_samples(Scorer.of(tiny_model), cf, 400, seed=0).steps
    scorer = Scorer.of(tiny_model)
    (r,) = measure(scorer, [C("{d:5}", "12345", 0)], **opts)
    assert r.rank is None and r.method == "pruned-bounds+estimate:importance"
    assert r.model_steps == scorer.steps - overhead(["12345"])
    assert 0 < r.model_steps - draws <= 300  # the walk's share: within its cap
    # two canaries share one set of draws: each reports its own walk and the draws
    scorer = Scorer.of(tiny_model)
    a, b = measure(scorer, [C("{d:5}", "12345", 0), C("{d:5}", "54321", 0)], **opts)
    assert a.model_steps == r.model_steps
    assert a.model_steps + b.model_steps == scorer.steps - overhead(["12345", "54321"]) + draws
