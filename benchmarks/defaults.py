"""Does a default `measure` finish? Wall time, peak memory and exact count of `exposure-audit
measure` with no options, on the canary audits of configs/ and on the scenario of issue #24.

    .venv/bin/python benchmarks/defaults.py [--configs default card transformer] [--no-scenario]
                                            [--exact] [--workdir /tmp]

For each config, its own data and model: `exposure-audit insert --config C` and `train --config
C` (the config's corpus, canaries, model and training), then `exposure-audit measure` with no
options at all (what a new user runs: `--prefer balanced`, the default exact budget) in a child
process, timed with the kernel's rusage. The scenario is issue #24's new user: a 6-epoch
char-LSTM (120,000 characters per epoch) with 30 canaries of two formats (10^7 and 36^5
candidates), where the default before `balanced` (`--prefer exact`) took minutes proving exact ranks
of weakly memorized canaries. `--exact` also times `--prefer exact` on the scenario (about 3
minutes here), for the side-by-side ratio and the estimates' error against the exact ranks.

Prints one line per audit: canaries, how many came out exact, seconds of measure, peak RSS, and
the model steps per second of its exact pruned walks (from the report's per-canary figures). Not
a test; run it under the heavy-work lock (training takes minutes per config).

    .venv/bin/python benchmarks/defaults.py --tiny   # seconds: a 1-epoch 1x16 LSTM on a tiny corpus
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from scan import run_child

ROOT = Path(__file__).resolve().parents[1]
EA = [sys.executable, "-m", "exposure_audit"]
SCENARIO = {
    "insert": ["--format", "the pin is {d:7}", "--format", "the code is {w:5}", "--schedule", "0,1,2,4,8"]
    + ["--per-count", "3"],
    "train": ["--epochs", "6", "--max-chars", "120000"],
}
TINY = {
    "insert": ["--format", "pin {d:4}", "--schedule", "0,1,8", "--per-count", "1"],
    "train": ["--epochs", "1", "--hidden", "16", "--layers", "1", "--embedding", "8", "--max-chars", "4000"],
}


def _check(argv: list[str], cwd: Path) -> float:
    wall, _, rc = run_child(argv, subprocess.DEVNULL, str(cwd))
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(argv)}")
    return wall


def measure_once(work: Path, name: str, extra: list[str]) -> dict:
    """Time one `measure` (no options but ``extra``) on ``work``'s model; its report and figures."""
    out = work / f"{name}.json"
    argv = [*EA, "measure", "--model", str(work / "model"), "--canaries", str(work / "data" / "canaries.json")]
    argv += ["--json", str(out), "-q", "--force", *extra]
    wall, rss, rc = run_child(argv, subprocess.DEVNULL, str(work))
    if rc not in (0, 1):  # 1: a gate (none is set here, but a config may set fail_above)
        raise SystemExit(f"measure failed ({rc}) on {work}")
    report = json.loads(out.read_text())
    canaries = report["canaries"]
    return {
        "seconds": wall,
        "rss": rss,
        "canaries": len(canaries),
        "exact": sum(c["rank"] is not None for c in canaries),
        "formats": len(report["model"].get("plan") or {}),
        "walk_rate": _walk_rate(canaries),
        "exposures": {(c["format"], c["secret"]): (c["exposure"], c["rank"] is not None) for c in canaries},
    }


def _walk_rate(canaries: list[dict]) -> float | None:
    """Model steps per second of the exact pruned walks (None where none ran)."""
    walks = [c for c in canaries if c["method"] == "pruned"]
    seconds = sum(c["seconds"] for c in walks)
    return sum(c["model_steps"] for c in walks) / seconds if walks and seconds > 0 else None


def prepare(work: Path, config: Path | None, spec: dict | None, corpus: Path | None) -> float:
    """Insert and train into ``work``; the training's seconds."""
    work.mkdir(parents=True, exist_ok=True)
    ins = [*EA, "insert", "--out", str(work / "data"), "-q", "--force"]
    tr = [*EA, "train", "--data", str(work / "data"), "--out", str(work / "model"), "-q", "--force"]
    if config is not None:
        ins += ["--config", str(config)]
        tr += ["--config", str(config)]
    if spec is not None:
        ins += spec["insert"]
        tr += spec["train"]
    if corpus is not None:
        ins += ["--corpus", str(corpus)]
    _check(ins, work)
    return _check(tr, work)


def tiny_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = "the model reads text and learns a line of words every day".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)) + "\n")
    return path


def row(name: str, train_s: float, m: dict) -> str:
    rate = "-" if m["walk_rate"] is None else f"{m['walk_rate']:,.0f}"
    return (
        f"{name:<22} {m['formats']:>7} {m['canaries']:>8} {m['exact']:>5} {train_s:>9.0f} "
        f"{m['seconds']:>10.1f} {m['rss']:>8.0f} {rate:>13}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=["default", "card", "transformer"])
    ap.add_argument("--no-scenario", action="store_true", help="skip issue #24's scenario")
    ap.add_argument("--exact", action="store_true", help="also time --prefer exact on the scenario")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--tiny", action="store_true", help="a seconds-long run of every code path")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="defaults-") as tmp:
        root = Path(tmp)
        jobs: list[tuple[str, Path | None, dict | None, Path | None]] = []
        if args.tiny:
            jobs.append(("tiny", None, TINY, tiny_corpus(root / "corpus.txt")))
        else:
            jobs += [(f"{c}.yaml", ROOT / "configs" / f"{c}.yaml", None, None) for c in args.configs]
            if not args.no_scenario:
                jobs.append(("issue 24 scenario", None, SCENARIO, None))
        print(
            "measure with no options (prefer balanced, exact budget 2,000,000 steps per format, "
            "fewer where a step costs more than the char-LSTM's)"
        )
        print(
            f"{'audit':<22} {'formats':>7} {'canaries':>8} {'exact':>5} {'train s':>9} {'measure s':>10} {'peak MB':>8} {'walk steps/s':>13}"
        )
        for name, config, spec, corpus in jobs:
            work = root / name.replace(" ", "-")
            train_s = prepare(work, config, spec, corpus)
            m = measure_once(work, "default", [])
            print(row(name, train_s, m), flush=True)
            if args.exact and (spec is SCENARIO or args.tiny):
                e = measure_once(work, "exact", ["--prefer", "exact"])
                print(row("  --prefer exact", train_s, e), flush=True)
                errors = [
                    abs(m["exposures"][k][0] - e["exposures"][k][0])
                    for k in e["exposures"]
                    if e["exposures"][k][1] and not m["exposures"][k][1]
                ]
                worst = max(errors, default=0.0)
                print(
                    f"  default / exact time: {m['seconds'] / e['seconds']:.3f}x; "
                    f"estimated where exact was proven: {len(errors)} canaries, max error {worst:.2f} bits",
                    flush=True,
                )


if __name__ == "__main__":
    main()
