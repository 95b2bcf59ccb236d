"""Exposure tracking inside a team's own training: a ``transformers.TrainerCallback``
(``integrations/transformers.py``), :func:`track` for a plain PyTorch loop, and the verdict file
both leave for a CI gate (``verdict.py``, ``exposure-audit gate``). docs/models.md has the reference."""

from __future__ import annotations

from .loop import scoring_view, track
from .verdict import VERDICT, gate, write_verdict

__all__ = ["VERDICT", "gate", "scoring_view", "track", "write_verdict"]
