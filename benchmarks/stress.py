"""torchrun teardown under load: run the commands that run under torchrun (measure, extract,
train, and train --resume after both ranks were SIGKILLed) many times at 2 ranks, while busy
loops keep every core occupied, and count the runs that did not end cleanly.

    python benchmarks/stress.py [--rounds 10] [--load 2] [--world 2]

A clean run exits 0 on every rank and prints nothing on stderr that names an abort
(``terminate called``, ``Aborted``, a signal, ``Traceback``). The figures go in the closing note
of the teardown issue and docs/distributed.md; nothing is asserted.

    python benchmarks/stress.py --tiny   # 1 round at 2 ranks, no busy loops: each command once
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAD = ("terminate called", "Aborted", "core dumped", "Traceback", "signal", "SIGABRT")
TRAIN = ["--hidden", "16", "--layers", "1", "--embedding", "8", "--epochs", "6", "--seq-len", "30"]
TRAIN += ["--batch-size", "8", "--checkpoint-every", "3", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(world: int, args: list[str], cwd: Path) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "exposure_audit"]
    return cmd + [str(a) for a in args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def run(world: int, args: list[str], cwd: Path) -> tuple[bool, str]:
    p = subprocess.run(torchrun(world, args, cwd), cwd=cwd, env=env(), capture_output=True, text=True, timeout=300)
    clean = p.returncode == 0 and not any(b in p.stderr for b in BAD)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error") or any(b in line for b in BAD)]
    return clean, f"rc={p.returncode} {errors[:3]}"


def killed_then_resumed(world: int, data: Path, out: Path, cwd: Path) -> tuple[bool, str]:
    """Train, SIGKILL the whole job once a resumable state exists mid-epoch, then resume."""
    from exposure_audit.files import staging_path

    state = staging_path(out, "train") / "train_state.json"
    job = subprocess.Popen(
        torchrun(world, ["train", "--data", data, "--out", out, *TRAIN], cwd),
        cwd=cwd,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        try:
            pos = json.loads(state.read_text())["position"]
            if pos["step"] >= 9 and pos["batch"] > 0:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    if job.poll() is not None:
        return True, "finished before it could be killed (not counted as a resume)"
    # torchrun starts each rank in a session of its own: kill the ranks, then the launcher
    for pid in children(job.pid):
        os.kill(pid, signal.SIGKILL)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return run(world, ["train", "--resume", out, "-q"], cwd)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def busy() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy-loop processes beside the runs")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="--rounds 1 --load 0 --world 2")
    a = ap.parse_args(argv)
    if a.tiny:
        a.rounds, a.load, a.world = 1, 0, 2
    sys.path.insert(0, str(ROOT))
    import torch

    from exposure_audit.cli import main as cli
    from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary, save_checkpoint

    loads = [mp.Process(target=busy, daemon=True) for _ in range(a.load)]
    for p in loads:
        p.start()
    counts: dict[str, list[int]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            rng = random.Random(0)
            words = ["the", "model", "reads", "text", "and", "learns", "a", "line", "of", "words"]
            (root / "corpus.txt").write_text(
                "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(240)) + "\n"
            )
            args = ["insert", "--corpus", root / "corpus.txt", "--out", root / "data", "--format", "pin {d:4}"]
            assert cli([str(x) for x in [*args, "--schedule", "0,1,8", "-q"]]) == 0
            torch.manual_seed(0)
            model = CharLSTM(Vocabulary.from_chars("abcdefghijklmnopqrstuvwxyz0123456789 \n"), CharLSTMConfig(8, 24, 2))
            (root / "model").mkdir()
            save_checkpoint(model.eval(), root / "model", {})
            manifest = root / "data" / "canaries.json"
            jobs = {
                "measure": lambda i: run(
                    a.world,
                    ["measure", "--model", root / "model", "--canaries", manifest, "--any-model", "-q"]
                    + ["--method", "enumerate", "--json", root / f"m{i}.json"],
                    root,
                ),
                "extract": lambda i: run(
                    a.world, ["extract", "--model", root / "model", "--format", "pin {d:4}", "--top", "3", "-q"], root
                ),
                "train": lambda i: run(
                    a.world, ["train", "--data", root / "data", "--out", root / f"t{i}", *TRAIN], root
                ),
                "train --resume": lambda i: killed_then_resumed(a.world, root / "data", root / f"r{i}", root),
            }
            for i in range(a.rounds):
                for name, job in jobs.items():
                    clean, detail = job(i)
                    ok, bad = counts.setdefault(name, [0, 0])
                    counts[name] = [ok + clean, bad + (not clean)]
                    if not clean:
                        print(f"round {i} {name}: NOT CLEAN: {detail}", flush=True)
                print(
                    f"round {i + 1}/{a.rounds}: " + ", ".join(f"{k} {v[1]} bad" for k, v in counts.items()), flush=True
                )
    finally:
        for p in loads:
            p.kill()
    total = sum(sum(v) for v in counts.values())
    bad = sum(v[1] for v in counts.values())
    print(f"\n{total} torchrun runs at {a.world} ranks with {a.load} busy loops: {bad} not clean")
    for name, (ok, nbad) in counts.items():
        print(f"  {name:16s} {ok + nbad:3d} runs  {nbad:3d} not clean")


if __name__ == "__main__":
    main()
