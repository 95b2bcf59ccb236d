"""How much of its training data a model gives back (issue 23): discoverable memorization
(Carlini et al. 2022), probabilistic extraction (Hayes et al. 2025) and membership inference,
on the team's own data, as one report with two CI gates. Definitions: DESIGN.md "Memorization
of records"; the reference is docs/memorization.md.

Records
    Members are the records of the training data (an ``insert`` folder's train file, or
    ``--members``), non-members those of the validation data (or ``--non-members``). A record is
    a line of a plain-text file, else one record of a JSONL/CSV/TSV/Parquet file or one file of a
    folder; its text is what training read (``records.training_text``: each text on its own
    lines), tokenized as training did: the model's canonical encoding after its default context
    (``encode_lines``). Identical records are one record with a number of copies (copies are
    counted over the whole members data); a non-member whose text is also a member is dropped.

Sampling (every choice from the seed)
    The unique members are shuffled with the seed and read in that order until ``records`` of
    them hold at least ``prefix + suffix`` tokens (all of them by default); shorter ones are
    skipped and counted. Non-members likewise, as many as the members drawn, and the membership
    attacks use the same number of each (the first ones of both orders).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditError, gate_exit
from . import mia_stats
from .scoring import ATTACKS, Sampler, Scored, greedy_decode, membership_scores, score_rows, token_unit

KIND = "exposure-audit/memorization"
SCHEMA = 1
FPRS = ((0.01, "tpr_at_1pct_fpr"), (0.001, "tpr_at_0.1pct_fpr"))
CONFIDENCE = 0.95
ENCODE_CHUNK = 256


@dataclass(frozen=True)
class MemorizationOptions:
    model: Path
    data: Path | None = None
    members: Path | None = None
    non_members: Path | None = None
    reference: Path | None = None
    records: int | None = None
    prefix_tokens: int = 32
    suffix_tokens: int = 32
    k: float = 0.2
    sampler: Sampler = field(default_factory=Sampler)
    seed: int = 0
    fail_above_extractable: float | None = None
    fail_above_auc: float | None = None
    reveal: bool = False
    device: str = "auto"
    dtype: str | None = None
    base: Path | None = None  # the base of a PEFT adapter --model (as measure's --base)

    def check(self) -> None:
        self.check_settings()
        if (self.data is None) == (self.members is None and self.non_members is None):
            raise AuditError("give --data DIR (an insert output) or --members FILE and --non-members FILE")
        if self.data is None and (self.members is None or self.non_members is None):
            raise AuditError("--members and --non-members go together")
        if self.members is not None and self.non_members is not None:
            if _same_data(self.members, self.non_members):
                raise AuditError(f"--members {self.members} and --non-members {self.non_members} are the same data")

    def check_settings(self) -> None:
        """The settings alone (no files): what a config can be checked for before any training."""
        if self.prefix_tokens < 1 or self.suffix_tokens < 1:
            raise AuditError("--prefix-tokens and --suffix-tokens must be at least 1")
        if self.records is not None and self.records < 1:
            raise AuditError("--records must be at least 1")
        if not 0.0 < self.k <= 1.0:
            raise AuditError(f"--k {self.k:g} must be in (0, 1] (the fraction of lowest-probability tokens)")
        for name, v in (
            ("--fail-above-extractable", self.fail_above_extractable),
            ("--fail-above-auc", self.fail_above_auc),
        ):
            if v is not None and not 0.0 <= v <= 1.0:
                raise AuditError(f"{name} {v:g} must be in [0, 1]")
        self.sampler.check()


def _same_data(a: Path, b: Path) -> bool:
    from ..data.records import data_sha256

    if not a.exists() or not b.exists():
        return False
    return a.resolve() == b.resolve() or data_sha256(a) == data_sha256(b)


# -- reading records ----------------------------------------------------------------------
def read_texts(path: Path, what: str) -> list[str]:
    """The training text of every record of a data file (without its final newline)."""
    from ..data.corpus import decode_utf8
    from ..data.records import detect_chat, iter_records, make_spec, training_text

    path = Path(path)
    if not path.exists():
        raise AuditError(f"{what} {path} does not exist")
    spec = make_spec(path, None, None, None, None)
    if spec.format == "txt":
        with open(path, "rb") as fh:
            text = "".join(decode_utf8(iter(lambda: fh.read(1 << 24), b""), f"{what} {path}"))
        return [line for line in text.split("\n") if line.strip()]
    spec = detect_chat(path, spec)
    out = []
    for rec in iter_records(path, spec):
        if rec.texts:
            t = training_text(rec.texts)
            if t.strip():
                out.append(t[:-1] if t.endswith("\n") else t)
    return out


def _data_texts(folder: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    from ..data.corpus import data_path, data_spec
    from ..data.records import data_sha256

    folder = Path(folder)
    if not folder.is_dir():
        raise AuditError(f"--data {folder} is not a folder (an insert output)")
    spec = data_spec(folder)
    train, valid = data_path(folder, "train", spec), data_path(folder, "valid", spec)
    if not train.exists():
        raise AuditError(f"--data {folder}: no training data {train.name} (not an insert output)")
    members = read_texts(train, "training data")
    non = read_texts(valid, "validation data") if valid.exists() else []
    info = {"folder": str(folder), "members_file": str(train), "members_sha256": data_sha256(train)}
    info |= {"non_members_file": str(valid), "non_members_sha256": data_sha256(valid) if valid.exists() else None}
    return members, non, info


def load_texts(opts: MemorizationOptions) -> tuple[list[str], list[str], dict[str, Any]]:
    from ..data.records import data_sha256

    if opts.data is not None:
        return _data_texts(opts.data)
    assert opts.members is not None and opts.non_members is not None
    info = {
        "members_file": str(opts.members),
        "members_sha256": None,
        "non_members_file": str(opts.non_members),
        "non_members_sha256": None,
    }
    members = read_texts(opts.members, "members")
    non = read_texts(opts.non_members, "non-members")
    info["members_sha256"], info["non_members_sha256"] = data_sha256(opts.members), data_sha256(opts.non_members)
    return members, non, info


# -- drawing records ----------------------------------------------------------------------
@dataclass
class Drawn:
    texts: list[str]
    rows: list[list[int]]  # context ids + the record's ids (truncated to what the model takes)
    starts: list[int]  # where the record's ids begin in each row (the context's length)
    skipped: int  # records examined and found shorter than prefix + suffix tokens
    examined: int


def draw(
    model: Any, texts: Sequence[str], need: int, limit: int | None, seed: int, which: str, max_len: int | None
) -> Drawn:
    """Shuffle with the seed, then encode in that order until ``limit`` records hold ``need`` tokens."""
    order = list(texts)
    random.Random(f"exposure-audit:{seed}:memorization:{which}").shuffle(order)
    got = Drawn([], [], [], 0, 0)
    for at in range(0, len(order), ENCODE_CHUNK):
        chunk = order[at : at + ENCODE_CHUNK]
        for text, (ctx, line) in zip(chunk, model.encode_lines(chunk, None)):
            got.examined += 1
            if len(line) < need:
                got.skipped += 1
                continue
            row = list(ctx) + list(line)
            got.texts.append(text)
            got.rows.append(row[:max_len] if max_len else row)
            got.starts.append(len(ctx))
            if limit is not None and len(got.texts) >= limit:
                return got
    return got


def _max_len(model: Any) -> int | None:
    return getattr(model, "max_positions", None)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- the parts of the report --------------------------------------------------------------
def _rate_json(k: int, n: int) -> tuple[float, list[float]]:
    r = mia_stats.rate(k, n, CONFIDENCE)
    return float(r["rate"]), list(r["ci"])  # type: ignore[arg-type]


def discoverable_part(exact: list[bool], match: list[float], copies: list[int]) -> dict[str, Any]:
    rate, ci = _rate_json(sum(exact), len(exact))
    by = []
    for lo, hi, name in mia_stats.COPIES_BINS:
        idx = [i for i, c in enumerate(copies) if c >= lo and (hi is None or c <= hi)]
        if not idx:
            continue
        r, rci = _rate_json(sum(exact[i] for i in idx), len(idx))
        by.append(
            {
                "copies": name,
                "records": len(idx),
                "exact_matches": sum(exact[i] for i in idx),
                "exact_match_rate": r,
                "rate_ci": rci,
                "token_match_mean": sum(match[i] for i in idx) / len(idx),
            }
        )
    return {
        "records": len(exact),
        "exact_matches": sum(exact),
        "exact_match_rate": rate,
        "rate_ci": ci,
        "token_match_mean": sum(match) / len(match) if match else 0.0,
        "by_copies": by,
    }


def probabilistic_part(log_p: list[float], copies: list[int], sampler: Sampler) -> dict[str, Any]:
    def fractions(values: list[float]) -> dict[str, float]:
        return {str(n): sum(mia_stats.extracted_within(v, n) for v in values) / len(values) for n in mia_stats.QUERIES}

    log10 = [v / math.log(10) for v in log_p]
    by = []
    for lo, hi, name in mia_stats.COPIES_BINS:
        vals = [v for v, c in zip(log_p, copies) if c >= lo and (hi is None or c <= hi)]
        if vals:
            by.append({"copies": name, "records": len(vals), "extractable_fraction": fractions(vals)})
    return {
        **sampler.describe(),
        "records": len(log_p),
        "extractable_fraction": fractions(log_p),
        "log10_p_quantiles": mia_stats.quantiles(log10),
        "zero_p": sum(v == -math.inf for v in log_p),
        "by_copies": by,
    }


def attack_part(members: list[float], non: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "auc": mia_stats.auc(members, non),
        "auc_ci": list(mia_stats.auc_interval(members, non, CONFIDENCE)),
        "auc_interval_method": "DeLong, 95%",
    }
    for fpr, key in FPRS:
        point = mia_stats.tpr_at_fpr(members, non, fpr, CONFIDENCE)
        out[key] = point.tpr
        out[key + "_ci"] = list(point.tpr_ci)
        out[key + "_false_positives"] = point.false_positives
    fpr_pts, tpr_pts = mia_stats.roc_curve(members, non)
    out["roc"] = {"fpr": fpr_pts, "tpr": tpr_pts}
    return out


# -- the audit ----------------------------------------------------------------------------
@dataclass
class MemorizationResult:
    report: dict[str, Any]
    code: int
    failures: list[str]


def _gates(report: dict[str, Any], opts: MemorizationOptions) -> list[str]:
    failures = []
    rate = report["discoverable"]["exact_match_rate"]
    if opts.fail_above_extractable is not None and rate > opts.fail_above_extractable:
        failures.append(f"discoverable exact-match rate {rate:.4f} > {opts.fail_above_extractable:g}")
    if opts.fail_above_auc is not None and report["mia"] is not None:
        for name, a in report["mia"]["attacks"].items():
            if a["auc"] > opts.fail_above_auc:
                failures.append(f"membership attack {name}: AUC {a['auc']:.4f} > {opts.fail_above_auc:g}")
    return failures


def _extraction(model: Any, m: Drawn, opts: MemorizationOptions, quiet: bool) -> tuple[list[Scored], list[list[int]]]:
    from ..progress import Progress

    P, S = opts.prefix_tokens, opts.suffix_tokens
    with Progress(total=len(m.rows), desc="score members", quiet=quiet, unit="rec") as bar:
        scored = score_rows(model, m.rows, m.starts, suffix=(P, S), sampler=opts.sampler, progress=bar.update)
    prefixes = [r[: s + P] for r, s in zip(m.rows, m.starts)]
    with Progress(total=len(prefixes), desc="greedy decode", quiet=quiet, unit="rec") as bar:
        greedy = greedy_decode(model, prefixes, S, progress=bar.update)
    return scored, greedy


def run_memorization(
    opts: MemorizationOptions, *, quiet: bool = True, emit: Callable[[str], None] = lambda s: None
) -> MemorizationResult:
    """The whole audit: read and draw the records, score, decode, and build the report."""
    from ..models import load_model
    from ..progress import Progress

    opts.check()
    member_texts, non_texts, data_info = load_texts(opts)
    if not member_texts:
        raise AuditError("the members data holds no records")
    copies = Counter(member_texts)
    unique_members = list(copies)
    non_unique = [t for t in dict.fromkeys(non_texts) if t not in copies]
    model = load_model(opts.model, device=opts.device, dtype=opts.dtype, base=opts.base)
    P, S = opts.prefix_tokens, opts.suffix_tokens
    need = P + S
    if (limit := _max_len(model)) is not None and need + 1 > limit:
        raise AuditError(f"--prefix-tokens + --suffix-tokens = {need} do not fit the model's {limit} positions")
    m = draw(model, unique_members, need, opts.records, opts.seed, "members", _max_len(model))
    if not m.texts:
        raise AuditError(
            f"all {m.skipped} member records are shorter than --prefix-tokens + --suffix-tokens = {need} tokens; "
            "give smaller ones"
        )
    if m.skipped:
        emit(f"skipped {m.skipped} of {m.examined} member records shorter than {need} tokens")
    n = draw(model, non_unique, need, len(m.texts), opts.seed, "non-members", _max_len(model))
    scored, greedy = _extraction(model, m, opts, quiet)
    k = min(len(m.texts), len(n.texts))
    with Progress(total=len(n.rows[:k]), desc="score non-members", quiet=quiet, unit="rec") as bar:
        non_scored = score_rows(model, n.rows[:k], n.starts[:k], progress=bar.update)
    ref_scores = _reference_losses(opts, m.texts[:k] + n.texts[:k], quiet)

    member_copies = [copies[t] for t in m.texts]
    losses = None if ref_scores is None else ref_scores["losses"]
    exact, match, rows_out = [], [], []
    for i, (text, row, start, s, g) in enumerate(zip(m.texts, m.rows, m.starts, scored, greedy)):
        truth = row[start + P : start + P + S]
        same = sum(a == b for a, b in zip(truth, g))
        exact.append(same == S)
        match.append(same / S)
        out = _row(text, "member", row, start, s, opts, losses)
        out |= {"copies": member_copies[i], "exact_match": same == S, "token_match": same / S, "in_mia": i < k}
        out["log_p"] = None if s.suffix_logq == -math.inf else s.suffix_logq
        rows_out.append(out)
    for text, row, start, s in zip(n.texts[:k], n.rows[:k], n.starts[:k], non_scored):
        rows_out.append(_row(text, "non_member", row, start, s, opts, losses) | {"in_mia": True})
    mia = _mia_part(rows_out)
    report = {
        "schema": SCHEMA,
        "kind": KIND,
        "model": {"path": str(opts.model), **model.describe()},
        "reference": None if opts.reference is None else {"path": str(opts.reference)},
        "data": {
            **data_info,
            "member_records": len(member_texts),
            "unique_member_records": len(unique_members),
            "non_member_records": len(non_texts),
            "non_members_also_in_members": len(dict.fromkeys(non_texts)) - len(non_unique),
            "members_examined": m.examined,
            "members_skipped_short": m.skipped,
            "non_members_examined": n.examined,
            "non_members_skipped_short": n.skipped,
        },
        "settings": {
            "records": opts.records,
            "prefix_tokens": P,
            "suffix_tokens": S,
            "token_unit": token_unit(model),
            "k": opts.k,
            "seed": opts.seed,
            "confidence": CONFIDENCE,
            "fail_above_extractable": opts.fail_above_extractable,
            "fail_above_auc": opts.fail_above_auc,
            "revealed": opts.reveal,
        },
        "discoverable": discoverable_part(exact, match, member_copies),
        "probabilistic": probabilistic_part([s.suffix_logq for s in scored], member_copies, opts.sampler),
        "mia": mia,
        "records": rows_out,
    }
    if ref_scores is not None:
        report["reference"] |= ref_scores["describe"]
    failures = _gates(report, opts)
    report["gates"] = {"failed": failures}
    return MemorizationResult(report, gate_exit(bool(failures)), failures)


def _row(text, which, row, start, s: Scored, opts, losses: dict[str, float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"sha256": sha256_text(text), "set": which, "tokens": len(row) - start}
    out["scores"] = membership_scores(s, text + "\n", opts.k)
    if losses is not None and text in losses:
        out["scores"]["reference"] = losses[text] + out["scores"]["loss"]  # loss_ref - loss
    if opts.reveal:
        out["text"] = text
    return out


def _reference_losses(opts: MemorizationOptions, texts: list[str], quiet: bool) -> dict[str, Any] | None:
    """Mean token NLL of each text under the reference model, in its own tokenization."""
    if opts.reference is None or not texts:
        return None
    from ..models import load_model
    from ..progress import Progress

    ref = load_model(opts.reference, device=opts.device, dtype=opts.dtype)
    enc = ref.encode_lines(texts, None)
    limit = _max_len(ref)
    rows = [(list(c) + list(line))[:limit] if limit else list(c) + list(line) for c, line in enc]
    with Progress(total=len(rows), desc="score reference", quiet=quiet, unit="rec") as bar:
        scored = score_rows(ref, rows, [len(c) for c, _ in enc], progress=bar.update)
    losses = {t: -sum(s.token_logp) / len(s.token_logp) for t, s in zip(texts, scored)}
    return {"losses": losses, "describe": {"path": str(opts.reference), **ref.describe()}}


def _mia_part(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    members = [r for r in rows if r["set"] == "member" and r["in_mia"]]
    non = [r for r in rows if r["set"] == "non_member"]
    if not members or not non:
        return None
    attacks = {}
    for name in ATTACKS:
        xs = [r["scores"].get(name) for r in members]
        ys = [r["scores"].get(name) for r in non]
        if any(v is None for v in xs + ys):
            continue  # the reference attack without --reference
        attacks[name] = attack_part(xs, ys)
    return {"members": len(members), "non_members": len(non), "attacks": attacks}


def options_from_config(cfg: Any, model: Path, data: Path) -> MemorizationOptions:
    """`audit`'s ``memorization:`` section as the options of `exposure-audit memorization`."""
    m = cfg.memorization
    return MemorizationOptions(
        model=model,
        data=data,
        records=m.records,
        prefix_tokens=m.prefix_tokens,
        suffix_tokens=m.suffix_tokens,
        k=m.k,
        sampler=Sampler(temperature=m.temperature, top_k=m.top_k, top_p=m.top_p, greedy=m.greedy),
        seed=cfg.seed,
        fail_above_extractable=m.fail_above_extractable,
        fail_above_auc=m.fail_above_auc,
    )


def memorization_audit(
    opts: MemorizationOptions,
    outputs: Any,
    *,
    force: bool = False,
    quiet: bool = True,
    emit: Callable[[str], None] = lambda s: None,
) -> tuple[MemorizationResult, str]:
    """What the CLI calls: check every input and output first (nothing is written on bad input),
    run the audit, write the reports; returns the result and the table to print."""
    from .memorization_report import table

    opts.check()
    outputs.check(force)
    result = run_memorization(opts, quiet=quiet, emit=emit)
    outputs.write(result.report)
    return result, table(result.report)


__all__ = ["KIND", "MemorizationOptions", "MemorizationResult", "memorization_audit", "run_memorization"]
