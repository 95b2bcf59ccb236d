"""``measure``: each canary's log-perplexity, rank and exposure, by the best method that fits.

Methods (``method=``):
- ``enumerate``: walk the whole prefix tree of the format once; every canary of that format is
  ranked from the same walk (exact).
- ``pruned``: per canary, walk only prefixes within its log-perplexity (exact; work grows with
  the rank). Past ``max_steps`` it keeps the proven rank bounds and falls back to the estimate.
- ``estimate``: ``estimator=`` ``importance`` (default: importance sampling over the candidate
  tree with the model as proposal, unbiased at any exposure; importance.py), ``uniform`` (the
  share of ``samples`` uniform candidates at or under the canary, Clopper-Pearson interval) or
  ``skewnorm`` (the pre-#13 policy: uniform while 20 samples are under the canary, else the
  skew-normal extrapolation, in the Clopper-Pearson interval).
- ``brute``: score every candidate's whole line (the naive reference).
- ``auto``: estimate every canary first, then predict each plan's model steps (enumeration: the
  tree's size; a pruned walk: estimated from the same draws) and run the cheapest plan that
  gives an exact rank wherever ``max_steps`` allows (``prefer="exact"``), or exact work only
  where it costs no more than the estimate (``prefer="fast"``). See :class:`Plan`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .. import distributed
from ..data.formats import Format
from ..data.manifest import Canary
from ..errors import AuditError
from ..models.base import Scorer
from ..progress import Progress
from . import engine, sharded
from .importance import ImportanceSamples, importance_samples, predicted_steps
from .math import (
    SKEWNORM_MAX_SKEWNESS,
    combine_estimates,
    exposure_from_rank,
    log2_int,
    sampling_estimate,
    skewnorm_exposure,
)
from .options import (
    DEFAULT_MAX_STEPS,
    DEFAULT_SAMPLES,
    ESTIMATORS,
    METHODS,
    PREFER,
    MeasureOptions,
    exact_budget_steps,
)
from .rescore import RescoredRank, RescoreOptions, Rescorer
from .tree import CompiledFormat


@dataclass
class CanaryResult:
    """What ``measure`` found about one canary (which it points to, as it was handed in)."""

    canary: Canary
    space_size: int
    log_perplexity: float
    rank: int | None
    rank_bounds: tuple[int, int] | None
    exposure: float
    exposure_max: float
    method: str
    model_steps: int
    seconds: float
    exposure_ci: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.canary.id

    @property
    def format(self) -> str:
        return self.canary.format

    @property
    def secret(self) -> str:
        return self.canary.secret

    @property
    def text(self) -> str:
        return self.canary.text

    @property
    def insertions(self) -> int:
        return self.canary.insertions

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "format": self.format,
            "secret": self.secret,
            "text": self.text,
            "insertions": self.insertions,
            "space_size": str(self.space_size),
            "log_perplexity": self.log_perplexity,
            "rank": self.rank,
            "rank_bounds": list(self.rank_bounds) if self.rank_bounds else None,
            "exposure": self.exposure,
            "exposure_max": self.exposure_max,
            "exposure_ci": list(self.exposure_ci) if self.exposure_ci else None,
            "method": self.method,
            "model_steps": self.model_steps,
            "seconds": self.seconds,
        }
        out.update(self.details)
        return out


@dataclass
class FormatSamples:
    """Uniform samples of a format's candidates and their scores, shared by its canaries, with
    the skew-normal extrapolation of every canary of the format (one fit and one set of
    bootstrap refits per format)."""

    scores: np.ndarray
    steps: int
    seconds: float
    skewnorm: dict[str, Any] | str  # {"fit", "point", "ci"} or why no fit was possible


def _result(c: Canary, fmt: Format, px: float, **fields: Any) -> CanaryResult:
    """A canary's result: what every method reports about the canary itself, plus ``fields``."""
    return CanaryResult(
        canary=c,
        space_size=fmt.space_size,
        log_perplexity=px,
        exposure_max=log2_int(fmt.space_size),
        **fields,
    )


def _exact(
    c: Canary, fmt: Format, px: float, rank: int, method: str, steps: int, seconds: float, **details: Any
) -> CanaryResult:
    rank = min(rank, fmt.space_size)
    return _result(
        c,
        fmt,
        px,
        rank=rank,
        rank_bounds=(rank, rank),
        exposure=exposure_from_rank(rank, fmt.space_size),
        method=method,
        model_steps=steps,
        seconds=seconds,
        details=dict(details),
    )


def measure(
    model: Any,
    canaries: Sequence[Any],
    options: MeasureOptions | None = None,
    *,
    collect: dict[str, Any] | None = None,
    plans: dict[str, Any] | None = None,
    contexts: Mapping[str, str] | None = None,
    memory: dict[str, Any] | None = None,
    reference: Any = None,
    **settings: Any,
) -> list[CanaryResult]:
    """Measure every canary; results come back in the order given.

    ``canaries``: :class:`~exposure_audit.data.manifest.Canary` objects, or anything with their
    ``format``, ``secret`` and ``insertions`` (and ``id``), made into one. ``options`` says how
    (default :class:`MeasureOptions`); ``settings`` are its fields by name (``method="enumerate"``),
    replacing those of ``options``.

    ``collect``, if given, receives per format the uniform samples' log-perplexities and the
    skew-normal fit (``{"scores": [...], "fit": {...}}``), for the report's histogram. ``plans``
    receives per format what ``auto`` chose and why (:class:`Plan`), for the report's
    ``model.plan``; ``memory`` the search-memory budget and the peak the walks reached.

    ``contexts`` maps canary ids to their own context (a chat canary's rendered conversation up
    to it); the others use ``options.context``. A rank compares candidates in one context, so the
    canaries of a format are measured in one group per distinct context (plans and collected
    samples of the extra groups are keyed ``"FORMAT @ context N"``).

    ``reference``: the same model in float32 where ``model`` runs in a cheaper dtype. Every exact
    rank is then made float32's (rescore.py: a walk in the fast dtype, the close calls rescored
    in float32; the rank interval where a band is too large), and every canary's
    log-perplexity is float32's; estimates keep the fast dtype's figures (their intervals are
    wider than its rounding)."""
    opts = replace(options or MeasureOptions(), **settings)
    opts.check()
    canaries = [Canary.of(c) for c in canaries]
    distributed.team().exchange()  # under torchrun: every rank got this far (or all stop with the error)
    scorer = Scorer.of(model, opts.max_memory)
    opts = replace(opts, exact_budget=exact_budget_steps(opts.exact_budget, scorer.step_flops))
    if memory is not None:
        memory["budget"] = scorer.budget
    results: list[CanaryResult | None] = [None] * len(canaries)
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, c in enumerate(canaries):
        own = (contexts or {}).get(c.id or "")
        groups.setdefault((c.format, own if own is not None else opts.context), []).append(i)
    seen: dict[str, int] = {}
    exact_left: dict[str, int] = {}  # prefer="balanced": a format's exact budget, shared by its context groups
    for (source, context), idxs in groups.items():
        fmt = Format.parse(source)
        n = seen[source] = seen.get(source, -1) + 1
        key = source if n == 0 else f"{source} @ context {n}"
        group_opts = opts if context == opts.context else replace(opts, context=context)
        left = exact_left.setdefault(source, opts.exact_budget)
        out, cf, draws, plan = _measure_format(
            scorer,
            fmt,
            [canaries[i] for i in idxs],
            group_opts,
            collect is not None,
            exact_left=left,
            reference=reference,
        )
        # what the balanced plan spent (an enumeration cheaper than the estimate is not counted)
        if plan is not None and plan.exact_budget is not None:
            exact_left[source] = max(0, left - plan.exact_steps)
        for i, r in zip(idxs, out):
            results[i] = r
        if plans is not None and plan is not None:
            plans[key] = plan.to_json()
        if collect is not None and n == 0:
            shared = draws.uniform if draws is not None else None
            if shared is None:
                shared = _sample_scores(scorer, cf, [], replace(group_opts, bootstrap=0))
            sk = shared.skewnorm
            collect[source] = {"scores": shared.scores.tolist(), "fit": None if isinstance(sk, str) else sk["fit"]}
    return [r for r in results if r is not None]


@dataclass
class Plan:
    """What ``auto`` chose for one format, the predicted steps of every plan it weighed, and
    what the chosen one actually took (model steps; the estimate's draws are counted once)."""

    chosen: str
    prefer: str
    reason: str
    predicted: dict[str, int]  # plan -> predicted model steps (estimate included where it is needed)
    exact_possible: int  # canaries whose rank the budget allows to be exact
    canaries: int
    walkable: int = 0  # canaries whose predicted pruned walk fits the budget
    pruned: list[int] = field(default_factory=list)  # canaries (by position in the format's group) walked
    predicted_pruned_steps: list[int] = field(default_factory=list)  # per canary
    exact_budget: int | None = None  # prefer="balanced": the exact work this group could spend
    actual_steps: int = 0
    exact_steps: int = 0  # of actual_steps, those of walks and enumeration (the estimate's excluded)
    exact: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FormatDraws:
    """A format's random draws, shared by its canaries: importance-sampling draws and/or uniform
    samples (with the skew-normal fit). Each is computed only when an estimate or the report's
    histogram needs it."""

    importance: ImportanceSamples | None = None
    uniform: FormatSamples | None = None

    @property
    def steps(self) -> int:
        return (self.importance.steps if self.importance else 0) + (self.uniform.steps if self.uniform else 0)

    @property
    def seconds(self) -> float:
        return (self.importance.seconds if self.importance else 0.0) + (self.uniform.seconds if self.uniform else 0.0)


def _draws(
    scorer: Scorer,
    cf: CompiledFormat,
    px: Sequence[float],
    opts: MeasureOptions,
    *,
    importance: bool,
    uniform: bool,
    have: FormatDraws | None = None,
) -> FormatDraws:
    draws = have or FormatDraws()
    if importance and draws.importance is None:
        with Progress(total=None, desc=f"importance {cf.fmt.source}", quiet=opts.quiet, unit="cand"):
            draws.importance = importance_samples(scorer, cf, opts.samples, seed=opts.seed, batch=opts.batch)
    if uniform and draws.uniform is None:
        draws.uniform = _sample_scores(scorer, cf, px, opts)
    return draws


def _estimate_steps(cf: CompiledFormat, opts: MeasureOptions) -> int:
    """Predicted model steps of the estimate (importance.predicted_steps)."""
    return predicted_steps(cf, opts.samples)


def _plan(
    cf: CompiledFormat,
    group: Sequence[Canary],
    px: np.ndarray,
    draws: FormatDraws,
    opts: MeasureOptions,
    exact_left: int | None = None,
) -> Plan:
    """Choose by predicted model steps (docs/method.md, ``auto``).

    Each canary's pruned walk is predicted by the importance draws themselves (the estimated
    number of in-bound nodes the walk would step, measured on this model), enumeration by the
    tree's size (shared by every canary of the format). ``prefer="balanced"`` (the default):
    exact work within ``exact_budget`` steps (``exact_left``: what the format's earlier context
    groups left of it), see :func:`_plan_balanced`. ``prefer="exact"``: the cheapest plan that
    gives an exact rank wherever the budget (``max_steps``) allows. ``prefer="fast"``: exact only
    where it costs no more than the estimate already paid for.
    """
    assert draws.importance is not None
    tree = cf.tree_steps()
    est_steps = draws.importance.steps
    pred = [round(draws.importance.pruned_steps(float(p))) for p in px]
    n = len(group)
    fits_enum = tree <= opts.max_steps
    walkable = [i for i, s in enumerate(pred) if s <= opts.max_steps]
    predicted = {"estimate": est_steps, "pruned+estimate": est_steps + sum(pred[i] for i in walkable)}
    if fits_enum:
        predicted["enumerate"] = est_steps + tree
    exact_possible = n if fits_enum else len(walkable)
    if opts.prefer == "balanced":
        return _plan_balanced(tree, est_steps, pred, predicted, exact_possible, len(walkable), opts, exact_left)
    if opts.prefer == "fast":
        cheap = [i for i, s in enumerate(pred) if s <= est_steps]
        predicted["fast"] = est_steps + sum(pred[i] for i in cheap)
        if fits_enum and tree <= sum(pred[i] for i in cheap):
            return Plan(
                "enumerate",
                "fast",
                "enumeration costs no more than the cheap walks",
                predicted,
                exact_possible,
                n,
                len(walkable),
                [],
                pred,
            )
        return Plan(
            "pruned+estimate" if cheap else "estimate",
            "fast",
            "pruned walks only where a walk costs no more than the estimate",
            predicted,
            exact_possible,
            n,
            len(walkable),
            cheap,
            pred,
        )
    if fits_enum and (len(walkable) < n or predicted["enumerate"] <= predicted["pruned+estimate"]):
        why = (
            "every canary exact; enumeration is cheaper than the pruned walks"
            if len(walkable) == n
            else "only enumeration makes every canary exact within the budget"
        )
        return Plan("enumerate", "exact", why, predicted, exact_possible, n, len(walkable), [], pred)
    why = (
        "every canary exact by pruned walks, cheaper than enumeration"
        if len(walkable) == n
        else "exact by pruned walks where the budget allows; the others estimated"
    )
    chosen = "pruned+estimate" if walkable else "estimate"
    return Plan(chosen, "exact", why, predicted, exact_possible, n, len(walkable), walkable, pred)


def _plan_balanced(
    tree: int,
    est_steps: int,
    pred: list[int],
    predicted: dict[str, int],
    exact_possible: int,
    walkable: int,
    opts: MeasureOptions,
    exact_left: int | None,
) -> Plan:
    """``prefer="balanced"``: a measure whose cost is bounded before it starts.

    The exact work may spend ``budget`` model steps (``exact_budget``, less what this format's
    earlier context groups spent). Canaries are taken cheapest predicted walk first while the
    walks' sum fits the budget (each also within ``max_steps``): the memorized canaries, whose
    walks are short, come out exact; the weakly memorized ones, whose exact ranks cost the most
    and say the least (a few bits), are estimated with their intervals. Enumeration replaces the
    walks where the whole tree fits the budget and either costs no more than they do or makes
    canaries exact that they leave out. The walks are also capped in flight (``_measure_format``),
    so a walk that runs past its prediction never takes the total past the budget."""
    n = len(pred)
    budget = opts.exact_budget if exact_left is None else min(opts.exact_budget, exact_left)
    cheap: list[int] = []
    spent = 0
    for i in sorted(range(n), key=lambda i: (pred[i], i)):
        cost = max(1, pred[i])  # a walk takes a step at least (a budget of 0 walks nothing)
        if cost > opts.max_steps or spent + cost > budget:
            break
        cheap.append(i)
        spent += cost
    predicted["balanced"] = est_steps + spent
    args = (predicted, exact_possible, n, walkable)
    if tree <= min(budget, opts.max_steps) and (len(cheap) < n or tree <= spent):
        why = (
            "enumeration fits the exact budget and costs no more than the pruned walks"
            if len(cheap) == n
            else "enumeration fits the exact budget and makes every canary exact"
        )
        return Plan("enumerate", "balanced", why, *args, [], pred, exact_budget=budget)
    if len(cheap) == n:
        why = f"every canary exact by pruned walks within the exact budget of {budget} steps"
    else:
        why = (
            f"pruned walks, cheapest first, within the exact budget of {budget} steps; "
            f"{n - len(cheap)} of {n} estimated (their walks would cost more)"
        )
    chosen = "pruned+estimate" if cheap else "estimate"
    return Plan(chosen, "balanced", why, *args, sorted(cheap), pred, exact_budget=budget)


def _measure_format(
    scorer: Scorer,
    fmt: Format,
    group: list[Canary],
    opts: MeasureOptions,
    want_uniform: bool = False,
    exact_left: int | None = None,
    reference: Any = None,
) -> tuple[list[CanaryResult], CompiledFormat, FormatDraws | None, Plan | None]:
    """Measure one format's canaries in one context. ``exact_left``: under ``prefer="balanced"``,
    what is left of the format's exact budget (its earlier context groups spent the rest).
    ``reference``: the float32 model; every exact rank is then found by a :class:`Rescorer`
    (one walk in the fast dtype, its close calls rescored in float32), the plan made in the
    fast dtype."""
    t0 = time.perf_counter()
    s0 = scorer.steps
    secrets = [c.secret for c in group]
    cf = engine.compile_format(scorer, fmt, opts.context, canaries=secrets, seed=opts.seed, terminator=opts.terminator)
    px = engine.score_secrets(scorer, cf, secrets, opts.batch)
    rescorer = None
    if reference is not None:
        if opts.terminator != "\n":
            raise AuditError("rescoring in float32 ranks lines that end in a newline; not supported here")
        if opts.method == "brute":
            raise AuditError("brute force scores every line in the model's own dtype; rescore with another method")
        options = RescoreOptions(seed=opts.seed, batch=opts.batch, max_band=opts.max_band)
        rescorer = Rescorer(scorer, reference, fmt, secrets, options, opts.context, fast_compiled=cf, fast_scores=px)
    setup_steps, setup_seconds = _spent(scorer, rescorer) - s0, time.perf_counter() - t0
    size = fmt.space_size
    tree_steps = cf.tree_steps()
    method = opts.method
    use_importance = opts.estimator == "importance"
    use_uniform = opts.estimator != "importance" or want_uniform

    if method == "brute" and opts.terminator != "\n":
        raise AuditError("brute force scores whole lines; use another method with a terminator other than a newline")
    if method == "brute" or method == "enumerate":
        need = engine.brute_force_steps(cf) if method == "brute" else tree_steps
        if need > opts.max_steps:
            raise AuditError(
                f"format {fmt.source!r}: |R| = {size} needs {need} model steps by {method}, over the "
                f"budget of {opts.max_steps} model steps; rank it by pruned walks or estimates instead"
            )
    plan: Plan | None = None
    draws: FormatDraws | None = None
    walk: set[int] = set()
    if method == "auto":
        if tree_steps <= opts.max_steps and tree_steps <= _estimate_steps(cf, opts):
            # enumeration is cheaper than even the estimate: nothing to weigh
            predicted = {"enumerate": tree_steps, "estimate": _estimate_steps(cf, opts)}
            plan = Plan(
                "enumerate", opts.prefer, "enumeration costs less than the estimate", predicted, len(group), len(group)
            )
            method = "enumerate"
        else:
            # (1) estimate every canary (the draws also predict each pruned walk's steps)
            draws = _draws(scorer, cf, px, opts, importance=True, uniform=use_uniform)
            # (2)-(3) predict every plan's steps and pick
            plan = _plan(cf, group, px, draws, opts, exact_left)
            method = "enumerate" if plan.chosen == "enumerate" else "planned"
            walk = set(plan.pruned)

    if method in ("enumerate", "brute"):
        results = _enumerate(scorer, cf, group, px, opts, method, rescorer, (setup_steps, setup_seconds))
        if draws is not None:  # auto estimated first: the report keeps those figures too
            for i, r in enumerate(results):
                r.details.update(_estimate(float(px[i]), i, draws, size, opts)[3])
        if plan is not None:
            exact_steps = sum(r.model_steps for r in results[:1]) - setup_steps
            exact = sum(r.rank is not None for r in results)
            _finish(plan, _spent(scorer, rescorer) - s0, exact, time.perf_counter() - t0, exact_steps)
        return results, cf, draws, plan

    # pruned / estimate / a planned auto
    if method == "estimate":
        draws = _draws(scorer, cf, px, opts, importance=use_importance, uniform=use_uniform)
    if method == "pruned":
        order: list[int] = list(range(len(group)))
    else:  # the planned walks, cheapest predicted first
        order = sorted(walk, key=lambda i: (plan.predicted_pruned_steps[i], i))
    walked = _walks(scorer, cf, px, order, opts, plan.exact_budget if plan is not None else None, rescorer)
    exact_steps = sum(steps for _, steps, _ in walked.values())
    out: list[CanaryResult] = []
    for i, (c, p) in enumerate(zip(group, px)):
        bounds: tuple[int, int] | None = None
        steps, seconds = 0, 0.0
        if i in walked:
            pr, steps, seconds = walked[i]
            if pr is not None and (isinstance(pr, RescoredRank) or pr.rank is not None):
                extra = {}
                if draws is not None:
                    extra = _estimate(float(p), i, draws, size, opts)[3]
                if plan is not None:
                    extra["predicted_pruned_steps"] = plan.predicted_pruned_steps[i]
                if isinstance(pr, RescoredRank):
                    out.append(_rescored(c, fmt, pr, "pruned", steps, seconds, **extra))
                else:
                    out.append(_exact(c, fmt, float(p), pr.rank, "pruned", steps, seconds, **extra))
                continue
            bounds = pr.bounds if pr is not None else None
        draws = _draws(scorer, cf, px, opts, importance=use_importance, uniform=use_uniform, have=draws)
        # the walk's own figures: _estimated adds the draws' (made here or for an earlier canary)
        r = _estimated(c, fmt, float(p), i, draws, bounds, opts, steps, seconds)
        if plan is not None:
            r.details["predicted_pruned_steps"] = plan.predicted_pruned_steps[i]
        if rescorer is not None:  # the estimate is the fast dtype's; the float32 bits alongside
            r.details["log_perplexity_float32"] = float(rescorer.t[i])
        out.append(r)
    if rescorer is not None:
        _flag_on_the_groups_evidence(out, rescorer)
    if plan is not None:
        exact = sum(r.rank is not None for r in out)
        _finish(plan, _spent(scorer, rescorer) - s0, exact, time.perf_counter() - t0, exact_steps)
    return out, cf, draws, plan


def _flag_on_the_groups_evidence(out: list[CanaryResult], rescorer: Rescorer) -> None:
    """Pruned walks rank one canary per Rescorer call, and each result's ``sound`` saw only its own
    band: judge every one again on the largest difference any of the group's calls saw."""
    for r in out:
        g = r.details.get("rescore")
        if g is not None and g["sound"] and not rescorer.max_error < g["delta"] / 2:
            g["sound"], g["max_error"] = False, rescorer.max_error
            r.method = r.method.replace("+rescored", "+rescored(unsound: widen delta)")


def _spent(scorer: Scorer, rescorer: Rescorer | None) -> int:
    """Model steps so far: the fast model's, and the float32 reference's where ranks are rescored."""
    return scorer.steps + (rescorer.exact.steps if rescorer is not None else 0)


def _enumerate(
    scorer: Scorer,
    cf: CompiledFormat,
    group: list[Canary],
    px: np.ndarray,
    opts: MeasureOptions,
    method: str,
    rescorer: Rescorer | None,
    setup: tuple[int, float],
) -> list[CanaryResult]:
    """Every canary of the group ranked from one walk of the whole tree (``enumerate``; with a
    ``rescorer``, the walk pruned at the largest canary's float32 bits + delta) or by scoring
    every candidate's whole line (``brute``)."""
    fmt = cf.fmt
    t1, s1 = time.perf_counter(), _spent(scorer, rescorer)
    with Progress(
        total=cf.tree_steps() if method == "enumerate" else fmt.space_size,
        desc=f"{method} {fmt.source}",
        quiet=opts.quiet,
        unit="step" if method == "enumerate" else "cand",
    ) as bar:
        if rescorer is not None and method == "enumerate":
            got = rescorer.ranks(max_steps=opts.max_steps, progress=bar.update)
            if got is None:  # not reached: the whole tree fits max_steps (checked), and the walk is part of it
                raise AuditError(f"format {fmt.source!r}: the rescoring walk ran past {opts.max_steps} model steps")
        elif method == "enumerate":
            counts = sharded.enumerate_counts(scorer, cf, px, batch=opts.batch, progress=bar.update, quiet=opts.quiet)
        else:
            counts = sharded.brute_force_counts(
                scorer, cf, px, context=opts.context, batch=opts.batch, progress=bar.update, quiet=opts.quiet
            )
    steps = _spent(scorer, rescorer) - s1 + setup[0]
    seconds = time.perf_counter() - t1 + setup[1]
    if rescorer is not None and method == "enumerate":
        return [_rescored(c, fmt, g, method, steps, seconds, work_shared_by=len(group)) for c, g in zip(group, got)]
    return [
        _exact(c, fmt, float(p), int(n), method, steps, seconds, work_shared_by=len(group))
        for c, p, n in zip(group, px, counts)
    ]


def _rescored(
    c: Canary, fmt: Format, g: RescoredRank, method: str, steps: int, seconds: float, **details: Any
) -> CanaryResult:
    """A canary ranked through a :class:`Rescorer`: float32's rank and bits, or, where its band was
    too large to rescore, the rank interval the rounding allows (the fast dtype's own rank, held
    inside it, as the point)."""
    size = fmt.space_size
    how = method + ("+rescored" if g.sound else "+rescored(unsound: widen delta)")
    details = {"rescore": g.to_json(), **details}
    if g.rank is not None:
        return _exact(c, fmt, g.log_perplexity, g.rank, how, steps, seconds, **details)
    lo, hi = g.rank_bounds
    ci = (exposure_from_rank(hi, size), exposure_from_rank(lo, size))
    point = min(max(exposure_from_rank(min(g.fast_rank, size), size), ci[0]), ci[1])
    return _result(
        c,
        fmt,
        g.log_perplexity,
        rank=None,
        rank_bounds=(lo, hi),
        exposure=point,
        method=how,
        model_steps=steps,
        seconds=seconds,
        exposure_ci=ci,
        details=details,
    )


def _walks(
    scorer: Scorer,
    cf: CompiledFormat,
    px: np.ndarray,
    order: list[int],
    opts: MeasureOptions,
    budget: int | None,
    rescorer: Rescorer | None = None,
) -> dict[int, tuple[engine.PrunedRank | RescoredRank | None, int, float]]:
    """Pruned walks of the canaries in ``order``: canary -> (walk, model steps, seconds). With a
    ``budget`` (prefer="balanced") each walk is capped by what the earlier ones left of it, so
    the budget holds even where a walk runs past its prediction; once it is spent, no more walks.
    With a ``rescorer`` each walk is its :meth:`Rescorer.ranks` (None past the cap), and its
    steps count the float32 rescoring too: the cap bounds the fast walks (a widened retry
    included), and the rescoring of their bands (at most ``max_band`` candidates per canary) is
    charged after them, so a rescored walk may pass what was left by that much."""
    walked: dict[int, tuple[engine.PrunedRank | RescoredRank | None, int, float]] = {}
    left = budget
    for i in order:
        cap = opts.max_steps if left is None else min(opts.max_steps, left)
        if cap < 1:
            break
        t1, s1 = time.perf_counter(), _spent(scorer, rescorer)
        with Progress(total=cap, desc=f"pruned {cf.fmt.source}", quiet=opts.quiet, unit="step") as bar:
            if rescorer is not None:
                got = rescorer.ranks([i], max_steps=cap, progress=bar.update)
                pr = None if got is None else got[0]
            else:
                pr = sharded.pruned_rank(scorer, cf, float(px[i]), max_steps=cap, batch=opts.batch, progress=bar.update)
        spent = _spent(scorer, rescorer) - s1
        walked[i] = (pr, spent, time.perf_counter() - t1)
        if left is not None:
            left -= spent
    return walked


def _finish(plan: Plan, steps: int, exact: int, seconds: float, exact_steps: int) -> None:
    plan.actual_steps, plan.exact, plan.seconds, plan.exact_steps = steps, exact, round(seconds, 3), exact_steps


def _sample_scores(scorer: Scorer, cf: CompiledFormat, px: Sequence[float], opts: MeasureOptions) -> FormatSamples:
    """Score ``opts.samples`` uniform candidates; fit the skew-normal and extrapolate every canary."""
    fmt = cf.fmt
    t0 = time.perf_counter()
    s0 = scorer.steps
    rng = random.Random(f"exposure-audit:{opts.seed}:samples:{fmt.source}")
    distinct = opts.samples <= fmt.space_size // 2
    secrets = fmt.sample(rng, opts.samples, distinct=distinct)
    scores = np.empty(len(secrets))
    # under torchrun each rank scores every world-th batch; the batches are those of one process
    mine = sharded.my_batches(len(secrets), opts.batch)
    done: list[tuple[int, np.ndarray]] = []
    share = sum(len(secrets[lo : lo + opts.batch]) for lo in mine)
    with Progress(total=share, desc=f"sample {fmt.source}", quiet=opts.quiet, unit="cand") as bar:
        for lo in mine:
            chunk = secrets[lo : lo + opts.batch]
            done.append((lo, engine.score_secrets(scorer, cf, chunk, opts.batch)))
            bar.update(len(chunk))
    done = sharded.gather_batches(scorer, done, s0)
    steps = scorer.steps - s0
    for lo, chunk_scores in done:
        scores[lo : lo + len(chunk_scores)] = chunk_scores
    try:
        fit, point, ci = skewnorm_exposure(
            np.asarray(px, dtype=np.float64),
            scores,
            fmt.space_size,
            confidence=opts.confidence,
            bootstrap=opts.bootstrap,
            seed=opts.seed,
        )
        skewnorm: dict[str, Any] | str = {
            "fit": {
                "a": fit.a,
                "loc": fit.loc,
                "scale": fit.scale,
                "ks_statistic": fit.ks_statistic,
                "sample_skewness": fit.sample_skewness,
                "degenerate": fit.degenerate,
            },
            "point": point.tolist(),
            "ci": ci.tolist(),
        }
    except ValueError as e:
        skewnorm = str(e)
    return FormatSamples(scores=scores, steps=steps, seconds=time.perf_counter() - t0, skewnorm=skewnorm)


def _estimate(
    px: float, i: int, draws: FormatDraws, size: int, opts: MeasureOptions
) -> tuple[float, tuple[float, float], str, dict[str, Any]]:
    """Canary ``i``'s estimated exposure: (exposure, interval, method, details). Every figure
    that the format's draws allow goes into the details; ``opts.estimator`` picks the reported one."""
    details: dict[str, Any] = {}
    chosen: tuple[float, tuple[float, float], str] | None = None
    if draws.importance is not None:
        est, info = draws.importance.estimate(px, opts.confidence)
        details["estimate_importance"] = info
        if opts.estimator == "importance":
            chosen = (est.exposure, est.ci, "estimate:importance")
    if draws.uniform is not None:
        shared = draws.uniform
        samp, k = sampling_estimate(px, shared.scores, size, opts.confidence, engine.TIE_TOLERANCE)
        details.update(
            {
                "samples": len(shared.scores),
                "samples_at_or_below": k,
                "estimate_sampling": {"exposure": samp.exposure, "ci": list(samp.ci)},
            }
        )
        sk = shared.skewnorm
        if isinstance(sk, str):
            point = None
            details["estimate_skewnorm"] = {"error": sk}
        else:
            point = float(sk["point"][i])
            lo, hi = sk["ci"][i]
            details["estimate_skewnorm"] = {
                "exposure": point,
                "ci_bootstrap": [min(lo, point), max(hi, point)],
                "fit": sk["fit"],
            }
            if sk["fit"].get("degenerate"):
                details["estimate_skewnorm"]["degenerate"] = (
                    f"the samples' skewness {sk['fit']['sample_skewness']:.3f} exceeds the largest a skew-normal "
                    f"can have ({SKEWNORM_MAX_SKEWNESS:.4f}): the fit is degenerate and its figure is not used"
                )
        if opts.estimator == "uniform":
            chosen = (samp.exposure, samp.ci, "estimate:sampling")
        elif opts.estimator == "skewnorm":
            degenerate = not isinstance(sk, str) and bool(sk["fit"].get("degenerate"))
            chosen = combine_estimates(samp, k, point, degenerate)
    if chosen is None:
        raise AuditError(f"estimator {opts.estimator!r}: its draws were not made")  # a bug, not an input
    return chosen[0], chosen[1], chosen[2], details


def _estimated(
    c: Canary,
    fmt: Format,
    px: float,
    i: int,
    draws: FormatDraws,
    bounds: tuple[int, int] | None,
    opts: MeasureOptions,
    steps: int,
    seconds: float,
) -> CanaryResult:
    size = fmt.space_size
    emax = log2_int(size)
    exposure, ci, how, details = _estimate(px, i, draws, size, opts)
    if bounds is not None:
        # The pruned walk proved lo <= rank <= hi: the estimate must sit inside that.
        e_lo, e_hi = exposure_from_rank(bounds[1], size), exposure_from_rank(bounds[0], size)
        exposure = min(max(exposure, e_lo), e_hi)
        ci = (min(max(ci[0], e_lo), e_hi), min(max(ci[1], e_lo), e_hi))
        how = "pruned-bounds+" + how
    return _result(
        c,
        fmt,
        px,
        rank=None,
        rank_bounds=bounds,
        exposure=float(min(max(exposure, 0.0), emax)),
        method=how,
        model_steps=steps + draws.steps,
        seconds=seconds + draws.seconds,
        exposure_ci=(float(ci[0]), float(ci[1])),
        details=details,
    )


__all__ = [
    "DEFAULT_MAX_STEPS",
    "DEFAULT_SAMPLES",
    "ESTIMATORS",
    "METHODS",
    "PREFER",
    "CanaryResult",
    "MeasureOptions",
    "Plan",
    "measure",
]
