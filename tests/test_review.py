"""report.html and the Markdown summary, as a reviewer reads them: a verdict first, real tables,
provenance, the final folder's name, nothing external, and with --redact no secret anywhere."""

import json
import re
from html.parser import HTMLParser

import pytest

from exposure_audit.cli import main
from exposure_audit.reports.review import facts, reading, risk_level

from .conftest import make_corpus


class Page(HTMLParser):
    """The parts of a page the tests look at: title, text in order, tables as rows of cells."""

    def __init__(self):
        super().__init__()
        self.title = ""
        self.text: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.srcs: list[str] = []
        self._stack: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self._stack.append(tag)
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.srcs.append(attrs[key])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if self._stack:
            self._stack.pop()

    def handle_data(self, data):
        if self._stack and self._stack[-1] == "title":
            self.title += data
        if self._cell is not None:
            self._cell.append(data)
        if data.strip() and not (self._stack and self._stack[-1] in ("title", "style")):
            self.text.append(data.strip())


def parse(path):
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """A tiny audit, twice: as is, and redacted; both with a threshold that fails."""
    root = tmp_path_factory.mktemp("review")
    make_corpus(root / "corpus.txt", lines=400)
    cfg = root / "tiny.yaml"
    cfg.write_text(
        f"corpus: {root / 'corpus.txt'}\n"
        "insert:\n  formats: ['my code is {x:12}']\n  schedule: [0, 1, 8]\n  per_count: 1\n"
        "model:\n  hidden: 12\n  layers: 1\n  embedding: 8\n"
        "train:\n  epochs: 1\n  seq_len: 40\n  batch_size: 16\n"
        "measure:\n  samples: 200\n  bootstrap: 5\n  fail_above: 0.0\n"
        "extract:\n  max_steps: 3000\n"
    )
    runs = {}
    for name, extra in (("plain", []), ("redacted", ["--redact"])):
        md = root / f"{name}.md"
        code = main(["audit", str(cfg), "--out", str(root / name), "--markdown", str(md), "-q", *extra])
        assert code == 1  # fail_above 0: every inserted canary is above it
        runs[name] = root / name
    return runs


def test_report_opens_with_a_verdict_and_has_real_tables(audits):
    run = audits["plain"]
    page = parse(run / "report.html")
    assert page.title == "exposure-audit report: plain"  # the final folder, not the staging one
    assert ".partial" not in (run / "report.html").read_text()
    text = page.text
    assert text[0] == "exposure-audit report: plain" and "FAILED" in text[:4]
    assert text.index("FAILED") < text.index("Canaries")  # the verdict comes before any table
    report = json.loads((run / "report.json").read_text())
    manifest = json.loads((run / "data" / "canaries.json").read_text())
    canaries, header = page.tables[0][1:], page.tables[0][0]
    assert header[:6] == ["canary", "inserted", "exposure (bits)", "of log2|R|", "rank", "risk"]
    assert "method" in header and "interval" in header
    assert len(canaries) == len(report["canaries"]) == len(manifest["canaries"])
    for c in report["canaries"]:
        row = next(r for r in canaries if r[0] == c["text"])
        assert row[2] == f"{c['exposure']:.2f}"
        assert row[5].split()[0] == risk_level(c["exposure"], c["exposure_max"])
    assert "Above the threshold" in " ".join(text)
    prov = {row[0]: row[1] for row in page.tables[-1]}
    assert prov["corpus sha256"] == manifest["corpus"]["sha256"]
    assert prov["seed"] == "0" and prov["model path"].endswith("plain/model")
    assert "no differential privacy" in prov["trained with"]
    assert all(src.startswith("data:image/png;base64,") for src in page.srcs)  # nothing external
    assert "How the bands" not in text and any("Risk levels are bands" in t for t in text)


def test_redacted_report_holds_no_secret_anywhere(audits):
    run = audits["redacted"]
    manifest = json.loads((run / "data" / "canaries.json").read_text())
    for name in ("report.html", "report.json", "report.junit.xml"):
        content = (run / name).read_text()
        for c in manifest["canaries"]:
            assert c["secret"] not in content, (name, c["id"])
    md = (run.parent / "redacted.md").read_text()
    assert not any(c["secret"] in md for c in manifest["canaries"])
    page = parse(run / "report.html")
    assert len(page.tables[0]) == 1 + len(manifest["canaries"])  # the table is still there, masked


def test_markdown_summary_has_verdict_and_table(audits):
    md = (audits["plain"].parent / "plain.md").read_text()
    lines = md.splitlines()
    assert lines[0] == "## exposure-audit: :x: FAILED"
    rows = [line for line in lines if line.startswith("| `my code is ")]
    report = json.loads((audits["plain"] / "report.json").read_text())
    assert len(rows) == len(report["canaries"])
    assert sum(":x:" in r for r in rows) == len(facts(report).failing) > 0
    assert re.search(r"in its top 10", md)


def test_plain_reading_of_a_memorized_secret():
    report = {
        "threshold": None,
        "passed": True,
        "canaries": [
            {"insertions": 4, "exposure": 29.9 - 3.585, "exposure_max": 29.9, "rank": 12, "space_size": str(10**9)},
            {"insertions": 0, "exposure": 0.5, "exposure_max": 29.9, "rank": None, "space_size": str(10**9)},
        ],
    }
    text = reading(facts(report))
    assert text.startswith("A secret seen 4 times in training is ranked 12th of 10^9 possible secrets")
    assert "recovers it in about 12 guesses" in text
    assert risk_level(29.9 - 3.585, 29.9) == "high" and risk_level(29.9 - 3.3, 29.9) == "critical"
    assert risk_level(0.5, 29.9) == "low" and risk_level(6.0, 29.9) == "elevated"
    assert risk_level(1.02, 9.97) == "low"  # rank 492 of 1,000: within 2^20 guesses, but not memorized
