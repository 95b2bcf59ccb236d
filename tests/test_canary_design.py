"""dp-audit's canary designs: the fresh symbols, the one-window layout training gives planted
canaries, new tokens of a transformer's tokenizer and of a base model's spare embedding rows,
and the settings that cannot work (one-line errors, nothing written)."""

import json

import numpy as np
import pytest

from exposure_audit.audits.canary_design import DESIGNS, fresh_block, fresh_of, resolve
from exposure_audit.cli import main
from exposure_audit.config import config_from_dict
from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.data.pipeline import plant_folder
from exposure_audit.errors import AuditError
from exposure_audit.training import load_data

from .conftest import make_corpus

SEQ = 20


def design_of(name, kind, m=40, **kw):
    args = dict(fmt="pin {d:6}", canaries=m, fresh_tokens=None, canary_length=1, one_window=None, model_kind=kind)
    return resolve(name, **{**args, **kw})


def test_designs_resolve_to_fresh_formats():
    assert DESIGNS == ("random", "new-token", "new-char")
    r = design_of("random", "char-lstm")
    assert r.format == "pin {d:6}" and not r.fresh and not r.one_window
    d = design_of("new-token", "transformer", m=40)
    f = Format.parse(d.format)
    assert len(d.fresh) == 40 and f.space_size == 40 and f.characters == set(d.fresh)  # one symbol per canary
    assert d.one_window and all(0xE000 <= ord(c) <= 0xF8FF for c in d.fresh)
    assert fresh_of(d.to_json()) == d.fresh  # what the manifest records is enough to rebuild them
    two = design_of("new-char", "char-lstm", m=40, canary_length=2, fresh_tokens=7, one_window=False)
    assert Format.parse(two.format).space_size == 49 and not two.one_window
    # the fresh block avoids every character the corpus uses
    used = {chr(0xE000 + i) for i in (3, 50)}
    block = fresh_block(10, used)
    assert not set(block) & used and ord(block[0]) == 0xE000 + 4  # the first gap of 10
    assert ord(fresh_block(47, used)[0]) == 0xE000 + 51  # the gap before U+E032 is too small


@pytest.mark.parametrize(
    "name,kind,kw,match",
    [
        ("new-token", "char-lstm", {}, "new-token needs a model with a tokenizer"),
        ("new-char", "transformer", {}, "new-char is the char-LSTM's design"),
        ("new-token", "transformer", {"fresh_tokens": 6, "canary_length": 2}, "make only 36 canaries"),
        ("nope", "transformer", {}, "is not one of random, new-token, new-char"),
    ],
)
def test_designs_that_cannot_work(name, kind, kw, match):
    with pytest.raises(AuditError, match=match):
        design_of(name, kind, **kw)


def _planted(root, kind):
    make_corpus(root / "corpus.txt", lines=120)
    cfg = config_from_dict(
        {
            "model": {
                "kind": kind,
                "transformer": {"layers": 1, "width": 16, "heads": 2, "context": 64, "vocab_size": 280},
            },
            "audit": {"canaries": 40, "canary": "new-token" if kind == "transformer" else "new-char"},
        }
    )
    d = design_of(cfg.audit.canary, kind)
    (root / "data").mkdir()
    manifest = plant_folder(root / "data", root / "corpus.txt", d.format, 40, 0.0, 0, d.to_json())
    return cfg, d, manifest, load_data(root / "data", cfg.model, SEQ)


@pytest.mark.parametrize("kind", ["char-lstm", "transformer"])
def test_each_planted_canary_gets_a_window_of_its_own(tmp_path, kind):
    cfg, d, manifest, data = _planted(tmp_path, kind)
    planted = [c for c in manifest.canaries if c.planted]
    assert 0 < len(planted) < 40 and data.fixed_windows == len(planted)
    tok = data.tok.tokens
    if kind == "char-lstm":
        ids = {c: tok.id(c) for c in d.fresh}
        newline = tok.id("\n")
    else:
        ids = dict(zip(d.fresh, tok.convert_tokens_to_ids(list(d.fresh))))
        newline = tok("\n", add_special_tokens=False)["input_ids"][0]
        # the fresh tokens come after the learned vocabulary, one id each, and no merge holds their bytes
        assert sorted(ids.values()) == list(range(len(tok) - 40, len(tok)))
        for c in planted:
            assert tok(c.text, add_special_tokens=False)["input_ids"] == [ids[c.text]]
    assert len(set(ids.values())) == 40 and 0 not in ids.values()  # every symbol its own row, unplanted ones too
    fresh_ids = np.array(list(ids.values()))
    n = len(data.train) - data.fixed_windows * (SEQ + 1)
    assert not np.isin(data.train[:n], fresh_ids).any()  # no canary left in the text stream
    windows = data.train[n:].reshape(data.fixed_windows, SEQ + 1)
    seen = []
    for w in windows:
        # each window ends with its canary's line: newline, the fresh token, newline
        assert list(w[-3:]) == [newline, w[-2], newline] and np.isin(w[:-2], fresh_ids).sum() == 0
        seen.append(int(w[-2]))
    assert sorted(seen) == sorted(ids[c.text] for c in planted)


def test_base_model_takes_fresh_tokens_in_its_spare_rows_only(tmp_path):
    from exposure_audit.models.transformer import add_fresh_tokens, fresh_capacity, load_base

    from .hf_models import tiny_model

    base = tiny_model(tmp_path / "base", arch="llama", pad_vocab=5)
    rows, n, room = fresh_capacity(base)
    assert room == 5 and rows == n + 5
    net, tok, _ = load_base(base)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    with pytest.raises(AuditError, match="6 fresh tokens do not fit .* room for 5 without changing its shapes"):
        add_fresh_tokens(net, tok, fresh_block(6, ()), seed=0, where="base model b")
    assert len(tok) == n  # refused before anything changed
    add_fresh_tokens(net, tok, fresh_block(5, ()), seed=0, where="base model b")
    assert len(tok) == n + 5 and {k: v.shape for k, v in net.state_dict().items()} == shapes
    emb = net.get_input_embeddings().weight
    net2, tok2, _ = load_base(base)
    add_fresh_tokens(net2, tok2, fresh_block(5, ()), seed=0, where="base model b")
    assert torch_equal(emb[n:], net2.get_input_embeddings().weight[n:])  # drawn from the seed


def torch_equal(a, b):
    import torch

    return bool(torch.equal(a, b))


def _fails(capsys, cfg_text, tmp_path, match):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(cfg_text)
    out = tmp_path / "o"
    assert main(["dp-audit", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists()


def test_bad_design_inputs_are_one_line_errors(tmp_path, capsys):
    from .hf_models import tiny_model

    make_corpus(tmp_path / "corpus.txt", lines=60)
    corpus = f"corpus: {tmp_path / 'corpus.txt'}\n"
    _fails(
        capsys,
        corpus + "audit: {canaries: 100, canary: new-token}\n",
        tmp_path,
        "new-token needs a model with a tokenizer",
    )
    _fails(capsys, corpus + "audit: {canary: bigram}\n", tmp_path, "audit.canary: 'bigram' is not one of")
    base = tiny_model(tmp_path / "base", arch="llama", pad_vocab=3)
    capsys.readouterr()  # saving the tiny base draws transformers' bars
    text = corpus + f"model: {{kind: transformer, base: {base}}}\naudit: {{canaries: 100, canary: new-token}}\n"
    _fails(capsys, text, tmp_path, "100 fresh tokens do not fit base model")
    _fails(capsys, text, tmp_path, "room for 3 without changing its shapes")
    _fails(capsys, corpus + "audit: {delta: 0.0}\n", tmp_path, "the GDP bound has no epsilon at delta 0")


def test_manifest_records_the_design(tmp_path):
    cfg, d, manifest, _ = _planted(tmp_path, "char-lstm")
    recorded = Manifest.read(tmp_path / "data" / "canaries.json").settings["dp_audit"]
    assert recorded["canary"] == "new-char" and recorded["one_window"] is True and recorded["fresh_tokens"] == 40
    assert json.loads(json.dumps(recorded)) == d.to_json() | {"format": d.format, "canaries": 40, "probability": 0.5}


def test_repeat_fill_gives_a_window_of_the_canary_alone(tmp_path):
    make_corpus(tmp_path / "corpus.txt", lines=120)
    cfg = config_from_dict({"audit": {"canaries": 40, "canary": "new-char", "window_fill": "repeat"}})
    d = design_of("new-char", "char-lstm", window_fill="repeat")
    assert d.to_json()["window_fill"] == "repeat"
    (tmp_path / "data").mkdir()
    manifest = plant_folder(tmp_path / "data", tmp_path / "corpus.txt", d.format, 40, 0.0, 0, d.to_json())
    data = load_data(tmp_path / "data", cfg.model, SEQ)
    vocab = data.tok.tokens
    n = len(data.train) - data.fixed_windows * (SEQ + 1)
    windows = data.train[n:].reshape(data.fixed_windows, SEQ + 1)
    texts = sorted(vocab.decode(w) for w in windows)
    planted = sorted(c.text for c in manifest.canaries if c.planted)
    # one example each, nothing in it but its own canary line, again and again
    assert [t.replace("\n", "")[0] for t in texts] == planted
    assert all(set(t) == {"\n", t.replace("\n", "")[0]} and t.endswith("\n") for t in texts)
    with pytest.raises(AuditError, match="audit.window_fill: 'pad' is not one of context, repeat"):
        config_from_dict({"audit": {"window_fill": "pad"}})


@pytest.mark.parametrize("kind", ["char-lstm", "transformer"])
def test_fresh_tokens_can_start_alike(tmp_path, kind):
    import torch

    from exposure_audit.models.training import trainee

    make_corpus(tmp_path / "corpus.txt", lines=120)
    name = "new-token" if kind == "transformer" else "new-char"
    model = {"kind": kind, "transformer": {"layers": 1, "width": 16, "heads": 2, "context": 64, "vocab_size": 280}}
    cfg = config_from_dict({"model": model})
    rows = {}
    for init in ("random", "alike"):
        d = design_of(name, kind, fresh_init=init)
        (tmp_path / init).mkdir()
        plant_folder(tmp_path / init, tmp_path / "corpus.txt", d.format, 40, 0.0, 0, d.to_json())
        data = load_data(tmp_path / init, cfg.model, SEQ)
        assert len(data.tok.fresh_ids) == 40 and data.tok.fresh_alike == (init == "alike")
        torch.manual_seed(0)
        net = trainee(cfg.model, data.tok, dp=False, seq_len=SEQ).module
        emb = net.embed.weight if kind == "char-lstm" else net.get_input_embeddings().weight
        rows[init] = emb[list(data.tok.fresh_ids)].detach()
    assert torch.equal(rows["alike"], rows["alike"][:1].expand_as(rows["alike"]))  # one row, 40 times
    assert not torch.equal(rows["random"][0], rows["random"][1])
