"""scan --model / --reference on tiny models: the same exposure as measure, the terminator rule,
gain 0 against itself, gates, sampling, a reference that cannot spell the corpus, redaction."""

import json
import math

import pytest

pytest.importorskip("detect_secrets")
pytest.importorskip("transformers")

import torch  # noqa: E402

from exposure_audit.cli import main  # noqa: E402
from exposure_audit.data.manifest import Canary
from exposure_audit.exposure.measure import measure  # noqa: E402
from exposure_audit.models import load_model, save_checkpoint  # noqa: E402

from .hf_models import tiny_model  # noqa: E402

IP = "1.2.3.4"  # format {d:1}.{d:1}.{d:1}.{d:1}: |R| = 10^4, ranked exactly
FMT = "{d:1}.{d:1}.{d:1}.{d:1}"
SECRET = "1234"


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def _corpus(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _scan(capsys, *args):
    code = main([str(a) for a in ["scan", *args, "--samples", "200", "-q"]])
    out, err = capsys.readouterr()
    return code, out, err


def _one(folder):
    report = json.loads((folder / "scan.json").read_text())
    return report, report["findings"][0], report["summary"]["per_finding"][0]


def test_exposure_equals_measure_for_the_same_value_format_and_context(hf, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", [f"host {IP}\nup"])
    code, _, err = _scan(capsys, "--corpus", corpus, "--model", hf, "--out", tmp_path / "o")
    assert code == 0, err
    report, x, d = _one(tmp_path / "o")
    assert x["format"] == FMT and x["locations"][0]["terminator"] == "\n"
    canary = Canary(id="c", format=FMT, secret=SECRET, text=IP, insertions=1)
    (r,) = measure(load_model(hf), [canary], context="host ", max_steps=2_000_000, samples=200)
    assert r.rank is not None and x["method"] == r.method
    assert x["exposure"] == r.exposure and d["rank"] == r.rank and d["log_perplexity"] == r.log_perplexity
    assert report["summary"]["note"].startswith("No reference model")
    assert x["extracted_position"] in (None, 1) and x["proven"] is not None


def _direct_bits(model, context: str, line: str) -> float:
    """-sum log2 p of the tokens of ``context + line`` after the context's, by one plain forward pass."""
    enc = model.tokenizer(context + line, return_offsets_mapping=True)
    ids, spans = enc["input_ids"], enc["offset_mapping"]
    cut = next(i for i, (_, end) in enumerate(spans) if end > len(context))
    with torch.no_grad():
        logits = model.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1) / math.log(2)
    return float(-sum(logp[i - 1, ids[i]] for i in range(cut, len(ids))))


def test_terminator_is_the_next_character_and_changes_the_rank(hf, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", [f"host {IP} is up"])
    assert _scan(capsys, "--corpus", corpus, "--model", hf, "--out", tmp_path / "next")[0] == 0
    assert _scan(capsys, "--corpus", corpus, "--model", hf, "--out", tmp_path / "none", "--terminator", "none")[0] == 0
    _, x_next, d_next = _one(tmp_path / "next")
    _, x_none, d_none = _one(tmp_path / "none")
    assert x_next["locations"][0]["terminator"] == " " and x_none["locations"][0]["terminator"] is None
    model = load_model(hf)
    # the figures are those of one forward pass over the text as trained
    assert d_next["log_perplexity"] == pytest.approx(_direct_bits(model, "host ", IP + " "), abs=1e-3)
    assert d_none["log_perplexity"] == pytest.approx(_direct_bits(model, "host ", IP), abs=1e-3)
    # the canary convention (an assumed closing newline) ranks the same value elsewhere
    canary = Canary(id="c", format=FMT, secret=SECRET, text=IP, insertions=1)
    (newline,) = measure(model, [canary], context="host ", max_steps=2_000_000, samples=200)
    assert len({d_next["rank"], d_none["rank"], newline.rank}) == 3, (d_next["rank"], d_none["rank"], newline.rank)


def test_reference_gain_gates_and_sampling(hf, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", [f"host {IP}\nup", "gw 5.6.7.8\n"])
    args = ["--corpus", corpus, "--model", hf, "--reference", hf]
    code, out, err = _scan(capsys, *args, "--out", tmp_path / "o", "--fail-above", "1000")
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "scan.json").read_text())
    assert report["reference"]["path"] == str(hf) and report["summary"]["note"] is None
    for x in report["findings"]:
        assert x["exposure_gain"] == 0.0 and x["reference_exposure"] == x["exposure"]
    assert report["summary"]["verdict"] == "PASSED" and report["summary"]["gated_on"] == "exposure_gain"
    # without a reference the gate is on exposure: above 0 bits fails (exit 1)
    code, _, _ = _scan(capsys, "--corpus", corpus, "--model", hf, "--out", tmp_path / "g", "--fail-above", "0")
    gated = json.loads((tmp_path / "g" / "scan.json").read_text())
    assert (code == 1) == any(x["exposure"] > 0 for x in gated["findings"])
    assert (code == 1) == (gated["summary"]["verdict"] == "FAILED")
    # --max-secrets 1: one of the two, drawn with the seed
    code, _, _ = _scan(capsys, "--corpus", corpus, "--model", hf, "--out", tmp_path / "s", "--max-secrets", "1")
    sampled = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert code == 0 and sampled["summary"]["ranking"]["sampled"] and sampled["summary"]["ranking"]["ranked"] == 1
    assert sum(x["exposure"] is not None for x in sampled["findings"]) == 1
    # nothing raw in any output or on stdout
    for folder in ("o", "g", "s"):
        for p in (tmp_path / folder).iterdir():
            assert IP not in p.read_text() and "5.6.7.8" not in p.read_text()
    assert IP not in out


def test_reference_that_cannot_spell_the_corpus_exits_2(hf, tmp_path, capsys, tiny_model):
    ref = tmp_path / "charlstm"
    ref.mkdir()
    save_checkpoint(tiny_model, ref, {})  # its characters: lowercase, digits and a few others, no 'H'
    corpus = _corpus(tmp_path / "c.jsonl", [f"Host {IP}\nup"])
    code, _, err = _scan(capsys, "--corpus", corpus, "--model", hf, "--reference", ref, "--out", tmp_path / "o")
    assert code == 2 and err.startswith("error: reference model") and "cannot spell" in err
    assert not (tmp_path / "o").exists()


def test_chat_context_uses_the_models_template(hf, tmp_path):
    from exposure_audit.audits.findings import ScanInput, collect
    from exposure_audit.models.chat import chat_renderer

    model = load_model(hf)
    assert chat_renderer(model) is None  # no template: the messages' plain training text
    model.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    chat = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "my ip?"}, {"role": "assistant", "content": f"It is {IP} now"}]
    chat.write_text(json.dumps({"messages": msgs}) + "\n")
    (f,) = collect(ScanInput(chat), render=chat_renderer(model)).findings
    assert f.chat_template and f.context == "<user>my ip?\n<assistant>It is " and f.terminator == " "


def test_fail_if_extracted_gate(hf, tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.jsonl", [f"host {IP}\nup"])
    common = ["--corpus", corpus, "--model", hf, "--fail-if-extracted", "--extract-max-steps", "200000"]
    # top 10^4 = every filling: the value is among them, so it is "extracted" and the gate fails
    code, _, _ = _scan(capsys, *common, "--extract-top", "10000", "--out", tmp_path / "all")
    x = json.loads((tmp_path / "all" / "scan.json").read_text())["findings"][0]
    assert code == 1 and x["extracted_position"] is not None and x["proven"] is True
    assert (
        x["extracted_position"]
        == json.loads((tmp_path / "all" / "scan.json").read_text())["summary"]["per_finding"][0]["rank"]
    )  # the exact order of best-first search is the rank's order


@pytest.fixture(scope="module")
def adapter_pair(tmp_path_factory):
    """A tiny LoRA adapter whose config names a hub base (so the base must be given with --base),
    its base, and the merged model saved as a plain folder."""
    pytest.importorskip("peft")
    from exposure_audit.models.adapter import load_adapter

    from .test_adapter import _copy_adapter, make_adapter

    root = tmp_path_factory.mktemp("scan-adapter")
    base = tiny_model(root / "base", arch="llama", tokenizer="split-digits")
    lora = make_adapter(base, root / "lora")
    merged = load_adapter(lora, device="cpu")
    merged.model.save_pretrained(root / "merged", safe_serialization=True)
    merged.tokenizer.save_pretrained(root / "merged")
    hub = _copy_adapter(lora, root / "hub", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    return base, hub, root / "merged"


def test_scan_base_of_an_adapter_equals_the_merged_model(adapter_pair, tmp_path, capsys):
    base, adapter, merged = adapter_pair
    corpus = _corpus(tmp_path / "c.jsonl", [f"host {IP}\nup"])
    # without --base the adapter's hub base is never downloaded: one line, exit 2, nothing written
    code, _, err = _scan(capsys, "--corpus", corpus, "--model", adapter, "--out", tmp_path / "none")
    assert code == 2 and err.startswith("error: ") and "pass --base" in err and not (tmp_path / "none").exists()
    figures = []
    for name, extra in (("a", ["--model", adapter, "--base", base]), ("m", ["--model", merged])):
        code, _, err = _scan(capsys, "--corpus", corpus, *extra, "--method", "enumerate", "--out", tmp_path / name)
        assert code == 0, err
        _, x, d = _one(tmp_path / name)
        figures.append((d["rank"], x["exposure"], d["log_perplexity"], x["extracted_position"]))
    (ra, ea, la, xa), (rm, em, lm, xm) = figures
    assert ra == rm and xa == xm and la == pytest.approx(lm, abs=1e-3) and ea == pytest.approx(em, abs=1e-6)
    # the adapter moves the figures: the base alone ranks the value elsewhere
    code, _, _ = _scan(capsys, "--corpus", corpus, "--model", base, "--method", "enumerate", "--out", tmp_path / "b")
    assert code == 0 and _one(tmp_path / "b")[2]["log_perplexity"] != pytest.approx(la, abs=1e-3)


def test_memorization_base_of_an_adapter_equals_the_merged_model(adapter_pair, tmp_path, capsys):
    from .hf_models import corpus as numbers

    base, adapter, merged = adapter_pair
    lines = numbers(80, seed=3)
    members, others = tmp_path / "members.txt", tmp_path / "others.txt"
    members.write_text("\n".join(lines[:40]) + "\n")
    others.write_text("\n".join(lines[40:]) + "\n")
    common = ["memorization", "--members", members, "--non-members", others, "--prefix-tokens", "4"]
    common += ["--suffix-tokens", "4", "--device", "cpu", "-q"]
    code = main([str(a) for a in [*common, "--model", adapter, "--json", tmp_path / "x.json"]])
    assert code == 2 and "pass --base" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    reports = []
    for name, extra in (("a", ["--model", adapter, "--base", base]), ("m", ["--model", merged])):
        assert main([str(a) for a in [*common, *extra, "--json", tmp_path / f"{name}.json"]]) == 0
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    a, m = reports
    assert a["discoverable"]["exact_match_rate"] == m["discoverable"]["exact_match_rate"]
    assert a["discoverable"]["token_match_mean"] == pytest.approx(m["discoverable"]["token_match_mean"], abs=1e-9)
    for attack in ("loss", "zlib", "min_k"):
        assert a["mia"]["attacks"][attack]["auc"] == pytest.approx(m["mia"]["attacks"][attack]["auc"], abs=1e-9)
