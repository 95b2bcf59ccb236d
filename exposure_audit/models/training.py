"""Model kinds as the one training loop sees them, so ``training/`` knows no architecture.

A kind (``registry.py``; its own module holds the code) says how the training text becomes
token ids (:func:`tokenize`) and gives a :class:`Trainee`: the module the loop trains (and Opacus may wrap), its logits, a view of it
behind the scoring interface (for exposure tracking and validation), and how it is saved.

Kinds today: ``char-lstm`` (``charlstm.py``: the paper's character-level LSTM, whose vocabulary
is every character of the training text and of the canary formats) and ``transformer``
(``transformer.py``: a small Llama-architecture model with a tokenizer learned on the training
text, or, with ``model.base``, a user's Hugging Face model and tokenizer fine-tuned).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from . import registry
from .base import LanguageModel

IN_MEMORY_IDS = 1 << 26  # ids of larger texts go to a memory-mapped temporary file (a kind's encode)


@dataclass
class Tokenization:
    """How the training text becomes ids: ``tokens`` is a Vocabulary or a tokenizer."""

    kind: str
    unit: str  # what a token is, in words ("characters", "tokens")
    tokens: Any
    fingerprint: str  # changes with the tokenization (part of a resumable run's identity)
    encode: Callable[[Callable[[], Iterator[str]], int], np.ndarray]  # (text pieces, characters) -> ids
    base: tuple[torch.nn.Module, int | None] | None = None  # a base model to fine-tune, and its context
    # dp-audit's fresh tokens: their ids (set by the kind's tokenize), and whether they start
    # alike (one shared initial row; set by the training data's design)
    fresh_ids: tuple[int, ...] = ()
    fresh_alike: bool = False


class Trainee(Protocol):
    module: torch.nn.Module  # what the optimizer trains

    def logits(self, net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor: ...

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer: ...

    def describe(self) -> str: ...

    def view(self, private: bool) -> LanguageModel: ...

    def eval_module(self, private: bool) -> torch.nn.Module: ...

    def save(self, folder: Path, record: dict[str, Any]) -> None: ...


def tokenize(
    model_cfg: Any, pieces: Callable[[], Iterator[str]], *, chars: set[str], fresh: str = "", seed: int = 0
) -> Tokenization:
    """The tokenization of ``model_cfg``'s kind (the registry's). ``pieces()`` streams the training
    text again at each call; ``chars`` is every character of it and of the canary formats. ``fresh``:
    dp-audit's fresh symbols, new tokens of a transformer (a char-LSTM has them in ``chars``
    already: each character is its own token); a base model's new rows are drawn from ``seed``."""
    return registry.get(model_cfg.kind).tokenize(model_cfg, pieces, chars=chars, fresh=fresh, seed=seed)


def _lines(pieces: Callable[[], Iterator[str]]) -> Iterator[str]:
    """Whole lines (newline kept) from a stream of text pieces."""
    rest = ""
    for piece in pieces():
        parts = (rest + piece).split("\n")
        rest = parts.pop()
        yield from (p + "\n" for p in parts)
    if rest:
        yield rest


def trainee(model_cfg: Any, tok: Tokenization, *, dp: bool, seq_len: int) -> Trainee:
    """A fresh model of the tokenization's kind (weights from torch's RNG: seed it first), or the base."""
    return registry.get(tok.kind).trainee(model_cfg, tok, dp=dp, seq_len=seq_len)


def start_alike(tensors: list[Any], ids: tuple[int, ...]) -> None:
    """Every fresh token's rows become the first one's (drawn like any row, from the seed), so
    no canary starts more or less likely than another: what tells them apart after training is
    what training did, not their random start."""
    if not ids:
        return
    idx = torch.as_tensor(ids)
    with torch.no_grad():
        for t in tensors:
            if t is not None:
                t[idx] = t[idx[0]].clone()


def identity(model_cfg: Any) -> dict[str, Any]:
    """``model_cfg`` as a resumable run's identity holds it: in the flat layout of ``model:``
    from before each kind had its section (a kind's ``legacy`` keys at the top), so a run that
    an earlier version started still resumes."""
    record = asdict(model_cfg)
    for kind in registry.kinds():
        if kind.legacy and isinstance(record.get(kind.section), dict):
            inner = record.pop(kind.section)
            record.update({k: inner.pop(k) for k in kind.legacy if k in inner})
            if inner:
                record[kind.section] = inner
    return record
