"""gloo's all-reduce against the shared-memory one (exposure_audit/training/allreduce.py) at 2
ranks on this machine, one thread each: the all-reduce alone by size, and inside DDP training
steps of the 2x128 char-LSTM at batch 32 per rank (backward with gloo, with shared memory, and
with a hook that communicates nothing: the floor).

    python benchmarks/allreduce.py [--steps 60]
    python benchmarks/allreduce.py --tiny     # small sizes, a 1x16 model, a few steps

It starts itself under torchrun; rank 0 prints. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alone(team, red, sizes: list[int], repeats: int) -> None:
    import torch
    import torch.distributed as dist

    if team.main:
        print(f"{'all-reduce alone':28}{'gloo':>12}{'shared memory':>16}{'ratio':>9}")
    for n in sizes:
        t = torch.ones(n)
        got = {}
        for name, f in (("gloo", lambda: dist.all_reduce(t)), ("shm", lambda: red.all_reduce_(t))):
            for _ in range(5):
                f()
            team.exchange(None)
            t0 = time.perf_counter()
            for _ in range(repeats):
                f()
            got[name] = (time.perf_counter() - t0) / repeats
        if team.main:
            label = f"  {n * 4:,} bytes"
            print(
                f"{label:28}{got['gloo'] * 1e3:>9.3f} ms{got['shm'] * 1e3:>13.3f} ms{got['gloo'] / got['shm']:>8.1f}x"
            )


def _steps(team, mode: str, steps: int, hidden: int, layers: int) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from exposure_audit.models import CharLSTM, CharLSTMConfig, Vocabulary
    from exposure_audit.training.allreduce import SharedReducer

    vocab = Vocabulary.from_chars(set("abcdefghijklmnopqrstuvwxyz 0123456789\n"))
    torch.manual_seed(0)
    model = CharLSTM(vocab, CharLSTMConfig(embedding=16, hidden=hidden, layers=layers))
    net = DistributedDataParallel(model)
    if mode == "shared memory":
        red = SharedReducer.connect(team)
        net.register_comm_hook(None, red.comm_hook)
    elif mode == "no communication":

        def noop(state, bucket):  # noqa: ANN001, ANN202 -- DDP rejects other annotations
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        net.register_comm_hook(None, noop)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randint(0, len(vocab), (32, 101), generator=torch.Generator().manual_seed(team.rank))
    fwd = bwd = 0.0
    for i in range(steps + 5):
        t0 = time.perf_counter()
        out = net(x[:, :-1])[0]
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1))
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        if i >= 5:
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return fwd / steps, bwd / steps


def rank_main(steps: int, tiny: bool) -> None:
    import torch

    from exposure_audit import distributed
    from exposure_audit.allocator import tune
    from exposure_audit.training.allreduce import SharedReducer

    tune()
    torch.set_num_threads(1)
    team = distributed.start("gloo")
    red = SharedReducer.connect(team)
    if red is None:
        sys.exit("shared memory is not usable here (another host or architecture)")
    sizes = [1, 2048, 212_503] if tiny else [1, 2048, 212_503, 2_000_000]
    _alone(team, red, sizes, 5 if tiny else 50)
    hidden, layers = (16, 1) if tiny else (128, 2)
    if team.main:
        print(f"\nDDP step, char-LSTM {layers}x{hidden}, batch 32 x 100 per rank (mean of {steps} steps, rank 0)")
        print(f"{'':28}{'forward':>12}{'backward':>12}")
    for mode in ("gloo", "shared memory", "no communication"):
        fwd, bwd = _steps(team, mode, steps, hidden, layers)
        if team.main:
            print(f"  {mode:26}{fwd * 1e3:>9.1f} ms{bwd * 1e3:>9.1f} ms")
    red.close()
    distributed.stop()
    # as the command does: no interpreter finalization, whose gloo and DDP destructors aborted a
    # rank of this benchmark once (a failed tests/test_benchmarks.py run, after all lines printed)
    distributed.leave(0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--rank", action="store_true", help=argparse.SUPPRESS)  # set when started under torchrun
    a = ap.parse_args(argv)
    if a.tiny:
        a.steps = 3
    if a.rank:
        rank_main(a.steps, a.tiny)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(_free_port()), __file__, "--rank", "--steps", str(a.steps)]
    cmd += ["--tiny"] if a.tiny else []
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stdout.write(p.stdout)
    if p.returncode != 0:
        sys.exit(f"failed:\n{p.stderr[-2000:]}")


if __name__ == "__main__":
    main()
