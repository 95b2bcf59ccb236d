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
popped per round (``batch``); a model that pads rows of different lengths into one state (a KV
cache) steps a round in calls of at most ``CALL_ROWS`` rows of neighbouring depths, and one whose
rows must share a length steps each depth of a round separately.

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

from .. import distributed
from ..data.formats import Format
from ..errors import memory_errors_as_audit_errors
from ..memory import nbytes
from ..models.base import Scorer, State
from .engine import DEFAULT_BATCH, Nodes, children, state_size
from .options import check_extraction
from .tree import CompiledFormat, compile_format


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
        from ..reports.report import mask_secret

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
    from ..reports.report import by_insertions, mask_secret

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


BATCH_RAGGED = 256  # entries popped per round where rows of any length share a call (char-LSTM)
# KV caches: 1024 popped per round ran the SmolLM2 pi proof in 37 s against 47 s at 256, when each
# depth was its own call (docs/benchmarks.md): larger rounds make larger calls. A call spells out
# its caches in full (3 MB a row for SmolLM2 there), so calls are cut at CALL_ROWS rows (of
# neighbouring depths, padded) and the budget reserves that call beside the round's new states.
# Padded calls of up to 512 rows ran that proof in 34.4 s against 38.4 s for a call per depth of
# up to 256 (benchmarks/hf.py --pi, both in one run).
BATCH_BY_DEPTH = 1024
CALL_ROWS = 512
MIN_CALL_ROWS = 256  # calls are halved towards this where the budget is tight (_Search)
ENTRY_BYTES = 160  # a frontier entry: a tuple of four plus its float and ints, and its heap slot
FRONTIER_SHARE = 0.9  # past this share of the budget the frontier is cut (states get the rest)


class _Store:
    """The model states of expanded nodes, held within a byte limit.

    A node's state is only needed while some child of it that is not a leaf waits on the
    frontier (``need``); then it is dropped. Past the limit the states of the nodes whose
    cheapest waiting child costs most (``prio``: they are popped last) are evicted, and an
    evicted state is recomputed from its parent chain when one of its children is popped (the
    root's state is always held). Recomputing changes which rows share a model call, never a
    cost that was already pushed."""

    def __init__(self, scorer: Scorer, first: State, columns: torch.Tensor | None = None) -> None:
        self.scorer = scorer
        self.columns = columns  # what a recomputing step asks of the model (its log2-probabilities go unused)
        self.parts: dict[int, tuple[State, np.ndarray, int]] = {0: (first, np.zeros(1, dtype=np.int64), nbytes(first))}
        self.part_of = array("q", [0])  # each node's part (-1: not held)
        self.row_of = array("q", [0])
        self.need = array("q", [1 << 40])  # waiting inner children (the root: never dropped)
        self.prio = array("d", [0.0])
        self.used = self.parts[0][2]
        self.next_part = 1
        self.recomputed = 0  # model steps spent recomputing evicted states

    def node(self, need: int, prio: float) -> None:
        self.part_of.append(-1)
        self.row_of.append(-1)
        self.need.append(need)
        self.prio.append(prio)

    def add(self, state: State, nodes: Sequence[int]) -> None:
        """Hold ``state``'s rows as the states of ``nodes`` (those with no waiting child are dropped)."""
        ids = np.asarray(nodes, dtype=np.int64)
        live = np.nonzero(np.frombuffer(self.need, dtype=np.int64)[ids] > 0)[0]
        if len(live) == 0:
            return
        if len(live) < len(ids):
            state, ids = self.scorer.take(state, torch.as_tensor(live)), ids[live]
        part = self.next_part
        self.next_part += 1
        size = nbytes(state)
        self.parts[part] = (state, ids, size)
        self.used += size
        for r, n in enumerate(ids.tolist()):
            self.part_of[n] = part
            self.row_of[n] = r

    def release(self, node: int) -> None:
        """One waiting child of ``node`` was popped; drop its part once no row of it is needed."""
        self.need[node] -= 1
        part = self.part_of[node]
        if self.need[node] == 0 and part > 0:
            state, ids, size = self.parts[part]
            if not (np.frombuffer(self.need, dtype=np.int64)[ids] > 0).any():
                self._drop(part)

    def _drop(self, part: int) -> None:
        _, ids, size = self.parts.pop(part)
        for n in ids.tolist():
            if self.part_of[n] == part:
                self.part_of[n] = -1
        self.used -= size

    def shrink(self, limit: int, pinned: set[int]) -> None:
        """Evict states (no longer needed ones first, then by ``prio``, dearest first) down to
        3/4 of ``limit``, keeping the root and ``pinned``."""
        if self.used <= limit or len(self.parts) <= 1:
            return
        need = np.frombuffer(self.need, dtype=np.int64)
        prio = np.frombuffer(self.prio, dtype=np.float64)
        parts = [p for p in self.parts if p > 0]
        ids = np.concatenate([self.parts[p][1] for p in parts])
        share = np.concatenate(
            [np.full(len(self.parts[p][1]), self.parts[p][2] / len(self.parts[p][1])) for p in parts]
        )
        keep = need[ids] > 0
        key = np.where(keep, prio[ids], np.inf)  # dead rows first
        if pinned:
            key[np.isin(ids, np.fromiter(pinned, dtype=np.int64))] = -np.inf
        order = np.argsort(-key, kind="stable")
        freed = np.cumsum(share[order])
        n_out = int(np.searchsorted(freed, self.used - 0.75 * limit)) + 1
        out = order[: min(n_out, len(order))]
        out = out[key[out] > -np.inf]
        evict = set(ids[out].tolist())
        for p in parts:
            state, pids, size = self.parts[p]
            stay = [r for r, n in enumerate(pids.tolist()) if n not in evict]
            if len(stay) == len(pids):
                continue
            self._drop(p)
            if stay:
                kept = self.scorer.take(state, torch.as_tensor(stay))
                self.parts[p] = (kept, pids[stay], nbytes(kept))
                self.used += self.parts[p][2]
                for r, n in enumerate(pids[stay].tolist()):
                    self.part_of[n] = p
                    self.row_of[n] = r

    def gather(self, nodes: Sequence[int]) -> State:
        """The states of ``nodes`` (held ones), rows in that order."""
        part = np.array([self.part_of[n] for n in nodes])
        rows = np.array([self.row_of[n] for n in nodes])
        pieces, order = [], []
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            state = self.parts[int(p)][0]
            # the whole part in its order: no copy; but the root's state is taken even then (rows
            # taken from it share it as a prefix, and so do their children, so a call mixing the
            # root's children with deeper rows keeps one prefix)
            if p > 0 and len(sel) == len(self.parts[int(p)][1]) and (rows[sel] == np.arange(len(sel))).all():
                pieces.append(state)
            else:
                pieces.append(self.scorer.take(state, torch.as_tensor(rows[sel], dtype=torch.long)))
            order.append(sel)
        if len(pieces) == 1:
            return pieces[0]
        joined = self.scorer.cat(pieces)
        perm = np.argsort(np.concatenate(order), kind="stable")
        if (perm == np.arange(len(perm))).all():  # nodes came sorted by part (see _best_first)
            return joined
        return self.scorer.take(joined, torch.as_tensor(perm, dtype=torch.long))

    def sort_key(self, node: int) -> tuple[int, int]:
        return (self.part_of[node], self.row_of[node])

    def restore(self, nodes: Sequence[int], parent: list[int], token: list[int], depth: list[int], limit: int) -> None:
        """Recompute the evicted states of ``nodes`` (and of their evicted ancestors) from their parent chains."""
        missing: dict[int, list[int]] = {}
        seen: set[int] = set()
        for n in nodes:
            while self.part_of[n] < 0 and n not in seen:
                seen.add(n)
                missing.setdefault(depth[n], []).append(n)
                n = parent[n]
        pinned = set(nodes) | seen | {parent[n] for n in seen}  # and the held ancestors the chains start from
        for d in sorted(missing):
            group = missing[d]
            state, _ = self.scorer.step(
                self.gather([parent[n] for n in group]), torch.as_tensor([token[n] for n in group]), self.columns
            )
            self.recomputed += len(group)
            saved = [self.need[n] for n in group]
            for n in group:  # hold them even if no child waits: the batch about to run needs them
                self.need[n] = max(1, self.need[n])
            self.add(state, group)
            for n, v in zip(group, saved):
                self.need[n] = v
            self.shrink(limit, pinned)


def best_first(
    model: Any,
    fmt: Format,
    *,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str | None = None,
    batch: int | None = None,
    progress: Callable[[int], None] | None = None,
    terminator: str = "\n",
    max_memory: Any = None,
) -> Extraction:
    """The ``top`` most likely secrets of ``fmt`` in exact order (if ``proven``). ``terminator``
    closes every candidate (scan: a found secret's next character, docs/method.md).

    Memory: states are held within ``max_memory`` (or the scorer's budget) by :class:`_Store`;
    the frontier itself is counted too, and when it alone would pass the budget its dearest
    half is dropped, remembering the cheapest cost dropped (``horizon``): candidates up to the
    horizon stay proven, and a search that reaches it stops unproven.

    Under torchrun the frontier is replicated: every rank pops the same batch, steps the entries
    whose parent's state it holds (the root's children are dealt round-robin, and a node's
    subtree stays with the rank that stepped it), and the ranks exchange the children's costs,
    so every rank pushes the same entries in the same order as one process would."""
    check_extraction(top=top, max_steps=max_steps)
    scorer = Scorer.of(model, max_memory)
    if batch is None:
        # a KV-cache model's calls are cut at CALL_ROWS rows (see BATCH_BY_DEPTH)
        m = scorer.model
        batch = BATCH_RAGGED if m.ragged and not getattr(m, "padded", False) else BATCH_BY_DEPTH
    with memory_errors_as_audit_errors(scorer.budget.limit):
        return _best_first(scorer, fmt, top, max_steps, context, batch, progress, terminator)


def _best_first(
    scorer: Scorer,
    fmt: Format,
    top: int,
    max_steps: int,
    context: str | None,
    batch: int,
    progress: Callable[[int], None] | None,
    terminator: str = "\n",
) -> Extraction:
    t0 = time.perf_counter()
    cf = compile_format(scorer, fmt, context, terminator=terminator)
    search = _Search(scorer, cf, batch, progress)
    proven = search.run(top, max_steps)
    return search.extraction(top, proven, t0)


Entry = tuple[float, int, int, int]  # a frontier entry: (cost, tiebreak, node, edge)


class _Search:
    """One best-first search (see :func:`best_first`): the node table, the frontier, the completed
    candidates and the state store. Node 0 is the root (after the shared tokens); every other node
    is one token longer than its parent."""

    def __init__(self, scorer: Scorer, cf: CompiledFormat, batch: int, progress: Callable[[int], None] | None):
        self.team = distributed.team()
        self.scorer, self.cf, self.batch, self.progress = scorer, cf, batch, progress
        self.edges, self.end = cf.edges, cf.end
        self.budget = scorer.budget
        self.size = state_size(scorer, cf)
        # one call's gathered input, its output and log-probabilities, beside the root's state;
        # where a round is cut into calls (of call_rows rows), the round's other new states
        self.padded = bool(getattr(scorer.model, "padded", False))  # ragged by padding (a KV cache)
        self.call_rows = batch if scorer.model.ragged and not self.padded else min(batch, CALL_ROWS)
        # larger calls, then larger rounds, only where they leave the stored states half the budget
        # at least (each state evicted for them is a step to recompute)
        while self.call_rows > MIN_CALL_ROWS and self._working(batch) > self.budget.limit // 2:
            self.call_rows //= 2
        while batch > self.call_rows and self._working(batch) > self.budget.limit // 2:
            batch = max(self.call_rows, batch // 2)
        self.batch = batch
        self.working = self._working(batch)
        self.budget.require(
            self.working + self.size.whole + ENTRY_BYTES * self.size.fanout,
            f"extraction of {cf.fmt.source!r} in batches of {batch}",
        )
        self.inner = [int((e.next != self.end).sum()) for e in self.edges]  # children that are not leaves
        self.parent: list[int] = [-1]
        self.token: list[int] = [-1]
        self.node_pos: list[int] = [0]
        self.node_depth: list[int] = [0]
        self.owner = array("i", [-1])  # the rank holding each node's state (-1: every rank, the root)
        self.dealt = 0  # children of the root handed out so far (round-robin over ranks)
        self.store = _Store(scorer, cf.state, cf.columns[:1])
        self.tie = itertools.count()
        self.frontier: list[Entry] = []
        self.horizon = float("inf")  # the cheapest entry dropped from the frontier to stay in the budget
        self.peak_store = self.peak_frontier = 0
        self.done: list[Entry] = []  # completed canonical candidates not yet proven
        self.found: list[tuple[float, int, int]] = []  # proven, in order: (cost, node, edge)
        self.noncanonical = 0
        self.steps = 0  # model steps of the search (every rank's together)
        self.push(0, self.child_costs(cf.base_cost, 0, cf.logp))

    def _working(self, batch: int) -> int:
        """Bytes beside the stored states: one call spelled out, the round's other new states, the root."""
        return self.call_rows * self.size.call + (batch - self.call_rows) * self.size.deepest + self.size.whole

    def child_costs(self, cost: float, node_position: int, logp_row: torch.Tensor) -> list[float]:
        return (cost + self.edges[node_position].bits(logp_row)[0]).tolist()

    def push(self, node: int, costs: list[float]) -> None:
        frontier, tie = self.frontier, self.tie
        for j, c in enumerate(costs):
            heapq.heappush(frontier, (c, next(tie), node, j))

    def path_of(self, node: int, j: int) -> list[int]:
        ids = [int(self.edges[self.node_pos[node]].ids[j])]
        while node > 0:
            ids.append(self.token[node])
            node = self.parent[node]
        return ids[::-1]

    def run(self, top: int, max_steps: int) -> bool:
        """Search until ``top`` candidates are proven (True), or the frontier, the budget or the
        memory's horizon ends it first (proven only if nothing was dropped and the frontier ran out)."""
        frontier, done, found = self.frontier, self.done, self.found
        while True:
            # Emit completed candidates that no frontier entry (nor a dropped one) can beat.
            bound = min(frontier[0][0] if frontier else float("inf"), self.horizon)
            while done and done[0][0] <= bound and len(found) < top:
                c, _, node, j = heapq.heappop(done)
                found.append((c, node, j))
            if len(found) >= top or not frontier:
                return len(found) >= top or self.horizon == float("inf")
            if frontier[0][0] > self.horizon:
                return False  # what is left may be beaten by a dropped entry: not provable within the budget
            popped = self._pop()
            if not popped:
                continue
            if self.steps + len(popped) > max_steps:
                for item in popped:
                    heapq.heappush(frontier, item)
                return False
            self._expand(popped)

    def _pop(self) -> list[Entry]:
        """Up to ``batch`` entries to step; complete candidates met on the way go to ``done``."""
        edges, node_pos, end = self.edges, self.node_pos, self.end
        popped, completed = [], []
        while self.frontier and len(popped) < self.batch:
            item = heapq.heappop(self.frontier)
            if int(edges[node_pos[item[2]]].next[item[3]]) == end:
                completed.append(item)  # a complete candidate: its cost is final
            else:
                popped.append(item)
        if completed:
            ok = self.cf.canonical_mask([self.path_of(item[2], item[3]) for item in completed])
            self.noncanonical += int((~ok).sum())
            for item, keep in zip(completed, ok):
                if keep:
                    heapq.heappush(self.done, item)
        return popped

    def _expand(self, popped: list[Entry]) -> None:
        """Step ``popped`` (each by the rank holding its parent's state), share the children's costs
        and record the new nodes: every rank pushes the same entries in the same order."""
        team = self.team
        by: list[int] = []  # who steps each entry: the rank holding its parent's state
        for item in popped:
            o = self.owner[item[2]]
            if o < 0:
                o, self.dealt = self.dealt % team.world, self.dealt + 1
            by.append(o)
        # a model whose rows must share a length steps each depth separately; one that pads them
        # (a KV cache) steps calls of neighbouring depths, so that little of a call is padding
        if not self.scorer.model.ragged:
            groups = _by_depth(popped, self.node_depth, self.call_rows)
        elif self.padded and len(popped) > self.call_rows:
            order = sorted(range(len(popped)), key=lambda i: self.node_depth[popped[i][2]])
            groups = [order[lo : lo + self.call_rows] for lo in range(0, len(order), self.call_rows)]
        else:
            groups = [list(range(len(popped)))]
        mine, states, stepped = self._step(popped, by, groups)
        if team.world > 1:
            for part in team.exchange(mine):
                mine.update(part)
        self.steps += len(popped)
        self._record(popped, by, groups, mine, states, stepped)
        store, frontier = self.store, self.frontier
        for item in popped:
            store.release(item[2])
        limit = self.budget.limit - self.working
        store.shrink(limit - ENTRY_BYTES * len(frontier), set())
        if ENTRY_BYTES * len(frontier) > FRONTIER_SHARE * limit:
            self.horizon = min(self.horizon, _halve(frontier, store, self.edges, self.node_pos, self.end))
        self.budget.note(store.used + ENTRY_BYTES * len(frontier))
        self.peak_store, self.peak_frontier = max(self.peak_store, store.used), max(self.peak_frontier, len(frontier))

    def _step(
        self, popped: list[Entry], by: list[int], groups: list[list[int]]
    ) -> tuple[dict[int, list[float]], dict[int, State], dict[int, list[int]]]:
        """Step this rank's entries of every group: (entry -> its children's costs, group -> the
        new states, group -> the entries its state's rows belong to)."""
        edges, node_pos, node_depth, store = self.edges, self.node_pos, self.node_depth, self.store
        mine: dict[int, list[float]] = {}
        states: dict[int, State] = {}
        stepped: dict[int, list[int]] = {}
        held = 0  # bytes of this round's new states so far (stored after every group is stepped)
        for g, group in enumerate(groups):
            sel = [i for i in group if by[i] == self.team.rank]
            if sel:
                limit = self.budget.limit - self.working - ENTRY_BYTES * len(self.frontier)
                store.restore([popped[i][2] for i in sel], self.parent, self.token, node_depth, limit)
                # rows ordered as their parents' states are stored: gathering them copies once
                sel.sort(key=lambda i: store.sort_key(popped[i][2]))
                parents = [popped[i][2] for i in sel]
                ids = torch.as_tensor([int(edges[node_pos[popped[i][2]]].ids[popped[i][3]]) for i in sel])
                states[g], logp = self.scorer.step(store.gather(parents), ids, self.cf.columns)
                stepped[g] = sel  # the state's rows are these entries, in this order
                # beside the store: the new states, their gathered input and the call's cache in full
                full = len(sel) * self.size.spelled(max(node_depth[p] for p in parents) + 1)
                self.budget.note(
                    store.used + held + 2 * nbytes(states[g]) + nbytes(logp) + full + ENTRY_BYTES * len(self.frontier)
                )
                held += nbytes(states[g])
                for r, i in enumerate(sel):
                    nxt = int(edges[node_pos[popped[i][2]]].next[popped[i][3]])
                    mine[i] = self.child_costs(popped[i][0], nxt, logp[r : r + 1])
            if self.progress is not None:
                self.progress(len(group))
        return mine, states, stepped

    def _record(
        self,
        popped: list[Entry],
        by: list[int],
        groups: list[list[int]],
        mine: dict[int, list[float]],
        states: dict[int, State],
        stepped: dict[int, list[int]],
    ) -> None:
        """Every rank records the new nodes and pushes their children in the same order."""
        edges, end, store, parent = self.edges, self.end, self.store, self.parent
        for g, group in enumerate(groups):
            node_of: dict[int, int] = {}  # entry -> its new node
            for i in group:
                cost, _, node, j = popped[i]
                e = edges[self.node_pos[node]]
                nxt = int(e.next[j])
                parent.append(node)
                self.token.append(int(e.ids[j]))
                self.node_pos.append(nxt)
                self.node_depth.append(self.node_depth[node] + 1)
                self.owner.append(by[i])
                costs = mine[i]
                waiting = [c for c, q in zip(costs, edges[nxt].next.tolist()) if q != end]
                store.node(self.inner[nxt], min(waiting, default=float("inf")))
                if by[i] == self.team.rank:
                    node_of[i] = len(parent) - 1
                self.push(len(parent) - 1, costs)
            if g in states:
                state, rows = states.pop(g), stepped[g]
                depths = {self.node_depth[popped[i][2]] for i in rows}
                if not self.padded or len(depths) == 1:
                    store.add(state, [node_of[i] for i in rows])
                    continue
                for d in sorted(depths):  # stored unpadded: a row's own tokens, as after a call per depth
                    sel = [r for r, i in enumerate(rows) if self.node_depth[popped[i][2]] == d]
                    store.add(self.scorer.take(state, torch.as_tensor(sel)), [node_of[rows[r]] for r in sel])

    def extraction(self, top: int, proven: bool, t0: float) -> Extraction:
        found = self.found
        if not proven:
            # Best found so far: proven ones, then the cheapest completed ones (order not proven).
            while self.done and len(found) < top:
                c, _, node, j = heapq.heappop(self.done)
                found.append((c, node, j))
        candidates = [_candidate(self.cf, self.path_of(node, j), c) for c, node, j in found]
        details = {
            "expanded_nodes": len(self.parent),
            "noncanonical_completions": self.noncanonical,
            "recomputed_steps": self.store.recomputed,
            **self.budget.to_json(),
            "peak_state_bytes": self.peak_store,
            "peak_frontier_entries": self.peak_frontier,
            "working_bytes": self.working,
            "round_entries": self.batch,  # entries popped per round, and rows per model call at most
            "call_rows": self.call_rows,
        }
        if self.horizon < float("inf"):
            details["frontier_horizon"] = self.horizon
        return _extraction(self.cf, candidates, self.steps, t0, proven=proven, method="best-first", details=details)


def _halve(frontier: list, store: _Store, edges: list, node_pos: list[int], end: int) -> float:
    """Drop the dearer half of the frontier (in place, staying a heap); the cheapest cost dropped."""
    frontier.sort()
    keep = len(frontier) // 2
    cut = frontier[keep][0]
    for _, _, node, j in frontier[keep:]:
        if int(edges[node_pos[node]].next[j]) != end:
            store.release(node)
    del frontier[keep:]
    return cut


def _by_depth(items: list[tuple[float, int, int, int]], node_depth: list[int], most: int) -> list[list[int]]:
    """Positions of ``items`` grouped by their parent's depth (in order of first appearance), each
    group cut into calls of at most ``most`` rows."""
    groups: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(node_depth[item[2]], []).append(i)
    return [g[lo : lo + most] for g in groups.values() for lo in range(0, len(g), most)]


def beam_search(
    model: Any,
    fmt: Format,
    *,
    width: int,
    top: int = 10,
    max_steps: int = 1_000_000,
    context: str | None = None,
    batch: int = DEFAULT_BATCH,
    max_memory: Any = None,
) -> Extraction:
    """Keep the ``width`` cheapest prefixes per token depth: fast, but may miss the true best.
    Memory: ``width`` rows of states (and their gathered copy) at the deepest level."""
    check_extraction(top=top, max_steps=max_steps, beam=width)
    scorer = Scorer.of(model, max_memory)
    with memory_errors_as_audit_errors(scorer.budget.limit):
        return _beam(scorer, fmt, width, top, max_steps, context)


def _beam(scorer: Scorer, fmt: Format, width: int, top: int, max_steps: int, context: str | None) -> Extraction:
    t0 = time.perf_counter()
    cf = compile_format(scorer, fmt, context)
    size = state_size(scorer, cf)
    scorer.budget.require(
        size.whole + width * (size.deepest + size.call), f"a beam of width {width} over {fmt.source!r}"
    )
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
        state, logp = scorer.step(scorer.take(nodes.state, ch.parent[keep]), ch.token[keep], cf.columns)
        scorer.budget.note(2 * nbytes(state) + nbytes(logp) + nbytes(nodes.state) + nbytes(nodes.logp))
        nodes = Nodes(nodes.depth + 1, state, logp, ch.cost[keep], ch.pos[keep], ch.index[keep], None)
        paths = paths[keep]
    pool.sort(key=lambda item: item[0])
    candidates = [_candidate(cf, p, c) for c, p in pool[:top]]
    details = {"beam_width": width, "budget_exhausted": not complete, **scorer.budget.to_json()}
    return _extraction(cf, candidates, scorer.steps - s0, t0, proven=False, method="beam", details=details)
