"""Resumable training state: weights, optimizer moments, every RNG state, the data
:class:`Position` and what the training strategy keeps (DP-SGD: the privacy accountant's
history and the Poisson sampler's generator), saved so that a killed run continues
bit-identically."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..config import ModelConfig, TrainConfig
from ..errors import AuditError
from ..files import atomic_write_bytes, atomic_write_json, read_json
from .data import TrainData

STATE_TENSORS = "train_state.safetensors"  # the tensors' name before each save had its own (still read)
STATE_JSON = "train_state.json"
TENSORS_GLOB = "train_state*.safetensors"


def tensors_name(sha256: str) -> str:
    """Each save's tensors under a name of their own (their SHA-256 prefix): a kill between
    writing them and the JSON that names them leaves the previous pair whole."""
    return f"train_state.{sha256[:16]}.safetensors"


def remove_train_state(folder: Path) -> None:
    """Delete a saved resume state (the JSON first: without it nothing is resumed)."""
    (folder / STATE_JSON).unlink(missing_ok=True)
    for path in folder.glob(TENSORS_GLOB):
        path.unlink(missing_ok=True)


@dataclass
class Position:
    """Where training stands: ``batch`` batches of ``epoch`` (1-based) are done."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    seconds: float = 0.0
    epoch_rng: dict[str, Any] | None = None  # numpy generator state at the start of this epoch


@dataclass
class StrategyState:
    """What a training strategy saves beside the weights (see ``strategy.Strategy.state``):
    tensors (into the safetensors file, as ``strategy.<name>``) and JSON."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def save_train_state(
    folder: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    pos: Position,
    identity: str,
    rng_states: Sequence[torch.Tensor] | None = None,
    extra: StrategyState | None = None,
) -> None:
    """Everything needed to continue bit-identically: weights, Adam moments, data position,
    every RNG state (``rng_states``: every rank's torch RNG under torchrun, rank 0's first) and
    the strategy's own state (``extra``).
    Tensors go to safetensors (no pickle), the rest to JSON; the JSON holds the tensors' SHA-256
    and the world size, and is written last, so it is the commit point."""
    from safetensors.torch import save

    rng_states = list(rng_states) if rng_states is not None else [torch.get_rng_state()]

    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p, {})
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{i}.{key}"] = t.detach().clone().contiguous()
    tensors["rng.torch"] = rng_states[0].clone()
    for rank, state in enumerate(rng_states[1:], 1):
        tensors[f"rng.torch.{rank}"] = state.clone()
    for name, value in (extra.tensors if extra else {}).items():
        tensors[f"strategy.{name}"] = value.detach().clone().contiguous()
    data = save(tensors)
    sha = hashlib.sha256(data).hexdigest()
    name = tensors_name(sha)
    atomic_write_bytes(folder / name, data)
    meta = {
        "format": "exposure-audit/train-state",
        "format_version": 1,
        "identity": identity,
        "position": asdict(pos),
        "world_size": len(rng_states),
        "tensors_sha256": sha,
        "tensors_file": name,
    }
    if extra is not None:
        meta["strategy"] = extra.meta
    atomic_write_json(folder / STATE_JSON, meta)  # the commit point
    for old in folder.glob(TENSORS_GLOB):  # the previous saves' tensors, now unreferenced
        if old.name != name:
            old.unlink(missing_ok=True)


def read_train_state(folder: Path) -> tuple[dict[str, Any], bytes]:
    """The saved state's JSON and tensor bytes, checked against each other."""
    meta = read_json(folder / STATE_JSON, "training state")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != "exposure-audit/train-state"
        or meta.get("format_version") != 1
    ):
        raise AuditError(f"{folder / STATE_JSON} is not a training state this version can resume")
    name = meta.get("tensors_file", STATE_TENSORS)
    if not isinstance(name, str) or not Path(name).match(TENSORS_GLOB) or Path(name).name != name:
        raise AuditError(f"{folder / STATE_JSON}: tensors_file {name!r} is not a training state's tensors file")
    path = folder / name
    if not path.is_file():
        raise AuditError(f"{folder}: {name} is missing; cannot resume")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta.get("tensors_sha256"):
        raise AuditError(f"{path} does not match its sha256 (damaged); cannot resume")
    return meta, raw


def load_train_state(
    folder: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    identity: str,
    saved: tuple[dict[str, Any], bytes] | None = None,
) -> Position:
    """Restore a saved state (``saved``: one already read, e.g. by rank 0 for every rank)."""
    from safetensors.torch import load

    meta, raw = saved if saved is not None else read_train_state(folder)
    if meta.get("identity") != identity:
        raise AuditError(f"{folder}: the saved training state belongs to other data or settings; cannot resume")
    team = distributed.team()
    saved_world = int(meta.get("world_size", 1))
    if saved_world != team.world:
        raise AuditError(
            f"{folder}: the interrupted training ran on {saved_world} rank(s), this run has {team.world}; "
            f"resume it with {saved_world} (torchrun --nproc-per-node/--nnodes)"
        )
    tensors = load(raw)
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    params = list(model.parameters())
    for i, p in enumerate(params):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
        if st:
            opt.state[p] = st
    torch.set_rng_state(tensors["rng.torch" if team.rank == 0 else f"rng.torch.{team.rank}"])
    return Position(**meta["position"])


def strategy_state(saved: tuple[dict[str, Any], bytes]) -> StrategyState | None:
    """The strategy's part of a saved state (None if the run saved none)."""
    from safetensors.torch import load

    meta, raw = saved
    if "strategy" not in meta:
        return None
    tensors = {k[len("strategy.") :]: v for k, v in load(raw).items() if k.startswith("strategy.")}
    return StrategyState(tensors=tensors, meta=meta["strategy"])


def run_identity(data: TrainData, model_cfg: ModelConfig, cfg: TrainConfig, seed: int) -> str:
    """The run's identity: a saved state resumes only a run of the same data and settings."""
    from ..files import canonical_sha256
    from ..models.training import identity as model_identity

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "checkpoint_every")}
    return canonical_sha256(
        {
            "data": data.info,
            "model": model_identity(model_cfg),  # flat, as before model.char_lstm
            "train": settings,
            "seed": seed,
            "tokens": data.tok.fingerprint,
        }
    )
