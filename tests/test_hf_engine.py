"""Exact ranks and extraction over subword tokens, on tiny random-weight Hugging Face models built
at test time (GPT-2 and Llama architectures; a BPE that merges digits and one that splits them)."""

import json

import numpy as np
import pytest
import torch

from exposure_audit.cli import main
from exposure_audit.data.formats import Format
from exposure_audit.errors import AuditError
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import best_first
from exposure_audit.exposure.measure import measure
from exposure_audit.models import Scorer, load_model

from .conftest import make_corpus
from .hf_models import tiny_model

CASES = [("gpt2", "merged-digits"), ("gpt2", "split-digits"), ("llama", "merged-digits"), ("llama", "split-digits")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for arch, tok in CASES:
        folder = tmp_path_factory.mktemp(f"{arch}-{tok}")
        out[arch, tok] = load_model(tiny_model(folder, arch=arch, tokenizer=tok))
    return out


def brute_scores(model, fmt):
    return np.array(engine.score(model, [fmt.render(fmt.fill(i)) for i in range(fmt.space_size)]))


def plain_forward_bits(model, text):
    """-log2 p of the line's tokens from one plain forward pass over BOS + line (no cache, no tree)."""
    ctx, line = model.encode_lines([text], None)[0]
    ids = torch.as_tensor([ctx + line])
    with torch.no_grad():
        logp = torch.log_softmax(model.model(input_ids=ids).logits.float(), -1)[0]
    n = len(ctx)
    return -sum(float(logp[n - 1 + j, t]) for j, t in enumerate(line)) / np.log(2)


class C:
    def __init__(self, fmt, secret, insertions=1):
        self.format, self.secret, self.insertions = fmt.source, secret, insertions


@pytest.mark.parametrize("case", CASES)
def test_score_equals_a_plain_forward_pass(models, case):
    model = models[case]
    texts = ["my pin is 4821", "card 0375 1299", "the code is 12-99"]
    for text, px in zip(texts, engine.score(model, texts)):
        assert px == pytest.approx(plain_forward_bits(model, text), abs=1e-3)


@pytest.mark.parametrize("case", CASES)
def test_enumerate_pruned_and_extract_equal_brute_force(models, case):
    model = models[case]
    fmt = Format.parse("my pin is {d:3}")
    scores = brute_scores(model, fmt)
    rng = np.random.default_rng(0)
    secrets = [fmt.fill(int(i)) for i in rng.choice(fmt.space_size, 3, replace=False)] + ["482", "037"]
    expected = [int(np.sum(scores <= scores[fmt.index(s)] + engine.TIE_TOLERANCE)) for s in secrets]
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt, canaries=secrets)
    px = engine.score_secrets(scorer, cf, secrets)
    np.testing.assert_allclose(px, [scores[fmt.index(s)] for s in secrets], atol=1e-3)
    counts, walk = engine.enumerate_counts(scorer, cf, px, batch=256)
    assert list(counts) == expected
    assert walk.leaves - walk.noncanonical_leaves == fmt.space_size  # each candidate counted exactly once
    assert [engine.pruned_rank(scorer, cf, float(p), batch=256).rank for p in px] == expected
    for method in ("enumerate", "brute"):  # (pruned walks were checked on the engine above)
        assert [r.rank for r in measure(model, [C(fmt, s) for s in secrets], method=method)] == expected, method
    ex = best_first(model, fmt, top=8)
    order = np.argsort(scores, kind="stable")
    assert ex.proven
    np.testing.assert_allclose([c.log_perplexity for c in ex.candidates], scores[order[:8]], atol=1e-3)
    strictly_better = {fmt.fill(int(i)) for i in order[:8] if scores[i] < scores[order[7]] - engine.TIE_TOLERANCE}
    assert strictly_better <= {c.secret for c in ex.candidates}


@pytest.mark.parametrize("case", [("gpt2", "merged-digits"), ("llama", "merged-digits")])
def test_padded_calls_extract_what_a_call_per_depth_does(models, case, monkeypatch):
    """Best-first steps the rows of a round's different depths together, padded: the same proven
    candidates and costs as stepping each depth on its own (the engine for a model whose rows
    must share a length), in fewer model calls, some of which mixed depths."""
    model = models[case]
    fmt = Format.parse("my pin is {d:3}")
    calls: list[bool] = []
    forward = model._forward
    monkeypatch.setattr(
        model,
        "_forward",
        lambda ids, state: calls.append(state is not None and state.lengths is not None) or forward(ids, state),
    )
    padded = best_first(model, fmt, top=8, batch=96)
    mixed, n_padded = sum(calls), len(calls)
    calls.clear()
    monkeypatch.setattr(model, "ragged", False)
    by_depth = best_first(model, fmt, top=8, batch=96)
    assert padded.proven and by_depth.proven and not any(calls)
    assert [c.secret for c in padded.candidates] == [c.secret for c in by_depth.candidates]
    np.testing.assert_allclose(
        [c.log_perplexity for c in padded.candidates], [c.log_perplexity for c in by_depth.candidates], atol=1e-4
    )
    assert mixed > 0 and n_padded < len(calls)


@pytest.mark.parametrize("case", [("gpt2", "merged-digits"), ("llama", "split-digits")])
def test_the_walks_ask_for_the_formats_tokens_only(models, case, monkeypatch):
    """Past compiling a format (one row at a time), no search builds a full [rows, V] row of
    log2-probabilities: enumeration, pruned walks, importance sampling, scoring secrets,
    best-first and beam extraction all step the model for the tree's tokens (cf.columns)."""
    from exposure_audit.models import hf

    model = models[case]
    fmt = Format.parse("my pin is {d:3}")
    full_rows: list[int] = []
    whole = hf._log2_softmax_
    monkeypatch.setattr(hf, "_log2_softmax_", lambda x: full_rows.append(int(x.shape[0])) or whole(x))
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt, canaries=["482"])
    assert cf.logp.shape == (1, len(cf.columns)) and len(cf.columns) < model.vocab_size
    assert set(cf.columns.tolist()) == {int(t) for e in cf.edges for t in e.ids}
    px = engine.score_secrets(scorer, cf, ["482", "037"])
    np.testing.assert_allclose(engine.score_secrets_shared(scorer, cf, ["482", "037"]), px, atol=1e-4)
    engine.enumerate_counts(scorer, cf, px, batch=64)
    engine.pruned_rank(scorer, cf, float(px[0]), batch=64)
    for method in ("enumerate", "pruned", "estimate"):
        measure(model, [C(fmt, "482")], method=method, samples=64)
    best_first(model, fmt, top=4)
    from exposure_audit.exposure.extract import beam_search

    beam_search(model, fmt, width=8, top=4)
    assert full_rows and set(full_rows) == {1}  # the compiles' context and shared tokens, one row each


def test_two_holes_and_ten_thousand_candidates(models):
    model = models["gpt2", "split-digits"]  # one token path per candidate: 10^4 leaves, a fast walk
    fmt = Format.parse("code {d:2}-{d:2} ok")
    scores = brute_scores(model, fmt)
    secrets = ["4821", "0375", "9999", "1212"]
    expected = [int(np.sum(scores <= scores[fmt.index(s)] + engine.TIE_TOLERANCE)) for s in secrets]
    for method in ("enumerate", "pruned"):
        assert [r.rank for r in measure(model, [C(fmt, s) for s in secrets], method=method)] == expected


def test_multi_digit_tokens_are_walked_and_checked_for_canonicity(models):
    """With merged digits a 3-digit secret has several token paths; a path that is not the
    tokenizer's own encoding is never a candidate, even where it is cheaper than the canonical one."""
    model = models["gpt2", "merged-digits"]
    fmt = Format.parse("my pin is {d:3}")
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    assert cf.ambiguous
    found = None
    for i in range(fmt.space_size):
        secret = fmt.fill(i)
        (canonical,) = cf.line_ids([secret])
        # the same text as single-character tokens: " ", digits, newline
        one_by_one = [model.tokenizer.convert_tokens_to_ids(model.tokenizer.tokenize(ch))[0] for ch in f" {secret}\n"]
        if one_by_one == canonical:
            continue
        costs = engine._score_paths(scorer, cf.state, cf.logp, cf.base_cost, [canonical, one_by_one], 64, cf=cf)
        if costs[1] < costs[0]:
            found = (secret, canonical, one_by_one, costs)
            break
    assert found is not None, "expected a candidate whose non-canonical spelling is cheaper"
    secret, canonical, one_by_one, costs = found
    assert list(cf.canonical_mask([canonical, one_by_one])) == [True, False]
    (px,) = engine.score(model, [fmt.render(secret)])
    assert px == pytest.approx(costs[0], abs=1e-3)  # the canonical cost is the log-perplexity
    (r,) = measure(model, [C(fmt, secret)], method="enumerate")
    assert r.rank == int(np.sum(brute_scores(model, fmt) <= px + engine.TIE_TOLERANCE))


def test_split_digit_tokenizer_has_one_path_per_candidate(models):
    model = models["llama", "split-digits"]
    fmt = Format.parse("my pin is {d:3}")
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    _, walk = engine.enumerate_counts(scorer, cf, [100.0])
    assert walk.leaves == fmt.space_size and walk.noncanonical_leaves == 0
    assert walk.steps == cf.tree_steps() == 10 + 100 + 1000  # three digits, then the newline


def test_a_context_that_merges_with_the_line(models):
    """A text context whose last characters merge with the line's first: the straddling token
    belongs to the line, and the line's cost is still the canonical tokenization's."""
    model = models["gpt2", "merged-digits"]
    fmt = Format.parse("{d:2}21 ok")
    context = "code 48"  # "48" + "21" can merge into the frequent token "4821"
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt, context)
    secrets = ["48", "03", "99"]
    px = engine.score_secrets(scorer, cf, secrets)
    np.testing.assert_allclose(px, engine.score(model, [fmt.render(s) for s in secrets], context=context), atol=1e-3)
    scores = np.array(engine.score(model, [fmt.render(fmt.fill(i)) for i in range(100)], context=context))
    counts, _ = engine.enumerate_counts(scorer, cf, px)
    assert list(counts) == [int(np.sum(scores <= p + engine.TIE_TOLERANCE)) for p in px]


def test_cli_measure_and_extract_on_a_saved_folder(tmp_path, capsys):
    folder = tiny_model(tmp_path / "hf", arch="llama", tokenizer="split-digits")
    corpus = tmp_path / "corpus.txt"
    make_corpus(corpus, lines=300)
    data = tmp_path / "data"
    insert = ["insert", "--corpus", corpus, "--out", data, "--format", "pin {d:3}", "--schedule", "0,1", "-q"]
    assert main([str(a) for a in insert]) == 0
    capsys.readouterr()
    report = tmp_path / "report.json"
    argv = ["measure", "--model", folder, "--canaries", data / "canaries.json", "--json", report, "-q"]
    code = main([str(a) for a in [*argv, "--fail-above", "1000"]])
    out, _ = capsys.readouterr()
    assert code == 0 and "link to this manifest was not checked" in out
    data_json = json.loads(report.read_text())
    assert data_json["model"]["details"]["kind"] == "hf"
    assert data_json["model"]["trained_on_manifest_data"] is False
    assert all(c["rank"] is not None and c["method"] == "enumerate" for c in data_json["canaries"])
    worst = max(c["exposure"] for c in data_json["canaries"] if c["insertions"] > 0)
    code = main([str(a) for a in [*argv, "--fail-above", worst - 0.01, "--force"]])
    assert code == 1
    capsys.readouterr()
    code = main([str(a) for a in ["extract", "--model", folder, "--format", "pin {d:3}", "--top", "3", "-q"]])
    out, _ = capsys.readouterr()
    assert code == 0 and "3 candidates, proven" in out


def char_level_model(folder):
    """A tokenizer that is not byte-level (a BPE over the characters of a small alphabet, unknown
    characters mapped to [UNK]) under a tiny GPT-2: capital letters are characters no token spells."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789 \n")
    trainer = trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]", "<s>"], initial_alphabet=alphabet)
    tok.train_from_iterator(["my pin is 1234", "the code is 0042", "pin 77 pin 88"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="<s>")
    torch.manual_seed(0)
    ids = {"vocab_size": len(fast), "bos_token_id": fast.bos_token_id, "eos_token_id": fast.bos_token_id}
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, **ids)).save_pretrained(
        folder, safe_serialization=True
    )
    fast.save_pretrained(folder)
    return folder


def test_a_character_no_token_can_spell_is_an_error(tmp_path):
    model = load_model(char_level_model(tmp_path / "chars"))
    fmt = Format.parse("my pin is {d:3}")
    scores = brute_scores(model, fmt)  # a character-level vocabulary works like any other
    (r,) = measure(model, [C(fmt, "123")], method="enumerate")
    assert r.rank == int(np.sum(scores <= scores[123] + engine.TIE_TOLERANCE))
    with pytest.raises(AuditError, match="character 'I' is missing from the model's vocabulary"):
        measure(model, [C(Format.parse("PIN {d:3}"), "123")])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--device", "cuda"], "CUDA is not available"),
        (["--device", "gpu"], "'--device'"),
        (["--context", ""], "context"),
    ],
)
def test_cli_bad_model_options(tmp_path, capsys, extra, match):
    if extra[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    folder = tiny_model(tmp_path / "hf", arch="gpt2", tokenizer="split-digits")
    capsys.readouterr()
    code = main([str(a) for a in ["extract", "--model", folder, "--format", "pin {d:2}", "-q", *extra]])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_cli_refuses_pickle_weights_and_writes_nothing(tmp_path, capsys):
    folder = tiny_model(tmp_path / "hf", arch="gpt2", tokenizer="split-digits")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    capsys.readouterr()
    out = tmp_path / "ex.json"
    code = main([str(a) for a in ["extract", "--model", folder, "--format", "pin {d:2}", "--json", out, "-q"]])
    _, err = capsys.readouterr()
    assert code == 2 and "pickle weights" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_token_spanning_more_than_2_to_the_63_fillings_compiles_and_scores(tmp_path):
    """A tokenizer learned on data that repeats a long key has a token spelling most of it: on a
    format of 10^25 fillings that one token steps over 10^20+ of them, past int64. The format
    still compiles (index arithmetic is off beyond 2^62 fillings, where it is unused), and the
    canonical path of the key costs what a plain forward pass says."""
    key = "1234567890123456789012345"
    folder = tiny_model(tmp_path / "m", extra=(f"key {key}",) * 300)
    model = load_model(folder)
    fmt = Format.parse("key {d:25}")
    assert any(len(t) >= 20 for t in model.tokenizer.tokenize(f" {key}")), "expected one long token"
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt, canaries=[key])
    assert not cf.track_index
    assert max(max(len(s) for s in model.tokenizer.convert_ids_to_tokens(e.ids.tolist())) for e in cf.edges) >= 20
    (canonical,) = cf.line_ids([key])
    (cost,) = engine._score_paths(scorer, cf.state, cf.logp, cf.base_cost, [canonical], 8, cf=cf)
    (px,) = engine.score(model, [fmt.render(key)])
    assert px == pytest.approx(cost, abs=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_tree_of_one_character_tokens_needs_no_canonical_check(models, arch):
    """Split digits on a digit format closed by its newline: every token of the tree spells one
    character, so each text has one path, and it is the tokenizer's own; the leaves are not
    re-encoded. Fixed text after the hole that a token spans makes the tree ambiguous again."""
    model = models[arch, "split-digits"]
    fmt = Format.parse("my pin is {d:3}")
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    assert not cf.ambiguous
    # one path per candidate, and each is the canonical encoding of its text
    paths = [0] * (cf.end + 1)
    paths[0] = 1
    for p in range(cf.end):
        for q in cf.edges[p].next.tolist():
            paths[q] += paths[p]
    assert paths[cf.end] == fmt.space_size
    secrets = [fmt.fill(i) for i in range(fmt.space_size)]
    canonical = cf.line_ids(secrets)
    assert len({tuple(p) for p in canonical}) == fmt.space_size
    assert all(len(p) == 4 for p in canonical)  # three digits and the newline, one token each
    # the ranks, unchecked, are those of whole-string scores
    scores = brute_scores(model, fmt)
    picked = ["042", "999", "500"]
    expected = [int(np.sum(scores <= scores[fmt.index(s)] + engine.TIE_TOLERANCE)) for s in picked]
    for method in ("enumerate", "pruned"):
        assert [r.rank for r in measure(model, [C(fmt, s) for s in picked], method=method)] == expected
    # a word of the vocabulary after the hole: its one token spans several characters
    word = max((b.decode() for b in model.token_bytes() if b and b.isalpha() and b.isascii()), key=len)
    assert len(word) > 1
    assert engine.compile_format(scorer, Format.parse(f"my pin is {{d:3}} {word}")).ambiguous
