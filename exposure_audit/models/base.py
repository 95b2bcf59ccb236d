"""The model interface: the only way the exposure engine, extraction and training hooks see a model.

Nothing outside ``models/`` may assume an architecture (an LSTM's ``(h, c)``, a transformer's
KV cache) or a kind of vocabulary (characters, subword tokens). Everything they need is here.

Contract of a :class:`LanguageModel`
------------------------------------
Tokens
    ``vocab_size`` is V, the width of every log-probability row. ``token_bytes()[i]`` is what
    token ``i`` spells as UTF-8 bytes (a byte-level BPE token may be part of a character), or
    ``None`` for ids that never stand for text (the unknown symbol, BOS/EOS and other special
    tokens). A character model's tokens are single characters.

Lines and context
    A canary is scored as its own line after a *context*. ``context_ids(None)`` is the model's
    default context: the BOS token where the tokenizer has one, else a newline (the char-LSTM:
    a newline). ``encode_lines(texts, context)`` is the *canonical tokenization* of
    ``context + text + "\\n"`` (the tokenizer's own encoding), split into the context's ids and
    the line's ids. The line's ids are every token that holds at least one character of the
    line; so where the context's last characters and the line's first ones merge into one token,
    that token belongs to the line (its cost counts) and the context ends before it. With a BOS
    context nothing can merge. So the line's ids spell exactly (the merged tail of the context,
    usually empty) + ``text + "\\n"``, and the context's ids spell the rest of the context
    (checked by :func:`spell`); a tokenizer that adds text of its own (a prefix space) is refused.

States
    A *state* is opaque: whatever the model needs to continue a batch of rows (the LSTM's
    ``(h, c)``, a transformer's per-layer keys and values). The engine never looks inside. It may:

    - ``start(ids) -> (state, logp)``: read ``ids`` (one row); ``logp`` is ``[1, V]``;
    - ``step(state, ids) -> (state, logp)``: feed one token per row (``ids`` is ``[B]``) and get
      the next token's log2-probabilities, ``[B, V]``, float32 or float64, on the CPU;
    - optionally ``step(state, ids, columns=None)``: with ``columns`` (a 1-D tensor of token ids),
      ``logp`` is ``[B, len(columns)]``: those tokens' log2-probabilities alone, normalized over
      the whole vocabulary and equal, bit for bit, to the same columns of the full ``[B, V]``.
      The tree walks ask only for the tokens their format can continue with (a few dozen of
      SmolLM2's 49,152); a model that can skip writing the rest saves a ``[B, V]`` float32
      matrix per call (:class:`~.hf.HFModel`). :class:`Scorer` takes the columns of the full
      row for a model whose ``step`` has no ``columns`` parameter;
    - ``take(state, rows) -> state``: a new state holding the given rows, in that order (rows may
      repeat). ``take`` and ``step`` never change the state they are given, so a state can be
      stepped from many times (every child of a tree node starts from its parent's state);
    - ``cat(states) -> state``: rows of several states, one after the other.

    ``ragged`` says whether rows that have read different numbers of tokens may share a state
    (``cat``) and a ``step`` call; where it is False the engine only batches rows of equal length
    together. An LSTM's state does not depend on the length read, so it is True. A KV cache
    grows with the length: :class:`~.hf.HFModel` pads shorter rows and masks the padding, so it
    is True too, with ``padded`` True (an optional attribute, False where absent): a padded state
    costs memory for its padding, so a caller that mixes lengths keeps each call's close.

Model steps
    One *model step* is one row of a ``step`` call: one forward step for one prefix, one token
    longer than its parent. For a character model a step adds one character; for a subword model
    one token, which may add several characters (the KV cache of the shared prefix is reused, not
    recomputed). ``start`` costs one step per id read. :class:`Scorer` counts them, so brute
    force, enumeration, pruning, sampling and extraction report work in the same unit.

Whole sequences (batched scoring and decoding)
    ``sequence_logprobs(rows) -> [B, L, V]``: one forward pass over a batch of rows (token id
    lists, lengths may differ, L the longest); position ``j`` of row ``b`` holds the
    log2-probabilities of the token after ``rows[b][:j + 1]``. Positions past a row's end are
    padding and mean nothing. The tensor may stay on the model's device (callers reduce it there).
    ``start_batch(rows) -> (state, logp)``: like ``start`` for several rows at once (``logp`` is
    ``[B, V]`` on the CPU); a model that is not ``ragged`` needs rows of equal length. Both cost one
    model step per id read.

``describe()`` returns what a report records about the model (kind, class, tokenizer, weights'
SHA-256, device, dtype, and the training record of a model this tool trained).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import torch

State = Any
NEWLINE = "\n"


class LanguageModel(Protocol):
    vocab_size: int
    ragged: bool

    def token_bytes(self) -> Sequence[bytes | None]: ...

    def context_ids(self, context: str | None) -> list[int]: ...

    def encode_lines(
        self, texts: Sequence[str], context: str | None, end: str = NEWLINE
    ) -> list[tuple[list[int], list[int]]]: ...  # ``end``: what closes each line (scan: the record's next character)

    def start(self, ids: Sequence[int]) -> tuple[State, torch.Tensor]: ...

    def start_batch(self, rows: Sequence[Sequence[int]]) -> tuple[State, torch.Tensor]: ...

    def sequence_logprobs(self, rows: Sequence[Sequence[int]]) -> torch.Tensor: ...

    def step(self, state: State, ids: torch.Tensor) -> tuple[State, torch.Tensor]: ...

    def take(self, state: State, rows: torch.Tensor) -> State: ...

    def cat(self, states: Sequence[State]) -> State: ...

    def describe(self) -> dict[str, Any]: ...

    # optional: ``step_flops() -> float``, the matmul work of one step (2 FLOP per weight used);
    # ``measure``'s default exact budget scales by it (Scorer.step_flops)


def pad_rows(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> torch.Tensor:
    """Rows of token ids right-padded with id 0 into one ``[B, L]`` tensor. Right padding needs no
    mask in a causal model: a position reads only the positions before it, all real tokens."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("pad_rows: every row needs at least one token")
    width = max(len(r) for r in rows)
    out = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out.to(device)


def check_finite(module: torch.nn.Module, where: str) -> None:
    """Refuse weights that are NaN or infinite (a damaged file can decode to them): every score
    would be NaN, and NaN compares false with everything, so ranks would silently be wrong."""
    from ..errors import AuditError

    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise AuditError(f"model {where}: weight {name} is not finite (NaN or infinite): the file is damaged")


def spell(model: LanguageModel, ids: Sequence[int]) -> bytes | None:
    """The bytes a token sequence spells, or None if it holds a token that is not text."""
    table = model.token_bytes()
    out = []
    for i in ids:
        b = table[i]
        if b is None:
            return None
        out.append(b)
    return b"".join(out)


class Scorer:
    """Wraps a model, counting model steps (one per row of every ``step`` call, one per id of ``start``)."""

    def __init__(self, model: LanguageModel, max_memory: Any = None) -> None:
        from ..memory import MemoryBudget

        self.model = model
        self.steps = 0
        # the bytes of states a search over this model may hold (``--max-memory``), and their peak
        self.budget = MemoryBudget.of(max_memory)
        self._narrows: bool | None = None  # whether the model's step takes ``columns`` (known at first use)

    @property
    def step_flops(self) -> float | None:
        """The model's matmul work per step, where it says (``step_flops()``); else None."""
        fn = getattr(self.model, "step_flops", None)
        return float(fn()) if callable(fn) else None

    @staticmethod
    def of(model: Any, max_memory: Any = None) -> Scorer:
        """``model`` itself if it is a Scorer (its budget kept unless ``max_memory`` is given), else a new one."""
        if isinstance(model, Scorer):
            if max_memory is not None:
                from ..memory import MemoryBudget

                model.budget = MemoryBudget.of(max_memory)
            return model
        return Scorer(model, max_memory)

    def start(self, ids: Sequence[int]) -> tuple[State, torch.Tensor]:
        self.steps += len(ids)
        return self.model.start(ids)

    def step(self, state: State, ids: torch.Tensor, columns: torch.Tensor | None = None) -> tuple[State, torch.Tensor]:
        """The model's step; with ``columns``, only those tokens' log2-probabilities (``[B, len(columns)]``)."""
        self.steps += int(ids.shape[0])
        if columns is None:
            return self.model.step(state, ids)
        if self._narrows is None:
            self._narrows = "columns" in inspect.signature(self.model.step).parameters
        if self._narrows:
            return self.model.step(state, ids, columns=columns)
        state, logp = self.model.step(state, ids)
        return state, logp[:, columns]

    def take(self, state: State, rows: torch.Tensor) -> State:
        return self.model.take(state, rows)

    def cat(self, states: Sequence[State]) -> State:
        return states[0] if len(states) == 1 else self.model.cat(states)
