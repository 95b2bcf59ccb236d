"""``metrics.jsonl``: what training measured, one JSON object a line.

Epoch records (``"event": "epoch"``) and "track" records (figures a training hook added
between epoch ends). :class:`MetricsLog` appends them as training goes; :func:`read_metrics`
reads them back, for resuming, for the report's figures and for ``exposure-audit report``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AuditError

if TYPE_CHECKING:
    from ..models.charlstm import CharLSTM

METRICS = "metrics.jsonl"

# hook(event, record, model_fn): event "step" (every step) or "epoch"; model_fn() returns the
# model in eval mode. A hook may add keys to record: an epoch record is then written with them,
# and a step record with added keys is written as a "track" line.
Hook = Callable[[str, dict[str, Any], Callable[[], "CharLSTM"]], None]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file, in order (blank lines skipped)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise AuditError(f"metrics {path} is not UTF-8 text (byte {e.start})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AuditError(f"metrics {path}: line {number} is not valid JSON ({e.msg})") from None
    return records


def last_epoch(metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The last epoch record of a run's metrics (its final figures)."""
    return [m for m in metrics if m.get("event", "epoch") == "epoch"][-1]


def training_summary(
    out: Any, metrics: Sequence[dict[str, Any]], seconds: float, privacy: dict[str, Any] | None
) -> str:
    """``train``'s closing line: epochs, steps, time, the last epoch's bits/char and the privacy bought."""
    last = last_epoch(metrics)
    valid = f"{last['valid_bpc']:.3f}" if last["valid_bpc"] is not None else "n/a"
    dp = f"; DP-SGD epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}" if privacy else ""
    return (
        f"{out}: {last['epoch']} epochs, {last['step']} steps in {seconds:.0f}s; "
        f"train {last['train_bpc']:.3f} bits/char, validation {valid} bits/char{dp}"
    )


class MetricsLog:
    """Appends records to ``metrics.jsonl`` as training goes, so an interrupted run keeps what it
    measured (``path`` None: only in memory)."""

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
        """Run the per-step hooks; log a "track" line if any of them added figures. ``extra``
        values (callables are called only then) are added to that line."""
        track: dict[str, Any] = {"event": "track", "epoch": epoch, "step": step}
        for hook in hooks:
            hook("step", track, model_fn)
        if len(track) > 3:
            track["seconds"] = round(seconds, 3)
            track.update({k: v() if callable(v) else v for k, v in extra.items()})
            self.add(track)
