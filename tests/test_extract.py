import numpy as np
import pytest

from exposure_audit.data.formats import Format
from exposure_audit.errors import AuditError
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import beam_search, best_first
from exposure_audit.models import Scorer


def ranked(model, fmt):
    secrets = [fmt.fill(i) for i in range(fmt.space_size)]
    scores = np.array(engine.score(model, [fmt.render(s) for s in secrets]))
    order = np.argsort(scores, kind="stable")
    return [secrets[i] for i in order], scores[order]


@pytest.mark.parametrize("source", ["pin {d:3}", "x{[ACGT]:2} {d:2}.", "{a:2}"])
def test_best_first_returns_exactly_the_k_cheapest_in_order(tiny_model, source):
    fmt = Format.parse(source)
    secrets, scores = ranked(tiny_model, fmt)
    for top, batch in ((1, 1), (10, 7), (25, 256)):
        ex = best_first(tiny_model, fmt, top=top, batch=batch)
        assert ex.proven and ex.method == "best-first"
        got = [c.log_perplexity for c in ex.candidates]
        np.testing.assert_allclose(got, scores[:top], atol=1e-4)
        # the same candidates: every secret strictly cheaper than the K-th is among them (the K-th
        # place itself may be shared by candidates whose scores tie within the engine's tolerance)
        strictly_better = {s for s, sc in zip(secrets, scores) if sc < got[-1] - engine.TIE_TOLERANCE}
        assert strictly_better <= {c.secret for c in ex.candidates}
        assert got == sorted(got)
        assert all(fmt.render(c.secret) == c.text for c in ex.candidates)


def test_best_first_on_a_memorizing_model_is_cheap(tiny_model):
    import copy

    import torch

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        model.head.bias[model.vocab.id("7")] += 12.0
    fmt = Format.parse("pin {d:4}")
    ex = best_first(model, fmt, top=1)
    assert ex.proven and ex.candidates[0].secret == "7777"
    assert ex.model_steps < 2000 < engine.brute_force_steps(engine.compile_format(Scorer(model), fmt))


def test_budget_exhaustion_is_not_proven(tiny_model):
    fmt = Format.parse("pin {d:4}")
    ex = best_first(tiny_model, fmt, top=5, max_steps=50, batch=16)
    assert not ex.proven
    assert ex.model_steps <= 50 + len("\npin ")


def test_beam_is_marked_approximate_and_finds_real_candidates(tiny_model):
    fmt = Format.parse("pin {d:3}")
    secrets, scores = ranked(tiny_model, fmt)
    ex = beam_search(tiny_model, fmt, width=1000, top=5)  # width >= |R| per level: exhaustive
    assert ex.method == "beam" and not ex.proven and ex.to_json()["approximate"] is True
    np.testing.assert_allclose([c.log_perplexity for c in ex.candidates], scores[:5], atol=1e-4)
    narrow = beam_search(tiny_model, fmt, width=2, top=2)
    assert len(narrow.candidates) == 2
    full = dict(zip(secrets, scores))
    for c in narrow.candidates:
        assert c.log_perplexity == pytest.approx(full[c.secret], abs=1e-4)


def test_bad_requests(tiny_model):
    with pytest.raises(AuditError):
        best_first(tiny_model, Format.parse("pin {d:3}"), top=0)
    with pytest.raises(AuditError):
        best_first(tiny_model, Format.parse("pin {d:3}"), max_steps=0)
    with pytest.raises(AuditError, match="vocabulary"):
        best_first(tiny_model, Format.parse("PIN {d:3}"))
