"""``scan --model``: each found value ranked in its own context, extracted, set against a reference.

Every value goes through the functions ``measure`` and ``extract`` use (``measure``,
``best_first``), with its first occurrence's context and terminator (docs/method.md, "Real
secrets in the data"), so a found secret and a canary of the same value, format and context get
the same exposure. The model is loaded by ``models.load_model``, the loader of ``measure``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.formats import Format
from ..data.manifest import Canary
from ..errors import AuditError
from ..progress import Progress
from .findings import ChatRenderer, Finding
from .scan_types import SHA_PREFIX, Measured, ScanOptions, mask


@dataclass
class Models:
    model: Any
    reference: Any | None
    path: str
    reference_path: str | None
    render: ChatRenderer | None

    def describe(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        info = {"path": self.path, **self.model.describe(), "chat_template": self.render is not None}
        ref = None if self.reference is None else {"path": self.reference_path, **self.reference.describe()}
        return info, ref


def load_models(opts: ScanOptions) -> Models:
    from ..distributed import model_device
    from ..models import load_model
    from ..models.chat import chat_renderer

    assert opts.model is not None
    device = model_device(opts.device)
    model = load_model(Path(opts.model), device=device, dtype=opts.dtype, base=opts.base)
    ref = None
    if opts.reference is not None:
        ref = load_model(Path(opts.reference), device=device, dtype=opts.dtype)
    return Models(model, ref, opts.model, opts.reference, chat_renderer(model))


def terminator_of(f: Finding, opts: ScanOptions) -> str:
    """What closes the value's candidates: its next character as trained ("next"), or nothing."""
    return (f.terminator or "") if opts.terminator == "next" else ""


def _canary(f: Finding) -> tuple[Format, Canary]:
    """The found value as a canary of its format, inserted as often as it occurs."""
    assert f.format is not None
    fmt = Format.parse(f.format)
    secret = fmt.secret_of(f.value)
    canary = Canary(
        id=f.sha256[:SHA_PREFIX], format=f.format, secret=secret, text=fmt.render(secret), insertions=f.occurrences
    )
    return fmt, canary


def _measure_one(model: Any, f: Finding, opts: ScanOptions) -> Any:
    from ..exposure.measure import measure
    from ..exposure.options import MeasureOptions

    _, canary = _canary(f)
    mopts = MeasureOptions(
        method=opts.method,
        max_steps=opts.max_steps,
        samples=opts.samples,
        seed=opts.seed,
        context=f.context or None,  # at a record's start: the model's default (BOS, else a newline)
        terminator=terminator_of(f, opts),
        quiet=True,
    )
    return measure(model, [canary], mopts)[0]


def check_spells(model: Any, findings: list[Finding], opts: ScanOptions, what: str) -> None:
    """Exit 2 unless ``model`` can spell every context, value and terminator it is to score."""
    from ..exposure.tree import check_format

    chars: set[str] = set()
    for f in findings:
        chars |= set(f.context) | set(f.value) | set(terminator_of(f, opts))
    chars -= {"\n", "\r"}
    if chars:
        body = "".join("\\" + c if c in "\\]-[" else c for c in sorted(chars))
        try:
            check_format(model, Format.parse("{[" + body.replace("{", "{{").replace("}", "}}") + "]:1}"))
        except AuditError as e:
            raise AuditError(f"{what} cannot spell the corpus: {str(e).split(': ', 1)[-1]}") from None


def _scrub(message: str, f: Finding) -> str:
    """An error's text with the value (and its hole characters) masked: errors reach reports and stderr."""
    out = message
    for raw in sorted({f.value, _canary(f)[1].secret}, key=len, reverse=True):
        if len(raw) >= 3:
            out = out.replace(raw, mask(raw))
    return out


def measure_findings(models: Models, findings: list[Finding], opts: ScanOptions) -> dict[str, Measured]:
    """Exposure, extraction and (with a reference) the reference's exposure of each finding."""
    from ..exposure.extract import best_first

    if models.reference is not None:
        check_spells(models.reference, findings, opts, f"reference model {models.reference_path}")
    out: dict[str, Measured] = {}
    with Progress(total=len(findings), desc="rank found secrets", quiet=opts.quiet, unit="secret") as bar:
        for f in findings:
            try:
                r = _measure_one(models.model, f, opts)
            except AuditError as e:  # this value cannot be ranked under this model: say why, go on
                out[f.sha256] = Measured(method=f"not measurable: {_scrub(str(e), f)}")
                bar.update()
                continue
            m = Measured(
                exposure=r.exposure,
                exposure_ci=r.exposure_ci,
                method=r.method,
                rank=r.rank,
                log_perplexity=r.log_perplexity,
                model_steps=r.model_steps,
            )
            fmt, canary = _canary(f)
            ex = best_first(
                models.model,
                fmt,
                top=opts.extract_top,
                max_steps=opts.extract_max_steps,
                context=f.context or None,
                terminator=terminator_of(f, opts),
            )
            m.extracted_position = ex.position(canary.secret)
            m.proven = ex.proven
            m.extract_steps = ex.model_steps
            if models.reference is not None:
                try:
                    m.reference_exposure = _measure_one(models.reference, f, opts).exposure
                except AuditError as e:
                    raise AuditError(f"reference model {models.reference_path}: {_scrub(str(e), f)}") from None
            out[f.sha256] = m
            bar.update()
    return out
