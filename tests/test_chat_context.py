"""Chat canaries are scored in the context they were trained in: the rendered conversation up to them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from exposure_audit.cli import main  # noqa: E402
from exposure_audit.data.manifest import Manifest
from exposure_audit.exposure.contexts import resolve_contexts
from exposure_audit.models import load_model  # noqa: E402

from .hf_models import WORDS, tiny_model  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('system messages are not supported') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
)


def chat_model(folder: Path, template: str | None = TEMPLATE) -> Path:
    """The tiny Llama with a tokenizer carrying a Jinja chat template and its turn tokens."""
    tiny_model(folder, arch="llama", tokenizer="split-digits", pad_vocab=8)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if template:
        tok.chat_template = template
    tok.save_pretrained(folder)
    return folder


def chat_corpus(path: Path, n: int = 40, system: bool = False) -> Path:
    rng = random.Random(0)
    with open(path, "w") as fh:
        for _ in range(n):
            turns = [{"role": r, "content": " ".join(rng.choices(WORDS, k=5))} for r in ("user", "assistant")]
            if system:
                turns.insert(0, {"role": "system", "content": "be brief"})
            fh.write(json.dumps({"messages": turns}) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("chat")
    model = chat_model(root / "model")
    corpus = chat_corpus(root / "chat.jsonl")
    argv = ["insert", "--corpus", str(corpus), "--out", str(root / "data"), "--format", "pin {d:2}"]
    assert main([*argv, "--schedule", "0,1", "--placement", "line", "-q"]) == 0
    return model, root / "data"


def _measure(model: Path, data: Path, out: Path, *extra: str) -> dict:
    argv = ["measure", "--model", str(model), "--canaries", str(data / "canaries.json"), "--json", str(out)]
    assert main([*argv, "--method", "enumerate", *extra, "-q"]) == 0
    return json.loads(out.read_text())


def test_as_trained_context_changes_the_score_and_equals_an_explicit_context(setup, tmp_path):
    model_dir, data = setup
    trained = _measure(model_dir, data, tmp_path / "trained.json")
    used = trained["model"]["context_used"]
    assert used["mode"] == "as-trained"
    manifest = Manifest.read(data / "canaries.json")
    inserted = [c for c in manifest.canaries if c.insertions]
    assert set(used["canaries"]) == {c.id for c in inserted}
    # the context is the rendered conversation up to the canary: the turn header of its message
    model = load_model(model_dir, device="cpu")
    contexts = resolve_contexts(model, manifest, data)
    c = inserted[0]
    where = used["canaries"][c.id]
    text = contexts.per_canary[c.id]
    record = json.loads((data / "train.jsonl").read_text().splitlines()[where["record"]])["messages"]
    line = c.locations[0]["line"]
    before = "".join(f"{ln}\n" for ln in record[where["message"]]["content"].split("\n")[:line])
    assert text.endswith("<|im_start|>" + where["role"] + "\n" + before)
    assert text.count("<|im_start|>") == where["message"] + 1
    # scored after BOS instead (the old default), the same canary's log-perplexity differs
    bos = _measure(model_dir, data, tmp_path / "bos.json", "--context", "<|bos|>")
    by_id = {r["id"]: r for r in trained["canaries"]}
    assert abs(by_id[c.id]["log_perplexity"] - {r["id"]: r for r in bos["canaries"]}[c.id]["log_perplexity"]) > 0.01
    # an explicit --context with the same text gives the same score and rank
    same = _measure(model_dir, data, tmp_path / "same.json", "--context", contexts.per_canary[c.id])
    assert same["model"]["context_used"]["mode"] == "explicit"
    other = {r["id"]: r for r in same["canaries"]}[c.id]
    assert other["rank"] == by_id[c.id]["rank"]
    assert abs(other["log_perplexity"] - by_id[c.id]["log_perplexity"]) < 1e-6


def test_context_role_uses_the_fresh_message_header(setup, tmp_path):
    model_dir, data = setup
    role = _measure(model_dir, data, tmp_path / "role.json", "--context-role", "assistant")
    assert role["model"]["context_used"] == {
        "mode": "role",
        "text": "<|im_start|>assistant\n",
        "role": "assistant",
    }
    explicit = _measure(model_dir, data, tmp_path / "ex.json", "--context", "<|im_start|>assistant\n")
    assert [r["log_perplexity"] for r in role["canaries"]] == [r["log_perplexity"] for r in explicit["canaries"]]


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_chat_inputs(setup, tmp_path, capsys):
    model_dir, data = setup
    out = tmp_path / "r.json"
    plain = tiny_model(tmp_path / "plain", arch="llama", tokenizer="split-digits")
    base = ["measure", "--canaries", str(data / "canaries.json"), "--json", str(out), "-q"]
    assert "chat template" in _error([*base, "--model", str(plain), "--context-role", "user"], capsys)
    assert not out.exists()
    # a template that cannot render the records the canaries sit in: the record is named
    corpus = chat_corpus(tmp_path / "sys.jsonl", system=True)
    argv = ["insert", "--corpus", str(corpus), "--out", str(tmp_path / "sysdata"), "--format", "pin {d:2}"]
    assert main([*argv, "--schedule", "0,1", "--placement", "line", "-q"]) == 0
    bad = ["measure", "--model", str(model_dir), "--canaries", str(tmp_path / "sysdata" / "canaries.json")]
    err = _error([*bad, "--json", str(out), "-q"], capsys)
    assert "fails to render record" in err and "train.jsonl" in err and "system messages" in err
    assert not out.exists()


def test_extract_with_a_role_header_equals_the_explicit_header(setup, tmp_path):
    model_dir, data = setup
    runs = []
    for name, extra in (("role", ["--context-role", "assistant"]), ("ex", ["--context", "<|im_start|>assistant\n"])):
        out = tmp_path / f"{name}.json"
        argv = ["extract", "--model", str(model_dir), "--format", "pin {d:2}", "--top", "5", "--json", str(out)]
        assert main([*argv, *extra, "-q"]) == 0
        runs.append(json.loads(out.read_text()))
    assert runs[0]["context_used"]["mode"] == "role"
    strip = [{k: v for k, v in r.items() if k not in ("context_used", "seconds")} for r in runs]
    assert strip[0] == strip[1]
    # the manifest of chat canaries: the header of the role they were planted in
    out = tmp_path / "m.json"
    argv = ["extract", "--model", str(model_dir), "--canaries", str(data / "canaries.json"), "--json", str(out), "-q"]
    assert main(argv) == 0
    assert json.loads(out.read_text())["context_used"]["from"] == "the canaries' role"


def test_training_renders_chat_records_through_the_template(setup, tmp_path, capsys):
    from exposure_audit.config import ModelConfig
    from exposure_audit.models.chat import render
    from exposure_audit.training import load_data

    model_dir, data = setup
    loaded = load_data(data, ModelConfig(kind="transformer", base=str(model_dir)), seq_len=16)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    records = [json.loads(line)["messages"] for line in (data / "train.jsonl").read_text().splitlines()]
    expected = [i for r in records for i in tok(render(tok, r, "x"), add_special_tokens=False)["input_ids"]]
    assert loaded.train.tolist() == expected
    assert tok.convert_tokens_to_ids("<|im_start|>") in expected  # the turn markers are trained on
    assert loaded.info["chat_template_sha256"]
    # a record the template cannot render stops training before anything is written
    sys_data = tmp_path / "sysdata"
    corpus = chat_corpus(tmp_path / "sys.jsonl", system=True)
    argv = ["insert", "--corpus", str(corpus), "--out", str(sys_data), "--format", "pin {d:2}"]
    assert main([*argv, "--schedule", "0,1", "-q"]) == 0
    out = tmp_path / "tuned"
    err = _error(["train", "--data", str(sys_data), "--out", str(out), "--base", str(model_dir), "-q"], capsys)
    assert "fails to render" in err and "line 1" in err
    assert not out.exists()


def test_fine_tune_on_chat_then_measure_in_the_trained_context(setup, tmp_path, capsys):
    model_dir, data = setup
    (tmp_path / "ft.yaml").write_text("train: {epochs: 1, seq_len: 16, batch_size: 8, learning_rate: 0.003}\n")
    out = tmp_path / "tuned"
    argv = ["train", "--data", str(data), "--out", str(out), "--base", str(model_dir), "--config"]
    assert main([*argv, str(tmp_path / "ft.yaml"), "-q"]) == 0
    report = _measure(out, data, tmp_path / "r.json")
    assert report["model"]["context_used"]["mode"] == "as-trained"
    assert report["model"]["trained_on_manifest_data"] is True
