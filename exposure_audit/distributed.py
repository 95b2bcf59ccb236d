"""Running under ``torchrun``: the process group, who writes, and how ranks agree (docs/distributed.md).

``torchrun`` (or Slurm around it) starts one process per rank with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT`` in the environment. :func:`start` reads them,
initializes ``torch.distributed`` and registers the :class:`Team` that the library asks for with
:func:`team`. Without that environment there is no process group at all: the solo team (rank 0
of 1) makes every helper here a no-op, so a single process runs exactly the code it always ran.

Every collective of the tool (but DDP's own gradient all-reduce) is an :meth:`Team.exchange`:
an ``all_gather_object`` of ``(error, payload)`` on a gloo group. A rank that fails calls
:meth:`Team.fail`, which is the same collective, so the others learn of the failure at their
next exchange and every rank exits with the error (rank 0 prints it). A rank that dies outright
closes its sockets; the others' next exchange then fails at once (gloo), and a rank that hangs is
given up on after the group's timeout. Either way no rank waits forever.

Only rank 0 prints tables, draws progress bars and writes outputs (:func:`is_main`).
"""

from __future__ import annotations

import datetime
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import AuditError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT = 1800  # seconds a rank waits at an exchange for the others (a long shard may keep one busy)
FAIL_GRACE = 60.0  # seconds a failing rank waits to tell the others before it exits anyway


class PeerError(AuditError):
    """Another rank failed with an input error: every rank stops with it (rank 0 prints it)."""


class LostPeer(Exception):
    """A rank died or stopped answering: the collective failed or timed out."""


@dataclass
class Team:
    """This process's place in the job. The solo team (rank 0 of 1) has no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None
    device: str = "cpu"
    control: Any = None  # the gloo group that carries exchanges (the default group unless that is NCCL)
    timeout: float = DEFAULT_TIMEOUT  # seconds a rank waits for the others at a collective
    claims: int = 0  # counters taken by :meth:`claim` (every rank takes them in the same order)
    generation: int = 0  # which team of the job this is (teams started again get new counters)
    finished: bool = False  # the last exchange of a command's normal path was made (:meth:`finish`)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.backend is not None

    # -- collectives ------------------------------------------------------------------
    def exchange(self, payload: Any = None) -> list[Any]:
        """Every rank's ``payload``, in rank order, on every rank. Raises :class:`PeerError`
        if a rank reported a failure instead (:meth:`fail`)."""
        if not self.active:
            return [payload]
        got = self._gather((None, payload))
        failed = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
        if failed:
            rank, message = failed[0]
            raise PeerError(message if rank == 0 or self.rank != 0 else f"rank {rank}: {message}")
        return [p for _, p in got]

    def fail(self, message: str) -> None:
        """Tell the other ranks that this one failed (they raise at their next exchange).

        If they never get there (a rank busy in DDP's all-reduce, or in a long shard), this
        process exits after ``FAIL_GRACE`` seconds; its closed sockets then stop the others."""
        if not self.active:
            return
        timer = threading.Timer(FAIL_GRACE, _exit_now, args=(message, self.rank))
        timer.daemon = True
        timer.start()
        try:
            self._gather((message, None))
        except Exception:
            pass  # the others are gone already: nothing left to tell
        finally:
            timer.cancel()

    def finish(self) -> None:
        """The last exchange of a command that succeeded on this rank: raises :class:`PeerError`
        if another rank failed instead, so that every rank ends with the same status."""
        if self.active:
            self.exchange(None)
            self.finished = True

    def all_sum(self, values: Sequence[int]) -> list[int]:
        """Element-wise sums of integer counters over ranks (exact: Python ints)."""
        return [sum(col) for col in zip(*self.exchange([int(v) for v in values]))]

    def gather_chunks(self, chunks: list[Any], steps: int) -> tuple[list[Any], int]:
        """Every rank's chunks of a job split by chunk (each chunk scored by one rank), in rank
        order, and the sum of the ranks' model steps: what one process would have done."""
        parts = self.exchange((chunks, steps))
        return [c for part, _ in parts for c in part], sum(st for _, st in parts)

    def claim(self, total: int) -> Iterator[int]:
        """Each of ``0 .. total-1`` to exactly one rank, handed out in order as ranks ask for
        more (an atomic counter in the job's store): a rank that runs faster takes more pieces,
        so no rank waits at the end for a slower one. A collective: every rank calls it, in the
        same order as the others."""
        if not self.active:
            yield from range(total)
            return
        self.claims += 1
        key = f"exposure-audit/claim/{self.generation}/{self.claims}"
        store = _store()
        while True:
            try:
                i = int(store.add(key, 1)) - 1
            except Exception as e:  # the store's host (torchrun's agent or rank 0) is gone
                raise LostPeer(f"lost contact with the job's store: {_first_sentence(e)}") from None
            if i >= total:
                return
            yield i

    def split(self, size: int, align: int = 1) -> tuple[int, int]:
        """This rank's contiguous share ``[lo, hi)`` of ``range(size)``, the boundaries at
        multiples of ``align`` (so shards are whole subtrees or whole batches)."""
        blocks = -(-size // align)
        lo_b = blocks * self.rank // self.world
        hi_b = blocks * (self.rank + 1) // self.world
        return min(size, lo_b * align), min(size, hi_b * align)

    def _gather(self, item: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(out, item, group=self.control)
        except Exception as e:  # gloo: a peer closed its sockets or the timeout passed
            first = _first_sentence(e)
            raise LostPeer(f"lost contact with another rank (it failed, was killed or timed out): {first}") from None
        return out


_TEAM = Team()


def team() -> Team:
    """The team of this process (the solo team outside ``torchrun``)."""
    return _TEAM


def is_main() -> bool:
    """Whether this process prints and writes (rank 0, or the only process)."""
    return _TEAM.main


def launched() -> bool:
    """Whether ``torchrun`` (or an equivalent launcher) started this process."""
    return all(k in os.environ for k in ENV)


def env_rank() -> int:
    """This process's rank from the launcher's environment (0 outside one), before any group exists."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def env_world() -> int:
    """How many ranks the launcher started (1 outside one), before any group exists."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1  # one process (a world size, not an exit status)


def _first_sentence(e: BaseException) -> str:
    """A backend's error as one short line (gloo prefixes its source file and adds advice)."""
    import re

    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0]


def _exit_now(message: str, rank: int) -> None:
    import sys

    sys.stderr.write(f"error: rank {rank}: {message}\n" if rank else f"error: {message}\n")
    sys.stderr.flush()
    os._exit(2)


def _int_env(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise AuditError(f"torchrun environment: {name}={value!r} is not an integer") from None


def start(backend: str = "auto", *, timeout: float = DEFAULT_TIMEOUT, uses_cuda: bool = True) -> Team:
    """Join the ``torchrun`` job this process belongs to, if any, and return its team.

    ``backend``: ``auto`` (NCCL where CUDA is available and the command computes on it, gloo
    otherwise), ``gloo`` or ``nccl``. ``uses_cuda`` False: the command computes on the CPU
    (training here), so NCCL, which reduces CUDA tensors only, is refused and ``auto`` is gloo.
    Exchanges always travel on gloo (small Python objects), on a side group when the main
    backend is NCCL. One device per local rank: ``cuda:LOCAL_RANK`` where CUDA is used.
    """
    global _TEAM
    if backend not in BACKENDS:
        raise AuditError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if timeout <= 0:
        raise AuditError("the distributed timeout must be a positive number of seconds")
    if not launched():
        return _TEAM
    if _TEAM.active:
        return _TEAM
    import torch
    import torch.distributed as dist

    rank, world, local = _int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if not (0 <= rank < world) or local < 0:
        raise AuditError(f"torchrun environment: RANK={rank} does not fit WORLD_SIZE={world}")
    cuda = torch.cuda.is_available()
    if backend == "nccl" and not cuda:
        raise AuditError("backend nccl needs CUDA, which is not available here; use --backend gloo")
    if backend == "nccl" and not uses_cuda:
        raise AuditError("this command computes on the CPU, and NCCL reduces CUDA tensors only; use --backend gloo")
    chosen = backend if backend != "auto" else ("nccl" if cuda and uses_cuda else "gloo")
    device = "cpu"
    if chosen == "nccl":
        if local >= torch.cuda.device_count():
            raise AuditError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible); start fewer ranks")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    td = datetime.timedelta(seconds=timeout)
    try:
        kwargs: dict[str, Any] = {"backend": chosen, "timeout": td}
        if chosen == "nccl":
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(**kwargs)
        control = dist.new_group(backend="gloo", timeout=td) if chosen == "nccl" else None
    except Exception as e:
        first = _first_sentence(e)
        raise AuditError(f"cannot join the torchrun job ({chosen}): {first}") from None
    _TEAM = Team(rank, world, local, local_world, chosen, device, control, timeout)
    # A job-wide number for this team: torchrun's store outlives the process group, so a team
    # started again in the same job must not meet the counters of the last one.
    _TEAM.generation = _TEAM.exchange(_next_generation() if _TEAM.main else None)[0]
    return _TEAM


def _store() -> Any:
    """The job's key-value store (the one torchrun's rendezvous set up; a private torch API)."""
    import torch.distributed as dist

    return dist.distributed_c10d._get_default_store()


def _next_generation() -> int:
    return int(_store().add("exposure-audit/generation", 1))


def stop(*, lost: bool = False) -> None:
    """Leave the process group at the end of a command, on every path (docs/distributed.md,
    "Shutdown"), and fall back to the solo team.

    1. A last exchange (``lost`` False; :meth:`Team.finish` on the normal path, one here on an
       error path): no rank tears its group down while a peer still talks to it (rank 0 may
       still be writing the outputs while the others are done).
    2. Garbage collection: DistributedDataParallel's reducer sits in reference cycles with the
       model's hooks and holds the group; collected now, not during interpreter finalization,
       where gloo's worker threads releasing tensors abort the process ("terminate called
       without an active exception").
    3. ``destroy_process_group`` and another collection, so the group's threads are joined now.

    With ``lost`` (a peer died or timed out) the group is broken: nothing is exchanged or torn
    down, and the entry point leaves at once (:func:`leave`).
    """
    global _TEAM
    team = _TEAM
    _TEAM = Team()
    if not team.active or lost:
        return
    import gc

    import torch.distributed as dist

    if not team.finished:  # an error path: the peers are told already (fail), now meet once more
        try:
            team._gather((None, None))
        except LostPeer:
            return  # a peer is gone: its group cannot be torn down in step with it
    gc.collect()
    try:
        dist.destroy_process_group()
    except Exception:
        pass
    gc.collect()


def leave(code: int) -> None:
    """End a process that ran under torchrun with ``code`` without interpreter finalization:
    after :func:`stop`, nothing is left to say to the peers, and finalization would run the
    destructors of torch's C++ objects (gloo contexts, their threads) in an arbitrary order.
    Output is flushed first. A process outside torchrun exits normally."""
    import sys

    if not launched():
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def model_device(requested: str) -> str:
    """The device a model is loaded on: under torchrun with CUDA, this rank's own GPU."""
    t = _TEAM
    if t.active and t.device.startswith("cuda") and requested in ("auto", "cuda"):
        return t.device
    return requested


def threads_per_rank() -> int:
    """CPU threads for one rank: the machine's cores shared by the ranks on it."""
    return max(1, (os.cpu_count() or 1) // max(1, _TEAM.local_world))


def note(message: str) -> None:
    """A note on stderr, from rank 0 only."""
    if _TEAM.main:
        import sys

        sys.stderr.write(f"note: {message}\n")
