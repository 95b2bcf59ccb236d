"""``ExposureCallback``: exposure tracking inside a team's own ``transformers.Trainer`` (or TRL's
``SFTTrainer``, a subclass).

    from exposure_audit.integrations.transformers import ExposureCallback
    trainer = Trainer(..., callbacks=[ExposureCallback(canaries="data/canaries.json", every_n_steps=50,
                                                       fail_above=10, stop_above=20)])

Every ``every_n_steps`` optimizer steps, and once more when training ends, it measures the canaries
on the Trainer's own model (:func:`exposure_audit.track`: the fast plan, exact ranks where cheap,
else the importance-sampling estimate) and

- logs ``exposure/max`` and ``exposure/mean`` (over inserted canaries) and ``exposure/insertions_N``
  (mean of the canaries inserted N times; N = 0 are the controls) through the Trainer's own
  ``log``, so they reach ``state.log_history`` and every ``report_to`` integration (TensorBoard, W&B);
- appends a "track" record to ``metrics.jsonl`` (default: in ``args.output_dir``) in this tool's
  schema, which ``exposure-audit report`` and the plots read;
- with ``stop_above``, sets ``control.should_training_stop`` once an inserted canary's exposure
  passes it (training stops after that step);
- with ``fail_above``, writes ``exposure_verdict.json`` (default: in ``args.output_dir``) after
  every measurement: passed or failed for the last model measured, the one training ended with.
  ``exposure-audit gate OUTPUT_DIR`` exits 1 on a failed verdict, for CI.

Only the main process writes files; every process measures (each holds the whole model), so
``should_training_stop`` is the same on all of them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback

from ..exposure.options import MeasureOptions
from ..training.tracking import Tracked, read_canaries
from .loop import LOOP_TRACKING, track
from .verdict import VERDICT, write_verdict


def _calling_trainer() -> Trainer | None:
    """The Trainer whose loop is calling this callback. A callback is not handed its Trainer, and
    only ``Trainer.log`` reaches the ``report_to`` integrations (they run before user callbacks, so
    adding keys in ``on_log`` comes too late for them): the training loop is on the call stack."""
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
    return None


class ExposureCallback(TrainerCallback):
    """See the module docstring. The measurement's settings (``context``, ``samples``,
    ``max_steps``, ``seed``, and any other field of :class:`~exposure_audit.exposure.options.MeasureOptions`)
    are keyword arguments as before, gathered into ``self.options`` over ``options`` (default:
    :data:`~exposure_audit.integrations.loop.LOOP_TRACKING`): a Trainer script written for this
    constructor keeps working, and a new measure option needs no new parameter here."""

    def __init__(
        self,
        canaries: Any,
        every_n_steps: int = 100,
        fail_above: float | None = None,
        stop_above: float | None = None,
        *,
        tokenizer: Any = None,
        metrics_path: Path | str | None = None,
        verdict_path: Path | str | None = None,
        options: MeasureOptions | None = None,
        **settings: Any,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        self.options = replace(options or LOOP_TRACKING, **settings)
        self.canaries = read_canaries(canaries)
        self.every = every_n_steps
        self.fail_above = fail_above
        self.stop_above = stop_above
        self.tokenizer = tokenizer
        self.metrics_path = metrics_path
        self.verdict_path = verdict_path
        self.last: Tracked | None = None
        self.last_step: int | None = None
        self.highest_seen: float | None = None
        self.stopped_at: int | None = None
        self.verdict: dict[str, Any] | None = None
        self._t0 = time.perf_counter()

    def _paths(self, args: Any) -> tuple[Path, Path]:
        out = Path(args.output_dir)
        metrics = Path(self.metrics_path) if self.metrics_path else out / "metrics.jsonl"
        verdict = Path(self.verdict_path) if self.verdict_path else out / VERDICT
        return metrics, verdict

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0:
            self._measure(args, state, control, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.last_step != state.global_step:  # the verdict is about the model training ended with
            self._measure(args, state, control, model, processing_class)

    def _measure(self, args, state, control, model, processing_class) -> None:
        tokenizer = self.tokenizer or processing_class
        metrics, verdict = self._paths(args)
        main = state.is_world_process_zero
        tracked = track(
            model,
            tokenizer,
            self.canaries,
            self.options,
            step=state.global_step,
            epoch=int(state.epoch or 0),
            metrics=metrics if main else None,
        )
        self.last, self.last_step = tracked, state.global_step
        if tracked.highest is not None:
            self.highest_seen = max(self.highest_seen or 0.0, tracked.highest.exposure)
        trainer = _calling_trainer()
        if trainer is not None:
            trainer.log(dict(tracked.logs))
        else:  # called outside a Trainer's loop: the history still gets the figures
            state.log_history.append({**tracked.logs, "step": state.global_step})
        if tracked.above(self.stop_above) and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step
        if self.fail_above is not None and main:
            self.verdict = write_verdict(
                verdict,
                threshold=self.fail_above,
                tracked=tracked,
                step=state.global_step,
                highest_seen=self.highest_seen,
            )

    @property
    def failed(self) -> bool:
        """Whether the last measured model has an inserted canary above ``fail_above``."""
        return self.last is not None and self.last.above(self.fail_above)


__all__ = ["ExposureCallback"]
