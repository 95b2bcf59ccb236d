"""The table of docs/experiments.md's dp-audit finding (issue #25), from dp-audit output folders.

    python benchmarks/dp_audit_table.py runs/dp-audit/newtoken-eps8 runs/dp-audit/newtoken-eps4 ...

For each run: the design, the claim (per window, or the group's), every bound with the fraction
of the claim it certifies, TPR at 1% and 0.1% FPR with their Clopper-Pearson intervals, and
whether the run is flagged (a bound above the claim). Reads only ``dp_audit.json``; prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BOUNDS = (
    ("one_run", "Steinke"),
    ("threshold", "CP thresh."),
    ("fdp_eps_delta", "f-DP (e,d)"),
    ("fdp_gaussian", "f-DP GDP*"),
)


def row(folder: Path) -> str:
    r = json.loads((folder / "dp_audit.json").read_text())
    c, b, d = r["claim"], r["bounds"], r.get("design") or {}
    claim = c["epsilon"]
    mode = "broken" if c.get("broken_no_noise") else ("DP-SGD" if claim is not None else "no DP")
    head = f"{folder.name:26} {d.get('canary', 'random'):10} {mode:7}"
    head += f" {'-' if claim is None else format(claim, '.2f'):>7} ({c['group_size']} win)"
    cells = []
    for key, _ in BOUNDS:
        eps = (b.get(key) or {}).get("eps")
        if eps is None:
            cells.append(f"{'-':>16}")
        elif claim:
            cells.append(f"{eps:7.3f} ({eps / claim:5.1%})")
        else:
            cells.append(f"{eps:7.3f} {'':8}")
    tprs = [f"{p['tpr']:.3f} [{p['tpr_interval'][0]:.3f}, {p['tpr_interval'][1]:.3f}]" for p in b["tpr_at_fpr"]]
    flag = "FLAGGED" if r["violated"] else "-"
    return f"{head}  {'  '.join(cells)}  {'  '.join(tprs)}  {flag}"


def main(argv: list[str]) -> None:
    names = "  ".join(f"{n:>16}" for _, n in BOUNDS)
    print(
        f"{'run':26} {'canaries':10} {'mode':7} {'claim':>7} {'':6}  {names}  TPR@1%FPR [CI]  TPR@0.1%FPR [CI]  verdict"
    )
    for a in argv:
        print(row(Path(a)))
    print("(* GDP: the epsilon at delta of the largest rejected mu; assumes a Gaussian trade-off curve)")


if __name__ == "__main__":
    main(sys.argv[1:])
