"""train --lora: a LoRA adapter trained in the one training loop, saved as an adapter folder
(or merged with --merge), measured like any model."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("peft")

from safetensors.torch import load_file  # noqa: E402

from exposure_audit.cli import main  # noqa: E402

from .conftest import make_data  # noqa: E402
from .hf_models import tiny_model  # noqa: E402

TRAIN = "train: {epochs: 2, seq_len: 24, batch_size: 8, learning_rate: 0.01}\n"
SMALL = "model: {kind: transformer, transformer: {layers: 2, width: 16, heads: 2, context: 32, vocab_size: 300}}\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    make_data(root, lines=300, schedule="0,1,8")
    (root / "ft.yaml").write_text(TRAIN)
    (root / "small.yaml").write_text(SMALL + TRAIN.replace("0.01", "0.03"))
    return root


def _measure(model, data, out, *extra):
    argv = ["measure", "--model", str(model), "--canaries", str(data / "canaries.json"), "--json", str(out)]
    assert main([*argv, "--method", "enumerate", *extra, "-q"]) == 0
    return json.loads(out.read_text())


def test_lora_fine_tuning_writes_an_adapter_that_measures_like_its_merge(world, tmp_path):
    base = tiny_model(tmp_path / "base", arch="llama", tokenizer="split-digits")
    common = ["train", "--data", str(world / "data"), "--base", str(base), "--config", str(world / "ft.yaml")]
    lora = ["--lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-target", "q_proj,v_proj", "-q"]
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert main([*common, "--out", str(adapter), *lora]) == 0
    assert main([*common, "--out", str(merged), *lora, "--merge"]) == 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 8, ["q_proj", "v_proj"])
    assert config["base_model_name_or_path"] == str(base.resolve())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors and all("lora_" in k for k in tensors)
    assert any(v.abs().sum() > 0 for k, v in tensors.items() if "lora_B" in k)  # B trained away from zero
    record = json.loads((adapter / "exposure_audit.json").read_text())
    assert record["model"]["lora"]["r"] == 4 and "train_sha256" in record["data"]
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    a = _measure(adapter, world / "data", tmp_path / "a.json")
    m = _measure(merged, world / "data", tmp_path / "m.json")
    assert a["model"]["trained_on_manifest_data"] and a["model"]["details"]["kind"] == "peft-lora"
    assert [c["rank"] for c in a["canaries"]] == [c["rank"] for c in m["canaries"]]
    assert all(abs(x["log_perplexity"] - y["log_perplexity"]) < 1e-3 for x, y in zip(a["canaries"], m["canaries"]))


def test_lora_on_a_transformer_trained_here_carries_its_base(world, tmp_path):
    out = tmp_path / "small-lora"
    argv = ["train", "--data", str(world / "data"), "--out", str(out), "--config", str(world / "small.yaml")]
    assert main([*argv, "--lora", "--lora-r", "2", "-q"]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    assert (out / "base" / "model.safetensors").is_file()
    report = _measure(out, world / "data", tmp_path / "r.json")
    assert report["model"]["details"]["adapter"]["r"] == 2


def _error(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_lora_refusals(world, tmp_path, capsys):
    out = tmp_path / "x"
    data = ["train", "--data", str(world / "data"), "--out", str(out)]
    assert "char-LSTM" in _error([*data, "--lora", "-q"], capsys)
    small = ["--config", str(world / "small.yaml")]
    assert "target_modules" in _error([*data, *small, "--lora", "--lora-target", "nothing_here", "-q"], capsys)
    assert "DP-SGD" in _error([*data, *small, "--lora", "--dp", "--noise-multiplier", "1", "-q"], capsys)
    assert "merge" in _error([*data, *small, "--merge", "-q"], capsys)
    assert not out.exists()
