"""Exposure engine benchmark: bare step throughput, brute force vs enumeration, pruned exact
rank of a memorized 9-digit canary, and estimator accuracy against exact exposures.

Run on the model of a default audit (`make demo` writes one under runs/):

    .venv/bin/python benchmarks/engine.py --audit runs/audit-YYYYmmdd-HHMMSS

Prints side-by-side figures and ratios. Not a test: timings depend on the machine.

    .venv/bin/python benchmarks/engine.py --tiny     # seconds: a tiny audit built here, small formats

``--tiny`` (what tests/test_benchmarks.py runs) makes its own tiny audit (benchmarks/_tiny.py)
unless ``--audit`` is given, and runs every part on a 10^3 format and the audit's 10^4 one.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.exposure import engine
from exposure_audit.exposure.math import combine_estimates, exposure_from_rank, fit_skewnorm, sampling_estimate
from exposure_audit.models import Scorer, load_checkpoint

SIX = "the random number is {d:6}"
TINY_SIX = "the random number is {d:3}"


def bare_throughput(model, batch: int, seconds: float = 3.0) -> float:
    # the model interface takes token ids: the default context's (a newline for the char-LSTM)
    state, _ = model.start(model.context_ids(None))
    state = model.take(state, torch.zeros(batch, dtype=torch.long))
    ids = torch.randint(1, model.vocab_size, (batch,))
    model.step(state, ids)  # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        state, _ = model.step(state, ids)
        n += batch
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audit", type=Path, help="an audit output folder (model/ and data/canaries.json)")
    ap.add_argument(
        "--brute-fraction", type=float, default=1.0, help="brute-force this share of the 10^6 space and scale up"
    )
    ap.add_argument("--repeats", type=int, default=20, help="independent sample sets for estimator coverage")
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--tiny", action="store_true", help="seconds, not minutes: small formats, a tiny audit")
    args = ap.parse_args(argv)
    if args.audit is None and not args.tiny:
        ap.error("give --audit DIR (or --tiny)")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.audit is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import _tiny

            args.audit = _tiny.audit(Path(tmp))
        if args.tiny:
            args.repeats, args.samples = min(args.repeats, 2), min(args.samples, 200)
            run(args, six=TINY_SIX, rank_space=10**4, min_exposure=0.0, bare_seconds=0.2)
        else:
            run(args, six=SIX, rank_space=10**9, min_exposure=20.0, bare_seconds=3.0)


def run(args, *, six: str, rank_space: int, min_exposure: float, bare_seconds: float) -> None:
    """Parts (a)-(d): ``six`` is the enumerated format of (b) and (d); (c) ranks the audit's
    canaries of a ``rank_space`` format reported at ``min_exposure`` bits or more."""
    model, _ = load_checkpoint(args.audit / "model")
    manifest = Manifest.read(args.audit / "data" / "canaries.json")

    fmt = Format.parse(six)
    print("== (a) bare model step throughput (batch 1024)")
    bare = bare_throughput(model, 1024, bare_seconds)
    print(f"   {bare:,.0f} steps/s")

    print(f"== (b) brute force vs prefix-tree enumeration: {six!r}, |R| = 10^{len(str(fmt.space_size)) - 1}")
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    scores = np.empty(fmt.space_size)

    def keep(costs, index):
        scores[index] = costs

    s0, t0 = scorer.steps, time.perf_counter()
    walk = engine.walk(scorer, cf, keep)
    enum_s, enum_steps = time.perf_counter() - t0, scorer.steps - s0
    n_brute = max(1, int(fmt.space_size * args.brute_fraction))
    texts = [fmt.render(fmt.fill(i)) for i in range(n_brute)]
    s0, t0 = scorer.steps, time.perf_counter()
    brute_scores = np.asarray(engine.score(scorer, texts))
    brute_s = (time.perf_counter() - t0) / args.brute_fraction
    brute_steps = int((scorer.steps - s0) / args.brute_fraction)
    agree = np.max(np.abs(brute_scores - scores[:n_brute]))
    scaled = " (scaled from a sample)" if args.brute_fraction < 1 else ""
    print(f"   brute force   {brute_s:8.1f} s  {brute_steps:>12,} steps{scaled}")
    print(
        f"   enumeration   {enum_s:8.1f} s  {enum_steps:>12,} steps   {enum_steps / enum_s:,.0f} steps/s = {enum_steps / enum_s / bare:.0%} of bare"
    )
    print(
        f"   ratio         {brute_s / enum_s:8.1f}x time  {brute_steps / enum_steps:8.1f}x steps; max |score difference| {agree:.2e} bits"
    )
    assert walk.complete

    digits = len(str(rank_space)) - 1
    print(
        f"== (c) pruned exact rank of memorized {digits}-digit canaries (exposure >= {min_exposure:g} in the audit's report)"
    )
    reported = {c["id"]: c["exposure"] for c in json.loads((args.audit / "report.json").read_text())["canaries"]}
    nine = [
        c
        for c in manifest.canaries
        if Format.parse(c.format).space_size == rank_space and reported.get(c.id, 0) >= min_exposure
    ]
    fmt9 = Format.parse(nine[0].format)
    cf9 = engine.compile_format(scorer, fmt9)
    brute9 = engine.brute_force_steps(cf9)
    for c in sorted(nine, key=lambda c: c.insertions):
        (px,) = engine.score_secrets(scorer, cf9, [c.secret])
        s0, t0 = scorer.steps, time.perf_counter()
        pr = engine.pruned_rank(scorer, cf9, float(px), max_steps=20_000_000)
        secs, steps = time.perf_counter() - t0, scorer.steps - s0
        if pr.rank is None:
            print(f"   n={c.insertions:>2}: over budget after {steps:,} steps; rank in {pr.bounds}")
            continue
        e = exposure_from_rank(pr.rank, fmt9.space_size)
        print(
            f"   n={c.insertions:>2}: rank {pr.rank:>6}  exposure {e:5.2f}  {secs:6.2f} s  {steps:>9,} steps  "
            f"brute force would need {brute9:,} steps = {brute9 / max(steps, 1):,.0f}x more"
        )

    print(f"== (d) estimates vs exact exposure, {six!r}, {args.samples} samples, {args.repeats} sample sets")
    order = np.sort(scores)
    targets = []  # canaries at exact exposures from about 2 to 15 bits
    for e in np.linspace(2, min(15.0, math.log2(fmt.space_size) - 1), 27):
        rank = max(1, int(round(fmt.space_size * 2.0**-e)))
        targets.append(float(order[rank - 1]))
    targets = np.array(targets)
    exact = np.array(
        [exposure_from_rank(int(np.sum(scores <= t + engine.TIE_TOLERANCE)), fmt.space_size) for t in targets]
    )
    # pruned == enumeration for every one of these canaries
    s0, t0 = scorer.steps, time.perf_counter()
    for t, ex in zip(targets, exact):
        pr = engine.pruned_rank(scorer, cf, float(t))
        assert exposure_from_rank(pr.rank, fmt.space_size) == ex, (t, pr.rank)
    print(
        f"   pruned rank == enumeration rank for all {len(targets)} canaries (exposure {exact.min():.1f}-{exact.max():.1f} bits); "
        f"{scorer.steps - s0:,} steps, {time.perf_counter() - t0:.0f} s in all"
    )
    errs, covered, errs_sk, errs_samp = [], [], [], []
    rng = np.random.default_rng(0)
    worst = (0.0, 0.0)
    for rep in range(args.repeats):
        idx = rng.integers(0, fmt.space_size, args.samples)
        samp = scores[idx]  # the model's scores of uniformly drawn candidates
        fit = fit_skewnorm(samp)
        for t, ex in zip(targets, exact):
            est, k = sampling_estimate(t, samp, fmt.space_size, 0.9, engine.TIE_TOLERANCE)
            sk = float(fit.exposure(t, fmt.space_size))
            point, ci, _ = combine_estimates(est, k, sk)
            errs.append(point - ex)
            worst = max(worst, (abs(point - ex), ex))
            covered.append(ci[0] <= ex <= ci[1])
            errs_sk.append(sk - ex)
            errs_samp.append(est.exposure - ex)
    errs, errs_sk, errs_samp = map(np.abs, map(np.array, (errs, errs_sk, errs_samp)))
    exact_all = np.tile(exact, args.repeats)
    print(
        f"   as measure reports:  mean |error| {errs.mean():.2f} bits, max {errs.max():.2f} (at exact {worst[1]:.1f} bits), "
        f"90% interval coverage {np.mean(covered):.0%}"
    )
    for lo, hi in ((2, 9), (9, 12), (12, 15.01)):
        sel = (exact_all >= lo) & (exact_all < hi)
        if not sel.any():  # the tiny mode's 10^3 format has no exposures above 10 bits
            continue
        print(
            f"     exact {lo:>2}-{min(hi, 15):>2} bits: mean |error| {errs[sel].mean():.2f}, max {errs[sel].max():.2f}, coverage {np.mean(np.array(covered)[sel]):.0%}"
        )
    print(f"   skew-normal alone:              mean |error| {errs_sk.mean():.2f} bits, max {errs_sk.max():.2f}")
    print(
        f"   sampling alone:                 mean |error| {errs_samp.mean():.2f} bits, max {errs_samp.max():.2f} (capped at log2(m+1) = {math.log2(args.samples + 1):.1f})"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"== peak memory of this process: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
