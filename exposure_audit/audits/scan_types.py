"""What ``scan`` (``scan.py``) and its measuring half (``scan_measure.py``) share: the options,
what a model says about one finding, and how a value is masked in reports. Both import it;
it imports neither, so the two halves form no cycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import AuditError

MIN_SPACE_BITS = 10.0  # below this, every filling is found in about a thousand guesses: no rank means much
SHA_PREFIX = 16  # hex characters of the value's SHA-256 in reports
TERMINATORS = ("next", "none")
METHODS = ("auto", "enumerate", "pruned", "estimate")  # measure's, less brute force


@dataclass(frozen=True)
class ScanOptions:
    """Everything ``scan`` does besides reading the corpus (one object, see ``cli.scan``)."""

    model: str | None = None
    reference: str | None = None
    reveal: bool = False
    min_space_bits: float = MIN_SPACE_BITS
    max_secrets: int | None = None  # rank a uniform sample of this many distinct values (seeded)
    seed: int = 0
    terminator: str = "next"  # "next": the record's next character; "none": nothing after the value
    method: str = "auto"
    max_steps: int = 2_000_000
    samples: int = 2_000
    extract_top: int = 1
    extract_max_steps: int = 20_000
    fail_above: float | None = None
    fail_if_extracted: bool = False
    device: str = "auto"
    dtype: str | None = None
    base: str | None = None  # the base of a PEFT adapter --model (as measure's --base)
    quiet: bool = True

    def check(self) -> None:
        if self.max_secrets is not None and self.max_secrets < 1:
            raise AuditError(f"--max-secrets must be at least 1, got {self.max_secrets}")
        if self.terminator not in TERMINATORS:
            raise AuditError(f"terminator {self.terminator!r} is not one of {', '.join(TERMINATORS)}")
        if self.min_space_bits < 0:
            raise AuditError("--min-space-bits must be >= 0")
        if self.extract_top < 1 or self.extract_max_steps < 1:
            raise AuditError("--extract-top and --extract-max-steps must be at least 1")
        needs_model = self.reference is not None or self.fail_above is not None or self.fail_if_extracted
        if needs_model and self.model is None:
            raise AuditError("--reference, --fail-above and --fail-if-extracted need --model")


@dataclass
class Measured:
    """What a model says about one finding (scan_measure.py fills it)."""

    exposure: float | None = None
    exposure_ci: tuple[float, float] | None = None
    method: str | None = None
    rank: int | None = None
    log_perplexity: float | None = None
    model_steps: int | None = None
    reference_exposure: float | None = None
    extracted_position: int | None = None
    proven: bool | None = None
    extract_steps: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float | None:
        if self.exposure is None or self.reference_exposure is None:
            return None
        return self.exposure - self.reference_exposure


def mask(value: str) -> str:
    """A few characters of the value (at most a quarter of its letters and digits, at most 4),
    everything else of them ``*``; separators kept so the shape stays readable."""
    alnum = [i for i, c in enumerate(value) if c.isalnum()]
    k = min(4, len(alnum) // 4)
    show = set(alnum[: (k + 1) // 2]) | set(alnum[len(alnum) - k // 2 :] if k // 2 else [])
    return "".join(c if (i in show or not c.isalnum()) else "*" for i, c in enumerate(value))
