"""Figures (matplotlib, PNG) and a self-contained HTML report that embeds them.

Everything here renders from saved JSON (``report.json``, ``metrics.jsonl``, a sweep's
``sweep.json``), so ``exposure-audit report PATH`` can redraw a run without the model.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import AuditError
from ..files import atomic_write_bytes, atomic_write_text, read_json
from ..training.metrics import read_metrics
from .schema import KIND, SWEEP_KIND, CanaryRow, DataInfo, Report, Sweep, SweepRow


def _plt():
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - installed by `make`
        raise AuditError("plots need matplotlib: pip install 'exposure-audit[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_exposure_vs_insertions(report: Report, path: Path) -> Path:
    from .report import by_insertions

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    by_format: dict[str, list[CanaryRow]] = {}
    for c in report.canaries:
        by_format.setdefault(c.format, []).append(c)
    for fmt, cs in by_format.items():
        ax.scatter([max(c.insertions, 0.5) for c in cs], [c.exposure for c in cs], alpha=0.7, label=fmt)
        by_n = by_insertions((c.insertions, c.exposure) for c in cs)
        ax.plot([max(n, 0.5) for n in by_n], [statistics.fmean(es) for es in by_n.values()], "-", alpha=0.6)
        ax.axhline(cs[0].exposure_max, ls=":", color="gray", lw=1)
    ax.axhline(1 / math.log(2), ls="--", color="gray", lw=1, label="chance (1.44 bits)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("insertions (0 shown at 0.5)")
    ax.set_ylabel("exposure (bits)")
    ax.set_title("Exposure grows with insertion count")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_histogram(
    samples: Sequence[float], canaries: Sequence[CanaryRow], fit: dict[str, float] | None, fmt: str, path: Path
) -> Path:
    """The paper's figure: log-perplexities of uniform candidates, the fitted skew-normal, the canaries."""
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(samples, bins=60, density=True, alpha=0.5, label=f"{len(samples)} uniform candidates")
    if fit:
        from scipy.stats import skewnorm

        xs = np.linspace(min(min(samples), min(c.log_perplexity for c in canaries)), max(samples), 400)
        ax.plot(xs, skewnorm.pdf(xs, fit["a"], fit["loc"], fit["scale"]), lw=1.5, label="skew-normal fit")
    for c in canaries:
        ax.axvline(c.log_perplexity, color="red" if c.insertions else "green", alpha=0.5, lw=1)
    ax.plot([], [], color="red", label="inserted canaries")
    ax.plot([], [], color="green", label="controls")
    ax.set_xlabel("log-perplexity (bits)")
    ax.set_ylabel("density")
    ax.set_title(fmt, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_roc(fpr: Sequence[float], tpr: Sequence[float], path: Path) -> Path:
    """dp-audit's ROC of "planted iff low log-perplexity", log-log so the low-FPR end shows."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot(fpr, tpr, lw=1.5, label="attack")
    ax.plot([1e-3, 1], [1e-3, 1], ls="--", color="gray", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(1e-3, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("Membership of canaries: ROC")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_score_histograms(scores: Sequence[float], planted: Sequence[bool], path: Path) -> Path:
    """dp-audit's two histograms: log-perplexity of planted and of never-planted canaries."""
    import numpy as np

    plt = _plt()
    s, p = np.asarray(scores, dtype=float), np.asarray(planted, dtype=bool)
    bins = np.linspace(s.min(), s.max(), 50)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(s[~p], bins=bins, alpha=0.5, color="green", label=f"not planted ({int((~p).sum())})")
    ax.hist(s[p], bins=bins, alpha=0.5, color="red", label=f"planted once ({int(p.sum())})")
    ax.set_xlabel("log-perplexity (bits)")
    ax.set_ylabel("canaries")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_training(metrics: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Losses and (if tracked) exposure against training step."""
    tracked = [m for m in metrics if "exposure_by_insertions" in m]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [m for m in metrics if m.get("event", "epoch") == "epoch"]
    if not epochs:
        return None
    ax.plot([m["step"] for m in epochs], [m["train_bpc"] for m in epochs], "o-", label="train bits/char")
    valid = [m for m in metrics if m.get("valid_bpc") is not None]
    ax.plot([m["step"] for m in valid], [m["valid_bpc"] for m in valid], "s-", label="validation bits/char")
    ax.set_xlabel("training step")
    ax.set_ylabel("bits per character")
    if tracked:
        ax2 = ax.twinx()
        counts = sorted({int(n) for m in tracked for n in m["exposure_by_insertions"]})
        for n in counts:
            pts = [
                (m["step"], m["exposure_by_insertions"][str(n)])
                for m in tracked
                if str(n) in m["exposure_by_insertions"]
            ]
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "--", label=f"exposure, {n} insertions")
        ax2.set_ylabel("mean exposure (bits)")
        ax2.legend(fontsize=7, loc="center right")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("Training: loss and exposure")
    return _save(fig, path)


def plot_frontier(rows: Sequence[SweepRow], path: Path) -> Path:
    """Privacy/utility: validation bits/char against the mean exposure of inserted canaries."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r.valid_bpc, r.exposure_inserted_mean, s=40)
        eps = r.epsilon
        label = r.name + (f" (eps={eps:.2g})" if eps is not None else "")
        ax.annotate(
            label, (r.valid_bpc, r.exposure_inserted_mean), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    ax.set_xlabel("validation bits/char (lower = more useful)")
    ax.set_ylabel("mean exposure of inserted canaries (bits)")
    ax.set_title("Privacy / utility")
    return _save(fig, path)


def plot_sweep_exposure(rows: Sequence[SweepRow], path: Path) -> Path:
    """Mean exposure by insertion count, one line per run of a sweep (the runs share the canaries)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        by_n = sorted((int(n), v.mean) for n, v in r.exposure_by_insertions.items())
        ax.plot([max(n, 0.5) for n, _ in by_n], [m for _, m in by_n], "o-", label=f"{r.name} ({r.valid_bpc:.3f} bpc)")
    ax.axhline(1 / math.log(2), ls="--", color="gray", lw=1, label="chance (1.44 bits)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("insertions (0 shown at 0.5)")
    ax.set_ylabel("mean exposure (bits)")
    ax.set_title("Exposure by insertion count, per run")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_sweep_tracking(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: Path) -> Path | None:
    """Exposure over training for several runs: tracked mean exposure of each insertion count
    against training progress (left) and against the validation bits/char reached (right), so
    runs of different speed or family compare at equal utility. None if no run was tracked."""
    tracked = [
        (name, [m for m in metrics if "exposure_by_insertions" in m and m.get("valid_bpc") is not None])
        for name, metrics in runs
    ]
    tracked = [(name, ms) for name, ms in tracked if ms]
    if not tracked:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = ["-", "--", ":", "-."]
    counts = sorted({int(n) for _, ms in tracked for m in ms for n in m["exposure_by_insertions"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, ms) in enumerate(tracked):
        last = max(m["epoch"] for m in ms) or 1
        for j, n in enumerate(counts):
            pts = [m for m in ms if str(n) in m["exposure_by_insertions"]]
            ys = [m["exposure_by_insertions"][str(n)] for m in pts]
            kw = {"ls": styles[i % len(styles)], "color": colors[j % len(colors)], "marker": "o", "ms": 3}
            left.plot([m["epoch"] / last for m in pts], ys, label=f"{name}, {n} ins.", **kw)
            right.plot([m["valid_bpc"] for m in pts], ys, **kw)
    left.set_xlabel("fraction of the run's epochs")
    left.set_ylabel("mean exposure (bits)")
    left.set_title("Exposure over training")
    right.set_xlabel("validation bits/char reached (lower = more useful)")
    right.invert_xaxis()
    right.set_title("Exposure at equal utility")
    handles, labels = left.get_legend_handles_labels()  # beside the panels: inside, it hides the top curves
    right.legend(handles, labels, fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def render_html(
    title: str, sections: Sequence[tuple[str, str | Path]], path: Path, top: Sequence[str] = (), subtitle: str = ""
) -> Path:
    """A single self-contained HTML file (inline CSS, PNGs as data URIs, no external assets):
    ``top`` (HTML fragments, e.g. the verdict and tables), then the sections: text as
    preformatted blocks, PNGs as figures."""
    from .review import CSS

    parts = [
        "<!doctype html><html lang=en><head><meta charset='utf-8'>",
        "<meta name=viewport content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class=sub>{html.escape(subtitle)}</p>")
    parts.extend(top)
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, Path):
            data = base64.b64encode(content.read_bytes()).decode("ascii")
            parts.append(f"<img alt='{html.escape(heading)}' src='data:image/png;base64,{data}'>")
        else:
            parts.append(f"<details><summary>plain text</summary><pre>{html.escape(content)}</pre></details>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def read_report(path: Path) -> Report:
    """An audit's ``report.json``, or a one-line error saying it is not one."""
    data = read_json(path, "report")
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise AuditError(f"{path} is not an exposure-audit report")
    return Report.from_json(data)


def read_sweep(path: Path) -> Sweep:
    """A sweep's ``sweep.json``, or a one-line error saying it is not one."""
    data = read_json(path, "sweep")
    if not isinstance(data, dict) or data.get("kind") != SWEEP_KIND:
        raise AuditError(f"{path} is not an exposure-audit sweep")
    return Sweep.from_json(data)


def render_run(folder: Path, name: str | None = None) -> Path:
    """Draw the figures of an audit folder (report.json, optional samples.json and model/metrics.jsonl)
    into ``folder`` and write ``folder/report.html``: the verdict, the key figures, a plain-language
    reading, the canary table with risk levels, provenance, then the figures. ``name`` is the
    run's name in the title (the final folder's, when ``folder`` is still a staging folder)."""
    from .review import html_sections, provenance

    folder = Path(folder)
    report = read_report(folder / "report.json")
    sections: list[tuple[str, str | Path]] = [
        ("Exposure against insertion count", plot_exposure_vs_insertions(report, folder / "exposure_vs_insertions.png"))
    ]
    samples_path = folder / "samples.json"
    if samples_path.exists():
        samples = read_json(samples_path, "samples")
        for i, (fmt, entry) in enumerate(samples.items()):
            cs = [c for c in report.canaries if c.format == fmt]
            png = plot_histogram(entry["scores"], cs, entry.get("fit"), fmt, folder / f"histogram_{i}.png")
            sections.append((f"Log-perplexity of candidates: {fmt}", png))
    metrics_path = folder / "model" / "metrics.jsonl"
    if metrics_path.exists():
        png = plot_training(read_metrics(metrics_path), folder / "training.png")
        if png is not None:
            sections.append(("Training", png))
    summary = report.table
    if summary:
        sections.append(("The printed tables", summary))
    if report.data is None and (folder / "data" / "canaries.json").is_file():  # an older report
        from ..data.manifest import Manifest

        m = Manifest.read(folder / "data" / "canaries.json")
        report.data = DataInfo(
            corpus_source=m.corpus.get("source"),
            corpus_sha256=m.corpus.get("sha256"),
            format=(m.data or {}).get("format", "txt"),
            train_sha256=m.train.get("sha256"),
            manifest_sha256=m.to_json()["sha256"],
        )
    top = html_sections(report, provenance(report))
    top.append("<h2>Figures</h2>")
    name = name or folder.name
    formats = sorted({c.format for c in report.canaries})
    subtitle = f"{len(report.canaries)} canaries of {', '.join(repr(f) for f in formats)}"
    return render_html(f"exposure-audit report: {name}", sections, folder / "report.html", top=top, subtitle=subtitle)


def render_sweep(folder: Path, name: str | None = None) -> Path:
    """The privacy/utility figure and sweep.html for a sweep folder."""
    from .report import sweep_table

    folder = Path(folder)
    rows = read_sweep(folder / "sweep.json").runs
    sections: list[tuple[str, str | Path]] = [("Settings", sweep_table(rows))]
    sections.append(("Privacy / utility", plot_frontier(rows, folder / "privacy_utility.png")))
    sections.append(("Exposure by insertion count, per run", plot_sweep_exposure(rows, folder / "exposure_by_run.png")))
    metrics = [(r.name, folder / r.name / "model" / "metrics.jsonl") for r in rows]
    png = plot_sweep_tracking([(n, read_metrics(p)) for n, p in metrics if p.is_file()], folder / "tracking_by_run.png")
    if png is not None:
        sections.append(("Exposure over training, per run", png))
    for r in rows:
        run = folder / r.name
        if (run / "report.json").is_file():
            render_run(run, r.name)
            png = run / "exposure_vs_insertions.png"
            if png.is_file():
                sections.append((f"{r.name}: exposure against insertion count", png))
            png = run / "training.png"
            if png.is_file():
                sections.append((f"{r.name}: training", png))
    return render_html(f"exposure-audit sweep: {name or folder.name}", sections, folder / "sweep.html")


def rerender(folder: Path, emit: Callable[[str], None]) -> Path:
    """``exposure-audit report``: redraw an audit or sweep folder from its JSON and emit its tables
    (exposure; the sweep's settings; exposure during training where it was tracked)."""
    from ..training.metrics import read_metrics
    from .report import sweep_table, tracking_table

    folder = Path(folder)
    if (folder / "sweep.json").is_file():
        out = render_sweep(folder)
        rows = read_sweep(folder / "sweep.json").runs
        emit(sweep_table(rows))
        runs = [folder / r.name for r in rows]
    elif (folder / "report.json").is_file():
        out = render_run(folder)
        emit(read_report(folder / "report.json").table or "")
        runs = [folder]
    else:
        raise AuditError(f"{folder} holds neither report.json (an audit) nor sweep.json (a sweep)")
    for run in runs:
        metrics_path = run / "model" / "metrics.jsonl"
        if metrics_path.is_file():
            text = tracking_table(read_metrics(metrics_path))
            if text:
                emit(f"\n{run.name}: exposure during training\n{text}")
    return out
