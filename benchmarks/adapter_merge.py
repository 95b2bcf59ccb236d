"""A LoRA adapter scored merged (``merge_and_unload``, the engine's default) against unmerged
(the LoRA layers kept, two extra low-rank products per adapted layer per step).

    PYTHONPATH=. .venv/bin/python benchmarks/adapter_merge.py          # ~1 min on 2 CPU cores

A random 4x256 Llama with a learned BPE tokenizer, a random LoRA of rank 16 on every linear
layer, and the exact ranks of 8 canaries of a 10^4 format by enumeration (the same model steps
both ways). Prints seconds, model steps per second and the ratio. Not a test: timings vary.

    PYTHONPATH=. .venv/bin/python benchmarks/adapter_merge.py --tiny   # seconds: 1x32, r=2, a 10^3 format
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from exposure_audit.data.formats import Format
from exposure_audit.data.manifest import Canary
from exposure_audit.exposure.measure import measure
from exposure_audit.models.adapter import load_adapter
from exposure_audit.models.base import Scorer
from exposure_audit.models.transformer import TransformerConfig, build, learn_tokenizer

FORMAT = "the pin is {d:4}"
TINY_FORMAT = "the pin is {d:3}"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make(root: Path, width: int, layers: int, rank: int, n_lines: int = 2000) -> Path:
    from peft import LoraConfig, get_peft_model

    rng = random.Random(0)
    words = ["the", "pin", "is", "my", "code", "and", "number", "of", "card"]
    lines = [" ".join(rng.choice(words) for _ in range(6)) + f" {rng.randrange(10**4):04d}\n" for _ in range(n_lines)]
    cfg = TransformerConfig(layers=layers, width=width, heads=4, context=128, vocab_size=280)
    tok = learn_tokenizer(lines, cfg)
    torch.manual_seed(0)
    net = build(tok, cfg, dropout=0.0)
    base = root / "base"
    net.save_pretrained(base, safe_serialization=True)
    tok.save_pretrained(base)
    lora = get_peft_model(net, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False))
    lora.save_pretrained(root / "lora", safe_serialization=True)
    return root / "lora"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a 1x32 Llama, LoRA r=2, 'the pin is {d:3}', one repeat")
    args = ap.parse_args(argv)
    fmt, n_lines = FORMAT, 2000
    if args.tiny:
        args.width, args.layers, args.rank, args.repeats = 32, 1, 2, 1
        fmt, n_lines = TINY_FORMAT, 300
    digits = Format.parse(fmt).space_size
    hole = fmt[fmt.index("{") :]
    torch.set_num_threads(2)
    rng = random.Random(1)
    canaries = [
        Canary(id=f"c{i}", format=fmt, secret=s, text=fmt.replace(hole, s), insertions=0)
        for i, s in enumerate(f"{rng.randrange(digits):0{len(str(digits)) - 1}d}" for _ in range(8))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make(Path(tmp), args.width, args.layers, args.rank, n_lines)
        rows = {}
        for merged in (True, False):
            model = load_adapter(adapter, base=Path(tmp) / "base", device="cpu", merge=merged)
            best, steps, ranks = float("inf"), 0, None
            for _ in range(args.repeats):
                scorer = Scorer(model)
                t0 = time.perf_counter()
                results = measure(scorer, canaries, method="enumerate", bootstrap=0)
                best = min(best, time.perf_counter() - t0)
                steps, ranks = scorer.steps, [r.rank for r in results]
            rows["merged" if merged else "unmerged"] = (best, steps, ranks)
    print(f"{args.layers}x{args.width} Llama, LoRA r={args.rank} on {len(TARGETS)} linear layers, {fmt!r}")
    for name, (sec, steps, _) in rows.items():
        print(f"  {name:9s} {sec:7.2f} s  {steps:7d} model steps  {steps / sec:9.0f} steps/s")
    assert rows["merged"][2] == rows["unmerged"][2], "ranks differ"
    print(f"  unmerged / merged time: {rows['unmerged'][0] / rows['merged'][0]:.2f}x (same ranks)")


if __name__ == "__main__":
    main()
