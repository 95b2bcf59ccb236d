"""float32 ranks from a bfloat16 walk (exposure/rescore.py): the ranks equal float32
enumeration's, the interval holds them where the band is not rescored, bad settings fail."""

from __future__ import annotations

import random

import numpy as np
import pytest

from exposure_audit.data.formats import Format
from exposure_audit.errors import AuditError
from exposure_audit.exposure import engine
from exposure_audit.exposure.rescore import RescoreOptions, rescored_ranks
from exposure_audit.models import Scorer
from exposure_audit.models.hf import load_hf

from . import hf_models

FMT = "my pin is {d:3}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = hf_models.tiny_model(tmp_path_factory.mktemp("rescore") / "m", "llama")
    return load_hf(folder, device="cpu", dtype="bfloat16"), load_hf(folder, device="cpu", dtype="float32")


def all_costs(model):
    scorer = Scorer.of(model)
    cf = engine.compile_format(scorer, Format.parse(FMT), None)
    costs = np.empty(Format.parse(FMT).space_size)

    def leaves(c, ix):
        costs[np.asarray(ix)] = c

    engine.walk(scorer, cf, leaves)
    return costs


def ranks_by(costs, fmt, secrets):
    """Each secret's rank among every candidate by ``costs`` (all_costs: one model's bits)."""
    order = np.sort(costs)
    return [int(np.searchsorted(order, costs[fmt.index(s)] + engine.TIE_TOLERANCE, side="right")) for s in secrets]


def test_rescored_ranks_are_float32_ranks(models):
    fast, exact = models
    fmt = Format.parse(FMT)
    c32, c16 = all_costs(exact), all_costs(fast)
    # every candidate's rank by the float32 scores
    order32 = np.sort(c32)
    secrets = fmt.sample(random.Random(3), 12)
    idx = [fmt.index(s) for s in secrets]
    want = [int(np.searchsorted(order32, c32[i] + engine.TIE_TOLERANCE, side="right")) for i in idx]
    assert np.abs(c16 - c32).max() > 0.0  # bfloat16 does round: the test has something to correct
    run = {}
    got = rescored_ranks(fast, exact, FMT, secrets, delta=0.5, run=run)
    assert [r.rank for r in got] == want
    assert all(r.rank_bounds[0] <= r.rank <= r.rank_bounds[1] for r in got)
    assert all(r.sound and r.max_error == pytest.approx(max(r.max_error for r in got)) for r in got)
    # the shared prefix's rounding, the same for every candidate, centres the band
    off = got[0].offset
    assert off != 0.0 and all(r.offset == off for r in got)
    assert got[0].max_error <= np.abs(c16 - c32 - off).max() + 1e-9
    # the band of each canary: the candidates bfloat16 puts within delta of its float32 score + offset
    tol = engine.TIE_TOLERANCE
    bands = [set(np.flatnonzero((c16 > c32[i] + off - 0.5 + tol) & (c16 <= c32[i] + off + 0.5 + tol))) for i in idx]
    assert [r.band for r in got] == [len(b) for b in bands]
    assert run["walk_steps"] > 0 and run["rescore_candidates"] == len(set().union(*bands))
    # the log-perplexities are float32's for the rank, bfloat16's alongside
    assert [r.log_perplexity for r in got] == pytest.approx([c32[i] for i in idx], abs=1e-4)
    assert [r.fast_log_perplexity for r in got] == pytest.approx([c16[i] for i in idx], abs=1e-4)


def test_past_max_band_the_interval_holds_the_float32_rank(models):
    fast, exact = models
    secrets = Format.parse(FMT).sample(random.Random(5), 6)
    full = rescored_ranks(fast, exact, FMT, secrets)
    capped = rescored_ranks(fast, exact, FMT, secrets, max_band=0)
    for a, b in zip(full, capped):
        assert b.rank is None and b.rescored == 0 and b.band == a.band > 0
        assert b.rank_bounds[0] <= a.rank <= b.rank_bounds[1]


def test_a_band_narrower_than_the_rounding_is_flagged(models):
    """With delta under the errors seen, the premise fails on the evidence: sound is False."""
    fast, exact = models
    secrets = Format.parse(FMT).sample(random.Random(7), 4)
    wide = rescored_ranks(fast, exact, FMT, secrets)
    narrow = rescored_ranks(fast, exact, FMT, secrets, delta=wide[0].max_error / 4)
    assert wide[0].sound and not any(r.sound for r in narrow)


def test_bad_settings_fail_before_work(models):
    fast, exact = models
    with pytest.raises(AuditError, match="wider than 0"):
        rescored_ranks(fast, exact, FMT, ["123"], delta=0)
    with pytest.raises(AuditError, match="calibration"):
        rescored_ranks(fast, exact, FMT, ["123"], calibration=-1)
    with pytest.raises(AuditError, match="past its budget"):
        rescored_ranks(fast, exact, FMT, ["123"], max_steps=2)
    assert rescored_ranks(fast, exact, FMT, []) == []


def test_shared_prefix_scoring_equals_plain_scoring_in_fewer_steps(models, tiny_model):
    """engine.score_secrets_shared: the same costs as score_secrets, each shared prefix stepped
    once, on a subword model and on the char-LSTM, in any order and across chunk edges."""
    for model in (models[1], tiny_model):
        scorer = Scorer.of(model)
        fmt = Format.parse("my pin is {d:3}")
        cf = engine.compile_format(scorer, fmt, None)
        secrets = fmt.sample(random.Random(0), 300)
        s0 = scorer.steps
        plain = engine.score_secrets(scorer, cf, secrets)
        s1 = scorer.steps
        shared = engine.score_secrets_shared(scorer, cf, secrets, batch=64)
        s2 = scorer.steps
        assert shared == pytest.approx(plain, abs=1e-4)
        assert s2 - s1 < (s1 - s0) * 0.8
    assert engine.score_secrets_shared(scorer, cf, []).shape == (0,)


def test_small_and_huge_formats(models):
    """A format with fewer candidates than the calibration draws is calibrated on all of them;
    one of 2^62 candidates or more (walked without indices) is refused in one line."""
    fast, exact = models
    (r,) = rescored_ranks(fast, exact, "my pin is {d:2}", ["42"])
    assert 1 <= r.rank <= 100 and r.sound
    with pytest.raises(AuditError, match="2\\^62"):
        rescored_ranks(fast, exact, "my pin is {d:19}", ["1" * 19])


def test_measure_with_a_float32_reference_gives_float32_ranks(models):
    """measure(..., reference=float32 model) on a bfloat16 model: every exact rank and its
    log-perplexity are float32's, and the report says how each was found."""
    from exposure_audit.data.manifest import Canary
    from exposure_audit.exposure.measure import measure

    fast, exact = models
    fmt = Format.parse(FMT)
    c32 = all_costs(exact)
    order32 = np.sort(c32)
    secrets = fmt.sample(random.Random(11), 6)
    canaries = [
        Canary(id=f"c{i}", format=FMT, secret=s, text=fmt.render(s), insertions=1) for i, s in enumerate(secrets)
    ]
    res = measure(fast, canaries, method="enumerate", reference=exact, bootstrap=0)
    want = [int(np.searchsorted(order32, c32[fmt.index(s)] + engine.TIE_TOLERANCE, side="right")) for s in secrets]
    assert [r.rank for r in res] == want
    assert all(r.method == "enumerate+rescored" for r in res)
    assert [r.log_perplexity for r in res] == pytest.approx([c32[fmt.index(s)] for s in secrets], abs=1e-4)
    assert all("fast_rank" in r.details["rescore"] for r in res)
    # estimated canaries keep their figures, with the float32 log-perplexity alongside
    (est,) = measure(fast, canaries[:1], method="estimate", reference=exact, samples=100, bootstrap=0)
    assert est.rank is None and est.details["log_perplexity_float32"] == pytest.approx(
        c32[fmt.index(secrets[0])], abs=1e-4
    )


def test_cli_measure_rescore(tmp_path, capsys):
    """`measure --dtype bfloat16 --rescore`: float32's ranks, in the report; --rescore without a
    cheaper dtype is one error line and exit 2."""
    import json

    from exposure_audit.cli import main

    from .conftest import make_corpus

    folder = hf_models.tiny_model(tmp_path / "hf", "llama", tokenizer="split-digits")
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, lines=300)
    data = tmp_path / "data"
    insert = ["insert", "--corpus", corpus, "--out", data, "--format", "pin {d:3}", "--schedule", "0,1", "-q"]
    assert main([str(a) for a in insert]) == 0
    argv = ["measure", "--model", folder, "--canaries", data / "canaries.json", "-q", "--any-model"]
    assert main([str(a) for a in [*argv, "--json", tmp_path / "f32.json"]]) == 0
    assert main([str(a) for a in [*argv, "--json", tmp_path / "r.json", "--dtype", "bfloat16", "--rescore"]]) == 0
    f32 = json.loads((tmp_path / "f32.json").read_text())
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["model"]["ranks_rescored_in"] == "float32" and f32["model"]["ranks_rescored_in"] is None
    assert [c["rank"] for c in got["canaries"]] == [c["rank"] for c in f32["canaries"]]
    assert all(c["method"].endswith("+rescored") for c in got["canaries"])
    # --max-band 0: no band rescored, float32's rank inside each interval
    capped = [*argv, "--json", tmp_path / "c.json", "--dtype", "bfloat16", "--rescore", "--max-band", "0"]
    assert main([str(a) for a in capped]) == 0
    got = json.loads((tmp_path / "c.json").read_text())["canaries"]
    for c, f in zip(got, f32["canaries"]):
        assert c["rank"] is None and c["rank_bounds"][0] <= f["rank"] <= c["rank_bounds"][1]
    capsys.readouterr()
    for bad, start in (([], "error: --rescore"), (["--dtype", "bfloat16", "--max-band", "3"], "error: --max-band")):
        assert main([str(a) for a in [*argv, *(bad or ["--rescore"])]]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(start)


def _canaries(secrets):
    from exposure_audit.data.manifest import Canary

    fmt = Format.parse(FMT)
    return [Canary(id=f"c{i}", format=FMT, secret=s, text=fmt.render(s), insertions=1) for i, s in enumerate(secrets)]


def test_a_rescored_measure_walks_once_in_the_fast_dtype(models):
    """measure(..., reference=) ranks through one Rescorer walk: the fast model takes exactly the
    steps a Rescorer alone takes (no enumeration of its own), and the fast dtype's own rank
    comes out of the same walk."""
    from exposure_audit.exposure.measure import measure
    from exposure_audit.exposure.rescore import RescoreOptions, Rescorer

    fast, exact = models
    fmt = Format.parse(FMT)
    secrets = fmt.sample(random.Random(13), 5)
    c16 = all_costs(fast)
    sf = Scorer.of(fast)
    res = measure(sf, _canaries(secrets), method="enumerate", reference=exact, bootstrap=0)
    alone = Scorer.of(fast)
    Rescorer(alone, exact, fmt, secrets, RescoreOptions()).ranks()
    assert sf.steps == alone.steps
    want16 = ranks_by(c16, fmt, secrets)
    assert [r.details["rescore"]["fast_rank"] for r in res] == want16
    assert [r.details["rescore"]["fast_log_perplexity"] for r in res] == pytest.approx(
        [c16[fmt.index(s)] for s in secrets], abs=1e-4
    )


def test_rescored_pruned_walks_and_intervals(models):
    """method="pruned" with a reference: float32's ranks, one rescored walk per canary; with
    max_band=0, every rank the interval that holds float32's, its exposure interval around the
    point; with no budget for a walk, the estimate, with float32's bits alongside."""
    from exposure_audit.exposure.measure import measure

    fast, exact = models
    fmt = Format.parse(FMT)
    c32 = all_costs(exact)
    secrets = fmt.sample(random.Random(17), 4)
    want = ranks_by(c32, fmt, secrets)
    res = measure(fast, _canaries(secrets), method="pruned", reference=exact, bootstrap=0)
    assert [r.rank for r in res] == want and all(r.method == "pruned+rescored" for r in res)
    capped = measure(fast, _canaries(secrets), method="pruned", reference=exact, bootstrap=0, max_band=0)
    for r, w in zip(capped, want):
        assert r.rank is None and r.rank_bounds[0] <= w <= r.rank_bounds[1]
        assert r.exposure_ci[0] <= r.exposure <= r.exposure_ci[1]
        assert r.method == "pruned+rescored" and r.log_perplexity == pytest.approx(c32[fmt.index(r.secret)], abs=1e-4)
    starved = measure(fast, _canaries(secrets[:1]), method="pruned", reference=exact, bootstrap=0, max_steps=3)
    assert starved[0].rank is None and "rescore" not in starved[0].details
    assert starved[0].details["log_perplexity_float32"] == pytest.approx(c32[fmt.index(secrets[0])], abs=1e-4)
    with pytest.raises(AuditError, match="max_band"):
        measure(fast, _canaries(secrets[:1]), reference=exact, max_band=-1)
    with pytest.raises(AuditError, match="brute force"):
        measure(fast, _canaries(secrets[:1]), reference=exact, method="brute")


def test_a_delta_the_evidence_outgrows_is_widened_and_ranked_again(models):
    """A calibrated delta that the band's evidence shows too narrow is widened (3x the largest
    difference seen) and the canaries ranked again, rescoring only candidates not yet rescored:
    the result is float32's rank, and says how often delta was widened."""
    from exposure_audit.exposure.rescore import WIDENINGS, Rescorer

    fast, exact = models
    fmt = Format.parse(FMT)
    c32 = all_costs(exact)
    secrets = fmt.sample(random.Random(19), 3)
    want = ranks_by(c32, fmt, secrets)
    r = Rescorer(fast, exact, fmt, secrets)
    r._delta = 1e-4  # as if calibration had seen almost no rounding
    got = r.ranks()
    assert 1 <= got[0].widened <= WIDENINGS and r.widened == got[0].widened
    assert got[0].delta > 1e-4 and (got[0].sound or got[0].widened == WIDENINGS)
    if got[0].sound:
        assert [g.rank for g in got] == want
    rescored_once = len(r._exact_cost)
    r.ranks()  # the same canaries again: every band candidate is rescored already
    assert len(r._exact_cost) == rescored_once
    # a delta the caller gave is kept, and a result under it flagged instead
    fixed = Rescorer(fast, exact, fmt, secrets, RescoreOptions(delta=1e-4)).ranks()
    assert fixed[0].widened == 0 and fixed[0].delta == 1e-4 and not fixed[0].sound


def test_a_widening_that_does_not_fit_leaves_the_narrower_result_flagged(models):
    """Where max_steps leaves no room for a wider walk, ranks() keeps the result it has (flagged,
    not widened) instead of claiming nothing."""
    from exposure_audit.exposure.rescore import Rescorer

    fast, exact = models
    fmt = Format.parse(FMT)
    secrets = fmt.sample(random.Random(23), 2)
    run = {}
    Rescorer(fast, exact, fmt, secrets, RescoreOptions(delta=1e-4)).ranks(run=run)
    r = Rescorer(fast, exact, fmt, secrets)
    r._delta = 1e-4  # as if calibration had seen almost no rounding
    got = r.ranks(max_steps=run["walk_steps"])  # room for exactly one walk at this delta
    assert got is not None and got[0].widened == 0 and not got[0].sound and r.widened == 0
