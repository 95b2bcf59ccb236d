"""Extraction: recover the most likely secrets of a format from the model alone.

Best-first search over the format's prefix tree (priority = prefix log-perplexity). Every
character adds ``-log2 p >= 0``, so a prefix never costs less than its parent: when a
completed candidate costs no more than every prefix still on the frontier, nothing left can
beat it. Completed candidates therefore come out in exact order of log-perplexity, and the
first K are provably the K most likely (``proven``), unless the step budget runs out first.

Frontier entries are (cost, node, choice): a child is only stepped through the model when it
is popped, so memory holds one state per expanded node, not per frontier entry. Many entries
are popped and stepped per model call (``batch``).

``beam_search`` keeps the ``width`` best prefixes per level: faster, approximate.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .errors import AuditError
from .exposure import engine
from .formats import Format
from .models.base import Scorer


@dataclass
class Candidate:
    secret: str
    text: str
    log_perplexity: float


@dataclass
class Extraction:
    format: str
    candidates: list[Candidate]
    model_steps: int
    seconds: float
    proven: bool
    method: str  # "best-first" (exact order) or "beam" (approximate)
    space_size: int
    prefix_cost: float  # bits of the fixed text before the first hole
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mass(self) -> float:
        """Probability that the model, having written the format's fixed prefix, completes it with
        one of these candidates: sum of 2^-(Px - prefix cost)."""
        return float(sum(2.0 ** -(c.log_perplexity - self.prefix_cost) for c in self.candidates))

    def position(self, secret: str) -> int | None:
        for i, c in enumerate(self.candidates, 1):
            if c.secret == secret:
                return i
        return None

    def to_json(self, redact: bool = False) -> dict[str, Any]:
        from .report import redact as hide

        return {
            "schema": 1,
            "format": self.format,
            "method": self.method,
            "approximate": self.method != "best-first",
            "candidates": [
                {"secret": hide(c.secret) if redact else c.secret, "log_perplexity": c.log_perplexity}
                for c in self.candidates
            ],
            "mass": self.mass,
            "model_steps": self.model_steps,
            "seconds": self.seconds,
            "proven": self.proven,
            "space_size": str(self.space_size),
            **self.details,
        }


def _candidate(fmt: Format, tail: engine.Tail, ids: Any, cost: float) -> Candidate:
    """The candidate whose tail (hole characters, fixed text, closing newline) has these ids."""
    text = fmt.prefix + tail.vocab.decode(int(i) for i in ids)[:-1]
    secret = fmt.secret_of(text)
    return Candidate(secret=secret, text=text, log_perplexity=float(cost))


def _check(top: int, max_steps: int) -> None:
    if top < 1:
        raise AuditError("--top must be at least 1")
    if max_steps < 1:
        raise AuditError("--max-steps must be at least 1")


class _States:
    """Model states of expanded nodes, stored by node id in a growing buffer (LSTM: (h, c))."""

    def __init__(self, first: Any) -> None:
        self.parts = [first]
        self.offsets = [0]
        self.count = int(first[0].shape[1])

    def add(self, state: Any) -> int:
        start = self.count
        self.parts.append(state)
        self.offsets.append(start)
        self.count += int(state[0].shape[1])
        return start

    def gather(self, scorer: Scorer, ids: np.ndarray) -> Any:
        # group rows by the part they live in, then concatenate in the requested order
        part = np.searchsorted(np.asarray(self.offsets), ids, side="right") - 1
        pieces, order = [], []
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            rows = torch.as_tensor(ids[sel] - self.offsets[p], dtype=torch.long)
            pieces.append(scorer.take(self.parts[p], rows))
            order.append(sel)
        perm = torch.as_tensor(np.argsort(np.concatenate(order), kind="stable"), dtype=torch.long)
        return tuple(torch.cat([pc[i] for pc in pieces], dim=1).index_select(1, perm) for i in range(len(pieces[0])))


def best_first(
    model: Any,
    fmt: Format,
    *,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str = engine.NEWLINE,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Extraction:
    """The ``top`` most likely secrets of ``fmt`` in exact order (if ``proven``)."""
    _check(top, max_steps)
    scorer = model if isinstance(model, Scorer) else Scorer(model)
    t0 = time.perf_counter()
    tail = engine.compile_format(scorer, fmt, context)
    s0 = scorer.steps
    depth = tail.depth
    levels = tail.levels
    parent: list[int] = [-1]  # node 0 is the root (after the fixed prefix)
    choice: list[int] = [-1]
    node_depth: list[int] = [0]
    states = _States(tail.state)
    tie = itertools.count()
    frontier: list[tuple[float, int, int, int]] = []  # (cost, tiebreak, node, choice)

    def push_children(nodes: list[int], costs: torch.Tensor, nlp: torch.Tensor) -> None:
        for row, node in enumerate(nodes):
            d = node_depth[node]
            child_costs = (costs[row] + nlp[row, levels[d]]).tolist()
            for j, c in enumerate(child_costs):
                heapq.heappush(frontier, (c, next(tie), node, j))

    push_children([0], torch.tensor([tail.base_cost], dtype=torch.float64), (-tail.logp).double())
    done: list[tuple[float, int, int, int]] = []  # completed candidates not yet proven
    found: list[tuple[float, int, int]] = []  # proven, in order: (cost, node, choice)
    proven = False
    while True:
        # Emit completed candidates that no frontier entry can beat.
        bound = frontier[0][0] if frontier else float("inf")
        while done and done[0][0] <= bound and len(found) < top:
            c, _, node, j = heapq.heappop(done)
            found.append((c, node, j))
        if len(found) >= top or not frontier:
            proven = True
            break
        popped = []
        while frontier and len(popped) < batch:
            item = heapq.heappop(frontier)
            if node_depth[item[2]] + 1 == depth:
                heapq.heappush(done, item)  # a complete candidate: its cost is final
            else:
                popped.append(item)
        if not popped:
            continue
        if scorer.steps - s0 + len(popped) > max_steps:
            for item in popped:
                heapq.heappush(frontier, item)
            break
        nodes = np.array([p[2] for p in popped])
        ids = torch.as_tensor([int(levels[node_depth[p[2]]][p[3]]) for p in popped], dtype=torch.long)
        state, logp = scorer.step(states.gather(scorer, nodes), ids)
        if progress is not None:
            progress(len(popped))
        first = states.add(state)
        new_nodes = list(range(first, first + len(popped)))
        for p in popped:
            parent.append(p[2])
            choice.append(p[3])
            node_depth.append(node_depth[p[2]] + 1)
        push_children(new_nodes, torch.tensor([p[0] for p in popped], dtype=torch.float64), (-logp).double())

    if not proven:
        # Best found so far: proven ones, then the cheapest completed ones (order not proven).
        while done and len(found) < top:
            c, _, node, j = heapq.heappop(done)
            found.append((c, node, j))

    def tail_ids(node: int, j: int) -> list[int]:
        ids = [int(levels[node_depth[node]][j])]
        while node > 0:
            ids.append(int(levels[node_depth[node] - 1][choice[node]]))
            node = parent[node]
        return ids[::-1]

    candidates = [_candidate(fmt, tail, tail_ids(node, j), c) for c, node, j in found]
    return Extraction(
        format=fmt.source,
        candidates=candidates,
        model_steps=scorer.steps - s0 + tail.prefix_steps,
        seconds=time.perf_counter() - t0,
        proven=proven,
        method="best-first",
        space_size=fmt.space_size,
        prefix_cost=tail.base_cost,
        details={"expanded_nodes": len(parent)},
    )


def beam_search(
    model: Any,
    fmt: Format,
    *,
    width: int,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str = engine.NEWLINE,
    batch: int = engine.DEFAULT_BATCH,
) -> Extraction:
    """Keep the ``width`` cheapest prefixes per level: fast, but may miss the true best."""
    _check(top, max_steps)
    if width < 1:
        raise AuditError("--beam must be at least 1")
    scorer = model if isinstance(model, Scorer) else Scorer(model)
    t0 = time.perf_counter()
    tail = engine.compile_format(scorer, fmt, context)
    s0 = scorer.steps
    state = tail.state
    nlp = (-tail.logp).double()
    cost = torch.tensor([tail.base_cost], dtype=torch.float64)
    paths = torch.zeros(1, 0, dtype=torch.long)
    complete = True
    for d, level in enumerate(tail.levels):
        k = len(level)
        child = (cost[:, None] + nlp[:, level]).reshape(-1)
        keep = torch.argsort(child)[: (top if d + 1 == tail.depth else width)]
        rows, cols = keep // k, keep % k
        cost = child[keep]
        paths = torch.cat([paths[rows], level[cols].view(-1, 1)], dim=1)
        if d + 1 == tail.depth:
            break
        if scorer.steps - s0 + len(keep) > max_steps:
            complete = False
            break
        state, logp = scorer.step(scorer.take(state, rows), level[cols])
        nlp = (-logp).double()
    candidates = [_candidate(fmt, tail, row, c) for row, c in zip(paths.tolist(), cost.tolist())] if complete else []
    return Extraction(
        format=fmt.source,
        candidates=candidates[:top],
        model_steps=scorer.steps - s0 + tail.prefix_steps,
        seconds=time.perf_counter() - t0,
        proven=False,
        method="beam",
        space_size=fmt.space_size,
        prefix_cost=tail.base_cost,
        details={"beam_width": width, "budget_exhausted": not complete},
    )
