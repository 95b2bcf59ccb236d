"""Training survives SIGKILL: `train --resume` ends with the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

import exposure_audit.training.loop as train_mod
from exposure_audit.cli import main
from exposure_audit.config import AuditConfig, DPConfig, TrainConfig
from exposure_audit.errors import AuditError
from exposure_audit.files import staging_path
from exposure_audit.training.loop import run_training

from .conftest import make_data

ARGS = [
    "--hidden",
    "24",
    "--layers",
    "2",
    "--embedding",
    "8",
    "--epochs",
    "12",
    "--seq-len",
    "30",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "7",
    "--dropout",
    "0.1",
    "-q",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    make_data(root, lines=300, schedule="0,2")
    return root


TRANSFORMER = (
    "model: {kind: transformer, transformer: {layers: 2, width: 16, heads: 2, context: 32, vocab_size: 300}}\n"
    "train: {epochs: 12, seq_len: 20, batch_size: 8, checkpoint_every: 7, learning_rate: 0.003}\n"
)


@pytest.mark.parametrize("kind", ["char-lstm", "transformer", "lora"])
def test_sigkill_then_resume_gives_bit_identical_weights(data, tmp_path, kind):
    args = ARGS
    weights = "model.safetensors"
    if kind in ("transformer", "lora"):
        (tmp_path / "t.yaml").write_text(TRANSFORMER)
        args = ["--config", str(tmp_path / "t.yaml"), "-q"]
    if kind == "lora":  # a LoRA adapter on the transformer (its dropout draws from the resumed RNG too)
        pytest.importorskip("peft")
        args = [*args, "--lora", "--lora-r", "4", "--lora-dropout", "0.1", "--learning-rate", "0.03"]
        weights = "adapter_model.safetensors"
    ref = tmp_path / "ref"
    assert main(["train", "--data", str(data / "data"), "--out", str(ref), *args]) == 0

    out = tmp_path / "killed"
    staging = staging_path(out, "train")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exposure_audit", "train", "--data", str(data / "data"), "--out", str(out), *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.time() + 120
    state = staging / "train_state.json"
    # wait for a mid-epoch state (a step count that is not an epoch end), then kill hard
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            try:
                pos = json.loads(state.read_text())["position"]
            except (json.JSONDecodeError, KeyError):
                pos = None
            if pos and pos["step"] >= 14 and pos["batch"] > 0:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and staging.is_dir()

    # a fresh start is refused while an interrupted run is saved
    assert main(["train", "--data", str(data / "data"), "--out", str(out), *args]) == 2
    assert main(["train", "--resume", str(out), "-q"]) == 0
    assert not staging.exists()
    a, b = load_file(str(ref / weights)), load_file(str(out / weights))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    ma = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in mb] == list(range(1, 13))
    assert [(m["train_bpc"], m["valid_bpc"]) for m in ma] == [(m["train_bpc"], m["valid_bpc"]) for m in mb]


def test_resume_without_saved_state_is_an_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no interrupted training" in capsys.readouterr().err


def test_library_refusals_speak_of_settings_not_flags(data, tmp_path):
    out = tmp_path / "m"
    staging_path(out, "train").mkdir()  # as a killed run leaves it
    with pytest.raises(AuditError, match="interrupted training") as info:
        run_training(data / "data", out, AuditConfig())
    assert "--" not in str(info.value) and "resume" in str(info.value)
    with pytest.raises(AuditError, match="no interrupted training") as info:
        run_training(None, tmp_path / "other", None, resume=True)
    assert "--" not in str(info.value)
    dp = AuditConfig(train=TrainConfig(dp=DPConfig(enabled=True, noise_multiplier=1.0)))
    with pytest.raises(AuditError, match="cannot be resumed"):
        train_mod.train(
            train_mod.load_data(data / "data", dp.model, 30), dp.model, dp.train, seed=0, folder=out, resume=True
        )
