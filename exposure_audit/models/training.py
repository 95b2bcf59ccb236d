"""Model kinds as the one training loop sees them, so ``train.py`` knows no architecture.

A kind says how the training text becomes token ids (:func:`tokenize`) and gives a
:class:`Trainee`: the module the loop trains (and Opacus may wrap), its logits, a view of it
behind the scoring interface (for exposure tracking and validation), and how it is saved.

- ``char-lstm``: the paper's character-level LSTM (``charlstm.py``); its vocabulary is every
  character of the training text and of the canary formats.
- ``transformer``: a small Llama-architecture model with a tokenizer learned on the training
  text, or, with ``model.base``, a user's Hugging Face model and tokenizer fine-tuned
  (``transformer.py``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import AuditError
from ..files import canonical_sha256
from .base import LanguageModel
from .vocab import Vocabulary

KINDS = ("char-lstm", "transformer")
IN_MEMORY_IDS = 1 << 26  # a character model's ids of larger texts go to a memory-mapped temporary file


@dataclass
class Tokenization:
    """How the training text becomes ids: ``tokens`` is a Vocabulary or a tokenizer."""

    kind: str
    unit: str  # what a token is, in words ("characters", "tokens")
    tokens: Any
    fingerprint: str  # changes with the tokenization (part of a resumable run's identity)
    encode: Callable[[Callable[[], Iterator[str]], int], np.ndarray]  # (text pieces, characters) -> ids
    base: tuple[torch.nn.Module, int | None] | None = None  # a base model to fine-tune, and its context
    # dp-audit's fresh tokens: their ids, and whether they start alike (one shared initial row)
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
    """The tokenization of ``model_cfg``'s kind. ``pieces()`` streams the training text again
    at each call; ``chars`` is every character of it and of the canary formats. ``fresh``:
    dp-audit's fresh symbols, new tokens of a transformer (a char-LSTM has them in ``chars``
    already: each character is its own token); a base model's new rows are drawn from ``seed``."""
    if model_cfg.kind == "char-lstm":
        vocab = Vocabulary.from_chars(chars)

        def encode_chars(text: Callable[[], Iterator[str]], count: int) -> np.ndarray:
            dtype = np.uint16 if len(vocab) < 65536 else np.int32
            if count <= IN_MEMORY_IDS:
                out = np.empty(count, dtype=dtype)
            else:
                tmp = tempfile.TemporaryFile(prefix="exposure-audit-ids-")
                out = np.memmap(tmp, dtype=dtype, mode="w+", shape=(count,))
            pos = 0
            for piece in text():
                out[pos : pos + len(piece)] = vocab.encode(piece)
                pos += len(piece)
            return out

        return Tokenization("char-lstm", "characters", vocab, canonical_sha256(list(vocab.chars)), encode_chars)
    if model_cfg.kind != "transformer":
        raise AuditError(f"model.kind: {model_cfg.kind!r} is not one of {', '.join(KINDS)}")
    from . import transformer

    base = None
    if model_cfg.base:
        module, tokenizer, context = transformer.load_base(Path(model_cfg.base))
        if fresh:
            transformer.add_fresh_tokens(module, tokenizer, fresh, seed=seed, where=f"base model {model_cfg.base}")
        base = (module, context)
    else:
        tokenizer = transformer.learn_tokenizer(_lines(pieces), model_cfg.transformer, fresh)

    def encode_tokens(text: Callable[[], Iterator[str]], count: int) -> np.ndarray:
        return transformer.encode(tokenizer, _lines(text))

    fingerprint = canonical_sha256(tokenizer.backend_tokenizer.to_str())
    return Tokenization("transformer", "tokens", tokenizer, fingerprint, encode_tokens, base)


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
    """A fresh model of the configured kind (weights from torch's RNG: seed it first), or the base."""
    if tok.kind == "char-lstm":
        from .charlstm import CharLSTM, CharLSTMConfig

        arch = CharLSTMConfig(
            embedding=model_cfg.embedding, hidden=model_cfg.hidden, layers=model_cfg.layers, dropout=model_cfg.dropout
        )
        net = CharLSTM(tok.tokens, arch, dp=dp)
        if tok.fresh_alike:
            _start_alike([net.embed.weight, net.head.weight, net.head.bias], tok.fresh_ids)
        return _CharLSTMTrainee(net)
    from . import transformer

    if tok.base is not None:
        module, context = tok.base
        where = f"base model {model_cfg.base}"
    else:
        module = transformer.build(tok.tokens, model_cfg.transformer, dropout=model_cfg.dropout)
        context, where = model_cfg.transformer.context, "model.transformer.context"
    if context is not None and seq_len + 1 > context:
        raise AuditError(f"train.seq_len: windows of {seq_len + 1} tokens do not fit the {where} of {context} tokens")
    if tok.fresh_alike:
        out = module.get_output_embeddings()
        _start_alike([module.get_input_embeddings().weight, *([out.weight] if out is not None else [])], tok.fresh_ids)
    if model_cfg.lora.enabled:
        from .adapter import wrap_lora

        module = wrap_lora(module, model_cfg.lora, f"model {model_cfg.base or 'model.transformer'}")
    return _TransformerTrainee(module, tok.tokens, model_cfg)


def _start_alike(tensors: list[Any], ids: tuple[int, ...]) -> None:
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


class _CharLSTMTrainee:
    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    @staticmethod
    def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return net(ids)[0]

    def view(self, private: bool) -> LanguageModel:
        return self.eval_module(private)

    def eval_module(self, private: bool) -> torch.nn.Module:
        from .charlstm import plain_copy

        if private:
            return plain_copy(self.module)  # Opacus' LSTM and hooks: score a plain copy
        return self.module.eval()

    def describe(self) -> str:
        c = self.module.config
        return f"{c.layers}x{c.hidden} LSTM"

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.module.parameters(), lr=lr, weight_decay=weight_decay)

    def save(self, folder: Path, record: dict[str, Any]) -> None:
        from .charlstm import plain_copy, save_checkpoint

        save_checkpoint(plain_copy(self.module), folder, record)


class _TransformerTrainee:
    def __init__(self, module: torch.nn.Module, tokenizer: Any, model_cfg: Any) -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg

    @staticmethod
    def logits(net: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return net(input_ids=ids).logits

    @property
    def lora(self) -> bool:
        return bool(self.model_cfg.lora.enabled)

    def _record(self) -> dict[str, Any]:
        from . import transformer

        cfg: dict[str, Any] = {"kind": "transformer", "base": self.model_cfg.base}
        if not self.model_cfg.base:
            cfg["transformer"] = asdict(self.model_cfg.transformer)
        if self.lora:
            cfg["lora"] = asdict(self.model_cfg.lora)
        return {"format": "exposure-audit/hf-training", "context": transformer.CONTEXT, "model": cfg}

    def _net(self) -> torch.nn.Module:
        """The causal LM itself: with LoRA, the base with its (unmerged) LoRA layers injected."""
        return self.module.get_base_model() if self.lora else self.module

    def view(self, private: bool) -> LanguageModel:
        from . import transformer

        return transformer.scoring_view(self._net(), self.tokenizer, self._record())

    def eval_module(self, private: bool) -> torch.nn.Module:
        return self.module.eval()  # Opacus' hooks record nothing in eval mode

    def describe(self) -> str:
        c = self._net().config
        what = f"fine-tuning {self.model_cfg.base}" if self.model_cfg.base else "transformer"
        if self.lora:
            lo = self.model_cfg.lora
            what += f" with LoRA r={lo.r} alpha={lo.alpha:g} on {','.join(lo.target_modules)}"
        return f"{what} ({c.num_hidden_layers}x{c.hidden_size}, {len(self.tokenizer)} tokens)"

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # decoupled weight decay, as transformers are trained and fine-tuned; with LoRA only the adapter trains
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def save(self, folder: Path, record: dict[str, Any]) -> None:
        from . import transformer

        self.module.eval()
        record = {**self._record(), **record}
        if not self.lora:
            transformer.save(folder, self.module, self.tokenizer, record)
        elif self.model_cfg.lora.merge:
            import copy

            merged = copy.deepcopy(self.module).merge_and_unload()  # the trained module stays as it is
            transformer.save(folder, merged, self.tokenizer, record)
        else:
            transformer.save_adapter(folder, self.module, self.tokenizer, record, base=self.model_cfg.base)
