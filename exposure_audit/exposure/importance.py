"""Importance-sampling estimate of a canary's rank, at any exposure (docs/method.md).

The rank is a count, ``rank(c) = sum over r in R of 1{Px(r) <= Px(c)}``, so for any proposal
``q'`` that gives every candidate positive probability it is an expectation:

    rank(c) = E_{x ~ q'} [ 1{x canonical, Px(x) <= Px(c) + TIE_TOLERANCE} / q'(x) ]

and the mean over ``m`` draws is unbiased whatever the exposure. One set of draws serves every
canary of a format: only the threshold changes.

The proposal walks the candidate tree (tree.py) with the model itself: at each position the
next token is drawn from the model's next-token distribution renormalized over the tokens the
format allows there (the position's edges; tempered by ``beta``). ``q(x)`` is the product of
those step probabilities, read from the same forward pass that scores ``x``. The model puts
its mass where the log-perplexity is low, which is exactly where a memorized canary's few
competitors are, so the draws land there instead of in the bulk.

Defensive mixture over R (Hesterberg 1995): ``q'(x) = a * U(x) + sum_j c_j q_j(x)`` where
``U`` is uniform over R (a uniform secret, forced down its canonical token path) and ``q_j``
the tree proposal at inverse temperature ``beta_j``. The draws are stratified (exactly
``round(a m)`` uniform, the rest split by ``c_j``) and every draw is weighted by the full
mixture density (the balance heuristic of multiple importance sampling), which keeps the mean
unbiased. Because ``q'(x) >= a / |R|`` on every candidate, the normalized weight
``y = (1/|R|) / q'(x)`` is at most ``1/a``: no weight can explode, and the variance is never
more than ``1/a`` times that of plain uniform sampling (``E[y^2 1{..}] <= E[y 1{..}] / a``).
A mixture per step would only bound the weight by ``|R| a^-(hole characters)``.

Token paths that are not their text's canonical tokenization (subword models) are drawn by the
tree proposals but count zero; the uniform component and every ``q_j`` give every canonical
path positive probability, so the estimate stays unbiased.

The same draws also estimate how many model steps a pruned walk would take for a threshold:
the walk steps every node (below the root, not a leaf) whose cost is within the bound, and
``sum over x of sum_{nodes n on x} 1{cost(n) <= t} / paths(n)`` counts each such node once
(``paths(n)``: tree paths through the node, a function of its position).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models.base import Scorer
from . import sharded
from .engine import DEFAULT_BATCH, TIE_TOLERANCE
from .math import Estimate, clamp_exposure, log2_int
from .tree import CompiledFormat

# Defensive share: a = 0.1 bounds every normalized weight by 10 while giving 90% of the draws to
# the model-guided proposals. Two temperatures: beta = 1 follows the model; beta = 2 sharpens it
# towards the very top candidates (ranks of a few), where a memorized canary's rivals sit.
UNIFORM_SHARE = 0.1
TEMPERED: tuple[tuple[float, float], ...] = ((1.0, 0.6), (2.0, 0.3))  # (beta, share)


@dataclass(frozen=True)
class Proposal:
    """The mixture ``a * uniform + sum_j share_j * q_{beta_j}`` (shares sum to 1)."""

    uniform: float = UNIFORM_SHARE
    tempered: tuple[tuple[float, float], ...] = TEMPERED
    siblings: bool = True  # count the last branching level exactly (ImportanceSamples._terms)

    def __post_init__(self) -> None:
        total = self.uniform + sum(s for _, s in self.tempered)
        if not 0 < self.uniform <= 1 or abs(total - 1) > 1e-9 or any(b <= 0 or s < 0 for b, s in self.tempered):
            raise ValueError("a proposal needs a uniform share in (0, 1], positive betas, shares summing to 1")

    def counts(self, m: int) -> list[int]:
        """Draws per component (uniform first): stratified, so the mixture weights are exact."""
        n_u = max(1, round(self.uniform * m)) if self.uniform < 1 else m
        rest = m - n_u
        out = [n_u]
        left = rest
        shares = sum(s for _, s in self.tempered) or 1.0
        for j, (_, s) in enumerate(self.tempered):
            n = left if j == len(self.tempered) - 1 else round(rest * s / shares)
            out.append(n)
            left -= n
        return out


@dataclass
class ImportanceSamples:
    """Draws of a format's candidates from the mixture proposal, with what each estimate needs."""

    space_size: int
    px: np.ndarray  # [m] log-perplexity of each drawn path (bits)
    log2_y: np.ndarray  # [m] log2 of the normalized weight (1/|R|)/q'(x); -inf for non-canonical paths
    log2_q: np.ndarray  # [m] log2 q'(x)
    node_cost: np.ndarray  # [m, L] cost of each stepped node on the path (inf: none at that depth)
    node_log2_paths: np.ndarray  # [m, L] log2 of the tree paths through that node
    components: list[int]  # draws per component (uniform first)
    steps: int
    seconds: float
    noncanonical: int = 0
    proposal: Proposal = field(default_factory=Proposal)
    # the last branching level, counted exactly (see _terms): per draw, the cost of every sibling
    # candidate under its parent node (inf-padded), and log2 of that parent's normalized weight
    # (1/|R|)/q'(parent); None where the format has no such level (subword trees, no holes)
    sibling_cost: np.ndarray | None = None  # [m, k]
    sibling_log2_y: np.ndarray | None = None  # [m]

    @property
    def m(self) -> int:
        return int(self.px.shape[0])

    def _terms(self, threshold: float) -> np.ndarray:
        """Per draw, in [0, 1/a]: 1{canonical, Px <= threshold + tol} * (1/|R|)/q'(x); or, where
        the last branching level is counted exactly (Rao-Blackwellized), the number of the drawn
        candidate's siblings (itself included) at or under the threshold times (1/|R|)/q'(p),
        ``p`` its parent node and ``q'(p)`` the mixture's probability of reaching it. Both are
        unbiased for rank/|R|; the second has less variance (the draw's last token no longer
        adds any), and costs one more model step per sibling per token after that level."""
        if self.sibling_cost is not None and self.sibling_log2_y is not None:
            hits = (self.sibling_cost <= threshold + TIE_TOLERANCE).sum(axis=1)
            return hits * np.exp2(self.sibling_log2_y)
        hit = self.px <= threshold + TIE_TOLERANCE
        return np.where(hit, np.exp2(self.log2_y), 0.0)

    def rank(self, threshold: float) -> tuple[float, float, int]:
        """Unbiased rank estimate, its standard error, and the number of draws that hit."""
        z = self._terms(threshold)
        hits = int(np.count_nonzero(z))
        mean = float(z.mean())
        se = float(z.std(ddof=1) / math.sqrt(self.m)) if self.m > 1 else math.inf
        size = float(self.space_size)
        return mean * size, se * size, hits

    def estimate(self, threshold: float, confidence: float = 0.9) -> tuple[Estimate, dict[str, Any]]:
        """Exposure from the rank estimate, with a CLT interval on the log scale.

        The mean of bounded terms is asymptotically normal; its log is more nearly so (the
        estimate is a positive, right-skewed quantity), so the interval is
        ``log rank_hat -+ z * s`` with ``s^2 = ln(1 + (se / rank_hat)^2)`` (the log-normal with
        the estimate's mean and variance). With no hit at all, the uniform draws alone bound
        the share ``p = rank/|R|`` (Clopper-Pearson with 0 successes), and the point is rank 1.
        """
        from scipy.stats import norm

        size = self.space_size
        emax = log2_int(size)
        rank, se, hits = self.rank(threshold)
        alpha = 1.0 - confidence
        if hits == 0:
            n_u = self.components[0]
            p_hi = 1.0 - (alpha / 2) ** (1.0 / n_u)
            lo = clamp_exposure(-math.log2(p_hi), size)
            est = Estimate(emax, (lo, emax))
        else:
            rank_c = min(max(rank, 1.0), float(size))
            s = math.sqrt(math.log1p((se / rank) ** 2)) / math.log(2)
            zq = float(norm.ppf(1 - alpha / 2))
            point = emax - math.log2(rank_c)
            lo = clamp_exposure(emax - (math.log2(rank) + zq * s), size)
            hi = clamp_exposure(emax - (math.log2(rank) - zq * s), size)
            est = Estimate(clamp_exposure(point, size), (min(lo, point), max(hi, point)))
        details = {
            "exposure": est.exposure,
            "ci": list(est.ci),
            "rank": rank,
            "rank_se": se,
            "hits": hits,
            "draws": self.m,
        }
        return est, details

    def pruned_steps(self, threshold: float) -> float:
        """Estimated model steps of a pruned walk for this threshold (see the module docstring)."""
        within = self.node_cost <= threshold + TIE_TOLERANCE
        # per draw: sum over its stepped nodes in bound of 1/paths(node), divided by q'(x)
        with np.errstate(over="ignore"):
            terms = np.where(within, np.exp2(-self.node_log2_paths - self.log2_q[:, None]), 0.0).sum(axis=1)
        return float(terms.mean())


def _log2_paths(cf: CompiledFormat) -> list[float]:
    """log2 of the number of tree paths (canonical or not) from each position to the end."""
    n: list[int] = [0] * (cf.end + 1)
    n[cf.end] = 1
    for p in range(cf.end - 1, -1, -1):  # edges always go forward (tree.py numbers positions so)
        n[p] = sum(n[q] for q in cf.edges[p].next.tolist())
    return [math.log2(v) if v > 0 else -math.inf for v in n]


def _last_level(cf: CompiledFormat) -> dict[int, list[int]]:
    """The positions where a candidate's last branching happens: ``p -> the forced tokens after
    it`` (usually just the terminator), for every ``p`` with several edges that all lead to one
    position from which a single path (one edge per position) runs to the end. Empty for
    ambiguous (subword) trees, whose sibling leaves need the canonical check one by one."""
    if cf.ambiguous:
        return {}
    forced: dict[int, list[int] | None] = {cf.end: []}
    for q in range(cf.end - 1, -1, -1):  # edges go forward: later positions are settled first
        e = cf.edges[q]
        nxt = int(e.next[0]) if len(e) == 1 else None
        tail = forced.get(nxt) if nxt is not None else None
        free = e.free is not None and bool(e.free[0])
        # a forced token costs its bits unless it lies in the context; free ones are not supported here
        forced[q] = None if tail is None or free else [int(e.ids[0]), *tail]
    out = {}
    for p in range(cf.end):
        e = cf.edges[p]
        if len(e) > 1 and e.free is None:
            nxt = set(e.next.tolist())
            if len(nxt) == 1 and forced.get(nxt.pop()) is not None:
                out[p] = forced[int(e.next[0])]
    return out


SIBLING_MAX_RATIO = 8  # siblings' extra steps per draw, at most this many times a path's own


def _sibling_steps(cf: CompiledFormat, last: dict[int, list[int]]) -> int:
    """Most model steps a draw spends on its siblings: ``k`` per token forced after the level."""
    return max((len(cf.edges[p]) * len(tail) for p, tail in last.items()), default=0)


def _siblings_that_pay(cf: CompiledFormat, proposal: Proposal) -> dict[int, list[int]]:
    """:func:`_last_level` where ``proposal.siblings`` asks for it, unless scoring the siblings
    would cost over ``SIBLING_MAX_RATIO`` times a draw's own steps (a wide last alphabet followed
    by long fixed text): then the plain term is kept, and the estimate's cost stays near ``m`` x
    the path's tokens."""
    last = _last_level(cf) if proposal.siblings else {}
    return last if _sibling_steps(cf, last) <= SIBLING_MAX_RATIO * max(1, cf.path_tokens - 1) else {}


def predicted_steps(cf: CompiledFormat, m: int, proposal: Proposal | None = None) -> int:
    """Model steps of :func:`importance_samples` with ``m`` draws: each walks one path below the
    shared tokens, and steps every sibling through the tokens forced after its last branching."""
    last = _siblings_that_pay(cf, proposal or Proposal())
    return m * (max(1, cf.path_tokens - 1) + _sibling_steps(cf, last))


def importance_samples(
    scorer: Scorer,
    cf: CompiledFormat,
    m: int,
    *,
    seed: int = 0,
    proposal: Proposal | None = None,
    batch: int = DEFAULT_BATCH,
) -> ImportanceSamples:
    """Draw ``m`` candidates of ``cf`` from the mixture proposal and score them (one forward pass each).

    Every random draw flows from ``seed`` (and the format's source): the uniform secrets from a
    ``random.Random``, the tree proposals' tokens from a ``torch.Generator`` of their own per
    chunk of ``batch`` draws (seeded by the chunk's number). So a chunk's draws and scores do not
    depend on which process makes them: under torchrun each rank draws every world-th chunk,
    and the gathered samples are those of one process.
    """
    proposal = proposal or Proposal()
    t0 = time.perf_counter()
    s0 = scorer.steps
    fmt = cf.fmt
    rng = random.Random(f"exposure-audit:{seed}:importance:{fmt.source}")
    counts = proposal.counts(m)
    uniform_paths = cf.line_ids(fmt.sample(rng, counts[0], distinct=False))
    # rows: (forced path or None, component index among the tempered ones or -1)
    rows: list[tuple[list[int] | None, int]] = [(p, -1) for p in uniform_paths]
    for j, n in enumerate(counts[1:]):
        rows.extend([(None, j)] * n)
    log2_paths = _log2_paths(cf)
    last = _siblings_that_pay(cf, proposal)
    betas = torch.tensor([b for b, _ in proposal.tempered], dtype=torch.float64)
    size = fmt.space_size
    px = np.empty(m)
    logq = np.empty((m, len(betas)))
    canonical = np.ones(m, dtype=bool)
    nodes: list[list[tuple[float, float]]] = [[] for _ in range(m)]
    noncanonical = 0
    done = []
    for lo in sharded.my_batches(m, batch):  # under torchrun: every world-th batch, as in one process
        chunk = rows[lo : lo + batch]
        gen = torch.Generator().manual_seed(
            random.Random(f"exposure-audit:{seed}:importance:{fmt.source}:{lo // batch}").getrandbits(63)
        )
        cost, lq, paths, nd, sib = _draw_chunk(scorer, cf, chunk, betas, gen, log2_paths, last, batch)
        ok_rows = np.ones(len(chunk), dtype=bool)
        if cf.ambiguous:
            sampled = [i for i, (forced, _) in enumerate(chunk) if forced is None]
            ok = cf.canonical_mask([paths[i] for i in sampled])
            ok_rows[sampled] = ok
        done.append((lo, cost, lq, nd, ok_rows, (sib.cost, sib.logq, sib.pos)))
    done = sharded.gather_batches(scorer, done, s0)
    sib_cost: list[np.ndarray | None] = [None] * m
    sib_logq = np.zeros((m, len(betas)))
    sib_pos = np.full(m, -1, dtype=np.int64)
    for lo, cost, lq, nd, ok_rows, (sc, sq, sp) in done:
        sib_cost[lo : lo + len(cost)] = sc
        sib_logq[lo : lo + len(cost)] = sq
        sib_pos[lo : lo + len(cost)] = sp
        px[lo : lo + len(cost)] = cost
        logq[lo : lo + len(cost)] = lq
        for i, n in enumerate(nd):
            nodes[lo + i] = n
        canonical[lo : lo + len(cost)] = ok_rows
        noncanonical += int((~ok_rows).sum())
    # the mixture density of every draw, whichever component drew it (balance heuristic)
    shares = np.array([c / m for c in counts])
    mix = np.full(m, -np.inf)
    if shares[0] > 0:
        mix = np.where(canonical, math.log2(shares[0]) - log2_int(size), -np.inf)
    for j in range(len(betas)):
        if shares[j + 1] > 0:
            mix = np.logaddexp2(mix, math.log2(shares[j + 1]) + logq[:, j])
    log2_y = np.where(canonical, -log2_int(size) - mix, -np.inf)
    sibling_cost = sibling_log2_y = None
    if last:
        # the mixture's probability of reaching each draw's last branching node: the uniform
        # component reaches it with the share of R below it, the tempered ones with the product
        # of their step probabilities down to it (a draw without such a node keeps its own term)
        have = sib_pos >= 0
        below = np.array([log2_paths[int(p)] if p >= 0 else 0.0 for p in sib_pos])
        mix_p = np.full(m, -np.inf)
        if shares[0] > 0:
            mix_p = math.log2(shares[0]) + below - log2_int(size)
        for j in range(len(betas)):
            if shares[j + 1] > 0:
                mix_p = np.logaddexp2(mix_p, math.log2(shares[j + 1]) + sib_logq[:, j])
        k = max((len(c) for c in sib_cost if c is not None), default=1)
        sibling_cost = np.full((m, k), np.inf)
        for i, c in enumerate(sib_cost):
            if c is not None:
                sibling_cost[i, : len(c)] = c
            elif canonical[i]:
                sibling_cost[i, 0] = px[i]
        sibling_log2_y = np.where(have, -log2_int(size) - mix_p, log2_y)
    depth = max((len(n) for n in nodes), default=0)
    node_cost = np.full((m, depth), np.inf)
    node_paths = np.zeros((m, depth))
    for i, n in enumerate(nodes):
        if n:
            node_cost[i, : len(n)], node_paths[i, : len(n)] = zip(*n)
    return ImportanceSamples(
        space_size=size,
        px=np.where(canonical, px, np.inf),
        log2_y=log2_y,
        log2_q=mix,
        node_cost=node_cost,
        node_log2_paths=node_paths,
        components=counts,
        steps=scorer.steps - s0,
        seconds=time.perf_counter() - t0,
        noncanonical=noncanonical,
        proposal=proposal,
        sibling_cost=sibling_cost,
        sibling_log2_y=sibling_log2_y,
    )


def _draw_chunk(
    scorer: Scorer,
    cf: CompiledFormat,
    rows: list[tuple[list[int] | None, int]],
    betas: torch.Tensor,
    gen: torch.Generator,
    log2_paths: list[float],
    last: dict[int, list[int]] | None = None,
    batch: int = DEFAULT_BATCH,
) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[list[tuple[float, float]]], _Siblings]:
    """Walk ``rows`` from the root, one token per depth: forced rows follow their path, the others
    draw from their component's tempered step distribution. Every row adds one token per call,
    so rows that are still walking have read the same number of tokens (a KV cache is fine).

    At a position of ``last`` (the last branching level, :func:`_last_level`) every sibling's
    whole cost is computed too: the bits of its token plus those of the forced tokens after it,
    stepped for all siblings at once (``batch`` rows per call)."""
    n = len(rows)
    J = int(betas.shape[0])
    sib = _Siblings(n, J)
    cost = torch.full((n,), cf.base_cost, dtype=torch.float64)
    logq = torch.zeros((n, J), dtype=torch.float64)
    pos = torch.zeros(n, dtype=torch.long)
    comp = torch.tensor([c for _, c in rows], dtype=torch.long)
    paths: list[list[int]] = [[] for _ in range(n)]
    nodes: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    active = torch.arange(n)  # global row of each state row
    state = scorer.take(cf.state, torch.zeros(n, dtype=torch.long))
    logp = cf.logp.expand(n, -1)
    depth = 0
    while active.numel():
        tokens = torch.empty(active.numel(), dtype=torch.long)
        apos = pos[active]
        for p in torch.unique(apos).tolist():
            local = (apos == p).nonzero().view(-1)
            glob = active[local]
            e = cf.edges[p]
            lp = logp[local][:, e.cols].double()  # log2 P(token) of each allowed token
            bits = e.bits(logp[local])
            # log2 of each tempered step distribution over the allowed tokens: [r, J, k]
            scaled = betas.view(1, J, 1) * lp.unsqueeze(1)
            step_lq = scaled - torch.logsumexp(scaled * math.log(2), dim=2, keepdim=True) / math.log(2)
            choice = torch.empty(local.numel(), dtype=torch.long)
            forced = [i for i, g in enumerate(glob.tolist()) if rows[g][0] is not None]
            if forced:
                want = torch.tensor([rows[int(glob[i])][0][depth] for i in forced], dtype=torch.long)
                match = e.ids.view(1, -1) == want.view(-1, 1)
                if not bool(match.any(1).all()):
                    raise RuntimeError("a canonical path left the format's tree")  # compile_format checks probes
                choice[forced] = match.int().argmax(1)
            skip = set(forced)
            drawn = [i for i in range(local.numel()) if i not in skip]
            if drawn:
                idx = torch.tensor(drawn, dtype=torch.long)
                which = comp[glob[idx]]
                probs = torch.exp2(step_lq[idx, which])
                choice[idx] = torch.multinomial(probs, 1, generator=gen).view(-1)
            r = torch.arange(local.numel())
            if last is not None and p in last:
                sib.record(
                    glob,
                    cost[glob].unsqueeze(1) + _sibling_costs(scorer, cf, state, local, e, bits, last[p], batch),
                    logq[glob],
                    p,
                )
            cost[glob] += bits[r, choice]
            logq[glob] += step_lq[r, :, choice]
            nxt = e.next[choice]
            pos[glob] = nxt
            tokens[local] = e.ids[choice]
        for g, t in zip(active.tolist(), tokens.tolist()):
            paths[g].append(t)
        depth += 1
        going = (pos[active] != cf.end).nonzero().view(-1)
        if going.numel() == 0:
            break
        for g in active[going].tolist():
            nodes[g].append((float(cost[g]), log2_paths[int(pos[g])]))
        state, logp = scorer.step(scorer.take(state, going), tokens[going], cf.columns)
        active = active[going]
    return cost.numpy(), logq.numpy(), paths, nodes, sib


class _Siblings:
    """Per drawn row: the whole cost of each candidate under its last branching node, the
    tempered proposals' log2-probability of reaching that node, and its position (-1: none)."""

    def __init__(self, n: int, J: int) -> None:
        self.cost: list[np.ndarray | None] = [None] * n
        self.logq = np.zeros((n, J))
        self.pos = np.full(n, -1, dtype=np.int64)

    def record(self, glob: torch.Tensor, costs: torch.Tensor, logq: torch.Tensor, p: int) -> None:
        c, q = costs.numpy(), logq.numpy()
        for i, g in enumerate(glob.tolist()):
            self.cost[g], self.logq[g], self.pos[g] = c[i], q[i], p


def _sibling_costs(
    scorer: Scorer,
    cf: CompiledFormat,
    state: Any,
    local: torch.Tensor,
    e: Any,
    bits: torch.Tensor,
    tail: list[int],
    batch: int,
) -> torch.Tensor:
    """``[r, k]`` bits of each of the ``k`` edges from the ``r`` rows' nodes plus those of the forced
    tokens after it (``tail``: usually the terminator): ``len(tail)`` model steps per sibling."""
    k = len(e)
    out = bits.clone()
    if not tail:
        return out
    per = max(1, batch // k)  # parent rows per call: k sibling rows each
    for lo in range(0, local.numel(), per):
        rows = local[lo : lo + per]
        st = scorer.take(state, rows.repeat_interleave(k))
        tok = e.ids.repeat(rows.numel())
        add = torch.zeros(rows.numel() * k, dtype=torch.float64)
        for t in tail:
            st, lp = scorer.step(st, tok, cf.columns)
            add -= lp[:, int(cf.cols_of(torch.tensor([t]))[0])].double()
            tok = torch.full_like(tok, t)
        out[lo : lo + rows.numel()] += add.view(rows.numel(), k)
    return out
