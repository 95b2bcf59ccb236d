"""Exposure during training: measure the canaries on the model as it learns.

:func:`track` is the one measurement: this tool's trainer calls it through :class:`ExposureTracker`
(a training hook), a team's own ``transformers.Trainer`` through
``exposure_audit.integrations.transformers.ExposureCallback``, and a plain PyTorch loop directly
(``exposure_audit.track(model, tokenizer, canaries)``). All of them write the same figures into
the same ``metrics.jsonl`` "track" records: ``exposure`` (per canary id),
``exposure_by_insertions`` (mean per insertion count) and ``exposure_methods``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import TrackConfig
from ..data.manifest import Canary, Manifest
from ..exposure.measure import CanaryResult, measure
from ..exposure.options import MeasureOptions
from ..reports.report import by_insertions


@dataclass
class Tracked:
    """One measurement: the results (in the canaries' order), the figures for a metrics record and
    the scalars a logger receives (``exposure/max`` and ``exposure/mean`` over inserted canaries,
    ``exposure/insertions_N`` the mean of the canaries inserted N times, controls as N = 0)."""

    results: list[CanaryResult]
    record: dict[str, Any]
    logs: dict[str, float]
    seconds: float
    highest: CanaryResult | None = None  # the inserted canary of highest exposure
    extra: dict[str, Any] = field(default_factory=dict)

    def above(self, threshold: float | None) -> bool:
        """Whether an inserted canary's exposure is above ``threshold`` (None: never)."""
        return threshold is not None and self.highest is not None and self.highest.exposure > threshold


def read_canaries(canaries: Any) -> list[Canary]:
    """Canaries from a manifest path (``canaries.json`` or an insert folder), a Manifest or a list."""
    if isinstance(canaries, (str, Path)):
        path = Path(canaries)
        return Manifest.read(path / "canaries.json" if path.is_dir() else path).canaries
    if isinstance(canaries, Manifest):
        return canaries.canaries
    return list(canaries)


# what a measurement during training is: auto, prefer balanced as measure's default (exact work
# bounded by exact_budget per format and measurement, so tracking's overhead is known before
# training starts; the rest estimated), no bootstrap, and the unbiased importance estimate by
# default (no ceiling at log2(samples + 1), so a curve does not flatten or jump where the uniform
# estimate runs out of samples)
TRACKING = MeasureOptions(method="auto", samples=2000, max_steps=2_000_000, bootstrap=0, prefer="balanced")


def tracking_options(cfg: TrackConfig, seed: int) -> MeasureOptions:
    """The config's ``train.track`` section as measure's options."""
    return replace(
        TRACKING,
        samples=cfg.samples,
        max_steps=cfg.max_steps,
        estimator=cfg.estimator,
        seed=seed,
        max_memory=cfg.max_memory,
    )


def measure_tracked(model: Any, canaries: Sequence[Canary], options: MeasureOptions = TRACKING) -> Tracked:
    """Measure ``canaries`` on ``model`` (behind the scoring interface) by ``options``: exact where
    the exact budget allows (``prefer="fast"``: only where an exact rank costs no more than the
    estimate), else estimated."""
    t0 = time.perf_counter()
    results = measure(model, canaries, options)
    by_n = by_insertions((c.insertions, r.exposure) for c, r in zip(canaries, results))
    means = {n: statistics.fmean(v) for n, v in by_n.items()}
    record = {
        "exposure": {c.id: round(r.exposure, 4) for c, r in zip(canaries, results)},
        "exposure_by_insertions": {str(n): round(m, 4) for n, m in means.items()},
        "exposure_methods": sorted({r.method for r in results}),
    }
    inserted = [r for r in results if r.insertions > 0]
    logs: dict[str, float] = {}
    highest = max(inserted, key=lambda r: r.exposure) if inserted else None
    if inserted:
        logs["exposure/max"] = highest.exposure
        logs["exposure/mean"] = statistics.fmean(r.exposure for r in inserted)
    logs.update({f"exposure/insertions_{n}": m for n, m in sorted(means.items())})
    return Tracked(results, record, logs, time.perf_counter() - t0, highest)


class ExposureTracker:
    """Measures ``canaries`` at each epoch end and every ``cfg.every`` steps (if > 0), adding the
    figures of :func:`measure_tracked` to the metrics record (this tool's trainer's hook)."""

    def __init__(self, canaries: Sequence[Canary], cfg: TrackConfig, seed: int) -> None:
        self.canaries = list(canaries)
        self.cfg = cfg
        self.seed = seed

    def __call__(self, event: str, record: dict[str, Any], model_fn: Callable[[], Any]) -> None:
        if event == "step" and (self.cfg.every <= 0 or record["step"] % self.cfg.every):
            return
        tracked = measure_tracked(model_fn(), self.canaries, tracking_options(self.cfg, self.seed))
        record.update(tracked.record)
