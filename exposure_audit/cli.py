"""The command line: parse, call the library, print, map outcomes to exit codes.

Exit codes: 0 ok; 1 an inserted canary's exposure is above the threshold; 2 usage or input
error (one ``error: ...`` line on stderr, no traceback, no partial output).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import AuditConfig, apply_overrides, load_config
from .errors import AuditError

EXIT_OK, EXIT_EXPOSED, EXIT_USAGE = 0, 1, 2

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
force_option = click.option("--force", is_flag=True, help="Replace existing outputs.")


def _parse_schedule(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        counts = [int(v) for v in value.split(",") if v.strip() != ""]
    except ValueError:
        raise AuditError(f"--schedule {value!r}: expected comma-separated integers such as 0,1,2,4") from None
    if not counts:
        raise AuditError("--schedule is empty")
    return counts


def _config(path: str | None, overrides: dict[str, Any]) -> AuditConfig:
    return apply_overrides(load_config(path), overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exposure-audit")
def cli() -> None:
    """Measure how much a language model memorizes planted secrets (Secret Sharer exposure).

    \b
    insert   plant canaries into a corpus and split train/validation
    train    train the character-level LSTM on an insert folder
    measure  rank every canary among all candidates of its format: exposure
    audit    all three from one YAML config (the CI job)
    """


@cli.command()
@click.option("--corpus", type=str, default=None, help="UTF-8 text file (default: CPython's bundled reference text).")
@click.option("--out", "out", required=True, type=str, help="Output folder (train.txt, valid.txt, canaries.json).")
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its insert: section and seed).")
@click.option("--format", "formats", multiple=True, help="Canary format, e.g. 'my pin is {d:6}' (repeatable).")
@click.option("--schedule", type=str, default=None, help="Insertion counts, e.g. 0,1,2,4,8,16,32 (0 = controls).")
@click.option("--per-count", type=int, default=None, help="Canaries per insertion count.")
@click.option("--valid-fraction", type=float, default=None, help="Share of corpus lines held out for validation.")
@click.option("--seed", type=int, default=None, help="Seed for secrets, positions and the split.")
@force_option
@quiet_option
def insert(corpus, out, config_path, formats, schedule, per_count, valid_fraction, seed, force, quiet) -> None:
    """Plant canaries into a corpus; write train.txt, valid.txt and canaries.json."""
    from .files import output_dir
    from .pipeline import insert_folder

    cfg = _config(
        config_path,
        {
            "seed": seed,
            "corpus": corpus,
            "insert.formats": list(formats) or None,
            "insert.schedule": _parse_schedule(schedule),
            "insert.per_count": per_count,
            "insert.valid_fraction": valid_fraction,
        },
    )
    with output_dir(Path(out), force) as tmp:
        manifest = insert_folder(tmp, cfg.corpus, cfg.insert, cfg.seed)
    inserted = sum(c.insertions for c in manifest.canaries)
    click.echo(
        f"{out}: {len(manifest.canaries)} canaries ({inserted} insertions) in {manifest.train['lines']} training lines; "
        f"{manifest.valid['lines']} validation lines; seed {cfg.seed}"
    )


@cli.command()
@click.option("--data", "data", required=True, type=str, help="An insert output folder.")
@click.option("--out", "out", required=True, type=str, help="Checkpoint folder to write.")
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its model: and train: sections).")
@click.option("--epochs", type=int, default=None)
@click.option("--seed", type=int, default=None, help="Seed for initial weights and batch order.")
@click.option("--batch-size", type=int, default=None)
@click.option("--seq-len", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--max-chars", type=int, default=None, help="Characters per epoch (default: all).")
@click.option("--hidden", type=int, default=None, help="LSTM units per layer.")
@click.option("--layers", type=int, default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--weight-decay", type=float, default=None)
@force_option
@quiet_option
def train(data, out, config_path, epochs, seed, batch_size, seq_len, learning_rate, max_chars, hidden, layers, dropout, weight_decay, force, quiet) -> None:
    """Train the character-level LSTM; write model.safetensors, config.json, metrics.jsonl."""
    from .files import check_output_dir, output_dir
    from .train import train_folder

    cfg = _config(
        config_path,
        {
            "seed": seed,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.seq_len": seq_len,
            "train.learning_rate": learning_rate,
            "train.max_chars": max_chars,
            "train.weight_decay": weight_decay,
            "model.hidden": hidden,
            "model.layers": layers,
            "model.dropout": dropout,
        },
    )
    check_output_dir(Path(out), force)
    with output_dir(Path(out), force) as tmp:
        result = train_folder(Path(data), tmp, cfg.model, cfg.train, seed=cfg.seed, quiet=quiet)
    last = result.metrics[-1]
    valid = f"{last['valid_bpc']:.3f}" if last["valid_bpc"] is not None else "n/a"
    click.echo(
        f"{out}: {last['epoch']} epochs, {last['step']} steps in {result.seconds:.0f}s; "
        f"train {last['train_bpc']:.3f} bits/char, validation {valid} bits/char"
    )


def _measure_options(f):
    for opt in reversed(
        [
            click.option("--method", type=str, default=None, help="auto | enumerate | pruned | estimate | brute."),
            click.option("--max-steps", type=int, default=None, help="Model-step budget for exact methods."),
            click.option("--samples", type=int, default=None, help="Uniform candidates for estimates."),
            click.option("--fail-above", type=float, default=None, help="Exit 1 if an inserted canary's exposure exceeds this (bits)."),
            click.option("--redact", is_flag=True, help="Hide secrets in terminal output, JSON and JUnit."),
        ]
    ):
        f = opt(f)
    return f


def _measure_overrides(method, max_steps, samples, fail_above, seed=None) -> dict[str, Any]:
    return {
        "seed": seed,
        "measure.method": method,
        "measure.max_steps": max_steps,
        "measure.samples": samples,
        "measure.fail_above": fail_above,
    }


@cli.command()
@click.option("--model", "model_dir", required=True, type=str, help="Checkpoint folder (from train).")
@click.option("--canaries", "canaries_path", required=True, type=str, help="canaries.json (from insert).")
@click.option("--json", "json_path", type=str, default=None, help="Write the JSON report here.")
@click.option("--junit", "junit_path", type=str, default=None, help="Write JUnit XML here (a test case per inserted canary).")
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its measure: section).")
@click.option("--seed", type=int, default=None, help="Seed for sampled candidates.")
@click.option("--any-model", is_flag=True, help="Measure even if the model was not trained on this manifest's data.")
@_measure_options
@force_option
@quiet_option
def measure(model_dir, canaries_path, json_path, junit_path, config_path, seed, any_model, method, max_steps, samples, fail_above, redact, force, quiet) -> None:
    """Log-perplexity, rank and exposure of every canary."""
    from .files import check_writable_file
    from .manifest import Manifest
    from .models.charlstm import load_checkpoint

    cfg = _config(config_path, _measure_overrides(method, max_steps, samples, fail_above, seed))
    for p in (json_path, junit_path):
        if p is not None:
            check_writable_file(Path(p), force)
    manifest = Manifest.read(Path(canaries_path))
    model, model_config = load_checkpoint(Path(model_dir))
    trained_on = model_config.get("data", {}).get("train_sha256")
    if not any_model and trained_on != manifest.train.get("sha256"):
        raise AuditError(
            f"model {model_dir} was not trained on the data of {canaries_path} (train.txt sha256 differs); "
            "pass --any-model to measure anyway"
        )
    code = _measure_and_report(model, model_config, manifest, cfg, model_dir, json_path, junit_path, redact, quiet)
    sys.exit(code)


def _measure_and_report(model, model_config, manifest, cfg: AuditConfig, model_ref, json_path, junit_path, redact, quiet, extra=None) -> int:
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
    )
    threshold = m.fail_above
    ok = passed(results, threshold)
    info = {
        "model_path": str(model_ref),
        "model_description": describe(model_config),
        "seed": cfg.seed,
        "measure": {**vars(m)},
        "seconds": round(time.perf_counter() - t0, 3),
        **(extra or {}),
    }
    if json_path:
        write_json(Path(json_path), report_json(results, model=info, threshold=threshold, redact_secrets=redact))
    if junit_path:
        write_junit(Path(junit_path), junit_xml(results, threshold, redact_secrets=redact))
    click.echo(table(results, redact_secrets=redact, threshold=threshold))
    if threshold is not None:
        worst = max((r.exposure for r in results if r.insertions > 0), default=0.0)
        verdict = "PASS" if ok else "FAIL"
        click.echo(f"\n{verdict}: highest exposure of an inserted canary {worst:.2f} bits; threshold {threshold:g} bits")
    return EXIT_OK if ok else EXIT_EXPOSED


@cli.command()
@click.argument("config_path", required=False, type=str)
@click.option("--out", "out", type=str, default=None, help="Output folder (default: runs/audit-<time>).")
@click.option("--corpus", type=str, default=None, help="UTF-8 text file (overrides the config).")
@click.option("--epochs", type=int, default=None)
@click.option("--seed", type=int, default=None)
@_measure_options
@force_option
@quiet_option
def audit(config_path, out, corpus, epochs, seed, method, max_steps, samples, fail_above, redact, force, quiet) -> None:
    """Insert, train and measure from one YAML config (default: configs/default.yaml).

    Writes OUT/data, OUT/model, OUT/report.json and OUT/report.junit.xml, prints the table.
    """
    from .files import output_dir
    from .manifest import Manifest
    from .models.charlstm import load_checkpoint
    from .pipeline import insert_folder
    from .train import train_folder

    if config_path is None:
        default = Path("configs/default.yaml")
        config_path = str(default) if default.is_file() else None
    overrides = _measure_overrides(method, max_steps, samples, fail_above, seed)
    overrides.update({"corpus": corpus, "train.epochs": epochs})
    cfg = _config(config_path, overrides)
    if out is None:
        out = f"runs/audit-{time.strftime('%Y%m%d-%H%M%S')}"
        Path("runs").mkdir(exist_ok=True)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    with output_dir(Path(out), force) as tmp:
        (tmp / "data").mkdir()
        (tmp / "model").mkdir()
        (tmp / "config.yaml").write_text(__import__("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        echo(f"[1/3] insert: {', '.join(cfg.insert.formats)} x schedule {cfg.insert.schedule}")
        insert_folder(tmp / "data", cfg.corpus, cfg.insert, cfg.seed)
        manifest = Manifest.read(tmp / "data" / "canaries.json")
        echo(f"[2/3] train: {cfg.model.layers}x{cfg.model.hidden} LSTM, {cfg.train.epochs} epochs")
        result = train_folder(tmp / "data", tmp / "model", cfg.model, cfg.train, seed=cfg.seed, quiet=quiet)
        last = result.metrics[-1]
        echo(f"      validation {last['valid_bpc']:.3f} bits/char after {result.seconds:.0f}s")
        model, model_config = load_checkpoint(tmp / "model")
        echo("[3/3] measure")
        code = _measure_and_report(
            model, model_config, manifest, cfg, Path(out) / "model", tmp / "report.json", tmp / "report.junit.xml", redact, quiet,
            extra={"training": {"seconds": round(result.seconds, 3), "final": last}},
        )
    click.echo(f"\nwrote {out}/ (data/, model/, report.json, report.junit.xml)")
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one ``error: ...`` line and exit 2 for every usage or input error."""
    try:
        cli.main(args=argv, prog_name="exposure-audit", standalone_mode=False)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:  # usage errors, bad option values
        click.echo(f"error: {e.format_message().splitlines()[0] if e.format_message() else e}", err=True)
        return EXIT_USAGE
    except AuditError as e:
        click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
