"""The memorization audit's scores against direct implementations of each paper's formula, the
sampler's exact suffix probability against sampling, and its greedy limits."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from exposure_audit.audits.scoring import (
    Sampler,
    greedy_decode,
    membership_scores,
    sampler_logq,
    score_rows,
    token_unit,
)

pytest.importorskip("transformers")

from tests.hf_models import tiny_model as tiny_hf  # noqa: E402

TEXTS = ["the number is 4821 and my pin", "call me at 0375 12 2024", "your secret code card 99"]


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    from exposure_audit.models.hf import load_hf

    return load_hf(tiny_hf(tmp_path_factory.mktemp("m"), arch="llama"), device="cpu")


def _rows(model, texts):
    enc = model.encode_lines(texts, None)
    return [c + line for c, line in enc], [len(c) for c, _ in enc]


@torch.no_grad()
def _direct_logits(model, row):
    """Natural-log next-token distributions of one row, straight from the network."""
    if hasattr(model, "tokenizer"):
        logits = model.model(input_ids=torch.tensor([row])).logits[0]
    else:
        logits = model(torch.tensor([row]))[0][0]
    return torch.log_softmax(logits.double(), dim=-1)


def _paper_scores(model, row, start, k):
    """min-k% (Shi et al.) and min-k%++ (Zhang et al.) as written in their released code."""
    lp = _direct_logits(model, row)[:-1]
    ids = torch.tensor(row[1:])
    token = lp.gather(-1, ids[:, None]).squeeze(-1)
    probs = lp.exp()
    mu = (probs * lp).sum(-1)
    sigma = (probs * lp.square()).sum(-1) - mu.square()
    plus = ((token - mu) / sigma.sqrt()).numpy()[start - 1 :]
    token = token.numpy()[start - 1 :]
    n = max(1, int(len(token) * k))
    return float(np.sort(token)[:n].mean()), float(np.sort(plus)[:n].mean()), float(-token.mean())


@pytest.mark.parametrize("kind", ["hf", "lstm"])
@pytest.mark.parametrize("k", [0.2, 0.5])
def test_min_k_and_min_k_plus_plus_equal_the_papers_formulas(kind, k, hf, tiny_model):
    model = hf if kind == "hf" else tiny_model
    rows, starts = _rows(model, TEXTS)
    scored = score_rows(model, rows, starts)
    for text, row, start, s in zip(TEXTS, rows, starts, scored):
        got = membership_scores(s, text + "\n", k)
        min_k, plus, loss = _paper_scores(model, row, start, k)
        assert got["min_k"] == pytest.approx(min_k, abs=1e-4)
        assert got["min_k_plus_plus"] == pytest.approx(plus, abs=1e-3)
        assert got["loss"] == pytest.approx(-loss, abs=1e-4)
        # zlib ratio: minus the mean token loss in bits over the zlib-compressed length of the text
        direct = -(loss / math.log(2)) / len(zlib.compress((text + "\n").encode("utf-8")))
        assert got["zlib"] == pytest.approx(direct, abs=1e-5)


def test_padding_does_not_change_a_row(hf):
    rows, starts = _rows(hf, TEXTS)
    together = score_rows(hf, rows, starts)
    alone = [score_rows(hf, [r], [s])[0] for r, s in zip(rows, starts)]
    for a, b in zip(together, alone):
        assert a.token_logp == pytest.approx(b.token_logp, abs=1e-5)


def _suffix_logp(model, rows, starts, P, S, sampler):
    return [s.suffix_logq for s in score_rows(model, rows, starts, suffix=(P, S), sampler=sampler)]


def _sample(model, prefix, S, sampler, n, seed):
    """n autoregressive draws of S tokens with the model's cached steps, q built independently."""
    gen = torch.Generator().manual_seed(seed)
    state, lp = model.start_batch([prefix] * n)
    drawn = []
    for _ in range(S):
        q = sampler_logq(lp, sampler).exp()
        tok = torch.multinomial(q, 1, generator=gen).squeeze(1)
        drawn.append(tok)
        state, lp = model.step(state, tok)
    return torch.stack(drawn, 1)


def test_suffix_probability_equals_the_sampling_frequency(hf):
    """p from one forward pass against autoregressive sampling with the model's own steps."""
    from exposure_audit.audits.privacy_audit import clopper_pearson

    sampler = Sampler(temperature=0.8, top_k=40, top_p=0.9)
    rows, starts = _rows(hf, ["the number is 4821"])
    P, S = 3, 2
    prefix = rows[0][: starts[0] + P]
    # the record's suffix: the most frequent of a first, independent set of draws (p well above 0)
    first = _sample(hf, prefix, S, sampler, 300, seed=1)
    values, counts = torch.unique(first, dim=0, return_counts=True)
    suffix = values[counts.argmax()].tolist()
    logp = _suffix_logp(hf, [prefix + suffix], starts, P, S, sampler)[0]
    p = math.exp(logp)
    assert 0.01 < p < 0.99
    n = 4000
    hits = int((_sample(hf, prefix, S, sampler, n, seed=0) == torch.tensor(suffix)).all(1).sum())
    lo, hi = clopper_pearson(hits, n, 0.999)
    assert lo <= p <= hi
    # an impossible suffix (a token outside the nucleus) has p = 0 exactly
    q = sampler_logq(hf.start_batch([prefix])[1], sampler)[0]
    outside = int(torch.nonzero(q == -math.inf)[0])
    assert _suffix_logp(hf, [prefix + [outside, suffix[1]]], starts, P, S, sampler)[0] == -math.inf


def test_top_p_and_top_k_truncate_as_defined():
    lp2 = torch.log2(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    q = sampler_logq(lp2, Sampler(top_p=0.8)).exp()[0]
    assert q.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])  # 0.5 + 0.3 reaches 0.8
    q = sampler_logq(lp2, Sampler(top_k=3)).exp()[0]
    assert q.tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])
    q = sampler_logq(lp2, Sampler(temperature=0.5)).exp()[0]
    w = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    assert q.tolist() == pytest.approx((w / w.sum()).tolist())


@pytest.mark.parametrize("kind", ["hf", "lstm"])
def test_top_k_one_and_zero_temperature_give_the_greedy_result(kind, hf, tiny_model):
    model = hf if kind == "hf" else tiny_model
    texts = TEXTS + ["the number is 4821", "my pin is 0375"]
    rows, starts = _rows(model, texts)
    P, S = 4, 3
    rows = [r for r, s in zip(rows, starts) if len(r) >= s + P + S]
    starts = [s for r, s in zip(_rows(model, texts)[0], starts) if len(r) >= s + P + S]
    greedy = greedy_decode(model, [r[: s + P] for r, s in zip(rows, starts)], S)
    # a record whose suffix is the model's own greedy continuation: exact match by construction
    rows.append(rows[0][: starts[0] + P] + greedy[0])
    starts.append(starts[0])
    greedy.append(greedy[0])
    match = [r[s + P : s + P + S] == g for r, s, g in zip(rows, starts, greedy)]
    assert any(match) and not all(match)
    top1 = _suffix_logp(model, rows, starts, P, S, Sampler(top_k=1))
    assert [lp == 0.0 for lp in top1] == match
    assert all(lp in (0.0, -math.inf) for lp in top1)
    cold = _suffix_logp(model, rows, starts, P, S, Sampler(temperature=1e-3))
    assert [math.exp(lp) > 0.99 for lp in cold] == match
    assert all(math.exp(lp) < 1e-6 for lp, m in zip(cold, match) if not m)
    assert _suffix_logp(model, rows, starts, P, S, Sampler(greedy=True)) == top1


def test_token_unit(hf, tiny_model):
    assert token_unit(tiny_model) == "character"
    assert token_unit(hf) == "token"


def test_sampler_settings_are_checked():
    from exposure_audit.errors import AuditError

    for bad in (Sampler(temperature=0.0), Sampler(temperature=-1), Sampler(top_p=0.0), Sampler(top_p=1.5)):
        with pytest.raises(AuditError):
            bad.check()
    Sampler(temperature=0.0, greedy=True).check()
