"""Exposure during training: a training hook that measures the canaries as the model learns."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from .config import TrackConfig
from .exposure.measure import measure
from .manifest import Canary
from .report import by_insertions


class ExposureTracker:
    """Measures ``canaries`` at each epoch end and every ``cfg.every`` steps (if > 0), adding
    ``exposure`` (per canary id), ``exposure_by_insertions`` (mean per count) and the methods
    used to the metrics record. Exact where the engine's budget allows, else estimated with the
    estimator ``measure`` uses (``train.track.estimator``, importance sampling by default)."""

    def __init__(self, canaries: Sequence[Canary], cfg: TrackConfig, seed: int) -> None:
        self.canaries = list(canaries)
        self.cfg = cfg
        self.seed = seed

    def __call__(self, event: str, record: dict[str, Any], model_fn: Callable[[], Any]) -> None:
        if event == "step" and (self.cfg.every <= 0 or record["step"] % self.cfg.every):
            return
        results = measure(
            model_fn(),
            self.canaries,
            method="auto",
            max_steps=self.cfg.max_steps,
            samples=self.cfg.samples,
            seed=self.seed,
            bootstrap=0,
            # the unbiased importance estimate by default: no ceiling at log2(samples + 1), so a
            # curve does not flatten or jump where the uniform estimate runs out of samples
            estimator=self.cfg.estimator,
            max_memory=self.cfg.max_memory,
        )
        record["exposure"] = {c.id: round(r.exposure, 4) for c, r in zip(self.canaries, results)}
        by_n = by_insertions((c.insertions, r.exposure) for c, r in zip(self.canaries, results))
        record["exposure_by_insertions"] = {str(n): round(statistics.fmean(v), 4) for n, v in by_n.items()}
        record["exposure_methods"] = sorted({r.method for r in results})
