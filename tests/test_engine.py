import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from exposure_audit.data.formats import Format
from exposure_audit.errors import AuditError
from exposure_audit.exposure import engine
from exposure_audit.exposure.measure import measure
from exposure_audit.models import Scorer


def full_scores(model, fmt):
    return np.array(engine.score(model, [fmt.render(fmt.fill(i)) for i in range(fmt.space_size)]))


def test_score_matches_a_plain_forward_pass(tiny_model):
    text = "the pin is 0123"
    (px,) = engine.score(tiny_model, [text])
    ids = torch.as_tensor(tiny_model.vocab.encode("\n" + text + "\n")).view(1, -1)
    with torch.no_grad():
        logits, _ = tiny_model(ids[:, :-1])
        logp = torch.log_softmax(logits, -1)[0]
    expected = -sum(float(logp[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1)) / np.log(2)
    assert px == pytest.approx(expected, abs=1e-4)


def test_tree_leaves_equal_full_text_scores(tiny_model):
    fmt = Format.parse("x{[ACGT]:2}y{d:2}z")
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, fmt)
    leaves = {}

    def collect(costs, index):
        leaves.update(zip(index.tolist(), costs.tolist()))

    result = engine.walk(scorer, cf, collect, batch=64)
    assert result.complete and len(leaves) == fmt.space_size
    tree = np.array([leaves[i] for i in range(fmt.space_size)])
    np.testing.assert_allclose(tree, full_scores(tiny_model, fmt), atol=1e-6)
    # one model step per tree node below the root, none for the leaves
    # levels A A y d d z \n: every node but a leaf is stepped, the "z" ones too (for P(newline))
    assert result.steps == cf.tree_steps() == 4 + 16 + 16 + 160 + 1600 + 1600


format_st = st.lists(
    st.tuples(st.text(alphabet="ab :", max_size=2), st.sampled_from(["d", "[ACGT]", "[xyz]", "a"]), st.integers(1, 2)),
    min_size=1,
    max_size=2,
).map(lambda parts: "".join(f"{t}{{{c}:{n}}}" for t, c, n in parts) + ".")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(format_st, st.integers(0, 10**6))
def test_enumerate_pruned_and_brute_give_identical_ranks(tiny_model, source, seed):
    fmt = Format.parse(source)
    assume(fmt.space_size <= 3000)
    rng = np.random.default_rng(seed)
    picks = rng.choice(fmt.space_size, size=min(6, fmt.space_size), replace=False)
    secrets = [fmt.fill(int(i)) for i in picks]
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, fmt)
    px = engine.score_secrets(scorer, cf, secrets)
    enum, _ = engine.enumerate_counts(scorer, cf, px, batch=100)
    brute = engine.brute_force_counts(scorer, fmt, px, batch=100)
    pruned = [engine.pruned_rank(scorer, cf, float(p), batch=100).rank for p in px]
    assert list(enum) == list(brute) == pruned
    # and all equal a plain count over every candidate's full-text score
    scores = full_scores(tiny_model, fmt)
    assert list(enum) == [int(np.sum(scores <= p + engine.TIE_TOLERANCE)) for p in px]


def test_pruned_work_follows_memorization(tiny_model):
    """A model that strongly prefers one digit has a cheap favourite: pruned finds its rank 1 in a
    handful of steps, where enumeration walks all 11110 nodes."""
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.bias[model.vocab.id("7")] += 12.0
    fmt = Format.parse("pin {d:4}")
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    (best,) = engine.score_secrets(scorer, cf, ["7777"])
    pr = engine.pruned_rank(scorer, cf, float(best))
    assert pr.rank == 1
    assert pr.result.steps < 200 < cf.tree_steps() / 50


def test_pruned_budget_gives_proven_bounds(tiny_model):
    fmt = Format.parse("pin {d:4}")
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, fmt)
    scores = full_scores(tiny_model, fmt)
    target = float(np.median(scores))
    true_rank = int(np.sum(scores <= target + engine.TIE_TOLERANCE))
    pr = engine.pruned_rank(scorer, cf, target, max_steps=300)
    assert pr.rank is None and not pr.result.complete
    lo, hi = pr.bounds
    assert lo <= true_rank <= hi
    assert pr.result.steps <= 300


def test_shards_add_up(tiny_model):
    fmt = Format.parse("{d:3}")
    scorer = Scorer(tiny_model)
    cf = engine.compile_format(scorer, fmt)
    px = engine.score_secrets(scorer, cf, ["123", "999", "500"])
    whole, _ = engine.enumerate_counts(scorer, cf, px)
    parts = [engine.enumerate_counts(scorer, cf, px, index_range=(lo, lo + 250))[0] for lo in range(0, 1000, 250)]
    assert list(sum(parts)) == list(whole)


def test_measure_methods_agree_with_brute_count_via_score(tiny_model):
    fmt = Format.parse("id {d:3}")

    class C:
        def __init__(self, s, n):
            self.format, self.secret, self.insertions = fmt.source, s, n

    canaries = [C("042", 1), C("777", 0), C("000", 4)]
    scores = full_scores(tiny_model, fmt)
    expected = []
    for c in canaries:
        (px,) = engine.score(tiny_model, [fmt.render(c.secret)])
        expected.append(int(np.sum(scores <= px + engine.TIE_TOLERANCE)))
    for method in ("enumerate", "pruned", "brute", "auto"):
        res = measure(tiny_model, canaries, method=method)
        assert [r.rank for r in res] == expected, method
        for r, rank in zip(res, expected):
            assert r.exposure == pytest.approx(np.log2(1000) - np.log2(rank))
            assert r.model_steps > 0
    est = measure(tiny_model, canaries, method="estimate", samples=500, bootstrap=10)
    for r, rank in zip(est, expected):
        assert r.rank is None and r.method.startswith("estimate")
        assert r.exposure_ci[0] <= r.exposure <= r.exposure_ci[1]


def test_enumerate_over_budget_is_an_error(tiny_model):
    class C:
        format, secret, insertions = "{d:6}", "123456", 1

    with pytest.raises(AuditError, match="over the budget"):
        measure(tiny_model, [C()], method="enumerate", max_steps=1000)


def test_auto_estimates_an_unremarkable_canary_of_a_large_space(tiny_model):
    """|R| = 10^7 is over the budget for enumeration, and a random secret's estimated rank (~|R|/2)
    predicts a pruned walk far over it too: auto reports the estimate, with its interval."""

    class C:
        format, secret, insertions = "{d:7}", "1234567", 0

    (r,) = measure(tiny_model, [C()], method="auto", max_steps=5000, samples=400, bootstrap=5)
    assert r.method == "estimate:importance"  # the default estimator since #13
    assert r.rank is None and r.rank_bounds is None
    assert r.exposure_ci[0] <= r.exposure <= r.exposure_ci[1] <= r.exposure_max


def test_auto_ranks_a_memorized_canary_of_a_large_space_exactly(tiny_model):
    """The same space, but a model that strongly prefers '7': the estimate puts "7777777" far
    above every sample, the predicted pruned walk fits the budget, and auto proves rank 1."""
    import copy

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.bias[model.vocab.id("7")] += 12.0

    class C:
        format, secret, insertions = "{d:7}", "7777777", 4

    (r,) = measure(model, [C()], method="auto", max_steps=5000, samples=400, bootstrap=5)
    assert r.method == "pruned" and r.rank == 1
    assert r.exposure == pytest.approx(np.log2(10**7))


def test_character_outside_vocabulary_is_an_error(tiny_model):
    class C:
        format, secret, insertions = "PIN {d:3}", "123", 1  # 'P', 'I', 'N' are not in the tiny vocabulary

    with pytest.raises(AuditError, match="vocabulary"):
        measure(tiny_model, [C()])


def test_one_options_object_for_measure_and_the_config(tiny_model):
    """measure() takes MeasureOptions (its fields by name replace the object's); results point to
    the one Canary type; the YAML measure: section is the same object, without the per-run fields."""
    from dataclasses import replace

    from exposure_audit.config import config_from_dict
    from exposure_audit.data.manifest import Canary
    from exposure_audit.exposure.options import MeasureOptions

    c = Canary(id="c0", format="id {d:3}", secret="042", text="id 042", insertions=2)
    opts = MeasureOptions(method="enumerate", seed=3)
    (a,) = measure(tiny_model, [c], opts)
    (b,) = measure(tiny_model, [c], method="enumerate", seed=3)
    (d,) = measure(tiny_model, [c], replace(opts, method="brute"), method="enumerate")
    assert a.rank == b.rank == d.rank and a.canary is c and (a.id, a.text, a.insertions) == ("c0", "id 042", 2)
    assert a.to_json()["id"] == "c0" and a.to_json()["secret"] == "042"
    with pytest.raises(TypeError):
        measure(tiny_model, [c], no_such_option=1)
    with pytest.raises(AuditError, match="method: 'fast' is not one of auto"):
        measure(tiny_model, [c], method="fast")

    cfg = config_from_dict({"measure": {"method": "pruned", "samples": 50}})
    assert isinstance(cfg.measure, MeasureOptions) and cfg.measure.method == "pruned"
    keys = list(cfg.to_dict()["measure"])
    assert keys == list(cfg.measure.settings()) and "seed" not in keys and "context" not in keys
    assert cfg.to_dict()["measure"]["max_memory"] == "4GB"  # the config's default size, as before
    with pytest.raises(AuditError, match="unknown key 'measure.seed'"):
        config_from_dict({"measure": {"seed": 1}})
    with pytest.raises(AuditError, match="measure.prefer: 'soon' is not one of balanced, exact, fast"):
        config_from_dict({"measure": {"prefer": "soon"}})
