"""The table of docs/experiments.md's dp-audit finding (issue #25), from dp-audit output folders.

    python benchmarks/dp_audit_table.py runs/dp-audit/newtoken-eps8 runs/dp-audit/newtoken-eps4 ...

For each run: the design, the claim (per window, or the group's), every bound with the fraction
of the claim it certifies, TPR at 1% and 0.1% FPR with their Clopper-Pearson intervals, and
whether the run is flagged (a bound above the claim). Reads only ``dp_audit.json``; prints.

    python benchmarks/dp_audit_table.py --tiny    # seconds: runs a tiny dp-audit (no DP) first
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import tempfile
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


TINY = """\
seed: 0
corpus: {corpus}
model: {{hidden: 16, layers: 1, embedding: 8}}
train: {{epochs: 2, batch_size: 64, seq_len: 20, threads: 2}}
audit: {{canaries: 40, format: "pin {{d:6}}"}}
"""


def tiny_run(root: Path) -> Path:
    """A dp-audit of a tiny config (1x16 LSTM, 2 epochs, 40 canaries, no DP) by the CLI."""
    from exposure_audit.cli import main as cli

    rng = random.Random(0)
    words = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words"]
    corpus = root / "corpus.txt"
    corpus.write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(200)) + "\n"
    )
    (root / "tiny.yaml").write_text(TINY.format(corpus=corpus))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli(["dp-audit", str(root / "tiny.yaml"), "--out", str(root / "tiny-nodp"), "-q"])
    if code != 0:
        raise SystemExit(f"the tiny dp-audit failed (exit {code}):\n{printed.getvalue()}")
    return root / "tiny-nodp"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, help="dp-audit output folders")
    ap.add_argument("--tiny", action="store_true", help="run a tiny dp-audit and print its row")
    args = ap.parse_args(argv)
    if not args.folders and not args.tiny:
        ap.error("give dp-audit output folders (or --tiny)")
    with tempfile.TemporaryDirectory() as tmp:
        folders = [*args.folders, *([tiny_run(Path(tmp))] if args.tiny else [])]
        table(folders)


def table(folders: list[Path]) -> None:
    names = "  ".join(f"{n:>16}" for _, n in BOUNDS)
    print(
        f"{'run':26} {'canaries':10} {'mode':7} {'claim':>7} {'':6}  {names}  TPR@1%FPR [CI]  TPR@0.1%FPR [CI]  verdict"
    )
    for folder in folders:
        print(row(folder))
    print("(* GDP: the epsilon at delta of the largest rejected mu; assumes a Gaussian trade-off curve)")


if __name__ == "__main__":
    main()
