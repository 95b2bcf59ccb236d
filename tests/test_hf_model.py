"""The Hugging Face adapter against tiny random GPT-2 / Llama models built on the spot (no download)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from exposure_audit.errors import AuditError
from exposure_audit.files import sha256_file
from exposure_audit.models.base import LanguageModel, spell
from exposure_audit.models.hf import HFModel, is_hf_checkpoint, load_hf

from . import hf_models

COMBOS = [(arch, tok) for arch in hf_models.ARCHS for tok in hf_models.TOKENIZER_KINDS]
LINES = ["my pin is 4821", "call me at 555-0375 and 12", "card 4821 0375 9911 2024", "café ☃ número 7"]
DIGITS = set(b"0123456789")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[tuple[str, str], HFModel]:
    root = tmp_path_factory.mktemp("hf")
    return {(a, t): load_hf(hf_models.tiny_model(root / f"{a}-{t}", a, t), device="cpu") for a, t in COMBOS}


@pytest.fixture(scope="module")
def no_bos(tmp_path_factory) -> HFModel:
    """A Llama whose tokenizer has no BOS (default context: a newline) and 5 logit rows beyond the tokenizer."""
    folder = hf_models.tiny_model(tmp_path_factory.mktemp("hf") / "nobos", "llama", bos=False, pad_vocab=5)
    return load_hf(folder, device="cpu")


def forward_costs(model: HFModel, ctx: list[int], line: list[int]) -> torch.Tensor:
    """-log2 p of each line token, from one plain forward pass over context + line (no cache)."""
    ids = torch.tensor([ctx + line])
    with torch.no_grad():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0].float(), -1) / math.log(2)
    return torch.stack([-logp[len(ctx) - 1 + i, t] for i, t in enumerate(line)])


def step_costs(model: HFModel, ctx: list[int], line: list[int]) -> torch.Tensor:
    state, logp = model.start(ctx)
    costs = []
    for t in line:
        costs.append(-logp[0, t])
        state, logp = model.step(state, torch.tensor([t]))
    return torch.stack(costs)


class MkdirOnUnpickle:
    """Unpickling this runs ``os.mkdir(path)``: proof that a loader unpickled the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def one_line_error(fn) -> str:
    with pytest.raises(AuditError) as e:
        fn()
    message = str(e.value)
    assert message and "\n" not in message
    return message


# -- loading and tokens ---------------------------------------------------------------------
@pytest.mark.parametrize("arch,tok", COMBOS)
def test_loads_and_describes(models, arch, tok):
    m: LanguageModel = models[arch, tok]
    # LanguageModel is not runtime_checkable: check its members by name
    members = [*LanguageModel.__annotations__, *(n for n in vars(LanguageModel) if not n.startswith("_"))]
    assert all(hasattr(m, name) for name in members) and m.ragged is True and m.padded is True
    d = m.describe()
    assert d["kind"] == "hf" and d["model_type"] == arch and d["device"] == "cpu" and d["dtype"] == "float32"
    assert d["model_class"] == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    assert d["weights_sha256"] == sha256_file(Path(d["path"]) / "model.safetensors")
    assert d["vocab_size"] == m.vocab_size == len(m.tokenizer) == len(m.token_bytes())
    assert d["bos_token"] == hf_models.BOS and d["max_positions"] == 128 and "training" not in d
    assert not m.model.training


@pytest.mark.parametrize("arch", hf_models.ARCHS)
def test_step_flops_counts_each_weight_once_and_no_lookup(models, arch):
    """2 FLOP per weight a step multiplies by: tied embeddings counted once (as the output head),
    an untied input embedding not at all (a lookup)."""
    m = models[arch, "merged-digits"]
    net = m.model
    total = sum(p.numel() for p in net.parameters())  # parameters() yields a tied weight once
    emb, head = net.get_input_embeddings().weight, net.get_output_embeddings().weight
    want = 2.0 * (total if emb is head else total - emb.numel())
    assert m.step_flops() == want and 0 < want < 2.0 * (total + emb.numel())
    untied = copy.deepcopy(net)
    untied.config.tie_word_embeddings = False
    untied.get_output_embeddings().weight = torch.nn.Parameter(head.detach().clone())
    m2 = copy.copy(m)
    m2.model = untied
    assert m2.step_flops() == 2.0 * sum(p.numel() for p in untied.parameters()) - 2.0 * emb.numel()


def test_training_record_and_bfloat16(tmp_path):
    folder = hf_models.tiny_model(tmp_path / "m", "llama")
    (folder / "exposure_audit.json").write_text(json.dumps({"epochs": 3}))
    assert is_hf_checkpoint(folder) and not is_hf_checkpoint(tmp_path)
    m = load_hf(folder, device="cpu", dtype="bfloat16")
    d = m.describe()
    assert d["training"] == {"epochs": 3} and d["dtype"] == "bfloat16"
    _, logp = m.start(m.context_ids(None))
    assert logp.dtype == torch.float32 and logp.shape == (1, m.vocab_size)


def test_sharded_weights_hash(tmp_path, models):
    m = models["llama", "merged-digits"]
    m.model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    m.tokenizer.save_pretrained(tmp_path / "sharded")
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1
    joined = "".join(sorted(sha256_file(f) for f in shards)).encode()
    described = load_hf(tmp_path / "sharded", device="cpu").describe()
    assert described["weights_sha256"] == hashlib.sha256(joined).hexdigest()


@pytest.mark.parametrize("arch,tok", COMBOS)
def test_token_bytes_spell_lines_back(models, arch, tok):
    m = models[arch, tok]
    table = m.token_bytes()
    assert table[m.tokenizer.bos_token_id] is None and table[m.tokenizer.eos_token_id] is None
    assert m.context_ids(None) == [m.tokenizer.bos_token_id]
    for (ctx, line), text in zip(m.encode_lines(LINES, None), LINES):
        assert ctx == [m.tokenizer.bos_token_id]
        assert spell(m, line) == (text + "\n").encode("utf-8")
        assert line == m.tokenizer(text + "\n", add_special_tokens=False)["input_ids"]  # the canonical encoding


def test_digit_tokens(models):
    for arch in hf_models.ARCHS:
        merged, split = models[arch, "merged-digits"], models[arch, "split-digits"]
        for m, multi in ((merged, True), (split, False)):
            digit_runs = [b for b in m.token_bytes() if b and len(b.strip()) >= 2 and set(b.strip()) <= DIGITS]
            line = m.encode_lines(["my pin is 4821 and 0375"], None)[0][1]
            digits_per_token = [sum(c in DIGITS for c in m.token_bytes()[t]) for t in line]
            if multi:
                assert digit_runs and max(digits_per_token) >= 2
            else:
                assert not digit_runs and max(digits_per_token) == 1


def test_no_bos_tokenizer_uses_newline_context_and_padded_rows(no_bos):
    m = no_bos
    assert m.tokenizer.bos_token_id is None and m.describe()["bos_token"] is None
    assert m.vocab_size == len(m.tokenizer) + 5 and m.token_bytes()[-5:] == [None] * 5
    newline = m.context_ids(None)
    assert spell(m, newline) == b"\n"
    for (ctx, line), text in zip(m.encode_lines(LINES, None), LINES):
        assert ctx == newline and spell(m, line) == (text + "\n").encode("utf-8")
        assert torch.allclose(step_costs(m, ctx, line), forward_costs(m, ctx, line), atol=1e-4)


# -- lines after a text context -------------------------------------------------------------
def test_straddling_token_belongs_to_the_line(models):
    m = models["gpt2", "merged-digits"]
    found = []
    for word in hf_models.WORDS:
        for k in range(1, len(word)):
            context, text = f"the {word[:k]}", f"{word[k:]} is 4821"
            ctx, line = m.encode_lines([text], context)[0]
            head = spell(m, line)[: -len(text) - 1]
            # every split spells context + line back, the line ending in text + newline
            assert spell(m, ctx) + spell(m, line) == (context + text + "\n").encode()
            assert spell(m, line).endswith((text + "\n").encode()) and context.encode().endswith(head)
            if head:
                found.append((context, text, ctx, line))
    assert found, "no context/line pair merged across the boundary"
    context, text, ctx, line = found[0]
    whole = m.tokenizer(context + text + "\n", add_special_tokens=False)["input_ids"]
    assert ctx + line == whole  # the canonical encoding, split, not re-encoded
    assert torch.allclose(step_costs(m, ctx, line), forward_costs(m, ctx, line), atol=1e-4)


def test_context_merging_entirely_or_empty_is_refused(models):
    m = models["gpt2", "merged-digits"]
    one_line_error(lambda: m.encode_lines(["mber"], "nu"))  # "number" is one token: no context left
    one_line_error(lambda: m.encode_lines(["x"], ""))
    one_line_error(lambda: m.context_ids(""))
    one_line_error(lambda: m.start([]))


def test_prefix_space_tokenizer_is_refused(tmp_path):
    folder = hf_models.tiny_model(tmp_path / "m")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    m = load_hf(folder, device="cpu")
    assert "not supported" in one_line_error(lambda: m.encode_lines(["my pin is 4821"], None))


# -- states -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,tok", COMBOS)
def test_stepping_matches_one_forward_pass(models, arch, tok):
    m = models[arch, tok]
    for ctx, line in m.encode_lines(LINES, None) + m.encode_lines(["4821 0375"], "my pin is "):
        stepped, plain = step_costs(m, ctx, line), forward_costs(m, ctx, line)
        assert (stepped - plain).abs().max() < 1e-4
        assert abs(float(stepped.sum() - plain.sum())) < 1e-3
        assert float(plain.sum()) > 5  # a real line cost, not a degenerate one


def snapshot(state):
    return [t.clone() for t in (*state.keys, *state.values)]


@pytest.mark.parametrize("arch", hf_models.ARCHS)
def test_take_and_cat_match_single_rows_and_never_mutate(models, arch):
    m = models[arch, "merged-digits"]
    ctx, line = m.encode_lines(["the secret code is 4821 and my pin is 0375"], None)[0]
    assert len(line) >= 8
    root, _ = m.start(ctx + line[:2])
    before = snapshot(root)
    nxt = torch.tensor(line[2:5])
    singles = [m.step(root, nxt[i : i + 1])[1] for i in range(3)]

    taken = m.take(root, torch.tensor([0, 0, 0]))
    state, logp = m.step(taken, nxt)
    assert taken.rows == 3 and state.rows == 3 and state.length == root.length + 1
    assert torch.allclose(logp, torch.cat(singles), atol=1e-5)

    state_before = snapshot(state)
    both = m.cat([m.take(state, torch.tensor([2])), m.take(state, torch.tensor([0, 1]))])
    last = torch.tensor(line[5:8])
    _, logp2 = m.step(both, last)
    rows = [m.step(m.take(state, torch.tensor([i])), last[j : j + 1])[1] for j, i in enumerate((2, 0, 1))]
    assert torch.allclose(logp2, torch.cat(rows), atol=1e-5)

    for old, new in ((before, snapshot(root)), (state_before, snapshot(state))):
        assert all(torch.equal(a, b) for a, b in zip(old, new))


@pytest.mark.parametrize("arch", hf_models.ARCHS)
@pytest.mark.parametrize("shared", [False, True])
def test_rows_of_different_lengths_share_a_state_padded(models, arch, shared):
    """Rows that read 2, 4 and 3 tokens after the root are stepped in one padded call, and again
    after it (each row's new token moved to its first free slot): every row's log-probabilities
    equal its own unpadded steps', and taking rows of one length back out of the padded state
    gives an unpadded state. ``shared``: every row continues one root state (held once, as the
    prefix); else each its own start (different prefixes: the rows are spelled out in full)."""
    m = models[arch, "merged-digits"]
    ctx, line = m.encode_lines(["the secret code is 4821 and my pin is 0375"], None)[0]
    root, _ = m.start(ctx + line[:1])

    def walk(tokens):
        one = root if shared else m.start(ctx + line[:1])[0]
        state = m.take(one, torch.tensor([0]))  # rows continuing a one-row state share it as their prefix
        for t in tokens:
            state, logp = m.step(state, torch.tensor([t]))
        return state, logp

    paths = [line[1:3], line[1:5], line[2:5]]
    singles = [walk(p)[0] for p in paths]
    mixed = m.cat(singles)
    assert mixed.lengths is not None and mixed.lengths.tolist() == [s.length for s in singles]
    assert (mixed.prefix is not None) == shared and mixed.length == max(s.length for s in singles)
    nxt, after = torch.tensor(line[5:8]), torch.tensor(line[8:11])
    once, logp = m.step(mixed, nxt)
    twice, logp2 = m.step(once, after)
    for r, path in enumerate(paths):
        own, own_logp = walk(list(path) + [int(nxt[r])])
        assert torch.allclose(logp[r], own_logp[0], atol=1e-4)
        _, own_logp2 = m.step(own, after[r : r + 1])
        assert torch.allclose(logp2[r], own_logp2[0], atol=1e-4)
    assert twice.lengths.tolist() == [s.length + 2 for s in singles]
    back = m.take(twice, torch.tensor([2, 1]))  # read 3 + 2 and 4 + 2 tokens: still padded
    assert back.lengths.tolist() == [singles[2].length + 2, singles[1].length + 2]
    alone = m.take(twice, torch.tensor([1, 1]))
    assert alone.lengths is None and alone.length == singles[1].length + 2
    assert alone.keys[0].shape[2] == alone.length - (0 if alone.prefix is None else alone.prefix.length)
    _, logp3 = m.step(alone, after[:2])
    own = walk([*paths[1], int(nxt[1]), int(after[1])])[0]
    _, own3 = m.step(m.take(own, torch.tensor([0, 0])), after[:2])
    assert torch.allclose(logp3, own3, atol=1e-4)


def _valid_slots(state, layer: int = 0) -> list[torch.Tensor]:
    """Each row's keys over the tokens it read, prefix included ([kv_heads, tokens, d] per row)."""
    keys = state.full()[layer][0]
    lengths = state.lengths.tolist() if state.lengths is not None else [state.length] * state.rows
    return [keys[r, :, :n] for r, n in enumerate(lengths)]


@pytest.mark.parametrize("arch", hf_models.ARCHS)
def test_split_steps_attend_in_place_like_plain_steps(models, arch, monkeypatch):
    """A step attends to the stored state where it lies (models/hf_attention.py): the shared prefix
    once, each row's own tokens with its padding masked, the new token. Its log-probabilities and
    its new state equal the plain way's (a DynamicCache of the whole context per call), for rows
    sharing a prefix, padded rows, and rows spelled out in full; and the split way is what ran."""
    from exposure_audit.models import hf_attention

    m = models[arch, "merged-digits"]
    assert m._split
    runs = []
    real = hf_attention.run
    monkeypatch.setattr(hf_attention, "run", lambda *a: runs.append(1) or real(*a))
    ctx, line = m.encode_lines(["the secret code is 4821 and my pin is 0375"], None)[0]
    root, _ = m.start(ctx + line[:2])
    shared = m.take(root, torch.tensor([0, 0, 0]))
    deeper = m.step(m.take(root, torch.tensor([0])), torch.tensor(line[2:3]))[0]
    padded = m.cat([shared, deeper])  # rows that read 0, 0, 0 and 1 tokens after the prefix
    spelled = m.cat([m.start(ctx + line[:3])[0], m.take(root, torch.tensor([0]))])  # no shared prefix
    assert padded.lengths is not None and spelled.prefix is None
    for state in (shared, padded, spelled):
        ids = torch.tensor(line[3 : 3 + state.rows])
        runs.clear()
        split_state, split_logp = m.step(state, ids)
        assert runs and m._split
        m._split = False
        try:
            plain_state, plain_logp = m.step(state, ids)
        finally:
            m._split = True
        assert torch.allclose(split_logp, plain_logp, atol=1e-5)
        assert split_state.length == plain_state.length
        assert (split_state.lengths is None) == (plain_state.lengths is None)
        for a, b in zip(_valid_slots(split_state, -1), _valid_slots(plain_state, -1)):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_attention_the_split_cannot_compute_falls_back_to_plain_steps(models, monkeypatch):
    """Where a layer's attention is given an argument that changes its arithmetic (here: the model's
    own position ids stand in for a sliding window), the call is redone the plain way and the
    model is stepped the plain way from then on, with the same results."""
    from exposure_audit.models import hf_attention

    m = models["llama", "merged-digits"]
    ctx, line = m.encode_lines(["my pin is 4821"], None)[0]
    root, _ = m.start(ctx)
    state = m.take(root, torch.tensor([0, 0]))
    ids = torch.tensor(line[:2])
    split_state, split_logp = m.step(state, ids)
    monkeypatch.setattr(hf_attention, "UNSUPPORTED", (*hf_attention.UNSUPPORTED, "position_ids"))
    try:
        fallback_state, fallback_logp = m.step(state, ids)
        assert not m._split
    finally:
        m._split = True
    assert torch.allclose(split_logp, fallback_logp, atol=1e-5)
    assert torch.allclose(split_state.keys[0], fallback_state.keys[0], atol=1e-5)


def test_max_positions(models):
    m = models["llama", "merged-digits"]
    assert "at most 128" in one_line_error(lambda: m.start([5] * 129))
    state, _ = m.start([5] * 128)
    assert "needs 129 tokens" in one_line_error(lambda: m.step(state, torch.tensor([5])))


# -- bad inputs -------------------------------------------------------------------------------
def test_pickle_weights_are_refused_unread(tmp_path):
    folder = hf_models.tiny_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(MkdirOnUnpickle(str(marker))))
    message = one_line_error(lambda: load_hf(folder, device="cpu"))
    assert "pickle" in message and "safe_serialization=True" in message and not marker.exists()


def test_folder_without_tokenizer(tmp_path):
    folder = hf_models.tiny_model(tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert "tokenizer" in one_line_error(lambda: load_hf(folder, device="cpu"))


def test_not_a_causal_lm(tmp_path):
    from transformers import BertConfig, BertLMHeadModel, T5Config, ViTConfig

    for name, config in (("t5", T5Config(d_model=32)), ("vit", ViTConfig(hidden_size=32))):
        config.save_pretrained(tmp_path / name)
        assert "not a causal language model" in one_line_error(lambda: load_hf(tmp_path / name, device="cpu"))
    # an encoder that transformers can load as an LM head, but whose attention sees the future
    tok = hf_models.train_tokenizer("merged-digits", tmp_path / "bert")
    sizes = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    config = BertConfig(vocab_size=len(tok), **sizes)
    BertLMHeadModel(config).save_pretrained(tmp_path / "bert")
    assert "bidirectional" in one_line_error(lambda: load_hf(tmp_path / "bert", device="cpu"))


def test_bad_paths_devices_and_gguf(tmp_path, models):
    folder = Path(models["gpt2", "merged-digits"].describe()["path"])
    one_line_error(lambda: load_hf(tmp_path / "missing"))
    one_line_error(lambda: load_hf(tmp_path))  # no config.json
    one_line_error(lambda: load_hf(folder, device="tpu"))
    one_line_error(lambda: load_hf(folder, device="cpu", dtype="float16"))
    if not torch.cuda.is_available():
        assert "CUDA" in one_line_error(lambda: load_hf(folder, device="cuda"))
    for garbage in (b"not a model at all", b"GGUF" + bytes(60)):
        (tmp_path / "x.gguf").write_bytes(garbage)
        assert is_hf_checkpoint(tmp_path / "x.gguf")
        one_line_error(lambda: load_hf(tmp_path / "x.gguf", device="cpu"))


def test_gguf_loads_unpacked_without_a_hub_kernel_fetch(tmp_path, monkeypatch):
    """transformers 5.25 keeps a GGUF's weights packed when it can fetch a matmul kernel from the
    Hub: a network request at run time, and a stderr warning about bfloat16 when it cannot. load_hf
    asks for the weights unpacked, which transformers' GGUF quantizer honours without any fetch."""
    import transformers
    from transformers.quantizers import quantizer_gguf

    from exposure_audit.models import hf

    folder = hf_models.tiny_model(tmp_path / "m", "llama", "split-digits")
    (folder / "m.gguf").write_bytes(b"GGUF")  # stands in for the file; the loaders below are stubbed
    seen: dict = {}
    from_pretrained = transformers.AutoModelForCausalLM.from_pretrained
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)

    def model_from(source, **kwargs):
        seen.update(kwargs)
        return from_pretrained(folder, config=kwargs["config"], dtype=kwargs["dtype"])

    real_config = hf._load_config
    monkeypatch.setattr(hf, "_check_gguf", lambda path: None)
    monkeypatch.setattr(hf, "_load_config", lambda source, kwargs, where: real_config(folder, {}, where))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from)
    model = load_hf(folder / "m.gguf", device="cpu", dtype="bfloat16")
    assert seen["gguf_file"] == "m.gguf" and seen["local_files_only"] and not seen["trust_remote_code"]
    assert isinstance(seen["quantization_config"], transformers.GgufConfig)
    assert model.model.dtype == torch.bfloat16

    if not hasattr(quantizer_gguf, "get_gguf_kernel"):
        pytest.skip("this transformers has no Hub kernel for GGUF weights")

    def no_fetch():
        raise AssertionError("the Hub kernel was fetched")

    monkeypatch.setattr(quantizer_gguf, "get_gguf_kernel", no_fetch)
    warned: list[str] = []
    monkeypatch.setattr(quantizer_gguf.logger, "warning", lambda msg, *a, **k: warned.append(msg))
    quantizer = quantizer_gguf.GgufHfQuantizer(hf._dequantized_gguf())
    quantizer.supported = True
    quantizer.header = type("Header", (), {"has_quantized_weights": True, "dtype": None})()
    quantizer.validate_environment()
    assert quantizer.update_dtype(torch.bfloat16) == torch.bfloat16
    assert quantizer.quantization_config.dequantize and warned == []


def test_the_gguf_unpacking_bar_is_silenced_during_a_load_only(capsys):
    """transformers unpacks a GGUF's tensors under a bare tqdm that ignores its own progress
    switch (and so --quiet): load_hf silences that bar while it loads, and only then."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from exposure_audit.models import hf

    drawn = gguf_utils.tqdm
    with hf._silent_gguf_bar():
        assert list(gguf_utils.tqdm(range(3), desc="Converting", file=sys.stderr)) == [0, 1, 2]
    assert "Converting" not in capsys.readouterr().err
    assert gguf_utils.tqdm is drawn
    list(gguf_utils.tqdm(range(3), desc="Converting", file=sys.stderr))
    assert "Converting" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log2_probs_at_some_columns_are_the_full_rows_bits(dtype):
    """The tree walks ask for their format's tokens alone: a row-chunked log-softmax that keeps
    only those columns. Its values are the full row's, bit for bit, for every chunking, for a
    view into all positions' logits and for bfloat16 logits, and the logits are left as they were."""
    from exposure_audit.models.hf import _log2_probs, _log2_softmax_columns

    g = torch.Generator().manual_seed(1)
    every = (torch.randn(37, 3, 500, generator=g) * 5).to(dtype)
    columns = torch.tensor([0, 7, 123, 498, 499])
    for logits in (every[:, -1], every[:, -1].contiguous()):
        before = logits.clone()
        full = _log2_probs(logits.clone())
        assert full.shape == (37, 500) and full.dtype == torch.float32
        for chunk in (1, 16, 37, 64):
            got = _log2_softmax_columns(logits, columns, chunk)
            assert got.shape == (37, 5) and torch.equal(got, full[:, columns])
        assert torch.equal(_log2_probs(logits, columns), full[:, columns])
        assert torch.equal(logits, before)
    assert _log2_softmax_columns(every[:0, -1], columns).shape == (0, 5)


def test_a_step_at_columns_and_the_scorer_fallback(models):
    """HFModel.step(columns=) gives the columns of the full step; a model whose step takes no
    columns gets them cut from its full row by the Scorer."""
    from exposure_audit.models.base import Scorer

    model = models["llama", "split-digits"]
    state, _ = model.start(model.context_ids(None))
    rows = model.take(state, torch.zeros(3, dtype=torch.long))
    ids = torch.tensor([5, 9, 11])
    columns = torch.tensor([1, 4, 30, 31])
    _, full = model.step(rows, ids)
    _, narrow = model.step(rows, ids, columns=columns)
    assert torch.equal(narrow, full[:, columns])

    class FullRowsOnly:  # a model implementing only the plain step
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def step(self, state, ids):
            self.calls += 1
            return self.inner.step(state, ids)

    plain = FullRowsOnly(model)
    scorer = Scorer(plain)
    _, cut = scorer.step(rows, ids, columns)
    assert plain.calls == 1 and scorer.steps == 3 and torch.equal(cut, full[:, columns])
    _, native = Scorer(model).step(rows, ids, columns)
    assert torch.equal(native, full[:, columns])


@pytest.mark.parametrize("has_bf16", [False, True])
def test_bfloat16_on_a_cpu_without_bf16_matmul_says_it_will_be_slow(monkeypatch, capsys, has_bf16):
    """An AVX2 CPU emulates bfloat16 matmuls (far slower than float32): asking for it
    gets a one-line note, not a silent crawl; a CPU with AVX512_BF16 or AMX gets none."""
    from exposure_audit.models import hf

    monkeypatch.setattr(hf, "_cpu_has_bf16_matmul", lambda: has_bf16)
    assert hf._resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    err = capsys.readouterr().err
    if has_bf16:
        assert err == ""
    else:
        assert err.startswith("note: this CPU has no bfloat16 matrix instructions") and err.count("\n") == 1
    assert hf._resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert capsys.readouterr().err == ""


def test_log2_softmax_overwrites_only_a_tensor_that_is_its_whole_storage():
    from exposure_audit.models.hf import _log2_softmax_

    g = torch.Generator().manual_seed(0)
    fresh = torch.randn(3, 50, generator=g) * 4
    expect = torch.log_softmax(fresh, dim=-1) / math.log(2.0)
    out = _log2_softmax_(fresh)
    assert out.data_ptr() == fresh.data_ptr()  # the model's own output: written over, no second block
    assert torch.equal(out, expect)
    assert torch.allclose(torch.exp2(out).sum(-1), torch.ones(3))
    # a view into all positions' logits (a model without logits_to_keep) is left as it was
    every = torch.randn(3, 4, 50, generator=g, dtype=torch.bfloat16)
    for logits in (every.float()[:, -1], every.float()[0]):
        before = logits.clone()
        got = _log2_softmax_(logits)
        assert torch.equal(logits, before) and got.data_ptr() != logits.data_ptr()
        assert torch.equal(got, torch.log_softmax(before, dim=-1) / math.log(2.0))
    # another dtype is converted first: the model's bfloat16 logits are not touched
    half = every[:, -1].contiguous()
    kept = half.clone()
    assert _log2_softmax_(half).dtype == torch.float32 and torch.equal(half, kept)
