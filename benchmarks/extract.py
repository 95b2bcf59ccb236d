"""Extraction benchmark: recover planted secrets from a trained model by best-first search.

    .venv/bin/exposure-audit audit configs/card.yaml --out runs/card     # once (~4 min)
    .venv/bin/python benchmarks/extract.py --audit runs/card

For every format in the audit's manifest: best-first search for the top K, with the model
steps and seconds it took, against brute force (|R| x line length steps), and where each
planted canary landed (success rate by insertion count). Not a test: timings vary by machine.

    .venv/bin/python benchmarks/extract.py --tiny    # seconds: a tiny audit built here (benchmarks/_tiny.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import best_first
from exposure_audit.models import Scorer, load_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audit", type=Path)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--tiny", action="store_true", help="top 3 within 5,000 steps; a tiny audit unless --audit")
    args = ap.parse_args(argv)
    if args.audit is None and not args.tiny:
        ap.error("give --audit DIR (or --tiny)")
    if args.tiny:
        args.top, args.max_steps = min(args.top, 3), min(args.max_steps, 5_000)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.audit is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import _tiny

            args.audit = _tiny.audit(Path(tmp))
        run(args)


def run(args) -> None:
    model, _ = load_checkpoint(args.audit / "model")
    manifest = Manifest.read(args.audit / "data" / "canaries.json")
    report_path = args.audit / "report.json"
    exposure = {}
    if report_path.exists():
        exposure = {c["id"]: c for c in json.loads(report_path.read_text())["canaries"]}
    for source in dict.fromkeys(c.format for c in manifest.canaries):
        fmt = Format.parse(source)
        ex = best_first(model, fmt, top=args.top, max_steps=args.max_steps)
        brute = engine.brute_force_steps(engine.compile_format(Scorer(model), fmt))
        print(f"== {source!r}: |R| = {fmt.space_size:.3g}")
        print(
            f"   best-first top {args.top}: {ex.model_steps:,} model steps, {ex.seconds:.1f} s, "
            f"{'proven' if ex.proven else 'NOT proven (budget)'}; brute force: {brute:.3g} steps "
            f"= {brute / ex.model_steps:.3g}x more"
        )
        print(f"   {'canary':<20} {'ins':>3}  {'exposure':>8}  position")
        for c in sorted((c for c in manifest.canaries if c.format == source), key=lambda c: c.insertions):
            pos = ex.position(c.secret)
            e = exposure.get(c.id, {}).get("exposure")
            e_text = f"{e:8.2f}" if e is not None else "       -"
            print(f"   {c.secret:<20} {c.insertions:>3}  {e_text}  {pos if pos else f'not in top {args.top}'}")


if __name__ == "__main__":
    main()
