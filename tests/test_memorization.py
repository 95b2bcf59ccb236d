"""`exposure-audit memorization` end to end: a tiny char-LSTM trained on records of which some
repeat 64 times extracts those far more often; the report's schema, the gates and bad input."""

from __future__ import annotations

import json
import random

import pytest

from exposure_audit.cli import main

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _line(rng: random.Random) -> str:
    return " ".join("".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6))) for _ in range(5))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Train: 120 single random lines and 6 lines with 64 copies each; valid: 120 other lines."""
    root = tmp_path_factory.mktemp("mem")
    rng = random.Random(0)
    single = [_line(rng) for _ in range(120)]
    repeated = [_line(rng) for _ in range(6)]
    train = single + [r for r in repeated for _ in range(64)]
    rng.shuffle(train)
    data = root / "data"
    data.mkdir()
    (data / "train.txt").write_text("\n".join(train) + "\n")
    (data / "valid.txt").write_text("\n".join(_line(rng) for _ in range(120)) + "\n")
    argv = ["train", "--data", data, "--out", root / "model", "--hidden", "96", "--layers", "1", "--embedding", "16"]
    argv += ["--epochs", "6", "--seq-len", "64", "--batch-size", "16", "--learning-rate", "0.01", "--seed", "0", "-q"]
    assert main([str(a) for a in argv]) == 0
    return root, set(repeated)


def _run(root, *extra, out="r"):
    args = ["memorization", "--model", root / "model", "--data", root / "data", "--prefix-tokens", "8"]
    args += ["--suffix-tokens", "8", "--json", root / f"{out}.json", "--markdown", root / f"{out}.md"]
    args += ["--html", root / f"{out}.html", "--junit", root / f"{out}.xml", "-q", "--force", *extra]
    return main([str(a) for a in args])


def test_repeated_records_are_extracted_far_more_often(world):
    root, repeated = world
    assert _run(root) == 0
    report = json.loads((root / "r.json").read_text())
    assert report["kind"] == "exposure-audit/memorization" and report["schema"] == 1
    assert report["settings"]["token_unit"] == "character"
    by = {b["copies"]: b for b in report["discoverable"]["by_copies"]}
    assert by["more"]["records"] == 6 and by["1"]["records"] == 120
    assert by["more"]["exact_match_rate"] >= 0.8
    assert by["1"]["exact_match_rate"] <= 0.1
    prob = {b["copies"]: b for b in report["probabilistic"]["by_copies"]}
    assert prob["more"]["extractable_fraction"]["1000"] >= prob["1"]["extractable_fraction"]["1000"]
    attacks = report["mia"]["attacks"]
    assert set(attacks) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    for a in attacks.values():
        assert set(a) >= {"auc", "auc_ci", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "roc"}
        assert a["auc_ci"][0] <= a["auc"] <= a["auc_ci"][1]
    assert report["mia"]["members"] == report["mia"]["non_members"] == 120
    rows = report["records"]
    assert all(len(r["sha256"]) == 64 and "text" not in r for r in rows)
    text = (root / "r.html").read_text()
    assert "<svg" in text and "min-k%++" in text
    assert 'tests="5"' in (root / "r.xml").read_text()
    # --reveal puts the texts in; the repeated lines are the ones extracted
    assert _run(root, "--reveal", "--records", "200", out="rev") == 0
    rows = json.loads((root / "rev.json").read_text())["records"]
    extracted = {r["text"] for r in rows if r["set"] == "member" and r["exact_match"]}
    assert extracted & repeated


def test_gates_exit_1_only_when_crossed(world):
    root, _ = world
    assert _run(root, "--fail-above-extractable", "0.01", out="g1") == 1
    assert "failure" in (root / "g1.xml").read_text()
    assert _run(root, "--fail-above-extractable", "0.9", "--fail-above-auc", "1.0", out="g2") == 0
    assert _run(root, "--fail-above-auc", "0.0", out="g3") == 1


def test_records_and_seed_draw_a_subset(world):
    root, _ = world
    assert _run(root, "--records", "20", "--seed", "3", out="s") == 0
    report = json.loads((root / "s.json").read_text())
    assert report["discoverable"]["records"] == 20 and report["mia"]["members"] == 20


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prefix-tokens", "400"], "shorter than"),
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--temperature", "0"], "--greedy"),
        (["--temperature", "-1"], "--greedy"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(world, capsys, extra, message):
    root, _ = world
    out = root / "bad.json"
    code = main(
        [str(a) for a in ["memorization", "--model", root / "model", "--data", root / "data", "--json", out, *extra]]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not out.exists()


def test_members_equal_to_non_members_is_refused(world, capsys):
    root, _ = world
    train = root / "data" / "train.txt"
    copy = root / "copy.txt"
    copy.write_bytes(train.read_bytes())
    for other in (train, copy):
        code = main(
            ["memorization", "--model", str(root / "model"), "--members", str(train), "--non-members", str(other)]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "same data" in err[0]


def test_members_and_non_members_files(world):
    root, _ = world
    args = ["memorization", "--model", root / "model", "--members", root / "data" / "train.txt"]
    args += ["--non-members", root / "data" / "valid.txt", "--prefix-tokens", "8", "--suffix-tokens", "8", "-q"]
    args += ["--json", root / "f.json", "--reference", root / "model", "--records", "30"]
    assert main([str(a) for a in args]) == 0
    report = json.loads((root / "f.json").read_text())
    ref = report["mia"]["attacks"]["reference"]
    assert ref["auc"] == 0.5  # the model as its own reference: every score is 0


def test_audit_runs_a_memorization_section(tmp_path, capsys):
    from tests.conftest import make_corpus

    make_corpus(tmp_path / "corpus.txt", lines=300)
    cfg = tmp_path / "mem.yaml"
    cfg.write_text(
        f"corpus: {tmp_path / 'corpus.txt'}\n"
        "insert:\n  formats: ['the pin is {d:4} ok']\n  schedule: [0, 16]\n  per_count: 1\n"
        "model:\n  hidden: 32\n  layers: 1\n  embedding: 8\n"
        "train:\n  epochs: 2\n  seq_len: 40\n  batch_size: 16\n"
        "extract:\n  enabled: false\n"
        "memorization:\n  enabled: true\n  prefix_tokens: 8\n  suffix_tokens: 8\n  fail_above_extractable: 1.0\n"
    )
    assert main(["audit", str(cfg), "--out", str(tmp_path / "run"), "-q"]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    mem = json.loads((tmp_path / "run" / "memorization.json").read_text())
    assert report["memorization"]["exact_match_rate"] == mem["discoverable"]["exact_match_rate"]
    assert set(report["memorization"]["auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    assert (tmp_path / "run" / "memorization.html").is_file()
    # the canary planted 16 times is one record with 16 copies
    assert any(b["copies"] == "5-16" for b in mem["discoverable"]["by_copies"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("fail_above_extractable: 1.0", "top_p: 2.0"))
    assert main(["audit", str(bad), "--out", str(tmp_path / "run2"), "-q"]) == 2
    assert "memorization: --top-p" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()
