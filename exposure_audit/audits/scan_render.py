"""The scan report as a stdout table, Markdown, one self-contained HTML page and JUnit XML.

Every renderer reads only the JSON report, whose ``masked`` field already is the value or its
mask (``--reveal``): no renderer can show more than the JSON holds.
"""

from __future__ import annotations

import html
from typing import Any
from xml.sax.saxutils import quoteattr

from ..reports.review import BANDS_TEXT, CSS, _e, _risk_badge, _table


def _fmt(x: float | None, nd: int = 2) -> str:
    return "" if x is None else f"{x:.{nd}f}"


def _where(loc: dict[str, Any]) -> str:
    rec = "" if loc["record"] is None else f"record {loc['record']} "
    msg = "" if loc["message"] is None else f"msg {loc['message']} "
    return f"{rec}{msg}line {loc['line']}:{loc['column']}"


def _exposure_text(x: dict[str, Any]) -> str:
    if x["exposure"] is None:
        return ""
    ci = x["exposure_ci"]
    return _fmt(x["exposure"]) + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for x, d in zip(report["findings"], report["summary"]["per_finding"]):
        pos = x["extracted_position"]
        extracted = "" if x["proven"] is None else (f"#{pos}" if pos else "no") + ("" if x["proven"] else " (budget)")
        rows.append(
            [
                x["kind"],
                x["masked"],
                x["sha256"][:12],
                str(x["occurrences"]),
                _where(x["locations"][0]),
                _fmt(d["space_bits"], 1),
                _exposure_text(x),
                _fmt(x["exposure_gain"]),
                extracted,
                x["method"] or "",
            ]
        )
    return rows


HEAD = ["kind", "value (masked)", "sha256", "occ", "first at", "log2|R|", "exposure", "gain", "extracted", "method"]


def table(report: dict[str, Any]) -> str:
    """The stdout table (values as the JSON holds them: masked unless --reveal)."""
    rows = _rows(report)
    if not rows:
        return "no secrets found"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEAD)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEAD, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    s = report["summary"]
    counts = ", ".join(f"{k} {n}" for k, n in s["by_kind"].items())
    lines += [
        "",
        f"{s['findings']} distinct values, {s['occurrences']} occurrences: {counts}",
        f"verdict: {s['verdict']}",
    ]
    if s.get("note"):
        lines.append(s["note"])
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    out = [f"## exposure-audit scan: {s['verdict']}", "", s["reading"], ""]
    if s.get("note"):
        out += [f"> {s['note']}", ""]
    rows = _rows(report)
    if rows:
        out.append("| " + " | ".join(HEAD) + " |")
        out.append("|" + "---|" * len(HEAD))
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        out.append("")
        out.append("| kind | distinct values |")
        out.append("|---|---|")
        out += [f"| {k} | {n} |" for k, n in s["by_kind"].items()]
    return "\n".join(out) + "\n"


def html_page(report: dict[str, Any]) -> str:
    s = report["summary"]
    cls = s["verdict"].replace(" ", "-").upper() if s["verdict"] != "not gated" else "NO-THRESHOLD"
    cards = [
        (str(s["findings"]), "distinct values"),
        (str(s["occurrences"]), "occurrences"),
        (str(s["not_measurable"]), "not measurable"),
    ]
    parts = [
        "<!doctype html><html><head><meta charset=utf-8><title>exposure-audit scan</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>exposure-audit scan</h1>",
        f"<p class=sub>corpus <code>{_e(report['corpus']['path'])}</code> · model "
        f"<code>{_e((report['model'] or {}).get('path', 'none'))}</code> · reference "
        f"<code>{_e((report['reference'] or {}).get('path', 'none'))}</code></p>",
        f"<div class='verdict {cls}'><div class=big>{_e(s['verdict'])}</div></div>",
        "<div class=cards>"
        + "".join(f"<div class=card><div class=n>{n}</div><div class=l>{_e(t)}</div></div>" for n, t in cards)
        + "</div>",
        f"<p class=reading>{_e(s['reading'])}</p>",
    ]
    if s.get("note"):
        parts.append(f"<p class=note>{_e(s['note'])}</p>")
    head = [(h, h in ("occ", "log2|R|", "exposure", "gain")) for h in HEAD] + [("risk", False)]
    body = []
    for r, d in zip(_rows(report), s["per_finding"]):
        cells = [_e(c) if i != 1 else f"<code>{html.escape(c)}</code>" for i, c in enumerate(r)]
        cells.append(_risk_badge(d["risk"]) if d["risk"] else "")
        body.append((cells, "fail" if d["sha256"] in s["failing"] else ""))
    parts.append("<h2>Findings</h2>" + (_table(head, body) if body else "<p>no secrets found</p>"))
    parts.append(f"<p class=note>{BANDS_TEXT}</p>")
    parts.append(
        "<h2>Counts by kind</h2>"
        + _table([("kind", False), ("values", True)], [([_e(k), str(n)], "") for k, n in s["by_kind"].items()])
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def junit(report: dict[str, Any]) -> str:
    """One test case per finding; a ranked finding over the gate fails."""
    s = report["summary"]
    failing = set(s["failing"])
    cases = []
    for x in report["findings"]:
        name = f"{x['kind']} {x['masked']} ({x['sha256'][:12]})"
        body = ""
        if x["sha256"] in failing:
            msg = f"exposure {_fmt(x['exposure'])} bits, gain {_fmt(x['exposure_gain'])}, extracted {x['extracted_position']}"
            body = f"<failure message={quoteattr(msg)}/>"
        elif x["exposure"] is None:
            body = f"<skipped message={quoteattr(x['method'] or 'no model')}/>"
        cases.append(f"  <testcase classname='exposure-audit.scan' name={quoteattr(name)}>{body}</testcase>")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<testsuite name='exposure-audit scan' tests='{len(cases)}' failures='{len(failing)}'>\n"
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )
