"""Extraction: recover the most likely secrets of a format from the model alone.

Best-first search over the format's prefix tree (priority = prefix log-perplexity). Every
token adds ``-log2 p >= 0``, so a prefix never costs less than its parent: when a
completed candidate costs no more than every prefix still on the frontier, nothing left can
beat it. Completed candidates therefore come out in exact order of log-perplexity, and the
first K are provably the K most likely (``proven``), unless the step budget runs out first.

The tree is the format's tree of token sequences (``exposure/tree.py``): for a subword model a
completed path counts only if it is its text's canonical tokenization, which keeps the order
exact over candidates (a non-canonical path is a way of writing a candidate, not a candidate).

Frontier entries are (cost, node, edge): a child is only stepped through the model when it is
popped, so memory holds one state per expanded node, not per frontier entry. Many entries are
popped and stepped per model call (``batch``); a model whose batch rows must share a length
(a KV cache) steps each depth of a batch separately.

``beam_search`` keeps the ``width`` best prefixes per token depth: faster, approximate.
"""

from __future__ import annotations

import heapq
import itertools
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import distributed
from .errors import AuditError
from .exposure.engine import DEFAULT_BATCH, Nodes, children
from .exposure.tree import CompiledFormat, compile_format
from .formats import Format
from .models.base import Scorer, State


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
        from .report import mask_secret

        return {
            "schema": 1,
            "format": self.format,
            "method": self.method,
            "approximate": self.method != "best-first",
            "candidates": [
                {"secret": mask_secret(c.secret) if redact else c.secret, "log_perplexity": c.log_perplexity}
                for c in self.candidates
            ],
            "mass": self.mass,
            "model_steps": self.model_steps,
            "seconds": self.seconds,
            "proven": self.proven,
            "space_size": str(self.space_size),
            **self.details,
        }


def extraction_summary(
    extractions: dict[str, Extraction], canaries: Sequence[Any], *, top: int, redact: bool = False
) -> dict[str, Any]:
    """The JSON record of extracting every format of a manifest: each format's candidates, where
    each canary landed, and the success rate per insertion count."""
    from .report import by_insertions, mask_secret

    rows = []
    for c in canaries:
        pos = extractions[c.format].position(c.secret)
        secret = mask_secret(c.secret) if redact else c.secret
        rows.append({"id": c.id, "format": c.format, "secret": secret, "insertions": c.insertions, "position": pos})
    success = {
        str(n): {
            "canaries": len(ps),
            "extracted_top1": sum(p == 1 for p in ps),
            "in_top_k": sum(p is not None for p in ps),
        }
        for n, ps in by_insertions((r["insertions"], r["position"]) for r in rows).items()
    }
    return {
        "schema": 1,
        "kind": "exposure-audit/extraction",
        "top": top,
        "formats": [e.to_json(redact) for e in extractions.values()],
        "canaries": rows,
        "success_by_insertions": success,
    }


def _candidate(cf: CompiledFormat, path: Sequence[int], cost: float) -> Candidate:
    """The candidate that a complete token path (after the shared tokens) spells."""
    text = cf.text_of(path)
    return Candidate(secret=cf.fmt.secret_of(text), text=text, log_perplexity=float(cost))


def _extraction(cf: CompiledFormat, candidates: list[Candidate], steps: int, t0: float, **fields: Any) -> Extraction:
    """The result of a search started at ``t0`` that took ``steps`` model steps after the shared prefix."""
    return Extraction(
        format=cf.fmt.source,
        candidates=candidates,
        model_steps=steps + cf.prefix_steps,
        seconds=time.perf_counter() - t0,
        space_size=cf.fmt.space_size,
        prefix_cost=cf.base_cost,
        **fields,
    )


def check_extraction(*, top: int, max_steps: int, beam: int | None = None) -> None:
    if top < 1:
        raise AuditError("the number of candidates to extract (top) must be at least 1")
    if max_steps < 1:
        raise AuditError("the model-step budget (max_steps) must be at least 1")
    if beam is not None and beam < 1:
        raise AuditError("the beam width must be at least 1")


class _States:
    """Model states of expanded nodes, by node id: the rows of one ``step`` call are one part."""

    def __init__(self, scorer: Scorer, first: State) -> None:
        self.scorer = scorer
        self.parts = [first]
        self.offsets = [0]
        self.count = 1

    def add(self, state: State, rows: int) -> int:
        start = self.count
        self.parts.append(state)
        self.offsets.append(start)
        self.count += rows
        return start

    def gather(self, ids: np.ndarray) -> State:
        # group rows by the part they live in, then put them in the requested order
        part = np.searchsorted(np.asarray(self.offsets), ids, side="right") - 1
        pieces, order = [], []
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            rows = torch.as_tensor(ids[sel] - self.offsets[p], dtype=torch.long)
            pieces.append(self.scorer.take(self.parts[p], rows))
            order.append(sel)
        if len(pieces) == 1:
            return pieces[0]
        perm = torch.as_tensor(np.argsort(np.concatenate(order), kind="stable"), dtype=torch.long)
        return self.scorer.take(self.scorer.cat(pieces), perm)


def best_first(
    model: Any,
    fmt: Format,
    *,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str | None = None,
    batch: int = 256,
    progress: Callable[[int], None] | None = None,
    terminator: str = "\n",
) -> Extraction:
    """The ``top`` most likely secrets of ``fmt`` in exact order (if ``proven``). ``terminator``
    closes every candidate (scan: a found secret's next character, docs/method.md).

    Under torchrun the frontier is replicated: every rank pops the same batch, steps the entries
    whose parent's state it holds (the root's children are dealt round-robin, and a node's
    subtree stays with the rank that stepped it), and the ranks exchange the children's costs,
    so every rank pushes the same entries in the same order as one process would."""
    check_extraction(top=top, max_steps=max_steps)
    scorer = Scorer.of(model)
    team = distributed.team()
    t0 = time.perf_counter()
    cf = compile_format(scorer, fmt, context, terminator=terminator)
    edges, end = cf.edges, cf.end
    # node 0 is the root (after the shared tokens); every other node is one token longer than its parent
    parent: list[int] = [-1]
    token: list[int] = [-1]
    node_pos: list[int] = [0]
    node_depth: list[int] = [0]
    owner = array("i", [-1])  # the rank holding each node's state (-1: every rank, the root)
    local = array("q", [0])  # each node's row in this rank's states (-1: another rank's)
    dealt = 0  # children of the root handed out so far (round-robin over ranks)
    states = _States(scorer, cf.state)
    tie = itertools.count()
    frontier: list[tuple[float, int, int, int]] = []  # (cost, tiebreak, node, edge)

    def child_costs(cost: float, node_position: int, logp_row: torch.Tensor) -> list[float]:
        return (cost + edges[node_position].bits(logp_row)[0]).tolist()

    def push(node: int, costs: list[float]) -> None:
        for j, c in enumerate(costs):
            heapq.heappush(frontier, (c, next(tie), node, j))

    def path_of(node: int, j: int) -> list[int]:
        ids = [int(edges[node_pos[node]].ids[j])]
        while node > 0:
            ids.append(token[node])
            node = parent[node]
        return ids[::-1]

    push(0, child_costs(cf.base_cost, 0, cf.logp))
    done: list[tuple[float, int, int, int]] = []  # completed canonical candidates not yet proven
    found: list[tuple[float, int, int]] = []  # proven, in order: (cost, node, edge)
    proven = False
    noncanonical = 0
    steps = 0  # model steps of the search (every rank's together)
    while True:
        # Emit completed candidates that no frontier entry can beat.
        bound = frontier[0][0] if frontier else float("inf")
        while done and done[0][0] <= bound and len(found) < top:
            c, _, node, j = heapq.heappop(done)
            found.append((c, node, j))
        if len(found) >= top or not frontier:
            proven = True
            break
        popped, completed = [], []
        while frontier and len(popped) < batch:
            item = heapq.heappop(frontier)
            if int(edges[node_pos[item[2]]].next[item[3]]) == end:
                completed.append(item)  # a complete candidate: its cost is final
            else:
                popped.append(item)
        if completed:
            ok = cf.canonical_mask([path_of(item[2], item[3]) for item in completed])
            noncanonical += int((~ok).sum())
            for item, keep in zip(completed, ok):
                if keep:
                    heapq.heappush(done, item)
        if not popped:
            continue
        if steps + len(popped) > max_steps:
            for item in popped:
                heapq.heappush(frontier, item)
            break
        # who steps each entry: the rank holding its parent's state
        by: list[int] = []
        for item in popped:
            o = owner[item[2]]
            if o < 0:
                o, dealt = dealt % team.world, dealt + 1
            by.append(o)
        # a model whose rows must share a length (a KV cache) steps each depth separately
        groups = [list(range(len(popped)))] if scorer.model.ragged else _by_depth(popped, node_depth)
        mine: dict[int, list[float]] = {}  # entry -> its children's costs, for the entries this rank steps
        rows: dict[int, int] = {}  # entry -> its row in this rank's states
        for group in groups:
            sel = [i for i in group if by[i] == team.rank]
            if sel:
                nodes = np.array([local[popped[i][2]] for i in sel])
                ids = torch.as_tensor([int(edges[node_pos[popped[i][2]]].ids[popped[i][3]]) for i in sel])
                state, logp = scorer.step(states.gather(nodes), ids)
                first = states.add(state, len(sel))
                for r, i in enumerate(sel):
                    rows[i] = first + r
                    nxt = int(edges[node_pos[popped[i][2]]].next[popped[i][3]])
                    mine[i] = child_costs(popped[i][0], nxt, logp[r : r + 1])
            if progress is not None:
                progress(len(group))
        if team.world > 1:
            for part in team.exchange(mine):
                mine.update(part)
        steps += len(popped)
        # every rank records the new nodes and pushes their children in the same order
        for group in groups:
            for i in group:
                cost, _, node, j = popped[i]
                e = edges[node_pos[node]]
                parent.append(node)
                token.append(int(e.ids[j]))
                node_pos.append(int(e.next[j]))
                node_depth.append(node_depth[node] + 1)
                owner.append(by[i])
                local.append(rows.get(i, -1))
                push(len(parent) - 1, mine[i])

    if not proven:
        # Best found so far: proven ones, then the cheapest completed ones (order not proven).
        while done and len(found) < top:
            c, _, node, j = heapq.heappop(done)
            found.append((c, node, j))

    candidates = [_candidate(cf, path_of(node, j), c) for c, node, j in found]
    details = {"expanded_nodes": len(parent), "noncanonical_completions": noncanonical}
    return _extraction(cf, candidates, steps, t0, proven=proven, method="best-first", details=details)


def _by_depth(items: list[tuple[float, int, int, int]], node_depth: list[int]) -> list[list[int]]:
    """Positions of ``items`` grouped by their parent's depth (in order of first appearance)."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(node_depth[item[2]], []).append(i)
    return list(groups.values())


def beam_search(
    model: Any,
    fmt: Format,
    *,
    width: int,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str | None = None,
    batch: int = DEFAULT_BATCH,
) -> Extraction:
    """Keep the ``width`` cheapest prefixes per token depth: fast, but may miss the true best."""
    check_extraction(top=top, max_steps=max_steps, beam=width)
    scorer = Scorer.of(model)
    t0 = time.perf_counter()
    cf = compile_format(scorer, fmt, context)
    s0 = scorer.steps
    zero = torch.zeros(1, dtype=torch.long)
    nodes = Nodes(0, cf.state, cf.logp, torch.tensor([cf.base_cost], dtype=torch.float64), zero, zero, None)
    paths = torch.zeros(1, 0, dtype=torch.long)
    pool: list[tuple[float, list[int]]] = []
    complete = True
    while True:
        ch = children(cf, nodes, 0, int(nodes.cost.shape[0]))
        paths = torch.cat([paths[ch.parent], ch.token.view(-1, 1)], dim=1)
        leaf = ch.pos == cf.end
        if bool(leaf.any()):
            leaf_paths = paths[leaf].tolist()
            ok = cf.canonical_mask(leaf_paths)
            pool.extend((c, p) for c, p, k in zip(ch.cost[leaf].tolist(), leaf_paths, ok) if k)
        inner = (~leaf).nonzero().view(-1)
        if len(inner) == 0:
            break
        keep = inner[torch.argsort(ch.cost[inner])[:width]]
        if scorer.steps - s0 + len(keep) > max_steps:
            complete = False
            break
        state, logp = scorer.step(scorer.take(nodes.state, ch.parent[keep]), ch.token[keep])
        nodes = Nodes(nodes.depth + 1, state, logp, ch.cost[keep], ch.pos[keep], ch.index[keep], None)
        paths = paths[keep]
    pool.sort(key=lambda item: item[0])
    candidates = [_candidate(cf, p, c) for c, p in pool[:top]]
    details = {"beam_width": width, "budget_exhausted": not complete}
    return _extraction(cf, candidates, scorer.steps - s0, t0, proven=False, method="beam", details=details)
