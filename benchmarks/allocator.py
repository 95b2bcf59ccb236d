"""glibc's malloc defaults against the command's settings (exposure_audit/allocator.py), on
training steps of the 2x128 char-LSTM, one thread, side by side.

    python benchmarks/allocator.py [--steps 50] [--batches 32,64] [--repeats 2]

Each configuration runs in a fresh process (malloc's settings hold for a process's life), the
configurations alternating so that a slow spell of the machine hits both. Printed: the mean and
standard deviation of one step (forward, backward, Adam) and the ratio. Nothing is asserted.

    python benchmarks/allocator.py --tiny     # a 1x16 model, 5 steps: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch, torch.nn.functional as F
from exposure_audit.allocator import tune
tuned = tune() if sys.argv[1] == "tuned" else False
torch.set_num_threads(1)
from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary
batch, steps, hidden, layers = map(int, sys.argv[2:6])
vocab = Vocabulary.from_chars(set("abcdefghijklmnopqrstuvwxyz 0123456789\n"))
torch.manual_seed(0)
m = CharLSTM(vocab, CharLSTMConfig(embedding=16, hidden=hidden, layers=layers))
opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.randint(0, len(vocab), (batch, 101), generator=torch.Generator().manual_seed(1))
times = []
for i in range(steps + 5):
    t0 = time.perf_counter()
    out = m(x[:, :-1])[0]
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if i >= 5:
        times.append(time.perf_counter() - t0)
print(json.dumps({"tuned": tuned, "times": times}))
"""


def run(mode: str, batch: int, steps: int, hidden: int, layers: int) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", EXPOSURE_AUDIT_MALLOC="")
    args = [sys.executable, "-c", CHILD, mode, str(batch), str(steps), str(hidden), str(layers)]
    p = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    got = json.loads(p.stdout.strip().splitlines()[-1])
    if mode == "tuned" and not got["tuned"]:
        sys.exit("the allocator settings could not be applied here (not glibc?)")
    return got["times"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batches", default="32,64")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args(argv)
    hidden, layers = 128, 2
    if a.tiny:
        a.steps, a.batches, a.repeats, hidden, layers = 5, "8", 1, 16, 1
    print(f"char-LSTM {layers}x{hidden}, one thread; a step = forward + backward + Adam on batch x 100 characters")
    head = f"{'batch':>6}{'run':>5}{'glibc defaults':>22}{'exposure-audit':>22}{'speedup':>10}"
    print(head)
    print("-" * len(head))
    for batch in (int(b) for b in a.batches.split(",")):
        for k in range(a.repeats):
            base = run("default", batch, a.steps, hidden, layers)
            mine = run("tuned", batch, a.steps, hidden, layers)

            def cell(ts: list[float]) -> str:
                sd = statistics.stdev(ts) if len(ts) > 1 else 0.0
                return f"{statistics.mean(ts) * 1e3:8.1f} ms (sd {sd * 1e3:4.1f})"

            ratio = statistics.mean(base) / statistics.mean(mine)
            print(f"{batch:>6}{k + 1:>5}{cell(base):>22}{cell(mine):>22}{ratio:>9.2f}x")


if __name__ == "__main__":
    main()
