"""Corpora in the user's own format: JSONL (text field and chat), CSV/TSV, Parquet, folders.

insert writes train and valid in the input's format (untouched JSONL records byte for byte),
the manifest says where every canary went, and train reads every format insert writes."""

import csv
import hashlib
import json
import random
import sys

import pytest

from exposure_audit.cli import main
from exposure_audit.data.corpus import iter_training_text
from exposure_audit.data.manifest import Manifest
from exposure_audit.data.records import split_lines

from .conftest import make_data

WORDS = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words", "every", "day"]
TINY_TRAIN = ["--hidden", "12", "--layers", "1", "--embedding", "8", "--epochs", "1", "--seq-len", "40", "-q"]


def _sentence(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))


def write_corpus(root, kind, n=300, seed=0):
    """A small corpus of ``n`` records in format ``kind``; returns its path."""
    rng = random.Random(seed)
    if kind == "jsonl":
        path = root / "c.jsonl"
        # keys in an unusual order and spacing: untouched records must come back byte for byte
        lines = [
            f'{{"id": {i},  "meta": {{"src": "w\\u00e9b", "k": [1,2]}}, "text": {json.dumps(_sentence(rng) + chr(10) + _sentence(rng))}}}'
            for i in range(n)
        ]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif kind == "chat":
        path = root / "chat.jsonl"
        with open(path, "w") as fh:
            for _ in range(n):
                turns = [{"role": "user", "content": _sentence(rng)}, {"role": "assistant", "content": _sentence(rng)}]
                fh.write(json.dumps({"messages": turns}) + "\n")
    elif kind in ("csv", "tsv"):
        path = root / f"c.{kind}"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t" if kind == "tsv" else ",", lineterminator="\n")
            w.writerow(["id", "text", "label"])
            for i in range(n):
                w.writerow([i, _sentence(rng) + "\n" + _sentence(rng), rng.choice("xy")])
    elif kind == "folder":
        path = root / "docs"
        for i in range(n // 10):
            sub = path / ("a" if i % 2 else "b")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"doc{i:03d}.md").write_text("\n".join(_sentence(rng) for _ in range(8)) + "\n")
        (path / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")  # binary: left out
    elif kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        path = root / "c.parquet"
        rows = [{"id": i, "text": _sentence(rng) + "\n" + _sentence(rng)} for i in range(n)]
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise AssertionError(kind)
    return path


def insert(root, corpus, out="data", *extra):
    argv = ["insert", "--corpus", corpus, "--out", root / out, "--format", "pin {d:3}", "--schedule", "0,1,4"]
    assert main([str(a) for a in [*argv, *extra, "-q"]]) == 0
    return root / out


def test_jsonl_records_keep_every_untouched_record_byte_for_byte(tmp_path):
    corpus = write_corpus(tmp_path, "jsonl")
    data = insert(tmp_path, corpus)
    assert sorted(p.name for p in data.iterdir()) == ["canaries.json", "train.jsonl", "valid.jsonl"]
    original = corpus.read_bytes().splitlines(keepends=True)
    train = (data / "train.jsonl").read_bytes().splitlines(keepends=True)
    valid = (data / "valid.jsonl").read_bytes().splitlines(keepends=True)
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data == {"format": "jsonl", "field": "text", "placement": "record"}
    canary_records = set()
    for c in manifest.canaries:
        assert [loc["record"] for loc in c.locations] == c.positions and len(c.positions) == c.insertions
        for r in c.positions:
            assert json.loads(train[r]) == {"text": c.text}
            canary_records.add(r)
    body = [line for i, line in enumerate(train) if i not in canary_records]
    assert len(canary_records) == sum(c.insertions for c in manifest.canaries)
    # every original record is in train or valid, unchanged and in order
    assert sorted(body + valid) == sorted(original)
    assert body == [line for line in original if line in set(body)]
    assert 0 < len(valid) < len(original) / 4
    assert manifest.train["sha256"] == hashlib.sha256((data / "train.jsonl").read_bytes()).hexdigest()
    assert manifest.corpus["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()


def test_jsonl_line_placement_puts_canaries_inside_records_at_line_boundaries(tmp_path):
    corpus = write_corpus(tmp_path, "jsonl")
    data = insert(tmp_path, corpus, "data", "--placement", "line")
    original = {json.loads(line)["id"]: json.loads(line) for line in corpus.read_text().splitlines()}
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data["placement"] == "line"
    assert all(r["id"] in original for r in train)  # no new records
    touched = set()
    for c in manifest.canaries:
        for loc in c.locations:
            rec = train[loc["record"]]
            assert split_lines(rec["text"])[0][loc["line"]] == c.text
            assert rec["meta"] == original[rec["id"]]["meta"]  # other fields kept
            touched.add(loc["record"])
    canaries = {c.text for c in manifest.canaries}
    for i, rec in enumerate(train):
        kept = [line for line in rec["text"].split("\n") if line not in canaries]
        assert "\n".join(kept) == original[rec["id"]]["text"]
        assert (i in touched) == (rec["text"] != original[rec["id"]]["text"])


def test_chat_jsonl_is_detected_and_canaries_are_one_turn_chats(tmp_path):
    corpus = write_corpus(tmp_path, "chat")
    data = insert(tmp_path, corpus)
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data["field"] == "messages"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    c = next(c for c in manifest.canaries if c.insertions)
    assert train[c.positions[0]] == {"messages": [{"role": "user", "content": c.text}]}
    text = "".join(iter_training_text(data))
    assert text.count(f"\n{c.text}\n") == c.insertions  # each message on its own lines
    # inside the chats: a line of one message's content, the location names the message
    inside = insert(tmp_path, corpus, "inside", "--placement", "line")
    train = [json.loads(line) for line in (inside / "train.jsonl").read_text().splitlines()]
    for c in Manifest.read(inside / "canaries.json").canaries:
        for loc in c.locations:
            content = train[loc["record"]]["messages"][loc["message"]]["content"]
            assert content.split("\n")[loc["line"]] == c.text


@pytest.mark.parametrize("kind", ["csv", "tsv"])
def test_tables_come_back_as_tables(tmp_path, kind):
    corpus = write_corpus(tmp_path, kind)
    data = insert(tmp_path, corpus)
    delimiter = "\t" if kind == "tsv" else ","
    with open(data / f"train.{kind}", newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    with open(corpus, newline="") as fh:
        original = list(csv.reader(fh, delimiter=delimiter))
    assert rows[0] == original[0] == ["id", "text", "label"]
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data == {"format": kind, "column": "text", "placement": "record"}
    inserted = {r for c in manifest.canaries for r in c.positions}
    for c in manifest.canaries:
        for r in c.positions:
            assert rows[1 + r] == ["", c.text, ""]
    body = [row for i, row in enumerate(rows[1:]) if i not in inserted]
    assert all(row in original[1:] for row in body) and len(body) == manifest.train["records"] - len(inserted)


def test_folder_in_folder_out_each_file_kept_together(tmp_path):
    corpus = write_corpus(tmp_path, "folder")
    data = insert(tmp_path, corpus)
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data == {"format": "folder", "placement": "line"}
    assert manifest.corpus["files_skipped"] == 1  # logo.png
    out_files = sorted(p.relative_to(data / "train").as_posix() for p in (data / "train").rglob("*") if p.is_file())
    out_files += sorted(p.relative_to(data / "valid").as_posix() for p in (data / "valid").rglob("*") if p.is_file())
    in_files = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.md"))
    assert sorted(out_files) == in_files  # every text file once, in train or valid, under its own path
    for c in manifest.canaries:
        for loc in c.locations:
            assert (data / "train" / loc["file"]).read_text().split("\n")[loc["line"]] == c.text
    assert not any(c.text in p.read_text() for c in manifest.canaries for p in (data / "valid").rglob("*.md"))


def test_parquet_round_trip(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    corpus = write_corpus(tmp_path, "parquet")
    data = insert(tmp_path, corpus)
    table = pq.read_table(data / "train.parquet")
    assert table.schema.names == ["id", "text"]
    rows = table.to_pylist()
    manifest = Manifest.read(data / "canaries.json")
    for c in manifest.canaries:
        for r in c.positions:
            assert rows[r] == {"id": None, "text": c.text}


@pytest.mark.parametrize("kind", ["jsonl", "chat", "csv", "folder"])
def test_insert_then_train_end_to_end_in_every_format(tmp_path, kind):
    corpus = write_corpus(tmp_path, kind)
    data = insert(tmp_path, corpus)
    again = insert(tmp_path, corpus, "again")
    for p in data.rglob("*"):  # same seed, same bytes
        if p.is_file():
            assert (again / p.relative_to(data)).read_bytes() == p.read_bytes()
    manifest = Manifest.read(data / "canaries.json")
    text = "".join(iter_training_text(data))
    for c in manifest.canaries:
        assert text.count("\n" + c.text + "\n") == c.insertions
        assert c.text not in "".join(iter_training_text(data, "valid"))
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "model"), *TINY_TRAIN]) == 0
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["data"]["train_sha256"] == manifest.train["sha256"]
    assert main(["measure", "--model", str(tmp_path / "model"), "--canaries", str(data / "canaries.json"), "-q"]) == 0


def test_text_corpora_are_inserted_exactly_as_before(tmp_path):
    """The text path is today's, byte for byte (the README's demo figures depend on it)."""
    data = make_data(tmp_path, lines=400, schedule="0,1,4")
    digest = {n: hashlib.sha256((data / n).read_bytes()).hexdigest() for n in ("train.txt", "valid.txt")}
    assert digest == {
        "train.txt": "100b1c959b2b1eadbf442540395d41f8bcb3d64fe68b5fdd8bd42ddf2d103005",
        "valid.txt": "5bda38c86b0358dc33ab43265e23034ce0ab7e840aa6872150349643565a2d5d",
    }
    m = json.loads((data / "canaries.json").read_text())
    assert "data" not in m and all("locations" not in c for c in m["canaries"])
    m["corpus"]["source"] = "corpus.txt"
    del m["sha256"]
    body = json.dumps(m, sort_keys=True).encode()
    assert hashlib.sha256(body).hexdigest() == "fb2305ef3b8350289a47592a2c7a88543bbe5287493f96188abad7b4aabaca2f"


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    assert main(["insert", "--corpus", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "pip install 'exposure-audit[parquet]'" in err and "\n" not in err
    assert not (tmp_path / "o").exists() and [p.name for p in tmp_path.iterdir()] == ["c.parquet"]


@pytest.mark.parametrize(
    "kind, placement", [("jsonl", "record"), ("chat", "line"), ("csv", "line"), ("folder", None), ("parquet", None)]
)
def test_spec_reads_itself_back_from_the_manifest(tmp_path, kind, placement):
    """The manifest's ``data`` entry is the Spec insert read the corpus with; data_spec gives it back."""
    from exposure_audit.data.corpus import data_path, data_spec
    from exposure_audit.data.records import Spec, detect_chat, make_spec

    corpus = write_corpus(tmp_path, kind)
    data = insert(tmp_path, corpus, "data", *(["--placement", placement] if placement else []))
    used = detect_chat(corpus, make_spec(corpus, None, None, None, placement))
    manifest = Manifest.read(data / "canaries.json")
    assert manifest.data == used.to_manifest()
    assert Spec.from_manifest(manifest.data) == used == data_spec(data)
    assert data_path(data, "train").exists()
    # each location is the one its format's writer gives: chat names the message, a folder the file
    locs = [loc for c in manifest.canaries for loc in c.locations]
    assert locs and all(loc["record"] < manifest.train["records"] for loc in locs)
    keys = {"line": {"record", "line"}, "chat": {"record", "message", "line"}, "folder": {"record", "file", "line"}}
    expect = (
        keys["chat"] if used.chat and used.placement == "line" else keys["folder"] if kind == "folder" else keys["line"]
    )
    assert all(set(loc) == expect for loc in locs)
    if used.placement == "record":
        assert all(loc["line"] == 0 for loc in locs)


def test_spec_of_a_text_folder_is_plain_text(tmp_path):
    from exposure_audit.data.corpus import data_spec
    from exposure_audit.data.records import Spec

    data = make_data(tmp_path, lines=200, schedule="0,1")
    assert Manifest.read(data / "canaries.json").data is None
    assert data_spec(data) == Spec.from_manifest(None) == Spec(format="txt")
    assert data_spec(tmp_path / "no-manifest-here") == Spec(format="txt")
