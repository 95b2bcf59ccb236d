"""The corpus of the memorization finding (docs/experiments.md, "How much of the training data
comes back"): records of about 350 characters cut from CPython's bundled reference text
(pydoc_data.topics, whitespace collapsed, cut at a space), shuffled with the seed; 6 of them
repeated 64 times, 12 repeated 16 times, 30 repeated 4 times and 800 kept once. One JSONL
record per line ({"text": ...}), in a shuffled order.

    .venv/bin/python benchmarks/memorization_corpus.py runs/memorization/corpus.jsonl
    .venv/bin/python benchmarks/memorization_corpus.py --tiny OUT.jsonl   # 1 x 4, 2 x 2 and 10 x 1 copies
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COPIES = {64: 6, 16: 12, 4: 30, 1: 800}
TINY_COPIES = {4: 1, 2: 2, 1: 10}
LENGTH = 350


def chunks(text: str, length: int) -> list[str]:
    out, at = [], 0
    while at + length < len(text):
        cut = text.find(" ", at + length)
        if cut < 0:
            break
        out.append(text[at:cut])
        at = cut + 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help=f"copies {TINY_COPIES} instead of {COPIES}")
    args = parser.parse_args(argv)
    copies_of = TINY_COPIES if args.tiny else COPIES
    import pydoc_data.topics as topics

    text = " ".join(" ".join(topics.topics[k].split()) for k in sorted(topics.topics))
    pieces = list(dict.fromkeys(chunks(text, LENGTH)))  # distinct records only
    rng = random.Random(args.seed)
    rng.shuffle(pieces)
    records, at = [], 0
    for copies, count in copies_of.items():
        for piece in pieces[at : at + count]:
            records += [piece] * copies
        at += count
    rng.shuffle(records)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    print(f"{args.out}: {len(records)} records ({at} distinct of {len(pieces)} available), copies {copies_of}")


if __name__ == "__main__":
    main()
