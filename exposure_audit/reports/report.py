"""Reports: the readable tables (exposure, extraction, training, sweep), the JSON report
(schema 1) and JUnit XML. Everything that prints a result is here; the CLI only echoes it."""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from ..exposure.measure import CanaryResult
from .schema import ExtractionSummary, SweepRow

SCHEMA = 1
T = TypeVar("T")


def by_insertions(pairs: Iterable[tuple[int, T]]) -> dict[int, list[T]]:
    """Values grouped by insertion count, in increasing order of the count."""
    groups: dict[int, list[T]] = {}
    for n, value in pairs:
        groups.setdefault(n, []).append(value)
    return dict(sorted(groups.items()))


def passed(results: Sequence[CanaryResult], threshold: float | None) -> bool:
    """True unless an inserted canary's exposure is above the threshold."""
    if threshold is None:
        return True
    return not any(r.insertions > 0 and r.exposure > threshold for r in results)


def mask_secret(secret: str) -> str:
    """The secret with all but its first and last character hidden (``--redact``)."""
    if len(secret) <= 2:
        return "*" * len(secret)
    return secret[0] + "*" * (len(secret) - 2) + secret[-1]


def _rank_text(r: CanaryResult) -> str:
    if r.rank is not None:
        return str(r.rank)
    if r.rank_bounds is not None:
        lo, hi = r.rank_bounds
        return f">={lo}" if hi >= r.space_size else f"{lo}..{hi}"
    return f"~2^{math.log2(r.space_size) - r.exposure:.1f}"


def table(results: Sequence[CanaryResult], *, redact_secrets: bool = False, threshold: float | None = None) -> str:
    """The exposure table, then the mean and max exposure per insertion count."""
    rows = [("canary", "ins", "log-ppl", "rank", "exposure", "max", "method")]
    for r in results:
        text = r.text if not redact_secrets else r.format
        flag = " !" if threshold is not None and r.insertions > 0 and r.exposure > threshold else ""
        exp = f"{r.exposure:.2f}" + (
            f" [{r.exposure_ci[0]:.1f}, {r.exposure_ci[1]:.1f}]" if r.exposure_ci and r.rank is None else ""
        )
        rows.append(
            (
                text,
                str(r.insertions),
                f"{r.log_perplexity:.2f}",
                _rank_text(r),
                exp + flag,
                f"{r.exposure_max:.2f}",
                r.method,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 2, 3, 5}
    lines = []
    for j, row in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append("insertions  canaries  mean exposure  max exposure")
    for n, es in by_insertions((r.insertions, r.exposure) for r in results).items():
        label = f"{n} (control)" if n == 0 else str(n)
        lines.append(f"{label:>10}  {len(es):>8}  {statistics.fmean(es):>13.2f}  {max(es):>12.2f}")
    return "\n".join(lines)


def report_json(
    results: Sequence[CanaryResult],
    *,
    model: Any,
    threshold: float | None,
    extra: dict[str, Any] | None = None,
    redact_secrets: bool = False,
) -> dict[str, Any]:
    canaries = []
    for r in results:
        c = r.to_json()
        if redact_secrets:
            c["secret"] = mask_secret(c["secret"])
            c["text"] = None
        canaries.append(c)
    return {
        "schema": SCHEMA,
        "kind": "exposure-audit/report",
        "model": model,
        "threshold": threshold,
        "passed": passed(results, threshold),
        **(extra or {}),
        "canaries": canaries,
    }


def junit_xml(results: Sequence[CanaryResult], threshold: float | None, *, redact_secrets: bool = False) -> str:
    """One test case per inserted canary; a failure when its exposure is above the threshold."""
    inserted = [r for r in results if r.insertions > 0]
    failures = [r for r in inserted if threshold is not None and r.exposure > threshold]
    suite = ET.Element(
        "testsuite",
        name="exposure-audit",
        tests=str(len(inserted)),
        failures=str(len(failures)),
        errors="0",
        time=f"{sum(r.seconds for r in inserted):.3f}",
    )
    for r in inserted:
        secret = mask_secret(r.secret) if redact_secrets else r.secret
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"exposure.{r.format}",
            name=f"{r.id or secret} (inserted {r.insertions}x)",
            time=f"{r.seconds:.3f}",
        )
        ET.SubElement(case, "system-out").text = (
            f"secret={secret} exposure={r.exposure:.3f} bits of {r.exposure_max:.3f} method={r.method} "
            f"log_perplexity={r.log_perplexity:.3f}"
        )
        if r in failures:
            ET.SubElement(
                case,
                "failure",
                message=f"exposure {r.exposure:.2f} bits > threshold {threshold:g}",
                type="ExposureAboveThreshold",
            ).text = f"canary {secret} inserted {r.insertions} times has exposure {r.exposure:.3f} bits (max {r.exposure_max:.3f})"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def tracking_table(metrics: Sequence[dict[str, Any]]) -> str | None:
    """Losses and mean exposure per insertion count at each tracked point of a training run."""
    rows = [m for m in metrics if "exposure_by_insertions" in m]
    if not rows:
        return None
    counts = sorted({int(n) for m in rows for n in m["exposure_by_insertions"]})
    head = f"{'epoch':>5} {'step':>6} {'train bpc':>9} {'valid bpc':>9} " + " ".join(
        f"{('n=' + str(n)):>6}" for n in counts
    )
    if any("epsilon" in m for m in rows):
        head += f" {'epsilon':>8}"
    lines = [head, "mean exposure (bits) by insertion count n".rjust(len(head))]
    for m in rows:
        train = f"{m['train_bpc']:9.3f}" if "train_bpc" in m else f"{'':9}"
        valid = f"{m['valid_bpc']:9.3f}" if m.get("valid_bpc") is not None else f"{'':9}"
        cells = " ".join(f"{m['exposure_by_insertions'].get(str(n), float('nan')):6.2f}" for n in counts)
        line = f"{m['epoch']:>5} {m['step']:>6} {train} {valid} {cells}"
        if "epsilon" in m:
            line += f" {m['epsilon']:8.3g}"
        lines.append(line)
    return "\n".join(lines)


def extraction_table(ex: Any, redact: bool, canaries: Sequence[Any] | None = None) -> str:
    """One extraction's candidates, best first, marking the planted ones."""
    kind = "exact order" if ex.method == "best-first" else f"beam {ex.details.get('beam_width')}, approximate"
    status = (
        "proven"
        if ex.proven
        else ("approximate" if ex.method == "beam" else "NOT proven (budget exhausted; best found so far)")
    )
    lines = [
        f"extract {ex.format!r} ({kind}): {len(ex.candidates)} candidates, {status}; "
        f"{ex.model_steps:,} model steps, {ex.seconds:.1f} s"
    ]
    planted = {c.secret: c for c in (canaries or [])}
    width = max(6, ex.candidates and len(ex.candidates[0].secret) or 6)
    lines.append(f"{'#':>3}  {'secret':<{width}}  {'log-ppl':>8}  {'P(after prefix)':>15}  planted")
    for i, c in enumerate(ex.candidates, 1):
        share = 2.0 ** -(c.log_perplexity - ex.prefix_cost)
        mark = f"canary, inserted {planted[c.secret].insertions}x" if c.secret in planted else ""
        secret = mask_secret(c.secret) if redact else c.secret
        lines.append(f"{i:>3}  {secret}  {c.log_perplexity:>8.2f}  {share:>15.3e}  {mark}")
    lines.append(f"these {len(ex.candidates)} hold {ex.mass:.1%} of the probability of completing the format's prefix")
    return "\n".join(lines)


def extraction_summary_lines(summary: ExtractionSummary | dict[str, Any], redact: bool) -> list[str]:
    """Where each canary landed in its format's extraction, and the success rate per insertion count."""
    summary = ExtractionSummary.from_json(summary)
    top = summary.top
    lines = ["", f"{'canary':<12}  {'ins':>3}  position in top {top}"]
    for r in summary.canaries:
        secret = mask_secret(r.secret) if redact else r.secret
        lines.append(f"{secret:<12}  {r.insertions:>3}  {r.position if r.position else f'not in top {top}'}")
    lines.append("")
    lines.append("insertions  canaries  extracted at #1  in top " + str(top))
    for n, st in summary.success_by_insertions.items():
        label = f"{n} (control)" if int(n) == 0 else str(n)
        lines.append(f"{label:>10}  {st.canaries:>8}  {st.extracted_top1:>15}  {st.in_top_k:>8}")
    return lines


def sweep_table(rows: Sequence[SweepRow]) -> str:
    counts = sorted({int(n) for r in rows for n in r.exposure_by_insertions})
    head = f"{'setting':<16} {'valid bpc':>9} {'epsilon':>8}  " + "  ".join(f"{('n=' + str(n)):>11}" for n in counts)
    lines = [head, " " * 37 + "  ".join(f"{'mean/max':>11}" for _ in counts)]
    for r in rows:
        eps = f"{r.epsilon:.3g}" if r.epsilon is not None else "-"
        cells = []
        for n in counts:
            e = r.exposure_by_insertions.get(str(n))
            cells.append(f"{e.mean:5.1f}/{e.max:5.1f}" if e else f"{'-':>11}")
        lines.append(f"{r.name:<16} {r.valid_bpc:>9.3f} {eps:>8}  " + "  ".join(cells))
    return "\n".join(lines)
