"""Estimator benchmark (#13): importance sampling vs uniform sampling vs the skew-normal, against
exact exposures, and ``auto``'s planner against the pre-#13 policy.

Run on the model of a default audit (`make demo` writes one under runs/):

    nice -n 10 .venv/bin/python benchmarks/estimators.py --audit runs/audit-YYYYmmdd-HHMMSS

(1) Exact ranks: 'the random number is {d:6}' by enumeration (every candidate's score);
    'the random number is {d:9}' by one pruned walk whose bound is the score of rank about
    ``--rank-limit`` (every candidate at or under it is scored exactly, so every threshold at or
    under it has an exact rank; lower exposures are out of reach and say so).
(2) Targets: candidates at exact exposures from 2 bits (or the rank limit) up to log2|R|, the
    thresholds being real candidates' scores. Per estimator and exposure band: mean and max
    |error| in bits and the share of 90% intervals that cover the exact exposure, over
    ``--repeats`` independent sample sets of ``--samples`` draws.
(3) ``auto`` (prefer exact and fast) against the pre-#13 policy (enumerate if the tree fits,
    else the skew-normal estimate and a pruned walk where 25 steps per estimated unit of rank fit
    the budget) on both formats and a 10^7 two-hole format: total steps, seconds, exact figures.

Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/estimators.py --tiny   # seconds: 10^3 / 10^4 / 10^4 formats, a tiny audit

``--tiny`` makes its own tiny audit (benchmarks/_tiny.py) unless ``--audit`` is given.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import best_first
from exposure_audit.exposure.importance import Proposal, importance_samples
from exposure_audit.exposure.math import combine_estimates, exposure_from_rank, fit_skewnorm, sampling_estimate
from exposure_audit.exposure.measure import measure
from exposure_audit.models import Scorer, load_checkpoint

SIX = "the random number is {d:6}"
NINE = "the random number is {d:9}"
TWO_HOLES = "the random number is {d:3} {d:4}"
OLD_STEPS_PER_RANK = 25  # the pre-#13 auto's constant
# --tiny: the same three roles on spaces a tiny model walks in well under a second (the 10^4 one
# is the tiny audit's format, so its canaries are the audit's)
TINY = ("the random number is {d:3}", "the random number is {d:4}", "the random number is {d:2} {d:2}")


def exact_scores(scorer: Scorer, cf, rank_limit: int | None, cache: Path | None) -> tuple[np.ndarray, float]:
    """Sorted scores of every candidate (rank_limit None), or of every candidate at or under the
    score of rank ~rank_limit (found from uniform samples, then walked exactly). ``cache``: a
    folder keeping them between runs (keyed by the model's weights and the format)."""
    import hashlib

    model_id = hashlib.sha256(repr(sorted(cf.model.describe().items())).encode()).hexdigest()[:16]
    key = f"{model_id}-{cf.fmt.space_size}-{rank_limit}"
    if cache is not None and (cache / f"{key}.npz").exists():
        z = np.load(cache / f"{key}.npz")
        return z["order"], float(z["bound"])
    got: list[np.ndarray] = []
    bound = None
    if rank_limit is not None:
        fmt = cf.fmt
        rng = random.Random(12345)
        probe = engine.score_secrets(scorer, cf, fmt.sample(rng, 20_000, distinct=False))
        bound = float(np.quantile(probe, rank_limit / fmt.space_size))
    engine.walk(scorer, cf, lambda c, i: got.append(c.copy()), bound=bound)
    out = np.sort(np.concatenate(got))
    bound = math.inf if bound is None else bound
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / f"{key}.npz", order=out, bound=bound)
    return out, bound


def targets_for(order: np.ndarray, size: int, bound: float) -> tuple[np.ndarray, np.ndarray]:
    emax = math.log2(size)
    lo = 2.0 if math.isinf(bound) else emax - math.log2(len(order)) + 0.3
    grid = list(np.arange(lo, emax - 1.0, 0.5)) + [emax - 1.0, emax]
    ts, ex = [], []
    for e in grid:
        rank = max(1, round(size * 2.0**-e))
        if rank > len(order):
            continue
        t = float(order[rank - 1])
        if t > bound:
            continue
        r = int(np.searchsorted(order, t + engine.TIE_TOLERANCE, side="right"))
        ts.append(t)
        ex.append(exposure_from_rank(r, size))
    return np.array(ts), np.array(ex)


def accuracy(scorer: Scorer, name: str, fmt: Format, order: np.ndarray, bound: float, args) -> None:
    cf = engine.compile_format(scorer, fmt)
    size = fmt.space_size
    ts, ex = targets_for(order, size, bound)
    emax = math.log2(size)
    print(
        f"== {name}: {fmt.source!r}, |R| = {size:.0e}, {len(ts)} targets at exact exposure {ex.min():.2f}-{ex.max():.2f} bits"
    )
    rows = {k: ([], []) for k in ("importance", "uniform", "skewnorm")}
    is_steps = []
    t0 = time.perf_counter()
    for rep in range(args.repeats):
        s = importance_samples(
            scorer, cf, args.samples, seed=1000 + rep, proposal=Proposal(siblings=not args.no_siblings)
        )
        is_steps.append(s.steps)
        rng = random.Random(2000 + rep)
        if math.isinf(bound):  # every candidate's score is known: a uniform draw is a uniform index
            uni = order[[rng.randrange(size) for _ in range(args.samples)]]
        else:
            uni = engine.score_secrets(scorer, cf, fmt.sample(rng, args.samples, distinct=False))
        fit = fit_skewnorm(uni, with_ks=False)
        for t, e in zip(ts, ex):
            est, _ = s.estimate(float(t), 0.9)
            rows["importance"][0].append(est.exposure - e)
            rows["importance"][1].append(est.ci[0] <= e <= est.ci[1])
            samp, k = sampling_estimate(float(t), uni, size, 0.9, engine.TIE_TOLERANCE)
            rows["uniform"][0].append(samp.exposure - e)
            rows["uniform"][1].append(samp.ci[0] <= e <= samp.ci[1])
            point, ci, _ = combine_estimates(samp, k, float(fit.exposure(float(t), size)))
            rows["skewnorm"][0].append(point - e)
            rows["skewnorm"][1].append(ci[0] <= e <= ci[1])
    secs = time.perf_counter() - t0
    line = len(fmt.render(fmt.fill(0))) + 1
    print(
        f"   importance draws: {np.mean(is_steps):,.0f} model steps per set of {args.samples} "
        f"(target <= {args.samples:,} x {line} = {args.samples * line:,}); {args.repeats} sets + uniform sets in {secs:.0f} s"
    )
    exact_all = np.tile(ex, args.repeats)
    inner = [e for e in (6, 10, 14, 18, 22, 26) if ex.min() < e < emax - 1]
    edges = [ex.min() - 1e-9, *inner, emax - 1 + 1e-9, emax + 1e-9]
    bands = list(pairwise(edges))
    print(f"   {'band (exact bits)':<18} {'n':>4}  " + "  ".join(f"{k:>27}" for k in rows))
    print(f"   {'':<18} {'':>4}  " + "  ".join(f"{'mean|err| max|err| cover':>27}" for _ in rows))
    for a, b in bands:
        sel = (exact_all >= a) & (exact_all < b)
        if not sel.any():
            continue
        cells = []
        for k, (err, cov) in rows.items():
            err, cov = np.abs(np.array(err)), np.array(cov)
            cells.append(f"{err[sel].mean():9.2f} {err[sel].max():8.2f} {cov[sel].mean():7.0%}")
        label = f"{max(a, ex.min()):.1f}-{min(b, emax):.1f}"
        print(f"   {label:<18} {int(sel.sum() / args.repeats):>4}  " + "  ".join(f"{c:>27}" for c in cells))
    target_sel = (exact_all >= 2) & (exact_all <= emax - 1 + 1e-9)
    for k, (err, cov) in rows.items():
        err, cov = np.abs(np.array(err)), np.array(cov)
        print(
            f"   {k:<10} all targets 2..log2|R|-1: mean |error| {err[target_sel].mean():.2f}, "
            f"max {err[target_sel].max():.2f} bits; 90% coverage {cov[target_sel].mean():.1%}; "
            f"at log2|R| (rank 1): max {err[~target_sel].max() if (~target_sel).any() else float('nan'):.2f}"
        )


class Canary:
    def __init__(self, fmt: str, secret: str, insertions: int = 0) -> None:
        self.format, self.secret, self.insertions = fmt, secret, insertions


def canaries_for(model, source: str, manifest: Manifest, n: int = 15) -> list[Canary]:
    """The audit's canaries of the format where it has them; else 5 of the model's top candidates
    (best-first: memorized-looking) and random secrets, as a planted set would look."""
    own = [Canary(c.format, c.secret, c.insertions) for c in manifest.canaries if c.format == source]
    if own:
        return own
    fmt = Format.parse(source)
    top = best_first(model, fmt, top=40, max_steps=2_000_000)
    picks = [top.candidates[i].secret for i in (0, 2, 6, 15, 39) if i < len(top.candidates)]
    rng = random.Random(7)
    return [Canary(source, s, 8) for s in picks] + [
        Canary(source, s) for s in fmt.sample(rng, n - len(picks), distinct=True)
    ]


def old_auto(model, canaries: list[Canary], max_steps: int, samples: int) -> tuple[int, int]:
    """The pre-#13 auto: enumerate if the tree fits, else estimate (skew-normal policy) and walk
    where 25 x the estimated rank fits the budget. Returns (model steps, exact figures)."""
    scorer = Scorer(model)
    fmt = Format.parse(canaries[0].format)
    cf = engine.compile_format(scorer, fmt, canaries=[c.secret for c in canaries])
    if cf.tree_steps() <= max_steps:
        res = measure(scorer, canaries, method="enumerate", max_steps=max_steps)
        return scorer.steps, sum(r.rank is not None for r in res)
    res = measure(scorer, canaries, method="estimate", estimator="skewnorm", samples=samples, bootstrap=0)
    exact = 0
    for c, r in zip(canaries, res):
        if OLD_STEPS_PER_RANK * fmt.space_size * 2.0**-r.exposure <= max_steps:
            (px,) = engine.score_secrets(scorer, cf, [c.secret])
            exact += engine.pruned_rank(scorer, cf, float(px), max_steps=max_steps).rank is not None
    return scorer.steps, exact


def exact_choice(p: dict) -> tuple[str, int]:
    """What prefer=exact chooses from the predictions of one planning pass (the rule of measure._plan)."""
    pred = p["predicted"]
    if "enumerate" in pred and (p["walkable"] < p["canaries"] or pred["enumerate"] <= pred["pruned+estimate"]):
        return "enumerate", pred["enumerate"]
    return ("pruned+estimate" if p["walkable"] else "estimate"), pred["pruned+estimate"]


def auto_comparison(model, manifest: Manifest, args, formats: tuple[str, ...] = (SIX, NINE, TWO_HOLES)) -> None:
    print(f"== auto vs the pre-#13 policy (--max-steps {args.max_steps:,}, {args.samples} samples)")
    print(f"   plans predicted over {args.run_limit:,} model steps are not run here (CPU time): marked 'not run'")
    print(f"   {'format':<36} {'policy':<11} {'steps':>12} {'seconds':>8}  exact/possible  plan")
    for source in formats:
        canaries = canaries_for(model, source, manifest)
        fmt = Format.parse(source)
        # auto, prefer fast: always run (it is the cheap one); its plan record also holds every
        # prediction prefer=exact weighs
        scorer = Scorer(model)
        plans: dict = {}
        t0 = time.perf_counter()
        res = measure(
            scorer,
            canaries,
            method="auto",
            max_steps=args.max_steps,
            samples=args.samples,
            bootstrap=0,
            prefer="fast",
            plans=plans,
        )
        p = plans[source]
        secs = time.perf_counter() - t0
        fast_pred = p["predicted"].get("fast", p["predicted"].get(p["chosen"], 0))
        rows = [
            (
                "auto-fast",
                scorer.steps,
                f"{secs:.1f}",
                sum(r.rank is not None for r in res),
                f"{p['chosen']}: predicted {fast_pred:,} steps, actual {p['actual_steps']:,}",
            )
        ]
        # auto, prefer exact
        choice, pred = exact_choice(p)
        if pred <= args.run_limit:
            scorer = Scorer(model)
            plans = {}
            t0 = time.perf_counter()
            res = measure(
                scorer,
                canaries,
                method="auto",
                max_steps=args.max_steps,
                samples=args.samples,
                bootstrap=0,
                prefer="exact",
                plans=plans,
            )
            q = plans[source]
            rows.append(
                (
                    "auto-exact",
                    scorer.steps,
                    f"{time.perf_counter() - t0:.1f}",
                    sum(r.rank is not None for r in res),
                    f"{q['chosen']}: predicted {pred:,} steps, actual {q['actual_steps']:,}",
                )
            )
        else:
            rows.append(("auto-exact", pred, "not run", p["exact_possible"], f"{choice}: predicted {pred:,} steps"))
        # the pre-#13 policy
        scorer = Scorer(model)
        cf = engine.compile_format(scorer, fmt, canaries=[c.secret for c in canaries])
        tree = cf.tree_steps()
        if tree <= args.max_steps and tree > args.run_limit:
            rows.append(("old", tree, "not run", len(canaries), f"enumerate: {tree:,} steps (exact count)"))
        else:
            t0 = time.perf_counter()
            steps, exact = old_auto(model, canaries, args.max_steps, args.samples)
            rows.append(("old", steps, f"{time.perf_counter() - t0:.1f}", exact, "as run"))
        for policy, steps, secs, exact, txt in rows:
            print(f"   {source:<36} {policy:<11} {steps:>12,} {secs:>8}  {exact:>5}/{p['exact_possible']:<8}  {txt}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audit", type=Path, help="an audit output folder (model/, data/canaries.json)")
    ap.add_argument("--repeats", type=int, default=20, help="independent sample sets")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--rank-limit", type=int, default=1_000_000, help="exact ranks of the 10^9 format up to this")
    ap.add_argument("--max-steps", type=int, default=20_000_000)
    ap.add_argument("--run-limit", type=int, default=20_000_000, help="do not run plans predicted above this")
    ap.add_argument("--cache", type=Path, default=None, help="keep exact scores here between runs")
    ap.add_argument("--skip", choices=["accuracy", "auto"], default=None)
    ap.add_argument(
        "--no-siblings", action="store_true", help="importance sampling without the last level counted exactly"
    )
    ap.add_argument("--tiny", action="store_true", help="seconds: small formats and sample sets, a tiny audit")
    args = ap.parse_args(argv)
    if args.audit is None and not args.tiny:
        ap.error("give --audit DIR (or --tiny)")
    formats = (SIX, NINE, TWO_HOLES)
    if args.tiny:
        formats = TINY
        args.repeats, args.samples = min(args.repeats, 2), min(args.samples, 300)
        args.rank_limit = min(args.rank_limit, 500)
        args.max_steps, args.run_limit = min(args.max_steps, 50_000), min(args.run_limit, 50_000)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.audit is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import _tiny

            args.audit = _tiny.audit(Path(tmp))
        run(args, formats)


def run(args, formats: tuple[str, str, str]) -> None:
    """The accuracy tables on the first two formats (the second up to ``--rank-limit``), then
    ``auto`` against the pre-#13 policy on all three."""
    model, _ = load_checkpoint(args.audit / "model")
    manifest = Manifest.read(args.audit / "data" / "canaries.json")
    scorer = Scorer(model)
    if args.skip != "accuracy":
        for source, limit in ((formats[0], None), (formats[1], args.rank_limit)):
            fmt = Format.parse(source)
            name = f"10^{len(str(fmt.space_size)) - 1}"
            t0 = time.perf_counter()
            s0 = scorer.steps
            order, bound = exact_scores(scorer, engine.compile_format(scorer, fmt), limit, args.cache)
            how = "enumeration" if limit is None else f"a pruned walk to rank {len(order):,}"
            print(
                f"== exact scores of {source!r} by {how}: {scorer.steps - s0:,} steps, {time.perf_counter() - t0:.0f} s"
            )
            accuracy(scorer, name, fmt, order, bound, args)
    if args.skip != "auto":
        auto_comparison(model, manifest, args, formats)


if __name__ == "__main__":
    main()
