import json

import pytest

from exposure_audit.config import InsertConfig
from exposure_audit.data.corpus import DEFAULT_CORPUS, default_corpus_text, scan
from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.data.pipeline import insert_folder
from exposure_audit.errors import AuditError

from .conftest import make_corpus


def test_default_corpus_is_cpython_reference_text():
    text = default_corpus_text()
    assert len(text) > 300_000
    assert "The ``if`` statement" in text or "if_stmt" in text
    assert scan(DEFAULT_CORPUS).lines > 5000


def _insert(tmp_path, name, corpus, **kw):
    out = tmp_path / name
    out.mkdir()
    cfg = InsertConfig(formats=["my pin is {d:6}", "code {[ACGT]:5}"], schedule=[0, 1, 3, 5], per_count=2)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return out, insert_folder(out, corpus, cfg, seed=11)


def test_insertion_places_each_canary_n_times_at_its_positions(tmp_path):
    corpus = tmp_path / "c.txt"
    original = make_corpus(corpus, lines=500).splitlines()
    out, manifest = _insert(tmp_path, "a", corpus)
    train = (out / "train.txt").read_text().split("\n")[:-1]
    valid = (out / "valid.txt").read_text().split("\n")[:-1]
    assert len(manifest.canaries) == 2 * 4 * 2
    for c in manifest.canaries:
        assert train.count(c.text) == c.insertions
        assert [i for i, line in enumerate(train) if line == c.text] == c.positions
        assert c.text not in valid  # validation holds no canary
        assert Format.parse(c.format).secret_of(c.text) == c.secret
    # controls exist and are never inserted
    assert any(c.insertions == 0 for c in manifest.canaries)
    # the rest is exactly the corpus, split in blocks, order kept
    canary_texts = {c.text for c in manifest.canaries}
    body = [line for line in train if line not in canary_texts]
    assert sorted(body + valid) == sorted(original)
    assert body == [line for line in original if line in set(body)]
    assert 0 < len(valid) < len(original) / 4


def test_same_seed_gives_byte_identical_outputs(tmp_path):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus)
    a, _ = _insert(tmp_path, "a", corpus)
    b, _ = _insert(tmp_path, "b", corpus)
    for name in ("train.txt", "valid.txt", "canaries.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_secrets_are_distinct_within_a_format(tmp_path):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus, lines=1000)
    _, manifest = _insert(tmp_path, "a", corpus, per_count=20)
    for fmt in ("my pin is {d:6}", "code {[ACGT]:5}"):
        secrets = [c.secret for c in manifest.canaries if c.format == fmt]
        assert len(secrets) == len(set(secrets)) == 80


def test_corpus_too_small(tmp_path):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus, lines=10)
    with pytest.raises(AuditError, match="too small"):
        _insert(tmp_path, "a", corpus)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"\n\n  \n", "empty"),
        (b"abc\x00def", "binary.*offset 3"),
        (b"ok line\n\xff\xfe bad", "UTF-8.*offset 8"),
    ],
)
def test_bad_corpora(tmp_path, data, match):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(data)
    with pytest.raises(AuditError, match=match):
        _insert(tmp_path, "a", corpus)


def test_manifest_round_trip_and_tamper_detection(tmp_path):
    corpus = tmp_path / "c.txt"
    make_corpus(corpus)
    out, manifest = _insert(tmp_path, "a", corpus)
    again = Manifest.read(out / "canaries.json")
    assert again.to_json() == manifest.to_json()
    data = json.loads((out / "canaries.json").read_text())
    data["canaries"][0]["insertions"] += 1
    (out / "bad.json").write_text(json.dumps(data))
    with pytest.raises(AuditError, match="sha256"):
        Manifest.read(out / "bad.json")
    data = json.loads((out / "canaries.json").read_text())
    data["schema"] = 99
    (out / "bad.json").write_text(json.dumps(data))
    with pytest.raises(AuditError, match="schema"):
        Manifest.read(out / "bad.json")
    (out / "bad.json").write_text((out / "canaries.json").read_text()[:200])
    with pytest.raises(AuditError, match="JSON"):
        Manifest.read(out / "bad.json")
