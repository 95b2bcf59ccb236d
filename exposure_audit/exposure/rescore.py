"""float32 ranks from a bfloat16 search: walk in the fast dtype, settle the close calls in float32.

A bfloat16 model scores every candidate a little differently from the float32 one (its 8-bit
mantissa rounds each logit), and a rank counts candidates at or under the canary's score, so
candidates whose two scores straddle the canary's move across it: on SmolLM2-135M 5 of 6 ranks
differed (docs/benchmarks.md). :func:`rescored_ranks` gets the float32 rank back at close to the
bfloat16 search's cost:

Every candidate of a format shares its prefix (``The first digits of pi are 3.``), and the
prefix's own rounding, ``offset = fast - exact`` bits of those shared tokens, is the same for
every candidate: it moves no rank. So the premise is about what is left, ``|fast - exact -
offset| < delta`` for every candidate, and the band is centred on ``t + offset``:

1. Score each canary with the exact model (``t``, float32 bits). Unless ``delta`` is given, set
   it from the evidence: score ``calibration`` uniform candidates and the canaries in both
   dtypes, ``delta = 3 x`` the largest ``|fast - exact - offset|`` seen (at least 0.05 bits).
2. Walk the candidate tree once with the fast model, pruned at ``max(t) + offset + delta``,
   counting per canary the candidates the fast model scores at or under ``t + offset - delta``
   (``below``) and keeping those in the band ``(t + offset - delta, t + offset + delta]``.
3. Rescore the band's candidates with the exact model: the rank is ``below`` plus the band's
   candidates that score at or under ``t`` in float32.

The result is the float32 rank wherever the premise holds; with ``[below, below + band]`` the
rank interval the same premise gives when the band is too large to rescore (over ``max_band``
candidates for that canary). The premise is not proven: it is checked on the evidence at hand,
the largest ``|fast - exact - offset|`` over every rescored candidate and every canary of the
call (``max_error``; ``measure`` judges a group's results again on the largest any of its
calls saw), reported with each result; ``sound`` is False where that evidence comes within
a factor 2 of ``delta`` (widen ``delta`` and run again).
The band's candidates are rescored with shared prefixes stepped once
(``engine.score_secrets_shared``); their fast costs come from the walk itself.

:class:`Rescorer` holds one format's canaries scored in both dtypes and the calibrated
``delta``; each :meth:`Rescorer.ranks` is steps 2-3 for some of them. ``measure(...,
reference=)`` (``measure --dtype bfloat16 --rescore``) makes each of its enumerations and pruned
walks one such call, in place of a walk of its own: one bfloat16 walk per exact rank.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from ..data.formats import Format
from ..errors import AuditError
from ..models.base import Scorer
from . import engine
from .engine import TIE_TOLERANCE
from .options import DEFAULT_MAX_BAND  # candidates per canary rescored in the exact dtype
from .tree import CompiledFormat

DEFAULT_CALIBRATION = 256  # uniform candidates scored in both dtypes to set delta
CALIBRATION_FACTOR = 3.0  # delta = this x the largest |fast - exact| seen in calibration
MIN_DELTA = 0.05  # bits
WIDENINGS = 2  # times a calibrated delta is widened on the band's evidence before a result is flagged


@dataclass
class RescoredRank:
    """One canary's float32 rank found through a bfloat16 walk (see the module's docstring)."""

    secret: str
    log_perplexity: float  # exact model (float32) bits
    fast_log_perplexity: float  # fast model (bfloat16) bits
    rank: int | None  # the exact model's rank; None where the band was too large to rescore
    rank_bounds: tuple[int, int]  # [below, below + band] under the premise |fast - exact| < delta
    band: int  # candidates the fast model put within delta of the canary
    rescored: int  # of those, rescored in the exact dtype (band, or 0 past max_band)
    delta: float
    max_error: float  # largest |fast - exact - offset| seen over the rescored candidates and the canaries
    sound: bool  # max_error < delta / 2: the premise has a margin on the evidence at hand
    fast_rank: int  # the fast model's own rank (from the same walk: complete under the premise)
    offset: float  # the shared prefix's fast - exact bits: the band's centre is t + offset
    widened: int = 0  # times delta was widened on the evidence before this result (Rescorer.ranks)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RescoreRun:
    """What :meth:`Rescorer.ranks` spent: model steps and seconds of each part."""

    walk_steps: int
    walk_seconds: float
    rescore_candidates: int  # candidates rescored in the exact dtype (each once)
    rescore_steps: int  # the exact model's steps rescoring the bands
    rescore_seconds: float
    delta: float  # the band's half-width used (given, or calibrated)
    calibrated_error: float  # the largest |fast - exact - offset| over the calibration candidates and canaries
    offset: float  # the shared prefix's fast - exact bits (every candidate's; the band is centred on it)
    calibration: int  # calibration candidates asked for
    widened: int = 0  # times delta was widened (the steps and seconds above add up every attempt)


@dataclass(frozen=True)
class RescoreOptions:
    """How :class:`Rescorer` settles the close calls (see the module's docstring)."""

    delta: float | None = None  # bits; None: calibrated
    calibration: int = DEFAULT_CALIBRATION  # uniform candidates scored in both dtypes
    seed: int = 0  # of the calibration candidates
    max_band: int = DEFAULT_MAX_BAND  # candidates per canary rescored; past it, an interval
    max_steps: int | None = None  # of the fast walk; past it the call fails
    batch: int = engine.DEFAULT_BATCH

    def check(self) -> None:
        if self.delta is not None and not self.delta > 0:
            raise AuditError("delta: the rescoring band must be wider than 0 bits")
        if self.calibration < 0:
            raise AuditError("calibration: the number of calibration candidates must be at least 0")
        if self.max_band < 0:
            raise AuditError("max_band must be at least 0")


class Rescorer:
    """One format's canaries (in one context), ranked as the ``exact`` model ranks them through
    walks of the ``fast`` one (the same model in a cheaper dtype: the same tokenizer and tree).
    The canaries are scored in both dtypes once, here; ``delta`` is calibrated once, when first
    needed; each :meth:`ranks` call is one walk of the fast model and one rescoring of its bands.
    ``measure`` ranks every exact canary this way (no walk of its own in the fast dtype)."""

    def __init__(
        self,
        fast: Any,
        exact: Any,
        fmt: Format | str,
        secrets: Sequence[str],
        options: RescoreOptions | None = None,
        context: str | None = None,
        fast_compiled: CompiledFormat | None = None,
        fast_scores: np.ndarray | None = None,
    ) -> None:
        self.options = o = options or RescoreOptions()
        o.check()
        self.fmt = Format.parse(fmt) if isinstance(fmt, str) else fmt
        self.secrets = list(secrets)
        self.fast, self.exact = Scorer.of(fast), Scorer.of(exact)
        self._delta, self.calibrated_error = o.delta, 0.0
        self.widened = 0  # times delta was widened on the evidence (ranks)
        self.max_error = 0.0  # the largest |fast - exact - offset| seen by any ranks() call so far
        self._exact_cost: dict[int, float] = {}  # candidate index -> exact bits, once rescored
        self._compile(context, fast_compiled, fast_scores)

    def _compile(self, context: str | None, fast: CompiledFormat | None, scores: np.ndarray | None) -> None:
        """Both models' trees of the format and the canaries' bits in both (``fast`` and ``scores``:
        the fast model's tree and bits, where the caller has them already)."""
        fmt, secrets, o = self.fmt, self.secrets, self.options
        self.cf_fast = fast or engine.compile_format(self.fast, fmt, context, canaries=secrets)
        self.cf_exact = engine.compile_format(self.exact, fmt, context, canaries=secrets)
        if self.cf_fast.tree_steps() != self.cf_exact.tree_steps():
            raise AuditError("the fast and exact models do not share one candidate tree (different tokenizers?)")
        self.t = engine.score_secrets(self.exact, self.cf_exact, secrets, o.batch)  # float32 bits
        # the fast dtype's
        self.tf = (
            np.asarray(scores)
            if scores is not None
            else engine.score_secrets(self.fast, self.cf_fast, secrets, o.batch)
        )
        # the shared prefix's own rounding: the same for every candidate, so it moves no rank
        self.offset = float(self.cf_fast.base_cost - self.cf_exact.base_cost)
        self.calibrated_error = float(np.abs(self.tf - self.t - self.offset).max()) if secrets else 0.0

    @property
    def delta(self) -> float:
        """The band's half-width in bits: given, or :data:`CALIBRATION_FACTOR` times the largest
        difference seen over ``calibration`` uniform candidates and the canaries (at least
        :data:`MIN_DELTA`), calibrated on first use."""
        if self._delta is None:
            o, fmt = self.options, self.fmt
            if o.calibration:
                rng = random.Random(f"exposure-audit:{o.seed}:rescore:{fmt.source}")
                probe = fmt.sample(rng, min(o.calibration, fmt.space_size))
                cx = engine.score_secrets_shared(self.exact, self.cf_exact, probe, o.batch)
                cq = engine.score_secrets_shared(self.fast, self.cf_fast, probe, o.batch)
                self.calibrated_error = max(self.calibrated_error, float(np.abs(cq - cx - self.offset).max()))
            self._delta = max(MIN_DELTA, CALIBRATION_FACTOR * self.calibrated_error)
        return self._delta

    def ranks(
        self,
        which: Sequence[int] | None = None,
        *,
        max_steps: int | None = None,
        progress: Callable[[int], None] | None = None,
        run: dict[str, Any] | None = None,
    ) -> list[RescoredRank] | None:
        """The exact model's rank of the canaries ``which`` (indices into ``secrets``; default all)
        from one walk of the fast model pruned at their largest float32 score + offset +
        ``delta``, and one rescoring of their bands. None where the walk would pass ``max_steps``
        (no rank can be claimed). ``run`` receives a :class:`RescoreRun` as a dict.

        Where ``delta`` was calibrated (not given) and the band's evidence comes within a factor
        2 of it (``sound`` False), ``delta`` is widened to :data:`CALIBRATION_FACTOR` times the
        largest difference seen and the canaries are ranked again (at most :data:`WIDENINGS`
        times; candidates already rescored are not rescored again), all within ``max_steps``."""
        which = list(range(len(self.secrets))) if which is None else list(which)
        if not which:
            return []
        if not self.cf_fast.track_index:
            raise AuditError(
                f"format {self.fmt.source!r}: rescoring names each candidate by its index, and formats of 2^62 "
                "candidates or more are walked without indices; rescore a smaller format"
            )
        self.delta  # noqa: B018 -- calibrate first: max_steps bounds the walks, not the calibration
        s0, best = self.fast.steps, None
        for attempt in range(WIDENINGS + 1):
            left = None if max_steps is None else max_steps - (self.fast.steps - s0)
            one: dict[str, Any] = {}
            got = self._ranks_once(which, left, progress, one)
            if got is None:  # a wider walk that does not fit: the narrower result stands, flagged
                return best
            _add_run(run, one, self.widened)
            self.max_error = max(self.max_error, got[0].max_error)
            best = got
            if got[0].sound or self.options.delta is not None or attempt == WIDENINGS:
                return got
            if left is not None and left - one["walk_steps"] < one["walk_steps"]:
                return got  # no room left for a wider walk (it steps at least as many nodes)
            self._delta = CALIBRATION_FACTOR * got[0].max_error
            self.widened += 1
        return best  # not reached

    def _ranks_once(
        self,
        which: list[int],
        max_steps: int | None,
        progress: Callable[[int], None] | None,
        run: dict[str, Any] | None,
    ) -> list[RescoredRank] | None:
        """One walk and one rescoring at the current ``delta`` (:meth:`ranks`)."""
        delta, max_band = self.delta, self.options.max_band
        t, tf = self.t[which], self.tf[which]
        centre = t + self.offset  # where the fast model puts a candidate the exact one scores at t
        lo_edge, hi_edge = centre - delta + TIE_TOLERANCE, centre + delta + TIE_TOLERANCE
        n = len(which)
        below, band, fast_rank = (np.zeros(n, dtype=np.int64) for _ in range(3))
        kept: list[list[np.ndarray]] = [[] for _ in range(n)]  # per canary: indices in its band
        fast_cost: dict[int, float] = {}  # the walk's (fast) cost of every kept candidate

        def on_leaves(costs: np.ndarray, index: np.ndarray) -> None:
            index = np.asarray(index)
            for i in range(n):
                below[i] += int(np.count_nonzero(costs <= lo_edge[i]))
                fast_rank[i] += int(np.count_nonzero(costs <= tf[i] + TIE_TOLERANCE))
                inside = (costs > lo_edge[i]) & (costs <= hi_edge[i])
                k = int(np.count_nonzero(inside))
                if k:
                    band[i] += k
                    if band[i] <= max_band:
                        kept[i].append(index[inside])
                        fast_cost.update(zip(index[inside].tolist(), costs[inside].tolist()))

        t0, s0 = time.perf_counter(), self.fast.steps
        result = engine.walk(
            self.fast,
            self.cf_fast,
            on_leaves,
            bound=float(centre.max()) + delta,
            max_steps=max_steps,
            batch=self.options.batch,
            progress=progress,
        )
        if not result.complete:
            return None
        walk = (self.fast.steps - s0, time.perf_counter() - t0)
        t1, s1 = time.perf_counter(), self.exact.steps
        wanted = [i for i in range(n) if band[i] <= max_band]
        pool = np.unique(
            np.concatenate([np.concatenate(kept[i]) for i in wanted if kept[i]] or [np.zeros(0, np.int64)])
        )
        new = [int(ix) for ix in pool if int(ix) not in self._exact_cost]
        scored = engine.score_secrets_shared(
            self.exact, self.cf_exact, [self.fmt.fill(ix) for ix in new], self.options.batch
        )
        self._exact_cost.update(zip(new, scored.tolist()))
        exact_costs = np.array([self._exact_cost[int(ix)] for ix in pool])
        fast_costs = np.array([fast_cost[int(ix)] for ix in pool])
        where = {int(ix): j for j, ix in enumerate(pool)}
        errors = np.abs(np.concatenate([fast_costs - exact_costs, tf - t]) - self.offset)
        max_error = float(errors.max()) if errors.size else 0.0
        if run is not None:
            spent = RescoreRun(
                walk[0], round(walk[1], 3), len(new), self.exact.steps - s1, round(time.perf_counter() - t1, 3),
                delta, self.calibrated_error, self.offset, self.options.calibration,
            )  # fmt: skip
            run.update(asdict(spent))
        out = []
        for i, k in enumerate(which):
            rank = None
            if i in wanted:
                ids = np.concatenate(kept[i]) if kept[i] else np.zeros(0, np.int64)
                mine = exact_costs[[where[int(ix)] for ix in ids]] if ids.size else np.zeros(0)
                # at least 1: the canary itself (it drops out of its own band only where the premise
                # fails, which max_error then shows)
                rank = max(1, int(below[i] + np.count_nonzero(mine <= t[i] + TIE_TOLERANCE)))
            out.append(
                RescoredRank(
                    secret=self.secrets[k],
                    log_perplexity=float(t[i]),
                    fast_log_perplexity=float(tf[i]),
                    rank=rank,
                    rank_bounds=(max(1, int(below[i])), int(below[i] + band[i])),
                    band=int(band[i]),
                    rescored=int(band[i]) if i in wanted else 0,
                    delta=delta,
                    max_error=max_error,
                    sound=max_error < delta / 2,
                    fast_rank=max(1, int(fast_rank[i])),
                    offset=self.offset,
                    widened=self.widened,
                )
            )
        return out


def _add_run(run: dict[str, Any] | None, one: dict[str, Any], widened: int) -> None:
    """Add one attempt's :class:`RescoreRun` to ``run``: steps, seconds and candidates summed, the
    rest the latest attempt's."""
    if run is None:
        return
    summed = ("walk_steps", "walk_seconds", "rescore_candidates", "rescore_steps", "rescore_seconds")
    had = {k: run.get(k, 0) for k in summed}
    run.update(one)
    run.update({k: round(had[k] + one[k], 3) if isinstance(one[k], float) else had[k] + one[k] for k in summed})
    run["widened"] = widened


def rescored_ranks(
    fast: Any,
    exact: Any,
    fmt: Format | str,
    secrets: Sequence[str],
    options: RescoreOptions | None = None,
    *,
    context: str | None = None,
    run: dict[str, Any] | None = None,
    **settings: Any,
) -> list[RescoredRank]:
    """The exact model's rank of each secret of ``fmt``, walking the tree with the ``fast`` model
    (the same model in a cheaper dtype: the same tokenizer and tree) and rescoring with ``exact``
    only the candidates within ``delta`` bits of a canary (:class:`Rescorer`, one walk).
    ``delta=None`` calibrates it. ``run`` receives a :class:`RescoreRun` as a dict. Past
    ``max_steps`` the walk stops and the call fails (no rank can be claimed). ``settings`` are
    :class:`RescoreOptions` fields by name (``delta=0.5``), replacing those of ``options``."""
    o = replace(options or RescoreOptions(), **settings)
    o.check()
    fmt = Format.parse(fmt) if isinstance(fmt, str) else fmt
    if not secrets:
        return []
    got = Rescorer(fast, exact, fmt, secrets, o, context).ranks(max_steps=o.max_steps, run=run)
    if got is None:
        raise AuditError(f"the bfloat16 walk ran past its budget of {o.max_steps} model steps; no rank is claimed")
    return got


__all__ = [
    "CALIBRATION_FACTOR",
    "DEFAULT_CALIBRATION",
    "DEFAULT_MAX_BAND",
    "MIN_DELTA",
    "WIDENINGS",
    "RescoreOptions",
    "RescoreRun",
    "RescoredRank",
    "Rescorer",
    "rescored_ranks",
]
