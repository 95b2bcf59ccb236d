"""The data a training run reads: an ``insert`` folder's text as token ids (:func:`load_data`),
each epoch's windows (:func:`windows`), and the validation figures (:func:`evaluate`,
:func:`validation_record`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..config import ModelConfig
from ..data.corpus import data_path, data_spec, iter_training_text
from ..data.formats import Format
from ..data.manifest import Manifest
from ..data.records import data_sha256
from ..errors import AuditError
from ..models.training import Tokenization, tokenize

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


def windows(n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Start offsets of non-overlapping windows of seq_len + 1, at a random phase, shuffled."""
    phase = int(rng.integers(0, seq_len))
    starts = np.arange(phase, n - seq_len - 1, seq_len)
    if len(starts) == 0:
        starts = np.array([0])
    return rng.permutation(starts)


def fewest_windows(n: int, seq_len: int) -> int:
    """The fewest windows :func:`windows` gives for any phase (its count varies by one)."""
    return max(1, len(range(seq_len - 1, n - seq_len - 1, seq_len)))


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
