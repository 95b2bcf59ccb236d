"""The bad-input catalogue: every command against malformed inputs.

Each case must exit 2 with exactly one `error: ...` line on stderr, no traceback, and leave
no output file or folder behind (not even a hidden partial one).
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exposure_audit.cli import main
from exposure_audit.config import config_from_dict
from exposure_audit.data.manifest import Manifest
from exposure_audit.errors import AuditError

from .conftest import make_data

TINY = [
    "--hidden",
    "12",
    "--layers",
    "1",
    "--embedding",
    "8",
    "--epochs",
    "1",
    "--seq-len",
    "40",
    "--batch-size",
    "16",
    "-q",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_data(root, lines=400, schedule="0,1,4")
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "model"), *TINY]) == 0
    manifest = json.loads((root / "data" / "canaries.json").read_text())
    config = json.loads((root / "model" / "config.json").read_text())
    files = {
        "empty.txt": b"",
        "binary.bin": bytes(range(256)) * 8,
        "latin1.txt": "caf\xe9 au lait\n".encode("latin-1"),
        "bad.yaml": b"train:\n  epoch: 3\n",
        "types.yaml": b"train:\n  epochs: '3'\n",
        "huge.yaml": b"insert:\n  per_count: 1000000000000\n",
        "empty.json": b"",
        "notjson.json": b"{ nope",
        "truncated.json": (root / "data" / "canaries.json").read_bytes()[:300],
        "schema2.json": json.dumps({**manifest, "schema": 2}).encode(),
        "nocanaries.json": json.dumps({k: v for k, v in manifest.items() if k != "canaries"}).encode(),
        "wrongtype.json": json.dumps(
            {**manifest, "canaries": [{**manifest["canaries"][0], "insertions": "3"}]}
        ).encode(),
        "a_file": b"x",
        "notjson.jsonl": b'{"text": "fine"}\n{"text": nope}\n',
        "nofield.jsonl": b'{"text": "fine"}\n{"text": "fine"}\n{"body": "no text field"}\n',
        "nonstring.jsonl": b'{"text": "fine"}\n{"text": 42}\n',
        "nocolumn.csv": b"id,body\n1,hello\n",
        "ragged.csv": b"id,text\n1,hello\n2,hi,extra\n",
        "latin1.jsonl": b'{"text": "caf\xe9"}\n',
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    models = {
        "m_truncated": {
            "config.json": (root / "model" / "config.json").read_bytes(),
            "model.safetensors": (root / "model" / "model.safetensors").read_bytes()[:64],
        },
        "m_version": {
            "config.json": json.dumps({**config, "format_version": 9}).encode(),
            "model.safetensors": (root / "model" / "model.safetensors").read_bytes(),
        },
        "m_noarch": {
            "config.json": json.dumps({k: v for k, v in config.items() if k != "architecture"}).encode(),
            "model.safetensors": (root / "model" / "model.safetensors").read_bytes(),
        },
        "m_badjson": {"config.json": b"{", "model.safetensors": b""},
        "m_noweights": {"config.json": (root / "model" / "config.json").read_bytes()},
    }
    (root / "empty_dir").mkdir()
    (root / "binary_dir").mkdir()
    (root / "binary_dir" / "a.bin").write_bytes(bytes(range(256)))
    (root / "binary_dir" / "b.dat").write_bytes(b"\x00\x01")
    for name, content in models.items():
        (root / name).mkdir()
        for fname, data in content.items():
            (root / name / fname).write_bytes(data)
    return root


def cases():
    ins = ["insert", "--out", "{root}/o", "-q", "--corpus"]
    meas = ["measure", "--model", "{root}/model", "-q", "--canaries"]
    good_meas = ["measure", "--model", "{root}/model", "--canaries", "{root}/data/canaries.json", "-q"]
    return [
        # insert: corpora
        ([*ins, "{root}/missing.txt"], "does not exist"),
        ([*ins, "{root}/empty.txt"], "empty"),
        ([*ins, "{root}/binary.bin"], "binary"),
        ([*ins, "{root}/latin1.txt"], "not UTF-8"),
        ([*ins, "{root}/empty_dir"], "empty_dir is empty"),
        ([*ins, "{root}/binary_dir"], "holds no UTF-8 text files"),
        ([*ins, "{root}/notjson.jsonl"], "line 2 is not JSON"),
        ([*ins, "{root}/nofield.jsonl"], "line 3: no field 'text'"),
        ([*ins, "{root}/nonstring.jsonl"], "line 2: field 'text' is a number, not a string"),
        ([*ins, "{root}/latin1.jsonl"], "line 1 is not UTF-8"),
        ([*ins, "{root}/nocolumn.csv"], "no column 'text' (columns: id, body)"),
        ([*ins, "{root}/ragged.csv"], "row 2 (line 3): 3 fields, the header has 2"),
        ([*ins, "{root}/corpus.txt", "--text-field", "body"], "--text-field applies to JSONL"),
        ([*ins, "{root}/corpus.txt", "--text-column", "body"], "--text-column applies to CSV"),
        ([*ins, "{root}/corpus.txt", "--placement", "record"], "--placement record needs records"),
        ([*ins, "{root}/nofield.jsonl", "--text-column", "body"], "--text-column applies to CSV"),
        ([*ins, "{root}/corpus.txt", "--corpus-format", "xml"], "'--corpus-format': 'xml' is not one of"),
        ([*ins, "{root}/corpus.txt", "--format", "pin {d:0}"], "length"),
        ([*ins, "{root}/corpus.txt", "--format", "pin {d:99999}"], "length"),
        ([*ins, "{root}/corpus.txt", "--format", "pin {z:3}"], "unknown hole class"),
        ([*ins, "{root}/corpus.txt", "--format", "pin {d:3"], "unclosed"),
        ([*ins, "{root}/corpus.txt", "--per-count", "0"], "per_count"),
        ([*ins, "{root}/corpus.txt", "--per-count", "1000000000000"], "per_count"),
        ([*ins, "{root}/corpus.txt", "--schedule", ""], "schedule"),
        ([*ins, "{root}/corpus.txt", "--schedule", "0,1,100000"], "too small"),
        ([*ins, "{root}/corpus.txt", "--config", "{root}/bad.yaml"], "unknown key 'train.epoch'"),
        ([*ins, "{root}/corpus.txt", "--config", "{root}/types.yaml"], "train.epochs: expected an integer"),
        ([*ins, "{root}/corpus.txt", "--config", "{root}/huge.yaml"], "insert.per_count"),
        ([*ins, "{root}/corpus.txt", "--config", "{root}/missing.yaml"], "does not exist"),
        ([*ins, "{root}/corpus.txt", "--config", "{root}"], "folder"),
        (["insert", "--corpus", "{root}/corpus.txt", "--out", "{root}/a_file", "-q"], "not a folder"),
        (["insert", "--corpus", "{root}/corpus.txt", "--out", "{root}/nowhere/o", "-q"], "does not exist"),
        (["insert", "--corpus", "{root}/corpus.txt", "--out", "{root}/data", "-q"], "--force"),
        # train
        (["train", "--data", "{root}/missing", "--out", "{root}/o", *TINY], "does not exist"),
        (["train", "--data", "{root}/a_file", "--out", "{root}/o", *TINY], "does not exist"),
        (["train", "--data", "{root}/data", "--out", "{root}/o", "--epochs", "-1"], "train.epochs"),
        (["train", "--data", "{root}/data", "--out", "{root}/o", "--hidden", "0"], "model.char_lstm.hidden"),
        (["train", "--data", "{root}/data", "--out", "{root}/o", "--dropout", "2"], "model.dropout"),
        (["train", "--data", "{root}/data", "--out", "{root}/model", *TINY], "--force"),
        (["train", "--data", "{root}/data"], "--out"),
        # measure: manifests
        ([*meas, "{root}/missing.json"], "does not exist"),
        ([*meas, "{root}/empty.json"], "not valid JSON"),
        ([*meas, "{root}/notjson.json"], "not valid JSON"),
        ([*meas, "{root}/truncated.json"], "not valid JSON"),
        ([*meas, "{root}/binary.bin"], "not UTF-8"),
        ([*meas, "{root}/schema2.json"], "schema"),
        ([*meas, "{root}/nocanaries.json"], "sha256"),
        ([*meas, "{root}/wrongtype.json"], "sha256"),
        ([*meas, "{root}"], "folder"),
        # measure: checkpoints
        (["measure", "--model", "{root}/m_truncated", "--canaries", "{root}/data/canaries.json"], "sha256"),
        (["measure", "--model", "{root}/m_version", "--canaries", "{root}/data/canaries.json"], "version"),
        (["measure", "--model", "{root}/m_noarch", "--canaries", "{root}/data/canaries.json"], "sha256"),
        (["measure", "--model", "{root}/m_badjson", "--canaries", "{root}/data/canaries.json"], "not valid JSON"),
        (["measure", "--model", "{root}/m_noweights", "--canaries", "{root}/data/canaries.json"], "missing"),
        (["measure", "--model", "{root}/a_file", "--canaries", "{root}/data/canaries.json"], "not a checkpoint folder"),
        # measure: options and outputs
        ([*good_meas, "--method", "fastest"], "'--method': 'fastest' is not one of"),
        ([*good_meas, "--max-steps", "0"], "'--max-steps'"),
        ([*good_meas, "--samples", "-5"], "'--samples'"),
        ([*good_meas, "--method", "enumerate", "--max-steps", "10"], "over the budget of 10 model steps"),
        ([*good_meas, "--fail-above", "nan"], "fail_above"),
        ([*good_meas, "--json", "{root}"], "folder"),
        ([*good_meas, "--json", "{root}/nowhere/r.json"], "does not exist"),
        ([*good_meas, "--json", "{root}/a_file"], "--force"),
        # audit and extract
        (["audit", "{root}/bad.yaml", "--out", "{root}/o"], "unknown key 'train.epoch'"),
        (["audit", "{root}/missing.yaml", "--out", "{root}/o"], "does not exist"),
        (["extract", "--model", "{root}/model", "--format", "pin {d:3}", "--top", "0"], "--top"),
        (["extract", "--model", "{root}/m_truncated", "--format", "pin {d:3}"], "sha256"),
        # usage
        (["frobnicate"], "No such command"),
        (["measure", "--model", "{root}/model"], "Missing option"),
        (["train", "--epochs", "many", "--data", "x", "--out", "y"], "is not a valid integer"),
    ]


def test_bad_input_catalogue(world, capsys):
    before = sorted(p.name for p in world.iterdir())
    for args, match in cases():
        argv = [a.replace("{root}", str(world)) for a in args]
        code = main(argv)
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert match in lines[0], (argv, lines[0])
        assert sorted(p.name for p in world.iterdir()) == before, (argv, "left files behind")


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=20,
    )
)
def test_manifest_reader_never_crashes(data):
    try:
        Manifest.from_json(data)
    except AuditError:
        pass


keys = st.sampled_from(
    ["seed", "corpus", "insert", "model", "train", "measure", "formats", "epochs", "hidden", "schedule", "x"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=12),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=4),
        max_leaves=20,
    )
)
def test_config_loader_never_crashes(data):
    try:
        config_from_dict(data)
    except AuditError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["epochs", "batch_size", "learning_rate", "dropout", "max_chars", "x"]),
        st.none() | st.integers(-5, 10**12) | st.floats() | st.text(max_size=4),
        max_size=3,
    )
)
def test_config_sections_never_crash(section):
    for name in ("train", "model", "measure", "insert"):
        try:
            config_from_dict({name: section})
        except AuditError:
            pass
