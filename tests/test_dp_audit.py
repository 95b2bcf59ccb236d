"""dp-audit end to end on tiny models: the broken (no-noise) "DP" run is flagged, the bound is
reproducible for the seed, and bad inputs are one-line errors that write nothing."""

import json

import pytest

from exposure_audit.audits.privacy_audit import minimum_canaries
from exposure_audit.cli import main
from exposure_audit.data.manifest import Manifest

from .conftest import make_corpus

# A tiny world where memorization is quick: 60 short corpus lines, 100 canaries of which about
# half are planted, a 1x48 LSTM, big batches (DP-SGD's per-example gradients cost per step).
TINY = """
seed: {seed}
corpus: {corpus}
model: {{char_lstm: {{hidden: 48, layers: 1, embedding: 16}}}}
train:
  epochs: {epochs}
  batch_size: 64
  seq_len: 20
  learning_rate: 0.02
  threads: 2
{dp}
audit: {{canaries: 100, format: "pin {{d:6}}"}}
"""
# the claim of a noisy run (target epsilon 0.5 per window), trained without its noise
BROKEN = "  dp: {enabled: true, target_epsilon: 0.25, max_grad_norm: 1.0, broken_no_noise: true}"


def write_config(root, name, *, dp="", epochs=20, seed=0, extra=""):
    path = root / name
    path.write_text(TINY.format(seed=seed, corpus=root / "corpus.txt", epochs=epochs, dp=dp) + extra)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dpaudit")
    make_corpus(root / "corpus.txt", lines=60)
    make_corpus(root / "corpus200.txt", lines=200)  # enough lines for a validation block (audit reads it)
    return root


def test_no_noise_dp_run_is_flagged(world, capsys):
    cfg = write_config(world, "broken.yaml", dp=BROKEN)
    out = world / "broken"
    assert main(["dp-audit", str(cfg), "--out", str(out), "--fail-if-violated", "-q"]) == 1
    result = json.loads((out / "dp_audit.json").read_text())
    assert result["violated"] and result["claim"]["broken_no_noise"]
    assert result["claim"]["group_size"] == 2  # "pin dddddd\n" is shorter than a window
    assert result["bounds"]["eps_lower"] > result["claim"]["epsilon"] > result["claim"]["per_window_epsilon"]
    text = capsys.readouterr().out
    assert "claimed (accountant)" in text and "empirical lower bound" in text and "VIOLATED" in text
    for name in ("roc.png", "scores.png", "dp_audit.html", "data/canaries.json", "model/config.json"):
        assert (out / name).is_file()
    # the training text alone does not say which canaries were planted; the manifest does
    manifest = Manifest.read(out / "data" / "canaries.json")
    train = (out / "data" / "train.txt").read_text()
    assert all((c.text in train) == c.planted for c in manifest.canaries)
    assert sum(c.planted for c in manifest.canaries) == result["planted"]
    # outputs are never replaced without --force
    assert main(["dp-audit", str(cfg), "--out", str(out), "-q"]) == 2
    assert "exists; use --force" in capsys.readouterr().err


def test_bound_is_reproducible_for_the_seed(world):
    results = []
    for i, seed in enumerate((3, 3, 4)):
        cfg = write_config(world, f"plain{i}.yaml", epochs=2, seed=seed)
        assert main(["dp-audit", str(cfg), "--out", str(world / f"plain{i}"), "-q"]) == 0
        results.append(json.loads((world / f"plain{i}" / "dp_audit.json").read_text()))
    a, b, c = results
    assert a["claim"]["epsilon"] is None  # not DP-trained: nothing to violate
    assert a["canaries"] == b["canaries"] and a["bounds"] == b["bounds"]
    assert [x["planted"] for x in a["canaries"]] != [x["planted"] for x in c["canaries"]]


def test_audit_section_runs_the_dp_audit_from_audit(world):
    cfg = write_config(world, "both.yaml", epochs=1, extra="insert: {schedule: [0, 1], per_count: 1}\n")
    text = cfg.read_text().replace("audit: {canaries", "audit: {enabled: true, canaries")
    text = text.replace("corpus.txt", "corpus200.txt")
    cfg.write_text(text + "extract: {enabled: false}\nmeasure: {method: estimate, samples: 100}\n")
    out = world / "both"
    assert main(["audit", str(cfg), "--out", str(out), "-q"]) == 0
    assert (out / "report.json").is_file() and (out / "dp-audit" / "dp_audit.json").is_file()


def _fails(capsys, argv, out, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".") and out.name in p.name]


def test_bad_inputs(world, tmp_path, capsys):
    out = tmp_path / "o"
    need = minimum_canaries(1e-5, 0.999)
    cases = [
        ("audit: {canaries: 5, confidence: 0.999}\n", f"the minimum is {need}"),
        ('audit: {canaries: 200, format: "pin {d:2}"}\n', "has only 100 secrets"),
        ("audit: {delta: 1.5}\n", "audit.delta"),
        ("audit: {delta: 0.0}\n", "audit.delta"),
        ("audit: {confidence: 1.0}\n", "audit.confidence"),
        ("train: {dp: {broken_no_noise: true}}\n", "broken_no_noise"),
    ]
    for i, (yaml_text, match) in enumerate(cases):
        cfg = tmp_path / f"bad{i}.yaml"
        cfg.write_text(yaml_text)
        _fails(capsys, ["dp-audit", str(cfg), "--out", str(out)], out, match)
    # a manifest without planted flags (an ordinary insert folder) cannot be audited
    data = tmp_path / "data"
    argv = ["insert", "--corpus", str(world / "corpus.txt"), "--out", str(data), "--format", "pin {d:6}"]
    assert main([*argv, "--schedule", "0,1", "--per-count", "10", "-q"]) == 0
    cfg = write_config(world, "plainbad.yaml", epochs=1)
    _fails(capsys, ["dp-audit", str(cfg), "--data", str(data), "--out", str(out)], out, "no planted flags")


def test_new_token_canaries_in_their_own_windows_are_checked_per_window(world, capsys):
    """new-token canaries on a tiny transformer trained by broken DP-SGD: each planted canary is
    in one window, so the claim is the per-window epsilon itself, and the fresh tokens separate
    members from non-members far better than random canaries do."""
    cfg = world / "newtok.yaml"
    cfg.write_text(
        f"seed: 0\ncorpus: {world / 'corpus.txt'}\n"
        "model: {kind: transformer, transformer: {layers: 1, width: 16, heads: 2, context: 32, vocab_size: 280}}\n"
        "train:\n  epochs: 8\n  batch_size: 32\n  seq_len: 20\n  learning_rate: 0.02\n  threads: 2\n"
        f"{BROKEN}\n"
        "audit: {canaries: 100, canary: new-token}\n"
    )
    out = world / "newtok"
    code = main(["dp-audit", str(cfg), "--out", str(out), "-q"])
    result = json.loads((out / "dp_audit.json").read_text())
    assert result["design"]["canary"] == "new-token" and result["design"]["one_window"]
    assert result["design"]["fresh_tokens"] == 100
    c = result["claim"]
    assert c["group_size"] == 1 and c["one_window"] and c["epsilon"] == pytest.approx(c["per_window_epsilon"])
    b = result["bounds"]
    assert b["tpr_at_fpr"][0]["tpr"] > 0.5  # membership alone separates them
    assert b["eps_lower"] > c["epsilon"] and result["violated"] and code == 0  # flagged (no --fail-if-violated)
    assert b["fdp_eps_delta"]["eps"] >= b["one_run"]["eps"]
    assert "new-token  each planted canary in a window of its own" in capsys.readouterr().out
