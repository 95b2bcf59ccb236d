"""Extraction benchmark: recover planted secrets from a trained model by best-first search.

    .venv/bin/exposure-audit audit configs/card.yaml --out runs/card     # once (~4 min)
    .venv/bin/python benchmarks/extract.py --audit runs/card

For every format in the audit's manifest: best-first search for the top K, with the model
steps and seconds it took, against brute force (|R| x line length steps), and where each
planted canary landed (success rate by insertion count). Not a test: timings vary by machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Manifest
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import best_first
from exposure_audit.models import Scorer, load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audit", required=True, type=Path)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=100_000)
    args = ap.parse_args()
    torch.set_num_threads(2)
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
