"""The engine's walks shared by the ranks of a torchrun job (docs/distributed.md).

Each function takes what its engine function does and returns what one process would: counts
are exact integer sums, and the scorer's step counter advances by the ranks' model steps summed
(each node stepped once, by one rank: the steps of one walk of the whole tree). So a caller reads
model steps off ``scorer.steps`` as in one process, and no report depends on the world size.
Outside torchrun (a world of one) each is its engine function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import distributed
from ..data.formats import Format
from ..models.base import Scorer
from . import engine
from .tree import CompiledFormat

ProgressFn = Callable[[int], None] | None


def subtree_align(fmt: Format, world: int) -> int:
    """Candidates under one node after the first hole characters: shards made of whole such
    subtrees share no node below them. Enough subtrees for every rank (4 each where |R| allows)."""
    blocks, k = 1, 0
    while k < len(fmt.radices) and blocks < 4 * world:
        blocks *= len(fmt.radices[k])
        k += 1
    return max(1, fmt.space_size // blocks)


def _shard(cf: CompiledFormat, align: int, quiet: bool) -> tuple[int, int]:
    team = distributed.team()
    size = cf.fmt.space_size
    useful = -(-size // align)
    if useful < team.world and not quiet:
        distributed.note(
            f"format {cf.fmt.source!r}: {useful} shard(s) of work for {team.world} ranks; {team.world - useful} idle"
        )
    return team.split(size, align)


def _team_steps(scorer: Scorer, since: int, steps: int) -> None:
    """The scorer's counter, from ``since`` on, reads the ``steps`` of the whole team."""
    scorer.steps = since + steps


def enumerate_counts(
    scorer: Scorer, cf: CompiledFormat, px: np.ndarray, *, batch: int, progress: ProgressFn = None, quiet: bool = True
) -> np.ndarray:
    """:func:`engine.enumerate_counts`' counts, the tree's subtrees split over the ranks."""
    team = distributed.team()
    if team.world == 1 or not cf.track_index:
        return engine.enumerate_counts(scorer, cf, px, batch=batch, progress=progress)[0]
    s0 = scorer.steps
    lo, hi = _shard(cf, subtree_align(cf.fmt, team.world), quiet)
    counts, res = engine.enumerate_counts(scorer, cf, px, batch=batch, index_range=(lo, hi), progress=progress)
    *total, steps = team.all_sum([*counts.tolist(), res.steps - res.foreign_steps])
    _team_steps(scorer, s0, steps)
    return np.asarray(total, dtype=np.int64)


def brute_force_counts(
    scorer: Scorer,
    cf: CompiledFormat,
    px: np.ndarray,
    *,
    context: str | None,
    batch: int,
    progress: ProgressFn = None,
    quiet: bool = True,
) -> np.ndarray:
    """:func:`engine.brute_force_counts`, the candidates split over the ranks in whole batches
    (so every score is the one process's)."""
    team = distributed.team()
    fmt = cf.fmt
    if team.world == 1:
        return engine.brute_force_counts(scorer, fmt, px, context=context, batch=batch, progress=progress)
    s0 = scorer.steps
    lo, hi = _shard(cf, batch, quiet)
    counts = engine.brute_force_counts(
        scorer, fmt, px, context=context, batch=batch, progress=progress, index_range=(lo, hi)
    )
    *total, steps = team.all_sum([*counts.tolist(), scorer.steps - s0])
    _team_steps(scorer, s0, steps)
    return np.asarray(total, dtype=np.int64)


def pruned_rank(
    scorer: Scorer, cf: CompiledFormat, px: float, *, max_steps: int, batch: int, progress: ProgressFn = None
) -> engine.PrunedRank:
    """A pruned walk, its subtrees under the first hole characters shared by the ranks.

    Within the budget the ranks' counts add up to the exact rank, and their steps (each node
    once) to one walk's. Where the budget runs out, the proven bounds depend on the order in
    which one walk met the nodes, so every rank then takes that one walk: the report stays the
    single process's."""
    team = distributed.team()
    single: dict[str, Any] = dict(max_steps=max_steps, batch=batch, progress=progress)
    if team.world == 1 or not cf.track_index:
        return engine.pruned_rank(scorer, cf, px, **single)
    s0 = scorer.steps
    lo, hi = team.split(cf.fmt.space_size, subtree_align(cf.fmt, team.world))
    pr = engine.pruned_rank(scorer, cf, px, index_range=(lo, hi), **single)
    res = pr.result
    found, steps, unfinished = team.all_sum([pr.found, res.steps - res.foreign_steps, 0 if res.complete else 1])
    if not unfinished and steps <= max_steps:
        rank = max(1, found)
        _team_steps(scorer, s0, steps)
        return engine.PrunedRank(rank, (rank, rank), res, found)
    _team_steps(scorer, s0, 0)
    return engine.pruned_rank(scorer, cf, px, **single)


def my_batches(n: int, batch: int) -> list[int]:
    """The starts of this rank's batches of a job of ``n`` rows in batches of ``batch``: every
    world-th one, so the batches (and every score in them) are those of one process."""
    team = distributed.team()
    return list(range(0, n, batch))[team.rank :: team.world]


def gather_batches(scorer: Scorer, done: list[Any], since: int) -> list[Any]:
    """Every rank's finished batches (of :func:`my_batches`), in rank order; the scorer's counter
    from ``since`` on reads the steps of the whole team."""
    done, steps = distributed.team().gather_chunks(done, scorer.steps - since)
    _team_steps(scorer, since, steps)
    return done


__all__ = ["brute_force_counts", "enumerate_counts", "gather_batches", "my_batches", "pruned_rank", "subtree_align"]
