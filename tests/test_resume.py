"""Training survives SIGKILL: `train --resume` ends with the same weights as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

import exposure_audit.training as train_mod
from exposure_audit.cli import main
from exposure_audit.config import AuditConfig, config_from_dict
from exposure_audit.errors import AuditError
from exposure_audit.files import staging_path
from exposure_audit.training import run_training

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


@pytest.mark.parametrize("kind", ["char-lstm", "transformer", "lora", "dp"])
def test_sigkill_then_resume_gives_bit_identical_weights(data, tmp_path, kind):
    args, epochs = ARGS, 12
    if kind == "dp":  # DP-SGD: the accountant's history and the Poisson sampler resume with the weights
        args, epochs = [*ARGS, "--dp", "--noise-multiplier", "1.0", "--epochs", "2", "--max-chars", "3000"], 2
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
    assert [m["epoch"] for m in mb] == list(range(1, epochs + 1))
    assert [(m["train_bpc"], m["valid_bpc"]) for m in ma] == [(m["train_bpc"], m["valid_bpc"]) for m in mb]
    if kind == "dp":  # the same epsilon after every epoch, and the same claim in the checkpoint
        assert [m["epsilon"] for m in ma] == [m["epsilon"] for m in mb]
        assert all(e > 0 for e in (m["epsilon"] for m in mb))
        pa, pb = (json.loads((d / "config.json").read_text())["privacy"] for d in (ref, out))
        assert pa == pb and pa["steps"] == mb[-1]["step"]


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


class _Crash(Exception):
    pass


def test_an_interrupted_dp_run_resumes_to_the_same_weights_and_epsilon(data, tmp_path):
    """In-process and deterministic: a hook crashes the run after step 17, a state was saved at
    step 15 (mid-epoch); resuming from it replays the Poisson sampler and the accountant."""
    cfg = config_from_dict(
        {
            "model": {"hidden": 16, "embedding": 8, "dropout": 0.1},
            "train": {"epochs": 2, "seq_len": 30, "batch_size": 8, "checkpoint_every": 5, "max_chars": 2400},
        }
    )
    cfg.train.dp.enabled, cfg.train.dp.noise_multiplier = True, 1.0
    loaded = train_mod.load_data(data / "data", cfg.model, cfg.train.seq_len)

    def run(folder, **kw):
        folder.mkdir(exist_ok=True)
        return train_mod.train(loaded, cfg.model, cfg.train, seed=3, quiet=True, folder=folder, **kw)

    ref = run(tmp_path / "ref")

    def crash(event, record, model):
        if record["step"] == 17:
            raise _Crash

    with pytest.raises(_Crash):
        run(tmp_path / "k", hooks=[crash])
    saved = json.loads((tmp_path / "k" / "train_state.json").read_text())
    assert saved["position"]["step"] == 15 and saved["position"]["batch"] > 0  # mid-epoch
    history = saved["strategy"]["accountant"]["history"]
    assert saved["strategy"]["accountant"]["mechanism"] == "rdp" and sum(h[2] for h in history) == 15
    resumed = run(tmp_path / "k", resume=True)

    a, b = ref.model.module.state_dict(), resumed.model.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert ref.privacy == resumed.privacy and ref.privacy["steps"] == ref.metrics[-1]["step"] > 15
    assert [(m["train_bpc"], m["valid_bpc"], m["epsilon"]) for m in ref.metrics] == [
        (m["train_bpc"], m["valid_bpc"], m["epsilon"]) for m in resumed.metrics
    ]


def test_a_kill_between_the_tensors_and_the_json_keeps_the_previous_state(tmp_path, monkeypatch):
    """A save writes the tensors, then the JSON that commits them. A SIGKILL between the two once
    left new tensors beside the old JSON ("does not match its sha256 (damaged); cannot resume",
    seen in CI): each save's tensors now have a name of their own, so the old pair stays whole."""
    import torch

    from exposure_audit.training import state as st

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    st.save_train_state(tmp_path, model, opt, st.Position(step=1), "id")
    _, raw1 = st.read_train_state(tmp_path)
    with torch.no_grad():
        model.weight.add_(1.0)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies after the tensors, before the JSON

    monkeypatch.setattr(st, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        st.save_train_state(tmp_path, model, opt, st.Position(step=2), "id")
    assert len(list(tmp_path.glob("train_state*.safetensors"))) == 2  # the new tensors were written
    meta, raw = st.read_train_state(tmp_path)
    assert meta["position"]["step"] == 1 and raw == raw1

    monkeypatch.undo()
    st.save_train_state(tmp_path, model, opt, st.Position(step=3), "id")
    meta, raw = st.read_train_state(tmp_path)
    assert meta["position"]["step"] == 3 and raw != raw1
    assert [p.name for p in tmp_path.glob("train_state*.safetensors")] == [meta["tensors_file"]]
    st.remove_train_state(tmp_path)
    assert list(tmp_path.iterdir()) == []
