"""Bounded search memory: a small --max-memory gives the same extraction and ranks as an
unbounded run, the accounted peak stays under it, and a budget too small for one model call
fails before any work (exit 2)."""

import json

import numpy as np
import pytest
import torch

from exposure_audit.cli import main
from exposure_audit.data.formats import Format
from exposure_audit.errors import AuditError, OutOfMemoryError, is_out_of_memory, memory_errors_as_audit_errors
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import ENTRY_BYTES, best_first
from exposure_audit.memory import parse_size
from exposure_audit.models import Scorer, load_model

from .hf_models import PEAK_SCALE, train_tokenizer

UNBOUNDED = 1 << 40


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A GPT-2 of 4 layers x 128 wide: its KV rows (4 kB a token) outweigh the frontier's entries,
    as a real model's do, so a small budget evicts states rather than frontier."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("gpt2-wide")
    tok = train_tokenizer("merged-digits", folder)
    torch.manual_seed(0)
    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    net = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=2, n_positions=64, **ids))
    with torch.no_grad():
        net.transformer.ln_f.weight.mul_(PEAK_SCALE)
    net.eval().save_pretrained(folder, safe_serialization=True)
    return folder, load_model(folder)


def _same(a, b):
    assert [c.secret for c in a.candidates] == [c.secret for c in b.candidates]
    # a state recomputed in another batch shape may round differently in the last bits (docs/method.md)
    assert np.allclose([c.log_perplexity for c in a.candidates], [c.log_perplexity for c in b.candidates], atol=1e-4)
    assert a.proven == b.proven and a.model_steps == b.model_steps


def test_small_budget_extraction_equals_unbounded_on_a_token_model(hf):
    _, model = hf
    f = Format.parse("pin {d:4}")
    free = best_first(model, f, top=8, max_steps=60_000, batch=32, max_memory=UNBOUNDED)
    assert free.details["recomputed_steps"] == 0
    d = free.details
    # room for the whole frontier (so none of it is dropped) and a tenth of the states the free run held
    limit = int(ENTRY_BYTES * d["peak_frontier_entries"] / 0.85) + d["working_bytes"] + d["peak_state_bytes"] // 10
    tight = best_first(model, f, top=8, max_steps=60_000, batch=32, max_memory=limit)
    _same(free, tight)
    assert tight.details["recomputed_steps"] > 0  # states really were evicted and recomputed
    assert tight.details["peak_search_memory_bytes"] <= limit
    assert free.proven


def test_small_budget_extraction_equals_unbounded_on_the_char_lstm(tiny_model):
    f = Format.parse("the random number is {d:4}")
    free = best_first(tiny_model, f, top=5, max_steps=20_000, batch=16, max_memory=UNBOUNDED)
    d = free.details
    limit = int(ENTRY_BYTES * d["peak_frontier_entries"] / 0.85) + d["working_bytes"] + d["peak_state_bytes"] // 20
    tight = best_first(tiny_model, f, top=5, max_steps=20_000, batch=16, max_memory=limit)
    _same(free, tight)
    assert tight.details["recomputed_steps"] > 0
    assert tight.details["peak_search_memory_bytes"] <= limit


def test_a_frontier_past_the_budget_is_cut_and_the_proof_stays_honest(hf):
    _, model = hf
    f = Format.parse("pin {d:4}")
    free = best_first(model, f, top=8, max_steps=60_000, batch=32, max_memory=UNBOUNDED)
    d = free.details
    # room for a call and a third of the frontier the free run held: the frontier must be cut
    limit = d["working_bytes"] + ENTRY_BYTES * d["peak_frontier_entries"] // 3
    cut = best_first(model, f, top=8, max_steps=60_000, batch=32, max_memory=limit)
    h = cut.details["frontier_horizon"]
    # what it proved is the true order up to the horizon; beyond it, nothing is claimed
    proven = [c for c in cut.candidates if c.log_perplexity <= h]
    assert [c.secret for c in proven] == [c.secret for c in free.candidates[: len(proven)]]
    if cut.proven:  # every candidate lay under the horizon: the full, true order
        # (a state recomputed in another batch shape may round differently in the last bits)
        assert [c.secret for c in cut.candidates] == [c.secret for c in free.candidates]
        assert np.allclose(
            [c.log_perplexity for c in cut.candidates], [c.log_perplexity for c in free.candidates], atol=1e-4
        )
    else:
        assert len(proven) < len(free.candidates)
    assert cut.details["peak_search_memory_bytes"] <= limit


def test_small_budget_walk_gives_the_same_counts(hf):
    _, model = hf
    f = Format.parse("pin {d:3}")
    free, tight = Scorer(model, UNBOUNDED), Scorer(model, 1)
    cf = engine.compile_format(free, f)
    px = engine.score_secrets(free, cf, ["123", "999", "000"])
    counts, _ = engine.enumerate_counts(free, cf, px, batch=1024)
    size = engine.state_size(free, cf)
    # just enough for a stack of single-node batches: the walk caps its rows per call
    limit = size.whole + (sum(size.row(d) for d in range(1, size.depth + 1)) + size.call) * size.fanout
    tight.budget.limit = limit
    cf2 = engine.compile_format(tight, f)
    counts2, res = engine.enumerate_counts(tight, cf2, px, batch=1024)
    assert counts2.tolist() == counts.tolist() and res.complete
    assert 0 < tight.budget.peak <= limit < free.budget.peak
    pr = engine.pruned_rank(tight, cf2, float(px[0]))
    assert pr.rank == counts[0]


def test_a_budget_below_the_minimum_fails_before_any_work(hf):
    _, model = hf
    scorer = Scorer(model, 1000)  # 1 kB: less than one row of a KV cache
    with pytest.raises(AuditError, match="max-memory"):
        best_first(scorer, Format.parse("pin {d:4}"), top=3)
    steps = scorer.steps
    with pytest.raises(AuditError, match="max-memory"):
        engine.enumerate_counts(scorer, engine.compile_format(scorer, Format.parse("pin {d:3}")), [10.0])
    assert scorer.steps - steps <= 4  # compiling the format's shared prefix, no walk


def test_cli_max_memory(hf, tmp_path, capsys):
    folder, _ = hf
    out = tmp_path / "ex.json"
    args = ["extract", "--model", str(folder), "--format", "pin {d:3}", "--top", "3", "--quiet"]
    assert main([*args, "--max-memory", "1kB", "--json", str(out)]) == 2
    assert "max-memory" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--max-memory", "lots"]) == 2
    assert main([*args, "--max-memory", "512MB", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["max_memory_bytes"] == 512_000_000
    assert 0 < report["peak_search_memory_bytes"] <= 512_000_000


def test_sizes_and_allocation_failures():
    assert parse_size("4GB") == 4 * 10**9 and parse_size("4GiB") == parse_size("4G") == 4 * 2**30
    assert parse_size("512MB") == 512 * 10**6 and parse_size(1234) == 1234 and parse_size("1.5kB") == 1500
    for bad in ("", "4 parsecs", "-1GB", "0"):
        with pytest.raises(AuditError):
            parse_size(bad)
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried ...")
    assert is_out_of_memory(cpu) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(OutOfMemoryError, match="--max-memory"):
        with memory_errors_as_audit_errors(2**30):
            raise cpu
    with pytest.raises(RuntimeError, match="shape"):
        with memory_errors_as_audit_errors():
            raise RuntimeError("shape mismatch")
    assert np.isfinite(parse_size("2.5G"))


class _Starved:
    """A model whose allocator gives out after a few calls, as torch's does on a full machine."""

    def __init__(self, model, calls):
        self.model, self.calls = model, calls

    def __getattr__(self, name):
        return getattr(self.model, name)

    def step(self, state, ids):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return self.model.step(state, ids)


def test_an_allocation_failure_during_a_search_is_one_line_naming_max_memory(tiny_model):
    f = Format.parse("the random number is {d:4}")
    with pytest.raises(OutOfMemoryError, match="--max-memory"):
        best_first(_Starved(tiny_model, 30), f, top=3)
    scorer = Scorer(_Starved(tiny_model, 30))
    cf = engine.compile_format(scorer, f)
    with pytest.raises(OutOfMemoryError, match="--max-memory"):
        engine.enumerate_counts(scorer, cf, [50.0])


def test_bounded_extraction_is_the_true_order(hf):
    """Against brute force: the proven top 8 are the 8 lowest scores of all 1000 candidates."""
    _, model = hf
    f = Format.parse("pin {d:3}")
    scores = np.array(engine.score(model, [f.render(f.fill(i)) for i in range(f.space_size)]))
    best = np.argsort(scores, kind="stable")[:8]
    free = best_first(model, f, top=8, batch=64, max_memory=UNBOUNDED)
    d = free.details
    tight = int(ENTRY_BYTES * d["peak_frontier_entries"] / 0.85) + d["working_bytes"] + d["peak_state_bytes"] // 10
    for limit in (UNBOUNDED, tight):
        ex = best_first(model, f, top=8, batch=64, max_memory=limit)
        assert ex.proven
        assert [c.secret for c in ex.candidates] == [f.fill(int(i)) for i in best]
        assert np.allclose([c.log_perplexity for c in ex.candidates], scores[best], atol=1e-4)


def test_large_rounds_shrink_to_fit_the_budget(hf):
    """A KV-cache model pops 1,024 entries per round by default, stepped in padded calls of at
    most CALL_ROWS rows; where that round's new states would take over half the budget, the
    calls shrink first (to MIN_CALL_ROWS), then the round (down to one call), so a budget that
    held one-call rounds still runs, with the same proven order."""
    from exposure_audit.exposure.extract import CALL_ROWS, MIN_CALL_ROWS

    _, model = hf
    f = Format.parse("pin {d:4}")
    small = best_first(model, f, top=3, max_steps=60_000, batch=CALL_ROWS, max_memory=UNBOUNDED)
    big = best_first(model, f, top=3, max_steps=60_000, max_memory=UNBOUNDED)
    assert (big.details["round_entries"], big.details["call_rows"]) == (1024, CALL_ROWS)
    assert big.details["working_bytes"] > small.details["working_bytes"]
    limit = 2 * small.details["working_bytes"] + int(ENTRY_BYTES * big.details["peak_frontier_entries"] / 0.85)
    assert big.details["working_bytes"] > limit // 2  # the default round would not fit half of it
    fitted = best_first(model, f, top=3, max_steps=60_000, max_memory=limit)
    d = fitted.details
    assert d["working_bytes"] <= limit // 2
    assert d["call_rows"] == MIN_CALL_ROWS  # the calls shrank first
    assert [c.secret for c in fitted.candidates] == [c.secret for c in big.candidates] and fitted.proven
    assert d["peak_search_memory_bytes"] <= limit
