"""Exposure tracking, DP-SGD, sweeps and report rendering, on tiny models."""

import dataclasses
import json
import warnings

import pytest

import exposure_audit.training as train_mod
from exposure_audit.cli import main
from exposure_audit.config import AuditConfig, DPConfig
from exposure_audit.models.charlstm import CharLSTMSettings

from .conftest import make_data

TINY_MODEL = "model:\n  hidden: 16\n  layers: 1\n  embedding: 8\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("extras")
    make_data(root, lines=400, schedule="0,1,8")
    return root


def test_tracking_writes_exposure_into_metrics(corpus, tmp_path):
    out = tmp_path / "m"
    assert (
        main(
            [
                "train",
                "--data",
                str(corpus / "data"),
                "--out",
                str(out),
                "--hidden",
                "16",
                "--layers",
                "1",
                "--epochs",
                "2",
                "--seq-len",
                "40",
                "--batch-size",
                "16",
                "--track-exposure",
                "--track-every",
                "10",
                "-q",
            ]
        )
        == 0
    )
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in lines if m["event"] == "epoch"]
    tracks = [m for m in lines if m["event"] == "track"]
    assert [m["epoch"] for m in epochs] == [1, 2]
    assert tracks and all(m["step"] % 10 == 0 for m in tracks)
    for m in epochs + tracks:
        assert set(m["exposure_by_insertions"]) == {"0", "1", "8"}
        assert len(m["exposure"]) == 6 and all(0 <= e <= 9.97 for e in m["exposure"].values())
        assert m["exposure_methods"] == ["enumerate"]  # 10^3 candidates fit the budget: exact


def test_dp_training_reports_epsilon_everywhere(corpus, tmp_path, capsys):
    pytest.importorskip("opacus")
    out = tmp_path / "dp"
    code = main(
        [
            "train",
            "--data",
            str(corpus / "data"),
            "--out",
            str(out),
            "--hidden",
            "16",
            "--layers",
            "1",
            "--epochs",
            "1",
            "--seq-len",
            "30",
            "--batch-size",
            "16",
            "--dp",
            "--noise-multiplier",
            "1.0",
            "--max-grad-norm",
            "1.0",
            "-q",
        ]
    )
    assert code == 0
    assert "epsilon" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    eps = config["privacy"]["epsilon"]
    assert 0 < eps < 1e3 and config["privacy"]["noise_multiplier"] == 1.0 and config["privacy"]["delta"] == 1e-5
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["epsilon"] == pytest.approx(eps)
    # the checkpoint is a plain char-LSTM: measure reads it and shows epsilon
    code = main(
        [
            "measure",
            "--model",
            str(out),
            "--canaries",
            str(corpus / "data" / "canaries.json"),
            "--json",
            str(tmp_path / "r.json"),
            "-q",
        ]
    )
    assert code == 0
    assert "epsilon" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["model"]["privacy"]["epsilon"] == pytest.approx(eps)


def test_dp_target_epsilon_solves_the_noise(corpus, tmp_path):
    pytest.importorskip("opacus")
    out = tmp_path / "dp2"
    assert (
        main(
            [
                "train",
                "--data",
                str(corpus / "data"),
                "--out",
                str(out),
                "--hidden",
                "8",
                "--layers",
                "1",
                "--epochs",
                "1",
                "--seq-len",
                "30",
                "--batch-size",
                "16",
                "--dp",
                "--target-epsilon",
                "4",
                "-q",
            ]
        )
        == 0
    )
    privacy = json.loads((out / "config.json").read_text())["privacy"]
    assert privacy["epsilon"] <= 4.0 + 1e-6 and privacy["noise_multiplier"] > 0


def test_dp_honours_max_chars_and_keeps_warning_filters(corpus):
    pytest.importorskip("opacus")
    cfg = AuditConfig()
    model_cfg = dataclasses.replace(cfg.model, char_lstm=CharLSTMSettings(hidden=8, layers=1, embedding=8))
    dp = DPConfig(enabled=True, noise_multiplier=1.0)
    train_cfg = dataclasses.replace(cfg.train, epochs=1, seq_len=30, batch_size=16, threads=2, dp=dp)
    data = train_mod.load_data(corpus / "data", model_cfg, train_cfg.seq_len)
    filters = list(warnings.filters)
    full = train_mod.train(data, model_cfg, train_cfg, seed=0, quiet=True)
    assert warnings.filters == filters  # the filters opacus needs stay inside the call
    short_cfg = dataclasses.replace(train_cfg, max_chars=2 * 16 * 30)  # two batches' worth of windows
    short = train_mod.train(data, model_cfg, short_cfg, seed=0, quiet=True)
    assert warnings.filters == filters
    assert full.privacy["steps"] > 10 and short.privacy["steps"] == 2
    assert short.privacy["sample_rate"] == 0.5 and full.privacy["sample_rate"] < 0.1
    assert short.privacy["epsilon"] > full.privacy["epsilon"]  # fewer windows: each is sampled more often


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--dp"], "exactly one of noise_multiplier and target_epsilon"),
        (["--dp", "--noise-multiplier", "1", "--target-epsilon", "3"], "exactly one"),
        (["--dp", "--noise-multiplier", "1", "--delta", "0"], "train.dp.delta"),
        (["--dp", "--noise-multiplier", "1", "--max-grad-norm", "-1"], "train.dp.max_grad_norm"),
        (["--dp", "--target-epsilon", "0.000001", "--epochs", "3"], "DP-SGD"),
    ],
)
def test_dp_bad_requests_fail_before_training(corpus, tmp_path, capsys, extra, match):
    pytest.importorskip("opacus")
    out = tmp_path / "bad"
    code = main(
        [
            "train",
            "--data",
            str(corpus / "data"),
            "--out",
            str(out),
            "--hidden",
            "8",
            "--layers",
            "1",
            "--seq-len",
            "30",
            "-q",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and match in err and err.count("\n") == 1
    assert not out.exists()
    assert not any(p.name.startswith(".partial-") for p in tmp_path.iterdir())


def test_sweep_and_report_rendering(corpus, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(
        f"corpus: {corpus / 'corpus.txt'}\n"
        "insert:\n  formats: ['pin {d:3}']\n  schedule: [0, 4]\n  per_count: 1\n"
        + TINY_MODEL
        + "train:\n  epochs: 1\n  seq_len: 40\n  batch_size: 16\n  track:\n    enabled: true\n"
        "extract:\n  top: 3\n"
        "runs:\n  - name: plain\n  - name: dropout\n    model: {dropout: 0.5, layers: 2}\n"
    )
    out = tmp_path / "sw"
    assert main(["sweep", str(cfg), "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "plain" in text and "dropout" in text and "valid bpc" in text
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in sweep["runs"]] == ["plain", "dropout"]
    for r in sweep["runs"]:
        assert set(r["exposure_by_insertions"]) == {"0", "4"} and r["valid_bpc"] > 0
    for p in (
        "sweep.html",
        "privacy_utility.png",
        "exposure_by_run.png",  # both runs' exposure by count in one figure
        "tracking_by_run.png",  # both runs were tracked: exposure over training and at equal bpc
        "plain/report.html",
        "plain/exposure_vs_insertions.png",
        "plain/histogram_0.png",
        "plain/training.png",
        "dropout/report.json",
    ):
        assert (out / p).is_file(), p
    assert (out / "plain" / "privacy_utility.png").exists() is False
    # settings table, frontier, the two comparison figures, then each run's exposure and training figures
    assert (out / "sweep.html").read_text().count("data:image/png;base64,") == 3 + 2 * 2
    html = (out / "plain" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    report = json.loads((out / "plain" / "report.json").read_text())
    assert report["extraction"]["top"] == 3 and len(report["extraction"]["canaries"]) == 2

    # re-render from the saved JSON alone
    (out / "plain" / "report.html").unlink()
    assert main(["report", str(out / "plain")]) == 0
    assert (out / "plain" / "report.html").is_file()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "valid bpc" in printed and "plain: exposure during training" in printed and "n=4" in printed
    assert main(["report", str(tmp_path)]) == 2


def test_sweep_rejects_runs_that_change_the_shared_insertion(tmp_path, capsys):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("runs:\n  - name: a\n    insert: {per_count: 3}\n")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "all runs share" in capsys.readouterr().err
    cfg.write_text("train: {epochs: 1}\n")
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "runs" in capsys.readouterr().err


def test_large_training_texts_are_memory_mapped(corpus, monkeypatch):
    import numpy as np

    from exposure_audit.config import ModelConfig
    from exposure_audit.models import training

    in_memory = train_mod.load_data(corpus / "data", ModelConfig(), 40)
    monkeypatch.setattr(training, "IN_MEMORY_IDS", 1000)
    mapped = train_mod.load_data(corpus / "data", ModelConfig(), 40)
    assert isinstance(mapped.train, np.memmap) and not isinstance(in_memory.train, np.memmap)
    assert mapped.train.dtype == np.uint16
    assert np.array_equal(np.asarray(mapped.train), in_memory.train)
    assert mapped.tok.tokens == in_memory.tok.tokens
