"""The command line: parse, call the library, print, map outcomes to exit codes.

Exit codes (exposure_audit/errors.py): 0 ok; 1 a gate failed (and nothing else); 2 usage or
input error (one ``error: ...`` line on stderr, no traceback, no partial output); 3 a torchrun
rank was lost; 70 an internal error (a bug).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from . import __version__
from .audits.scan import METHODS as SCAN_METHODS
from .audits.scan import TERMINATORS
from .config import AuditConfig, apply_overrides, load_config
from .data.records import FORMATS as CORPUS_FORMATS
from .data.records import PLACEMENTS
from .distributed import BACKENDS
from .errors import (
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    EXIT_LOST,
    EXIT_OK,
    EXIT_USAGE,
    AuditError,
    is_out_of_memory,
    out_of_memory_error,
)
from .exposure.measure import ESTIMATORS, METHODS, PREFER
from .exposure.options import DEFAULT_EXACT_BUDGET
from .memory import DEFAULT_MAX_MEMORY
from .models import registry as model_kinds

distributed_options = [
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="torchrun: the process group's backend (auto: NCCL where CUDA computes, else gloo).",
    ),
    click.option(
        "--timeout",
        "dist_timeout",
        type=click.FloatRange(min=1),
        default=1800,
        show_default=True,
        help="torchrun: seconds a rank waits for the others before giving up.",
    ),
]


def _join(backend: str, timeout: float, *, uses_cuda: bool = True):
    """Join the torchrun job if this process is one of its ranks (a no-op otherwise)."""
    from .distributed import start

    return start(backend, timeout=timeout, uses_cuda=uses_cuda)


def _rank_zero_only(command: str) -> None:
    """The pipeline commands run on rank 0 alone under torchrun; the other ranks leave at once."""
    from .distributed import env_rank, env_world, launched

    if not launched():
        return
    if env_rank() != 0:
        sys.exit(EXIT_OK)
    world = env_world()
    if world != 1:
        click.echo(
            f"note: {command} runs on rank 0 only under torchrun (the other {world - 1} ranks exit); "
            "run train and measure under torchrun to spread the work (docs/distributed.md)",
            err=True,
        )


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
@click.option("--debug", is_flag=True, help="On an internal error (a bug), print its traceback.")
def cli(debug: bool) -> None:
    """Measure how much a language model memorizes planted secrets (Secret Sharer exposure).

    The usual flow: insert canaries into the training data, train (here or with your own
    pipeline), then measure; audit runs all three from one YAML config (the CI job).

    Exit status: 0 ok, 1 a gate failed, 2 bad input, 3 a torchrun rank was lost, 70 a bug.
    """
    _DEBUG[0] = debug


def _context(value: str | None) -> str | None:
    """--context as typed: \\n and \\t stand for a newline and a tab."""
    return None if value is None else value.replace("\\n", "\n").replace("\\t", "\t")


model_options = [
    click.option(
        "--device",
        type=click.Choice(model_kinds.DEVICES),
        default="auto",
        show_default=True,
        help="Where a Hugging Face model runs.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(model_kinds.DTYPES),
        default=None,
        help="Weights' dtype for a Hugging Face model (default float32 on CPU).",
    ),
    click.option(
        "--context",
        type=str,
        default=None,
        help="Text before each canary line (\\n = newline). Default: the model's BOS token, else a newline.",
    ),
    base_option := click.option(
        "--base",
        "base_path",
        type=str,
        default=None,
        help="The base model of a PEFT adapter folder (default: the adapter's own base when it is local).",
    ),
]


def _with(options):
    def decorate(f):
        for opt in reversed(options):
            f = opt(f)
        return f

    return decorate


@cli.command()
@click.option(
    "--corpus",
    type=str,
    default=None,
    help="UTF-8 text file, JSONL, CSV/TSV, Parquet or a folder of text files (default: CPython's reference text).",
)
@click.option(
    "--corpus-format",
    type=click.Choice(CORPUS_FORMATS),
    default=None,
    help="The corpus's format (default: from its extension; a folder is a folder).",
)
@click.option(
    "--text-field", type=str, default=None, help="JSONL: the field holding the text (default text; messages = chat)."
)
@click.option(
    "--text-column", type=str, default=None, help="CSV/TSV/Parquet: the column holding the text (default text)."
)
@click.option(
    "--placement",
    type=click.Choice(PLACEMENTS),
    default=None,
    help="Canaries as new records, or as lines inside records (default: record for JSONL and tables, line otherwise).",
)
@click.option(
    "--out",
    "out",
    required=True,
    type=str,
    help="Output folder (train and valid in the corpus's format, canaries.json).",
)
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its insert: section and seed).")
@click.option("--format", "formats", multiple=True, help="Canary format, e.g. 'my pin is {d:6}' (repeatable).")
@click.option("--schedule", type=str, default=None, help="Insertion counts, e.g. 0,1,2,4,8,16,32 (0 = controls).")
@click.option("--per-count", type=int, default=None, help="Canaries per insertion count.")
@click.option("--valid-fraction", type=float, default=None, help="Share of corpus lines held out for validation.")
@click.option("--seed", type=int, default=None, help="Seed for secrets, positions and the split.")
@force_option
@quiet_option
def insert(
    corpus,
    corpus_format,
    text_field,
    text_column,
    placement,
    out,
    config_path,
    formats,
    schedule,
    per_count,
    valid_fraction,
    seed,
    force,
    quiet,
) -> None:
    """Plant canaries into a corpus; write train and valid (in the corpus's format) and canaries.json."""
    _rank_zero_only("insert")
    from .data.pipeline import insert_folder
    from .files import output_dir

    cfg = _config(
        config_path,
        {
            "seed": seed,
            "corpus": corpus,
            "insert.formats": list(formats) or None,
            "insert.schedule": _parse_schedule(schedule),
            "insert.per_count": per_count,
            "insert.valid_fraction": valid_fraction,
            "insert.corpus_format": corpus_format,
            "insert.text_field": text_field,
            "insert.text_column": text_column,
            "insert.placement": placement,
        },
    )
    with output_dir(Path(out), force) as tmp:
        manifest = insert_folder(tmp, cfg.corpus, cfg.insert, cfg.seed, quiet=quiet)
    inserted = sum(c.insertions for c in manifest.canaries)
    unit = "records" if manifest.data else "lines"
    where = f" ({manifest.data['format']}, placement {manifest.data['placement']})" if manifest.data else ""
    click.echo(
        f"{out}: {len(manifest.canaries)} canaries ({inserted} insertions) in {manifest.train[unit]} training {unit}; "
        f"{manifest.valid[unit]} validation {unit}; seed {cfg.seed}{where}"
    )


@cli.command()
@click.option("--data", "data", type=str, default=None, help="An insert output folder.")
@click.option("--out", "out", type=str, default=None, help="Checkpoint folder to write.")
@click.option(
    "--resume", "resume", type=str, default=None, help="Continue the interrupted training that was writing this folder."
)
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its model: and train: sections).")
@click.option("--epochs", type=int, default=None)
@click.option("--seed", type=int, default=None, help="Seed for initial weights and batch order.")
@click.option("--batch-size", type=int, default=None)
@click.option("--seq-len", type=int, default=None)
@click.option("--learning-rate", type=float, default=None)
@click.option("--max-chars", type=int, default=None, help="Characters per epoch (default: all).")
@click.option(
    "--kind",
    type=click.Choice(model_kinds.trainable()),
    default=None,
    help="Model family (default char-lstm; transformer settings come from the config's model.transformer).",
)
@click.option(
    "--base",
    type=str,
    default=None,
    help="Fine-tune this Hugging Face model (folder or .gguf) instead of training a fresh one.",
)
@click.option("--lora", is_flag=True, default=None, help="Train a LoRA adapter (peft) instead of every weight.")
@click.option("--lora-r", type=int, default=None, help="LoRA rank (default 8).")
@click.option("--lora-alpha", type=float, default=None, help="LoRA alpha: the update is scaled by alpha / r.")
@click.option("--lora-dropout", type=float, default=None, help="Dropout on the LoRA input.")
@click.option(
    "--lora-target",
    type=str,
    default=None,
    help="Comma-separated modules to adapt (default q_proj,k_proj,v_proj,o_proj).",
)
@click.option("--merge", is_flag=True, default=None, help="With --lora: write the merged model, not an adapter folder.")
@click.option("--embedding", type=int, default=None, help="Embedding size.")
@click.option("--hidden", type=int, default=None, help="LSTM units per layer.")
@click.option("--layers", type=int, default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--weight-decay", type=float, default=None)
@click.option("--checkpoint-every", type=int, default=None, help="Steps between resumable training states.")
@click.option("--grad-clip", type=float, default=None, help="Max gradient norm without noise (0 = off).")
@click.option("--dp", is_flag=True, default=None, help="Train with DP-SGD (Opacus).")
@click.option("--noise-multiplier", type=float, default=None, help="DP-SGD noise multiplier.")
@click.option("--target-epsilon", type=float, default=None, help="DP-SGD: solve the noise for this epsilon.")
@click.option("--delta", type=float, default=None, help="DP-SGD delta (default 1e-5).")
@click.option("--max-grad-norm", type=float, default=None, help="DP-SGD per-example clipping norm.")
@click.option(
    "--track-exposure", is_flag=True, default=None, help="Measure the canaries during training (into metrics.jsonl)."
)
@click.option(
    "--track-every", type=int, default=None, help="Steps between exposure measurements (default: epoch ends)."
)
@_with(distributed_options)
@force_option
@quiet_option
def train(
    data,
    out,
    resume,
    config_path,
    epochs,
    seed,
    batch_size,
    seq_len,
    learning_rate,
    max_chars,
    kind,
    base,
    lora,
    lora_r,
    lora_alpha,
    lora_dropout,
    lora_target,
    merge,
    embedding,
    hidden,
    layers,
    dropout,
    weight_decay,
    checkpoint_every,
    grad_clip,
    dp,
    noise_multiplier,
    target_epsilon,
    delta,
    max_grad_norm,
    track_exposure,
    track_every,
    backend,
    dist_timeout,
    force,
    quiet,
) -> None:
    """Train a model on an insert folder: the paper's char-LSTM (a checkpoint folder), a small
    transformer with a learned tokenizer, or fine-tune your Hugging Face model with --base (a
    Hugging Face folder either way); writes metrics.jsonl beside the weights.

    Training state is saved every --checkpoint-every steps and at each epoch end in a hidden
    folder beside the output; after a crash or kill, `train --resume OUT` continues from it
    and ends with the same weights as an uninterrupted run.

    Under torchrun: DistributedDataParallel, each rank on its share of every global batch;
    rank 0 writes the checkpoint, the metrics and the resume state (docs/distributed.md).
    """
    from .distributed import is_main
    from .training import run_training
    from .training.metrics import training_summary

    _join(backend, dist_timeout, uses_cuda=False)
    overrides = {
        "seed": seed,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.seq_len": seq_len,
        "train.learning_rate": learning_rate,
        "train.max_chars": max_chars,
        "train.weight_decay": weight_decay,
        "train.checkpoint_every": checkpoint_every,
        "train.grad_clip": grad_clip,
        "train.dp.enabled": dp or None,
        "train.dp.noise_multiplier": noise_multiplier,
        "train.dp.target_epsilon": target_epsilon,
        "train.dp.delta": delta,
        "train.dp.max_grad_norm": max_grad_norm,
        "train.track.enabled": track_exposure or None,
        "train.track.every": track_every,
        "model.kind": model_kinds.kind_for(kind, base),
        "model.base": base,
        "model.lora.enabled": lora or None,
        "model.lora.r": lora_r,
        "model.lora.alpha": lora_alpha,
        "model.lora.dropout": lora_dropout,
        "model.lora.target_modules": lora_target and [t.strip() for t in lora_target.split(",") if t.strip()],
        "model.lora.merge": merge or None,
        "model.char_lstm.embedding": embedding,
        "model.char_lstm.hidden": hidden,
        "model.char_lstm.layers": layers,
        "model.dropout": dropout,
    }
    if resume is not None:
        if out is not None and out != resume:
            raise AuditError("--resume DIR continues the run writing DIR; leave out --out")
        if any(v is not None for v in overrides.values()) or config_path:
            raise AuditError("--resume continues with the saved settings; leave out other training options")
        out = resume
        result = run_training(None, Path(out), None, resume=True, force=force, quiet=quiet)
    elif data is None or out is None:
        raise AuditError("give --data DIR and --out DIR (or --resume DIR)")
    else:
        result = run_training(Path(data), Path(out), _config(config_path, overrides), force=force, quiet=quiet)
    if not is_main():
        return
    click.echo(training_summary(out, result.metrics, result.seconds, result.privacy))


measure_options = [
    click.option("--method", type=click.Choice(list(METHODS)), default=None, help="How to rank (default: auto)."),
    click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Model-step budget for exact methods."),
    click.option(
        "--max-memory",
        type=str,
        default=None,
        help=f"Memory for search state (KV caches, frontier), e.g. 4GB or 512MB (default {DEFAULT_MAX_MEMORY}).",
    ),
    click.option("--samples", type=click.IntRange(min=1), default=None, help="Draws per format for estimates."),
    click.option(
        "--estimator",
        type=click.Choice(list(ESTIMATORS)),
        default=None,
        help="Estimate where a rank is not exact (default: importance).",
    ),
    click.option(
        "--prefer",
        type=click.Choice(list(PREFER)),
        default=None,
        help="auto: balanced (exact within --exact-budget, cheapest first; the rest estimated), exact "
        "(exact wherever --max-steps allows) or fast (exact only where cheaper than the estimate). "
        "Default: balanced.",
    ),
    click.option(
        "--exact-budget",
        type=click.IntRange(min=0),
        default=None,
        help=f"prefer balanced: model steps of exact work per format (default {DEFAULT_EXACT_BUDGET:,}, "
        "proportionally fewer for a model whose step costs more than the char-LSTM's: the same work).",
    ),
    click.option(
        "--fail-above",
        type=float,
        default=None,
        help="Exit 1 if an inserted canary's exposure exceeds this (bits).",
    ),
    click.option("--redact", is_flag=True, help="Hide secrets in terminal output, JSON, JUnit, Markdown and HTML."),
    click.option(
        "--markdown",
        "markdown_path",
        type=str,
        default=None,
        help="Write a Markdown summary here (verdict + table; append it to $GITHUB_STEP_SUMMARY).",
    ),
]


def _measure_overrides(
    method, max_steps, samples, estimator, prefer, fail_above, seed=None, max_memory=None, exact_budget=None
) -> dict[str, Any]:
    return {
        "measure.exact_budget": exact_budget,
        "seed": seed,
        "measure.max_memory": max_memory,
        "measure.method": method,
        "measure.max_steps": max_steps,
        "measure.samples": samples,
        "measure.estimator": estimator,
        "measure.prefer": prefer,
        "measure.fail_above": fail_above,
    }


@cli.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=str,
    help="A checkpoint folder from train, a Hugging Face model folder, a .gguf file, or a PEFT adapter folder.",
)
@click.option("--canaries", "canaries_path", required=True, type=str, help="canaries.json (from insert).")
@click.option("--json", "json_path", type=str, default=None, help="Write the JSON report here.")
@click.option(
    "--junit", "junit_path", type=str, default=None, help="Write JUnit XML here (a test case per inserted canary)."
)
@click.option("--config", "config_path", type=str, default=None, help="YAML config (its measure: section).")
@click.option("--seed", type=int, default=None, help="Seed for sampled candidates.")
@click.option("--any-model", is_flag=True, help="Measure even if the model was not trained on this manifest's data.")
@click.option(
    "--context-role",
    type=str,
    default=None,
    help="Score after the chat template's header of a fresh message of this role (e.g. assistant).",
)
@_with(measure_options)
@_with(model_options)
@click.option(
    "--rescore",
    is_flag=True,
    help="With --dtype bfloat16/float16: make every exact rank float32's (close calls rescored in float32).",
)
@click.option(
    "--max-band",
    type=int,
    default=None,
    help="With --rescore: candidates per canary rescored in float32 (default 10000); a canary with more "
    "gets the rank interval the rounding allows.",
)
@_with(distributed_options)
@force_option
@quiet_option
def measure(
    model_path,
    canaries_path,
    json_path,
    junit_path,
    config_path,
    seed,
    any_model,
    context_role,
    method,
    max_steps,
    max_memory,
    samples,
    estimator,
    prefer,
    exact_budget,
    fail_above,
    redact,
    markdown_path,
    device,
    dtype,
    context,
    base_path,
    rescore,
    max_band,
    backend,
    dist_timeout,
    force,
    quiet,
) -> None:
    """Log-perplexity, rank and exposure of every canary. Under torchrun the ranks share the
    work and the report is the one a single process gives (docs/distributed.md)."""
    from dataclasses import replace

    from .audits.canaries import Outputs, Target, check_model_data, measure_and_report
    from .data.manifest import Manifest
    from .distributed import model_device
    from .files import check_writable_file
    from .models import load_model

    _join(backend, dist_timeout)
    cfg = _config(
        config_path,
        _measure_overrides(method, max_steps, samples, estimator, prefer, fail_above, seed, max_memory, exact_budget),
    )
    for p in (json_path, junit_path, markdown_path):
        if p is not None:
            check_writable_file(Path(p), force)
    if rescore and dtype not in ("bfloat16", "float16"):
        raise AuditError(
            "--rescore makes a bfloat16 or float16 model's ranks float32's: give --dtype bfloat16 or float16"
        )
    if max_band is not None and not rescore:
        raise AuditError("--max-band sets how --rescore settles close calls: give --rescore too")
    if max_band is not None and max_band < 0:
        raise AuditError("--max-band: the candidates rescored per canary must be at least 0")
    manifest = Manifest.read(Path(canaries_path))
    model = load_model(Path(model_path), device=model_device(device), dtype=dtype, base=base_path)
    reference = None
    if rescore:
        reference = load_model(Path(model_path), device=model_device(device), dtype="float32", base=base_path)
    try:
        linked = check_model_data(model, manifest, any_model=any_model)
    except AuditError as e:
        raise AuditError(f"model {model_path}: {e}; pass --any-model to measure anyway") from None
    outputs = Outputs(
        json=json_path and Path(json_path),
        junit=junit_path and Path(junit_path),
        markdown=markdown_path and Path(markdown_path),
        redact=redact,
    )
    code, _ = measure_and_report(
        Target(
            model,
            manifest,
            model_ref=model_path,
            link_checked=linked,
            data_folder=Path(canaries_path).parent,
            reference=reference,
        ),
        replace(
            cfg.measure,
            seed=cfg.seed,
            context=_context(context),
            quiet=quiet,
            **({} if max_band is None else {"max_band": max_band}),
        ),
        outputs=outputs,
        emit=click.echo,
        context_role=context_role,
    )
    return code


@cli.command()
@click.argument("config_path", required=False, type=str)
@click.option("--out", "out", type=str, default=None, help="Output folder (default: runs/audit-<time>).")
@click.option("--corpus", type=str, default=None, help="UTF-8 text file (overrides the config).")
@click.option("--epochs", type=int, default=None)
@click.option("--seed", type=int, default=None)
@_with(measure_options)
@force_option
@quiet_option
def audit(
    config_path,
    out,
    corpus,
    epochs,
    seed,
    method,
    max_steps,
    max_memory,
    samples,
    estimator,
    prefer,
    exact_budget,
    fail_above,
    redact,
    markdown_path,
    force,
    quiet,
) -> None:
    """Insert, train, measure and extract from one YAML config (default: configs/default.yaml).

    Writes OUT/data, OUT/model, OUT/report.json, OUT/report.junit.xml and OUT/report.html
    (with figures), and prints the exposure table.
    """
    from .audits.canaries import run_audit
    from .files import check_writable_file, output_dir

    _rank_zero_only("audit")
    if config_path is None:
        default = Path("configs/default.yaml")
        config_path = str(default) if default.is_file() else None
    overrides = _measure_overrides(
        method, max_steps, samples, estimator, prefer, fail_above, seed, max_memory, exact_budget
    )
    overrides.update({"corpus": corpus, "train.epochs": epochs})
    cfg = _config(config_path, overrides)
    if markdown_path is not None:
        check_writable_file(Path(markdown_path), force)
    if cfg.audit.enabled:
        from .audits.dp_audit import check_dp_audit

        check_dp_audit(cfg)
    out = out or _default_out("audit")
    with output_dir(Path(out), force) as tmp:
        code = run_audit(
            cfg,
            tmp,
            Path(out),
            redact=redact,
            quiet=quiet,
            echo=_echo(quiet),
            emit=click.echo,
            markdown=markdown_path and Path(markdown_path),
        )
    click.echo(f"\nwrote {out}/ (data/, model/, report.json, report.junit.xml, report.html)")
    return code


@cli.command("dp-audit")
@click.argument("config_path", type=str)
@click.option("--out", "out", type=str, default=None, help="Output folder (default: runs/dp-audit-<time>).")
@click.option(
    "--data",
    "data_dir",
    type=str,
    default=None,
    help="Reuse the data folder (OUT/data) of an earlier dp-audit instead of planting anew.",
)
@click.option("--fail-if-violated", is_flag=True, help="Exit 1 when the lower bound exceeds the claimed epsilon.")
@force_option
@quiet_option
def dp_audit(config_path, out, data_dir, fail_if_violated, force, quiet) -> None:
    """Check a privacy claim from one training run: plant audit.canaries canaries, each with
    probability 1/2, train with the config's settings (DP-SGD or not), score them and bound
    epsilon from below at audit.confidence. Writes OUT/data, OUT/model, OUT/dp_audit.json,
    OUT/roc.png, OUT/scores.png and OUT/dp_audit.html; prints the claim and the bound."""
    from .audits.dp_audit import check_dp_audit, run_dp_audit
    from .files import output_dir

    _rank_zero_only("dp-audit")
    cfg = _config(config_path, {"audit.fail_if_violated": True if fail_if_violated else None})
    check_dp_audit(cfg)
    out = out or _default_out("dp-audit")
    with output_dir(Path(out), force) as tmp:
        code, _ = run_dp_audit(
            cfg, tmp, data_dir=data_dir and Path(data_dir), quiet=quiet, echo=_echo(quiet), emit=click.echo
        )
    click.echo(f"\nwrote {out}/ ({'' if data_dir else 'data/, '}model/, dp_audit.json, dp_audit.html)")
    return code


def _default_out(kind: str) -> str:
    Path("runs").mkdir(exist_ok=True)
    return f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _echo(quiet: bool):
    """Progress notes go to stderr, and nowhere with --quiet."""
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


@cli.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    type=str,
    help="A checkpoint folder from train, a Hugging Face model folder, a .gguf file, or a PEFT adapter folder.",
)
@click.option(
    "--format", "format_source", type=str, default=None, help="The format to extract, e.g. 'my pin is {d:6}'."
)
@click.option(
    "--canaries",
    "canaries_path",
    type=str,
    default=None,
    help="A manifest: extract every format in it and report where each canary lands.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=10, show_default=True, help="How many candidates to recover."
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Budget in model steps (per format).",
)
@click.option(
    "--beam",
    type=click.IntRange(min=1),
    default=None,
    help="Beam search with this width instead (faster, approximate).",
)
@click.option(
    "--max-memory",
    type=str,
    default=DEFAULT_MAX_MEMORY,
    show_default=True,
    help="Memory for search state (KV caches, frontier), e.g. 4GB or 512MB; the JSON reports the peak.",
)
@click.option("--json", "json_path", type=str, default=None, help="Write the result as JSON here.")
@click.option(
    "--redact", is_flag=True, help="Show only the first and last character of each secret (terminal and JSON)."
)
@click.option(
    "--context-role",
    type=str,
    default=None,
    help="Search after the chat template's header of a fresh message of this role (e.g. assistant).",
)
@_with(model_options)
@_with(distributed_options)
@force_option
@quiet_option
def extract(
    model_path,
    format_source,
    canaries_path,
    top,
    max_steps,
    beam,
    max_memory,
    json_path,
    redact,
    context_role,
    device,
    dtype,
    context,
    base_path,
    backend,
    dist_timeout,
    force,
    quiet,
) -> None:
    """Recover the most likely secrets of a format by shortest-path search over its prefix tree.
    Under torchrun the ranks step slices of every batch of frontier nodes (same order and proof)."""
    from .audits.canaries import extract_and_report
    from .exposure.options import ExtractOptions
    from .data.manifest import Manifest
    from .distributed import model_device
    from .files import check_writable_file
    from .models import load_model

    _join(backend, dist_timeout)
    if (format_source is None) == (canaries_path is None):
        raise AuditError("give --format F or --canaries FILE (one of them)")
    if json_path is not None:
        check_writable_file(Path(json_path), force)
    manifest = Manifest.read(Path(canaries_path)) if canaries_path else None
    model = load_model(Path(model_path), device=model_device(device), dtype=dtype, base=base_path)
    extract_and_report(
        model,
        ExtractOptions(
            top=top, max_steps=max_steps, beam=beam, context=_context(context), max_memory=max_memory, quiet=quiet
        ),
        format_source=format_source,
        manifest=manifest,
        redact=redact,
        json_path=json_path and Path(json_path),
        emit=click.echo,
        context_role=context_role,
        data_folder=Path(canaries_path).parent if canaries_path else None,
    )


@cli.command()
@click.argument("config_path", type=str)
@click.option("--out", "out", type=str, default=None, help="Output folder (default: runs/sweep-<time>).")
@force_option
@quiet_option
def sweep(config_path, out, force, quiet) -> None:
    """Run the pipeline over a grid of training settings sharing one insertion.

    CONFIG is an audit config plus `runs:`, a list of {name: ..., <overrides>} (e.g. DP at
    several epsilons, dropout on and off). Writes OUT/data, OUT/<name>/ per run, OUT/sweep.json,
    OUT/privacy_utility.png and OUT/sweep.html; prints one row per setting.
    """
    from .audits.canaries import run_sweep
    from .data.pipeline import load_sweep
    from .files import output_dir
    from .reports.report import sweep_table

    _rank_zero_only("sweep")
    base, runs = load_sweep(config_path)
    out = out or _default_out("sweep")
    with output_dir(Path(out), force) as tmp:
        rows = run_sweep(base, runs, tmp, Path(out), quiet=quiet, echo=_echo(quiet), emit=click.echo)
    click.echo("")
    click.echo(sweep_table(rows))
    click.echo(f"\nwrote {out}/ (data/, one folder per run, sweep.json, sweep.html)")


@cli.command()
@click.argument("path", type=str)
def report(path) -> None:
    """Re-render the figures and report.html of an audit or sweep folder from its saved JSON,
    and print its tables (exposure; the sweep's settings; exposure during training if tracked)."""
    from .reports.plots import rerender

    _rank_zero_only("report")
    written = rerender(Path(path), emit=click.echo)
    click.echo(f"\nwrote {written}")


@cli.command()
@click.option(
    "--model", "model_path", required=True, type=str, help="A checkpoint folder, a Hugging Face folder or a .gguf file."
)
@click.option(
    "--data",
    "data_dir",
    type=str,
    default=None,
    help="An insert output: members = its train records, non-members = its valid records.",
)
@click.option(
    "--members",
    "members",
    type=str,
    default=None,
    help="Members (training records) in any corpus format the tool reads.",
)
@click.option(
    "--non-members", "non_members", type=str, default=None, help="Non-members (never trained on), same formats."
)
@click.option(
    "--reference",
    type=str,
    default=None,
    help="A model that did not see the data (the base): adds the reference-loss attack.",
)
@click.option(
    "--records",
    type=click.IntRange(min=1),
    default=None,
    help="At most this many member records (drawn with the seed; default all).",
)
@click.option("--prefix-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--suffix-tokens", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--k",
    "k_fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="min-k%: the fraction of lowest-probability tokens.",
)
@click.option(
    "--temperature", type=float, default=1.0, show_default=True, help="The deployed sampling temperature (> 0)."
)
@click.option("--top-k", type=int, default=None, help="The deployed top-k (default: none).")
@click.option("--top-p", type=float, default=None, help="The deployed nucleus mass, in (0, 1] (default: none).")
@click.option(
    "--greedy", is_flag=True, help="The deployment decodes greedily (probabilistic extraction becomes greedy)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--fail-above-extractable",
    type=float,
    default=None,
    help="Exit 1 if the discoverable exact-match rate exceeds this fraction.",
)
@click.option("--fail-above-auc", type=float, default=None, help="Exit 1 if any membership attack's AUC exceeds this.")
@click.option("--reveal", is_flag=True, help="Put each record's text in the JSON (default: its SHA-256 only).")
@click.option("--json", "json_path", type=str, default=None)
@click.option("--markdown", "markdown_path", type=str, default=None)
@click.option("--html", "html_path", type=str, default=None)
@click.option("--junit", "junit_path", type=str, default=None)
@click.option("--device", type=str, default="auto", show_default=True)
@click.option("--dtype", type=str, default=None)
@base_option
@force_option
@quiet_option
def memorization(
    model_path,
    data_dir,
    members,
    non_members,
    reference,
    records,
    prefix_tokens,
    suffix_tokens,
    k_fraction,
    temperature,
    top_k,
    top_p,
    greedy,
    seed,
    fail_above_extractable,
    fail_above_auc,
    reveal,
    json_path,
    markdown_path,
    html_path,
    junit_path,
    device,
    dtype,
    base_path,
    force,
    quiet,
) -> int:
    """How much of the training data comes back: discoverable memorization (greedy prefix ->
    suffix), probabilistic extraction under the deployed sampler, and membership inference
    (loss, zlib, min-k%, min-k%++, reference). docs/memorization.md."""
    from .audits.memorization import MemorizationOptions, memorization_audit
    from .audits.memorization_report import Outputs
    from .audits.scoring import Sampler

    _rank_zero_only("memorization")
    as_path = lambda v: None if v is None else Path(v)  # noqa: E731
    opts = MemorizationOptions(
        model=Path(model_path),
        data=as_path(data_dir),
        members=as_path(members),
        non_members=as_path(non_members),
        reference=as_path(reference),
        records=records,
        prefix_tokens=prefix_tokens,
        suffix_tokens=suffix_tokens,
        k=k_fraction,
        sampler=Sampler(temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy),
        seed=seed,
        fail_above_extractable=fail_above_extractable,
        fail_above_auc=fail_above_auc,
        reveal=reveal,
        device=device,
        dtype=dtype,
        base=as_path(base_path),
    )
    outputs = Outputs(
        json=as_path(json_path), markdown=as_path(markdown_path), html=as_path(html_path), junit=as_path(junit_path)
    )
    result, text = memorization_audit(opts, outputs, force=force, quiet=quiet, emit=_echo(quiet))
    click.echo(text)
    for line in result.failures:
        click.echo(f"FAIL: {line}")
    return result.code  # the gate's verdict (gate_exit): main() turns it into the exit status


@cli.command()
@click.option(
    "--corpus", required=True, type=str, help="Text file, JSONL (text or chat messages), CSV/TSV, Parquet or folder."
)
@click.option("--corpus-format", type=click.Choice(CORPUS_FORMATS), default=None)
@click.option("--text-field", type=str, default=None, help="JSONL: the field holding the text (messages = chat).")
@click.option("--text-column", type=str, default=None, help="CSV/TSV/Parquet: the column holding the text.")
@click.option("--out", "out", type=str, default=None, help="Output folder (default: runs/scan-<time>).")
@click.option("--model", "model_path", type=str, default=None, help="Rank every found value under this model.")
@click.option("--reference", "reference_path", type=str, default=None, help="A model that did not see the data.")
@click.option("--reveal", is_flag=True, help="Show raw values in every output (a warning goes to stderr).")
@click.option("--max-secrets", type=int, default=None, help="Rank a seeded uniform sample of this many values.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--terminator",
    type=click.Choice(TERMINATORS),
    default="next",
    show_default=True,
    help="What follows a value when it is scored: the record's next character, or nothing.",
)
@click.option("--min-space-bits", type=float, default=None, help="Smaller format spaces are listed, not ranked (10).")
@click.option("--context-chars", type=int, default=256, show_default=True, help="Context window before a value.")
@click.option("--method", type=click.Choice(SCAN_METHODS), default="auto", show_default=True)
@click.option("--max-steps", type=int, default=2_000_000, show_default=True, help="Model-step budget per value.")
@click.option("--samples", type=int, default=2_000, show_default=True, help="Importance samples per value.")
@click.option("--extract-top", type=int, default=1, show_default=True, help="Extracted = in the model's top K.")
@click.option("--extract-max-steps", type=int, default=20_000, show_default=True)
@click.option("--fail-above", type=float, default=None, help="Exit 1 if an exposure (gain, with --reference) is above.")
@click.option("--fail-if-extracted", is_flag=True, help="Exit 1 if a value is extracted from its context.")
@_with(model_options[:2])
@base_option
@force_option
@quiet_option
def scan(
    corpus,
    corpus_format,
    text_field,
    text_column,
    out,
    model_path,
    reference_path,
    reveal,
    max_secrets,
    seed,
    terminator,
    min_space_bits,
    context_chars,
    method,
    max_steps,
    samples,
    extract_top,
    extract_max_steps,
    fail_above,
    fail_if_extracted,
    device,
    dtype,
    base_path,
    force,
    quiet,
) -> int:
    """Find the secrets really in a corpus (credentials, personal data); with --model, rank each
    in its own context, try to extract it, and compare with --reference (docs/scan.md)."""
    from .audits.scan import MIN_SPACE_BITS, ScanInput, ScanOptions, scan_command

    _rank_zero_only("scan")
    inp = ScanInput(Path(corpus), corpus_format, text_field, text_column, context_chars=context_chars)
    opts = ScanOptions(
        model=model_path,
        reference=reference_path,
        reveal=reveal,
        max_secrets=max_secrets,
        seed=seed,
        terminator=terminator,
        min_space_bits=MIN_SPACE_BITS if min_space_bits is None else min_space_bits,
        method=method,
        max_steps=max_steps,
        samples=samples,
        extract_top=extract_top,
        extract_max_steps=extract_max_steps,
        fail_above=fail_above,
        fail_if_extracted=fail_if_extracted,
        device=device,
        dtype=dtype,
        base=base_path,
        quiet=quiet,
    )
    out = out or _default_out("scan")
    return scan_command(inp, opts, Path(out), force=force, emit=click.echo, warn=lambda s: click.echo(s, err=True))


@cli.command()
@click.argument("path", type=str)
def gate(path) -> int:
    """Exit 1 if a tracked training run's verdict failed: PATH is the exposure_verdict.json that
    ExposureCallback(fail_above=...) wrote, or the folder holding it (docs/models.md)."""
    from .integrations.verdict import gate as check_verdict

    code, line = check_verdict(Path(path))
    click.echo(line)
    return code  # gate_exit's verdict: main() passes it on as the exit status


def main(argv: list[str] | None = None) -> int:
    """Entry point: the exit codes of README's table, by construction (exposure_audit/errors.py).

    A command returns its status (a gate's verdict: the only source of exit 1). Every usage or
    input error is one ``error: ...`` line and exit 2, an allocation failure included; anything
    else is a bug: exit 70 and one line naming the file that holds its traceback (``--debug``
    prints it). Under torchrun an error on any rank stops every rank with the same exit status,
    and the line is printed once, by rank 0 (exposure_audit/distributed.py); a rank that is lost
    (killed, or silent past the timeout) makes the others exit 3."""
    from . import distributed

    def error(message: str) -> None:
        team = distributed.team()
        if team.active:
            team.fail(message)  # the others raise it at their next exchange; rank 0 prints it
        if distributed.env_rank() == 0:
            click.echo(f"error: {message}", err=True)

    _DEBUG[0] = False
    lost = False
    try:
        code = cli.main(args=argv, prog_name="exposure-audit", standalone_mode=False)
        distributed.team().finish()  # under torchrun: every rank done, or the others' error
        return code if isinstance(code, int) else EXIT_OK
    except SystemExit as e:  # click's --help/--version (0) and our early exits; a stray 1 is not a verdict
        code = e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
        return EXIT_INTERNAL if code == EXIT_GATE_FAILED else code
    except click.exceptions.Exit as e:
        return EXIT_INTERNAL if e.exit_code == EXIT_GATE_FAILED else e.exit_code
    except click.ClickException as e:  # usage errors, bad option values
        error(e.format_message().splitlines()[0] if e.format_message() else str(e))
        return EXIT_USAGE
    except distributed.PeerError as e:  # another rank's error: rank 0 prints it, once
        if distributed.is_main():
            click.echo(f"error: {str(e).splitlines()[0]}", err=True)
        return EXIT_USAGE
    except AuditError as e:
        error(str(e).splitlines()[0])
        return EXIT_USAGE
    except distributed.LostPeer as e:
        rank = distributed.team().rank
        click.echo(f"error: {'rank ' + str(rank) + ': ' if rank else ''}{e}", err=True)
        lost = True
        return EXIT_LOST
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        return 130
    except BaseException as e:  # noqa: BLE001 -- the last line of defence: exit codes mean what they say
        if is_out_of_memory(e):
            error(str(out_of_memory_error(e)))
            return EXIT_USAGE
        distributed.team().fail(f"internal error on another rank: {type(e).__name__}: {e}")
        click.echo(_internal_error(e, debug=_DEBUG[0]), err=True)
        return EXIT_INTERNAL
    finally:
        distributed.stop(lost=lost)


_DEBUG = [False]  # set by the group's --debug (click parses it before the command runs)


def _internal_error(e: BaseException, *, debug: bool) -> str:
    """The line for a bug: its type and first line, and where its traceback went."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if debug:
        sys.stderr.write(text)
        where = "its traceback is above"
    else:
        try:
            fd, name = tempfile.mkstemp(prefix="exposure-audit-traceback-", suffix=".txt")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(f"exposure-audit {__version__}\nargv: {sys.argv!r}\n\n{text}")
            where = f"the traceback is in {name}; --debug prints it"
        except OSError:
            where = "the traceback could not be saved; rerun with --debug to print it"
    return f"error: internal error ({what[:200]}): this is a bug in exposure-audit, please report it; {where}"


def run() -> None:
    """Console-script entry point (and ``python -m exposure_audit``)."""
    from .allocator import tune
    from .distributed import leave

    tune()  # this process's malloc keeps its working memory (exposure_audit/allocator.py)
    leave(main())


if __name__ == "__main__":
    run()
