"""DDP's gradient all-reduce through shared memory, for the ranks of one machine (CPU training).

Under ``torchrun`` on one machine, gloo's all-reduce travels over loopback TCP. For the small
models trained here that costs more than the arithmetic: a 0.85 MB gradient (the 2x128
char-LSTM) took 8-12 ms of a 90 ms step in backward, against 0-2 ms for a hook that
communicates nothing (docs/distributed.md, "Scaling"). :class:`SharedReducer` sums the ranks'
tensors in one shared-memory block instead:

1. every rank copies (a chunk of) its tensor into its own slot and marks its arrival;
2. once all have arrived, rank r sums the r-th part of the chunk over the slots *in rank
   order* (slot 0 + slot 1 + ...) into a result buffer, and marks that;
3. once all have, every rank copies the whole result back.

So every rank ends with bit-identical sums (DDP's replicas stay equal), whatever the timing. The
result buffers alternate between consecutive rounds, which makes the two arrival marks per round
the only synchronization needed: a rank can write round s+2's result only after every rank has
arrived at round s+2, that is, has finished copying round s's. A rank waits by polling the marks
(a short spin, then yields, then 50 microsecond sleeps) and gives up with
:class:`~exposure_audit.distributed.LostPeer` when a rank that has not arrived is dead (its pid
gone or a zombie) or after the job's timeout, so a killed rank never leaves the others hanging.

Used only where it is sound, decided collectively so every rank takes the same path: every rank
on one host (same host name), the memory really shared (each rank reads the others' pids from it),
an x86-64 CPU (its stores become visible in program order, so a rank that sees a mark also sees
the data written before it; elsewhere the backend's all-reduce is kept), and
``EXPOSURE_AUDIT_ALLREDUCE`` not set to ``backend`` (the switch that keeps gloo, for comparison
runs: ``benchmarks/distributed.py --allreduce backend``).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from typing import Any

import torch

from .. import distributed
from ..errors import AuditError

ENV = "EXPOSURE_AUDIT_ALLREDUCE"
CHOICES = ("auto", "shared-memory", "backend")
SLOT_BYTES = 4 << 20  # a round's chunk per rank: larger tensors go through in several rounds
ALIGN = 64  # bytes: slots start on cache lines
SPINS, YIELDS, SLEEP = 2_000, 2_000, 50e-6  # the wait's back-off
CHECK_EVERY = 1.0  # seconds between liveness checks of the ranks not yet arrived


def choice() -> str:
    """The all-reduce asked for by ``EXPOSURE_AUDIT_ALLREDUCE`` (default auto)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise AuditError(f"{ENV}={value!r}: expected one of {', '.join(CHOICES)}")
    return value


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class SharedReducer:
    """Sums tensors over the ranks of one machine through a shared-memory block.

    Made by :meth:`connect` (a collective: every rank calls it, and every rank gets a reducer
    or every rank gets None). :meth:`all_reduce_` sums a tensor in place; :meth:`comm_hook` is
    DDP's communication hook (the averaged gradient bucket)."""

    def __init__(self, team: distributed.Team, shm: Any, slot_bytes: int, pids: list[int], watch: bool) -> None:
        self.team, self.shm, self.slot_bytes, self.pids, self.watch = team, shm, slot_bytes, pids, watch
        self.timeout = team.timeout
        world = team.world
        raw = torch.frombuffer(shm.buf, dtype=torch.uint8)
        head = raw[: _header_bytes(world)].view(torch.int64)
        self.marks = (head[:world], head[world : 2 * world])  # arrivals: data written, part summed
        self.slots = [raw[_slot_at(world, slot_bytes, r) :][:slot_bytes] for r in range(world)]
        self.results = [raw[_slot_at(world, slot_bytes, world + k) :][:slot_bytes] for k in range(2)]
        self.round = 0
        self.seconds = 0.0  # time spent in all_reduce_ (for the benchmark)

    # -- setting up --------------------------------------------------------------------------
    @classmethod
    def connect(cls, team: distributed.Team, slot_bytes: int = SLOT_BYTES) -> SharedReducer | None:
        """A reducer on every rank, or None on every rank where shared memory is not usable
        (another host, another architecture, ``EXPOSURE_AUDIT_ALLREDUCE=backend``, no
        shared memory): then the backend's own all-reduce is used."""
        want = choice()
        if not team.active or team.world < 2 or team.device != "cpu" or want == "backend":
            return None
        x86 = platform.machine().lower() in ("x86_64", "amd64")
        hosts = team.exchange((socket.gethostname(), x86))
        if len({h for h, _ in hosts}) != 1 or not all(ok for _, ok in hosts):
            if want == "shared-memory":
                raise AuditError(f"{ENV}=shared-memory needs every rank on one x86-64 machine")
            return None
        size = _slot_at(team.world, slot_bytes, team.world + 2)
        shm, name = cls._create(size) if team.main else (None, None)
        name = team.exchange(name)[0]
        if name is None:
            return cls._refuse(want, "rank 0 could not create a shared-memory block")
        if shm is None:
            shm = cls._attach(name)
        if shm is not None:  # a new block is zero-filled: every mark starts at round 0
            head = torch.frombuffer(shm.buf, dtype=torch.uint8)[: _header_bytes(team.world)].view(torch.int64)
            head[2 * team.world + team.rank] = os.getpid()
        seen = team.exchange(os.getpid())  # after this, every rank has written its pid
        shared = shm is not None and head[2 * team.world : 3 * team.world].tolist() == seen
        # Every rank is alive until it has joined the next exchange, so the pids are checked
        # here: a rank that leaves at once after connecting must not look dead already.
        visible = all(_alive(p) for p in seen)  # False: pids of another namespace, the timeout alone
        votes = team.exchange((shared, visible))
        agreed = all(v for v, _ in votes)
        if team.main and shm is not None:
            shm.unlink()  # every rank has it mapped: the name goes, the memory stays until closed
        if not agreed:
            if shm is not None:
                del head
                _close(shm)
            return cls._refuse(want, "the ranks do not share memory")
        return cls(team, shm, slot_bytes, seen, all(w for _, w in votes))

    @staticmethod
    def _create(size: int) -> tuple[Any, str | None]:
        from multiprocessing import shared_memory

        try:
            shm = shared_memory.SharedMemory(create=True, size=size)
        except OSError:
            return None, None
        try:
            # Reserve the pages now: a tmpfs too small for the block (a container's 64 MiB
            # /dev/shm) would otherwise kill a rank with SIGBUS at its first write.
            os.posix_fallocate(shm._fd, 0, size)
        except (OSError, AttributeError):
            _close(shm)
            shm.unlink()
            return None, None
        return shm, shm.name

    @staticmethod
    def _attach(name: str) -> Any:
        from multiprocessing import resource_tracker, shared_memory

        try:
            shm = shared_memory.SharedMemory(name=name)
        except OSError:
            return None
        # Python 3.11 registers an attached block for removal at exit; rank 0 removes the name
        resource_tracker.unregister(shm._name, "shared_memory")
        return shm

    @staticmethod
    def _refuse(want: str, why: str) -> None:
        if want == "shared-memory":
            raise AuditError(f"{ENV}=shared-memory: {why}")
        return None

    # -- reducing ----------------------------------------------------------------------------
    def all_reduce_(self, tensor: torch.Tensor, *, average: bool = False) -> torch.Tensor:
        """Sum ``tensor`` (contiguous, on the CPU) over the ranks, in place, in rank order on
        every rank (divided by the world size with ``average``); returns it."""
        t0 = time.perf_counter()
        flat = tensor.view(-1)
        per = self.slot_bytes // flat.element_size()
        for lo in range(0, flat.numel(), per):
            self._round(flat[lo : lo + per], average)
        self.seconds += time.perf_counter() - t0
        return tensor

    def _round(self, chunk: torch.Tensor, average: bool) -> None:
        team, n = self.team, chunk.numel()
        self.round += 1
        s, dtype = self.round, chunk.dtype
        slots = [slot[: n * chunk.element_size()].view(dtype) for slot in self.slots]
        slots[team.rank].copy_(chunk)
        self.marks[0][team.rank] = s
        self._wait(self.marks[0], s)
        lo, hi = n * team.rank // team.world, n * (team.rank + 1) // team.world
        out = self.results[s % 2][: n * chunk.element_size()].view(dtype)
        part = out[lo:hi]
        part.copy_(slots[0][lo:hi])
        for other in slots[1:]:
            part.add_(other[lo:hi])
        if average:
            part.div_(team.world)
        self.marks[1][team.rank] = s
        self._wait(self.marks[1], s)
        chunk.copy_(out)

    def _wait(self, marks: torch.Tensor, s: int) -> None:
        """Until every rank's mark is at round ``s``; a dead rank or the timeout raises LostPeer."""
        for _ in range(SPINS):
            if int(marks.min()) >= s:
                return
        for _ in range(YIELDS):
            if int(marks.min()) >= s:
                return
            os.sched_yield()
        start = checked = time.monotonic()
        while int(marks.min()) < s:
            time.sleep(SLEEP)
            now = time.monotonic()
            if now - checked >= CHECK_EVERY:
                checked = now
                missing = [r for r, m in enumerate(marks.tolist()) if m < s]
                dead = [r for r in missing if self.watch and not _alive(self.pids[r])]
                if dead:
                    raise distributed.LostPeer(f"lost contact with another rank (rank {dead[0]} has exited)")
                if now - start > self.timeout:
                    raise distributed.LostPeer(
                        f"lost contact with another rank (rank {missing[0]} silent for {self.timeout:.0f} s)"
                    )

    def close(self) -> None:
        """Unmap the block (the views into it are dropped first)."""
        shm, self.shm = self.shm, None
        self.marks, self.slots, self.results = (), [], []
        if shm is not None:
            _close(shm)

    def comm_hook(self, state, bucket):  # noqa: ANN001, ANN201 -- DDP rejects any annotation but its own types
        """DDP's communication hook: the bucket's gradients averaged over the ranks, as DDP's
        default all-reduce hook gives them (the loss is scaled so that the mean is wanted)."""
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(self.all_reduce_(bucket.buffer(), average=True))
        return fut


def _close(shm: Any) -> None:
    import gc

    gc.collect()  # tensors viewing the block hold its buffer until freed
    try:
        shm.close()
    except BufferError:
        pass  # a view is still alive somewhere: the mapping goes with the process


def _header_bytes(world: int) -> int:
    """Two arrival marks and a pid per rank, int64 each, rounded up to a cache line."""
    return -(-(3 * world * 8) // ALIGN) * ALIGN


def _slot_at(world: int, slot_bytes: int, k: int) -> int:
    """Byte offset of slot ``k`` (the ranks' slots 0..world-1, then the two result buffers)."""
    step = -(-slot_bytes // ALIGN) * ALIGN
    return _header_bytes(world) + k * step
