"""The memorization report as a table (stdout), Markdown, self-contained HTML and JUnit XML,
all rendered from the JSON report alone (so a redrawn report needs no model)."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from ..files import atomic_write_json, atomic_write_text, check_writable_file

ATTACK_NAMES = {
    "loss": "loss",
    "zlib": "zlib ratio",
    "min_k": "min-k%",
    "min_k_plus_plus": "min-k%++",
    "reference": "reference loss",
}


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _rows(report: dict[str, Any]) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    d, p, mia = report["discoverable"], report["probabilistic"], report["mia"]
    disc = [
        ["all", str(d["records"]), f"{d['exact_match_rate']:.3f}", _ci(d["rate_ci"]), f"{d['token_match_mean']:.3f}"]
    ]
    disc += [
        [
            b["copies"],
            str(b["records"]),
            f"{b['exact_match_rate']:.3f}",
            _ci(b["rate_ci"]),
            f"{b['token_match_mean']:.3f}",
        ]
        for b in d["by_copies"]
    ]
    prob = [["all", str(p["records"]), *(f"{p['extractable_fraction'][n]:.3f}" for n in ("1", "10", "100", "1000"))]]
    prob += [
        [b["copies"], str(b["records"]), *(f"{b['extractable_fraction'][n]:.3f}" for n in ("1", "10", "100", "1000"))]
        for b in p["by_copies"]
    ]
    attacks = []
    for name, a in (mia or {}).get("attacks", {}).items():
        attacks.append(
            [
                ATTACK_NAMES[name],
                f"{a['auc']:.3f}",
                _ci(a["auc_ci"]),
                f"{a['tpr_at_1pct_fpr']:.3f} {_ci(a['tpr_at_1pct_fpr_ci'])}",
                f"{a['tpr_at_0.1pct_fpr']:.3f} {_ci(a['tpr_at_0.1pct_fpr_ci'])}",
            ]
        )
    return disc, prob, attacks


DISC_HEAD = ["copies", "records", "exact match", "95% CI", "token match"]
PROB_HEAD = ["copies", "records", "n=1", "n=10", "n=100", "n=1000"]
MIA_HEAD = ["attack", "AUC", "95% CI (DeLong)", "TPR at 1% FPR", "TPR at 0.1% FPR"]


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> dict[str, str]:
    s, p = report["settings"], report["probabilistic"]
    unit = s["token_unit"]
    dec = "greedy" if p["greedy"] else f"temperature {p['temperature']:g}, top-k {p['top_k']}, top-p {p['top_p']}"
    mia = report["mia"]
    return {
        "discoverable": f"Discoverable memorization: prefix {s['prefix_tokens']} + suffix {s['suffix_tokens']} "
        f"{unit}s, greedy decoding" + ("" if unit == "token" else f" (this model's tokens are {unit}s)"),
        "probabilistic": f"Probabilistic extraction ({dec}): share of records extracted within n queries with "
        "probability at least 1/2",
        "mia": "Membership inference: no non-members to compare with"
        if mia is None
        else f"Membership inference: {mia['members']} members vs {mia['non_members']} non-members",
    }


def _resolution_notes(report: dict[str, Any]) -> list[str]:
    """With N non-members, FPR f allows floor(f N) false positives: below 1 / f that is none."""
    n = report["mia"]["non_members"]
    return [
        f"({n} non-members: TPR at {label} FPR allows no false positive, so it is the TPR at 0 FPR)"
        for f, label in ((0.01, "1%"), (0.001, "0.1%"))
        if n * f < 1
    ]


def table(report: dict[str, Any]) -> str:
    disc, prob, attacks = _rows(report)
    head = summary(report)
    parts = [
        head["discoverable"],
        _text_table(DISC_HEAD, disc),
        "",
        head["probabilistic"],
        _text_table(PROB_HEAD, prob),
    ]
    parts += ["", head["mia"]]
    if attacks:
        parts.append(_text_table(MIA_HEAD, attacks))
        parts += _resolution_notes(report)
    d = report["data"]
    if d["members_skipped_short"]:
        parts.append(f"\n{d['members_skipped_short']} member records shorter than prefix + suffix were skipped")
    return "\n".join(parts)


def verdict(report: dict[str, Any]) -> str:
    failed = report["gates"]["failed"]
    s = report["settings"]
    if failed:
        return "FAIL: " + "; ".join(failed)
    if s["fail_above_extractable"] is None and s["fail_above_auc"] is None:
        return "not gated (no --fail-above-extractable or --fail-above-auc)"
    return "PASS"


def markdown(report: dict[str, Any]) -> str:
    def md(head: list[str], rows: list[list[str]]) -> str:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])

    disc, prob, attacks = _rows(report)
    head = summary(report)
    parts = ["# exposure-audit memorization", "", f"**{verdict(report)}**", ""]
    parts += [f"Model: `{report['model']['path']}`", "", f"## {head['discoverable']}", "", md(DISC_HEAD, disc), ""]
    parts += [f"## {head['probabilistic']}", "", md(PROB_HEAD, prob), "", f"## {head['mia']}", ""]
    if attacks:
        parts += [md(MIA_HEAD, attacks), "", *_resolution_notes(report), ""]
    return "\n".join(parts)


def _svg_roc(attacks: dict[str, Any]) -> str:
    """ROC curves (log-log, so the low-FPR end shows) as inline SVG: no figure library needed."""
    size, pad = 320, 40
    lo = 1e-3

    def xy(f: float, t: float) -> tuple[float, float]:
        fx = (math.log10(max(f, lo)) - math.log10(lo)) / -math.log10(lo)
        ty = (math.log10(max(t, lo)) - math.log10(lo)) / -math.log10(lo)
        return pad + fx * size, pad + (1 - ty) * size

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size + 2 * pad + 140}' height='{size + 2 * pad}'>"]
    out.append(f"<rect x='{pad}' y='{pad}' width='{size}' height='{size}' fill='none' stroke='#999'/>")
    x0, y0 = xy(lo, lo)
    x1, y1 = xy(1, 1)
    out.append(f"<line x1='{x0}' y1='{y0}' x2='{x1}' y2='{y1}' stroke='#aaa' stroke-dasharray='4'/>")
    for i, (name, a) in enumerate(attacks.items()):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(f, t) for f, t in zip(a["roc"]["fpr"], a["roc"]["tpr"])))
        out.append(f"<polyline fill='none' stroke='{colors[i % 5]}' stroke-width='1.5' points='{pts}'/>")
        out.append(
            f"<text x='{pad + size + 10}' y='{pad + 16 * (i + 1)}' fill='{colors[i % 5]}' font-size='12'>"
            f"{html.escape(ATTACK_NAMES[name])}</text>"
        )
    out.append(f"<text x='{pad}' y='{pad + size + 28}' font-size='12'>false positive rate (log, 0.001 to 1)</text>")
    out.append(f"<text x='4' y='{pad - 10}' font-size='12'>true positive rate (log)</text></svg>")
    return "".join(out)


def html_page(report: dict[str, Any]) -> str:
    from ..reports.review import CSS, _table

    disc, prob, attacks = _rows(report)
    head = summary(report)

    def tab(h: list[str], rows: list[list[str]]) -> str:
        return _table([(x, i > 0) for i, x in enumerate(h)], [([html.escape(c) for c in r], "") for r in rows])

    failed = bool(report["gates"]["failed"])
    cls = "fail" if failed else "pass"
    parts = [
        "<!doctype html><html lang=en><head><meta charset='utf-8'>",
        "<title>exposure-audit memorization</title>",
        f"<style>{CSS}</style></head><body><h1>How much of its training data the model gives back</h1>",
        f"<div class='verdict {cls}'><div class=big>{html.escape(verdict(report))}</div></div>",
        f"<p class=note>Model <code>{html.escape(report['model']['path'])}</code>; data "
        f"<code>{html.escape(str(report['data']['members_file']))}</code>; seed {report['settings']['seed']}.</p>",
        f"<h2>{html.escape(head['discoverable'])}</h2>",
        tab(DISC_HEAD, disc),
        f"<h2>{html.escape(head['probabilistic'])}</h2>",
        tab(PROB_HEAD, prob),
        f"<h2>{html.escape(head['mia'])}</h2>",
    ]
    if attacks:
        parts += [tab(MIA_HEAD, attacks), _svg_roc(report["mia"]["attacks"])]
    parts.append("<p class=note>Definitions: docs/memorization.md.</p></body></html>")
    return "\n".join(parts)


def junit(report: dict[str, Any]) -> str:
    s = report["settings"]
    cases = []
    d = report["discoverable"]
    gate = s["fail_above_extractable"]
    fail = gate is not None and d["exact_match_rate"] > gate
    cases.append(("discoverable.exact_match_rate", fail, f"{d['exact_match_rate']:.4f} > {gate}"))
    for name, a in ((report["mia"] or {}).get("attacks") or {}).items():
        g = s["fail_above_auc"]
        cases.append((f"mia.{name}.auc", g is not None and a["auc"] > g, f"{a['auc']:.4f} > {g}"))
    failures = sum(f for _, f, _ in cases)
    out = ['<?xml version="1.0" encoding="UTF-8"?>']
    out.append(f'<testsuite name="exposure-audit memorization" tests="{len(cases)}" failures="{failures}">')
    for name, f, msg in cases:
        body = f"<failure message={quoteattr(msg)}/>" if f else ""
        out.append(f'  <testcase classname="memorization" name={quoteattr(name)}>{body}</testcase>')
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Outputs:
    json: Path | None = None
    markdown: Path | None = None
    html: Path | None = None
    junit: Path | None = None

    def check(self, force: bool) -> None:
        for p in (self.json, self.markdown, self.html, self.junit):
            if p is not None:
                check_writable_file(p, force)

    def write(self, report: dict[str, Any]) -> list[Path]:
        done = []
        if self.json is not None:
            atomic_write_json(self.json, report)
            done.append(self.json)
        for path, render in ((self.markdown, markdown), (self.html, html_page), (self.junit, junit)):
            if path is not None:
                atomic_write_text(path, render(report))
                done.append(path)
        return done


__all__ = ["Outputs", "html_page", "junit", "markdown", "table"]
