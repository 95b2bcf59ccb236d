"""The tree engine: score, brute force, enumeration and pruned exact rank.

Every candidate of a format shares the context and the line's first tokens, so their state is
computed once (:func:`~exposure_audit.exposure.tree.compile_format`). From there the candidates
form a tree of token sequences (one character per level for a character model), ending with
the closing newline. Walking the tree costs one model step per node instead of one per token of
every candidate.

The walk is depth-first over batches of nodes, so memory holds at most (depth x batch)
states whatever |R| is, and each model call steps about ``batch`` rows (the size that runs
fastest on a CPU). Costs (log-perplexity, bits) are accumulated in float64.

Ties: two engines may compute one candidate's score with float32 rounding that differs in
the last bits (a batched matrix product need not round the same for every batch). Scores
within ``TIE_TOLERANCE`` bits of the canary's count as ties, and ties count against the
canary, so every method gives the same rank (docs/method.md).
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.formats import Format
from ..errors import AuditError, memory_errors_as_audit_errors
from ..memory import nbytes
from ..models.base import Scorer, State
from .options import DEFAULT_BATCH  # candidates or nodes per model call (MeasureOptions.batch's default)
from .tree import CompiledFormat, compile_format

TIE_TOLERANCE = 1e-4  # bits

__all__ = [
    "DEFAULT_BATCH",
    "TIE_TOLERANCE",
    "CompiledFormat",
    "brute_force_counts",
    "brute_force_steps",
    "children",
    "compile_format",
    "enumerate_counts",
    "pruned_rank",
    "score",
    "score_secrets",
    "score_secrets_shared",
    "walk",
]


# -- the memory a search holds --------------------------------------------------------------
@dataclass(frozen=True)
class StateSize:
    """What one row of a search costs in memory, measured on the model (the engine never looks
    inside a state: it counts the bytes of its tensors, :func:`~exposure_audit.memory.nbytes`)."""

    root: int  # bytes one more row adds to a batch of the root's state (0 where rows share it)
    growth: int  # bytes one more token adds to a row (a KV cache grows, an LSTM's state does not)
    logp: int  # bytes of one row's next-token log-probabilities (the format's columns)
    depth: int  # most tokens on a path below the root (the closing newline included)
    fanout: int  # most children of one node
    whole: int = 0  # bytes of the root's one-row state (what a model call may spell out per row)
    out: int = 0  # bytes of one row of a call's whole output (the vocabulary's logits, float32), gone after it

    def row(self, depth: int) -> int:
        """State + log-probabilities of one row ``depth`` tokens below the root."""
        return self.root + self.growth * depth + self.logp

    @property
    def deepest(self) -> int:
        return self.row(self.depth)

    def spelled(self, depth: int) -> int:
        """Per row of a call ``depth`` below the root: the input and output caches the model
        builds in full where rows share a prefix (nothing more where they do not)."""
        return 2 * (self.whole + self.growth * depth) if self.root < self.whole else 0

    @property
    def call(self) -> int:
        """Per row of a model call at the deepest level beside the stored states: its gathered
        input and its output, the caches spelled out, the logits over the vocabulary and the
        log-probabilities kept."""
        return 2 * (self.root + self.growth * self.depth) + self.spelled(self.depth) + self.out + self.logp


def state_size(scorer: Scorer, cf: CompiledFormat) -> StateSize:
    """Measure :class:`StateSize` with one uncounted probe step from the root (cached on ``cf``)."""
    cached = getattr(cf, "_state_size", None)
    if cached is not None:
        return cached
    model = scorer.model
    one, two = (model.take(cf.state, torch.zeros(n, dtype=torch.long)) for n in (1, 2))
    root = max(0, nbytes(two) - nbytes(one))  # what a row adds (a shared prefix is held once)
    growth = 0
    if len(cf.edges[0]):
        tok = cf.edges[0].ids[:1]
        probe = Scorer(model)  # uncounted: a scorer of its own
        after = nbytes(probe.step(two, tok.repeat(2), cf.columns)[0]) - nbytes(probe.step(one, tok, cf.columns)[0])
        growth = max(0, after - root)
    longest = [0] * (cf.end + 1)
    for p in range(cf.end):  # positions are numbered so that every edge goes forward
        for q in cf.edges[p].next.tolist():
            longest[q] = max(longest[q], longest[p] + 1)
    fanout = max((len(e) for e in cf.edges), default=1)
    logp = int(cf.logp.element_size() * cf.logp.shape[-1])
    out = 4 * int(model.vocab_size)
    size = StateSize(root, growth, logp, longest[cf.end], fanout, nbytes(cf.state), out)
    object.__setattr__(cf, "_state_size", size)
    return size


# -- scoring token paths ---------------------------------------------------------------------
def _score_paths(
    scorer: Scorer,
    state: State,
    logp: torch.Tensor,
    base: float,
    paths: Sequence[Sequence[int]],
    batch: int,
    free: Sequence[int] | None = None,
    cf: CompiledFormat | None = None,
) -> np.ndarray:
    """``base`` + the bits of each path, stepped from a one-row ``state`` whose next-token
    log2-probabilities are ``logp``; the first ``free[i]`` tokens of path i (context) cost
    nothing. Paths of one length share model calls. With ``cf``, the paths are paths of its tree
    and ``logp`` holds its columns (so does every step)."""
    columns = None if cf is None else cf.columns
    out = np.empty(len(paths))
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_len[len(p)].append(i)
    for length, idxs in sorted(by_len.items()):
        for lo in range(0, len(idxs), batch):
            group = idxs[lo : lo + batch]
            n = len(group)
            ids = torch.as_tensor([list(paths[i]) for i in group], dtype=torch.long).view(n, length)
            at = ids if cf is None else cf.cols_of(ids)  # where each token's log2-probability lies
            st = scorer.take(state, torch.zeros(n, dtype=torch.long))
            lp = logp.expand(n, -1)
            cost = torch.full((n,), base, dtype=torch.float64)
            rows = torch.arange(n)
            counted = None if free is None else torch.as_tensor([free[i] for i in group])
            for d in range(length):
                bits = lp[rows, at[:, d]].double()
                cost -= bits if counted is None else torch.where(counted <= d, bits, 0.0)
                if d + 1 < length:
                    st, lp = scorer.step(st, ids[:, d], columns)
            out[group] = cost.numpy()
    return out


def score_secrets(scorer: Scorer, cf: CompiledFormat, secrets: Sequence[str], batch: int = DEFAULT_BATCH) -> np.ndarray:
    """Log-perplexity (bits) of the candidates with these secrets, from the format's shared state."""
    if not secrets:
        return np.zeros(0)
    paths = cf.line_ids(secrets)
    return _score_paths(scorer, cf.state, cf.logp, cf.base_cost, paths, batch, cf.free_tokens(paths), cf)


def score_secrets_shared(
    scorer: Scorer, cf: CompiledFormat, secrets: Sequence[str], batch: int = DEFAULT_BATCH
) -> np.ndarray:
    """:func:`score_secrets` stepping each shared prefix once: the candidates, sorted by token
    path, go in chunks of ``batch``, and within a chunk every distinct prefix is one model row
    (at most ``batch`` rows per call, as there). Many candidates of one format share their first
    tokens, so this takes a fraction of the steps (rescore.py's bands: about a third for 4 holes).
    The costs are the same sums (to the float rounding of different batch shapes)."""
    if not secrets:
        return np.zeros(0)
    paths = cf.line_ids(secrets)
    free = cf.free_tokens(paths)
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    out = np.empty(len(paths))
    for lo in range(0, len(order), batch):
        idx = order[lo : lo + batch]
        ps = [paths[i] for i in idx]
        cost = np.full(len(idx), cf.base_cost)
        node = [0] * len(idx)  # each path's row in the current level's state
        state, logp = cf.state, cf.logp
        alive, d = list(range(len(idx))), 0
        while alive:
            rows = torch.as_tensor([node[j] for j in alive], dtype=torch.long)
            toks = torch.as_tensor([ps[j][d] for j in alive], dtype=torch.long)
            bits = logp[rows, cf.cols_of(toks)].double().cpu().numpy()
            for k, j in enumerate(alive):
                if free is None or free[idx[j]] <= d:
                    cost[j] -= bits[k]
            alive = [j for j in alive if len(ps[j]) > d + 1]
            if not alive:
                break
            prefix: dict[tuple[int, int], int] = {}  # (parent row, token) -> row of the longer prefix
            for j in alive:
                node[j] = prefix.setdefault((node[j], ps[j][d]), len(prefix))
            parents = torch.as_tensor([r for r, _ in prefix], dtype=torch.long)
            state, logp = scorer.step(scorer.take(state, parents), torch.as_tensor([t for _, t in prefix]), cf.columns)
            d += 1
        out[idx] = cost
    return out


def score(model: Any, texts: Sequence[str], *, context: str | None = None, batch: int = DEFAULT_BATCH) -> list[float]:
    """Log-perplexity in bits of each text, scored as its own line (docs/method.md).

    Px = -sum log2 P(token | context, earlier tokens) over the line's tokens in its canonical
    tokenization, closing newline included; the context's tokens are never counted. ``context``
    None is the model's default (BOS, else a newline).
    """
    scorer = Scorer.of(model)
    encoded = scorer.model.encode_lines(list(texts), context)
    out = np.empty(len(texts))
    by_ctx: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (ctx, _) in enumerate(encoded):
        by_ctx[tuple(ctx)].append(i)
    for ctx, idxs in by_ctx.items():
        state, logp = scorer.start(list(ctx))
        out[idxs] = _score_paths(scorer, state, logp, 0.0, [encoded[i][1] for i in idxs], batch)
    return out.tolist()


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
    unexplored_leaves: int  # candidates under nodes left unexpanded (within the bound) when stopped
    seconds: float
    leaves: int = 0  # complete token paths reached
    noncanonical_leaves: int = 0  # of those, paths that are not their text's canonical tokenization
    foreign_steps: int = 0  # with index_range: steps of nodes whose candidates start before the shard


@dataclass
class Nodes:
    """Expanded nodes of one depth (tokens read since the root), waiting for their children."""

    depth: int
    state: State
    logp: torch.Tensor  # [n, len(cf.columns)] log2-probabilities of the format's next tokens
    cost: torch.Tensor  # float64 [n]
    pos: torch.Tensor  # int64 [n]: position in the line (see tree.py)
    index: torch.Tensor  # int64 [n]: partial index over the hole characters so far
    path: torch.Tensor | None  # int64 [n, depth]: the tokens so far (only when leaves need the canonical check)
    end: int = -1  # rows [0, end) are still to expand; consumed from the end, never copied

    def __post_init__(self) -> None:
        if self.end < 0:
            self.end = int(self.cost.shape[0])


@dataclass
class _Children:
    cost: torch.Tensor
    parent: torch.Tensor  # row in the parent batch
    token: torch.Tensor
    pos: torch.Tensor
    index: torch.Tensor


def children(cf: CompiledFormat, nodes: Nodes, lo: int, hi: int) -> _Children:
    """Every child of rows [lo, hi): one per token that may follow each row's position."""
    pos = nodes.pos[lo:hi]
    first = int(pos[0])
    if bool((pos == first).all()):
        groups = [(first, torch.arange(lo, hi))]
    else:
        groups = [(int(p), lo + (pos == p).nonzero().view(-1)) for p in torch.unique(pos)]
    parts = []
    for p, rows in groups:
        e = cf.edges[p]
        k = len(e)
        if k == 0:
            continue
        n = int(rows.shape[0])
        cost = (nodes.cost[rows][:, None] + e.bits(nodes.logp[rows])).reshape(-1)
        parent = rows.repeat_interleave(k)
        which = torch.arange(k).repeat(n)
        if cf.track_index:
            index = nodes.index[rows].repeat_interleave(k) * e.mult[which] + e.add[which]
        else:
            index = torch.zeros_like(parent)
        parts.append(_Children(cost, parent, e.ids[which], e.next[which], index))
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return _Children(torch.zeros(0, dtype=torch.float64), empty, empty, empty, empty)
    return _Children(*(torch.cat([getattr(c, f) for c in parts]) for f in ("cost", "parent", "token", "pos", "index")))


def _select(ch: _Children, sel: torch.Tensor) -> _Children:
    return _Children(ch.cost[sel], ch.parent[sel], ch.token[sel], ch.pos[sel], ch.index[sel])


def walk(
    scorer: Scorer,
    cf: CompiledFormat,
    on_leaves: Callable[[np.ndarray, np.ndarray], None],
    *,
    bound: float | None = None,
    max_steps: int | None = None,
    batch: int = DEFAULT_BATCH,
    index_range: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> WalkResult:
    """Depth-first walk of the candidate tree, calling ``on_leaves(costs, indices)`` per batch of
    candidates (canonical leaves only).

    ``bound``: skip every prefix whose cost already exceeds bound + TIE_TOLERANCE (costs only
    grow, so none of its candidates can score at or under the bound).
    ``max_steps``: stop before a model call that would pass it (``complete`` is then False).
    ``index_range``: only candidates with ``lo <= index < hi`` (a shard); shards add up. A node
    whose candidates straddle shards is stepped by each of them; ``foreign_steps`` counts the
    ones whose first candidate lies before this shard, so that the shards' ``steps -
    foreign_steps`` add up to the steps of one walk of the whole range (each node once).

    Memory: the stack holds one batch of nodes per depth, so the rows stepped per call are
    capped (:func:`walk_cap`) to keep every depth's states within ``scorer.budget``; the cap
    changes which rows share a call, never which nodes are stepped or pruned.
    """
    with memory_errors_as_audit_errors(scorer.budget.limit):
        return _walk(scorer, cf, on_leaves, bound, max_steps, batch, index_range, progress)


def walk_cap(scorer: Scorer, cf: CompiledFormat, batch: int) -> int:
    """Most rows a walk steps per call: ``batch``, or fewer where a full stack of that many rows
    per depth (plus the call's gathered input) would pass the memory budget. Fails before any
    work when not even one node's children fit."""
    size = state_size(scorer, cf)
    per_row = sum(size.row(d) for d in range(1, size.depth + 1)) + size.call
    fanout = max(1, size.fanout)
    scorer.budget.require(per_row * fanout + size.whole, f"a walk of {cf.fmt.source!r} ({fanout} children per node)")
    return max(fanout, min(batch, (scorer.budget.limit - size.whole) // max(per_row, 1)))


def _walk(
    scorer: Scorer,
    cf: CompiledFormat,
    on_leaves: Callable[[np.ndarray, np.ndarray], None],
    bound: float | None,
    max_steps: int | None,
    batch: int,
    index_range: tuple[int, int] | None,
    progress: Callable[[int], None] | None,
) -> WalkResult:
    t0 = time.perf_counter()
    steps0 = scorer.steps
    limit = math.inf if bound is None else bound + TIE_TOLERANCE
    lo_idx, hi_idx = index_range if index_range is not None else (0, cf.fmt.space_size)
    if index_range is not None and not cf.track_index:
        raise AuditError("sharding by index needs |R| < 2**62")
    below = torch.as_tensor(cf.leaves_below, dtype=torch.long) if index_range is not None else None
    leaves = noncanonical = foreign = 0
    root = Nodes(
        0,
        cf.state,
        cf.logp,
        torch.tensor([cf.base_cost], dtype=torch.float64),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long),
        torch.zeros(1, 0, dtype=torch.long) if cf.ambiguous else None,
    )
    cap = walk_cap(scorer, cf, batch)
    size = state_size(scorer, cf)
    batch = min(batch, cap)
    budget = scorer.budget
    stack: list[Nodes] = [root] if root.cost[0] <= limit else []
    held = [nbytes(root.state) + nbytes(root.logp)]  # bytes of each stack entry's state and logp
    survival: dict[int, float] = defaultdict(lambda: 1.0)  # running share of children kept by the bound, per depth
    while stack:
        top = stack[-1]
        d = top.depth
        k = max(1, len(cf.edges[int(top.pos[top.end - 1])]))
        want = max(1, int(batch / (k * survival[d])))
        take = min(want, top.end)
        lo, hi = top.end - take, top.end
        ch = children(cf, top, lo, hi)
        mask = ch.cost <= limit if bound is not None else None
        if index_range is not None:
            span = below[ch.pos]
            inside = (ch.index * span < hi_idx) & ((ch.index + 1) * span > lo_idx)
            mask = inside if mask is None else mask & inside
        if mask is not None:
            survival[d] = 0.8 * survival[d] + 0.2 * max(float(mask.float().mean()), 1.0 / (k * batch))
            ch = _select(ch, mask.nonzero().view(-1))
        lo = _within_cap(ch, cf.end, lo, hi, cap)
        if lo > hi - take:  # leave the rest of the rows for the next call
            ch = _select(ch, (ch.parent >= lo).nonzero().view(-1))
        top.end = lo
        if lo == 0:
            stack.pop()
            held.pop()
        is_leaf = ch.pos == cf.end
        path = None
        if top.path is not None:
            path = torch.cat([top.path[ch.parent], ch.token.view(-1, 1)], dim=1)
        if bool(is_leaf.any()):
            leaf = is_leaf.nonzero().view(-1) if not bool(is_leaf.all()) else None
            costs = ch.cost if leaf is None else ch.cost[leaf]
            index = ch.index if leaf is None else ch.index[leaf]
            leaves += int(costs.shape[0])
            if path is not None:
                ok = torch.as_tensor(cf.canonical_mask((path if leaf is None else path[leaf]).tolist()))
                noncanonical += int((~ok).sum())
                costs, index = costs[ok], index[ok]
            on_leaves(costs.numpy(), index.numpy())
            if leaf is None:
                continue
            inner = (~is_leaf).nonzero().view(-1)
            ch = _select(ch, inner)
            path = path[inner] if path is not None else None
        m = int(ch.cost.shape[0])
        if m == 0:
            continue
        if max_steps is not None and scorer.steps - steps0 + m > max_steps:
            pending = Counter(ch.pos.tolist())
            for s in stack:
                pending.update(s.pos[: s.end].tolist())
            unexplored = sum(cf.leaves_below[p] * c for p, c in pending.items())
            return WalkResult(
                scorer.steps - steps0, False, unexplored, time.perf_counter() - t0, leaves, noncanonical, foreign
            )
        if below is not None and lo_idx > 0:
            foreign += int((ch.index * below[ch.pos] < lo_idx).sum())
        state, logp = scorer.step(scorer.take(top.state, ch.parent), ch.token, cf.columns)
        if progress is not None:
            progress(m)
        held.append(nbytes(state) + nbytes(logp))
        # the call's gathered input and its cache, spelled out in full, were alive beside the stack
        budget.note(sum(held) + held[-1] + m * size.spelled(d + 1))
        stack.append(Nodes(d + 1, state, logp, ch.cost, ch.pos, ch.index, path))
    return WalkResult(scorer.steps - steps0, True, 0, time.perf_counter() - t0, leaves, noncanonical, foreign)


def _within_cap(ch: _Children, end: int, lo: int, hi: int, cap: int) -> int:
    """The first parent row from which the inner children of rows [row, hi) number at most
    ``cap`` (rows are consumed from the end; the last row is always taken)."""
    inner = ch.parent[ch.pos != end]
    if int(inner.shape[0]) <= cap:
        return lo
    per_row = torch.bincount(inner - lo, minlength=hi - lo)
    suffix = per_row.flip(0).cumsum(0).flip(0)  # inner children of rows [lo + i, hi)
    fits = (suffix <= cap).nonzero().view(-1)
    return lo + (int(fits[0]) if len(fits) else hi - lo - 1)


def enumerate_counts(
    scorer: Scorer,
    cf: CompiledFormat,
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

    result = walk(scorer, cf, leaves, batch=batch, index_range=index_range, progress=progress)
    return counter.counts(), result


@dataclass
class PrunedRank:
    rank: int | None  # exact, when the walk completed
    bounds: tuple[int, int]  # proven lower and upper bound on the rank
    result: WalkResult
    found: int = 0  # candidates found at or under the canary (in the shard, with index_range)


def pruned_rank(
    scorer: Scorer,
    cf: CompiledFormat,
    canary_cost: float,
    *,
    max_steps: int | None = None,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    index_range: tuple[int, int] | None = None,
) -> PrunedRank:
    """Exact rank by walking only prefixes whose cost is within the canary's (docs/method.md).

    Past ``max_steps`` it stops: the candidates found so far are a proven lower bound on the
    rank, and found + the candidates under every unexpanded in-bound node an upper bound.
    ``index_range``: only that shard's candidates (``found`` holds their count).
    """
    found = 0

    def leaves(costs: np.ndarray, index: np.ndarray) -> None:
        nonlocal found
        found += len(costs)

    result = walk(
        scorer,
        cf,
        leaves,
        bound=canary_cost,
        max_steps=max_steps,
        batch=batch,
        progress=progress,
        index_range=index_range,
    )
    space = cf.fmt.space_size
    if result.complete:
        rank = max(1, found)
        return PrunedRank(rank, (rank, rank), result, found)
    return PrunedRank(None, (max(1, found), min(space, max(1, found + result.unexplored_leaves))), result, found)


def brute_force_counts(
    scorer: Scorer,
    fmt: Format,
    thresholds: Sequence[float],
    *,
    context: str | None = None,
    batch: int = DEFAULT_BATCH,
    progress: Callable[[int], None] | None = None,
    index_range: tuple[int, int] | None = None,
) -> np.ndarray:
    """The naive reference: score every candidate's whole line with :func:`score`.

    ``index_range``: only candidates ``lo <= index < hi`` (a shard; ``lo`` a multiple of
    ``batch`` keeps every batch, and so every score, as in the whole run)."""
    counter = ThresholdCounter(thresholds)
    start, size = index_range if index_range is not None else (0, fmt.space_size)
    for lo in range(start, size, batch):
        texts = [fmt.render(fmt.fill(i)) for i in range(lo, min(size, lo + batch))]
        counter.add(np.asarray(score(scorer, texts, context=context, batch=batch)))
        if progress is not None:
            progress(len(texts))
    return counter.counts()


def brute_force_steps(cf: CompiledFormat) -> int:
    """Model steps brute force needs: every token of every candidate line but the last."""
    return cf.fmt.space_size * (len(cf.shared) + cf.path_tokens - 1 - len(cf.model.context_ids(cf.context)))
