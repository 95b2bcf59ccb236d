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
    assert prov["measured with"].startswith(
        "method auto (prefer balanced, exact budget 2,000,000 model steps per format), 200 samples"
    )
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


def _old_layout(data):
    """A report as older versions wrote it: before `data` (provenance), the manifest's seed,
    the search plans and memory, the context used, and the canaries' estimator details."""
    old = json.loads(json.dumps(data))
    del old["data"]
    for key in ("plan", "search_memory", "context_used"):
        del old["model"][key]
    for c in old["canaries"]:
        for key in [k for k in c if k.startswith(("estimate_", "predicted_"))]:
            del c[key]
    return old


def test_typed_report_round_trips_real_and_old_reports(audits, tmp_path):
    import shutil

    from exposure_audit.reports.schema import Report

    for name in ("plain", "redacted"):
        raw = (audits[name] / "report.json").read_text()
        data = json.loads(raw)
        report = Report.from_json(data)
        assert report.to_json() == data
        assert json.dumps(report.to_json(), indent=2) == json.dumps(data, indent=2)  # key order kept too
        # what the readers see, as attributes
        assert [c.exposure for c in report.canaries] == [c["exposure"] for c in data["canaries"]]
        assert report.canaries[0].space_size == int(data["canaries"][0]["space_size"])
        assert report.extraction.top == data["extraction"]["top"] == 10
        assert [r.position for r in report.extraction.canaries] == [
            r["position"] for r in data["extraction"]["canaries"]
        ]
        final = report.model.training.final
        assert final.valid_bpc == data["model"]["training"]["final"]["valid_bpc"] and final.epoch == 1  # one epoch
        assert report.privacy is None and report.data.format == "txt" and report.passed is False
    old = _old_layout(json.loads((audits["plain"] / "report.json").read_text()))
    assert "data" not in old and Report.from_json(old).to_json() == old
    assert list(Report.from_json(old).to_json()) == list(old)
    # `exposure-audit report` re-renders a folder holding an old report: provenance from the manifest
    folder = tmp_path / "old-run"
    shutil.copytree(audits["plain"], folder)
    (folder / "report.json").write_text(json.dumps(old, indent=2))
    (folder / "report.html").unlink()
    assert main(["report", str(folder)]) == 0
    prov = {row[0]: row[1] for row in parse(folder / "report.html").tables[-1]}
    manifest = json.loads((folder / "data" / "canaries.json").read_text())
    assert prov["corpus sha256"] == manifest["corpus"]["sha256"]
    assert json.loads((folder / "report.json").read_text()) == old  # re-rendering leaves the report as it was


def test_sweep_rows_round_trip():
    from exposure_audit.reports.report import sweep_table
    from exposure_audit.reports.schema import Sweep

    data = {
        "schema": 1,
        "kind": "exposure-audit/sweep",
        "runs": [
            {
                "name": "dp",
                "valid_bpc": 2.5,
                "train_bpc": 2.4,
                "epsilon": 3.0,
                "delta": 1e-5,
                "dropout": 0.0,
                "weight_decay": 0.0,
                "training_seconds": 1.5,
                "exposure_inserted_mean": 1.2,
                "exposure_by_insertions": {"0": {"mean": 1.0, "max": 2.0}, "4": {"mean": 1.5, "max": 3.25}},
            }
        ],
    }
    sweep = Sweep.from_json(data)
    assert sweep.to_json() == data and list(sweep.to_json()["runs"][0]) == list(data["runs"][0])
    assert sweep.runs[0].exposure_by_insertions["4"].max == 3.25
    assert sweep_table(sweep.runs).splitlines()[-1].split() == ["dp", "2.500", "3", "1.0/", "2.0", "1.5/", "3.2"]
