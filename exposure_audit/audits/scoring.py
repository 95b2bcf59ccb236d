"""Scoring records with a model: per-token log-probabilities in one batched forward pass per
record, the membership scores of DESIGN.md ("Memorization of records"), the sampler's
probability of a true suffix (Hayes et al.), and batched greedy decoding with the KV cache.

Everything goes through the model interface (``models/base.py``: ``sequence_logprobs``,
``start_batch``, ``step``), so no architecture is known here. Log-probabilities in the scores
are natural logs; the interface gives log2 and they are converted once.

Definitions (binding, DESIGN.md):
- ``loss``: mean token NLL over the record's tokens (nats); score ``-loss``;
- ``zlib``: ``-loss_bits / zlib_bytes(text)``, ``loss_bits`` the mean token NLL in bits and
  ``zlib_bytes`` the length of ``zlib.compress(text.encode("utf-8"))`` at the default level;
- ``min_k`` (Shi et al. 2023): the mean of the lowest k% of the token log-probs;
- ``min_k_plus_plus`` (Zhang et al. 2024): the same over ``(log p(x_i) - mu_i) / sigma_i``, with
  ``mu_i = E_z[log p(z)]`` and ``sigma_i^2 = E_z[log p(z)^2] - mu_i^2`` under the model's own
  next-token distribution at position i;
- k% of n tokens is ``max(1, floor(k * n))`` tokens (both papers' code floor; at least one so a
  short record still has a score).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import AuditError
from ..models.base import LanguageModel

LN2 = math.log(2.0)
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")
MEMORY_BUDGET = 512 << 20  # bytes of [rows, tokens, vocabulary] float32 tensors one batch may hold
MAX_ROWS = 64


@dataclass(frozen=True)
class Sampler:
    """The deployed decoding settings: temperature, then top-k, then top-p, renormalized
    (the order of Hugging Face's generate). ``greedy``: the argmax, probability 1."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False

    def check(self) -> Sampler:
        if not self.greedy and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise AuditError(f"--temperature {self.temperature:g} must be > 0 (for greedy decoding use --greedy)")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise AuditError(f"--top-p {self.top_p:g} must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise AuditError(f"--top-k {self.top_k} must be at least 1")
        return self

    def describe(self) -> dict[str, float | int | bool | None]:
        return {
            "temperature": None if self.greedy else self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "greedy": self.greedy,
        }


def sampler_logq(logp2: torch.Tensor, s: Sampler) -> torch.Tensor:
    """Natural log of the sampler's distribution q over the last axis, -inf where truncated.

    Top-k keeps every token scoring at least the k-th best (ties kept, as Hugging Face does);
    top-p keeps the smallest set of best tokens whose mass reaches p: a token is dropped when the
    tokens above it already hold at least p (the first is always kept)."""
    z = logp2.float() * LN2
    if s.greedy:
        out = torch.full_like(z, -math.inf)
        return out.scatter(-1, z.argmax(-1, keepdim=True), 0.0)
    z = z / s.temperature
    if s.top_k is not None and s.top_k < z.shape[-1]:
        # Only the k best can survive: top-p then sorts k values, not the whole vocabulary.
        top = z.topk(s.top_k, dim=-1)
        kth = top.values[..., -1:]
        ties = int((z >= kth).sum(-1).max())  # tokens tied with the k-th are kept too
        if ties > s.top_k:
            top = z.topk(ties, dim=-1)
        kept = torch.where(top.values >= kth, top.values, -math.inf)
        kept = _nucleus(kept, s.top_p)
        return torch.full_like(z, -math.inf).scatter(-1, top.indices, kept.log_softmax(-1))
    z = _nucleus(z, s.top_p)
    return z.log_softmax(-1)


def _nucleus(z: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Drop (set to -inf) every token whose better tokens already hold at least ``top_p``."""
    if top_p is None or top_p >= 1.0:
        return z
    ordered, idx = z.sort(dim=-1, descending=True)
    probs = ordered.softmax(-1)
    before = probs.cumsum(-1) - probs
    drop = torch.zeros_like(z, dtype=torch.bool).scatter(-1, idx, before >= top_p)
    return z.masked_fill(drop, -math.inf)


@dataclass
class Scored:
    """One record under one model: natural-log probabilities of its tokens (context excluded)."""

    token_logp: list[float]
    token_zscores: list[float]  # (log p - mu) / sigma per token, for min-k%++
    suffix_logq: float | None  # log of the sampler's probability of the true suffix (-inf: truncated)


def _bottom_mean(values: Sequence[float], k: float) -> float:
    n = len(values)
    take = max(1, int(math.floor(k * n)))
    return float(sum(sorted(values)[:take]) / take)


def membership_scores(s: Scored, text: str, k: float) -> dict[str, float]:
    """The four model-only attacks of one record (higher = more likely a member)."""
    loss = -sum(s.token_logp) / len(s.token_logp)
    return {
        "loss": -loss,
        "zlib": -(loss / LN2) / len(zlib.compress(text.encode("utf-8"))),
        "min_k": _bottom_mean(s.token_logp, k),
        "min_k_plus_plus": _bottom_mean(s.token_zscores, k),
    }


def batches(lengths: Sequence[int], vocab: int, budget: int = MEMORY_BUDGET) -> list[list[int]]:
    """Indices grouped so that one batch's [rows, longest, V] float32 tensors (about four alive at
    once) stay within ``budget`` bytes; rows sorted by length so padding is small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[i]
        if cur and ((len(cur) + 1) * width * vocab * 16 > budget or len(cur) >= MAX_ROWS):
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def score_rows(
    model: LanguageModel,
    rows: Sequence[Sequence[int]],
    starts: Sequence[int],
    *,
    suffix: tuple[int, int] | None = None,
    sampler: Sampler | None = None,
    progress: Callable[[int], None] | None = None,
    budget: int = MEMORY_BUDGET,
) -> list[Scored]:
    """Score every row in one forward pass: the tokens from ``starts[i]`` on (the record after its
    context), and with ``suffix = (P, S)`` the sampler's log-probability of tokens
    ``starts[i] + P .. starts[i] + P + S - 1``."""
    out: list[Scored | None] = [None] * len(rows)
    for group in batches([len(r) for r in rows], model.vocab_size, budget):
        chunk = [rows[i] for i in group]
        lp2 = model.sequence_logprobs(chunk)
        lnp = lp2.float() * LN2
        width = lnp.shape[1]
        device = lnp.device
        targets = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for b, r in enumerate(chunk):
            targets[b, : len(r) - 1] = torch.as_tensor(list(r[1:]), dtype=torch.long)
        true = lnp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, L]: log p of the next true token
        p = lnp.exp()
        mu = torch.where(p > 0, p * lnp, 0.0).sum(-1)
        second = torch.where(p > 0, p * lnp * lnp, 0.0).sum(-1)
        sigma = (second - mu * mu).clamp_min(1e-12).sqrt()
        z = (true - mu) / sigma
        del p
        logq = None
        if suffix is not None and sampler is not None:
            n_pre, n_suf = suffix
            pos = torch.stack([torch.arange(starts[i] + n_pre - 1, starts[i] + n_pre + n_suf - 1) for i in group]).to(
                device
            )
            picked = lp2[torch.arange(len(chunk), device=device).unsqueeze(1), pos]  # [B, S, V]
            q = sampler_logq(picked, sampler)
            logq = q.gather(-1, targets.gather(1, pos).unsqueeze(-1)).squeeze(-1).sum(-1).cpu()
        true_c, z_c = true.cpu(), z.cpu()
        for b, i in enumerate(group):
            lo, hi = starts[i] - 1, len(rows[i]) - 1  # position j predicts token j + 1
            out[i] = Scored(
                token_logp=true_c[b, lo:hi].tolist(),
                token_zscores=z_c[b, lo:hi].tolist(),
                suffix_logq=None if logq is None else float(logq[b]),
            )
        if progress is not None:
            progress(len(chunk))
    return [s for s in out if s is not None]


def greedy_decode(
    model: LanguageModel,
    prefixes: Sequence[Sequence[int]],
    n: int,
    *,
    progress: Callable[[int], None] | None = None,
    max_rows: int = MAX_ROWS,
) -> list[list[int]]:
    """Greedy continuation of ``n`` tokens for every prefix: one batched forward pass over the
    prefixes, then one cached step per token. Rows of equal length share a batch (a KV cache holds
    one length for all its rows)."""
    out: list[list[int]] = [[] for _ in prefixes]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        by_length.setdefault(len(p), []).append(i)
    for idx in by_length.values():
        for at in range(0, len(idx), max_rows):
            group = idx[at : at + max_rows]
            state, logp = model.start_batch([prefixes[i] for i in group])
            made = []
            for t in range(n):
                tok = logp.argmax(-1)
                made.append(tok.cpu())
                if t + 1 < n:
                    state, logp = model.step(state, tok)
            tokens = torch.stack(made, dim=1).tolist()
            for b, i in enumerate(group):
                out[i] = tokens[b]
            if progress is not None:
                progress(len(group))
    return out


def token_unit(model: LanguageModel) -> str:
    """What one token is, from the vocabulary alone: "character" when every text token spells one
    character (the char-LSTM), "byte" for a byte alphabet without merges, else "token"."""
    table = [b for b in model.token_bytes() if b is not None]
    try:
        if all(len(b.decode("utf-8")) == 1 for b in table):
            return "character"
    except UnicodeDecodeError:
        pass
    return "byte" if all(len(b) == 1 for b in table) else "token"


__all__ = [
    "ATTACKS",
    "Sampler",
    "Scored",
    "greedy_decode",
    "membership_scores",
    "sampler_logq",
    "score_rows",
    "token_unit",
]
