"""Language models behind one small interface (``base.py`` holds the contract), so the exposure
engine, extraction and training hooks never depend on an architecture.

The kinds (``registry.py`` is the one place that knows them; each kind's module registers it):

- ``charlstm.py``: the paper's character-level LSTM and this tool's checkpoint format;
- ``transformer.py``: a small Llama-architecture model this tool trains, or a base it fine-tunes;
- ``hf.py``: any local Hugging Face causal LM (a ``save_pretrained`` folder or a GGUF file),
  with its subword tokenizer (optional extra ``[hf]``);
- ``adapter.py``: a PEFT LoRA adapter folder (``adapter_config.json``) over a local base model.

Importing this package imports every module of the folder, so a new kind is one new file that
registers itself. :func:`load_model` asks the registry which kind a path is, so the user never
has to name it.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ..errors import AuditError
from . import registry
from .base import LanguageModel, Scorer
from .charlstm import CharLSTM, CharLSTMConfig, load_checkpoint, save_checkpoint
from .registry import DEVICES, DTYPES
from .vocab import Vocabulary

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")  # each kind's module registers it

__all__ = [
    "DEVICES",
    "DTYPES",
    "CharLSTM",
    "CharLSTMConfig",
    "LanguageModel",
    "Scorer",
    "Vocabulary",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
]


def load_model(
    path: Path | str, *, device: str = "auto", dtype: str | None = None, base: Path | str | None = None
) -> LanguageModel:
    """Load a model of any registered kind: this tool's char-LSTM checkpoint folder, a Hugging
    Face causal-LM folder, a ``.gguf`` file, or a PEFT adapter folder over ``base`` (or over the
    local base its config names). Nothing is unpickled and nothing is downloaded."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"model {path} does not exist")
    kind = registry.detect(path)
    if base is not None and not kind.takes_base:
        raise AuditError(f"--base applies to PEFT adapter folders only; {path} has no adapter_config.json")
    registry.check_requirements(kind)
    return kind.load(path, device=device, dtype=dtype, base=base)
