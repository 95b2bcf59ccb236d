"""How a training step runs: the strategies the loop is handed.

:class:`Plain` trains in one process (batches in order, the mean loss, the gradient clipped);
:class:`Ddp` under torchrun (each rank on its share of every global batch, gradients averaged
by DistributedDataParallel); ``privacy.Private`` with DP-SGD. The loop asks the strategy
how many windows an epoch has, how to batch them, which rows this process trains on, the loss,
and what to save beside the weights; it tests no mode itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..config import TrainConfig
from ..errors import AuditError
from .state import StrategyState


class Plain:
    """Adam(W) in one process: each epoch's windows in order, in batches of ``batch_size``."""

    desc = "train"  # the progress bar's label
    private = False  # the model is wrapped by Opacus (scored through a plain copy)

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.team = distributed.team()

    @property
    def writes(self) -> bool:
        """This process writes the metrics, the resume state and the checkpoint."""
        return self.team.main

    def agree(self, identity: str, saved: Any, seed: int) -> Any:
        """The saved resume state every process continues from (``saved``: this process's read)."""
        return saved

    def windows_per_epoch(self, n: int, seq_len: int) -> int:
        from .data import windows

        return len(windows(n, seq_len, np.random.default_rng(0)))

    def wrap(self, model: torch.nn.Module, opt: torch.optim.Optimizer, windows: int, seed: int) -> None:
        """Make ``net`` (the module the step runs) and ``optimizer`` (the one it steps)."""
        self.model, self.net, self.optimizer = model, model, opt

    def restore(self, state: StrategyState | None) -> None:
        """Continue from a saved :meth:`state` (None: a fresh run, or one that saved none)."""

    def start_epoch(self, replay: bool) -> None:
        """An epoch begins (``replay``: the resumed one, begun before the interruption)."""

    def end_epoch(self) -> None:
        """An epoch's last batch is done."""

    def batches(self, starts: np.ndarray) -> Iterator[np.ndarray]:
        """The epoch's batches of window starts."""
        size = self.cfg.batch_size
        return (starts[lo : lo + size] for lo in range(0, len(starts), size))

    def rows(self, group: np.ndarray) -> np.ndarray:
        """The windows of a batch this process trains on."""
        return group

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, group: np.ndarray) -> torch.Tensor:
        """The loss to differentiate: the batch's mean cross-entropy."""
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def clip(self) -> None:
        """After backward: clip the gradient to ``grad_clip`` (0 = off)."""
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)

    def loss_value(self, loss: torch.Tensor) -> float:
        """The batch's mean loss in nats (for the bar and the metrics)."""
        return loss.item()

    def rng_states(self) -> list[torch.Tensor] | None:
        """Every process's torch RNG state, rank 0's first (None: this process's only)."""
        return None

    def state(self) -> StrategyState | None:
        """What to save beside the weights so a resumed run continues exactly."""
        return None

    def figures(self) -> dict[str, Callable[[], Any]]:
        """Extra figures of each epoch record and "track" line (computed only when written)."""
        return {}

    def quiet(self) -> None:
        """Silence the warnings this strategy's wrapping makes torch give (inside the loop)."""

    def finish(self, steps: int, unit: str) -> dict[str, Any] | None:
        """After the last epoch: the run's privacy record (None: no claim)."""
        self.model.eval()
        return None


class Ddp(Plain):
    """DistributedDataParallel under torchrun: each rank trains on every world-th window of each
    global batch, and DDP averages the ranks' gradients in backward."""

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        if cfg.batch_size < self.team.world:
            raise AuditError(
                f"train.batch_size {cfg.batch_size} is the global batch, smaller than the {self.team.world} ranks: "
                "every rank needs a window of each batch; use fewer ranks or a larger batch"
            )
        self.reducer: Any = None  # SharedReducer where the ranks share one machine (wrap)

    def agree(self, identity: str, saved: Any, seed: int) -> Any:
        # Every rank has the same weights (same seed) and window order (same rng); the ranks
        # check that they agree on that, and take the resumed state rank 0 read for all of them.
        parts = self.team.exchange((identity, saved))
        if any(ident != identity for ident, _ in parts):
            raise AuditError("the ranks tokenized the training data differently; they must read the same data folder")
        # dropout masks: each rank its own stream (the same one would repeat masks across ranks)
        torch.manual_seed(seed + 1_000_003 * (self.team.rank + 1))
        return parts[0][1]

    def wrap(self, model: torch.nn.Module, opt: torch.optim.Optimizer, windows: int, seed: int) -> None:
        from torch.nn.parallel import DistributedDataParallel

        from .allreduce import SharedReducer

        super().wrap(model, opt, windows, seed)
        self.net = DistributedDataParallel(model)  # averages the ranks' gradients in backward
        # one machine: the gradients are summed in shared memory, not over loopback TCP
        self.reducer = SharedReducer.connect(self.team)
        if self.reducer is not None:
            self.net.register_comm_hook(None, self.reducer.comm_hook)

    def rows(self, group: np.ndarray) -> np.ndarray:
        """Every world-th window from this rank's. A short last batch can leave a rank none; it
        then runs the first window with a zero share of the loss."""
        mine = group[self.team.rank :: self.team.world]
        return mine if len(mine) else group[:1]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, group: np.ndarray) -> torch.Tensor:
        # this rank's share of the global batch's mean loss, times the world size: DDP averages
        # over ranks, so the gradient is that of the global mean
        local = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
        if self.team.rank >= len(group):
            local = local * 0.0  # no window of a short last batch: a zero share, still all-reduced
        self._local, self._tokens = local, len(group) * self.cfg.seq_len
        return local * self.team.world / self._tokens

    def loss_value(self, loss: torch.Tensor) -> float:
        """The global batch's mean loss, from every rank's summed loss."""
        import torch.distributed as dist

        t = torch.tensor([self._local.item()], dtype=torch.float64)
        if self.reducer is not None:
            self.reducer.all_reduce_(t)
        else:
            dist.all_reduce(t)
        return float(t[0]) / self._tokens

    def rng_states(self) -> list[torch.Tensor] | None:
        return self.team.exchange(torch.get_rng_state())  # every rank's dropout stream

    def finish(self, steps: int, unit: str) -> dict[str, Any] | None:
        if self.reducer is not None:
            self.reducer.close()
        return super().finish(steps, unit)
