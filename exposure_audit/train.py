"""Training: the char-LSTM on fixed-length sequences of ``train.txt``, with Adam.

Reads top to bottom: data -> model -> loop (tqdm bar with the running loss) -> validation
each epoch (bits per character) -> one ``metrics.jsonl`` line per epoch -> checkpoint.
Every random choice (initial weights, batch order) flows from ``seed``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, TrainConfig
from .errors import AuditError
from .files import sha256_file
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


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise AuditError(f"{what} {path} is missing")
    raw = path.read_bytes()
    if b"\0" in raw:
        raise AuditError(f"{what} {path} looks binary: NUL byte at byte offset {raw.index(bytes(1))}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"{what} {path} is not UTF-8: invalid byte at byte offset {e.start}") from None


def load_data(folder: Path, seq_len: int) -> TrainData:
    """Read an ``insert`` output folder. The vocabulary is every character of the training text
    plus every character the manifest's formats can produce (so never-inserted canaries can
    still be scored), plus the unknown symbol."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"data folder {folder} does not exist (it is the --out of 'exposure-audit insert')")
    train_text = _read_text(folder / "train.txt", "training text")
    valid_path = folder / "valid.txt"
    valid_text = _read_text(valid_path, "validation text") if valid_path.exists() else ""
    chars = set(train_text) | {"\n"}
    info: dict[str, Any] = {"train_sha256": sha256_file(folder / "train.txt")}
    manifest_path = folder / "canaries.json"
    if manifest_path.exists():
        manifest = Manifest.read(manifest_path)
        if manifest.train.get("sha256") != info["train_sha256"]:
            raise AuditError(f"{folder}: train.txt does not match canaries.json (changed after insert?)")
        for c in manifest.canaries:
            chars |= Format.parse(c.format).characters
        info["manifest_sha256"] = manifest.to_json()["sha256"]
    vocab = Vocabulary.from_chars(chars)
    train = vocab.encode(train_text)
    if len(train) < seq_len + 2:
        raise AuditError(f"training text has {len(train)} characters; needs more than seq_len + 1 = {seq_len + 1}")
    return TrainData(train=train, valid=vocab.encode(valid_text), vocab=vocab, info=info)


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
            x = torch.as_tensor(np.stack([ids[s : s + length + 1] for s in sel]))
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


def train(
    data: TrainData,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int,
    quiet: bool = False,
    metrics_path: Path | None = None,
) -> TrainResult:
    """Train a fresh char-LSTM on ``data``; write one JSON line per epoch to ``metrics_path``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = CharLSTM(data.vocab, CharLSTMConfig(**asdict(model_cfg)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n = len(data.train)
    per_epoch = len(_windows(n, cfg.seq_len, np.random.default_rng(0)))
    if cfg.max_chars:
        per_epoch = min(per_epoch, max(1, cfg.max_chars // cfg.seq_len))
    batches_per_epoch = -(-per_epoch // cfg.batch_size)
    metrics: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    step = 0
    with Progress(total=batches_per_epoch * cfg.epochs, desc="train", quiet=quiet, unit="batch") as bar:
        for epoch in range(1, cfg.epochs + 1):
            starts = _windows(n, cfg.seq_len, rng)[:per_epoch]
            loss_sum, loss_n = 0.0, 0
            for lo in range(0, len(starts), cfg.batch_size):
                group = starts[lo : lo + cfg.batch_size]
                x = torch.as_tensor(np.stack([data.train[s : s + cfg.seq_len + 1] for s in group]))
                logits, _ = model(x[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                step += 1
                loss_value = loss.item()
                loss_sum += loss_value * len(group)
                loss_n += len(group)
                bar.update(1)
                bar.postfix(epoch=epoch, bpc=f"{loss_value / LN2:.3f}")
            record = {
                "epoch": epoch,
                "step": step,
                "train_bpc": loss_sum / loss_n / LN2,
                "valid_bpc": evaluate_bpc(model, data.valid, cfg.seq_len),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            metrics.append(record)
            if metrics_path is not None:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
    model.eval()
    return TrainResult(model=model, metrics=metrics, seconds=time.perf_counter() - t0)


def train_folder(
    data_dir: Path,
    out_dir: Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    *,
    seed: int,
    quiet: bool = False,
) -> TrainResult:
    """Train from an ``insert`` folder into ``out_dir`` (which must exist and be empty/staging)."""
    data = load_data(data_dir, cfg.seq_len)
    result = train(data, model_cfg, cfg, seed=seed, quiet=quiet, metrics_path=Path(out_dir) / "metrics.jsonl")
    save_checkpoint(
        result.model,
        out_dir,
        {
            "seed": seed,
            "training": {**asdict(cfg), "seconds": round(result.seconds, 3), "steps": result.metrics[-1]["step"]},
            "data": data.info,
            "final": result.metrics[-1],
        },
    )
    return result
