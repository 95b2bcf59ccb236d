"""torchrun scaling on this machine: enumeration of a 10^6 format and DDP training, at world
size 1 and 2 (one thread per process), side by side with the speedup and scaling efficiency.

    python benchmarks/distributed.py [--world 2] [--hidden 128] [--train-chars 1000000] [--runs 3] [--baseline]

Each configuration runs the real command (``exposure-audit measure --method enumerate`` and
``exposure-audit train``), under ``torchrun`` for world sizes above 1. The times are the
command's own (from its JSON report and metrics), so process start-up and model loading are
left out; the wall time of each launch is printed beside them. Nothing is asserted: the figures
are printed for docs/distributed.md. It also checks that the reports agree across world sizes.

The *ceiling* line says what the machine itself allows: ``--world`` independent single-process
runs of the same command at once (no torchrun, no communication). Where cores slow each other
down (a shared memory bus, a shared clock budget, a busy host under a virtual machine), no split
of the work can beat ``world x (time alone) / (mean time together)``.

    python benchmarks/distributed.py --tiny   # a 1x8 model, a {d:3} format, 5,000 training characters
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BASELINE = {"EXPOSURE_AUDIT_ALLREDUCE": "backend", "EXPOSURE_AUDIT_MALLOC": "default"}
SETTINGS: dict[str, str] = {}  # the environment of the configuration being measured


def launch(world: int, args: list[str], cwd: Path) -> float:
    """Run one command at ``world`` ranks (torchrun above 1); its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **SETTINGS}
    if world == 1:
        cmd = [sys.executable, "-m", "exposure_audit", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "exposure_audit", *args]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({' '.join(args[:1])} at world size {world}):\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def launch_together(args: list[list[str]], cwd: Path) -> None:
    """Run several world-size-1 commands at once, as independent processes (no torchrun)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **SETTINGS}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "exposure_audit", *a],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for a in args
    ]
    for a, p in zip(args, procs):
        _, err = p.communicate()
        if p.returncode != 0:
            sys.exit(f"failed ({a[0]}, {len(args)} independent processes):\n{err.decode()[-2000:]}")


def ceiling(root: Path, world: int, hidden: int, layers: int) -> dict:
    """What the machine allows: ``world`` independent single-process runs of the same command at
    once. Each does the whole job, so a perfect split of one job over ``world`` ranks would take
    their mean time / ``world``; the ceiling on the speedup is ``world x alone / mean``."""
    enum = [_enumerate_args(root / f"alone-enum-{i}.json") for i in range(world)]
    launch_together(enum, root)
    e = [json.loads((root / f"alone-enum-{i}.json").read_text())["canaries"][0]["seconds"] for i in range(world)]
    train = [_train_args(root / f"alone-train-{i}", hidden, layers) for i in range(world)]
    launch_together(train, root)
    t = [
        json.loads((root / f"alone-train-{i}" / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]
        for i in range(world)
    ]
    return {"enum": sum(e) / world, "train": sum(t) / world}


def setup(root: Path, hidden: int, chars: int, fmt: str = "pin {d:6}", layers: int = 2) -> None:
    """A model of the chosen size (random weights: enumeration costs the same whatever they are),
    a manifest with a {d:6} format, and a synthetic training corpus."""
    import torch

    from exposure_audit.cli import main
    from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary, save_checkpoint

    rng = random.Random(0)
    words = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words", "every", "day", "pin"]
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        lines.append(line)
        size += len(line) + 1
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    argv = ["insert", "--corpus", str(root / "corpus.txt"), "--out", str(root / "data"), "--format", fmt]
    assert main([*argv, "--schedule", "0,1", "--per-count", "2", "-q"]) == 0
    torch.manual_seed(0)
    vocab = Vocabulary.from_chars(set("".join(lines)) | set("0123456789\n"))
    model = CharLSTM(vocab, CharLSTMConfig(embedding=16, hidden=hidden, layers=layers))
    (root / "threads.yaml").write_text("train: {threads: 1}\n")
    (root / "model").mkdir()
    save_checkpoint(model.eval(), root / "model", {})


def _enumerate_args(out: Path) -> list[str]:
    args = ["measure", "--model", "model", "--canaries", "data/canaries.json", "--any-model"]
    return [*args, "--method", "enumerate", "--json", str(out), "-q", "--force"]


def _train_args(out: Path, hidden: int, layers: int) -> list[str]:
    args = ["train", "--data", "data", "--out", str(out), "--config", "threads.yaml", "--hidden", str(hidden)]
    args += ["--embedding", "16", "--layers", str(layers), "--epochs", "1", "--seq-len", "100", "--batch-size", "64"]
    return [*args, "-q", "--force"]


def enumerate_at(world: int, root: Path) -> tuple[float, float, dict]:
    out = root / f"enum-{world}.json"
    wall = launch(world, _enumerate_args(out), root)
    report = json.loads(out.read_text())
    return report["canaries"][0]["seconds"], wall, report


def train_at(world: int, root: Path, hidden: int, layers: int = 2) -> tuple[float, float, int, dict]:
    out = root / f"train-{world}"
    wall = launch(world, _train_args(out, hidden, layers), root)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return last["seconds"], wall, last["step"], last


def compare(root: Path, world: int, hidden: int, layers: int) -> dict:
    """One run of every configuration at world size 1 and ``world``."""
    e1, w1, r1 = enumerate_at(1, root)
    eN, wN, rN = enumerate_at(world, root)
    same = [(c["rank"], c["exposure"]) for c in r1["canaries"]] == [
        (c["rank"], c["exposure"]) for c in rN["canaries"]
    ] and r1["table"] == rN["table"]
    t1, tw1, st1, m1 = train_at(1, root, hidden, layers)
    tN, twN, stN, mN = train_at(world, root, hidden, layers)
    return {
        "enum": (e1, eN, r1["canaries"][0]["model_steps"], same, w1, wN),
        "train": (t1, tN, st1, m1["valid_bpc"], mN["valid_bpc"], tw1, twN),
        "ceiling": ceiling(root, world, hidden, layers),
    }


def table(runs: list[tuple[str, dict]], world: int, fmt: str) -> None:
    head = f"{'':40}{'world 1':>12}{'world ' + str(world):>12}{'speedup':>10}{'efficiency':>12}"
    print(head)
    print("-" * len(head))

    def row(name: str, one: float, many: float, unit: str, higher_better: bool) -> None:
        speedup = many / one if higher_better else one / many
        print(f"{name:40}{one:>10.1f}{unit:>2}{many:>10.1f}{unit:>2}{speedup:>9.2f}x{speedup / world:>11.0%}")

    for label, r in runs:
        e1, eN, steps, _, _, _ = r["enum"]
        t1, tN, st, _, _, _, _ = r["train"]
        tokens = st * 64 * 100  # steps x global batch x window
        row(f"{label}enumerate {fmt}: seconds", e1, eN, " s", False)
        row("  model steps per second (k)", steps / e1 / 1e3, steps / eN / 1e3, "  ", True)
        row(f"{label}train (DDP): seconds, 1 epoch", t1, tN, " s", False)
        row("  tokens per second (k)", tokens / t1 / 1e3, tokens / tN / 1e3, "  ", True)
    for label, r in runs:
        e1, t1, c = r["enum"][0], r["train"][0], r["ceiling"]
        print(
            f"\n{label}ceiling: {world} independent world-1 runs at once took {c['enum']:.1f} s (enumerate) and"
            f" {c['train']:.1f} s (train) on average, so a perfect split allows {world * e1 / c['enum']:.2f}x"
            f" and {world * t1 / c['train']:.2f}x"
        )
    for label, r in runs:
        _, _, steps, same, w1, wN = r["enum"]
        _, _, st, v1, vN, tw1, twN = r["train"]
        print(
            f"\n{label}enumeration: {steps:,} model steps; reports identical across world sizes: {'yes' if same else 'NO'}"
        )
        print(
            f"{label}training: {st} steps of 64 x 100 tokens; validation {v1:.6f} (world 1) vs {vN:.6f} (world {world}) bits/char"
        )
        print(
            f"{label}wall time of each launch (start-up included): enumerate {w1:.1f} s / {wN:.1f} s, train {tw1:.1f} s / {twN:.1f} s"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2, help="the world size compared with 1")
    ap.add_argument("--hidden", type=int, default=128, help="LSTM units per layer (2 layers)")
    ap.add_argument("--train-chars", type=int, default=1_000_000, help="characters of the training corpus")
    ap.add_argument("--runs", type=int, default=1, help="repeat the comparison this many times")
    ap.add_argument(
        "--baseline", action="store_true", help="also run with gloo's all-reduce and glibc's malloc defaults"
    )
    ap.add_argument("--tiny", action="store_true", help="a 1x8 LSTM, 'pin {d:3}', 5,000 characters, world 2")
    a = ap.parse_args(argv)
    fmt, layers = "pin {d:6}", 2
    if a.tiny:
        a.world, a.hidden, a.train_chars, fmt, layers = 2, 8, 5_000, "pin {d:3}", 1
    with tempfile.TemporaryDirectory(prefix="exposure-audit-dist-") as tmp:
        root = Path(tmp)
        setup(root, a.hidden, a.train_chars, fmt, layers)
        print(f"one thread per process; {os.cpu_count()} CPU cores; char-LSTM {layers}x{a.hidden}")
        for k in range(a.runs):
            runs = []
            for label, env in (("", {}), *((("baseline: ", BASELINE),) if a.baseline else ())):
                SETTINGS.clear()
                SETTINGS.update(env)
                runs.append((label, compare(root, a.world, a.hidden, layers)))
            print(
                f"\nrun {k + 1} of {a.runs}"
                + (" (baseline: " + ", ".join(f"{k}={v}" for k, v in BASELINE.items()) + ")" if a.baseline else "")
            )
            table(runs, a.world, fmt)


if __name__ == "__main__":
    main()
