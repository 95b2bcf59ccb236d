import dataclasses

import pytest

from exposure_audit.config import AuditConfig, apply_overrides, load_config
from exposure_audit.errors import AuditError


def test_default_yaml_matches_the_built_in_defaults():
    assert load_config("configs/default.yaml") == AuditConfig()


@pytest.mark.parametrize(
    "text, match",
    [
        ("train:\n  epoch: 3\n", "unknown key 'train.epoch'"),
        ("trian: {}\n", "unknown key 'trian'"),
        ("train:\n  epochs: ten\n", "train.epochs: expected an integer"),
        ("train:\n  epochs: true\n", "train.epochs: expected an integer"),
        ("train:\n  epochs: 0\n", "train.epochs: 0 is out of range"),
        ("model:\n  dropout: 1.5\n", "model.dropout"),
        ("insert:\n  formats: ['no hole']\n", r"insert.formats\[0\]"),
        ("insert:\n  schedule: [1, -1]\n", "schedule"),
        ("measure:\n  method: fast\n", "measure.method"),
        ("- a\n- b\n", "mapping"),
        ("train: [\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_key_and_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AuditError, match=match) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_overrides_are_checked_too():
    cfg = apply_overrides(AuditConfig(), {"train.epochs": 3, "seed": None})
    assert cfg.train.epochs == 3 and cfg.seed == 0
    with pytest.raises(AuditError, match="train.epochs"):
        apply_overrides(AuditConfig(), {"train.epochs": -1})


def test_flat_char_lstm_layout_still_loads_with_one_note(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  embedding: 16\n  hidden: 48\n  layers: 1\n  dropout: 0.1\n")
    new = tmp_path / "new.yaml"
    new.write_text("model:\n  dropout: 0.1\n  char_lstm: {embedding: 16, hidden: 48, layers: 1}\n")
    cfg = load_config(old)
    assert cfg == load_config(new)
    assert (cfg.model.char_lstm.embedding, cfg.model.char_lstm.hidden, cfg.model.char_lstm.layers) == (16, 48, 1)
    assert cfg.model.dropout == 0.1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("note: ")  # one line, for the old file only
    assert str(old) in err and "model.char_lstm.hidden" in err and str(new) not in err
    load_config(old)
    assert capsys.readouterr().err == ""  # once per file


def test_char_lstm_section_is_checked_like_any_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  char_lstm: {hidden: 0}\n")
    with pytest.raises(AuditError, match=r"model\.char_lstm\.hidden: 0 is out of range") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text("model:\n  hidden: 0\n")  # the old layout names the key where it lives now
    with pytest.raises(AuditError, match=r"model\.char_lstm\.hidden: 0 is out of range"):
        load_config(path)
    with pytest.raises(AuditError, match="model.kind: 'nope' is not one of char-lstm, transformer"):
        apply_overrides(AuditConfig(), {"model.kind": "nope"})


def test_configs_folder_uses_the_new_layout(capsys):
    from pathlib import Path

    from exposure_audit.data.pipeline import load_sweep

    for path in sorted(Path("configs").glob("*.yaml")):
        if "runs:" in path.read_text():
            load_sweep(path)
        else:
            load_config(path)
    assert "note:" not in capsys.readouterr().err


@dataclasses.dataclass
class FakeSettings:
    width: int = dataclasses.field(default=3, metadata={"range": (1, 9)})


class FakeModel:
    def __init__(self, path):
        self.path = path

    def describe(self):
        return {"kind": "fake", "description": f"fake model at {self.path}"}


@pytest.fixture
def fake_kind():
    """A kind registered by a test alone: no other file knows it."""
    from exposure_audit.models import registry

    calls = []

    def tokenize(model_cfg, pieces, *, chars, fresh="", seed=0):
        from exposure_audit.models.training import Tokenization

        calls.append("tokenize")
        return Tokenization("fake", "symbols", sorted(chars), "fp", lambda text, n: list(range(n)))

    def trainee(model_cfg, tok, *, dp, seq_len):
        calls.append(("trainee", model_cfg.fake.width, tok.unit, seq_len))
        return "a fake trainee"

    kind = registry.register(
        registry.Kind(
            "fake",
            section="fake",
            settings=FakeSettings,
            detect=lambda path: path.suffix == ".fake",
            load=lambda path, *, device, dtype, base: FakeModel(path),
            priority=1,
            tokenize=tokenize,
            trainee=trainee,
            describe=lambda m: f"fake of width {m.fake.width}",
        )
    )
    yield kind, calls
    registry.unregister("fake")


def test_a_kind_registered_in_one_place_is_found_everywhere(fake_kind, tmp_path):
    from exposure_audit.models import load_model, registry
    from exposure_audit.models.training import tokenize, trainee

    kind, calls = fake_kind
    path = tmp_path / "m.fake"
    path.write_text("weights")
    model = load_model(path)
    assert isinstance(model, FakeModel) and model.describe()["description"] == f"fake model at {path}"
    with pytest.raises(AuditError, match="--base applies to PEFT adapter folders only"):
        load_model(path, base=tmp_path)
    assert "fake" in registry.trainable()

    cfg = apply_overrides(AuditConfig(), {"model.kind": "fake", "model.fake.width": 7})
    assert cfg.model.fake == FakeSettings(width=7)
    with pytest.raises(AuditError, match=r"model\.fake\.width: 10 is out of range"):
        apply_overrides(AuditConfig(), {"model.kind": "fake", "model.fake.width": 10})
    assert registry.describe_config(cfg.model) == "fake of width 7"

    tok = tokenize(cfg.model, lambda: iter(["ab\n"]), chars={"a", "b", "\n"})
    assert tok.kind == "fake" and tok.tokens == ["\n", "a", "b"]
    assert trainee(cfg.model, tok, dp=False, seq_len=5) == "a fake trainee"
    assert calls == ["tokenize", ("trainee", 7, "symbols", 5)]


def test_built_in_kinds_are_the_registry_s():
    from exposure_audit.models import registry

    assert registry.trainable() == ("char-lstm", "transformer")
    assert {k.name for k in registry.kinds()} >= {"char-lstm", "transformer", "hf", "peft-lora"}
    cfg = AuditConfig()
    assert registry.describe_config(cfg.model) == "2x200 LSTM"
    tf = apply_overrides(cfg, {"model.kind": "transformer"})
    assert registry.describe_config(tf.model) == "4x128 transformer (bpe tokenizer)"
    with pytest.raises(AuditError, match="model.base: fine-tuning a base model needs model.kind: transformer"):
        apply_overrides(cfg, {"model.base": "somewhere"})
    with pytest.raises(AuditError, match=r"LoRA needs model.kind: transformer \(the char-LSTM has no layers"):
        apply_overrides(cfg, {"model.lora.enabled": True})


def test_cli_choices_are_the_library_s():
    import click

    from exposure_audit import distributed
    from exposure_audit.cli import cli
    from exposure_audit.data import records
    from exposure_audit.models import registry

    def choices(command, name):
        (opt,) = [p for p in cli.commands[command].params if p.name == name]
        assert isinstance(opt.type, click.Choice)
        return tuple(opt.type.choices)

    assert choices("train", "kind") == registry.trainable()
    assert choices("train", "backend") == distributed.BACKENDS
    assert choices("measure", "device") == registry.DEVICES and choices("measure", "dtype") == registry.DTYPES
    assert choices("insert", "corpus_format") == records.FORMATS == choices("scan", "corpus_format")
    assert choices("insert", "placement") == records.PLACEMENTS
    assert registry.kind_for(None, "some/base") == "transformer" and registry.kind_for(None, None) is None
