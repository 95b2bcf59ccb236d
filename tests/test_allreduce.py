"""The shared-memory all-reduce of DDP training on one machine (exposure_audit/training/allreduce.py),
and the allocator settings of the command-line process (exposure_audit/allocator.py).

Real process groups (gloo on 127.0.0.1), spawned as in tests/test_distributed.py: sums equal the
rank-order sum bit for bit on every rank, through chunks smaller than the tensor; DDP with the hook
trains to the same weights as with gloo's all-reduce; a dead rank is noticed within seconds.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from exposure_audit import allocator, distributed
from exposure_audit.errors import AuditError
from exposure_audit.training import allreduce
from exposure_audit.training.allreduce import SharedReducer

from .test_distributed import LIMIT, ROOT, free_port, rank_env, spawn


def _tensor(rank: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + rank)
    return (torch.randn(n, generator=g, dtype=torch.float64) * 10 ** (rank - 1)).to(dtype)


def _sums(n: int) -> dict:
    team = distributed.team()
    red = SharedReducer.connect(team, slot_bytes=4096)  # 4 KB slots: a tensor takes many rounds
    assert red is not None
    got = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for average in (False, True):
            t = _tensor(team.rank, n, dtype)
            red.all_reduce_(t, average=average)
            want = _tensor(0, n, dtype)
            for r in range(1, team.world):
                want = want + _tensor(r, n, dtype)  # rank order: ((t0 + t1) + t2) ...
            if average:
                want = want / team.world
            same_everywhere = len({bytes(x) for x in team.exchange(t.view(torch.uint8).numpy().tobytes())}) == 1
            got[(str(dtype), average)] = (torch.equal(t, want), same_everywhere)
    red.close()
    return got


@pytest.mark.parametrize("world", [2, 3])
def test_sums_are_the_rank_order_sum_bit_for_bit_on_every_rank(world, tmp_path):
    got = spawn(world, _sums, (10_001,), tmp_path)  # 10,001 values: odd chunk and part sizes
    assert len(got) == 6
    assert all(equal and same for equal, same in got.values()), got


def _train(use_hook: bool) -> list[torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    team = distributed.team()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(20, 8), torch.nn.LSTM(8, 16, batch_first=True))
    net = DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
    if use_hook:
        red = SharedReducer.connect(team)
        assert red is not None
        net.register_comm_hook(None, red.comm_hook)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(7 + team.rank)
    for _ in range(4):
        x = torch.randint(0, 20, (5, 12), generator=g)
        out, _ = net(x)
        opt.zero_grad()
        out.pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _both() -> bool:
    hooked, plain = _train(True), _train(False)
    return all(torch.equal(a, b) for a, b in zip(hooked, plain)) and len(hooked) == 5


def test_ddp_with_the_hook_trains_to_gloos_weights_exactly(tmp_path):
    # two ranks: (a + b) / 2 and a / 2 + b / 2 (gloo's hook) round alike, so the weights are equal
    assert spawn(2, _both, (), tmp_path) is True


def _backend_choice() -> tuple:
    os.environ[allreduce.ENV] = "backend"
    return (SharedReducer.connect(distributed.team()) is None,)


def test_the_backend_switch_keeps_gloo_on_every_rank(tmp_path):
    assert spawn(2, _backend_choice, (), tmp_path) == (True,)


def test_a_bad_switch_is_an_input_error_and_one_process_has_no_reducer(monkeypatch):
    monkeypatch.setenv(allreduce.ENV, "tcp")
    with pytest.raises(AuditError, match="EXPOSURE_AUDIT_ALLREDUCE='tcp'"):
        allreduce.choice()
    monkeypatch.setenv(allreduce.ENV, "shared-memory")
    assert SharedReducer.connect(distributed.team()) is None  # no torchrun: nothing to reduce


def _dead_worker(rank, world, port, out_path):
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    team = distributed.start("gloo", timeout=60)
    red = SharedReducer.connect(team)
    if rank == 1:
        os._exit(0)  # dies before the all-reduce; rank 0 must not wait for it
    t0 = time.monotonic()
    try:
        red.all_reduce_(torch.ones(10))
        result = ("reduced", 0.0)
    except distributed.LostPeer as e:
        result = (str(e), time.monotonic() - t0)
    Path(out_path).write_bytes(pickle.dumps(result))
    os._exit(0)  # the group is broken: no teardown


def test_a_dead_rank_is_noticed_within_seconds(tmp_path):
    out = tmp_path / "dead.pickle"
    ctx = mp.start_processes(_dead_worker, args=(2, free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    try:
        deadline = time.time() + LIMIT
        while not out.exists() and time.time() < deadline:
            time.sleep(0.1)
        message, waited = pickle.loads(out.read_bytes())
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    assert message == "lost contact with another rank (rank 1 has exited)"
    assert waited < 10


@pytest.mark.parametrize(
    ("env", "tuned"),
    [
        ({}, True),
        ({"EXPOSURE_AUDIT_MALLOC": "default"}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}, False),
    ],
)
def test_the_command_tunes_glibcs_malloc_unless_told_otherwise(env, tuned):
    skip = ("EXPOSURE_AUDIT_MALLOC", "GLIBC_TUNABLES")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in skip}
    code = "from exposure_audit.allocator import tune; print(tune())"
    p = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(tuned)


class _Libc:
    """glibc's mallopt as a fake: which calls it accepts, and which it was given."""

    def __init__(self, refuse_mmap_above: int | None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.cap = refuse_mmap_above

    def gnu_get_libc_version(self) -> None:
        pass

    def mallopt(self, what: int, value: int) -> int:
        self.calls.append((what, value))
        if what == allocator.M_MMAP_THRESHOLD and self.cap is not None and value > self.cap:
            return 0
        return 1


@pytest.mark.parametrize(
    ("cap", "tuned", "mmap_set", "trim_set"),
    [
        (None, True, allocator.MMAP_BYTES, True),  # takes the first threshold
        (32 << 20, True, allocator.MMAP_FALLBACK, True),  # a glibc that caps it: the fallback
        (1 << 20, False, None, False),  # refuses both: trim is left alone too (or glibc would freeze 128 KiB)
    ],
)
def test_tune_falls_back_where_glibc_refuses_the_threshold(monkeypatch, cap, tuned, mmap_set, trim_set):
    import ctypes

    for k in [k for k in os.environ if k.startswith("MALLOC_")] + ["EXPOSURE_AUDIT_MALLOC", "GLIBC_TUNABLES"]:
        monkeypatch.delenv(k, raising=False)
    libc = _Libc(cap)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: libc)
    assert allocator.tune() is tuned
    accepted = [v for w, v in libc.calls if w == allocator.M_MMAP_THRESHOLD and (cap is None or v <= cap)]
    assert (accepted[0] if accepted else None) == mmap_set
    assert any(w == allocator.M_TRIM_THRESHOLD for w, _ in libc.calls) is trim_set


def test_a_shared_memory_block_that_cannot_be_backed_is_refused_not_used(monkeypatch):
    """A tmpfs too small for the block (a container's /dev/shm): no block (so gloo is used, or an
    error where 'shared-memory' was asked for) and none left behind, never a rank killed by
    SIGBUS at its first write."""
    import errno

    asked = []

    def full(fd, offset, length):
        asked.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    def blocks() -> set[str]:
        return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()

    before = blocks()
    monkeypatch.setattr(os, "posix_fallocate", full)
    assert SharedReducer._create(1 << 20) == (None, None) and asked == [1 << 20]
    assert blocks() == before  # the refused block was unlinked
    monkeypatch.undo()
    shm, name = SharedReducer._create(1 << 20)  # with room: a block
    try:
        assert shm is not None and name is not None
    finally:
        allreduce._close(shm)
        shm.unlink()
