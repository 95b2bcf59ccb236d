"""Throughput and peak memory of `exposure-audit scan` (no model) beside `detect-secrets scan` on one file.

    .venv/bin/python benchmarks/scan.py [--megabytes 1024] [--workdir /tmp] [--no-peer]

Writes a synthetic JSONL corpus of the given size: records {"id", "text"} of 1-4 lines of
English-ish prose, one record in 20 quoting a secret in a natural context (an e-mail signature
with a phone number, a config line with an AWS key or a password, a support chat with a card
number, an IBAN, an SSN, an IPv4), drawn from a pool of 5,000 values. Then runs, each in a child
process, `exposure-audit scan --corpus FILE` and the peer scanner's own CLI `detect-secrets scan
FILE` on the same file, and prints wall time, MB/s and peak resident memory (the kernel's rusage
of each child) side by side, with the ratio. The corpus lives in a temporary folder, deleted at
the end. Not a test; run it under the heavy-work lock.

    .venv/bin/python benchmarks/scan.py --tiny   # seconds: a corpus of about 40 KB
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the of and to in is was for on that with as by at from his her an be this which or had not are but "
    "team meeting report customer order invoice please thanks regards review update server account"
).split()


def _secret_lines(rng: random.Random, n: int) -> list[str]:
    """``n`` fake secrets in natural contexts (valid-looking: Luhn cards, mod-97 IBANs)."""
    out = []
    for i in range(n):
        k = i % 7
        if k == 0:
            local = "".join(rng.choice("abcdefghij") for _ in range(6))
            out.append(f"Best regards,\\nJo\\n{local}@example.com | (415) 555-{rng.randrange(10_000):04d}")
        elif k == 1:
            key = "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
            out.append(f"aws_access_key_id = {key}")
        elif k == 2:
            while True:
                card = "4" + "".join(rng.choice("0123456789") for _ in range(15))
                if luhn_ok(card):
                    break
            out.append(
                f"Agent: can you confirm the card? User: sure, it is {' '.join(card[j : j + 4] for j in range(0, 16, 4))}"
            )
        elif k == 3:
            while True:
                body = "".join(rng.choice("0123456789") for _ in range(18))
                iban = f"DE{rng.randrange(100):02d}{body}"
                if iban_ok(iban):
                    break
            out.append(f"please wire it to IBAN {iban} today")
        elif k == 4:
            out.append(f"ssn on file: {rng.randrange(100, 600)}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}")
        elif k == 5:
            out.append(f"db_password = {''.join(rng.choice('abcdefghJKLMNP23456789') for _ in range(14))}")
        else:
            out.append(f"the server at 10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)} is down")
    return out


def luhn_ok(digits: str) -> bool:
    # written out here, not imported: the parent process stays small (a child's peak RSS
    # includes what it inherits at fork)
    total = sum(
        int(c) if i % 2 == 0 else (2 * int(c) - 9 if int(c) > 4 else 2 * int(c)) for i, c in enumerate(digits[::-1])
    )
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def make_corpus(path: Path, size: int, seed: int = 0, records_per_chunk: int = 8_000) -> None:
    rng = random.Random(seed)
    prose = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) for _ in range(20_000)]
    secrets = _secret_lines(rng, 5_000)
    records = []
    for i in range(records_per_chunk):
        lines = [rng.choice(prose) for _ in range(rng.randint(1, 4))]
        if i % 20 == 0:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(secrets).replace("\\n", "\n"))
        records.append(json.dumps({"id": i, "text": "\n".join(lines)}))
    chunk = ("\n".join(records) + "\n").encode("utf-8")
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            fh.write(chunk)
            written += len(chunk)


def run_child(argv: list[str], stdout, cwd: str) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit status of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--megabytes", type=float, default=1024.0)
    ap.add_argument("--workdir", type=str, default=None)
    ap.add_argument("--no-peer", action="store_true", help="Skip detect-secrets' CLI.")
    ap.add_argument("--tiny", action="store_true", help="a corpus of about 40 KB (200 records)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.megabytes = min(args.megabytes, 0.03)
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        t0 = time.perf_counter()
        make_corpus(corpus, int(args.megabytes * 1e6), records_per_chunk=200 if args.tiny else 8_000)
        mb = corpus.stat().st_size / 1e6
        print(f"corpus: {mb:.1f} MB JSONL, written in {time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        # what the package's imports alone hold (torch comes with it): the floor under scan's peak
        imports = [
            sys.executable,
            "-c",
            "import exposure_audit.cli, exposure_audit.audits.secrets as s; s._detect_secrets()",
        ]
        wall, rss, code = run_child(imports, subprocess.DEVNULL, os.getcwd())
        rows.append(("imports only", wall, rss, code, "(no scan)"))
        ours = [sys.executable, "-m", "exposure_audit", "scan", "--corpus", str(corpus), "--out", f"{tmp}/out", "-q"]
        with open(f"{tmp}/scan.stdout", "wb") as out:
            wall, rss, code = run_child(ours, out, os.getcwd())
        report = json.loads(Path(f"{tmp}/out/scan.json").read_text()) if code == 0 else {"summary": {}}
        found = report["summary"].get("findings")
        rows.append(("exposure-audit scan", wall, rss, code, f"{found} distinct values"))
        if not args.no_peer:
            # run from the corpus's folder: from inside a git work tree detect-secrets scans only
            # that tree's tracked files and skips the corpus (0 results in 0.2 s)
            peer = [str(bindir / "detect-secrets"), "scan", corpus.name]
            with open(f"{tmp}/peer.json", "wb") as out:
                wall, rss, code = run_child(peer, out, tmp)
            results = json.loads(Path(f"{tmp}/peer.json").read_text()).get("results", {}) if code == 0 else {}
            hits = sum(len(v) for v in results.values())
            rows.append(("detect-secrets scan", wall, rss, code, f"{hits} results (secret types per line)"))
        print(f"\n{'scanner':<22} {'seconds':>9} {'MB/s':>7} {'peak RSS MB':>12}  exit  found")
        for name, wall, rss, code, what in rows:
            print(f"{name:<22} {wall:>9.1f} {mb / wall:>7.2f} {rss:>12.0f}  {code:>4}  {what}")
        if len(rows) == 3:
            print(f"\nthroughput ratio (exposure-audit / detect-secrets): {rows[2][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
