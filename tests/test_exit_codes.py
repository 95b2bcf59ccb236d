"""Exit codes mean what they say (exposure_audit/errors.py): 1 only for a failed gate.

A damaged model file is bad input (exit 2, one line), never "the gate failed"; an allocation
failure is one line and exit 2; a bug exits 70 with one line naming its traceback file.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from exposure_audit.cli import main
from exposure_audit.errors import EXIT_INTERNAL

from .conftest import CHARS

pytest.importorskip("transformers")

from .hf_models import tiny_model as tiny_hf  # noqa: E402

DAMAGES = ("truncate", "flip", "replace", "link")


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    from exposure_audit.models import save_checkpoint

    root = tmp_path_factory.mktemp("models")
    tiny_hf(root / "hf")
    (root / "lstm").mkdir()
    save_checkpoint(tiny_model, root / "lstm", {"seed": 0})
    (root / "notes.txt").write_text("these are not model weights\n" * 40)
    return root


def damage(folder: Path, name: str, how: str, other: Path, rng: random.Random) -> None:
    path = folder / name
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        buf = bytearray(data)
        for i in rng.sample(range(len(buf)), min(8, len(buf))):
            buf[i] ^= 0xFF
        path.write_bytes(bytes(buf))
    elif how == "replace":  # another file of the folder under this name
        path.write_bytes(other.read_bytes())
    else:  # a link to a file that is no model file at all
        path.unlink()
        path.symlink_to(other.parent.parent / "notes.txt")


def run_extract(model: Path, out: Path, capsys) -> tuple[int, list[str]]:
    code = main(["extract", "--model", str(model), "--format", "pin {d:2}", "--top", "2", "--json", str(out), "-q"])
    _, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("kind", ["hf", "lstm"])
def test_every_damaged_model_file_is_one_line_and_exit_2_or_loads(models, kind, tmp_path, capsys):
    files = sorted(p.name for p in (models / kind).iterdir() if p.is_file())
    assert "model.safetensors" in files and "config.json" in files
    rng = random.Random(0)
    loaded = []
    for name in files:
        for how in DAMAGES:
            case = tmp_path / f"{name}-{how}"
            shutil.copytree(models / kind, case)
            other = case / next(f for f in files if f != name)
            damage(case, name, how, other, rng)
            out = tmp_path / f"{name}-{how}.json"
            code, lines = run_extract(case, out, capsys)
            assert code in (0, 2), (kind, name, how, code, lines)
            assert not any("Traceback" in line for line in lines), (kind, name, how, lines)
            if code == 2:
                assert len(lines) == 1 and lines[0].startswith("error: "), (kind, name, how, lines)
                assert not out.exists(), (kind, name, how, "wrote output on an error")
            else:
                loaded.append((name, how))
    if kind == "lstm":
        # config.json carries the weights' SHA-256 and its own: every damage is caught
        assert loaded == []
    else:
        # harmless: generation_config.json (scoring never generates), and bytes flipped inside the
        # weights' data (other weights: still a model, and finite ones here)
        assert {name for name, how in loaded if how != "flip"} <= {"generation_config.json"}
        assert {name for name, how in loaded} <= {"generation_config.json", "model.safetensors"}


def test_a_bug_exits_70_with_one_line_naming_the_traceback_file(models, monkeypatch, tmp_path, capsys):
    import exposure_audit.data.formats as formats

    def broken(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(formats.Format, "parse", staticmethod(broken))
    code, lines = run_extract(models / "lstm", tmp_path / "x.json", capsys)
    assert code == EXIT_INTERNAL != 1
    assert len(lines) == 1 and lines[0].startswith("error: internal error (ZeroDivisionError: division by zero)")
    saved = Path(lines[0].split("the traceback is in ")[1].split(";")[0])
    try:
        assert "Traceback" in saved.read_text() and "ZeroDivisionError" in saved.read_text()
    finally:
        saved.unlink()
    # --debug prints the traceback itself
    code = main(["--debug", "extract", "--model", str(models / "lstm"), "--format", "pin {d:2}", "-q"])
    err = capsys.readouterr().err
    assert code == EXIT_INTERNAL and "Traceback (most recent call last)" in err and "its traceback is above" in err


def test_running_out_of_memory_is_one_line_and_exit_2(models, monkeypatch, tmp_path, capsys):
    import exposure_audit.data.formats as formats

    def starved(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 9 GB")

    monkeypatch.setattr(formats.Format, "parse", staticmethod(starved))
    code, lines = run_extract(models / "lstm", tmp_path / "x.json", capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: out of memory") and "--max-memory" in lines[0]


def test_a_stray_exit_1_is_not_a_verdict(models, monkeypatch, tmp_path, capsys):
    import exposure_audit.data.formats as formats

    def exits(*args, **kwargs):
        raise SystemExit(1)  # what a library's own CLI code might do

    monkeypatch.setattr(formats.Format, "parse", staticmethod(exits))
    assert run_extract(models / "lstm", tmp_path / "x.json", capsys)[0] == EXIT_INTERNAL


def test_the_gate_is_the_one_exit_1(models, tmp_path, capsys):
    assert CHARS  # the char-LSTM above is the conftest's random model
    from exposure_audit.errors import gate_exit

    assert gate_exit(True) == 1 and gate_exit(False) == 0
    src = (Path(__file__).resolve().parents[1] / "exposure_audit").rglob("*.py")
    offenders = [
        p.name
        for p in src
        if any(s in p.read_text() for s in ("sys.exit(1)", "SystemExit(1)", "exit_code=1", "return 1\n"))
    ]
    assert offenders == []


@pytest.mark.parametrize("kind", ["hf", "lstm"])
def test_weights_that_are_not_finite_are_bad_input(models, kind, tmp_path, capsys):
    """A flip can land in a float's exponent: a NaN weight makes every score NaN, which must
    not rank (NaN compares false with everything) nor pass for a model."""
    import torch
    from safetensors.torch import load_file, save_file

    case = tmp_path / kind
    shutil.copytree(models / kind, case)
    tensors = load_file(str(case / "model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(case / "model.safetensors"), metadata={"format": "pt"} if kind == "hf" else None)
    if kind == "lstm":  # keep the checkpoint's own checks satisfied: the damage is in the values only
        import json

        from exposure_audit.files import canonical_sha256, sha256_file

        cfg = json.loads((case / "config.json").read_text())
        cfg["weights_sha256"] = sha256_file(case / "model.safetensors")
        cfg.pop("sha256")
        cfg["sha256"] = canonical_sha256(cfg)
        (case / "config.json").write_text(json.dumps(cfg))
    del torch
    code, lines = run_extract(case, tmp_path / "x.json", capsys)
    assert code == 2 and len(lines) == 1 and "not finite" in lines[0], lines
