"""Training: the char-LSTM on fixed-length sequences of ``train.txt``, with Adam.

Reads top to bottom: data -> model -> loop (tqdm bar with the running loss) -> validation
each epoch (bits per character) -> one ``metrics.jsonl`` line per epoch -> checkpoint.
Every random choice (initial weights, batch order) flows from ``seed``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, TrainConfig
from .errors import AuditError
from .files import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, sha256_file
from .formats import Format
from .manifest import Manifest
from .models.charlstm import CharLSTM, CharLSTMConfig, save_checkpoint
from .models.vocab import Vocabulary
from .progress import Progress

LN2 = math.log(2.0)


@dataclass
class TrainData:
    train: np.ndarray
    valid: np.ndarray
    vocab: Vocabulary
    info: dict[str, Any]


IN_MEMORY_CHARS = 1 << 26  # larger texts are encoded into a memory-mapped temporary file


def _chunks(path: Path, what: str, size: int = 1 << 24) -> Iterator[str]:
    """The text of ``path`` in pieces, decoded strictly; NUL bytes and invalid UTF-8 are errors
    naming the byte offset. Streaming: memory stays bounded whatever the file's size."""
    if not path.is_file():
        raise AuditError(f"{what} {path} is missing")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    with open(path, "rb") as fh:
        while raw := fh.read(size):
            nul = raw.find(b"\0")
            if nul >= 0:
                raise AuditError(f"{what} {path} looks binary: NUL byte at byte offset {offset + nul}")
            try:
                yield decoder.decode(raw)
            except UnicodeDecodeError as e:
                raise AuditError(
                    f"{what} {path} is not UTF-8: invalid byte at byte offset {offset + e.start}"
                ) from None
            offset += len(raw)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise AuditError(f"{what} {path} is not UTF-8: truncated character at byte offset {offset}") from None


def _encode_file(path: Path, vocab: Vocabulary, count: int, what: str) -> np.ndarray:
    """Character ids of a text file as 16-bit integers (32 if the vocabulary needs it), in memory
    up to IN_MEMORY_CHARS characters, else in a memory-mapped temporary file."""
    dtype = np.uint16 if len(vocab) < 65536 else np.int32
    if count <= IN_MEMORY_CHARS:
        out = np.empty(count, dtype=dtype)
    else:
        out = np.memmap(tempfile.TemporaryFile(prefix="exposure-audit-ids-"), dtype=dtype, mode="w+", shape=(count,))
    pos = 0
    for piece in _chunks(path, what):
        out[pos : pos + len(piece)] = vocab.encode(piece)
        pos += len(piece)
    return out


def _scan(path: Path, what: str) -> tuple[set[str], int]:
    chars: set[str] = set()
    count = 0
    for piece in _chunks(path, what):
        chars.update(piece)
        count += len(piece)
    return chars, count


def load_data(folder: Path, seq_len: int) -> TrainData:
    """Read an ``insert`` output folder, streaming. The vocabulary is every character of the
    training text plus every character the manifest's formats can produce (so never-inserted
    canaries can still be scored), plus the unknown symbol."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"data folder {folder} does not exist (it is the --out of 'exposure-audit insert')")
    train_path, valid_path = folder / "train.txt", folder / "valid.txt"
    chars, n_train = _scan(train_path, "training text")
    n_valid = _scan(valid_path, "validation text")[1] if valid_path.exists() else 0
    chars.add("\n")
    info: dict[str, Any] = {"train_sha256": sha256_file(train_path)}
    manifest_path = folder / "canaries.json"
    if manifest_path.exists():
        manifest = Manifest.read(manifest_path)
        if manifest.train.get("sha256") != info["train_sha256"]:
            raise AuditError(f"{folder}: train.txt does not match canaries.json (changed after insert?)")
        for c in manifest.canaries:
            chars |= Format.parse(c.format).characters
        info["manifest_sha256"] = manifest.to_json()["sha256"]
    vocab = Vocabulary.from_chars(chars)
    if n_train < seq_len + 2:
        raise AuditError(f"training text has {n_train} characters; needs more than seq_len + 1 = {seq_len + 1}")
    train = _encode_file(train_path, vocab, n_train, "training text")
    valid = _encode_file(valid_path, vocab, n_valid, "validation text") if n_valid else np.zeros(0, dtype=train.dtype)
    return TrainData(train=train, valid=valid, vocab=vocab, info=info)


def _windows(n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Start offsets of non-overlapping windows of seq_len + 1, at a random phase, shuffled."""
    phase = int(rng.integers(0, seq_len))
    starts = np.arange(phase, n - seq_len - 1, seq_len)
    if len(starts) == 0:
        starts = np.array([0])
    return rng.permutation(starts)


@torch.no_grad()
def evaluate_bpc(model: CharLSTM, ids: np.ndarray, seq_len: int, batch: int = 256) -> float | None:
    """Mean bits per character of ``ids`` (non-overlapping windows, each from a zero state)."""
    if len(ids) < 2:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = np.arange(0, len(ids) - 1, seq_len)
    for lo in range(0, len(starts), batch):
        group = starts[lo : lo + batch]
        # windows of different lengths only at the very end: score the last one separately
        full = [s for s in group if s + seq_len + 1 <= len(ids)]
        rest = [s for s in group if s + seq_len + 1 > len(ids)]
        for sel, length in ((full, seq_len), *(([s], len(ids) - 1 - s) for s in rest)):
            if not sel or length < 1:
                continue
            x = torch.as_tensor(np.stack([ids[s : s + length + 1] for s in sel]).astype(np.int64))
            logits, _ = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count / LN2


@dataclass
class TrainResult:
    model: CharLSTM
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


def save_train_state(folder: Path, model: CharLSTM, opt: torch.optim.Optimizer, pos: Position, identity: str) -> None:
    """Everything needed to continue bit-identically: weights, Adam moments, data position and
    every RNG state. Tensors go to safetensors (no pickle), the rest to JSON; the JSON holds
    the tensors' SHA-256 and is written last, so it is the commit point."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p, {})
        for key, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{i}.{key}"] = t.detach().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    data = save(tensors)
    atomic_write_bytes(folder / STATE_TENSORS, data)
    atomic_write_json(
        folder / STATE_JSON,
        {
            "format": "exposure-audit/train-state",
            "format_version": 1,
            "identity": identity,
            "position": asdict(pos),
            "tensors_sha256": hashlib.sha256(data).hexdigest(),
        },
    )


def load_train_state(folder: Path, model: CharLSTM, opt: torch.optim.Optimizer, identity: str) -> Position:
    from safetensors.torch import load

    meta = read_json(folder / STATE_JSON, "training state")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != "exposure-audit/train-state"
        or meta.get("format_version") != 1
    ):
        raise AuditError(f"{folder / STATE_JSON} is not a training state this version can resume")
    if meta.get("identity") != identity:
        raise AuditError(f"{folder}: the saved training state belongs to other data or settings; cannot resume")
    path = folder / STATE_TENSORS
    if not path.is_file():
        raise AuditError(f"{folder}: {STATE_TENSORS} is missing; cannot resume")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta.get("tensors_sha256"):
        raise AuditError(f"{path} does not match its sha256 (damaged); cannot resume")
    tensors = load(raw)
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    params = list(model.parameters())
    for i, p in enumerate(params):
        st = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"optim.{i}.")}
        if st:
            opt.state[p] = st
    torch.set_rng_state(tensors["rng.torch"])
    return Position(**meta["position"])


def _identity(data: TrainData, model_cfg: ModelConfig, cfg: TrainConfig, seed: int) -> str:
    from .files import canonical_sha256

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("threads", "checkpoint_every")}
    return canonical_sha256(
        {
            "data": data.info,
            "model": asdict(model_cfg),
            "train": settings,
            "seed": seed,
            "vocab": list(data.vocab.chars),
        }
    )


# hook(event, record, model_fn): event "step" (every step) or "epoch"; model_fn() returns the
# model in eval mode. A hook may add keys to record: an epoch record is then written with them,
# and a step record with added keys is written as a "track" line.
Hook = Callable[[str, dict[str, Any], Callable[[], CharLSTM]], None]


class MetricsLog:
    """``metrics.jsonl``: one JSON object a line (epoch records and "track" records), appended
    as training goes, so an interrupted run keeps what it measured."""

    def __init__(self, path: Path | None, records: Sequence[dict[str, Any]] = ()) -> None:
        self.path = path
        self.records = list(records)

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def step_hooks(
        self,
        hooks: Sequence[Hook],
        epoch: int,
        step: int,
        model_fn: Callable[[], CharLSTM],
        seconds: float,
        **extra: Any,
    ) -> None:
        """Run the per-step hooks; log a "track" line if any of them added figures."""
        track: dict[str, Any] = {"event": "track", "epoch": epoch, "step": step}
        for hook in hooks:
            hook("step", track, model_fn)
        if len(track) > 3:
            track["seconds"] = round(seconds, 3)
            track.update({k: v() if callable(v) else v for k, v in extra.items()})
            self.add(track)


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
    """Train a fresh char-LSTM on ``data``.

    With ``folder``: one JSON line per epoch goes to ``folder/metrics.jsonl``, and a training
    state every ``cfg.checkpoint_every`` steps and at each epoch end, from which
    ``resume=True`` continues to the same final weights as an uninterrupted run.
    ``hooks`` are called as ``hook(event, record, model)`` with event "step" (every step) or
    "epoch"; they may add keys to ``record`` (it becomes a metrics line at epoch ends).
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    if cfg.dp.enabled:
        if resume:
            raise AuditError(
                "DP-SGD runs cannot be resumed (the privacy accountant's history is not saved); start over"
            )
        return train_dp(data, model_cfg, cfg, seed=seed, quiet=quiet, folder=folder, hooks=hooks)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CharLSTM(data.vocab, CharLSTMConfig(**asdict(model_cfg)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    identity = _identity(data, model_cfg, cfg, seed)
    pos = Position()
    metrics: list[dict[str, Any]] = []
    metrics_path = folder / "metrics.jsonl" if folder is not None else None
    if resume:
        if folder is None:
            raise AuditError("resuming needs the training folder")
        pos = load_train_state(folder, model, opt, identity)
        if metrics_path is not None and metrics_path.exists():
            lines = metrics_path.read_text(encoding="utf-8").splitlines()
            metrics = [m for m in (json.loads(line) for line in lines if line.strip()) if m["step"] <= pos.step]
            atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in metrics))
    elif metrics_path is not None and metrics_path.exists():
        metrics_path.unlink()
    n = len(data.train)
    per_epoch = len(_windows(n, cfg.seq_len, np.random.default_rng(0)))
    if cfg.max_chars:
        per_epoch = min(per_epoch, max(1, cfg.max_chars // cfg.seq_len))
    batches_per_epoch = -(-per_epoch // cfg.batch_size)
    t_start = time.perf_counter() - pos.seconds

    log = MetricsLog(metrics_path, metrics)

    def current() -> CharLSTM:
        model.eval()
        return model

    def checkpoint() -> None:
        if folder is not None:
            pos.seconds = time.perf_counter() - t_start
            save_train_state(folder, model, opt, pos, identity)

    with Progress(
        total=batches_per_epoch * cfg.epochs, desc="train", quiet=quiet, unit="batch", initial=pos.step
    ) as bar:
        for epoch in range(pos.epoch, cfg.epochs + 1):
            if pos.epoch_rng is not None and epoch == pos.epoch:
                rng.bit_generator.state = pos.epoch_rng  # replay this epoch's batch order
            pos.epoch_rng = rng.bit_generator.state
            starts = _windows(n, cfg.seq_len, rng)[:per_epoch]
            for b, lo in enumerate(range(0, len(starts), cfg.batch_size)):
                if b < pos.batch:
                    continue  # done before the interruption
                group = starts[lo : lo + cfg.batch_size]
                x = torch.as_tensor(np.stack([data.train[s : s + cfg.seq_len + 1] for s in group]).astype(np.int64))
                logits, _ = model(x[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                loss_value = loss.item()
                pos.step += 1
                pos.batch = b + 1
                pos.loss_sum += loss_value * len(group)
                pos.loss_n += len(group)
                bar.update(1)
                bar.postfix(epoch=epoch, bpc=f"{loss_value / LN2:.3f}")
                if hooks:
                    log.step_hooks(hooks, epoch, pos.step, current, time.perf_counter() - t_start)
                    model.train()
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    checkpoint()
            record = {
                "event": "epoch",
                "epoch": epoch,
                "step": pos.step,
                "train_bpc": pos.loss_sum / pos.loss_n / LN2,
                "valid_bpc": evaluate_bpc(model, data.valid, cfg.seq_len),
                "seconds": round(time.perf_counter() - t_start, 3),
            }
            for hook in hooks:
                hook("epoch", record, current)
            model.train()
            log.add(record)
            pos.epoch, pos.batch, pos.loss_sum, pos.loss_n = epoch + 1, 0, 0.0, 0
            pos.epoch_rng = rng.bit_generator.state
            checkpoint()
    model.eval()
    return TrainResult(model=model, metrics=log.records, seconds=time.perf_counter() - t_start)


def check_dp(cfg: TrainConfig) -> None:
    """Reject an impossible DP request before any training starts."""
    dp = cfg.dp
    if (dp.noise_multiplier is None) == (dp.target_epsilon is None):
        raise AuditError("--dp needs exactly one of --noise-multiplier and --target-epsilon")
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise AuditError("DP-SGD needs opacus: pip install 'exposure-audit[dp]' torch==2.13.0") from None


def train_dp(
    data: TrainData,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int,
    quiet: bool = False,
    folder: Path | None = None,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """DP-SGD through Opacus: each training example is one window of ``seq_len + 1`` characters
    (non-overlapping); batches are Poisson-sampled; per-example gradients are clipped to
    ``max_grad_norm`` and Gaussian noise is added; the RDP accountant tracks epsilon.

    The guarantee is per window. A canary inserted n times sits in up to n windows, so its own
    protection is that of a group of n (roughly n times epsilon)."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    check_dp(cfg)
    dp = cfg.dp
    torch.manual_seed(seed)
    model = CharLSTM(data.vocab, CharLSTMConfig(**asdict(model_cfg)), dp=True)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = len(data.train)
    starts = np.arange(0, n - cfg.seq_len - 1, cfg.seq_len)
    windows = torch.as_tensor(np.stack([data.train[s : s + cfg.seq_len + 1] for s in starts]).astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(windows), batch_size=cfg.batch_size, shuffle=True, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus warns about secure RNG; reproducibility wants the seeded one
        engine = PrivacyEngine(accountant="rdp")
        try:
            if dp.target_epsilon is not None:
                private, opt, loader = engine.make_private_with_epsilon(
                    module=model,
                    optimizer=opt,
                    data_loader=loader,
                    target_epsilon=dp.target_epsilon,
                    target_delta=dp.delta,
                    epochs=cfg.epochs,
                    max_grad_norm=dp.max_grad_norm,
                    poisson_sampling=True,
                )
            else:
                private, opt, loader = engine.make_private(
                    module=model,
                    optimizer=opt,
                    data_loader=loader,
                    noise_multiplier=dp.noise_multiplier,
                    max_grad_norm=dp.max_grad_norm,
                    poisson_sampling=True,
                )
        except ValueError as e:
            raise AuditError(
                f"DP-SGD: {e} (target epsilon {dp.target_epsilon} cannot be reached with this schedule?)"
            ) from None
    noise = float(opt.noise_multiplier)
    metrics_path = folder / "metrics.jsonl" if folder is not None else None
    if metrics_path is not None and metrics_path.exists():
        metrics_path.unlink()
    log = MetricsLog(metrics_path)
    t0 = time.perf_counter()
    step = 0

    def plain() -> CharLSTM:
        """A copy with torch's own LSTM, for measuring and saving (same weights and names)."""
        m = CharLSTM(data.vocab, CharLSTMConfig(**asdict(model_cfg)))
        # each part's own state_dict: DPLSTM renames its parameters to nn.LSTM's names only there
        state = {
            f"{name}.{k}": v for name in ("embed", "lstm", "head") for k, v in getattr(model, name).state_dict().items()
        }
        m.load_state_dict(state)
        return m.eval()

    # Opacus' hooks make torch warn that no input requires grad (the input is token ids): harmless.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    with Progress(total=len(loader) * cfg.epochs, desc="train (DP-SGD)", quiet=quiet, unit="batch") as bar:
        for epoch in range(1, cfg.epochs + 1):
            loss_sum, loss_n = 0.0, 0
            for (x,) in loader:
                if x.shape[0] == 0:
                    continue  # Poisson sampling can draw an empty batch
                logits, _ = private(x[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                loss_value = loss.item()
                loss_sum += loss_value * x.shape[0]
                loss_n += x.shape[0]
                bar.update(1)
                bar.postfix(epoch=epoch, bpc=f"{loss_value / LN2:.3f}")
                if hooks:
                    epsilon_now = lambda: float(engine.get_epsilon(dp.delta))  # noqa: E731
                    log.step_hooks(hooks, epoch, step, plain, time.perf_counter() - t0, epsilon=epsilon_now)
            epsilon = float(engine.get_epsilon(dp.delta))
            record = {
                "event": "epoch",
                "epoch": epoch,
                "step": step,
                "train_bpc": loss_sum / max(loss_n, 1) / LN2,
                "valid_bpc": evaluate_bpc(plain(), data.valid, cfg.seq_len),
                "seconds": round(time.perf_counter() - t0, 3),
                "epsilon": epsilon,
            }
            for hook in hooks:
                hook("epoch", record, plain)
            log.add(record)
    privacy = {
        "mechanism": "DP-SGD (Opacus, Poisson sampling, RDP accountant)",
        "epsilon": float(engine.get_epsilon(dp.delta)),
        "delta": dp.delta,
        "noise_multiplier": noise,
        "max_grad_norm": dp.max_grad_norm,
        "sample_rate": cfg.batch_size / len(windows),
        "steps": step,
        "unit": f"one window of {cfg.seq_len + 1} characters",
    }
    return TrainResult(model=plain(), metrics=log.records, seconds=time.perf_counter() - t0, privacy=privacy)


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
    data = load_data(data_dir, cfg.seq_len)
    if cfg.dp.enabled:
        check_dp(cfg)
    hooks = list(hooks)
    if cfg.track.enabled:
        from .tracking import ExposureTracker

        manifest_path = Path(data_dir) / "canaries.json"
        if not manifest_path.exists():
            raise AuditError(f"--track-exposure needs {manifest_path} (the data folder of 'insert')")
        hooks.append(ExposureTracker(Manifest.read(manifest_path).canaries, cfg.track, seed))
    result = train(data, model_cfg, cfg, seed=seed, quiet=quiet, folder=Path(out_dir), resume=resume, hooks=hooks)
    for name in (STATE_TENSORS, STATE_JSON):
        (Path(out_dir) / name).unlink(missing_ok=True)  # a finished checkpoint needs no resume state
    save_checkpoint(
        result.model,
        out_dir,
        {
            "seed": seed,
            "training": {**asdict(cfg), "seconds": round(result.seconds, 3), "steps": result.metrics[-1]["step"]},
            "data": data.info,
            "final": result.metrics[-1],
            **({"privacy": result.privacy} if result.privacy else {}),
        },
    )
    return result
