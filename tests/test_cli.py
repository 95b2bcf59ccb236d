"""The command line as a user and a CI job see it: outputs, exit codes, one-line errors."""

import json
import xml.etree.ElementTree as ET

import pytest

from exposure_audit.cli import main

from .conftest import make_corpus

# the pipeline fixture's insertion; the determinism test repeats it
INSERT = ["insert", "--format", "pin {d:3}", "--schedule", "0,1,8", "--per-count", "2", "--seed", "5", "-q"]
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
    assert main([*INSERT, "--corpus", str(corpus), "--out", str(root / "data")]) == 0
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
    assert run(capsys, *INSERT, "--corpus", corpus, "--out", tmp_path / "again")[0] == 0
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
    code, out, _ = run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--json",
        rep,
        "--junit",
        junit,
        "-q",
        "--force",
    )
    assert code == 0
    assert "exposure" in out and "control" in out
    report = json.loads(rep.read_text())
    assert report["schema"] == 1 and report["passed"] is True and report["threshold"] is None
    keys = {
        "format",
        "secret",
        "insertions",
        "space_size",
        "log_perplexity",
        "rank",
        "rank_bounds",
        "exposure",
        "exposure_max",
        "method",
        "model_steps",
        "seconds",
    }
    for c in report["canaries"]:
        assert keys <= set(c)
        assert c["space_size"] == "1000" and c["method"] == "enumerate" and 1 <= c["rank"] <= 1000
    suite = ET.parse(junit).getroot()
    inserted = [c for c in report["canaries"] if c["insertions"] > 0]
    assert int(suite.get("tests")) == len(suite.findall("testcase")) == len(inserted)

    worst = max(c["exposure"] for c in inserted)
    code, out, _ = run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--fail-above",
        worst,
        "-q",
    )
    assert code == 0 and "PASS" in out
    code, out, _ = run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--fail-above",
        worst - 0.01,
        "--junit",
        junit,
        "--force",
        "-q",
    )
    assert code == 1 and "FAIL" in out
    assert int(ET.parse(junit).getroot().get("failures")) >= 1


def test_exposure_is_not_raised_by_controls(pipeline, capsys, tmp_path):
    """A threshold below every control's exposure but above every inserted one's still passes."""
    rep = tmp_path / "r.json"
    run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--json",
        rep,
        "-q",
    )
    report = json.loads(rep.read_text())
    inserted_max = max(c["exposure"] for c in report["canaries"] if c["insertions"] > 0)
    code, _, _ = run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--fail-above",
        inserted_max,
        "-q",
    )
    assert code == 0


def test_existing_output_needs_force(pipeline, capsys):
    code, _, err = run(
        capsys, "insert", "--corpus", pipeline / "corpus.txt", "--out", pipeline / "data", "--format", "pin {d:3}"
    )
    assert_usage_error(code, err, "--force")
    code, _, err = run(capsys, "train", "--data", pipeline / "data", "--out", pipeline / "model", *TINY_TRAIN)
    assert_usage_error(code, err, "--force")


def test_manifest_from_other_data_is_refused_unless_asked(pipeline, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus, lines=500, seed=9)
    assert (
        run(
            capsys,
            "insert",
            "--corpus",
            corpus,
            "--out",
            tmp_path / "d2",
            "--format",
            "pin {d:3}",
            "--schedule",
            "0,1",
            "-q",
        )[0]
        == 0
    )
    code, _, err = run(
        capsys, "measure", "--model", pipeline / "model", "--canaries", tmp_path / "d2" / "canaries.json", "-q"
    )
    assert_usage_error(code, err, "--any-model")
    code, out, _ = run(
        capsys,
        "measure",
        "--model",
        pipeline / "model",
        "--canaries",
        tmp_path / "d2" / "canaries.json",
        "--any-model",
        "-q",
    )
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
    for p in (
        "data/train.txt",
        "data/canaries.json",
        "model/model.safetensors",
        "model/config.json",
        "report.json",
        "report.junit.xml",
    ):
        assert (tmp_path / "run" / p).is_file(), p
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert len(report["canaries"]) == 2 and report["passed"]
    assert "insertions" in out


def test_extract_single_format_and_manifest(pipeline, capsys, tmp_path):
    out_json = tmp_path / "x.json"
    code, out, _ = run(
        capsys,
        "extract",
        "--model",
        pipeline / "model",
        "--format",
        "pin {d:3}",
        "--top",
        "5",
        "--json",
        out_json,
        "-q",
    )
    assert code == 0 and "proven" in out
    data = json.loads(out_json.read_text())
    assert data["schema"] == 1 and data["proven"] is True and len(data["candidates"]) == 5
    assert {"format", "candidates", "model_steps", "seconds", "proven"} <= set(data)
    lp = [c["log_perplexity"] for c in data["candidates"]]
    assert lp == sorted(lp)

    code, out, _ = run(
        capsys,
        "extract",
        "--model",
        pipeline / "model",
        "--canaries",
        pipeline / "data" / "canaries.json",
        "--top",
        "3",
        "--json",
        tmp_path / "m.json",
        "-q",
    )
    assert code == 0 and "extracted at #1" in out
    report = json.loads((tmp_path / "m.json").read_text())
    assert len(report["canaries"]) == 6 and set(report["success_by_insertions"]) == {"0", "1", "8"}

    code, out, _ = run(
        capsys,
        "extract",
        "--model",
        pipeline / "model",
        "--format",
        "pin {d:3}",
        "--beam",
        "4",
        "--top",
        "2",
        "--redact",
    )
    assert code == 0 and "approximate" in out
    assert "*" in out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--format", "pin {d:3}", "--top", "0"], "--top"),
        (["--format", "pin {d:3}", "--max-steps", "0"], "--max-steps"),
        (["--format", "no holes"], "no hole"),
        (["--format", "PIN {d:3}"], "vocabulary"),
        ([], "--format"),
    ],
)
def test_extract_bad_inputs(pipeline, capsys, extra, match):
    code, _, err = run(capsys, "extract", "--model", pipeline / "model", *extra)
    assert_usage_error(code, err, match)
