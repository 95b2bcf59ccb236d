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
