"""The training loop: any model kind on fixed-length windows of ``train.txt``'s tokens.

Reads top to bottom as a script: data (``data``) -> model -> resumed state (``state``) -> one
loop over epochs and batches (tqdm bar with the running loss) -> validation each epoch (bits
per character, and per token) -> one ``metrics.jsonl`` line per epoch -> training state ->
checkpoint (:func:`train_folder`), and :func:`run_training`, the resumable training of a
checkpoint folder. How a step runs (plain, DDP under torchrun, DP-SGD) is the strategy the loop
is handed (``strategy``, ``privacy``); what differs between kinds lives in
``models/training.py``. Every random choice (initial weights, batch order) flows from ``seed``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import distributed
from ..config import AuditConfig, ModelConfig, TrainConfig, config_from_dict
from ..data.manifest import Manifest
from ..errors import AuditError
from ..files import atomic_write_json, atomic_write_text, output_dir, read_json, staging_path
from ..models.training import Trainee, trainee
from ..progress import Progress
from .data import LN2, TrainData, load_data, validation_record, windows
from .metrics import METRICS, Hook, MetricsLog, read_metrics
from .privacy import Private
from .state import (
    STATE_JSON,
    Position,
    load_train_state,
    read_train_state,
    remove_train_state,
    run_identity,
    save_train_state,
    strategy_state,
)
from .strategy import Ddp, Plain


@dataclass
class TrainResult:
    model: Trainee  # the trained model (``model.view(...)`` scores, ``model.save(...)`` writes it)
    metrics: list[dict[str, Any]]
    seconds: float
    privacy: dict[str, Any] | None = None  # DP-SGD: epsilon, delta, noise multiplier, ...


def strategy_for(cfg: TrainConfig) -> Plain:
    """The strategy ``cfg`` asks for: DP-SGD (``cfg.dp``), DDP under torchrun, or plain."""
    if cfg.dp.enabled:
        return Private(cfg)
    if distributed.team().world > 1:
        return Ddp(cfg)
    return Plain(cfg)


def _set_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    else:
        torch.set_num_threads(
            distributed.threads_per_rank() if distributed.team().active else max(1, os.cpu_count() or 1)
        )


def _kept_metrics(path: Path | None, resume: bool, step: int) -> list[dict[str, Any]]:
    """The metrics lines a run continues with: those up to the resumed step (the file is cut
    back to them), or none for a fresh run (the file is removed)."""
    if path is None or not path.exists():
        return []
    if not resume:
        path.unlink()
        return []
    metrics = [m for m in read_metrics(path) if m["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(m) + "\n" for m in metrics))
    return metrics


def _step(learner: Trainee, mode: Plain, ids: np.ndarray, group: np.ndarray, seq_len: int) -> float:
    """One optimizer step on the windows of ``group`` this process trains on; the batch's mean loss."""
    rows = mode.rows(group)
    x = torch.as_tensor(np.stack([ids[s : s + seq_len + 1] for s in rows]).astype(np.int64))
    logits = learner.logits(mode.net, x[:, :-1])
    loss = mode.loss(logits, x[:, 1:], group)
    mode.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    mode.clip()
    mode.optimizer.step()
    return mode.loss_value(loss)


def _epoch_record(
    learner: Trainee, mode: Plain, data: TrainData, seq_len: int, epoch: int, pos: Position, t_start: float
) -> dict[str, Any]:
    """An epoch's metrics line: training and validation loss (bits per character, and per
    token), and the strategy's figures (DP-SGD: epsilon so far)."""
    record = {
        "event": "epoch",
        "epoch": epoch,
        "step": pos.step,
        "train_bpc": pos.loss_sum / max(pos.loss_n, 1) / LN2 * (len(data.train) / data.train_chars),
        **validation_record(learner.logits, learner.eval_module(mode.private), data, seq_len),
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    record.update({key: figure() for key, figure in mode.figures().items()})
    return record


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
    strategy: Plain | None = None,
) -> TrainResult:
    """Train a fresh model of ``model_cfg``'s kind (or fine-tune its base model) on ``data``.

    Each epoch draws non-overlapping windows of ``seq_len + 1`` characters at a random phase,
    in random order (at most ``cfg.max_chars`` characters' worth), and trains on batches of them
    as ``strategy`` (default :func:`strategy_for` ``cfg``) runs a step.

    With ``folder``: one JSON line per epoch goes to ``folder/metrics.jsonl``, and a training
    state every ``cfg.checkpoint_every`` steps and at each epoch end, from which
    ``resume=True`` continues to the same final weights (and, for DP-SGD, epsilon) as an
    uninterrupted run. ``hooks`` are called as ``hook(event, record, model)`` with event "step"
    (every step) or "epoch"; they may add keys to ``record`` (it becomes a metrics line at epoch ends).

    With ``cfg.dp.enabled`` the strategy is DP-SGD (``privacy.Private``). Its guarantee is per
    window: a canary inserted n times sits in up to n windows of an epoch (2n if its copies
    straddle window edges), so its own protection is that of such a group. With ``max_chars``
    each epoch samples from a random share of the windows, and the accountant charges the rate
    within that share: an upper bound on any window's.
    """
    _set_threads(cfg)
    mode = strategy if strategy is not None else strategy_for(cfg)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    learner = trainee(model_cfg, data.tok, dp=mode.private, seq_len=cfg.seq_len)
    model = learner.module
    model.train()
    opt = learner.optimizer(cfg.learning_rate, cfg.weight_decay)
    identity = run_identity(data, model_cfg, cfg, seed)
    writer = folder if mode.writes else None  # under torchrun only rank 0 writes
    saved = read_train_state(folder) if resume and mode.writes and folder is not None else None
    saved = mode.agree(identity, saved, seed)
    pos = Position()
    if resume:
        if folder is None:
            raise AuditError("resuming needs the training folder")
        pos = load_train_state(folder, model, opt, identity, saved)
    metrics_path = writer / METRICS if writer is not None else None
    log = MetricsLog(metrics_path, _kept_metrics(metrics_path, resume, pos.step))  # rank 0's file only

    # the text stream, then (dp-audit's one-window layout) windows of their own at fixed places
    n = len(data.train) - data.fixed_windows * (cfg.seq_len + 1)
    own = n + np.arange(data.fixed_windows) * (cfg.seq_len + 1)
    per_epoch = mode.windows_per_epoch(n, cfg.seq_len)
    if cfg.max_chars:
        per_epoch = min(per_epoch, max(1, cfg.max_chars // cfg.seq_len))
    stream_per_epoch, per_epoch = per_epoch, per_epoch + len(own)
    batches_per_epoch = -(-per_epoch // cfg.batch_size)
    mode.wrap(model, opt, windows=per_epoch, seed=seed)
    if resume:
        mode.restore(strategy_state(saved if saved is not None else read_train_state(folder)))
    t_start = time.perf_counter() - pos.seconds

    def current() -> Any:
        """The model as hooks see it (the scoring interface), in eval mode."""
        return learner.view(mode.private)

    def checkpoint() -> None:
        if folder is not None:
            pos.seconds = time.perf_counter() - t_start
            rngs = mode.rng_states()  # under torchrun: every rank's dropout stream
            if writer is not None:
                save_train_state(writer, model, opt, pos, identity, rngs, mode.state())

    loss_unit = "bpc" if data.tok.unit == "characters" else "bits/token"
    total = batches_per_epoch * cfg.epochs
    with (
        warnings.catch_warnings(),
        Progress(total=total, desc=mode.desc, quiet=quiet, unit="batch", initial=pos.step) as bar,
    ):
        mode.quiet()  # catch_warnings gives the caller its own filters back afterwards
        for epoch in range(pos.epoch, cfg.epochs + 1):
            replay = pos.epoch_rng is not None and epoch == pos.epoch
            if replay:
                rng.bit_generator.state = pos.epoch_rng  # replay this epoch's batch order
            pos.epoch_rng = rng.bit_generator.state
            mode.start_epoch(replay)
            starts = windows(n, cfg.seq_len, rng)[:stream_per_epoch]
            if len(own):
                starts = rng.permutation(np.concatenate([starts, own]))
            for b, group in enumerate(mode.batches(starts)):
                if b < pos.batch or len(group) == 0:
                    continue  # done before the interruption, or an empty Poisson draw
                loss_value = _step(learner, mode, data.train, group, cfg.seq_len)
                pos.step += 1
                pos.batch = b + 1
                pos.loss_sum += loss_value * len(group)
                pos.loss_n += len(group)
                bar.update(1)
                bar.postfix(epoch=epoch, **{loss_unit: f"{loss_value / LN2:.3f}"})
                if hooks:
                    log.step_hooks(hooks, epoch, pos.step, current, time.perf_counter() - t_start, **mode.figures())
                    model.train()
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0:
                    checkpoint()
            record = _epoch_record(learner, mode, data, cfg.seq_len, epoch, pos, t_start)
            for hook in hooks:
                hook("epoch", record, current)
            model.train()
            log.add(record)
            pos.epoch, pos.batch, pos.loss_sum, pos.loss_n = epoch + 1, 0, 0.0, 0
            pos.epoch_rng = rng.bit_generator.state
            mode.end_epoch()
            checkpoint()
    seconds = time.perf_counter() - t_start
    return TrainResult(
        model=learner, metrics=log.records, seconds=seconds, privacy=mode.finish(pos.step, data.tok.unit)
    )


def train_folder(
    data_dir: Path,
    out_dir: Path,
    cfg: AuditConfig,
    *,
    quiet: bool = False,
    resume: bool = False,
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train from an ``insert`` folder into ``out_dir`` (a staging folder) with ``cfg``'s seed,
    model and train sections, resumable."""
    train_cfg = cfg.train
    data = load_data(data_dir, cfg.model, train_cfg.seq_len)
    strategy = strategy_for(train_cfg)  # refuses an impossible request before anything trains
    hooks = list(hooks)
    if train_cfg.track.enabled:
        from .tracking import ExposureTracker

        manifest_path = Path(data_dir) / "canaries.json"
        if not manifest_path.exists():
            raise AuditError(f"exposure tracking needs {manifest_path} (the data folder of insert)")
        hooks.append(ExposureTracker(Manifest.read(manifest_path).canaries, train_cfg.track, cfg.seed))
    result = train(
        data,
        cfg.model,
        train_cfg,
        seed=cfg.seed,
        quiet=quiet,
        folder=Path(out_dir),
        resume=resume,
        hooks=hooks,
        strategy=strategy,
    )
    if not distributed.is_main():  # under torchrun rank 0 writes the checkpoint
        return result
    remove_train_state(Path(out_dir))  # a finished checkpoint needs no resume state
    result.model.save(
        Path(out_dir),
        {
            "seed": cfg.seed,
            "training": {**asdict(train_cfg), "seconds": round(result.seconds, 3), "steps": result.metrics[-1]["step"]},
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
        return train_folder(Path(data_dir), staging, cfg, quiet=True, resume=resume)
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
        result = train_folder(data_dir, tmp, cfg, quiet=quiet, resume=resume)
        (tmp / RUN_JSON).unlink(missing_ok=True)
    return result
