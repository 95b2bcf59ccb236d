"""The command line as a user and a CI job see it: outputs, exit codes, one-line errors."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from exposure_audit.cli import main

from .conftest import make_corpus

TINY_TRAIN = ["--hidden", "16", "--layers", "1", "--epochs", "2", "--seq-len", "40", "--batch-size", "16"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, match=""):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert match in lines[0]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    make_corpus(corpus, lines=600)
    assert main(["insert", "--corpus", str(corpus), "--out", str(root / "data"), "--format", "pin {d:3}",
                 "--schedule", "0,1,8", "--per-count", "2", "--seed", "5", "-q"]) == 0
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "model"), *TINY_TRAIN, "-q"]) == 0
    return root


def test_version_and_help(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "exposure-audit" in out
    for cmd in ("insert", "train", "measure", "audit"):
        code, out, _ = run(capsys, cmd, "--help")
        assert code == 0 and "--quiet" in out


def test_insert_twice_with_one_seed_is_identical(pipeline, tmp_path, capsys):
    corpus = pipeline / "corpus.txt"
    args = ["insert", "--corpus", corpus, "--format", "pin {d:3}", "--schedule", "0,1,8", "--per-count", "2", "--seed", "5", "-q"]
    assert run(capsys, *args, "--out", tmp_path / "again")[0] == 0
    for name in ("train.txt", "valid.txt", "canaries.json"):
        assert (tmp_path / "again" / name).read_bytes() == (pipeline / "data" / name).read_bytes()


def test_train_writes_checkpoint_and_metrics(pipeline):
    model = pipeline / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["format"] == "exposure-audit/char-lstm" and config["format_version"] == 1
    assert config["architecture"]["hidden"] == 16 and config["seed"] == 0
    assert (model / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle
    metrics = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(m["valid_bpc"] > 0 and m["train_bpc"] > 0 and m["step"] > 0 for m in metrics)


def test_measure_reports_and_threshold_exit_codes(pipeline, capsys):
    rep = pipeline / "r.json"
    junit = pipeline / "r.xml"
    code, out, _ = run(capsys, "measure", "--model", pipeline / "model", "--canaries", pipeline / "data" / "canaries.json",
                       "--json", rep, "--junit", junit, "-q", "--force")
    assert code == 0
    assert "exposure" in out and "control" in out
    report = json.loads(rep.read_text())
    assert report["schema"] == 1 and report["passed"] is True and report["threshold"] is None
    keys = {"format", "secret", "insertions", "space_size", "log_perplexity", "rank", "rank_bounds", "exposure",
            "exposure_max", "method", "model_steps", "seconds"}
    for c in report["canaries"]:
        assert keys <= set(c)
        assert c["space_size"] == "1000" and c["method"] == "enumerate" and 1 <= c["rank"] <= 1000
    suite = ET.parse(junit).getroot()
    inserted = [c for c in report["canaries"] if c["insertions"] > 0]
    assert int(suite.get("tests")) == len(suite.findall("testcase")) == len(inserted)

    worst = max(c["exposure"] for c in inserted)
    code, out, _ = run(capsys, "measure", "--model", pipeline / "model", "--canaries", pipeline / "data" / "canaries.json",
                       "--fail-above", worst, "-q")
    assert code == 0 and "PASS" in out
    code, out, _ = run(capsys, "measure", "--model", pipeline / "model", "--canaries", pipeline / "data" / "canaries.json",
                       "--fail-above", worst - 0.01, "--junit", junit, "--force", "-q")
    assert code == 1 and "FAIL" in out
    assert int(ET.parse(junit).getroot().get("failures")) >= 1


def test_exposure_is_not_raised_by_controls(pipeline, capsys, tmp_path):
    """A threshold below every control's exposure but above every inserted one's still passes."""
    rep = tmp_path / "r.json"
    run(capsys, "measure", "--model", pipeline / "model", "--canaries", pipeline / "data" / "canaries.json", "--json", rep, "-q")
    report = json.loads(rep.read_text())
    inserted_max = max(c["exposure"] for c in report["canaries"] if c["insertions"] > 0)
    code, _, _ = run(capsys, "measure", "--model", pipeline / "model", "--canaries", pipeline / "data" / "canaries.json",
                     "--fail-above", inserted_max, "-q")
    assert code == 0


def test_existing_output_needs_force(pipeline, capsys):
    code, _, err = run(capsys, "insert", "--corpus", pipeline / "corpus.txt", "--out", pipeline / "data", "--format", "pin {d:3}")
    assert_usage_error(code, err, "--force")
    code, _, err = run(capsys, "train", "--data", pipeline / "data", "--out", pipeline / "model", *TINY_TRAIN)
    assert_usage_error(code, err, "--force")


def bad_cases(root: Path):
    data, model = root / "data", root / "model"
    (root / "empty.txt").write_text("")
    (root / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    (root / "bad.yaml").write_text("train:\n  epoch: 3\n")
    (root / "notjson.json").write_text("{ nope")
    (root / "other.json").write_text(json.dumps({"schema": 1, "kind": "something else"}))
    corrupt = root / "corrupt_model"
    corrupt.mkdir(exist_ok=True)
    (corrupt / "config.json").write_text((model / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:100])
    ins = ["insert", "--out", root / "o_insert", "-q"]
    measure = ["measure", "--model", model, "--canaries", data / "canaries.json", "-q"]
    return [
        ([*ins, "--corpus", root / "missing.txt"], "does not exist"),
        ([*ins, "--corpus", root / "empty.txt"], "empty"),
        ([*ins, "--corpus", root / "binary.bin"], "binary"),
        ([*ins, "--corpus", root], "folder"),
        ([*ins, "--corpus", root / "corpus.txt", "--format", "pin {q:3}"], "unknown hole class"),
        ([*ins, "--corpus", root / "corpus.txt", "--format", "no holes"], "no hole"),
        ([*ins, "--corpus", root / "corpus.txt", "--format", "pin {d:3}", "--schedule", "0,500,900"], "too small"),
        ([*ins, "--corpus", root / "corpus.txt", "--schedule", "1,x"], "schedule"),
        ([*ins, "--config", root / "bad.yaml"], "train.epoch"),
        ([*ins, "--per-count", "abc"], "per-count"),
        (["train", "--data", root / "nowhere", "--out", root / "o_train"], "does not exist"),
        (["train", "--data", data, "--out", root / "o_train", "--epochs", "0"], "train.epochs"),
        (["measure", "--model", root / "nowhere", "--canaries", data / "canaries.json"], "does not exist"),
        (["measure", "--model", corrupt, "--canaries", data / "canaries.json"], "sha256"),
        (["measure", "--model", model, "--canaries", root / "notjson.json"], "not valid JSON"),
        (["measure", "--model", model, "--canaries", root / "other.json"], "not an exposure-audit canaries file"),
        ([*measure, "--method", "fastest"], "measure.method"),
        ([*measure, "--max-steps", "0"], "max_steps"),
        ([*measure, "--method", "enumerate", "--max-steps", "10"], "pruned or estimate"),
        ([*measure, "--json", root], "folder"),
        ([*measure, "--json", root / "no_such_dir" / "r.json"], "does not exist"),
        (["audit", root / "bad.yaml", "--out", root / "o_audit"], "unknown key 'train.epoch'"),
        (["frobnicate"], "No such command"),
        (["measure", "--model", model], "Missing option"),
    ]


def test_bad_inputs_give_one_error_line_exit_2_and_no_output(pipeline, capsys):
    for args, match in bad_cases(pipeline):
        before = {p.name for p in pipeline.iterdir()}
        code, out, err = run(capsys, *args)
        assert_usage_error(code, err, match)
        after = {p.name for p in pipeline.iterdir()}
        assert after <= before | {"empty.txt", "binary.bin", "bad.yaml", "notjson.json", "other.json", "corrupt_model"}, (args, after - before)
        assert not any(name.startswith(".partial-") for name in after)


def test_manifest_from_other_data_is_refused_unless_asked(pipeline, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus, lines=500, seed=9)
    assert run(capsys, "insert", "--corpus", corpus, "--out", tmp_path / "d2", "--format", "pin {d:3}", "--schedule", "0,1", "-q")[0] == 0
    code, _, err = run(capsys, "measure", "--model", pipeline / "model", "--canaries", tmp_path / "d2" / "canaries.json", "-q")
    assert_usage_error(code, err, "--any-model")
    code, out, _ = run(capsys, "measure", "--model", pipeline / "model", "--canaries", tmp_path / "d2" / "canaries.json", "--any-model", "-q")
    assert code == 0 and "pin" in out


def test_audit_runs_the_whole_pipeline(pipeline, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"corpus: {pipeline / 'corpus.txt'}\n"
        "insert:\n  formats: ['pin {d:3}']\n  schedule: [0, 4]\n  per_count: 1\n"
        "model:\n  hidden: 12\n  layers: 1\n  embedding: 8\n"
        "train:\n  epochs: 1\n  seq_len: 40\n  batch_size: 16\n"
    )
    code, out, _ = run(capsys, "audit", cfg, "--out", tmp_path / "run", "-q")
    assert code == 0
    for p in ("data/train.txt", "data/canaries.json", "model/model.safetensors", "model/config.json", "report.json", "report.junit.xml"):
        assert (tmp_path / "run" / p).is_file(), p
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["canaries"]) == 2 and report["passed"]
    assert "insertions" in out
