"""Peak memory of `insert` on a large corpus (default 1 GB), which it streams line by line.

    .venv/bin/python benchmarks/insert_memory.py [--gigabytes 1.0] [--workdir /tmp] [--format txt|jsonl]

Writes a synthetic UTF-8 corpus of the given size (random words, 40-120 characters a line; with
--format jsonl, records {"id", "source", "text"} of 1-4 such lines each), runs `exposure-audit
insert` on it in a child process, and prints its wall time and peak resident memory (from the
kernel's rusage of the child). The corpus lives in a temporary folder, deleted at the end. Not a test.

    .venv/bin/python benchmarks/insert_memory.py --tiny   # seconds: a 2 MB corpus
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the of and to in is was for on that with as by at from his her an be this which or had not are but".split()


def make_corpus(path: Path, size: int, seed: int = 0, fmt: str = "txt") -> None:
    rng = random.Random(seed)
    block = []
    for _ in range(20_000):
        n = rng.randint(6, 20)
        block.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    if fmt == "jsonl":
        records = []
        for i in range(8_000):
            text = "\n".join(rng.choice(block) for _ in range(rng.randint(1, 4)))
            records.append(json.dumps({"id": i, "source": "synthetic", "text": text}))
        chunk = ("\n".join(records) + "\n").encode("utf-8")
    else:
        chunk = ("\n".join(block) + "\n").encode("utf-8")
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            piece = chunk[: size - written]
            if fmt == "jsonl":  # whole records only
                piece = piece[: piece.rfind(b"\n") + 1]
                if not piece:
                    break
            fh.write(piece)
            written += len(piece)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gigabytes", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--format", choices=["txt", "jsonl"], default="txt")
    ap.add_argument("--tiny", action="store_true", help="a 2 MB corpus (--gigabytes 0.002)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.gigabytes = min(args.gigabytes, 0.002)
    size = int(args.gigabytes * 1e9)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        corpus = Path(tmp) / f"corpus.{args.format}"
        t0 = time.perf_counter()
        make_corpus(corpus, size, fmt=args.format)
        print(f"corpus: {size / 1e9:.2f} GB written in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "exposure_audit",
                "insert",
                "--corpus",
                str(corpus),
                "--out",
                str(Path(tmp) / "out"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if proc.returncode != 0:
            print(proc.stderr)
            sys.exit(proc.returncode)
        print(proc.stdout.strip())
        print(f"insert: {wall:.0f} s, {size / 1e6 / wall:.0f} MB/s, peak resident memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
