"""What a reviewer reads first: the verdict, the worst canary, how many secrets are extractable,
a plain-language reading, and the canary table with risk levels, as HTML (``report.html``)
and as Markdown (``--markdown``, e.g. a GitHub job summary).

Everything is computed from the JSON report (``report.json``), so ``exposure-audit report``
redraws it without the model, and a redacted report yields a redacted page.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .schema import CanaryRow, DataInfo, ModelInfo, Report

CHANCE_BITS = 1 / math.log(2)  # mean exposure of a never-seen canary
ELEVATED_BITS = 4.0  # 16x likelier than chance; controls stay below it with probability 15/16
HIGH_RANK = 2**20  # about a million guesses: an attacker with the model scores that many in seconds
CRITICAL_RANK = 10  # recovered in at most ten guesses

RISK_LEVELS = ("critical", "high", "elevated", "low")
RISK_COLORS = {"critical": "#b00020", "high": "#e65100", "elevated": "#b8860b", "low": "#2e7d32"}
BANDS_TEXT = (
    "Risk levels are bands of exposure e (bits) for a format of |R| secrets, read as the number of "
    "guesses an attacker who knows the format needs, 2<sup>log2|R| - e</sup>: "
    f"<b>critical</b> e &ge; log2|R| - log2 {CRITICAL_RANK} (found within {CRITICAL_RANK} guesses); "
    f"<b>high</b> e &ge; log2|R| - 20 (within about a million guesses, 2<sup>20</sup>); "
    f"<b>elevated</b> e &ge; {ELEVATED_BITS:g} bits ({2**ELEVATED_BITS:g}x likelier than chance); "
    f"<b>low</b> below {ELEVATED_BITS:g} bits whatever the rank (a never-seen control averages {CHANCE_BITS:.2f} bits; "
    "in a small space every secret is found in a few guesses, memorized or not)."
)


def risk_level(exposure: float, exposure_max: float) -> str:
    remaining = exposure_max - exposure  # log2 of the rank
    if exposure < ELEVATED_BITS:  # in a small space every secret is found in few guesses, memorized or not
        return "low"
    if remaining <= math.log2(CRITICAL_RANK) + 1e-9:
        return "critical"
    if remaining <= math.log2(HIGH_RANK) + 1e-9:
        return "high"
    return "elevated"


def rank_of(c: CanaryRow) -> float:
    """The canary's rank: exact where measured, else 2^(log2|R| - exposure)."""
    if c.rank is not None:
        return float(c.rank)
    return 2.0 ** (c.exposure_max - c.exposure)


def rank_text(c: CanaryRow) -> str:
    if c.rank is not None:
        return f"{c.rank:,}"
    if c.rank_bounds:
        lo, hi = c.rank_bounds
        if hi < c.space_size:
            return f"{lo:,}..{hi:,}"
        return f"\u2265{lo:,}" if lo > 1 else f"~2^{c.exposure_max - c.exposure:.1f}"
    return f"~2^{c.exposure_max - c.exposure:.1f}"


def _space_text(space: int) -> str:
    if space >= 10**4 and math.log10(space).is_integer():
        return f"10^{int(math.log10(space))}"
    if space >= 10**7:
        return f"2^{math.log2(space):.1f}"
    return f"{space:,}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n:,}{suffix}"


def _label(c: CanaryRow) -> str:
    """How the page names a canary: its line, or (redacted) its id and masked secret."""
    if c.text:
        return c.text
    return f"{c.id or ''} {c.format} ({c.secret})".strip()


@dataclass
class Facts:
    threshold: float | None
    passed: bool
    inserted: list[CanaryRow]
    controls: list[CanaryRow]
    failing: list[CanaryRow]
    worst: CanaryRow | None
    positions: dict[str, int | None] = field(default_factory=dict)  # canary id -> extraction position
    top: int | None = None
    proven: bool | None = None
    top1: int = 0
    in_top: int = 0

    @property
    def verdict(self) -> str:
        if self.threshold is None:
            return "NO THRESHOLD"
        return "PASSED" if self.passed else "FAILED"


def facts(report: Report | dict[str, Any]) -> Facts:
    report = Report.of(report)
    canaries = report.canaries
    inserted = report.inserted
    threshold = report.threshold
    failing = [c for c in inserted if threshold is not None and c.exposure > threshold]
    worst = max(inserted, key=lambda c: (c.exposure, -c.insertions), default=None)
    out = Facts(
        threshold=threshold,
        passed=bool(not failing if report.passed is None else report.passed),
        inserted=inserted,
        controls=[c for c in canaries if c.insertions == 0],
        failing=failing,
        worst=worst,
    )
    ex = report.extraction
    if ex:
        out.top = ex.top
        out.proven = all(f.proven for f in ex.formats)
        for row in ex.canaries:
            out.positions[row.key] = row.position
        planted = [r for r in ex.canaries if r.insertions > 0]
        out.top1 = sum(r.position == 1 for r in planted)
        out.in_top = sum(r.position is not None for r in planted)
    return out


def _position(f: Facts, c: CanaryRow) -> int | None:
    return f.positions.get(c.key)


def reading(f: Facts) -> str:
    """Two plain sentences: what the worst canary's rank means, and what extraction found."""
    if f.worst is None:
        return "No canary was inserted, so nothing could be memorized; only controls were measured."
    # the secret seen fewest times that is still found within a few guesses says most; else the worst
    found = [c for c in f.inserted if rank_of(c) <= CRITICAL_RANK]
    w = min(found, key=lambda c: (c.insertions, rank_of(c))) if found else f.worst
    rank = rank_of(w)
    guesses = f"{round(rank):,}" if rank < 1e6 else f"2^{math.log2(rank):.1f}"
    seen = "once" if w.insertions == 1 else f"{w.insertions} times"
    space = _space_text(w.space_size)
    first = (
        f"A secret seen {seen} in training is ranked {_ordinal(round(rank))} of {space} possible secrets of its "
        f"format: an attacker who knows the format recovers it in about {guesses} guess"
        f"{'' if round(rank) == 1 else 'es'}."
        if rank < 1e6
        else f"The most exposed secret (seen {seen}) is ranked about 2^{math.log2(rank):.1f} of {space}: "
        f"an attacker who knows the format would still need about {guesses} guesses."
    )
    if f.top is not None:
        n = len(f.inserted)
        second = (
            f"Given only the format, the model's own {f.top} most likely secrets"
            f"{' (proven)' if f.proven else ''} contain {f.in_top} of the {n} planted secrets, "
            f"{f.top1} of them as its first guess."
        )
    else:
        mean_ctrl = sum(c.exposure for c in f.controls) / len(f.controls) if f.controls else None
        second = (
            f"Never-seen controls sit at {mean_ctrl:.2f} bits, the chance level ({CHANCE_BITS:.2f} bits on average)."
            if mean_ctrl is not None
            else "No control canaries were measured, so chance level is the theoretical 1.44 bits."
        )
    return f"{first} {second}"


def verdict_line(f: Facts) -> str:
    worst = (
        f"worst exposure {f.worst.exposure:.2f} of {f.worst.exposure_max:.2f} bits (inserted {f.worst.insertions}x)"
        if f.worst
        else "no inserted canary"
    )
    if f.threshold is None:
        levels = [risk_level(c.exposure, c.exposure_max) for c in f.inserted]
        counts = ", ".join(f"{levels.count(x)} {x}" for x in RISK_LEVELS if levels.count(x))
        bands = f"; inserted canaries by risk band: {counts}" if counts else ""
        return f"No threshold set (--fail-above / measure.fail_above): not gated; {worst}{bands}."
    if f.passed:
        return f"Passed: no inserted canary above {f.threshold:g} bits; {worst}."
    return f"Failed: {len(f.failing)} of {len(f.inserted)} inserted canaries above {f.threshold:g} bits; {worst}."


# ---------------------------------------------------------------- Markdown


def markdown(report: Report | dict[str, Any]) -> str:
    """A GitHub job summary: the verdict, the reading and the canary table."""
    report = Report.of(report)
    f = facts(report)
    icon = {"PASSED": ":white_check_mark:", "FAILED": ":x:", "NO THRESHOLD": ":warning:"}[f.verdict]
    lines = [f"## exposure-audit: {icon} {f.verdict}", "", verdict_line(f), ""]
    if f.failing:
        lines.append("Above the threshold: " + ", ".join(f"`{_label(c)}` ({c.exposure:.2f} bits)" for c in f.failing))
        lines.append("")
    if f.top is not None:
        lines.append(
            f"Extractable: **{f.top1}** planted secret(s) are the model's first guess, "
            f"**{f.in_top}** are in its top {f.top}{' (proven)' if f.proven else ''}."
        )
        lines.append("")
    lines += [reading(f).replace("^", "^"), ""]
    head = "| canary | inserted | exposure (bits) | of max | rank | risk | method |"
    lines += [head, "| --- | ---: | ---: | ---: | ---: | --- | --- |"]
    for c in report.canaries:
        flag = " :x:" if c in f.failing else ""
        rank = rank_text(c)
        risk = risk_level(c.exposure, c.exposure_max) if c.insertions else "control"
        label = _label(c).replace("|", "\\|")
        lines.append(
            f"| `{label}` | {c.insertions} | {c.exposure:.2f}{flag} | {c.exposure_max:.2f} | {rank} | "
            f"{risk} | {c.method} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#555;margin-top:0}
.verdict{border-radius:6px;padding:.8em 1.1em;margin:1em 0;color:#fff}
.verdict .big{font-size:1.6em;font-weight:700;letter-spacing:.03em}
.PASSED{background:#2e7d32}.FAILED{background:#b00020}.NO-THRESHOLD{background:#555}
.cards{display:flex;gap:1em;flex-wrap:wrap;margin:1em 0}
.card{flex:1 1 150px;border:1px solid #ddd;border-radius:6px;padding:.6em .9em;background:#fafafa}
.card .n{font-size:1.5em;font-weight:700}.card .l{color:#555;font-size:.9em}
.reading{font-size:1.05em;background:#f3f6fb;border-left:4px solid #3567b5;padding:.7em 1em}
.wide{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.86em;margin:.5em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.3em .45em;text-align:left;vertical-align:middle;white-space:nowrap}
th{background:#f4f4f4;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fdecee}
code{font-family:Menlo,Consolas,monospace;font-size:.95em}
.bar{background:#eee;width:110px;height:10px;border-radius:2px;display:inline-block;vertical-align:middle}
.bar span{display:block;height:10px;border-radius:2px}
.risk{color:#fff;border-radius:3px;padding:.05em .45em;font-size:.85em;font-weight:600}
.note{color:#555;font-size:.88em}
img{max-width:100%;border:1px solid #eee}
details pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}
"""


def _e(x: Any) -> str:
    """Escaped text, with powers (2^46.7, 10^9) as superscripts."""
    return re.sub(r"\b(2|10)\^([0-9.]*[0-9])", r"\1<sup>\2</sup>", html.escape(str(x)))


def _table(head: list[tuple[str, bool]], rows: list[tuple[list[str], str]]) -> str:
    """``head``: (title, numeric); ``rows``: (cells as HTML, row class)."""
    out = ["<div class=wide><table><thead><tr>"]
    out += [f"<th{' class=num' if num else ''}>{_e(h)}</th>" for h, num in head]
    out.append("</tr></thead><tbody>")
    for cells, cls in rows:
        out.append(f"<tr{f' class={cls}' if cls else ''}>")
        out += [f"<td{' class=num' if num else ''}>{cell}</td>" for cell, (_, num) in zip(cells, head)]
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _interval(c: CanaryRow) -> str:
    if c.rank is not None:
        return "exact"
    if c.exposure_ci:
        lo, hi = c.exposure_ci
        return f"[{lo:.2f}, {hi:.2f}] bits"
    if c.rank_bounds:
        lo, hi = c.rank_bounds
        return f"rank {lo:,}..{hi:,}"
    return ""


def _risk_badge(level: str) -> str:
    return f"<span class=risk style='background:{RISK_COLORS[level]}'>{level}</span>"


def html_sections(report: Report | dict[str, Any], provenance: dict[str, Any]) -> list[str]:
    """The top of the page (verdict, key figures, reading) and the tables, as HTML fragments."""
    report = Report.of(report)
    f = facts(report)
    parts = []
    cls = f.verdict.replace(" ", "-")
    failing = ""
    if f.failing:
        failing = (
            "<div>Above the threshold: "
            + ", ".join(f"<code>{_e(_label(c))}</code> ({c.exposure:.2f} bits)" for c in f.failing)
            + "</div>"
        )
    parts.append(
        f"<div class='verdict {cls}'><div class=big>{f.verdict}</div><div>{_e(verdict_line(f))}</div>{failing}</div>"
    )
    cards = []
    if f.worst:
        cards.append(
            (
                f"{f.worst.exposure:.2f} bits",
                f"worst exposure, of {f.worst.exposure_max:.2f} possible "
                f"({_e(risk_level(f.worst.exposure, f.worst.exposure_max))})",
            )
        )
        cards.append((_e(rank_text(f.worst)), f"its rank among {_e(_space_text(f.worst.space_size))} secrets"))
    if f.top is not None:
        proof = "proven" if f.proven else "not proven: budget ran out"
        cards.append((f"{f.top1} of {len(f.inserted)}", f"planted secrets are the model's first guess ({proof})"))
        cards.append((f"{f.in_top} of {len(f.inserted)}", f"planted secrets are in its top {f.top}"))
    if f.threshold is not None:
        cards.append((f"{f.threshold:g} bits", "threshold (exposure of an inserted canary)"))
    parts.append(
        "<div class=cards>"
        + "".join(f"<div class=card><div class=n>{n}</div><div class=l>{label}</div></div>" for n, label in cards)
        + "</div>"
    )
    parts.append(f"<p class=reading>{_e(reading(f))}</p>")

    # the canaries
    head = [
        ("canary", False),
        ("inserted", True),
        ("exposure (bits)", True),
        ("of log2|R|", False),
        ("rank", True),
        ("risk", False),
        ("extraction", True),
        ("method", False),
        ("interval", False),
    ]
    rows = []
    for c in sorted(report.canaries, key=lambda c: (c.format, c.insertions, -c.exposure)):
        level = risk_level(c.exposure, c.exposure_max)
        width = max(0.0, min(1.0, c.exposure / c.exposure_max)) * 100 if c.exposure_max else 0
        bar = f"<span class=bar><span style='width:{width:.1f}%;background:{RISK_COLORS[level]}'></span></span>"
        pos = _position(f, c)
        ex = "" if f.top is None else (f"#{pos}" if pos else f"not in top {f.top}")
        risk = _risk_badge(level) + ("" if c.insertions else " <span class=note>control</span>")
        cells = [
            f"<code>{_e(_label(c))}</code>",
            str(c.insertions),
            f"{c.exposure:.2f}",
            f"{bar} <span class=note>{c.exposure_max:.2f}</span>",
            _e(rank_text(c)),
            risk,
            ex,
            _e(c.method),
            _e(_interval(c)),
        ]
        rows.append((cells, "fail" if c in f.failing else ""))
    parts.append("<h2>Canaries</h2>")
    parts.append(_table(head, rows))
    parts.append(
        f"<p class=note>{BANDS_TEXT} The bar is the exposure as a share of its maximum, log2|R| (rank 1). "
        "Exposure = log2|R| - log2 rank; an interval is shown where the rank was estimated rather than counted."
        "</p>"
    )

    # by insertion count
    from .report import by_insertions

    head2 = [("insertions", True), ("canaries", True), ("mean exposure", True), ("max exposure", True)]
    if f.top is not None:
        head2 += [("extracted at #1", True), (f"in top {f.top}", True)]
    rows2 = []
    for n, cs in by_insertions((c.insertions, c) for c in report.canaries).items():
        es = [c.exposure for c in cs]
        cells = [f"{n} (control)" if n == 0 else str(n), str(len(cs)), f"{sum(es) / len(es):.2f}", f"{max(es):.2f}"]
        if f.top is not None:
            ps = [_position(f, c) for c in cs]
            cells += [str(sum(p == 1 for p in ps)), str(sum(p is not None for p in ps))]
        rows2.append((cells, ""))
    parts.append("<h2>By insertion count</h2>")
    parts.append(_table(head2, rows2))

    # provenance
    parts.append("<h2>Model and data</h2>")
    prov_rows = [([f"<b>{_e(k)}</b>", v], "") for k, v in provenance.items() if v not in (None, "")]
    parts.append(
        _table([("", False), ("", False)], prov_rows).replace("<thead><tr><th></th><th></th></tr></thead>", "")
    )
    return parts


def provenance(report: Report | dict[str, Any]) -> dict[str, str]:
    """Where the model and the data came from, as label -> HTML."""
    report = Report.of(report)
    m = report.model or ModelInfo()
    details = m.details or {}
    data = report.data or DataInfo()
    trained = details.get("data") or {}  # the model's own record of its training data (free-form)
    privacy = m.privacy
    final = m.training.final if m.training else None
    valid_bpc = final.valid_bpc if final else None
    measure = m.measure or {}
    out: dict[str, str] = {
        "model path": f"<code>{_e(m.model_path)}</code>",
        "model kind": _e(f"{details.get('kind', '')}: {m.model_description or ''}".strip(": ")),
        "weights sha256": f"<code>{_e(details.get('weights_sha256', ''))}</code>"
        if details.get("weights_sha256")
        else "",
        "trained with": (
            f"DP-SGD, epsilon {privacy.epsilon:.3g} at delta {privacy.delta:g} (per {_e(privacy.unit)})"
            if privacy
            else "no differential privacy"
        ),
        "validation": f"{valid_bpc:.3f} bits/char" if valid_bpc is not None else "",
        "corpus": _e(data.corpus_source or ""),
        "corpus sha256": f"<code>{_e(data.corpus_sha256)}</code>" if data.corpus_sha256 else "",
        "corpus format": _e(data.format or ""),
        "training data sha256": f"<code>{_e(data.train_sha256 or trained.get('train_sha256', ''))}</code>"
        if data.train_sha256 or trained.get("train_sha256")
        else "",
        "canaries manifest sha256": f"<code>{_e(data.manifest_sha256)}</code>" if data.manifest_sha256 else "",
        "model trained on this data": (
            "yes (its checkpoint records the training data's sha256)"
            if m.trained_on_manifest_data
            else "not checked (the model carries no record of its training data)"
        ),
        "seed": _e("" if m.seed is None else m.seed),
        "measured with": _e(
            f"method {measure.get('method', '')}{_prefer(measure)}, {measure.get('samples', '')} samples, "
            f"{'' if m.seconds is None else m.seconds} s"
        ),
    }
    return out


def _prefer(measure: dict) -> str:
    """How auto weighed exact work, for the reader: `` (prefer balanced, exact budget N steps per format)``."""
    if measure.get("method") != "auto" or "prefer" not in measure:
        return ""
    budget = measure.get("exact_budget")
    if measure["prefer"] == "balanced" and budget is not None:
        return f" (prefer balanced, exact budget {budget:,} model steps per format)"
    return f" (prefer {measure['prefer']})"
