"""Training: any model kind on fixed-length windows of ``train.txt``'s tokens, with Adam(W) or DP-SGD.

Reads top to bottom: data (tokenized as the kind tokenizes: characters, or a learned or the
base model's tokenizer) -> model -> one loop (tqdm bar with the running loss; DP-SGD is a switch
inside it) -> validation each epoch (bits per character, and per token) -> one ``metrics.jsonl``
line per epoch -> checkpoint -> :func:`run_training`, the resumable training of a checkpoint
folder. What differs between kinds lives in ``models/training.py``. Every random choice
(initial weights, batch order) flows from ``seed``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..config import AuditConfig, ModelConfig, TrainConfig, config_from_dict
from ..data.corpus import data_path, data_spec, iter_training_text
from ..data.formats import Format
from ..data.manifest import Manifest
from ..data.records import data_sha256
from ..errors import AuditError
from ..files import atomic_write_bytes, atomic_write_json, atomic_write_text, output_dir, read_json, staging_path
from ..models.training import Tokenization, Trainee, tokenize, trainee
from ..models.training import identity as model_identity
from ..progress import Progress
from .metrics import METRICS, Hook, MetricsLog, read_metrics

LN2 = math.log(2.0)


@dataclass
class TrainData:
    train: np.ndarray  # token ids of the training text
    valid: np.ndarray  # and of the validation text
    tok: Tokenization
    info: dict[str, Any]  # hashes of the data
    train_chars: int  # characters of the training text
    valid_chars: int  # characters of the validation text (bits per character = total bits / this)
    # dp-audit's one-window layout: the last fixed_windows * (seq_len + 1) ids of ``train`` are
    # windows of their own, one per planted canary, cut out of the text stream before them
    fixed_windows: int = 0


def _scan(pieces: Iterator[str]) -> tuple[set[str], int]:
    chars: set[str] = set()
    count = 0
    for piece in pieces:
        chars.update(piece)
        count += len(piece)
    return chars, count


def load_data(folder: Path, model_cfg: ModelConfig, seq_len: int) -> TrainData:
    """Read an ``insert`` output folder, streaming, and tokenize it as ``model_cfg``'s kind does.
    A character vocabulary is every character of the training text plus every character the
    manifest's formats can produce (so never-inserted canaries can still be scored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"data folder {folder} does not exist (it is the output folder of insert)")
    spec = data_spec(folder)  # the format insert wrote: plain text, or the corpus's own records
    train_path, valid_path = data_path(folder, "train", spec), data_path(folder, "valid", spec)
    chars, n_train = _scan(iter_training_text(folder, "train", spec))
    n_valid = _scan(iter_training_text(folder, "valid", spec))[1] if valid_path.exists() else 0
    chars.add("\n")
    info: dict[str, Any] = {"train_sha256": data_sha256(train_path)}
    manifest_path = folder / "canaries.json"
    fresh, own_window, repeat, design = "", set(), False, None
    if manifest_path.exists():
        manifest = Manifest.read(manifest_path)
        if manifest.train.get("sha256") != info["train_sha256"]:
            raise AuditError(f"{folder}: {train_path.name} does not match canaries.json (changed after insert?)")
        for c in manifest.canaries:
            chars |= Format.parse(c.format).characters
        info["manifest_sha256"] = manifest.to_json()["sha256"]
        from ..audits.canary_design import fresh_of

        design = manifest.settings.get("dp_audit")
        fresh = fresh_of(design)
        if isinstance(design, dict) and design.get("one_window"):
            own_window = {c.text for c in manifest.canaries if c.planted}
            repeat = design.get("window_fill") == "repeat"
    text = lambda: iter_training_text(folder, "train", spec)  # noqa: E731
    if own_window:
        text, n_train, windows_text = _cut_canary_lines(text, own_window, 8 * (seq_len + 1))
        if repeat:  # the canary's window: its line over and over (after a newline, as it is scored)
            windows_text = ["\n" + w[w.rindex("\n", 0, len(w) - 1) + 1 :] * (seq_len + 1) for w in windows_text]
    tok = tokenize(model_cfg, text, chars=chars, fresh=fresh, seed=_seed_of(folder))
    if fresh:  # the kind's tokenize set tok.fresh_ids
        tok.fresh_alike = bool(isinstance(design, dict) and design.get("fresh_init") == "alike")
    if spec.chat and getattr(tok.tokens, "chat_template", None):
        # chat records through the tokenizer's chat template, as TRL trains on them (bits per
        # character then count the rendered text's characters)
        if own_window:
            raise AuditError(
                "dp-audit's one-window canary designs need plain text, not chat records rendered by a template"
            )
        train, n_train = _chat_ids(tok.tokens, train_path, spec)
        valid, n_valid = _chat_ids(tok.tokens, valid_path, spec) if n_valid else (train[:0], 0)
        from ..files import canonical_sha256

        info["chat_template_sha256"] = canonical_sha256(tok.tokens.chat_template)  # part of a resumable run's identity
    else:
        train = tok.encode(text, n_train)
        valid = None
    if len(train) < seq_len + 2:
        raise AuditError(f"training text has {len(train)} {tok.unit}; needs more than seq_len + 1 = {seq_len + 1}")
    fixed = 0
    if own_window:
        train, fixed = _with_own_windows(train, windows_text, tok, seq_len)
        info["own_windows"] = fixed
    if valid is None:
        valid = tok.encode(lambda: iter_training_text(folder, "valid", spec), n_valid) if n_valid else train[:0]
    return TrainData(
        train=train, valid=valid, tok=tok, info=info, train_chars=n_train, valid_chars=n_valid, fixed_windows=fixed
    )


def _seed_of(folder: Path) -> int:
    """The planting's seed (new rows of a base model's embedding are drawn from it)."""
    try:
        return int(Manifest.read(folder / "canaries.json").seed)
    except (AuditError, AttributeError, TypeError, ValueError):
        return 0


def _cut_canary_lines(text: Any, lines: set[str], tail: int) -> tuple[Any, int, list[str]]:
    """dp-audit's one-window layout, text side: the training text without the lines in
    ``lines`` (a re-readable stream, and its length), and for each cut line the text it gets
    its own window with: up to ``tail`` characters of what preceded it, then the line."""
    from ..models.training import _lines

    def cleaned() -> Iterator[str]:
        return (line for line in _lines(text) if line.rstrip("\n") not in lines)

    count, windows, before = 0, [], "\n"  # a line at the very start still follows a newline, as it is scored
    for line in _lines(text):
        if line.rstrip("\n") in lines:
            windows.append(before + (line if line.endswith("\n") else line + "\n"))
            continue
        count += len(line)
        before = (before + line)[-tail:]
    return cleaned, count, windows


def _with_own_windows(train: np.ndarray, windows_text: list[str], tok: Any, seq_len: int) -> tuple[np.ndarray, int]:
    """The stream's ids, then one window of seq_len + 1 ids per cut canary line, ending with
    the line (and its newline), after the ids of the text that preceded it."""
    width = seq_len + 1
    rows = []
    for w in windows_text:
        ids = tok.encode(lambda w=w: iter([w]), len(w))
        if len(ids) < width:  # a canary near the start of the text: fill from the stream's start
            ids = np.concatenate([train[: width - len(ids)], ids])
        rows.append(np.asarray(ids[-width:], dtype=train.dtype))
    if not rows:
        return train, 0
    return np.concatenate([train, *rows]), len(rows)


def _chat_ids(tokenizer: Any, path: Path, spec: Any) -> tuple[np.ndarray, int]:
    from ..data.records import iter_records
    from ..models.chat import encode_chat

    records = ((rec.extra["obj"][spec.field], rec.where) for rec in iter_records(path, spec) if rec.texts)
    return encode_chat(tokenizer, records)


def _windows(n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Start offsets of non-overlapping windows of seq_len + 1, at a random phase, shuffled."""
    phase = int(rng.integers(0, seq_len))
    starts = np.arange(phase, n - seq_len - 1, seq_len)
    if len(starts) == 0:
        starts = np.array([0])
    return rng.permutation(starts)


@torch.no_grad()
def evaluate(
    logits: Any, net: torch.nn.Module, ids: np.ndarray, seq_len: int, batch: int = 256
) -> tuple[float, int] | None:
    """Total bits and tokens predicted over ``ids`` (non-overlapping windows, each read from the
    start), with ``logits(net, ids)`` the kind's forward pass; None if there is nothing to score.
    Under torchrun each rank scores every world-th window and the totals are summed."""
    if len(ids) < 2:
        return None
    team = distributed.team()
    was_training = net.training
    net.eval()
    total, count = 0.0, 0
    starts = np.arange(0, len(ids) - 1, seq_len)[team.rank :: team.world]
    for lo in range(0, len(starts), batch):
        group = starts[lo : lo + batch]
        # windows of different lengths only at the very end: score the last one separately
        full = [s for s in group if s + seq_len + 1 <= len(ids)]
        rest = [s for s in group if s + seq_len + 1 > len(ids)]
        for sel, length in ((full, seq_len), *(([s], len(ids) - 1 - s) for s in rest)):
            if not sel or length < 1:
                continue
            x = torch.as_tensor(np.stack([ids[s : s + length + 1] for s in sel]).astype(np.int64))
            out = logits(net, x[:, :-1])
            loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += float(loss) / LN2
            count += x[:, 1:].numel()
    net.train(was_training)
    if team.world > 1:
        parts = team.exchange((total, count))
        total, count = sum(t for t, _ in parts), sum(c for _, c in parts)
    return total, count


def validation_record(logits: Any, net: torch.nn.Module, data: TrainData, seq_len: int) -> dict[str, float | None]:
    """Validation loss in bits per character (so model kinds compare) and per token.

    Bits per character = bits per token x tokens / characters of the validation text: each
    window's first token is read, not predicted, so the predicted tokens stand for their share."""
    result = evaluate(logits, net, data.valid, seq_len)
    if result is None:
        return {"valid_bpc": None, "valid_bits_per_token": None}
    bits, count = result
    per_token = bits / count
    return {"valid_bpc": per_token * len(data.valid) / max(data.valid_chars, 1), "valid_bits_per_token": per_token}


@dataclass
class TrainResult:
    model: Trainee  # the trained model (``model.view(...)`` scores, ``model.save(...)`` writes it)
    metrics: list[dict[str, Any]]
    seconds: float
    privacy: dict[str, Any] | None = None  # DP-SGD: epsilon, delta, noise multiplier, ...


# -- resumable training state -------------------------------------------------------------
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


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


def save_train_state(
    folder: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    pos: Position,
    identity: str,
    rng_states: Sequence[torch.Tensor] | None = None,
) -> None:
    """Everything needed to continue bit-identically: weights, Adam moments, data position and
    every RNG state (``rng_states``: every rank's torch RNG under torchrun, rank 0's first).
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
    data = save(tensors)
    atomic_write_bytes(folder / STATE_TENSORS, data)
    atomic_write_json(
        folder / STATE_JSON,
        {
            "format": "exposure-audit/train-state",
            "format_version": 1,
            "identity": identity,
            "position": asdict(pos),
            "world_size": len(rng_states),
            "tensors_sha256": hashlib.sha256(data).hexdigest(),
        },
    )


def read_train_state(folder: Path) -> tuple[dict[str, Any], bytes]:
    """The saved state's JSON and tensor bytes, checked against each other."""
    meta = read_json(folder / STATE_JSON, "training state")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != "exposure-audit/train-state"
        or meta.get("format_version") != 1
    ):
        raise AuditError(f"{folder / STATE_JSON} is not a training state this version can resume")
    path = folder / STATE_TENSORS
    if not path.is_file():
        raise AuditError(f"{folder}: {STATE_TENSORS} is missing; cannot resume")
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


def _identity(data: TrainData, model_cfg: ModelConfig, cfg: TrainConfig, seed: int) -> str:
    from ..files import canonical_sha256

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


# -- DP-SGD -------------------------------------------------------------------------------
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
class _PrivateTraining:
    """Opacus' wrappings of one training run (see :func:`_make_private`)."""

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


def _make_private(
    model: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, *, windows: int, seed: int
) -> _PrivateTraining:
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
    return _PrivateTraining(
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


def _my_rows(group: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's windows of a global batch: every world-th one from its rank. A short last
    batch can leave a rank none; it then runs the first window with a zero share of the loss."""
    mine = group[rank::world]
    return mine if len(mine) else group[:1]


def _global_mean(local_sum: float, tokens: int) -> float:
    """The global batch's mean loss from every rank's summed loss (for the bar and metrics)."""
    import torch.distributed as dist

    t = torch.tensor([local_sum], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0]) / tokens


def _fewest_windows(n: int, seq_len: int) -> int:
    """The fewest windows :func:`_windows` gives for any phase (its count varies by one)."""
    return max(1, len(range(seq_len - 1, n - seq_len - 1, seq_len)))


def train(
    data: TrainData,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int,
    quiet: bool = False,
    folder: Path | None = None,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train a fresh model of ``model_cfg``'s kind (or fine-tune its base model) on ``data``.

    Each epoch draws non-overlapping windows of ``seq_len + 1`` characters at a random phase,
    in random order (at most ``cfg.max_chars`` characters' worth), and trains on batches of them.

    With ``folder``: one JSON line per epoch goes to ``folder/metrics.jsonl``, and a training
    state every ``cfg.checkpoint_every`` steps and at each epoch end, from which
    ``resume=True`` continues to the same final weights as an uninterrupted run.
    ``hooks`` are called as ``hook(event, record, model)`` with event "step" (every step) or
    "epoch"; they may add keys to ``record`` (it becomes a metrics line at epoch ends).

    With ``cfg.dp.enabled``, DP-SGD through Opacus: batches are Poisson-sampled from the epoch's
    windows, per-window gradients are clipped to ``max_grad_norm`` and Gaussian noise is
    added; the RDP accountant tracks epsilon (in every epoch record and ``privacy``). The
    guarantee is per window: a canary inserted n times sits in up to n windows of an epoch (2n
    if its copies straddle window edges), so its own protection is that of such a group.
    With ``max_chars`` each epoch samples from a random share of the windows, and the accountant
    charges the rate within that share: an upper bound on any window's. DP-SGD runs cannot be
    resumed (the accountant's history is not saved).
    """
    team = distributed.team()
    ddp = team.world > 1
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        torch.set_num_threads(distributed.threads_per_rank() if team.active else max(1, os.cpu_count() or 1))
    if cfg.dp.enabled:
        if ddp:
            raise AuditError(DP_UNDER_TORCHRUN)
        if resume:
            raise AuditError(
                "DP-SGD runs cannot be resumed (the privacy accountant's history is not saved); start over"
            )
        check_dp(cfg)
    if ddp and cfg.batch_size < team.world:
        raise AuditError(
            f"train.batch_size {cfg.batch_size} is the global batch, smaller than the {team.world} ranks: "
            "every rank needs a window of each batch; use fewer ranks or a larger batch"
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    learner = trainee(model_cfg, data.tok, dp=cfg.dp.enabled, seq_len=cfg.seq_len)
    model = learner.module
    model.train()
    opt = learner.optimizer(cfg.learning_rate, cfg.weight_decay)
    identity = _identity(data, model_cfg, cfg, seed)
    writer = folder if team.main else None  # under torchrun only rank 0 writes
    # Every rank has the same weights (same seed) and window order (same rng); under torchrun
    # the ranks agree on that (and on a resumed state, which rank 0 reads for all of them).
    saved = read_train_state(folder) if resume and team.main and folder is not None else None
    if ddp:
        parts = team.exchange((identity, saved))
        if any(ident != identity for ident, _ in parts):
            raise AuditError("the ranks tokenized the training data differently; they must read the same data folder")
        saved = parts[0][1]
        # dropout masks: each rank its own stream (the same one would repeat masks across ranks)
        torch.manual_seed(seed + 1_000_003 * (team.rank + 1))
    pos = Position()
    metrics: list[dict[str, Any]] = []
    metrics_path = writer / METRICS if writer is not None else None
    if resume:
        if folder is None:
            raise AuditError("resuming needs the training folder")
        pos = load_train_state(folder, model, opt, identity, saved)
        if metrics_path is not None and metrics_path.exists():
            metrics = [m for m in read_metrics(metrics_path) if m["step"] <= pos.step]
            atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in metrics))
    elif metrics_path is not None and metrics_path.exists():
        metrics_path.unlink()
    # the text stream, then (dp-audit's one-window layout) windows of their own at fixed places
    n = len(data.train) - data.fixed_windows * (cfg.seq_len + 1)
    own = n + np.arange(data.fixed_windows) * (cfg.seq_len + 1)
    if cfg.dp.enabled:
        per_epoch = _fewest_windows(n, cfg.seq_len)  # Opacus samples from a population of fixed size
    else:
        per_epoch = len(_windows(n, cfg.seq_len, np.random.default_rng(0)))
    if cfg.max_chars:
        per_epoch = min(per_epoch, max(1, cfg.max_chars // cfg.seq_len))
    stream_per_epoch, per_epoch = per_epoch, per_epoch + len(own)
    batches_per_epoch = -(-per_epoch // cfg.batch_size)
    private = _make_private(model, opt, cfg, windows=per_epoch, seed=seed) if cfg.dp.enabled else None
    net, step_opt = (private.module, private.optimizer) if private else (model, opt)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model)  # averages the ranks' gradients in backward
    t_start = time.perf_counter() - pos.seconds

    log = MetricsLog(metrics_path, metrics)  # rank 0's file only (metrics_path is None elsewhere)

    def batches(starts: np.ndarray) -> Iterator[np.ndarray]:
        """The epoch's batches of window starts: in order, or Poisson-sampled for DP-SGD."""
        if private is None:
            return (starts[lo : lo + cfg.batch_size] for lo in range(0, len(starts), cfg.batch_size))
        return (starts[idx.numpy()] for (idx,) in private.loader)

    def current() -> Any:
        """The model as hooks see it (the scoring interface), in eval mode."""
        return learner.view(private is not None)

    def checkpoint() -> None:
        if folder is not None and private is None:
            pos.seconds = time.perf_counter() - t_start
            rngs = team.exchange(torch.get_rng_state()) if ddp else None  # every rank's dropout stream
            if writer is not None:
                save_train_state(writer, model, opt, pos, identity, rngs)

    # figures of a "track" line: epsilon so far, for DP-SGD (computed only if a line is written)
    extra = {"epsilon": lambda: private.epsilon(cfg.dp.delta)} if private else {}
    desc = "train (DP-SGD)" if private else "train"
    loss_unit = "bpc" if data.tok.unit == "characters" else "bits/token"
    with (
        warnings.catch_warnings(),
        Progress(total=batches_per_epoch * cfg.epochs, desc=desc, quiet=quiet, unit="batch", initial=pos.step) as bar,
    ):
        if private is not None:
            # Opacus' hooks make torch warn that no input requires grad (the input is token ids):
            # harmless. catch_warnings gives the caller its own filters back afterwards.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for epoch in range(pos.epoch, cfg.epochs + 1):
            if pos.epoch_rng is not None and epoch == pos.epoch:
                rng.bit_generator.state = pos.epoch_rng  # replay this epoch's batch order
            pos.epoch_rng = rng.bit_generator.state
            starts = _windows(n, cfg.seq_len, rng)[:stream_per_epoch]
            if len(own):
                starts = rng.permutation(np.concatenate([starts, own]))
            for b, group in enumerate(batches(starts)):
                if b < pos.batch:
                    continue  # done before the interruption
                if len(group) == 0:
                    continue  # Poisson sampling can draw an empty batch
                rows = group if not ddp else _my_rows(group, team.rank, team.world)
                x = torch.as_tensor(np.stack([data.train[s : s + cfg.seq_len + 1] for s in rows]).astype(np.int64))
                logits = learner.logits(net, x[:, :-1])
                if not ddp:
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                else:
                    # this rank's share of the global batch's mean loss, times the world size:
                    # DDP averages over ranks, so the gradient is that of the global mean
                    local = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
                    if team.rank >= len(group):
                        local = local * 0.0  # no window of a short last batch: a zero share, still all-reduced
                    loss = local * team.world / (len(group) * cfg.seq_len)
                step_opt.zero_grad(set_to_none=True)
                loss.backward()
                if private is None and cfg.grad_clip > 0:  # DP-SGD clips each window's gradient instead
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                step_opt.step()
                loss_value = loss.item() if not ddp else _global_mean(local.item(), len(group) * cfg.seq_len)
                pos.step += 1
                pos.batch = b + 1
                pos.loss_sum += loss_value * len(group)
                pos.loss_n += len(group)
                bar.update(1)
                bar.postfix(epoch=epoch, **{loss_unit: f"{loss_value / LN2:.3f}"})
                if hooks:
                    log.step_hooks(hooks, epoch, pos.step, current, time.perf_counter() - t_start, **extra)
                    model.train()
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    checkpoint()
            record = {
                "event": "epoch",
                "epoch": epoch,
                "step": pos.step,
                "train_bpc": pos.loss_sum / max(pos.loss_n, 1) / LN2 * (len(data.train) / data.train_chars),
                **validation_record(learner.logits, learner.eval_module(private is not None), data, cfg.seq_len),
                "seconds": round(time.perf_counter() - t_start, 3),
            }
            if private is not None:
                record["epsilon"] = private.epsilon(cfg.dp.delta)
            for hook in hooks:
                hook("epoch", record, current)
            model.train()
            log.add(record)
            pos.epoch, pos.batch, pos.loss_sum, pos.loss_n = epoch + 1, 0, 0.0, 0
            pos.epoch_rng = rng.bit_generator.state
            checkpoint()
    seconds = time.perf_counter() - t_start
    if private is None:
        model.eval()
        return TrainResult(model=learner, metrics=log.records, seconds=seconds)
    privacy = {
        "mechanism": "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
        "epsilon": private.epsilon(cfg.dp.delta),
        "delta": cfg.dp.delta,
        "noise_multiplier": private.noise_multiplier,
        "max_grad_norm": cfg.dp.max_grad_norm,
        "sample_rate": private.sample_rate,
        "steps": pos.step,
        "unit": f"one window of {cfg.seq_len + 1} {data.tok.unit}",
    }
    if private.broken_no_noise:
        privacy["broken_no_noise"] = True  # the epsilon above is claimed, not delivered
        privacy["mechanism"] = "BROKEN DP-SGD (auditor check): clipping, NO noise; epsilon is the noisy run's claim"
    return TrainResult(model=learner, metrics=log.records, seconds=seconds, privacy=privacy)


def train_folder(
    data_dir: Path,
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int,
    quiet: bool = False,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train from an ``insert`` folder into ``out_dir`` (a staging folder), resumable."""
    data = load_data(data_dir, model_cfg, cfg.seq_len)
    if cfg.dp.enabled:
        check_dp(cfg)
    hooks = list(hooks)
    if cfg.track.enabled:
        from .tracking import ExposureTracker

        manifest_path = Path(data_dir) / "canaries.json"
        if not manifest_path.exists():
            raise AuditError(f"exposure tracking needs {manifest_path} (the data folder of insert)")
        hooks.append(ExposureTracker(Manifest.read(manifest_path).canaries, cfg.track, seed))
    result = train(data, model_cfg, cfg, seed=seed, quiet=quiet, folder=Path(out_dir), resume=resume, hooks=hooks)
    if not distributed.is_main():  # under torchrun rank 0 writes the checkpoint
        return result
    for name in (STATE_TENSORS, STATE_JSON):
        (Path(out_dir) / name).unlink(missing_ok=True)  # a finished checkpoint needs no resume state
    result.model.save(
        Path(out_dir),
        {
            "seed": seed,
            "training": {**asdict(cfg), "seconds": round(result.seconds, 3), "steps": result.metrics[-1]["step"]},
            "data": data.info,
            "final": result.metrics[-1],
            **({"privacy": result.privacy} if result.privacy else {}),
        },
    )
    return result


# -- the resumable training of a checkpoint folder ----------------------------------------
RUN_JSON = "run.json"  # in the staging folder: the data folder and settings, for resuming


def run_training(
    data_dir: Path | None,
    out: Path,
    cfg: AuditConfig | None,
    *,
    resume: bool = False,
    force: bool = False,
    quiet: bool = False,
) -> TrainResult:
    """Train on the ``insert`` folder ``data_dir`` with ``cfg`` (its seed, model and train
    sections) into the checkpoint folder ``out``, surviving a killed process.

    The work goes to a fixed staging folder beside ``out`` that also holds the data folder and
    settings (``run.json``) and the latest training state; ``out`` appears in one rename at the
    end. After a crash, ``resume=True`` (with ``data_dir`` and ``cfg`` None: the saved ones are
    used) continues to the same weights as an uninterrupted run. ``force`` discards an
    interrupted run and replaces an existing ``out``.
    """
    out = Path(out)
    staging = staging_path(out, "train")
    team = distributed.team()
    if not team.main:
        # Under torchrun rank 0 checks, reads and writes; the others train from its run description.
        data_dir, config = team.exchange()[0]
        cfg = config_from_dict(config, "the run description of rank 0")
        return train_folder(Path(data_dir), staging, cfg.model, cfg.train, seed=cfg.seed, quiet=True, resume=resume)
    if resume:
        if data_dir is not None or cfg is not None:
            raise AuditError("resuming continues with the saved data folder and settings; give neither")
        if not (staging / STATE_JSON).is_file():
            raise AuditError(f"no interrupted training of {out} to resume (nothing saved in {staging})")
        run = read_json(staging / RUN_JSON, "training run description")
        if not isinstance(run, dict) or not isinstance(run.get("data"), str) or "config" not in run:
            raise AuditError(f"{staging / RUN_JSON} is not a training run description; cannot resume")
        cfg = config_from_dict(run["config"], str(staging / RUN_JSON))
        data_dir = Path(run["data"])
    else:
        if data_dir is None or cfg is None:
            raise AuditError("training needs a data folder and settings (or resume)")
        if staging.exists():
            if not force:
                raise AuditError(
                    f"an interrupted training of {out} is saved in {staging}; resume it, or force a fresh start"
                )
            shutil.rmtree(staging)
    if team.active:
        team.exchange((str(Path(data_dir).resolve()), cfg.to_dict()))
    with output_dir(out, force, staging=staging, resumable=lambda d: (d / STATE_JSON).is_file()) as tmp:
        if not resume:
            atomic_write_json(tmp / RUN_JSON, {"data": str(Path(data_dir).resolve()), "config": cfg.to_dict()})
        result = train_folder(data_dir, tmp, cfg.model, cfg.train, seed=cfg.seed, quiet=quiet, resume=resume)
        (tmp / RUN_JSON).unlink(missing_ok=True)
    return result
