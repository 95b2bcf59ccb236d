"""The audit as library functions: measure into a report, extract, and the whole pipeline.

The CLI only parses, prints (through the ``emit``/``echo`` callbacks given here) and maps
outcomes to exit codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import AuditConfig
from .errors import AuditError
from .formats import Format

EXIT_OK, EXIT_EXPOSED = 0, 1
Emit = Callable[[str], None]


def measure_and_report(
    model,
    model_config,
    manifest,
    cfg: AuditConfig,
    model_ref,
    json_path,
    junit_path,
    redact,
    quiet,
    emit: Emit,
    extra=None,
    collect=None,
) -> tuple[int, dict[str, Any]]:
    """Measure every canary of ``manifest``; write the JSON/JUnit reports asked for; emit the table
    and, with a threshold, the verdict. Returns the exit code and the report."""
    from .exposure.measure import measure as run_measure
    from .models.charlstm import describe
    from .report import junit_xml, passed, report_json, table, write_json, write_junit

    m = cfg.measure
    t0 = time.perf_counter()
    results = run_measure(
        model,
        manifest.canaries,
        method=m.method,
        max_steps=m.max_steps,
        samples=m.samples,
        seed=cfg.seed,
        batch=m.batch,
        confidence=m.confidence,
        bootstrap=m.bootstrap,
        quiet=quiet,
        collect=collect,
    )
    threshold = m.fail_above
    ok = passed(results, threshold)
    privacy = model_config.get("privacy")
    info = {
        "model_path": str(model_ref),
        "model_description": describe(model_config),
        "privacy": privacy,
        "seed": cfg.seed,
        "measure": {**vars(m)},
        "seconds": round(time.perf_counter() - t0, 3),
        **(extra or {}),
    }
    text = table(results, redact_secrets=redact, threshold=threshold)
    if privacy:
        text += f"\n\nmodel trained with DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g} (per {privacy['unit']})"
    report = report_json(results, model=info, threshold=threshold, redact_secrets=redact, extra={"table": text})
    if json_path:
        write_json(Path(json_path), report)
    if junit_path:
        write_junit(Path(junit_path), junit_xml(results, threshold, redact_secrets=redact))
    emit(text)
    if threshold is not None:
        worst = max((r.exposure for r in results if r.insertions > 0), default=0.0)
        verdict = "PASS" if ok else "FAIL"
        emit(f"\n{verdict}: highest exposure of an inserted canary {worst:.2f} bits; threshold {threshold:g} bits")
    return (EXIT_OK if ok else EXIT_EXPOSED), report


def run_audit(
    cfg: AuditConfig,
    tmp: Path,
    final: Path,
    *,
    redact: bool,
    quiet: bool,
    echo: Emit,
    emit: Emit,
    data_dir: Path | None = None,
) -> int:
    """Insert (unless ``data_dir`` is shared), train, measure, extract and render into ``tmp``."""
    import yaml

    from .files import atomic_write_json, atomic_write_text
    from .manifest import Manifest
    from .models.charlstm import load_checkpoint
    from .pipeline import insert_folder
    from .plots import render_run
    from .train import train_folder

    (tmp / "model").mkdir()
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if data_dir is None:
        data_dir = tmp / "data"
        data_dir.mkdir()
        echo(f"[1/4] insert: {', '.join(cfg.insert.formats)} x schedule {cfg.insert.schedule}")
        insert_folder(data_dir, cfg.corpus, cfg.insert, cfg.seed)
    manifest = Manifest.read(data_dir / "canaries.json")
    dp = " with DP-SGD" if cfg.train.dp.enabled else ""
    echo(f"[2/4] train: {cfg.model.layers}x{cfg.model.hidden} LSTM, {cfg.train.epochs} epochs{dp}")
    result = train_folder(data_dir, tmp / "model", cfg.model, cfg.train, seed=cfg.seed, quiet=quiet)
    last = [m for m in result.metrics if m.get("event", "epoch") == "epoch"][-1]
    echo(f"      validation {last['valid_bpc']:.3f} bits/char after {result.seconds:.0f}s")
    model, model_config = load_checkpoint(tmp / "model")
    echo("[3/4] measure")
    samples: dict[str, Any] = {}
    code, report = measure_and_report(
        model,
        model_config,
        manifest,
        cfg,
        final / "model",
        None,
        tmp / "report.junit.xml",
        redact,
        quiet,
        emit,
        extra={"training": {"seconds": round(result.seconds, 3), "final": last}},
        collect=samples,
    )
    if cfg.extract.enabled:
        echo(f"[4/4] extract: best-first top {cfg.extract.top} per format")
        extractions = {
            src: run_extraction(model, Format.parse(src), cfg.extract.top, cfg.extract.max_steps, "\n", None, quiet)
            for src in dict.fromkeys(c.format for c in manifest.canaries)
        }
        rows, by_n = extraction_summary(extractions, manifest.canaries)
        lines = extraction_report_lines(rows, by_n, cfg.extract.top, redact)
        proof = ", ".join(
            f"{'proven' if e.proven else 'NOT proven'} in {e.model_steps:,} steps" for e in extractions.values()
        )
        lines.insert(1, f"extraction ({proof})")
        text = "\n".join(lines)
        emit(text)
        report["extraction"] = {
            "top": cfg.extract.top,
            "formats": [e.to_json(redact) for e in extractions.values()],
            "canaries": [{**r, "secret": redact_secret(r["secret"], redact)} for r in rows],
            "success_by_insertions": {str(n): v for n, v in sorted(by_n.items())},
        }
        report["table"] += "\n" + text
    atomic_write_json(tmp / "report.json", report)
    if not redact:
        atomic_write_json(tmp / "samples.json", samples)
    try:
        render_run(tmp)
    except AuditError as e:  # plots are a convenience; the report stands without them
        echo(f"note: no plots ({e})")
    return code


def extraction_table(ex, redact: bool, canaries=None) -> str:
    from .report import redact as hide

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
    lines.append(
        f"{'#':>3}  {'secret':<{max(6, ex.candidates and len(ex.candidates[0].secret) or 6)}}  {'log-ppl':>8}  {'P(after prefix)':>15}  planted"
    )
    for i, c in enumerate(ex.candidates, 1):
        share = 2.0 ** -(c.log_perplexity - ex.prefix_cost)
        mark = f"canary, inserted {planted[c.secret].insertions}x" if c.secret in planted else ""
        lines.append(
            f"{i:>3}  {hide(c.secret) if redact else c.secret}  {c.log_perplexity:>8.2f}  {share:>15.3e}  {mark}"
        )
    lines.append(f"these {len(ex.candidates)} hold {ex.mass:.1%} of the probability of completing the format's prefix")
    return "\n".join(lines)


def run_extraction(model, fmt, top, max_steps, context, beam, quiet):
    from .exposure.engine import check_vocabulary
    from .extract import beam_search, best_first
    from .progress import Progress

    check_vocabulary(model.vocab, fmt, context)  # before a progress bar is drawn

    if beam is not None:
        return beam_search(model, fmt, width=beam, top=top, max_steps=max_steps, context=context)
    with Progress(total=max_steps, desc=f"extract {fmt.source}", quiet=quiet, unit="step") as bar:
        return best_first(model, fmt, top=top, max_steps=max_steps, context=context, progress=bar.update)


def extraction_summary(extractions, canaries) -> tuple[list[dict[str, Any]], dict[int, dict[str, int]]]:
    """Each canary's position in its format's extracted list, and the success rate per count."""
    rows, by_n = [], {}
    for c in canaries:
        ex = extractions[c.format]
        pos = ex.position(c.secret)
        rows.append({"id": c.id, "format": c.format, "secret": c.secret, "insertions": c.insertions, "position": pos})
        stat = by_n.setdefault(c.insertions, {"canaries": 0, "extracted_top1": 0, "in_top_k": 0})
        stat["canaries"] += 1
        stat["extracted_top1"] += int(pos == 1)
        stat["in_top_k"] += int(pos is not None)
    return rows, by_n


def extraction_report_lines(rows, by_n, top: int, redact: bool) -> list[str]:
    from .report import redact as hide

    lines = ["", f"{'canary':<12}  {'ins':>3}  position in top {top}"]
    for r in rows:
        secret = hide(r["secret"]) if redact else r["secret"]
        lines.append(f"{secret:<12}  {r['insertions']:>3}  {r['position'] if r['position'] else f'not in top {top}'}")
    lines.append("")
    lines.append("insertions  canaries  extracted at #1  in top " + str(top))
    for n in sorted(by_n):
        st = by_n[n]
        label = f"{n} (control)" if n == 0 else str(n)
        lines.append(f"{label:>10}  {st['canaries']:>8}  {st['extracted_top1']:>15}  {st['in_top_k']:>8}")
    return lines


def redact_secret(secret: str, redact: bool) -> str:
    from .report import redact as hide

    return hide(secret) if redact else secret
