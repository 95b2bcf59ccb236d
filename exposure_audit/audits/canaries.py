"""The commands as library functions: measure into reports, extract, the audit pipeline, sweeps.

Each CLI command parses its options, calls one function here (or in ``train.py`` /
``pipeline.py``) and prints what it is handed through the ``emit`` (results, stdout) and
``echo`` (progress notes, stderr) callbacks. Exit codes come back as return values.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import AuditConfig
from ..data.formats import Format
from ..data.manifest import Manifest
from ..distributed import is_main
from ..errors import AuditError, gate_exit
from ..exposure.options import ExtractOptions, MeasureOptions, exact_budget_steps
from ..models.base import Scorer

Emit = Callable[[str], None]


def _silent(_: str) -> None:
    pass


@dataclass(frozen=True)
class Outputs:
    """Where a measurement's reports go, and whether secrets are hidden in everything written."""

    json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None  # a Markdown summary (verdict + table), e.g. for a CI job summary
    redact: bool = False


def check_model_data(model: Any, manifest: Manifest, *, any_model: bool) -> bool:
    """Whether the model's own record says it was trained on the manifest's data.

    A model trained by this tool records the SHA-256 of its training text: measuring it against
    another manifest is refused unless ``any_model``. A model trained elsewhere carries no such
    record; it is measured, and the report says that the link was not checked (False)."""
    trained_on = (model.describe().get("data") or {}).get("train_sha256")
    if trained_on is None:
        return False
    if trained_on != manifest.train.get("sha256") and not any_model:
        raise AuditError(
            "the model was not trained on the data of this manifest (its training data sha256 differs); "
            "measure it anyway only if that is intended (any-model)"
        )
    return trained_on == manifest.train.get("sha256")


@dataclass(frozen=True)
class Target:
    """What ``measure`` reports on: a model against a manifest's canaries, and how the report names them."""

    model: Any
    manifest: Manifest
    model_ref: str | Path  # the model's path, as the report names it
    link_checked: bool = True  # the model's own record says it was trained on the manifest's data
    data_folder: Path | None = None  # the manifest's training data (chat canaries' as-trained context)
    reference: Any = None  # the same model in float32 (model in a cheaper dtype): exact ranks rescored in it


def measure_and_report(
    target: Target,
    options: MeasureOptions,
    *,
    outputs: Outputs = Outputs(),
    emit: Emit = _silent,
    context_role: str | None = None,
    collect: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Measure every canary of ``target.manifest``; write the reports asked for; emit the table
    and, with a threshold (``options.fail_above``), the verdict. Returns the exit code and the report.

    Each canary is scored after the context :func:`~.contexts.resolve_contexts` gives it, from
    ``options.context`` and ``context_role``. ``collect`` receives the samples for the report's
    histogram (see :func:`~.measure.measure`); ``extra`` is added to the report's ``model``."""
    from ..exposure.contexts import resolve_contexts
    from ..exposure.measure import measure
    from ..files import atomic_write_json, atomic_write_text
    from ..reports.report import junit_xml, passed, report_json, table
    from ..reports.review import markdown

    model, manifest, context = target.model, target.manifest, options.context
    t0 = time.perf_counter()
    contexts = resolve_contexts(model, manifest, target.data_folder, context=context, context_role=context_role)
    plans: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    results = measure(
        model,
        manifest.canaries,
        replace(options, context=contexts.default),
        collect=collect,
        plans=plans,
        contexts=contexts.per_canary,
        memory=memory,
        reference=target.reference,
    )
    threshold = options.fail_above
    ok = passed(results, threshold)
    described = model.describe()
    privacy = described.get("privacy")
    info = {
        "model_path": str(target.model_ref),
        "model_description": described.get("description"),
        "privacy": privacy,
        "seed": options.seed,
        # the exact budget as spent: given, or the default scaled by the model's step cost
        "measure": {
            **options.settings(),
            "exact_budget": exact_budget_steps(options.exact_budget, Scorer.of(model).step_flops),
        },
        "context": context,
        "context_used": contexts.to_json(),  # which context each canary was scored after
        "seconds": round(time.perf_counter() - t0, 3),
        "details": described,
        "trained_on_manifest_data": target.link_checked,
        "plan": plans,  # per format: what auto chose, predicted and actual model steps
        "ranks_rescored_in": "float32" if target.reference is not None else None,
        "search_memory": memory["budget"].to_json(),  # the budget (--max-memory) and the peak held
        **(extra or {}),
    }
    text = table(results, redact_secrets=outputs.redact, threshold=threshold)
    if privacy:
        text += (
            f"\n\nmodel trained with DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g} "
            f"(per {privacy['unit']})"
        )
    if contexts.mode == "as-trained":
        text += (
            f"\n\ncontext: {len(contexts.per_canary)} canaries scored in their trained conversation "
            "(chat template)" + (f"; controls after a fresh {contexts.role!r} message" if contexts.role else "")
        )
    elif contexts.mode == "role":
        text += f"\n\ncontext: the chat template's header of a fresh {contexts.role!r} message"
    if not target.link_checked:
        text += "\n\nnote: the model carries no record of its training data; its link to this manifest was not checked"
    data = {
        "corpus_source": manifest.corpus.get("source"),
        "corpus_sha256": manifest.corpus.get("sha256"),
        "format": (manifest.data or {}).get("format", "txt"),
        "train_sha256": manifest.train.get("sha256"),
        "manifest_sha256": manifest.to_json()["sha256"],
        "manifest_seed": manifest.seed,
    }
    report = report_json(
        results, model=info, threshold=threshold, redact_secrets=outputs.redact, extra={"data": data, "table": text}
    )
    code = gate_exit(not ok)
    if not is_main():  # under torchrun every rank holds the same results; rank 0 writes and prints
        return code, report
    if outputs.markdown:
        atomic_write_text(Path(outputs.markdown), markdown(report))
    if outputs.json:
        atomic_write_json(Path(outputs.json), report)
    if outputs.junit:
        atomic_write_text(Path(outputs.junit), junit_xml(results, threshold, redact_secrets=outputs.redact))
    emit(text)
    if threshold is not None:
        worst = max((r.exposure for r in results if r.insertions > 0), default=0.0)
        verdict = "PASS" if ok else "FAIL"
        emit(f"\n{verdict}: highest exposure of an inserted canary {worst:.2f} bits; threshold {threshold:g} bits")
    return code, report


def run_extractions(model: Any, formats: Sequence[Format], options: ExtractOptions) -> dict[str, Any]:
    """Extract each format's ``options.top`` most likely secrets (best-first, or beam search with
    ``options.beam``), each search holding at most ``options.max_memory`` of state."""
    from ..exposure.extract import beam_search, best_first
    from ..exposure.tree import check_format
    from ..memory import MemoryBudget
    from ..progress import Progress

    o = options
    o.check()
    for fmt in formats:  # every format checked before a progress bar is drawn
        check_format(model, fmt)
    model.context_ids(o.context)
    out = {}
    for fmt in formats:
        if o.beam is not None:
            out[fmt.source] = beam_search(
                model, fmt, width=o.beam, top=o.top, max_steps=o.max_steps, context=o.context, max_memory=o.max_memory
            )
            continue
        with Progress(total=o.max_steps, desc=f"extract {fmt.source}", quiet=o.quiet, unit="step") as bar:
            out[fmt.source] = best_first(
                model,
                fmt,
                top=o.top,
                max_steps=o.max_steps,
                context=o.context,
                progress=bar.update,
                max_memory=MemoryBudget.of(o.max_memory),  # a fresh budget per format: its own peak
            )
    return out


def extract_and_report(
    model: Any,
    options: ExtractOptions,
    *,
    format_source: str | None = None,
    manifest: Manifest | None = None,
    redact: bool = False,
    json_path: Path | None = None,
    emit: Emit = _silent,
    context_role: str | None = None,
    data_folder: Path | None = None,
) -> dict[str, Any]:
    """``extract``: one format, or every format of a manifest with where each canary landed.

    The context: ``options.context``, else the chat template's header of a fresh ``context_role``
    message; for a manifest of chat canaries and a model with a chat template, the header of a
    fresh message of the role the canaries were planted in (a search is per format, so it cannot
    follow each canary's own conversation as ``measure`` does)."""
    from ..exposure.contexts import resolve_contexts
    from ..exposure.extract import extraction_summary
    from ..files import atomic_write_json
    from ..models.chat import chat_tokenizer, role_context
    from ..reports.report import extraction_summary_lines, extraction_table

    if (format_source is None) == (manifest is None):
        raise AuditError("give a format or a manifest of canaries (one of them)")
    if manifest is not None:
        formats = [Format.parse(f) for f in dict.fromkeys(c.format for c in manifest.canaries)]
    else:
        formats = [Format.parse(format_source)]
    contexts = resolve_contexts(model, manifest, data_folder, context=options.context, context_role=context_role)
    used = contexts.to_json()
    if contexts.mode == "as-trained":
        roles = [w["role"] for w in contexts.where.values()]
        role = max(set(roles), key=roles.count) if roles else (contexts.role or "user")
        contexts.default = role_context(chat_tokenizer(model), role)
        used = {"mode": "role", "text": contexts.default, "role": role, "from": "the canaries' role"}
    results = run_extractions(model, formats, replace(options, context=contexts.default))
    if not is_main():  # under torchrun rank 0 prints and writes
        return {}
    for ex in results.values():
        emit(extraction_table(ex, redact, manifest.canaries if manifest else None))
    if manifest is None:
        payload = next(iter(results.values())).to_json(redact)
    else:
        payload = extraction_summary(results, manifest.canaries, top=options.top, redact=redact)
        emit("\n".join(extraction_summary_lines(payload, redact)))
    if contexts.mode != "default":
        payload["context_used"] = used
    if json_path is not None:
        atomic_write_json(Path(json_path), payload)
    return payload


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
    markdown: Path | None = None,
) -> int:
    """Insert (unless ``data_dir`` is shared), train, measure, extract and render into ``tmp``."""
    import yaml

    from ..data.pipeline import insert_folder
    from ..exposure.extract import extraction_summary
    from ..files import atomic_write_json, atomic_write_text
    from ..models import load_model
    from ..models.registry import describe_config
    from ..reports.plots import render_run
    from ..reports.report import extraction_summary_lines
    from ..training import train_folder
    from ..training.metrics import last_epoch

    (tmp / "model").mkdir()
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if data_dir is None:
        data_dir = tmp / "data"
        data_dir.mkdir()
        echo(f"[1/4] insert: {', '.join(cfg.insert.formats)} x schedule {cfg.insert.schedule}")
        insert_folder(data_dir, cfg.corpus, cfg.insert, cfg.seed)
    manifest = Manifest.read(data_dir / "canaries.json")
    dp = " with DP-SGD" if cfg.train.dp.enabled else ""
    echo(f"[2/4] train: {describe_config(cfg.model)}, {cfg.train.epochs} epochs{dp}")
    result = train_folder(data_dir, tmp / "model", cfg, quiet=quiet)
    last = last_epoch(result.metrics)
    valid = f"{last['valid_bpc']:.3f} bits/char" if last["valid_bpc"] is not None else "n/a (no validation text)"
    echo(f"      validation {valid} after {result.seconds:.0f}s")
    model = load_model(tmp / "model")
    echo("[3/4] measure")
    samples: dict[str, Any] = {}
    code, written = measure_and_report(
        # chat canaries in their trained context (data_dir) where the model has a chat template
        Target(model, manifest, model_ref=final / "model", data_folder=data_dir),
        replace(cfg.measure, seed=cfg.seed, quiet=quiet),
        outputs=Outputs(junit=tmp / "report.junit.xml", redact=redact),
        emit=emit,
        extra={"training": {"seconds": round(result.seconds, 3), "final": last}},
        collect=samples,
    )
    from ..reports.schema import ExtractionSummary, Report

    report = Report.from_json(written)  # the typed report: the sections below are added to it
    if cfg.extract.enabled:
        echo(f"[4/4] extract: best-first top {cfg.extract.top} per format")
        formats = [Format.parse(src) for src in dict.fromkeys(c.format for c in manifest.canaries)]
        e = cfg.extract
        extractions = run_extractions(
            model, formats, ExtractOptions(top=e.top, max_steps=e.max_steps, max_memory=e.max_memory, quiet=quiet)
        )
        summary = extraction_summary(extractions, manifest.canaries, top=cfg.extract.top, redact=redact)
        lines = extraction_summary_lines(summary, redact)
        proof = ", ".join(
            f"{'proven' if e.proven else 'NOT proven'} in {e.model_steps:,} steps" for e in extractions.values()
        )
        lines.insert(1, f"extraction ({proof})")
        text = "\n".join(lines)
        emit(text)
        report.extraction = ExtractionSummary.from_json(
            {k: v for k, v in summary.items() if k not in ("schema", "kind")}
        )
        report.table = (report.table or "") + "\n" + text
    if cfg.memorization.enabled:
        code = max(code, _memorization_section(cfg, tmp, data_dir, report, quiet=quiet, echo=echo, emit=emit))
    atomic_write_json(tmp / "report.json", report.to_json())
    if markdown is not None:
        from ..reports.review import markdown as markdown_summary

        atomic_write_text(Path(markdown), markdown_summary(report))
    if not redact:
        atomic_write_json(tmp / "samples.json", samples)
    try:
        render_run(tmp, final.name)
    except AuditError as e:  # plots are a convenience; the report stands without them
        echo(f"note: no plots ({e})")
    if cfg.audit.enabled:
        from .dp_audit import run_dp_audit

        echo("== dp-audit: an empirical epsilon lower bound (its own planting and training run)")
        (tmp / "dp-audit").mkdir()
        dp_code, _ = run_dp_audit(cfg, tmp / "dp-audit", quiet=quiet, echo=echo, emit=emit)
        code = max(code, dp_code)
    return code


def _memorization_section(cfg: AuditConfig, tmp: Path, data_dir: Path, report: Any, **kw: Any) -> int:
    """`memorization` on this run's data and model, beside the canaries: OUT/memorization.{json,html};
    the report (a ``reports.schema.Report``) gets its headline figures (docs/memorization.md)."""
    from ..reports.schema import Memorization
    from .memorization import options_from_config, run_memorization
    from .memorization_report import Outputs, table

    kw["echo"]("== memorization: extractable training records and membership inference")
    result = run_memorization(options_from_config(cfg, tmp / "model", data_dir), quiet=kw["quiet"], emit=kw["echo"])
    Outputs(json=tmp / "memorization.json", html=tmp / "memorization.html").write(result.report)
    text = table(result.report)
    kw["emit"](text)
    r = result.report
    attacks = (r["mia"] or {}).get("attacks", {})
    report.memorization = Memorization(
        file="memorization.json",
        exact_match_rate=r["discoverable"]["exact_match_rate"],
        by_copies=r["discoverable"]["by_copies"],
        extractable_fraction=r["probabilistic"]["extractable_fraction"],
        auc={name: a["auc"] for name, a in attacks.items()},
        tpr_at_1pct_fpr={name: a["tpr_at_1pct_fpr"] for name, a in attacks.items()},
        failed=result.failures,
    )
    report.table = (report.table or "") + "\n\n" + text
    return result.code


def run_sweep(
    base: AuditConfig,
    runs: Sequence[tuple[str, AuditConfig]],
    tmp: Path,
    final: Path,
    *,
    quiet: bool,
    echo: Emit,
    emit: Emit,
) -> list[Any]:
    """The audit over a grid of settings sharing one insertion (``tmp/data``); one folder per run,
    ``sweep.json`` and the privacy/utility figure. Returns the rows of the sweep table
    (``reports.schema.SweepRow``)."""
    from ..data.pipeline import insert_folder
    from ..files import atomic_write_json
    from ..reports.plots import render_sweep
    from ..reports.schema import Sweep

    (tmp / "data").mkdir()
    echo(f"insert: {', '.join(base.insert.formats)} x schedule {base.insert.schedule} (shared by {len(runs)} runs)")
    insert_folder(tmp / "data", base.corpus, base.insert, base.seed)
    rows = []
    for name, cfg in runs:
        echo(f"== run {name}")
        (tmp / name).mkdir()
        run_audit(cfg, tmp / name, final / name, redact=False, quiet=quiet, echo=echo, emit=emit, data_dir=tmp / "data")
        rows.append(sweep_row(name, cfg, tmp / name))
    atomic_write_json(tmp / "sweep.json", Sweep(runs=rows).to_json())
    render_sweep(tmp, final.name)
    return rows


def sweep_row(name: str, cfg: AuditConfig, folder: Path) -> Any:
    """One setting's figures (a ``reports.schema.SweepRow``): utility (validation bits/char),
    epsilon, exposure per insertion count."""
    from ..reports.plots import read_report
    from ..reports.report import by_insertions
    from ..reports.schema import Exposures, SweepRow

    report = read_report(folder / "report.json")
    training, privacy = report.training, report.privacy
    assert training is not None and training.final is not None, "an audit's report records its training"
    by_n = by_insertions((c.insertions, c.exposure) for c in report.canaries)
    inserted = [e for n, es in by_n.items() if n > 0 for e in es]
    return SweepRow(
        name=name,
        valid_bpc=training.final.valid_bpc,
        train_bpc=training.final.train_bpc,
        epsilon=privacy.epsilon if privacy else None,
        delta=privacy.delta if privacy else None,
        dropout=cfg.model.dropout,
        weight_decay=cfg.train.weight_decay,
        training_seconds=training.seconds,
        exposure_inserted_mean=statistics.fmean(inserted) if inserted else 0.0,
        exposure_by_insertions={str(n): Exposures(mean=statistics.fmean(es), max=max(es)) for n, es in by_n.items()},
    )
