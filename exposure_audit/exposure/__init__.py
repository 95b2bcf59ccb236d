"""Exposure: the math (pure), the prefix-tree engine (``sharded.py``: its walks split over the
ranks of a torchrun job), estimates, ``measure`` and its options (``options.py``: the config's ``measure:`` section is
that object)."""

from .engine import TIE_TOLERANCE, brute_force_counts, compile_format, enumerate_counts, pruned_rank, score
from .math import exposure_from_rank, rank_from_scores, sampling_estimate, skewnorm_exposure
from .measure import CanaryResult, measure

__all__ = [
    "TIE_TOLERANCE",
    "CanaryResult",
    "brute_force_counts",
    "compile_format",
    "enumerate_counts",
    "exposure_from_rank",
    "measure",
    "pruned_rank",
    "rank_from_scores",
    "sampling_estimate",
    "score",
    "skewnorm_exposure",
]
