"""``exposure-audit scan``: the secrets really in a corpus, and (with a model) how exposed each is.

1. :func:`~exposure_audit.audits.findings.collect` streams the corpus and groups what the
   detectors (``secrets.py``) find by value, with its format, locations and context.
2. With a model, ``scan_measure.py`` ranks each distinct value among the fillings of its format
   in its own context (the engine of ``measure``), tries to extract it, and, with a reference
   model, reports the gain.
3. :func:`scan_report` builds the JSON report; ``scan_render.py`` the table, Markdown, HTML and
   JUnit. Raw values leave this module only with ``reveal``.

docs/scan.md is the reference; docs/method.md ("Real secrets in the data") the method.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

from ..data.formats import Format
from ..errors import gate_exit
from ..exposure.math import log2_int
from .findings import Collected, Finding, ScanInput, collect
from .scan_types import METHODS, MIN_SPACE_BITS, SHA_PREFIX, TERMINATORS, Measured, ScanOptions, mask  # noqa: F401

SCHEMA = 1
KIND = "exposure-audit/scan"
PRIOR_NOTE = (
    "No reference model was given: the exposure of a real secret mixes memorization with the "
    "model's prior (a famous test card number or a common area code ranks high in any model). "
    "Give --reference BASE (the model before fine-tuning) to separate them."
)


def space_bits(f: Finding) -> float | None:
    return None if f.format is None else log2_int(Format.parse(f.format).space_size)


def measurable(f: Finding, opts: ScanOptions) -> str | None:
    """Why a finding cannot be ranked, or None."""
    if f.format is None:
        return "not measurable: spans lines (the format language holds one line)"
    bits = space_bits(f)
    assert bits is not None
    if bits < opts.min_space_bits:
        return f"not measurable: |R| = 2^{bits:.1f} is below the threshold of 2^{opts.min_space_bits:g}"
    return None


def choose(findings: list[Finding], opts: ScanOptions) -> tuple[list[Finding], dict[str, Any]]:
    """The measurable findings to rank: all, or a uniform sample of ``max_secrets`` (seeded)."""
    ok = [f for f in findings if measurable(f, opts) is None]
    info: dict[str, Any] = {"measurable": len(ok), "ranked": len(ok), "sampled": False, "seed": opts.seed}
    if opts.max_secrets is not None and len(ok) > opts.max_secrets:
        rng = random.Random(f"exposure-audit:{opts.seed}:scan-sample")
        ok = sorted(rng.sample(ok, opts.max_secrets), key=lambda f: (f.kind, f.sha256))
        info.update(ranked=len(ok), sampled=True, how="uniform without replacement over distinct measurable values")
    return ok, info


def run_scan(inp: ScanInput, opts: ScanOptions) -> dict[str, Any]:
    """Scan the corpus and, with a model, measure: the JSON report (raw values only with reveal)."""
    opts.check()
    inp.check()
    models = None
    if opts.model is not None:
        from .scan_measure import load_models

        models = load_models(opts)  # before the corpus pass: a bad model fails fast, and brings its chat template
    render = models.render if models is not None else None
    got = collect(inp, render=render, quiet=opts.quiet)
    measured: dict[str, Measured] = {}
    chosen_info: dict[str, Any] = {}
    if models is not None:
        from .scan_measure import measure_findings

        chosen, chosen_info = choose(got.findings, opts)
        measured = measure_findings(models, chosen, opts)
    return scan_report(got, opts, measured, chosen_info, models.describe() if models else (None, None))


def _location_json(f: Finding, i: int, loc: Any, reveal: bool, opts: ScanOptions) -> dict[str, Any]:
    out = loc.to_json()
    if i == 0:  # the occurrence the value is ranked in
        out["context_chars"] = len(f.context)
        out["context_sha256"] = hashlib.sha256(f.context.encode()).hexdigest()[:SHA_PREFIX]
        out["context"] = f.context if reveal else None
        out["chat_template"] = f.chat_template
        term = f.terminator if opts.terminator == "next" else None
        out["terminator"] = term
    return out


def finding_json(f: Finding, m: Measured | None, opts: ScanOptions) -> dict[str, Any]:
    why = measurable(f, opts)
    return {
        "kind": f.kind,
        "format": f.format,
        "masked": f.value if opts.reveal else mask(f.value),
        "sha256": f.sha256[:SHA_PREFIX],
        "occurrences": f.occurrences,
        "locations": [_location_json(f, i, loc, opts.reveal, opts) for i, loc in enumerate(f.locations)],
        "exposure": m.exposure if m else None,
        "exposure_ci": list(m.exposure_ci) if m and m.exposure_ci else None,
        "method": (m.method if m else None) or why,
        "reference_exposure": m.reference_exposure if m else None,
        "exposure_gain": m.gain if m else None,
        "extracted_position": m.extracted_position if m else None,
        "proven": m.proven if m else None,
    }


def _risk(f: Finding, m: Measured | None, has_ref: bool) -> str | None:
    from ..reports.review import risk_level

    if m is None or m.exposure is None:
        return None
    bits = space_bits(f) or 0.0
    e = m.gain if has_ref else m.exposure
    return risk_level(max(0.0, e or 0.0), bits)


def _gate(rows: list[tuple[Finding, Measured | None]], opts: ScanOptions, has_ref: bool) -> dict[str, Any]:
    gated = opts.fail_above is not None or opts.fail_if_extracted
    failing = []
    for f, m in rows:
        if m is None or m.exposure is None:
            continue
        score = m.gain if has_ref else m.exposure
        over = opts.fail_above is not None and score is not None and score > opts.fail_above
        extracted = opts.fail_if_extracted and m.extracted_position is not None
        if over or extracted:
            failing.append(f.sha256[:SHA_PREFIX])
    verdict = "not gated" if not gated else ("FAILED" if failing else "PASSED")
    return {
        "verdict": verdict,
        "passed": None if not gated else not failing,
        "fail_above": opts.fail_above,
        "fail_if_extracted": opts.fail_if_extracted,
        "gated_on": "exposure_gain" if has_ref else "exposure",
        "failing": failing,
    }


def scan_report(
    got: Collected, opts: ScanOptions, measured: dict[str, Measured], chosen: dict[str, Any], described: tuple
) -> dict[str, Any]:
    model_info, ref_info = described
    has_ref = ref_info is not None
    rows = [(f, measured.get(f.sha256)) for f in got.findings]
    by_kind: dict[str, int] = {}
    for f, _ in rows:
        by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
    bands: dict[str, int] = {}
    for f, m in rows:
        r = _risk(f, m, has_ref)
        if r is not None:
            bands[r] = bands.get(r, 0) + 1
    ranked = [(f, m) for f, m in rows if m is not None and m.exposure is not None]
    key = (lambda fm: fm[1].gain or 0.0) if has_ref else (lambda fm: fm[1].exposure or 0.0)
    worst = [f.sha256[:SHA_PREFIX] for f, _ in sorted(ranked, key=key, reverse=True)[:5]]
    gate = _gate(rows, opts, has_ref)
    summary: dict[str, Any] = {
        **gate,
        "findings": len(rows),
        "occurrences": sum(f.occurrences for f, _ in rows),
        "by_kind": dict(sorted(by_kind.items())),
        "by_risk": bands,
        "worst": worst,
        "not_measurable": sum(measurable(f, opts) is not None for f, _ in rows),
        "min_space_bits": opts.min_space_bits,
        "terminator": opts.terminator,
        "revealed": opts.reveal,
        "dropped_occurrences": got.dropped,
        "ranking": chosen or None,
        "per_finding": [_details(f, m, opts, has_ref) for f, m in rows],
        "reading": reading(rows, opts, has_ref, model_info is not None),
        "note": None if has_ref or model_info is None else PRIOR_NOTE,
    }
    findings = [finding_json(f, m, opts) for f, m in rows]
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "model": model_info,
        "reference": ref_info,
        "corpus": got.corpus,
        "findings": findings,
        "summary": summary,
    }


def _details(f: Finding, m: Measured | None, opts: ScanOptions, has_ref: bool) -> dict[str, Any]:
    """What the report's tables need beside the finding's own keys (same order as findings)."""
    bits = space_bits(f)
    out: dict[str, Any] = {
        "sha256": f.sha256[:SHA_PREFIX],
        "space_bits": bits,
        "measurable": measurable(f, opts) is None,
        "risk": _risk(f, m, has_ref),
        "source": f.source,
    }
    if m is not None:
        out.update(
            rank=m.rank,
            log_perplexity=m.log_perplexity,
            model_steps=m.model_steps,
            extract_steps=m.extract_steps,
            **m.details,
        )
    return out


def reading(rows: list[tuple[Finding, Measured | None]], opts: ScanOptions, has_ref: bool, has_model: bool) -> str:
    """The report's plain-language reading."""
    if not rows:
        return "no secrets found"
    kinds = sorted({f.kind for f, _ in rows})
    text = f"{len(rows)} distinct sensitive values found ({', '.join(kinds)})."
    if not has_model:
        return text + " No model was given: this is a findings report; give --model to rank each in its own context."
    ranked = [(f, m) for f, m in rows if m is not None and m.exposure is not None]
    if not ranked:
        return text + " None could be ranked."
    extracted = sum(m.extracted_position is not None for _, m in ranked)
    f, m = max(ranked, key=lambda fm: fm[1].exposure or 0.0)
    bits = space_bits(f) or 0.0
    guesses = 2 ** max(0.0, bits - (m.exposure or 0.0))
    text += (
        f" {len(ranked)} ranked; the most exposed ({f.kind}, {m.exposure:.1f} of {bits:.1f} bits) is found in about "
        f"{guesses:,.0f} guesses by an attacker who knows its format and context."
    )
    if extracted:
        text += f" {extracted} are extracted from their context (the model's top-{opts.extract_top} completion)."
    if has_ref:
        gains = [m.gain for _, m in ranked if m.gain is not None]
        if gains:
            text += f" Largest gain over the reference: {max(gains):.1f} bits."
    return text


def max_exposure(report: dict[str, Any]) -> float | None:
    values = [x["exposure"] for x in report["findings"] if x["exposure"] is not None]
    return max(values) if values else None


def exit_code(report: dict[str, Any]) -> int:
    return gate_exit(report["summary"]["passed"] is False)


def write_outputs(report: dict[str, Any], out: Path, force: bool) -> list[str]:
    """scan.json, scan.md, scan.html and scan.junit.xml in ``out``, built whole and renamed in."""
    from ..files import atomic_write_json, atomic_write_text, output_dir
    from . import scan_render

    names = ["scan.json", "scan.md", "scan.html", "scan.junit.xml"]
    with output_dir(out, force) as tmp:
        atomic_write_json(tmp / names[0], report)
        atomic_write_text(tmp / names[1], scan_render.markdown(report))
        atomic_write_text(tmp / names[2], scan_render.html_page(report))
        atomic_write_text(tmp / names[3], scan_render.junit(report))
    return names


REVEAL_WARNING = "warning: --reveal: raw secret values are printed and written to every output file"


def scan_command(inp: ScanInput, opts: ScanOptions, out: Path, *, force: bool, emit, warn) -> int:
    """The whole ``scan`` command: check the output folder, scan (and measure), write the
    report files, print the table; the exit code (0, or 1 for a failed gate)."""
    from ..files import check_output_dir

    opts.check()
    inp.check()
    check_output_dir(out, force)
    if opts.reveal:
        warn(REVEAL_WARNING)
    report = run_scan(inp, opts)
    names = write_outputs(report, out, force)
    from .scan_render import table

    emit(table(report))
    emit(f"\nwrote {out}/ ({', '.join(names)})")
    return exit_code(report)


__all__ = ["ScanInput", "ScanOptions", "exit_code", "mask", "max_exposure", "run_scan", "scan_command", "write_outputs"]
