"""The prefix-tree engine: score, brute force, enumeration and pruned exact rank.

Every candidate of a format shares the fixed text before the first hole, so its state is
computed once (:func:`compile_format`). From there the candidates form a tree, one level per
remaining character (a hole character branches into its alphabet, a fixed character does
not), ending with the closing newline. Walking the tree costs one model step per node
instead of one per character of every candidate.

The walk is depth-first over batches of nodes, so memory holds at most (depth x batch)
states whatever |R| is, and each model call steps about ``batch`` rows (the size that runs
fastest on a CPU). Costs (log-perplexity, bits) are accumulated in float64.

Ties: two engines may compute one candidate's score with float32 rounding that differs in
the last bits (a batched matrix product need not round the same for every batch). Scores
within ``TIE_TOLERANCE`` bits of the canary's count as ties, and ties count against the
canary, so every method gives the same rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import AuditError
from ..formats import Format
from ..models.base import Scorer
from ..models.vocab import Vocabulary

TIE_TOLERANCE = 1e-4  # bits
NEWLINE = "\n"
DEFAULT_BATCH = 1024
INDEX_LIMIT = 1 << 62  # partial indices are tracked in int64 while the space fits


@dataclass
class Tail:
    """A format compiled for one model: the shared prefix state and the remaining levels."""

    fmt: Format
    context: str
    state: Any  # after context + fixed prefix (batch of one)
    logp: torch.Tensor  # [1, V] log2-probs of the first tail character
    base_cost: float  # bits of the fixed prefix given the context
    levels: list[torch.Tensor]  # ids allowed at each tail level (hole: its alphabet; fixed: one id)
    leaves_below: list[int]  # number of leaves under a node at each depth (len(levels) + 1 entries)
    prefix_steps: int
    vocab: Vocabulary
    track_index: bool = True

    @property
    def depth(self) -> int:
        return len(self.levels)

    def tree_steps(self) -> int:
        """Model steps to walk the whole tree (every node except the leaves)."""
        total, width = 0, 1
        for level in self.levels[:-1]:
            width *= len(level)
            total += width
        return total

    def secret_ids(self, secrets: Sequence[str]) -> torch.Tensor:
        """``[n, depth]`` vocabulary ids of the tail of each candidate (secret filled in)."""
        fmt = self.fmt
        texts = [fmt.render(s)[len(fmt.prefix) :] + NEWLINE for s in secrets]
        return torch.as_tensor(np.stack([self.vocab.encode(t) for t in texts]), dtype=torch.long)


def check_vocabulary(vocab: Vocabulary, fmt: Format, context: str = NEWLINE) -> None:
    """Error unless the model can produce every character of the context and the format."""
    if not context:
        raise AuditError("the context must not be empty (it is the text before the canary, e.g. a newline)")
    vocab.require(context, "the context")
    for c in sorted(fmt.characters):
        if c not in vocab:
            raise AuditError(f"format {fmt.source!r}: character {c!r} is missing from the model's vocabulary")
    vocab.require(NEWLINE, "the line break")


def compile_format(scorer: Scorer, fmt: Format, context: str = NEWLINE) -> Tail:
    """Run the model over ``context`` + the format's fixed prefix once; build the tail levels."""
    vocab = scorer.vocab
    check_vocabulary(vocab, fmt, context)
    steps0 = scorer.steps
    state, logp = scorer.start(context)
    cost = 0.0
    for c in fmt.prefix:
        i = vocab.id(c)
        cost += -float(logp[0, i])
        state, logp = scorer.step(state, torch.tensor([i]))
    # A fixed level has one child, so the mixed-radix index over all levels is the secret's index.
    tail_slots = list(fmt.slots[len(fmt.prefix) :]) + [NEWLINE]
    levels = [torch.as_tensor([vocab.id(c) for c in slot], dtype=torch.long) for slot in tail_slots]
    below = [1] * (len(levels) + 1)
    for d in range(len(levels) - 1, -1, -1):
        below[d] = below[d + 1] * len(levels[d])
    return Tail(
        fmt=fmt,
        context=context,
        state=state,
        logp=logp,
        base_cost=cost,
        levels=levels,
        leaves_below=below,
        prefix_steps=scorer.steps - steps0,
        vocab=vocab,
        track_index=fmt.space_size < INDEX_LIMIT,
    )


# -- scoring whole texts -------------------------------------------------------------------
def _nlp(logp: torch.Tensor) -> torch.Tensor:
    return (-logp).double()


def score_tail(scorer: Scorer, tail: Tail, secrets: Sequence[str], batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Log-perplexity (bits) of each candidate of ``tail``'s format, from the shared prefix state."""
    if not secrets:
        return np.zeros(0)
    ids = tail.secret_ids(secrets)
    out = np.empty(len(secrets))
    for lo in range(0, len(secrets), batch):
        chunk = ids[lo : lo + batch]
        n = chunk.shape[0]
        state = scorer.take(tail.state, torch.zeros(n, dtype=torch.long))
        nlp = _nlp(tail.logp).expand(n, -1)
        cost = torch.full((n,), tail.base_cost, dtype=torch.float64)
        rows = torch.arange(n)
        for d in range(tail.depth):
            cost += nlp[rows, chunk[:, d]]
            if d + 1 < tail.depth:
                state, logp = scorer.step(state, chunk[:, d])
                nlp = _nlp(logp)
        out[lo : lo + n] = cost.numpy()
    return out


def score(model: Any, texts: Sequence[str], *, context: str = NEWLINE, batch: int = DEFAULT_BATCH) -> list[float]:
    """Log-perplexity in bits of each text, scored as its own line.

    Px(x_1..x_k) = -sum_i log2 P(x_i | context, x_<i) over the text's characters and the
    closing newline. Characters outside the vocabulary are scored as the unknown symbol.
    """
    scorer = model if isinstance(model, Scorer) else Scorer(model)
    vocab = scorer.vocab
    start_state, start_logp = scorer.start(context)
    out = [0.0] * len(texts)
    by_len: dict[int, list[int]] = {}
    for i, t in enumerate(texts):
        by_len.setdefault(len(t), []).append(i)
    for length, idxs in sorted(by_len.items()):
        for lo in range(0, len(idxs), batch):
            group = idxs[lo : lo + batch]
            n = len(group)
            ids = torch.as_tensor(np.stack([vocab.encode(texts[i] + NEWLINE) for i in group]), dtype=torch.long)
            state = scorer.take(start_state, torch.zeros(n, dtype=torch.long))
            nlp = _nlp(start_logp).expand(n, -1)
            cost = torch.zeros(n, dtype=torch.float64)
            rows = torch.arange(n)
            for d in range(length + 1):
                cost += nlp[rows, ids[:, d]]
                if d < length:
                    state, logp = scorer.step(state, ids[:, d])
                    nlp = _nlp(logp)
            for i, c in zip(group, cost.tolist()):
                out[i] = c
    return out


# -- counting candidates under thresholds ---------------------------------------------------
class ThresholdCounter:
    """Counts, for each threshold, the leaves with cost <= threshold + TIE_TOLERANCE."""

    def __init__(self, thresholds: Sequence[float]) -> None:
        t = np.asarray(thresholds, dtype=np.float64) + TIE_TOLERANCE
        self.order = np.argsort(t)
        self.sorted = t[self.order]
        self.hist = np.zeros(len(t) + 1, dtype=np.int64)

    def add(self, costs: np.ndarray) -> None:
        # first threshold index with threshold >= cost: that leaf counts for it and every larger one
        pos = np.searchsorted(self.sorted, costs, side="left")
        self.hist += np.bincount(pos, minlength=len(self.hist))

    def counts(self) -> np.ndarray:
        cum = np.cumsum(self.hist[:-1])
        out = np.empty_like(cum)
        out[self.order] = cum
        return out


@dataclass
class WalkResult:
    steps: int
    complete: bool
    unexplored_leaves: int  # leaves under nodes left unexpanded (within the bound) when stopped
    seconds: float


@dataclass
class _Nodes:
    depth: int
    state: Any
    nlp: torch.Tensor  # float64 [n, V]: -log2 p of the next character
    cost: torch.Tensor  # float64 [n]
    index: torch.Tensor  # int64 [n]: partial index over the hole characters so far
    end: int = -1  # rows [0, end) are still to expand; consumed from the end, never copied

    def __post_init__(self) -> None:
        if self.end < 0:
            self.end = int(self.cost.shape[0])


def walk(
    scorer: Scorer,
    tail: Tail,
    on_leaves: Callable[[np.ndarray, np.ndarray], None],
    *,
    bound: float | None = None,
    max_steps: int | None = None,
    batch: int = DEFAULT_BATCH,
    index_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> WalkResult:
    """Depth-first walk of the candidate tree, calling ``on_leaves(costs, indices)`` per batch.

    ``bound``: skip every prefix whose cost already exceeds bound + TIE_TOLERANCE (costs only
    grow, so none of its candidates can score at or under the bound).
    ``max_steps``: stop before a model call that would pass it (``complete`` is then False).
    ``index_range``: only candidates with ``lo <= index < hi`` (a shard); shards add up.
    """
    t0 = time.perf_counter()
    steps0 = scorer.steps
    limit = math.inf if bound is None else bound + TIE_TOLERANCE
    lo_idx, hi_idx = index_range if index_range is not None else (0, tail.fmt.space_size)
    if index_range is not None and not tail.track_index:
        raise AuditError("sharding by index needs |R| < 2**62")
    root = _Nodes(
        0,
        tail.state,
        _nlp(tail.logp),
        torch.tensor([tail.base_cost], dtype=torch.float64),
        torch.zeros(1, dtype=torch.long),
    )
    stack: list[_Nodes] = [root] if root.cost[0] <= limit else []
    survival = [1.0] * (tail.depth + 1)  # running share of children kept by the bound, per depth
    while stack:
        top = stack[-1]
        d = top.depth
        level = tail.levels[d]
        k = len(level)
        want = max(1, int(batch / (k * survival[d])))
        take = min(want, top.end)
        lo, hi = top.end - take, top.end
        top.end = lo
        if lo == 0:
            stack.pop()
        nlp, cost, index = top.nlp[lo:hi], top.cost[lo:hi], top.index[lo:hi]
        child_cost = (cost[:, None] + nlp[:, level]).reshape(-1)
        parent = torch.arange(lo, hi).repeat_interleave(k)
        choice = torch.arange(k).repeat(take)
        if tail.track_index:
            child_index = index.repeat_interleave(k) * k + choice
        else:
            child_index = torch.zeros_like(parent)
        mask = child_cost <= limit if bound is not None else None
        if index_range is not None:
            span = tail.leaves_below[d + 1]
            inside = (child_index * span < hi_idx) & ((child_index + 1) * span > lo_idx)
            mask = inside if mask is None else mask & inside
        if mask is not None:
            survival[d] = 0.8 * survival[d] + 0.2 * max(float(mask.float().mean()), 1.0 / (k * batch))
            sel = mask.nonzero().view(-1)
            child_cost, parent, choice, child_index = child_cost[sel], parent[sel], choice[sel], child_index[sel]
        if d + 1 == tail.depth:
            on_leaves(child_cost.numpy(), child_index.numpy())
            continue
        m = int(child_cost.shape[0])
        if m == 0:
            continue
        if max_steps is not None and scorer.steps - steps0 + m > max_steps:
            unexplored = m * tail.leaves_below[d + 1] + sum(s.end * tail.leaves_below[s.depth] for s in stack)
            return WalkResult(scorer.steps - steps0, False, unexplored, time.perf_counter() - t0)
        state, logp = scorer.step(scorer.take(top.state, parent), level[choice])
        if progress is not None:
            progress(m)
        stack.append(_Nodes(d + 1, state, _nlp(logp), child_cost, child_index))
    return WalkResult(scorer.steps - steps0, True, 0, time.perf_counter() - t0)


def enumerate_counts(
    scorer: Scorer,
    tail: Tail,
    thresholds: Sequence[float],
    *,
    batch: int = DEFAULT_BATCH,
    index_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
    on_leaves: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, WalkResult]:
    """For each threshold, how many candidates of the format score at or under it (+ tolerance)."""
    counter = ThresholdCounter(thresholds)

    def leaves(costs: np.ndarray, index: np.ndarray) -> None:
        counter.add(costs)
        if on_leaves is not None:
            on_leaves(costs, index)

    result = walk(scorer, tail, leaves, batch=batch, index_range=index_range, progress=progress)
    return counter.counts(), result


@dataclass
class PrunedRank:
    rank: int | None  # exact, when the walk completed
    bounds: tuple[int, int]  # proven lower and upper bound on the rank
    result: WalkResult


def pruned_rank(
    scorer: Scorer,
    tail: Tail,
    canary_cost: float,
    *,
    max_steps: int | None = None,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> PrunedRank:
    """Exact rank by walking only prefixes whose cost is within the canary's (DESIGN.md).

    Past ``max_steps`` it stops: the candidates found so far are a proven lower bound on the
    rank, and found + the leaves under every unexpanded in-bound node an upper bound.
    """
    found = 0

    def leaves(costs: np.ndarray, index: np.ndarray) -> None:
        nonlocal found
        found += len(costs)

    result = walk(scorer, tail, leaves, bound=canary_cost, max_steps=max_steps, batch=batch, progress=progress)
    space = tail.fmt.space_size
    if result.complete:
        rank = max(1, found)
        return PrunedRank(rank, (rank, rank), result)
    return PrunedRank(None, (max(1, found), min(space, max(1, found + result.unexplored_leaves))), result)


def brute_force_counts(
    scorer: Scorer,
    fmt: Format,
    thresholds: Sequence[float],
    *,
    context: str = NEWLINE,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The naive reference: score every candidate's whole line with :func:`score`."""
    counter = ThresholdCounter(thresholds)
    size = fmt.space_size
    for lo in range(0, size, batch):
        texts = [fmt.render(fmt.fill(i)) for i in range(lo, min(size, lo + batch))]
        counter.add(np.asarray(score(scorer, texts, context=context, batch=batch)))
        if progress is not None:
            progress(len(texts))
    return counter.counts()


def brute_force_steps(fmt: Format, context: str = NEWLINE) -> int:
    """Model steps brute force needs: every character of every candidate line."""
    return fmt.space_size * len(fmt.slots)
