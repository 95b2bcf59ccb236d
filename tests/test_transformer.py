"""Training transformers: a small Llama with a learned tokenizer, and fine-tuning a user's model,
through the same loop, checkpoint flow, measure and gate as the char-LSTM."""

import json

import pytest

from exposure_audit.cli import main
from exposure_audit.config import ModelConfig
from exposure_audit.errors import AuditError
from exposure_audit.models import load_model
from exposure_audit.models.transformer import TransformerConfig, learn_tokenizer

from .conftest import make_data
from .hf_models import tiny_model

TINY = "model: {kind: transformer, transformer: {layers: 2, width: 16, heads: 2, context: 64, vocab_size: 300}}\n"
TRAIN = "train: {epochs: 2, seq_len: 24, batch_size: 8, learning_rate: 0.003}\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("transformer")
    make_data(root, lines=400, schedule="0,1,8")
    (root / "tiny.yaml").write_text(TINY + TRAIN)
    return root


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, match):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], err


def test_learned_tokenizers_are_deterministic_and_split_digits():
    lines = [f"pin {i * 37 % 10000:04d} code {i * 91 % 1000:03d}\n" for i in range(2000)]
    a = learn_tokenizer(iter(lines), TransformerConfig(vocab_size=262))  # split digits leave only words to merge
    b = learn_tokenizer(iter(lines), TransformerConfig(vocab_size=262))
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    ids = a("pin 4821\n", add_special_tokens=False)["input_ids"]
    digits = [t for t in a.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert digits == ["4", "8", "2", "1"]  # one token per digit
    merged = learn_tokenizer(iter(lines), TransformerConfig(vocab_size=300, split_digits=False))
    assert any(sum(c.isdigit() for c in t) > 1 for t in merged.get_vocab())  # GPT-2 style: digits merge
    assert not any(sum(c.isdigit() for c in t) > 1 for t in a.get_vocab())
    chars = learn_tokenizer(iter(lines), TransformerConfig(tokenizer="char"))
    assert len(chars) == 257  # the byte alphabet and the end-of-text token, no merges


def test_vocabulary_larger_than_the_text_supports_is_refused():
    with pytest.raises(AuditError, match="supports at most"):
        learn_tokenizer(iter(["abc abc\n"] * 5), TransformerConfig(vocab_size=5000))


def test_train_measure_and_gate_a_small_transformer(world, tmp_path, capsys):
    out = tmp_path / "model"
    code, text, _ = run(capsys, "train", "--data", world / "data", "--out", out, "--config", world / "tiny.yaml", "-q")
    assert code == 0 and "bits/char" in text
    assert {"config.json", "model.safetensors", "tokenizer.json", "exposure_audit.json"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "exposure_audit.json").read_text())
    assert record["context"] == "\n" and record["data"]["train_sha256"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["valid_bpc"] < m["valid_bits_per_token"] for m in metrics)  # a token holds several characters
    model = load_model(out)
    assert model.describe()["data"] == record["data"]  # the link to the manifest is checked
    report = tmp_path / "r.json"
    argv = ["measure", "--model", out, "--canaries", world / "data" / "canaries.json", "--json", report, "-q"]
    assert run(capsys, *argv, "--fail-above", "1000")[0] == 0
    data = json.loads(report.read_text())
    assert data["model"]["trained_on_manifest_data"] is True
    worst = max(c["exposure"] for c in data["canaries"] if c["insertions"] > 0)
    assert run(capsys, *argv, "--fail-above", worst - 0.01, "--force")[0] == 1


def test_fine_tune_a_saved_hugging_face_folder(world, tmp_path, capsys):
    base = tiny_model(tmp_path / "base", arch="llama", tokenizer="split-digits")
    (tmp_path / "ft.yaml").write_text(TRAIN)
    out = tmp_path / "tuned"
    code, _, err = run(
        capsys, "train", "--data", world / "data", "--out", out, "--base", base, "--config", tmp_path / "ft.yaml", "-q"
    )
    assert code == 0, err
    record = json.loads((out / "exposure_audit.json").read_text())
    assert record["model"]["base"] == str(base)
    before, after = load_model(base), load_model(out)
    assert before.tokenizer.backend_tokenizer.to_str() == after.tokenizer.backend_tokenizer.to_str()
    b, a = dict(before.model.named_parameters()), dict(after.model.named_parameters())
    assert b.keys() == a.keys() and any(not (b[k] == a[k]).all() for k in b)  # trained, same architecture
    code, _, _ = run(capsys, "measure", "--model", out, "--canaries", world / "data" / "canaries.json", "-q")
    assert code == 0


def test_dp_sgd_on_a_transformer_records_its_epsilon(world, tmp_path, capsys):
    pytest.importorskip("opacus")
    out = tmp_path / "dp"
    code, text, err = run(
        capsys, "train", "--data", world / "data", "--out", out, "--config", world / "tiny.yaml", "--epochs", "1",
        "--dp", "--noise-multiplier", "1.0", "-q",
    )  # fmt: skip
    assert code == 0, err
    privacy = json.loads((out / "exposure_audit.json").read_text())["privacy"]
    assert privacy["epsilon"] > 0 and privacy["noise_multiplier"] == 1.0 and "tokens" in privacy["unit"]
    assert "epsilon" in text


@pytest.mark.parametrize(
    "config, extra, match",
    [
        ("model: {kind: rnn}\n", [], "model.kind"),
        (TINY + "train: {seq_len: 100}\n", [], "do not fit"),
        ("model: {base: somewhere}\n", [], "model.kind: transformer"),
        (TINY + TRAIN, ["--base", "{root}/data"], "not a Hugging Face model folder"),
    ],
)
def test_bad_transformer_requests(world, tmp_path, capsys, config, extra, match):
    (tmp_path / "c.yaml").write_text(config)
    extra = [a.replace("{root}", str(world)) for a in extra]
    out = tmp_path / "o"
    code, _, err = run(capsys, "train", "--data", world / "data", "--out", out, "--config", tmp_path / "c.yaml", *extra)
    one_line_error(code, err, match)
    assert not out.exists()


def test_model_config_defaults_stay_the_paper_lstm():
    assert ModelConfig().kind == "char-lstm" and ModelConfig().char_lstm.hidden == 200


def test_base_loaded_from_gguf_saves_as_a_plain_float_model(tmp_path, monkeypatch):
    """A GGUF base loads dequantized, but transformers leaves its quantizer attached and then
    refuses save_pretrained; load_base detaches it so a fine-tuned GGUF model can be saved."""
    from exposure_audit.models import hf, transformer

    folder = tiny_model(tmp_path / "base", arch="llama", tokenizer="split-digits")
    real = hf.load_hf(folder, device="cpu", dtype="float32")

    class NotSerializable:  # what transformers attaches to a model read from a GGUF file
        quantization_config = type("Q", (), {"quant_method": "gguf"})()

        def is_serializable(self) -> bool:
            return False

    real.model.hf_quantizer = NotSerializable()
    real.model.config.quantization_config = {"quant_method": "gguf"}
    with pytest.raises(ValueError, match="not serializable"):
        real.model.save_pretrained(tmp_path / "refused", safe_serialization=True)
    monkeypatch.setattr(transformer, "load_hf", lambda *a, **k: real)
    net, tok, ctx = transformer.load_base(folder)
    assert net.training and ctx == 128
    assert not hasattr(net.config, "quantization_config")
    net.save_pretrained(tmp_path / "saved", safe_serialization=True)
    assert (tmp_path / "saved" / "model.safetensors").is_file()
