"""``exposure_audit.track(model, tokenizer, canaries)``: one exposure measurement in any loop.

The model is measured as it is (no copy): a Hugging Face causal LM (a PEFT model is measured
through its unmerged LoRA layers), a DDP-wrapped one, or any model of this tool. It is put in
eval mode for the measurement (dropout off, so scores are deterministic) and given back in the
mode it was in.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..training.metrics import MetricsLog
from ..exposure.options import MeasureOptions
from ..training.tracking import TRACKING, Tracked, measure_tracked, read_canaries

_VIEWS: dict[tuple[int, int], Any] = {}  # (module, tokenizer) -> its scoring view (token table built once)


def _unwrap(model: Any) -> Any:
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    get_base = getattr(model, "get_base_model", None)  # a PeftModel: the base with LoRA layers injected
    return get_base() if callable(get_base) else model


def scoring_view(model: Any, tokenizer: Any = None) -> Any:
    """``model`` behind the scoring interface (``models/base.py``); the same view for the same objects."""
    if hasattr(model, "encode_lines") and hasattr(model, "step"):
        return model  # already a model of this tool
    net = _unwrap(model)
    if tokenizer is None:
        from ..errors import AuditError

        raise AuditError("tracking a Hugging Face model needs its tokenizer (the tokenizer argument)")
    key = (id(net), id(tokenizer))
    view = _VIEWS.get(key)
    if view is None or view.model is not net:
        from ..models.hf import HFModel

        view = HFModel(net, tokenizer, path=Path("."), weight_files=[], training=None)
        _VIEWS.clear()  # one model trains at a time: keep one view, not every model ever seen
        _VIEWS[key] = view
    # where the model lives may change between calls (Trainer moves it at train start)
    view.device = next(net.parameters()).device
    return view


# a plain loop or a Trainer measures often: exact ranks only where they cost no more than the estimate
LOOP_TRACKING = replace(TRACKING, samples=1000, max_steps=200_000, prefer="fast")


def track(
    model: Any,
    tokenizer: Any,
    canaries: Any,
    options: MeasureOptions | None = None,
    *,
    step: int | None = None,
    epoch: int = 0,
    metrics: Path | str | None = None,
    **settings: Any,
) -> Tracked:
    """Measure ``canaries`` (a ``canaries.json`` path, an insert folder, a Manifest or a list) on
    ``model`` now. With ``metrics`` (a path) the figures are appended to that ``metrics.jsonl`` as a
    "track" record of ``step``, in this tool's schema.

    How: ``options`` (default :data:`LOOP_TRACKING`: ``samples=1000``, ``max_steps=200_000``,
    ``prefer="fast"``, exact ranks only where they cost no more than the estimate, as tracking
    runs often; ``"exact"``: wherever ``max_steps`` allows), with ``settings`` (any of its fields
    by name: ``context``, ``samples``, ``max_steps``, ``prefer``, ``estimator``, ``seed``, ...)
    replacing its fields."""
    opts = replace(options or LOOP_TRACKING, **settings)
    view = scoring_view(model, tokenizer)
    net = view.model if hasattr(view, "model") else view
    was_training = bool(getattr(net, "training", False))
    try:
        if hasattr(net, "eval"):
            net.eval()
        with torch.no_grad():
            tracked = measure_tracked(view, read_canaries(canaries), opts)
    finally:
        if was_training:
            net.train()
    tracked.record = {"event": "track", "epoch": epoch, "step": step, **tracked.record}
    tracked.record["seconds"] = round(tracked.seconds, 3)
    if metrics is not None:
        MetricsLog(Path(metrics)).add(tracked.record)
    return tracked
