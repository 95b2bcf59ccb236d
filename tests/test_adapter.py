"""PEFT LoRA adapters as models: merged and unmerged scoring agree, the report names both weights,
and every bad adapter is a one-line error with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from exposure_audit.cli import main  # noqa: E402
from exposure_audit.data.manifest import Canary
from exposure_audit.errors import AuditError  # noqa: E402
from exposure_audit.exposure.measure import measure  # noqa: E402
from exposure_audit.models import load_model  # noqa: E402
from exposure_audit.models.adapter import load_adapter  # noqa: E402

from .hf_models import tiny_model  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj"]


def make_adapter(base: Path, out: Path, *, seed: int = 1, scale: float = 3.0) -> Path:
    """A random LoRA with nonzero B (init_lora_weights=False), scaled so that it moves the scores."""
    net = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        net, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(scale)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("adapter")
    base = tiny_model(root / "base", arch="llama", tokenizer="split-digits")
    adapter = make_adapter(base, root / "lora")
    merged_dir = root / "merged"
    merged = load_adapter(adapter, device="cpu")
    merged.model.save_pretrained(merged_dir, safe_serialization=True)
    merged.tokenizer.save_pretrained(merged_dir)
    return base, adapter, merged_dir


CANARIES = [
    Canary(id=f"c{i}", format="my pin is {d:3}", secret=s, text=f"my pin is {s}", insertions=i, positions=[0] * i)
    for i, s in enumerate(["417", "052", "998"])
]


def test_unmerged_merged_and_saved_merged_agree(pair):
    base, adapter, merged_dir = pair
    runs = [
        load_adapter(adapter, device="cpu", merge=False),
        load_model(adapter, device="cpu"),  # merged: the engine's choice
        load_model(merged_dir, device="cpu"),
    ]
    results = [measure(m, CANARIES, method="enumerate", bootstrap=0) for m in runs]
    ref = results[0]
    for other in results[1:]:
        assert [r.rank for r in other] == [r.rank for r in ref]
        for a, b in zip(ref, other):
            assert abs(a.log_perplexity - b.log_perplexity) < 1e-3
    # the adapter changes the scores: the comparison is not between two copies of the base
    plain = measure(load_model(base, device="cpu"), CANARIES, method="enumerate", bootstrap=0)
    assert max(abs(a.log_perplexity - b.log_perplexity) for a, b in zip(plain, ref)) > 0.1


def test_describe_records_both_weights_and_lora_settings(pair):
    base, adapter, _ = pair
    info = load_model(adapter, device="cpu").describe()
    assert info["kind"] == "peft-lora"
    assert info["base"]["weights_sha256"] == load_model(base, device="cpu").describe()["weights_sha256"]
    a = info["adapter"]
    assert (a["r"], a["lora_alpha"], a["target_modules"]) == (4, 8, sorted(TARGETS))
    assert len(a["weights_sha256"]) == 64 and a["weights_sha256"] != info["base"]["weights_sha256"]
    assert a["merged"] is True


def test_measure_cli_on_adapter_equals_merged(pair, tmp_path):
    from .conftest import make_data

    base, adapter, merged_dir = pair
    data = make_data(tmp_path, lines=60, schedule="0,1", fmt="pin {d:2}")
    reports = []
    for model, extra in ((adapter, ["--base", str(base)]), (merged_dir, [])):
        out = tmp_path / f"{model.name}.json"
        argv = ["measure", "--model", str(model), "--canaries", str(data / "canaries.json"), "--json", str(out)]
        assert main([*argv, *extra, "--method", "enumerate", "-q"]) == 0
        reports.append(json.loads(out.read_text()))
    a, b = ([(c["rank"], c["log_perplexity"]) for c in r["canaries"]] for r in reports)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert all(abs(x[1] - y[1]) < 1e-3 for x, y in zip(a, b))
    assert reports[0]["model"]["details"]["adapter"]["r"] == 4


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()  # drop what building the fixtures printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _copy_adapter(src: Path, dst: Path, **config) -> Path:
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(config)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_adapters_exit_2_and_write_nothing(pair, tmp_path, capsys):
    from .conftest import make_data

    base, adapter, _ = pair
    data = make_data(tmp_path, lines=60, schedule="0,1", fmt="pin {d:2}")
    out = tmp_path / "r.json"

    def run(model: Path, *extra: str) -> str:
        argv = ["measure", "--model", str(model), "--canaries", str(data / "canaries.json"), "--json", str(out)]
        err = _error([*argv, *extra, "-q"], capsys)
        assert not out.exists()
        return err

    # a hub name as the base, none given: never downloaded
    hub = _copy_adapter(adapter, tmp_path / "hub", base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    assert "pass --base" in run(hub)
    # pickle weights
    pickled = _copy_adapter(adapter, tmp_path / "pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    assert "pickle" in run(pickled, "--base", str(base))
    # another architecture (GPT-2 has no q_proj) and another width (same names, other shapes)
    gpt2 = tiny_model(tmp_path / "gpt2", arch="gpt2")
    assert "does not fit base" in run(adapter, "--base", str(gpt2))
    wide = tmp_path / "wide"
    tiny_model(wide, arch="llama", tokenizer="split-digits")
    cfg = json.loads((wide / "config.json").read_text())
    cfg.update(hidden_size=64, intermediate_size=128)
    (wide / "config.json").write_text(json.dumps(cfg))
    AutoModelForCausalLM.from_config(
        __import__("transformers").AutoConfig.from_pretrained(wide, local_files_only=True)
    ).save_pretrained(wide, safe_serialization=True)
    assert "does not fit base" in run(adapter, "--base", str(wide))
    # --base on a model that is not an adapter
    assert "adapter folders only" in run(base, "--base", str(base))
    # a non-LoRA adapter type
    assert "only LORA" in run(_copy_adapter(adapter, tmp_path / "ia3", peft_type="IA3"), "--base", str(base))


def test_missing_local_base_names_it(pair, tmp_path):
    _, adapter, _ = pair
    gone = _copy_adapter(adapter, tmp_path / "gone", base_model_name_or_path=str(tmp_path / "nowhere"))
    with pytest.raises(AuditError, match="pass --base"):
        load_model(gone, device="cpu")
