"""Reports: a readable table, the JSON report (schema 1) and JUnit XML."""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from .exposure.measure import CanaryResult
from .files import atomic_write_json, atomic_write_text

SCHEMA = 1


def passed(results: Sequence[CanaryResult], threshold: float | None) -> bool:
    """True unless an inserted canary's exposure is above the threshold."""
    if threshold is None:
        return True
    return not any(r.insertions > 0 and r.exposure > threshold for r in results)


def redact(secret: str) -> str:
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
    by_n: dict[int, list[float]] = {}
    for r in results:
        by_n.setdefault(r.insertions, []).append(r.exposure)
    for n in sorted(by_n):
        es = by_n[n]
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
            c["secret"] = redact(c["secret"])
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
        secret = redact(r.secret) if redact_secrets else r.secret
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


def write_json(path: Any, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def write_junit(path: Any, xml: str) -> None:
    atomic_write_text(path, xml)


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
