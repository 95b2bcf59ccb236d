"""One decoding step of a Hugging Face model that attends to a stored state in place.

The plain way to step rows of a :class:`~.hf.KVState` builds a ``DynamicCache`` for the call: the
shared prefix repeated per row and joined to each row's own tokens (one copy of every row's
whole context), the cache then appends the new token (a second copy), and the new state is cut
back out of it (a third). Attention then runs per row, the shared prefix's keys read once per
row as a separate small product.

A split step instead runs the model with a cache that only records each layer's new keys and
values (``_Capture``) and an attention function (registered with transformers'
``AttentionInterface``) that reads the stored state where it lies:

- the shared prefix, held once: one matrix product of every row's queries against its keys;
- each row's own tokens, with the padding of a padded state masked out;
- the new token itself.

The three parts' scores are one softmax (the same arithmetic as attention over the joined keys,
up to float rounding), and the new state is each row's own tokens with its new one written into
its first free slot: one copy. The model's own layers compute queries, keys (rotary positions
included) and everything else; only the attention product is ours.

It is used where that arithmetic is the model's: a model whose attention goes through the
interface with a plain softmax (no logit soft-capping, sliding window, attention sinks or
position bias). That is checked on every call: each layer must hand its new keys to the cache
and call this function, with none of those arguments. A model that does not is stepped the
plain way from then on (:class:`Unsupported`, caught by the caller).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

import torch

NAME = "exposure_audit_split"
# Arguments an attention function may be given that change its arithmetic from a plain softmax.
UNSUPPORTED = ("softcap", "sliding_window", "s_aux", "sinks", "position_bias", "attention_sinks")
_ACTIVE: contextvars.ContextVar[SplitCall | None] = contextvars.ContextVar("exposure_audit_split", default=None)
_registered = False


class Unsupported(Exception):
    """The model's step cannot be split: step it the plain way."""


class SplitCall:
    """What one split step reads (the stored state) and what it records (each layer's new keys)."""

    def __init__(
        self,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None,
        own: list[tuple[torch.Tensor, torch.Tensor]],
        valid: torch.Tensor | None,
    ) -> None:
        self.prefix = prefix  # per layer ([1, kv_heads, P, d] keys, values), or None
        self.own = own  # per layer ([rows, kv_heads, S, d] keys, values): each row's own tokens
        self.valid = valid  # [rows, S] bool, False on a padded row's padding; None: all valid
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.attended: set[int] = set()


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, split_attention)
        _registered = True


@functools.cache
def _capture_class() -> type:
    from transformers import DynamicCache

    class _Capture(DynamicCache):
        """A cache for one call that records each layer's new keys and values and hands them back alone."""

        def __init__(self, call: SplitCall) -> None:
            super().__init__()
            self.call = call

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            self.call.new[int(layer_idx)] = (key_states, value_states)
            return key_states, value_states

    return _Capture


def capture_cache(call: SplitCall) -> Any:
    """A cache for ``call`` that records each layer's new keys and values (the class built once)."""
    return _capture_class()(call)


def run(model: Any, call: SplitCall, ids: torch.Tensor, positions: torch.Tensor, layers: int) -> torch.Tensor:
    """The model's last-position logits for one token per row, attending as ``call`` says.

    Raises :class:`Unsupported` where the model's layers did not go through the split attention."""
    _register()
    config = model.config
    held = config._attn_implementation_internal
    token = _ACTIVE.set(call)
    config._attn_implementation_internal = NAME
    try:
        rows = int(ids.shape[0])
        # An already-built 4D mask is passed through untouched; the split attention builds its own.
        mask = torch.ones(rows, 1, 1, 1, dtype=torch.bool, device=ids.device)
        out = model(
            input_ids=ids, position_ids=positions, attention_mask=mask, cache=capture_cache(call), use_cache=True
        )
    finally:
        config._attn_implementation_internal = held
        _ACTIVE.reset(token)
    if len(call.new) != layers or call.attended != set(call.new):
        raise Unsupported("the model's layers do not all attend through the split attention")
    return out.logits[:, -1]


def split_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over [shared prefix | own tokens | itself] (module docstring).

    ``query`` [rows, heads, 1, d]; ``key``/``value`` [rows, kv_heads, 1, d], the new token's.
    Returns [rows, 1, heads, d], as transformers' attention functions do."""
    call = _ACTIVE.get()
    layer = getattr(module, "layer_idx", None)
    if call is None or layer is None or module.training or query.shape[2] != 1:
        raise Unsupported("split attention outside a split step")
    if any(kwargs.get(k) is not None for k in UNSUPPORTED):
        raise Unsupported("the model's attention is not a plain softmax")
    layer = int(layer)
    rows, heads, _, d = query.shape
    kv_heads = int(key.shape[1])
    groups = heads // kv_heads
    scale = float(scaling) if scaling is not None else d**-0.5
    q = query.reshape(rows, kv_heads, groups, d)  # head h reads kv head h // groups
    scores, parts = [], []
    if call.prefix is not None:  # one product per kv head over every row's queries
        pk, pv = call.prefix[layer]
        flat = q.transpose(0, 1).reshape(kv_heads, rows * groups, d)
        scores.append(torch.bmm(flat, pk[0].transpose(1, 2)).view(kv_heads, rows, groups, -1).transpose(0, 1))
        parts.append(("prefix", pv))
    ok, ov = call.own[layer]
    if ok.shape[2]:
        s = torch.matmul(q, ok.transpose(2, 3))  # [rows, kv_heads, groups, S]
        if call.valid is not None:
            s = s.masked_fill(~call.valid.view(rows, 1, 1, -1), float("-inf"))
        scores.append(s)
        parts.append(("own", ov))
    scores.append((q * key).sum(-1, keepdim=True))  # the new token: [rows, kv_heads, groups, 1]
    parts.append(("new", value))
    joined = torch.cat(scores, dim=-1).mul_(scale)
    weights = torch.softmax(joined, dim=-1, dtype=torch.float32).to(query.dtype)
    out, lo = None, 0
    for (kind, v), s in zip(parts, scores):
        w = weights[..., lo : lo + s.shape[-1]]
        lo += s.shape[-1]
        if kind == "prefix":
            flat = w.transpose(0, 1).reshape(kv_heads, rows * groups, -1)
            part = torch.bmm(flat, v[0]).view(kv_heads, rows, groups, d).transpose(0, 1)
        elif kind == "own":
            part = torch.matmul(w, v)
        else:
            part = w * v
        out = part if out is None else out.add_(part)
    call.attended.add(layer)
    return out.reshape(rows, 1, heads, d), None
