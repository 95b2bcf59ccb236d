"""Any local Hugging Face causal language model behind the :class:`~.base.LanguageModel` interface.

A model is a ``save_pretrained`` folder (``config.json`` with a ``model_type``, ``*.safetensors``
weights and the tokenizer's files) or a single ``.gguf`` file. Nothing is downloaded
(``local_files_only``), no code from the model is run (``trust_remote_code=False``) and nothing is
unpickled: a folder whose only weights are pickles (``*.bin``, ``*.pt``...) is refused.

Tokens
    ``vocab_size`` is the width of the model's logits (rows of its output embedding), which may
    exceed the tokenizer's length; ids the tokenizer does not have, and special tokens (BOS, EOS,
    pad, unknown...), spell nothing (``None``). A byte-level BPE token (the tokenizer's decoder is
    ``ByteLevel``) spells the bytes of its string through GPT-2's byte <-> unicode table, so a token
    may be part of a UTF-8 character. Other tokenizers (SentencePiece-like, character-level): a
    ``<0xNN>`` byte-fallback token spells byte NN, any other token its string with ``▁`` read as a
    space.

Lines and context
    All encoding is the tokenizer's own (fast tokenizer, no special tokens added). The default
    context is the BOS token where the tokenizer has one: the line's ids are then the encoding of
    ``text + "\\n"`` on its own. Otherwise (a text context, or ``"\\n"`` for a tokenizer without
    BOS) the whole ``context + text + "\\n"`` is encoded once, with character offsets: the
    context's ids are the leading tokens lying entirely inside the context's characters, the line's
    ids every token from the first one that holds a character of the line. A token straddling the
    boundary (BPE merged the context's last characters with the line's first ones) therefore
    belongs to the line, whose ids spell ``tail-of-context + text + "\\n"``, and the context's ids
    spell the rest of the context. Both are checked; a tokenizer that adds or changes text of its
    own (a prefix space, a normalizer) is refused.

States
    A :class:`KVState` holds every layer's keys and values, ``[rows, kv_heads, slots, head_dim]``.
    Rows taken from a one-row state (the format's shared tokens) hold that state once as their
    ``prefix`` and only their own tokens after it, so a search's memory grows with the tokens
    below the shared prefix, not with the whole context. A state is never changed and can be
    stepped from any number of times. A one-token step attends to it where it lies
    (``hf_attention.py``: the prefix once, one matrix product for all rows; the new state is one
    copy of each row's tokens and its new one). A model whose attention is not a plain softmax
    over the interface, and a longer call (``start``), build a fresh ``DynamicCache`` per call
    instead (the prefix repeated per row for the call only).

    Rows that have read different numbers of tokens may share a state (``ragged`` is True, by
    padding: ``padded``). Each row's tokens then fill its first slots, the rest of the slots
    are padding, and ``lengths`` says how many tokens each row has read; a call masks the
    padding out of attention and gives each row its own positions, and the new token of every
    row is moved to the row's first free slot. So best-first extraction steps the rows of a
    round's different depths together, not one call per depth: on the SmolLM2 pi proof, calls
    of 316 rows on average rather than 137 (``docs/benchmarks.md``). A masked slot adds exactly
    nothing to attention; what differs from an unpadded call is the float rounding of other
    batch shapes. A state whose rows all read the same number of tokens is stored unpadded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from ..errors import AuditError
from ..files import read_json, sha256_file
from . import hf_attention, registry
from .base import NEWLINE, check_finite, pad_rows, spell

if TYPE_CHECKING:  # transformers is imported only when a model is loaded: it takes seconds
    from transformers import BatchEncoding, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

LN2 = math.log(2.0)
SOFTMAX_ROWS = 16  # rows per log-softmax when only some columns are kept: 3 MB of float32 for SmolLM2
CONFIG = "config.json"
TRAINING_RECORD = "exposure_audit.json"  # written beside config.json by this tool's training
SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# A fast tokenizer can be built from any of these (tokenizer.json directly, the others converted).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
DTYPES = {name: getattr(torch, name) for name in registry.DTYPES}  # float32, bfloat16, float16
DEVICES = registry.DEVICES
BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Errors transformers raises for configs, tokenizers and weights it cannot read.
# What the loaders raise for a damaged or foreign file: transformers' own (OSError, ValueError,
# KeyError, TypeError, RuntimeError for shape mismatches), safetensors' SafetensorError (a plain
# Exception) for a truncated or foreign weights file, EOFError and UnicodeDecodeError (a ValueError)
# for cut or binary text files. tokenizers raises a bare ``Exception`` for a damaged tokenizer.json,
# which _tokenizer_error tells apart from a bug.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, SafetensorError)


def _tokenizer_error(e: Exception) -> bool:
    return isinstance(e, LOAD_ERRORS) or type(e) is Exception  # tokenizers' Rust errors arrive as Exception


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: every byte as a printable character (printable Latin-1 bytes stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


@dataclass(frozen=True)
class KVState:
    """Every layer's keys and values, ``[rows, kv_heads, slots, head_dim]``; ``length`` slots in all.

    ``prefix``: a one-row state that every row continues (the format's shared tokens), itself
    with no prefix or padding (:meth:`HFModel.take` builds no other). Its keys
    and values are held once, not per row; ``keys``/``values`` then hold only the slots after it.
    A batch taken from a one-row state shares it so (:meth:`HFModel.take`).

    ``lengths``: None where every row read ``length`` tokens; else each row's count ([rows],
    long), its tokens in its first slots and padding after them (see the module docstring)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int
    prefix: KVState | None = None
    lengths: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return int(self.keys[0].shape[0])

    def full(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's (keys, values) over all ``length`` tokens, the prefix repeated per row."""
        if self.prefix is None:
            return list(zip(self.keys, self.values))
        n = self.rows
        return [
            (torch.cat([pk.expand(n, -1, -1, -1), k], dim=2), torch.cat([pv.expand(n, -1, -1, -1), v], dim=2))
            for pk, pv, k, v in zip(self.prefix.keys, self.prefix.values, self.keys, self.values)
        ]


def _trim(k: torch.Tensor, width: int) -> torch.Tensor:
    return k if k.shape[2] == width else k[:, :, :width].contiguous()


def _settled(
    keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor], lengths: torch.Tensor, prefix: KVState | None
) -> KVState:
    """A state of these slots, rows that read ``lengths`` tokens, its padding cut to the
    longest row and dropped where every row read the same number."""
    cut = 0 if prefix is None else prefix.length
    lo, hi = int(lengths.min()), int(lengths.max())
    width = hi - cut
    keys, values = tuple(_trim(k, width) for k in keys), tuple(_trim(v, width) for v in values)
    return KVState(keys, values, hi, prefix, None if lo == hi else lengths)


class HFModel:
    """A loaded causal LM and its tokenizer; build one with :func:`load_hf`."""

    ragged = True  # rows of different lengths share a state by padding (module docstring)
    padded = True  # ... which costs memory: callers keep a call's lengths close

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        path: Path,
        weight_files: Sequence[Path],
        training: dict[str, Any] | None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        head = model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)
        config = model.config
        self.max_positions: int | None = getattr(config, "n_positions", None) or getattr(
            config, "max_position_embeddings", None
        )
        self.bos_id: int | None = tokenizer.bos_token_id
        self._weight_files = list(weight_files)
        self._training = training
        # A model this tool trained records the context its lines followed in training (a newline):
        # canaries are scored in that context by default, rather than after a BOS it never saw there.
        recorded = (training or {}).get("context")
        self.default_context: str | None = recorded if isinstance(recorded, str) and recorded else None
        self._weights_sha256: str | None = None
        self._token_bytes: list[bytes | None] | None = None
        # Only the last position's logits are needed; models that can skip the others save a [n, V] matrix.
        keeps = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._last_only = {"logits_to_keep": 1} if keeps else {}
        # Steps attend to stored states in place where the model's attention allows (hf_attention.py).
        self._split = not _disable_split(config)

    # -- tokens ---------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes | None]:
        if self._token_bytes is None:
            self._token_bytes = _token_table(self.tokenizer, self.vocab_size)
        return self._token_bytes

    def _encode(self, texts: list[str], offsets: bool = False) -> BatchEncoding:
        return self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=offsets)

    def context_ids(self, context: str | None) -> list[int]:
        context = context if context is not None else self.default_context
        if context is None and self.bos_id is not None:
            return [self.bos_id]
        text = NEWLINE if context is None else context
        ids = list(self._encode([text])["input_ids"][0])
        if not ids:
            raise AuditError("the context is empty; pass None for the model's default context")
        return ids

    def encode_lines(
        self, texts: Sequence[str], context: str | None, end: str = NEWLINE
    ) -> list[tuple[list[int], list[int]]]:
        texts = list(texts)
        context = context if context is not None else self.default_context
        if context is None and self.bos_id is not None:
            # Nothing merges with BOS: each line is encoded on its own.
            encoded = self._encode([t + end for t in texts])["input_ids"]
            return [self._checked(t, "", [self.bos_id], list(ids), end) for t, ids in zip(texts, encoded)]
        prefix = NEWLINE if context is None else context
        if not prefix:
            raise AuditError("the context is empty; pass None for the model's default context")
        encoded = self._encode([prefix + t + end for t in texts], offsets=True)
        out = []
        for text, ids, spans in zip(texts, encoded["input_ids"], encoded["offset_mapping"]):
            # The first token ending past the context holds a character of the line (offsets are characters).
            cut = next((i for i, (_, end) in enumerate(spans) if end > len(prefix)), len(ids))
            if cut == 0:
                raise AuditError(
                    f"the context {prefix!r} merges entirely into the first token of line {text!r}; "
                    "give a longer context"
                )
            out.append(self._checked(text, prefix, list(ids[:cut]), list(ids[cut:]), end))
        return out

    def _spell_context(self, ids: list[int]) -> bytes | None:
        """What context ids spell, special tokens included: a chat template's turn markers
        (``<|im_start|>``) are special tokens, and in a context they stand for their own text."""
        table = self.token_bytes()
        out = []
        for i in ids:
            b = table[i]
            if b is None:
                piece = self.tokenizer.convert_ids_to_tokens(int(i))
                if not isinstance(piece, str):
                    return None
                b = piece.encode("utf-8")
            out.append(b)
        return b"".join(out)

    def _checked(
        self, text: str, prefix: str, ctx: list[int], line: list[int], end: str = NEWLINE
    ) -> tuple[list[int], list[int]]:
        """Refuse a split whose ids do not spell context + text + end, with the line ending in text + end."""
        tail = (text + end).encode("utf-8")
        ctx_bytes = self._spell_context(ctx) if prefix else b""  # a BOS context spells nothing
        line_bytes = spell(self, line)
        if (
            ctx_bytes is None
            or line_bytes is None
            or not line_bytes.endswith(tail)
            or ctx_bytes + line_bytes != prefix.encode("utf-8") + tail
        ):
            raise AuditError(
                f"tokenizer {type(self.tokenizer).__name__} of {self.path} is not supported: its tokens for line "
                f"{text!r} spell {line_bytes!r}, not the line (it adds or changes text of its own, e.g. a prefix space)"
            )
        return ctx, line

    # -- states ---------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, state: KVState | None) -> tuple[KVState, torch.Tensor]:
        """The new state and the last position's logits ([rows, V], the model's dtype and device)."""
        from transformers import DynamicCache

        past = 0 if state is None else state.length
        rows, n = ids.shape
        lengths = None if state is None else state.lengths
        longest = past if lengths is None else int(lengths.max())
        if self.max_positions is not None and longest + n > self.max_positions:
            raise AuditError(f"the candidate needs {longest + n} tokens; the model takes at most {self.max_positions}")
        if state is not None and n == 1 and self._split:
            try:
                return self._split_step(ids, state)
            except hf_attention.Unsupported:
                self._split = False  # this model's attention is not the plain kind: the plain way from now on
        # A new cache per call: the model appends to the cache it is given, and the caller's state must not change.
        cache = DynamicCache() if state is None else DynamicCache(ddp_cache_data=state.full())
        mask = None
        if lengths is None:
            positions = torch.arange(past, past + n, device=self.device).expand(rows, n)
        else:  # padded rows: each at its own position, its padding masked out
            if n != 1:
                raise ValueError("a padded state is stepped one token at a time")
            positions = lengths.view(rows, 1)
            slots = torch.arange(past + 1, device=self.device)
            mask = ((slots < lengths.view(rows, 1)) | (slots == past)).long()
        out = self.model(
            input_ids=ids, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True, **self._last_only
        )
        layers = out.cache.layers
        prefix = None if state is None else state.prefix
        cut = 0 if prefix is None else prefix.length
        if lengths is None:
            if prefix is None:
                new = KVState(tuple(layer.keys for layer in layers), tuple(layer.values for layer in layers), past + n)
            else:  # keep only the tokens after the shared prefix (a copy, so the repeated prefix is freed)
                keys = tuple(layer.keys[:, :, cut:].contiguous() for layer in layers)
                new = KVState(keys, tuple(layer.values[:, :, cut:].contiguous() for layer in layers), past + n, prefix)
        else:
            new = _settled(*self._left_align(layers, lengths, cut, past), lengths + 1, prefix)
        return new, out.logits[:, -1]

    def _split_step(self, ids: torch.Tensor, state: KVState) -> tuple[KVState, torch.Tensor]:
        """One token per row, attending to the stored state in place (models/hf_attention.py)."""
        prefix = state.prefix
        cut = 0 if prefix is None else prefix.length
        rows, width = state.rows, int(state.keys[0].shape[2])
        lengths = state.lengths
        if lengths is None:
            positions = torch.full((rows, 1), state.length, dtype=torch.long, device=self.device)
            valid = None
        else:
            positions = lengths.view(rows, 1)
            valid = torch.arange(width, device=self.device) < (lengths - cut).view(rows, 1)
        call = hf_attention.SplitCall(
            None if prefix is None else list(zip(prefix.keys, prefix.values)),
            list(zip(state.keys, state.values)),
            valid,
        )
        logits = hf_attention.run(self.model, call, ids, positions, len(state.keys))
        keys, values = [], []
        for i in range(len(state.keys)):
            nk, nv = call.new[i]
            for held, old, new in ((keys, state.keys[i], nk), (values, state.values[i], nv)):
                joined = torch.cat([old, new], dim=2)  # the one copy: own tokens, then the new one
                if lengths is not None:  # a padded row's new token goes to its first free slot
                    joined[torch.arange(rows, device=self.device), :, lengths - cut] = new[:, :, 0]
                held.append(joined)
        new_state = (
            KVState(tuple(keys), tuple(values), state.length + 1, prefix)
            if lengths is None
            else _settled(keys, values, lengths + 1, prefix)
        )
        return new_state, logits

    @staticmethod
    def _left_align(
        layers: Any, lengths: torch.Tensor, cut: int, past: int
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each row's new token (the last slot, ``past``) moved to the row's first free slot."""
        width = int(lengths.max()) + 1 - cut
        rows = torch.arange(int(lengths.shape[0]), device=lengths.device)
        free = lengths - cut
        out: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for layer in layers:
            for held, whole in zip(out, (layer.keys, layer.values)):
                k = whole[:, :, cut : cut + width].clone()
                k[rows, :, free] = whole[:, :, past]
                held.append(k)
        return out

    @torch.inference_mode()
    def start(self, ids: Sequence[int]) -> tuple[KVState, torch.Tensor]:
        if len(ids) == 0:
            raise AuditError("the context must hold at least one token")
        state, logits = self._forward(
            torch.as_tensor(list(ids), dtype=torch.long, device=self.device).view(1, -1), None
        )
        return state, _log2_probs(logits)

    @torch.inference_mode()
    def start_batch(self, rows: Sequence[Sequence[int]]) -> tuple[KVState, torch.Tensor]:
        if len({len(r) for r in rows}) != 1:
            raise ValueError("start_batch: a KV cache holds one length; give rows of equal length")
        state, logits = self._forward(pad_rows(rows, self.device), None)
        return state, _log2_probs(logits)

    @torch.inference_mode()
    def sequence_logprobs(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every position's log2-probabilities in one forward pass (right-padded, no cache kept)."""
        ids = pad_rows(rows, self.device)
        if self.max_positions is not None and ids.shape[1] > self.max_positions:
            raise AuditError(f"a row needs {ids.shape[1]} tokens; the model takes at most {self.max_positions}")
        out = self.model(input_ids=ids, use_cache=False)
        return _log2_softmax_(out.logits)

    @torch.inference_mode()
    def step(
        self, state: KVState, ids: torch.Tensor, columns: torch.Tensor | None = None
    ) -> tuple[KVState, torch.Tensor]:
        """One token per row; with ``columns``, only those tokens' log2-probabilities (models/base.py)."""
        state, logits = self._forward(ids.to(self.device, torch.long).view(-1, 1), state)
        return state, _log2_probs(logits, columns)

    @torch.inference_mode()
    def take(self, state: KVState, rows: torch.Tensor) -> KVState:
        rows = rows.to(self.device, torch.long)
        if state.prefix is None and state.rows == 1:
            # every row continues this one: share it as the prefix instead of repeating it per row
            n = int(rows.shape[0])
            empty = tuple(k.new_empty(n, k.shape[1], 0, k.shape[3]) for k in state.keys)
            return KVState(empty, empty, state.length, state)
        if state.lengths is None:
            keys = tuple(k.index_select(0, rows) for k in state.keys)
            return KVState(keys, tuple(v.index_select(0, rows) for v in state.values), state.length, state.prefix)
        lengths = state.lengths.index_select(0, rows)
        # only the slots the taken rows fill: one copy, already cut to the longest of them
        width = int(lengths.max()) - (0 if state.prefix is None else state.prefix.length)
        keys = tuple(k[:, :, :width].index_select(0, rows) for k in state.keys)
        values = tuple(v[:, :, :width].index_select(0, rows) for v in state.values)
        return _settled(keys, values, lengths, state.prefix)

    @torch.inference_mode()
    def cat(self, states: Sequence[KVState]) -> KVState:
        prefix = states[0].prefix
        if any(s.prefix is not prefix for s in states):  # rows of different prefixes: spell them out
            states = [
                KVState(tuple(k for k, _ in s.full()), tuple(v for _, v in s.full()), s.length, None, s.lengths)
                for s in states
            ]
            prefix = None
        if all(s.lengths is None for s in states) and len({s.length for s in states}) == 1:
            layers = range(len(states[0].keys))
            return KVState(
                tuple(torch.cat([s.keys[i] for s in states]) for i in layers),
                tuple(torch.cat([s.values[i] for s in states]) for i in layers),
                states[0].length,
                prefix,
            )
        # rows of different lengths: every state padded to the most slots
        width = max(int(s.keys[0].shape[2]) for s in states)
        lengths = torch.cat(
            [
                s.lengths
                if s.lengths is not None
                else torch.full((s.rows,), s.length, dtype=torch.long, device=self.device)
                for s in states
            ]
        )

        def joined(parts: list[torch.Tensor]) -> torch.Tensor:  # one copy: each part into its rows
            first = parts[0]
            out = first.new_zeros(int(lengths.shape[0]), first.shape[1], width, first.shape[3])
            lo = 0
            for t in parts:
                out[lo : lo + t.shape[0], :, : t.shape[2]] = t
                lo += int(t.shape[0])
            return out

        layers = range(len(states[0].keys))
        keys = [joined([s.keys[i] for s in states]) for i in layers]
        return _settled(keys, [joined([s.values[i] for s in states]) for i in layers], lengths, prefix)

    # -- report ---------------------------------------------------------------------------
    def weights_sha256(self) -> str:
        """SHA-256 of the single weights file; for sharded weights, of the sorted per-file hex digests joined."""
        if self._weights_sha256 is None:
            digests = [sha256_file(f) for f in self._weight_files]
            if len(digests) == 1:
                self._weights_sha256 = digests[0]
            else:
                self._weights_sha256 = _sha256_text("".join(sorted(digests)))
        return self._weights_sha256

    def step_flops(self) -> float:
        """Matmul work of one model step: 2 FLOP per weight used (an untied input embedding is a
        lookup, not a product); attention over the context is left out."""
        net = self.model
        params = {id(p): p.numel() for p in net.parameters()}  # tied weights once
        emb, head = net.get_input_embeddings(), net.get_output_embeddings()
        lookup = 0 if head is not None and emb.weight is head.weight else emb.weight.numel()
        return 2.0 * (sum(params.values()) - lookup)

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        info: dict[str, Any] = {
            "kind": "hf",
            "description": (
                f"{type(self.model).__name__}, {params / 1e6:.1f}M parameters, "
                f"{type(self.tokenizer).__name__} with {len(self.tokenizer)} tokens"
            ),
            "path": str(self.path),
            "model_class": type(self.model).__name__,
            "model_type": self.model.config.model_type,
            "tokenizer_class": type(self.tokenizer).__name__,
            "vocab_size": self.vocab_size,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "weights_sha256": self.weights_sha256(),
            "bos_token": self.tokenizer.bos_token,
            "max_positions": self.max_positions,
        }
        if self._training is not None:
            info["training"] = self._training
            # what the engine and reports read from any model: the data it was trained on, its privacy
            for key in ("data", "privacy", "seed"):
                if key in self._training:
                    info[key] = self._training[key]
        return info


def _log2_probs(logits: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """[rows, vocab] log2-probabilities on the CPU, in float32; with ``columns``, [rows, len(columns)]."""
    if columns is None:
        return _log2_softmax_(logits).cpu()
    return _log2_softmax_columns(logits, columns).cpu()


def _log2_softmax_columns(logits: torch.Tensor, columns: torch.Tensor, chunk: int = SOFTMAX_ROWS) -> torch.Tensor:
    """:func:`_log2_softmax_` of ``logits`` at ``columns`` only, bit-identical to its columns.

    The log-softmax runs ``chunk`` rows at a time in one small float32 buffer that stays in the
    core's cache, and only the asked columns are kept: the [rows, vocab] float32 matrix that a
    full row costs (100 MB for 512 rows of SmolLM2, and a fresh bfloat16-to-float32 copy of the
    model's output) is never written. Each row's arithmetic is the same kernel on the same values
    as in the full one, so the values are the same bits (tests/test_hf_model.py)."""
    rows, vocab = int(logits.shape[0]), int(logits.shape[-1])
    columns = columns.to(logits.device, torch.long)
    out = torch.empty(rows, int(columns.shape[0]), dtype=torch.float32, device=logits.device)
    if rows == 0:
        return out
    step = chunk if logits.device.type == "cpu" else rows  # a GPU gains nothing from the cache
    buffer = torch.empty(min(step, rows), vocab, dtype=torch.float32, device=logits.device)
    for lo in range(0, rows, step):
        part = buffer[: min(step, rows - lo)]
        part.copy_(logits[lo : lo + step])
        torch.log_softmax(part, dim=-1, out=part)
        torch.index_select(part, 1, columns, out=out[lo : lo + step])
    return out.div_(LN2)


def _log2_softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Log2-probabilities over the last dimension, in float32. On the CPU they are written over
    ``logits`` where the tensor is the whole of its own storage (the model's fresh output), else
    over a copy.

    In place because the output is the vocabulary times the rows (100 MB for 512 rows of SmolLM2),
    and a fresh block that size is often fresh pages from the kernel, each faulted in on first
    write: several times the softmax's own time (docs/benchmarks.md, "The log-softmax in place").
    The values are bit-identical to an out-of-place log-softmax."""
    x = logits.float()
    if x.device.type != "cpu":  # a GPU's caching allocator has no fresh pages to fault: nothing to gain
        return torch.log_softmax(x, dim=-1).div_(LN2)
    whole = x.is_contiguous() and x.untyped_storage().nbytes() == x.numel() * x.element_size()
    if x is logits and not whole:  # a view into a larger tensor (all positions' logits): not ours to overwrite
        x = x.clone(memory_format=torch.contiguous_format)
    return torch.log_softmax(x, dim=-1, out=x).div_(LN2)


def _disable_split(config: PreTrainedConfig) -> bool:
    """Whether the config asks for attention other than a plain softmax over every earlier token
    (what a split step computes); hf_attention also checks each call's arguments."""
    if os.environ.get("EXPOSURE_AUDIT_PLAIN_STEPS"):  # benchmarks compare the two ways
        return True
    for name in ("attn_logit_softcapping", "alibi", "position_embedding_type"):
        value = getattr(config, name, None)
        if value not in (None, False, "absolute", "rope"):
            return True
    return config._attn_implementation not in ("sdpa", "eager")


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    members = decoder.get("decoders", []) if decoder.get("type") == "Sequence" else [decoder]
    return any(d.get("type") == "ByteLevel" for d in members)


def _token_table(tokenizer: PreTrainedTokenizerBase, width: int) -> list[bytes | None]:
    byte_level = _is_byte_level(tokenizer)
    added = tokenizer.added_tokens_decoder  # id -> AddedToken; added tokens are stored as plain text
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    n = min(len(tokenizer), width)
    table: list[bytes | None] = [None] * width
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
        if i in special or piece is None:
            continue
        if i in added:
            table[i] = added[i].content.encode("utf-8")
        elif byte_level:
            # A character outside the byte alphabet never comes out of byte-level encoding: not text.
            if all(c in UNICODE_TO_BYTE for c in piece):
                table[i] = bytes(UNICODE_TO_BYTE[c] for c in piece)
        elif m := BYTE_FALLBACK.fullmatch(piece):
            table[i] = bytes([int(m.group(1), 16)])
        else:
            table[i] = piece.replace("▁", " ").encode("utf-8")
    return table


# -- loading ------------------------------------------------------------------------------
def is_hf_checkpoint(path: Path | str) -> bool:
    """Whether ``path`` looks like a Hugging Face model: a ``.gguf`` file, or a folder whose config.json has a
    ``model_type`` (this tool's char-LSTM checkpoints have none)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    try:
        config = json.loads((path / CONFIG).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "model_type" in config


def _resolve_device(device: str) -> torch.device:
    if device.startswith("cuda:") and device[5:].isdigit() and torch.cuda.is_available():
        return torch.device(device)  # one GPU per local rank under torchrun (distributed.model_device)
    if device not in DEVICES:
        raise AuditError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise AuditError("device cuda was asked for but CUDA is not available here; use the cpu device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32  # exact scores; ask for bfloat16 to halve the memory
    if dtype not in DTYPES:
        raise AuditError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype == "float16" and device.type == "cpu":
        raise AuditError("dtype float16 needs CUDA; on the CPU use float32 or bfloat16")
    if dtype == "bfloat16" and device.type == "cpu" and not _cpu_has_bf16_matmul():
        from .. import distributed

        distributed.note(
            "this CPU has no bfloat16 matrix instructions (AVX512_BF16 or AMX): bfloat16 runs far "
            "slower than float32 here; float32 is both faster and exact"
        )
    return DTYPES[dtype]


def _cpu_has_bf16_matmul() -> bool:
    """Whether oneDNN has a bfloat16 matmul path on this CPU (without one, torch emulates it)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True  # cannot tell: say nothing


def _folder_weights(folder: Path) -> list[Path]:
    """The safetensors files transformers will read, or an AuditError (pickle-only or no weights)."""
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        data = read_json(index, "safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise AuditError(f"model {folder}: {SAFETENSORS_INDEX} has no weight_map")
        files = [folder / str(name) for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise AuditError(f"model {folder}: shards named in {SAFETENSORS_INDEX} are missing: {', '.join(missing)}")
        return files
    if (folder / SAFETENSORS).is_file():
        return [folder / SAFETENSORS]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles and not any(folder.glob("*.safetensors")):
        raise AuditError(
            f"model {folder}: pickle weights ({', '.join(pickles)}) are refused because loading them can run code; "
            "convert them with model.save_pretrained(folder, safe_serialization=True)"
        )
    raise AuditError(f"model {folder}: no {SAFETENSORS} (or sharded safetensors with {SAFETENSORS_INDEX})")


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise AuditError(f"model {path} is not a GGUF file (it does not start with GGUF)")
    if importlib.util.find_spec("gguf") is None:
        raise AuditError(f"reading {path.name} needs the gguf package: pip install gguf")
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as e:  # gguf raises assorted errors (ValueError, struct errors, ...) for damaged files
        raise AuditError(f"model {path} is not a valid GGUF file ({_one_line(e)})") from None


def _dequantized_gguf() -> Any:
    """Ask transformers to unpack a GGUF's weights at load time, as this tool's models need.

    Since transformers 5.25 a GGUF loads with its weights left packed when the `kernels` package
    (now one of its requirements) fetches a matmul kernel from the Hub. That would be a network
    request at run time, a model whose weights are unpacked on every forward, and, when the fetch
    fails offline, a warning on stderr that bfloat16 is slow although the model was unpacked after
    all. Asked for explicitly, unpacking skips the fetch and the warning; the weights are the same.
    """
    from transformers import GgufConfig

    return GgufConfig(dequantize=True)


@contextmanager
def _silent_gguf_bar() -> Iterator[None]:
    """Silence the bar transformers draws while it unpacks a GGUF's tensors.

    It is a bare ``tqdm`` that ignores transformers' own switch for progress bars: on a terminal it
    would sit beside this tool's bars and outlive ``--quiet``, and in a CI log it writes carriage
    returns. The unpacking takes a few seconds; the load is reported by the commands themselves.
    """
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no GGUF support in this transformers: nothing draws the bar
        yield
        return
    drawn = getattr(gguf_utils, "tqdm", None)
    if drawn is None:
        yield
        return

    def silent(*args: Any, **kwargs: Any) -> Any:
        return drawn(*args, **{**kwargs, "disable": True})

    gguf_utils.tqdm = silent
    try:
        yield
    finally:
        gguf_utils.tqdm = drawn


def _load_config(source: Path, kwargs: dict[str, Any], where: Path) -> PreTrainedConfig:
    """The model's config, refused unless it is a decoder-only causal LM (cheap: no weights are read)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except LOAD_ERRORS as e:  # unknown model_type, remote code refused, damaged config
        raise AuditError(f"model {where}: unrecognized configuration ({_one_line(e)})") from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING or getattr(config, "is_encoder_decoder", False):
        raise AuditError(
            f"model {where} ({config.model_type}) is not a causal language model; "
            "only decoder-only text models are supported"
        )
    return config


def _check_causal_attention(model: PreTrainedModel, where: Path) -> None:
    """Refuse encoders that transformers can load as LMs (BERT without is_decoder): their attention sees the future."""
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    if flags and not any(flags):
        raise AuditError(
            f"model {where} ({model.config.model_type}) has bidirectional attention: it is not a causal language model"
        )


def load_hf(path: Path | str, *, device: str = "auto", dtype: str | None = None) -> HFModel:
    """Load a local Hugging Face causal LM folder or ``.gguf`` file; every failure is a one-line AuditError."""
    path = Path(path)
    if not path.exists():
        raise AuditError(f"model {path} does not exist")
    torch_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, torch_device)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    training = None
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise AuditError(f"model {path} is a file; give a Hugging Face model folder or a .gguf file")
        _check_gguf(path)
        source, weight_files = path.parent, [path]
        read_kwargs = {**common, "gguf_file": path.name}
        model_kwargs = {**read_kwargs, "quantization_config": _dequantized_gguf()}
    else:
        if not (path / CONFIG).is_file():
            hint = "; for a GGUF model give the .gguf file" if any(path.glob("*.gguf")) else ""
            raise AuditError(f"model {path} has no {CONFIG}: not a Hugging Face model folder{hint}")
        source, read_kwargs = path, common
        model_kwargs = {**common, "use_safetensors": True}  # never fall back to pickle weights
    config = _load_config(source, read_kwargs, path)
    if path.is_dir():
        weight_files = _folder_weights(path)
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise AuditError(
                f"model {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                "save them with tokenizer.save_pretrained(folder)"
            )
        if (path / TRAINING_RECORD).is_file():
            training = read_json(path / TRAINING_RECORD, "training record")
            recorded = training.get("weights_sha256") if isinstance(training, dict) else None
            if recorded and len(weight_files) == 1 and sha256_file(weight_files[0]) != recorded:
                raise AuditError(
                    f"model {path}: the weights do not match the SHA-256 in {TRAINING_RECORD} (replaced or damaged)"
                )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **read_kwargs)
    except Exception as e:
        if not _tokenizer_error(e):
            raise
        raise AuditError(f"model {path}: cannot load the tokenizer ({_one_line(e)})") from None
    if not getattr(tokenizer, "is_fast", False):
        name = type(tokenizer).__name__
        raise AuditError(f"model {path}: tokenizer {name} has no fast (Rust) version, needed for offsets: unsupported")
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # this tool draws its own bars (and --quiet silences them)
    try:
        with _silent_gguf_bar():
            model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch_dtype, **model_kwargs)
    except LOAD_ERRORS as e:
        raise AuditError(f"model {path}: cannot load the weights ({_one_line(e)})") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    _check_causal_attention(model, path)
    check_finite(model, str(path))
    model.to(torch_device).eval()
    hf = HFModel(model, tokenizer, path=path, weight_files=weight_files, training=training)
    if len(tokenizer) > hf.vocab_size:
        raise AuditError(f"model {path}: the tokenizer has {len(tokenizer)} tokens but the model only {hf.vocab_size}")
    return hf


# -- the kind (models/registry.py) --------------------------------------------------------
def _is_hf(path: Path) -> bool:
    """A ``.gguf`` file, or a folder whose config.json names a Hugging Face ``model_type`` (read
    strictly: a damaged config.json is left to the fallback loader, which names the problem)."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    if not path.is_dir():
        return False
    try:
        config = read_json(path / CONFIG, "checkpoint config")
    except AuditError:
        return False
    return isinstance(config, dict) and "model_type" in config


def _load(path: Path, *, device: str = "auto", dtype: str | None = None, base: Any = None) -> HFModel:
    return load_hf(path, device=device, dtype=dtype)


KIND = registry.register(
    registry.Kind(
        "hf",
        title="Hugging Face",
        detect=_is_hf,
        load=_load,
        priority=30,
        requires=("transformers",),
        install="Hugging Face models need transformers: pip install 'exposure-audit[hf]' torch==2.13.0",
    )
)

__all__ = ["HFModel", "KVState", "is_hf_checkpoint", "load_hf"]
