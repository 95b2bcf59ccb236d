"""DP-SGD through Opacus: the request's checks (:func:`check_dp`), the wrapping of a model and
optimizer (:func:`make_private`, which solves the noise for a target epsilon first, as
opacus' ``make_private_with_epsilon`` does), and :class:`Private`, the training strategy.

Batches are Poisson-sampled from the epoch's windows, per-window gradients are clipped to
``max_grad_norm`` and Gaussian noise is added; the RDP accountant tracks epsilon. A resume
state holds the accountant's history and the Poisson sampler's generator (the noise draws
from torch's RNG, saved with every state), so a resumed private run ends with the same
weights and the same epsilon as an uninterrupted one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import AuditError
from .state import StrategyState
from .strategy import Plain

ACCOUNTANT = "rdp"


def check_dp(cfg: TrainConfig) -> None:
    """Reject an impossible DP request before any training starts."""
    dp = cfg.dp
    if (dp.noise_multiplier is None) == (dp.target_epsilon is None):
        raise AuditError("DP-SGD needs exactly one of noise_multiplier and target_epsilon")
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise AuditError("DP-SGD needs opacus: pip install 'exposure-audit[dp]' torch==2.13.0") from None


@dataclass
class PrivateTraining:
    """Opacus' wrappings of one training run (see :func:`make_private`)."""

    engine: Any  # opacus.PrivacyEngine: its accountant tracks epsilon
    module: torch.nn.Module  # the model, also computing per-example gradients
    optimizer: torch.optim.Optimizer  # clips per-example gradients, adds the noise
    loader: Any  # Poisson-sampled batches of positions 0..windows-1 into each epoch's windows
    noise_multiplier: float  # the noise the epsilon is computed for (the claim)
    sample_rate: float
    broken_no_noise: bool = False  # auditor check: the optimizer adds no noise at all

    def epsilon(self, delta: float) -> float:
        with warnings.catch_warnings():
            # large noise puts the optimum at the accountant's largest order: a looser claim, never a wrong one
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return self._epsilon(delta)

    def _epsilon(self, delta: float) -> float:
        if not self.broken_no_noise:
            return float(self.engine.get_epsilon(delta))
        # The accountant saw noise 0 (epsilon infinite); the broken run records the claim of
        # the noisy run it pretends to be: the same steps and rate at the solved noise.
        from opacus.accountants import RDPAccountant

        claim = RDPAccountant()
        claim.history = [(self.noise_multiplier, q, n) for (_, q, n) in self.engine.accountant.history]
        return float(claim.get_epsilon(delta)) if claim.history else 0.0


def make_private(
    model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, *, windows: int, seed: int
) -> PrivateTraining:
    """Wrap ``model`` and ``opt`` for DP-SGD over ``windows`` windows an epoch.

    The examples Opacus samples are positions into the epoch's windows, so the loop can draw
    each epoch's windows as the non-private path does while Opacus' sampler includes each one
    in a batch independently, at the rate its accountant charges: one over the batches per
    epoch. With a target epsilon the noise is solved for that rate and schedule first."""
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from torch.utils.data import DataLoader, TensorDataset

    dp = cfg.dp
    positions = DataLoader(
        TensorDataset(torch.arange(windows)),
        batch_size=cfg.batch_size,
        generator=torch.Generator().manual_seed(seed),  # the sampler's randomness
    )
    sample_rate = 1 / len(positions)  # make_private's own choice, for its sampler and accountant
    noise = dp.noise_multiplier
    if dp.target_epsilon is not None:
        with warnings.catch_warnings():
            # The search evaluates epsilon at noise levels far from the answer, where the accountant
            # warns that a wider range of orders would give a tighter bound. Only here: the epsilon
            # reported after training is computed outside this filter.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            try:
                noise = get_noise_multiplier(
                    target_epsilon=dp.target_epsilon,
                    target_delta=dp.delta,
                    sample_rate=sample_rate,
                    steps=cfg.epochs * len(positions),
                    accountant=ACCOUNTANT,
                )
            except ValueError as e:
                raise AuditError(
                    f"DP-SGD: {e} (target epsilon {dp.target_epsilon} cannot be reached with this schedule?)"
                ) from None
    with warnings.catch_warnings():
        # Opacus warns that its RNG is not cryptographically secure: reproducibility wants the seeded one
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=ACCOUNTANT)
    module, optimizer, loader = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=positions,
        # broken_no_noise (an auditor check, never a default): clipping stays, the noise goes
        noise_multiplier=0.0 if dp.broken_no_noise else noise,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
    )
    return PrivateTraining(
        engine=engine,
        module=module,
        optimizer=optimizer,
        loader=loader,
        noise_multiplier=float(noise),
        sample_rate=sample_rate,
        broken_no_noise=dp.broken_no_noise,
    )


DP_UNDER_TORCHRUN = (
    "DP-SGD under torchrun is refused: Opacus' distributed Poisson sampler can give a rank an empty "
    "batch, which this loop skips while DDP needs every rank in each gradient all-reduce; train with "
    "DP-SGD in one process"
)


class Private(Plain):
    """DP-SGD in one process: Opacus' Poisson-sampled batches, per-window clipping and noise,
    and epsilon in every epoch record (and "track" line) and in the run's privacy record."""

    desc = "train (DP-SGD)"
    private = True

    def __init__(self, cfg: TrainConfig) -> None:
        super().__init__(cfg)
        if self.team.world > 1:
            raise AuditError(DP_UNDER_TORCHRUN)
        check_dp(cfg)
        self._epoch_sampler: torch.Tensor | None = None  # the sampler's generator at the epoch's start

    def windows_per_epoch(self, n: int, seq_len: int) -> int:
        from .data import fewest_windows

        return fewest_windows(n, seq_len)  # Opacus samples from a population of fixed size

    def wrap(self, model: torch.nn.Module, opt: torch.optim.Optimizer, windows: int, seed: int) -> None:
        self.model = model
        self.dp = make_private(model, opt, self.cfg, windows=windows, seed=seed)
        self.net, self.optimizer = self.dp.module, self.dp.optimizer

    @property
    def _sampler(self) -> torch.Generator:
        return self.dp.loader.generator  # Poisson sampling's (and the loader's own seed draw)

    def restore(self, state: StrategyState | None) -> None:
        if state is None:
            raise AuditError("the saved training state holds no privacy accountant; cannot resume a DP-SGD run")
        accountant = self.dp.engine.accountant
        saved = state.meta.get("accountant")
        if not isinstance(saved, dict) or saved.get("mechanism") != accountant.mechanism():
            raise AuditError(f"the saved privacy accountant is not Opacus' {accountant.mechanism()}; cannot resume")
        accountant.load_state_dict({**saved, "history": [tuple(h) for h in saved["history"]]})
        self._epoch_sampler = state.tensors["sampler"]

    def start_epoch(self, replay: bool) -> None:
        if replay and self._epoch_sampler is not None:
            self._sampler.set_state(self._epoch_sampler)  # replay this epoch's Poisson draws
        self._epoch_sampler = self._sampler.get_state()

    def end_epoch(self) -> None:
        self._epoch_sampler = self._sampler.get_state()

    def batches(self, starts: np.ndarray) -> Iterator[np.ndarray]:
        """Poisson-sampled positions into the epoch's windows (a batch may be empty)."""
        return (starts[idx.numpy()] for (idx,) in self.dp.loader)

    def clip(self) -> None:
        """Nothing: DP-SGD clips each window's gradient instead."""

    def state(self) -> StrategyState | None:
        accountant = dict(self.dp.engine.accountant.state_dict())
        accountant["history"] = [list(h) for h in accountant["history"]]
        return StrategyState(tensors={"sampler": self._epoch_sampler}, meta={"accountant": accountant})

    def figures(self) -> dict[str, Callable[[], Any]]:
        return {"epsilon": lambda: self.dp.epsilon(self.cfg.dp.delta)}

    def quiet(self) -> None:
        # Opacus' hooks make torch warn that no input requires grad (the input is token ids): harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def finish(self, steps: int, unit: str) -> dict[str, Any] | None:
        dp, cfg = self.dp, self.cfg
        privacy = {
            "mechanism": "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
            "epsilon": dp.epsilon(cfg.dp.delta),
            "delta": cfg.dp.delta,
            "noise_multiplier": dp.noise_multiplier,
            "max_grad_norm": cfg.dp.max_grad_norm,
            "sample_rate": dp.sample_rate,
            "steps": steps,
            "unit": f"one window of {cfg.seq_len + 1} {unit}",
        }
        if dp.broken_no_noise:
            privacy["broken_no_noise"] = True  # the epsilon above is claimed, not delivered
            privacy["mechanism"] = "BROKEN DP-SGD (auditor check): clipping, NO noise; epsilon is the noisy run's claim"
        return privacy
