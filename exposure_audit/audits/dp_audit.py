"""`dp-audit`: check a privacy claim with canaries, from one training run.

plant (m secrets of one format, each planted once with probability 1/2) -> train with the
config's settings, DP-SGD or not -> score every canary by log-perplexity -> the lower bounds of
:mod:`privacy_audit` against the accountant's claim for the unit a canary occupies.
Writes ``dp_audit.json``, ``roc.png``, ``scores.png`` and ``dp_audit.html``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import AuditConfig
from ..data.manifest import Manifest
from ..errors import AuditError, gate_exit

KIND = "exposure-audit/dp-audit"


def audit_delta(cfg: AuditConfig) -> float:
    return cfg.audit.delta if cfg.audit.delta is not None else cfg.train.dp.delta


def corpus_characters(corpus: str | Path | None) -> set[str]:
    from ..data.corpus import DEFAULT_CORPUS, iter_lines

    chars: set[str] = set()
    for line in iter_lines(DEFAULT_CORPUS if corpus is None else Path(corpus)):
        chars.update(line)
    return chars


def canary_design(cfg: AuditConfig) -> Any:
    """``audit.canary`` resolved for this config's model and corpus (canary_design.Design)."""
    from .canary_design import resolve

    a = cfg.audit
    return resolve(
        a.canary,
        fmt=a.format,
        canaries=a.canaries,
        fresh_tokens=a.fresh_tokens,
        canary_length=a.canary_length,
        one_window=a.one_window,
        model_kind=cfg.model.kind,
        corpus_chars=corpus_characters(cfg.corpus) if a.canary != "random" else (),
        window_fill=a.window_fill,
        fresh_init=a.fresh_init,
    )


def check_dp_audit(cfg: AuditConfig) -> Any:
    """Everything that can be refused before anything is written or trained; returns the design."""
    from ..data.formats import Format
    from .privacy_audit import check_audit_settings

    a = cfg.audit
    check_audit_settings(a.canaries, audit_delta(cfg), a.confidence)
    design = canary_design(cfg)
    space = Format.parse(design.format).space_size
    if space < a.canaries:
        raise AuditError(
            f"audit.format {design.format!r} has only {space} secrets, fewer than audit.canaries = {a.canaries}"
        )
    if design.fresh and cfg.model.base:
        from ..models.transformer import fresh_capacity

        rows, n, room = fresh_capacity(Path(cfg.model.base))
        if len(design.fresh) > room:
            raise AuditError(
                f"audit.fresh_tokens: {len(design.fresh)} fresh tokens do not fit base model {cfg.model.base}: its "
                f"embedding has {rows} rows for {n} tokens, room for {room} without changing its shapes"
            )
    return design


def planted_flags(manifest: Manifest, where: str) -> list[bool]:
    flags = [c.planted for c in manifest.canaries]
    if any(f is None for f in flags):
        raise AuditError(
            f"manifest {where} has no planted flags (not written by dp-audit); dp-audit needs its own data folder"
        )
    return [bool(f) for f in flags]


def accountant_epsilon(privacy: dict[str, Any]) -> Callable[[float], float]:
    """Epsilon at any delta for the recorded DP-SGD run: Opacus' RDP accountant on the same
    (noise, rate, steps). The RDP curve does not depend on delta, so it is computed once (it is
    the slow part: about 2 s) and only its conversion is repeated for each delta."""
    import warnings

    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(
        q=privacy["sample_rate"], noise_multiplier=privacy["noise_multiplier"], steps=privacy["steps"], orders=orders
    )

    def eps(delta: float) -> float:
        with warnings.catch_warnings():
            # tiny deltas of the group solve sit at the largest order: a looser claim, never a wrong one
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])

    return eps


def claim_for(
    privacy: dict[str, Any] | None, line_chars: int, seq_len: int, delta: float, one_window: bool = False
) -> dict[str, Any]:
    """The claim a canary line enjoys: the accountant's per-window epsilon for the group of
    windows the line can touch, at the audit's delta (see privacy_audit.group_claim). With
    the one-window layout every planted line is in exactly one window: the per-window claim."""
    from .privacy_audit import group_claim, group_size

    k = 1 if one_window else group_size(line_chars, seq_len)
    if not privacy:
        return {"epsilon": None, "group_size": k, "delta": delta, "per_window_epsilon": None, "one_window": one_window}
    eps_of = accountant_epsilon(privacy)
    group_eps, d0 = group_claim(eps_of, k, delta)
    return {
        "epsilon": group_eps,
        "delta": delta,
        "group_size": k,
        "per_window_epsilon": privacy["epsilon"],
        "per_window_delta": privacy["delta"],
        "per_window_delta_used": d0,
        "per_window_epsilon_at_delta_used": eps_of(d0),
        "derivation": (
            f"each planted canary line is kept to a training window of its own (one-window layout): the "
            f"claim is the accountant's per-window epsilon at delta {delta:g}"
            if one_window
            else f"a canary line of {line_chars} characters (newline included) touches at most {k} windows of "
            f"{seq_len + 1} characters; group privacy gives ({k} eps, {k} e^(({k}-1) eps) d) from the "
            f"accountant's (eps, d) per window, with d solved so the group's delta is {delta:g}"
        ),
        "one_window": one_window,
        "broken_no_noise": bool(privacy.get("broken_no_noise")),
    }


def table(result: dict[str, Any]) -> str:
    """Claim and bound side by side, then the attack's figures."""
    c, b = result["claim"], result["bounds"]
    conf = result["confidence"]
    claim = "none (not DP-trained)" if c["epsilon"] is None else f"{c['epsilon']:.3f}"
    lines = [
        f"{'':28}{'epsilon':>12}  notes",
        f"{'claimed (accountant)':28}{claim:>12}  "
        + (
            f"per window {c['per_window_epsilon']:.3f} at delta {c['per_window_delta']:g}; group of {c['group_size']} "
            f"windows at delta {c['delta']:g}"
            if c["epsilon"] is not None
            else f"a canary touches up to {c['group_size']} windows"
        ),
        f"{'empirical lower bound':28}{b['eps_lower']:>12.3f}  {conf:.0%} confidence, delta {c['delta']:g}, "
        f"{b['method']}",
        f"{'  one-run (Steinke et al.)':28}{b['one_run']['eps']:>12.3f}  {b['one_run']['correct']}/"
        f"{b['one_run']['guesses']} correct (k+={b['one_run']['k_plus']}, k-={b['one_run']['k_minus']}; "
        f"union bound over {b['one_run']['grid_size']}); at most {b['one_run']['max_possible']:.2f} with m={result['m']}",
        f"{'  threshold (Clopper-P.)':28}{b['threshold']['eps']:>12.3f}  union bound over "
        f"{b['threshold']['grid_size']} thresholds",
    ]
    for key, label, note in (
        ("fdp_eps_delta", "  f-DP, (eps,delta) curve", "no assumption"),
        ("fdp_gaussian", "  f-DP, Gaussian curve", "assumes a Gaussian trade-off curve"),
    ):
        f = b.get(key)
        if f:
            mu = f"mu >= {f['mu']:.3f}, " if f.get("mu") is not None else ""
            lines.append(
                f"{label:28}{f['eps']:>12.3f}  {mu}{f['correct']}/{f['guesses']} correct (k+={f['k_plus']}, "
                f"k-={f['k_minus']}); {note}; at most {f['max_possible']:.2f} with m={result['m']}"
            )
    if b.get("assumes_gaussian"):
        lines.append(
            f"{'  best without assumption':28}{b['eps_lower_assumption_free']:>12.3f}  {b['method_assumption_free']}"
        )
    for r in b["tpr_at_fpr"]:
        lo, hi = r["tpr_interval"]
        lines.append(
            f"{'TPR at FPR ' + format(r['fpr_target'], '.1%'):28}{r['tpr']:>12.3f}  [{lo:.3f}, {hi:.3f}] "
            f"({r['false_positives']} false positives)"
        )
    lines.append(f"{'planted / not planted':28}{result['planted']:>6} / {result['m'] - result['planted']}")
    d = result.get("design") or {}
    if d:
        fresh = (
            f", {d['fresh_tokens']} fresh tokens ({d['fresh_first']}..{d['fresh_last']})"
            if d.get("fresh_tokens")
            else ""
        )
        fill = " (filled with the canary repeated)" if d.get("window_fill") == "repeat" else ""
        where = (
            f"each planted canary in a window of its own{fill}: the claim is per window"
            if d.get("one_window")
            else (f"canary lines in the text stream: the claim is a group of {c['group_size']} windows")
        )
        lines.append(f"{'canary design':28}{d.get('canary', 'random'):>12}  {where}{fresh}")
    if c["epsilon"] is None:
        verdict = "no claim to check"
    elif result["violated"]:
        verdict = f"VIOLATED: the lower bound {b['eps_lower']:.3f} exceeds the claimed {c['epsilon']:.3f}"
    else:
        verdict = (
            f"consistent: the audit certifies {b['eps_lower'] / c['epsilon']:.1%} of the claimed epsilon"
            if c["epsilon"] > 0
            else "consistent"
        )
    lines.append(f"\n{verdict}")
    return "\n".join(lines)


def run_dp_audit(
    cfg: AuditConfig,
    tmp: Path,
    *,
    data_dir: Path | None = None,
    quiet: bool = True,
    echo: Callable[[str], None] = lambda s: None,
    emit: Callable[[str], None] = lambda s: None,
) -> tuple[int, dict[str, Any]]:
    """Plant (unless ``data_dir`` holds a dp-audit's data), train, score and bound into ``tmp``
    (a staging folder). Returns the exit code (1: violated and ``audit.fail_if_violated``)."""
    import yaml

    from ..data.pipeline import plant_folder
    from ..exposure.engine import score
    from ..files import atomic_write_json, atomic_write_text
    from ..models import load_model
    from ..models.registry import describe_config
    from ..training import train_folder
    from .privacy_audit import audit_bounds

    design = check_dp_audit(cfg)
    a, delta = cfg.audit, audit_delta(cfg)
    t0 = time.perf_counter()
    if data_dir is not None:
        manifest = Manifest.read(Path(data_dir) / "canaries.json")
        planted = planted_flags(manifest, str(Path(data_dir) / "canaries.json"))
        if len(planted) < a.canaries:  # the same minimum as for a fresh planting
            from .privacy_audit import check_audit_settings

            check_audit_settings(len(planted), delta, a.confidence)
    atomic_write_text(tmp / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if data_dir is None:
        data_dir = tmp / "data"
        data_dir.mkdir()
        shown = (
            a.format
            if not design.fresh
            else f"{design.name}: {len(design.fresh)} fresh tokens, {a.canary_length} a canary"
        )
        echo(f"[1/3] plant: {a.canaries} canaries ({shown}), each with probability 1/2")
        manifest = plant_folder(
            data_dir, cfg.corpus, design.format, a.canaries, cfg.insert.valid_fraction, cfg.seed, design.to_json()
        )
        planted = planted_flags(manifest, str(data_dir / "canaries.json"))
    (tmp / "model").mkdir()
    dp = cfg.train.dp
    mode = (
        " with BROKEN DP-SGD (no noise)"
        if dp.enabled and dp.broken_no_noise
        else (" with DP-SGD" if dp.enabled else "")
    )
    echo(f"[2/3] train: {describe_config(cfg.model)}, {cfg.train.epochs} epochs{mode}")
    result = train_folder(data_dir, tmp / "model", cfg, quiet=quiet)
    echo(f"      {result.seconds:.0f}s")
    echo(f"[3/3] score {len(manifest.canaries)} canaries and bound epsilon")
    model = load_model(tmp / "model")
    scores = score(model, [c.text for c in manifest.canaries])
    bounds = audit_bounds(scores, planted, delta=delta, confidence=a.confidence)
    line_chars = max(len(c.text) for c in manifest.canaries) + 1
    planting = manifest.settings.get("dp_audit") or {}
    planting = {"canary": "random", "one_window": False, **planting}  # plantings from before the designs
    one_window = bool(planting.get("one_window"))
    claim = claim_for(result.privacy, line_chars, cfg.train.seq_len, delta, one_window)
    lower = bounds.best[1]
    violated = claim["epsilon"] is not None and lower > claim["epsilon"]
    out: dict[str, Any] = {
        "schema": 1,
        "kind": KIND,
        "seed": cfg.seed,
        "m": len(planted),
        "planted": int(sum(planted)),
        "format": manifest.canaries[0].format,
        "design": {k: v for k, v in planting.items() if k not in ("format", "canaries", "probability")},
        "confidence": a.confidence,
        "claim": claim,
        "bounds": bounds.to_json(),
        "violated": violated,
        "privacy": result.privacy,
        "training_seconds": round(result.seconds, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "canaries": [
            {"id": c.id, "planted": p, "log_perplexity": s} for c, p, s in zip(manifest.canaries, planted, scores)
        ],
    }
    out["table"] = table(out)
    atomic_write_json(tmp / "dp_audit.json", out)
    try:
        render(tmp, out)
    except AuditError as e:  # plots are a convenience; the JSON stands without them
        echo(f"note: no plots ({e})")
    emit(out["table"])
    return gate_exit(violated and a.fail_if_violated), out


def render(folder: Path, result: dict[str, Any]) -> Path:
    from ..reports.plots import plot_roc, plot_score_histograms, render_html
    from .privacy_audit import roc_curve

    scores = [c["log_perplexity"] for c in result["canaries"]]
    planted = [c["planted"] for c in result["canaries"]]
    fpr, tpr = roc_curve(scores, planted)
    roc = plot_roc(fpr, tpr, folder / "roc.png")
    hist = plot_score_histograms(scores, planted, folder / "scores.png")
    return render_html(
        f"exposure-audit dp-audit: {folder.name}",
        [("Claim and bound", result["table"]), ("ROC (planted iff low log-perplexity)", roc), ("Scores", hist)],
        folder / "dp_audit.html",
    )
