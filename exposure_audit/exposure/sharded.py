"""The engine's walks shared by the ranks of a torchrun job (docs/distributed.md).

Each function takes what its engine function does and returns what one process would: counts
are exact integer sums, and the scorer's step counter advances by the ranks' model steps summed
(each node stepped once, by one rank: the steps of one walk of the whole tree). So a caller reads
model steps off ``scorer.steps`` as in one process, and no report depends on the world size.
Outside torchrun (a world of one) each is its engine function.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import distributed
from ..data.formats import Format
from ..models.base import Scorer
from . import engine
from .tree import CompiledFormat

ProgressFn = Callable[[int], None] | None


PIECES_PER_RANK = 16  # pieces of a shared walk per rank: the slowest rank's wait is at most one


def subtree_align(fmt: Format, world: int, per_rank: int = 4) -> int:
    """Candidates under one node after the first hole characters: shards made of whole such
    subtrees share no node below them. Enough subtrees for every rank (``per_rank`` each where
    |R| allows)."""
    blocks, k = 1, 0
    while k < len(fmt.radices) and blocks < per_rank * world:
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


def _pieces(cf: CompiledFormat, quiet: bool) -> Iterator[tuple[int, int]]:
    """This rank's pieces ``[lo, hi)`` of the format's index range: whole subtrees, handed out
    as the ranks ask for them (:meth:`~exposure_audit.distributed.Team.claim`)."""
    team = distributed.team()
    size = cf.fmt.space_size
    align = subtree_align(cf.fmt, team.world, PIECES_PER_RANK)
    pieces = -(-size // align)
    if pieces < team.world and not quiet:
        distributed.note(
            f"format {cf.fmt.source!r}: {pieces} shard(s) of work for {team.world} ranks; {team.world - pieces} idle"
        )
    for i in team.claim(pieces):
        yield i * align, min(size, (i + 1) * align)


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
    counts, steps = np.zeros(len(px), dtype=np.int64), 0
    for lo, hi in _pieces(cf, quiet):
        part, res = engine.enumerate_counts(scorer, cf, px, batch=batch, index_range=(lo, hi), progress=progress)
        counts += part
        steps += res.steps - res.foreign_steps
    *total, steps = team.all_sum([*counts.tolist(), steps])
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
    s0, t0 = scorer.steps, time.perf_counter()
    found = steps = unfinished = 0
    # A rank may get no piece at all (fewer pieces than ranks, or the others took them all first).
    for lo, hi in _pieces(cf, quiet=True):
        # What this rank has stepped so far (its own nodes): past the budget, the team's steps
        # are too, so it stops taking pieces and the one walk below decides.
        left = None if max_steps is None else max_steps - steps
        if left is not None and left <= 0:
            unfinished += 1
            break
        pr = engine.pruned_rank(scorer, cf, px, index_range=(lo, hi), **{**single, "max_steps": left})
        res = pr.result
        found, steps = found + pr.found, steps + res.steps - res.foreign_steps
        unfinished += 0 if res.complete else 1
    found, steps, unfinished = team.all_sum([found, steps, unfinished])
    if not unfinished and steps <= max_steps:
        rank = max(1, found)
        _team_steps(scorer, s0, steps)
        whole = engine.WalkResult(steps, True, 0, time.perf_counter() - t0)  # the team's walk
        return engine.PrunedRank(rank, (rank, rank), whole, found)
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
