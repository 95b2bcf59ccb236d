"""Language models behind one small interface (``base.py`` holds the contract), so the exposure
engine, extraction and training hooks never depend on an architecture.

- ``charlstm.py``: the paper's character-level LSTM and this tool's checkpoint format;
- ``hf.py``: any local Hugging Face causal LM (a ``save_pretrained`` folder or a GGUF file),
  with its subword tokenizer (optional extra ``[hf]``);
- ``adapter.py``: a PEFT LoRA adapter folder (``adapter_config.json``) over a local base model.

:func:`load_model` tells them apart, so the user never has to name the kind.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AuditError
from .base import LanguageModel, Scorer
from .charlstm import CHECKPOINT_FORMAT, CharLSTM, CharLSTMConfig, load_checkpoint, save_checkpoint
from .vocab import Vocabulary

__all__ = [
    "CharLSTM",
    "CharLSTMConfig",
    "LanguageModel",
    "Scorer",
    "Vocabulary",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]


def _is_hf_folder(path: Path) -> bool:
    """A folder whose config.json names a Hugging Face ``model_type`` (read strictly: a damaged
    config.json is reported by the loader of this tool's own format, which names the problem)."""
    from ..files import read_json

    try:
        config = read_json(path / "config.json", "checkpoint config")
    except AuditError:
        return False
    return isinstance(config, dict) and "model_type" in config and config.get("format") != CHECKPOINT_FORMAT


def load_model(
    path: Path | str, *, device: str = "auto", dtype: str | None = None, base: Path | str | None = None
) -> LanguageModel:
    """Load a model of any supported kind: this tool's char-LSTM checkpoint folder, a Hugging Face
    causal-LM folder, a ``.gguf`` file, or a PEFT adapter folder over ``base`` (or over the local
    base its config names). Nothing is unpickled and nothing is downloaded."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"model {path} does not exist")
    if path.is_dir() and (path / "adapter_config.json").is_file():
        try:
            from .adapter import load_adapter
        except ImportError:
            raise AuditError(
                "PEFT adapters need transformers and peft: pip install 'exposure-audit[hf]' torch==2.13.0"
            ) from None
        return load_adapter(path, base=base, device=device, dtype=dtype)
    if base is not None:
        raise AuditError(f"--base applies to PEFT adapter folders only; {path} has no adapter_config.json")
    if (path.is_file() and path.suffix.lower() == ".gguf") or (path.is_dir() and _is_hf_folder(path)):
        try:
            from .hf import load_hf
        except ImportError:
            raise AuditError(
                "Hugging Face models need transformers: pip install 'exposure-audit[hf]' torch==2.13.0"
            ) from None
        return load_hf(path, device=device, dtype=dtype)
    if device == "cuda" or dtype not in (None, "float32"):
        raise AuditError("char-LSTM checkpoints are scored on the CPU in float32 (leave out device and dtype)")
    return load_checkpoint(path)[0]
