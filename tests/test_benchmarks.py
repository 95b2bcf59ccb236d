"""Every script in benchmarks/ runs once in its tiny mode (seconds, random-weight tiny models built
at run time, tiny corpora) and prints the lines of its table: an interface change breaks this
test, not a benchmark someone runs months later (engine.py once crashed on ``model.start("\\n")``
after the model interface moved to token ids). The figures mean nothing at this size; what is
asserted is that each script finishes and that its output has the shape of its table.

The scripts run in this process (``main(argv)``) where they allow it, so torch, transformers and
the package are imported once; insert_memory.py, scan.py and defaults.py measure child processes, and
stress.py and distributed.py launch torchrun, so they start interpreters of their own (and run
only with EXPOSURE_AUDIT_BENCH_TORCHRUN=1, see below).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
NUM = r"[\d,.]+"

# script -> (arguments after --tiny, the patterns its output must match: each at least once, in order)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "adapter_merge": (
        [],
        [
            r"^1x32 Llama, LoRA r=2 on 7 linear layers, 'the pin is \{d:3\}'$",
            rf"^  merged +{NUM} s +\d+ model steps +\d+ steps/s$",
            rf"^  unmerged +{NUM} s +\d+ model steps +\d+ steps/s$",
            rf"^  unmerged / merged time: {NUM}x \(same ranks\)$",
        ],
    ),
    "allocator": (
        [],
        [
            r"^char-LSTM 1x16, one thread; a step = forward \+ backward \+ Adam on batch x 100 characters$",
            r"^ +batch +run +glibc defaults +exposure-audit +speedup$",
            rf"^ +8 +1 +{NUM} ms \(sd +{NUM}\) +{NUM} ms \(sd +{NUM}\) +{NUM}x$",
        ],
    ),
    "allreduce": (
        [],
        [
            r"^all-reduce alone +gloo +shared memory +ratio$",
            rf"^  850,012 bytes +{NUM} ms +{NUM} ms +{NUM}x$",
            r"^DDP step, char-LSTM 1x16, batch 32 x 100 per rank \(mean of 3 steps, rank 0\)$",
            rf"^  gloo +{NUM} ms +{NUM} ms$",
            rf"^  shared memory +{NUM} ms +{NUM} ms$",
            rf"^  no communication +{NUM} ms +{NUM} ms$",
        ],
    ),
    "bf16_measure": (
        [],
        [
            r"^== random 2x32 Llama: 'The first digits of pi are 3\.\{d:3\}' by enumeration, 4 random canaries$",
            rf"^   float32 +[\d,]+ / [\d,]+ / [\d,]+ / [\d,]+ +{NUM} +{NUM} +{NUM} GB +1\.00x$",
            r"^   bfloat16 --rescore: ranks equal to float32's 4 of 4, float32's inside the rank interval 4 of 4; "
            r"methods enumerate\+rescored$",
            r"^   --rescore --max-band 100: ranks equal to float32's \d of 4, float32's inside the rank interval 4 of 4",
            r"^== random 2x32 Llama: 'The first digits of pi are 3\.\{d:4\}' with no options \(the default plan\)",
            r"^   bfloat16 --rescore: ranks equal to float32's \d of \d, float32's inside the rank interval \d of \d",
        ],
    ),
    "defaults": (
        ["--exact"],
        [
            r"^measure with no options \(prefer balanced, exact budget 2,000,000 steps per format, fewer where a "
            r"step costs more than the char-LSTM's\)$",
            r"^audit +formats +canaries +exact +train s +measure s +peak MB +walk steps/s$",
            rf"^tiny +1 +3 +[0-3] +{NUM} +{NUM} +{NUM} +({NUM}|-)$",
            rf"^  --prefer exact +1 +3 +3 +{NUM} +{NUM} +{NUM} +({NUM}|-)$",
            rf"^  default / exact time: {NUM}x; estimated where exact was proven: [0-3] canaries, max error {NUM} bits$",
        ],
    ),
    "distributed": (
        [],
        [
            r"^one thread per process; \d+ CPU cores; char-LSTM 1x8$",
            r"^run 1 of 1$",
            rf"^enumerate pin \{{d:3\}}: seconds +{NUM} s +{NUM} s +{NUM}x +\d+%$",
            rf"^  model steps per second \(k\) +{NUM} +{NUM} +{NUM}x +\d+%$",
            rf"^train \(DDP\): seconds, 1 epoch +{NUM} s +{NUM} s +{NUM}x +\d+%$",
            rf"^ceiling: 2 independent world-1 runs at once took {NUM} s \(enumerate\) and {NUM} s \(train\) on average, so a perfect split allows {NUM}x and {NUM}x$",
            r"^enumeration: [\d,]+ model steps; reports identical across world sizes: yes$",
            rf"^training: \d+ steps of 64 x 100 tokens; validation {NUM} \(world 1\) vs {NUM} \(world 2\) bits/char$",
        ],
    ),
    "dp_audit_table": (
        [],
        [
            r"^run +canaries +mode +claim +Steinke +CP thresh\. +f-DP \(e,d\) +f-DP GDP\* +TPR@1%FPR \[CI\]",
            rf"^tiny-nodp +random +no DP +- \(\d win\) +{NUM} +{NUM} +{NUM} +{NUM} +{NUM} \[{NUM}, {NUM}\] "
            rf"+{NUM} \[{NUM}, {NUM}\] +-$",
        ],
    ),
    "dp_speed": (
        [],
        [
            r"^model +batch +seq +plain chars/s +DP-SGD chars/s +ratio$",
            rf"^1x16 +8 +20 +{NUM} +{NUM} +{NUM}x$",
        ],
    ),
    "engine": (
        ["--audit", "{audit}"],
        [
            r"^== \(a\) bare model step throughput \(batch 1024\)$",
            rf"^   {NUM} steps/s$",
            r"^== \(b\) brute force vs prefix-tree enumeration: 'the random number is \{d:3\}', \|R\| = 10\^3$",
            rf"^   brute force +{NUM} s +24,001 steps$",
            rf"^   enumeration +{NUM} s +1,110 steps +{NUM} steps/s = \d+% of bare$",
            rf"^   ratio +{NUM}x time +21\.6x steps; max \|score difference\| {NUM}e-\d+ bits$",
            r"^== \(c\) pruned exact rank of memorized 4-digit canaries",
            rf"^   n= ?\d+: rank +\d+  exposure +{NUM} +{NUM} s +{NUM} steps  brute force would need 250,000 steps",
            r"^   pruned rank == enumeration rank for all 27 canaries",
            rf"^   as measure reports:  mean \|error\| {NUM} bits, max {NUM} \(at exact {NUM} bits\), "
            rf"90% interval coverage \d+%$",
            rf"^     exact  2- 9 bits: mean \|error\| {NUM}, max {NUM}, coverage \d+%$",
            rf"^   skew-normal alone: +mean \|error\| {NUM} bits, max {NUM}$",
            rf"^   sampling alone: +mean \|error\| {NUM} bits, max {NUM} \(capped at log2\(m\+1\) = {NUM}\)$",
            rf"^== peak memory of this process: {NUM} MB$",
        ],
    ),
    "estimators": (
        ["--audit", "{audit}"],
        [
            r"^== exact scores of 'the random number is \{d:3\}' by enumeration: [\d,]+ steps",
            r"^== 10\^3: 'the random number is \{d:3\}', \|R\| = 1e\+03, \d+ targets at exact exposure",
            r"^   band \(exact bits\) +n +importance +uniform +skewnorm$",
            rf"^   importance all targets 2\.\.log2\|R\|-1: mean \|error\| {NUM}, max {NUM} bits; 90% coverage {NUM}%",
            r"^== exact scores of 'the random number is \{d:4\}' by a pruned walk to rank [\d,]+",
            r"^== 10\^4: 'the random number is \{d:4\}'",
            r"^== auto vs the pre-#13 policy \(--max-steps 50,000, 300 samples\)$",
            r"^   format +policy +steps +seconds  exact/possible  plan$",
            r"^   the random number is \{d:3\} +auto-fast +[\d,]+ +[\d.]+ +\d+/\d+ +",
            r"^   the random number is \{d:3\} +auto-exact +[\d,]+ +[\d.]+ +15/15 +enumerate",
            r"^   the random number is \{d:2\} \{d:2\} +old +[\d,]+ +",
        ],
    ),
    "extract": (
        ["--audit", "{audit}"],
        [
            r"^== 'the random number is \{d:4\}': \|R\| = 1e\+04$",
            r"^   best-first top 3: [\d,]+ model steps, [\d.]+ s, (proven|NOT proven \(budget\)); brute force: ",
            r"^   canary +ins  exposure  position$",
            r"^   \d{4} +0 +[\d.]+  (\d|not in top 3)$",
            r"^   \d{4} +8 +[\d.]+  (\d|not in top 3)$",
        ],
    ),
    "hf": (
        [],
        [
            r"^== \(a\) 'the random number is \{d:3\}', \|R\| = 10\^3: tree walk vs whole strings",
            r"^   split digits: 0 of 1,000 leaves non-canonical$",
            rf"^      ratio +{NUM}x time +{NUM}x steps$",
            r"ranks equal for \d+ of 10 canaries, max rank difference \d+",
            r"^   merged digits: [\d,]+ of [\d,]+ leaves non-canonical$",
            r"^== \(b\) 'the random number is \{d:3\}', \|R\| = 10\^3: pruned exact rank at the top$",
            r"^      pruned rank of the #1 secret \d{3}: rank 1, ",
            r"^      pruned rank of the #10 secret \d{3}: rank 10, ",
            r"^== \(c\) a random 2x32 Llama in SmolLM2's place$",
            r"^   extract 'The first digits of pi are 3\.\{d:3\}': ",
            r"^      141 \(pi    \)  log-ppl +[\d.]+  rank +\d+  exposure +[\d.]+ of 9\.97  ",
            r"^== \(d\) steps/s against the matmul roof",
            rf"^      bare step, 1024 rows +{NUM} steps/s +{NUM} GFLOP/s = +\d+% of fp32 roof$",
            r"^      measure, pruned \([\d,]+ steps\)",
            r"^== \(e\) ranks under bfloat16 against float32$",
            r"^      123 +[\d.]+ +[\d.]+ +[\d,]+ +[\d,]+$",
            r"^      ranks equal for [0-6] of 6 canaries; max \|bf16 - fp32\| [\d.]+ bits$",
            r"^      rescored measure \(bf16 walk, fp32 band, delta [\d.]+ bits\): [0-6] of 6 exact, equal to "
            r"float32's: 6; float32's rank inside the interval: 6 of 6; bands [\d,]+-[\d,]+ candidates, [\d,]+ "
            r"rescored; max \|bf16 - fp32\| seen [\d.]+ bits \(sound\)$",
            rf"^         {NUM} s, [\d,]+ model steps; float32 enumeration / this: {NUM}x, bfloat16 enumeration / this: "
            rf"{NUM}x$",
            r"^      rescored measure, max_band 100 \(bf16 walk.*float32's rank inside the interval: 6 of 6; ",
            r"^   'the random number is \{d:4\}' \(\|R\| = 10,000\), the default plan \([a-z+]+, exact budget 2,000,000 "
            r"steps\), 200 samples:$",
            r"^      1234 +float32 enumerate +rank [\d,]+ +bf16 rescored enumerate\+rescored rank [\d,]+$",
            rf"^      float32 {NUM} s, bfloat16 rescored {NUM} s: {NUM}x; exact ranks equal: 4 of 4$",
            r"^== \(f\) the proven extraction by popped-batch size$",
            rf"^      batch +4: \d+ {NUM} bits proven, [\d,]+ steps in {NUM} s = [\d,]+ steps/s = \d+% of the roof; "
            rf"\d+ calls of \d+ rows on average; peak search memory {NUM} GB$",
            rf"^      batch +default: \d+ {NUM} bits proven",
            rf"^      batch +plain: \d+ {NUM} bits proven, .* calls of \d+ rows on average",
            rf"^      batch by depth: \d+ {NUM} bits proven, .* calls of \d+ rows on average",
            r"^== \(g\) where the proven extraction's time goes",
            rf"^   random 2x32 Llama, .*: [\d,]+ steps in {NUM} s under the profiler = [\d,]+ steps/s = \d+% of the {NUM} "
            r"GFLOP/s roof; \d+ model calls, \d+ rows each on average \(at most \d+\)$",
            rf"^      matmul \(mm, addmm, bmm\) +{NUM} s +{NUM}%$",
            rf"^      other operators \(norms, rotary, activations\) +{NUM} s +{NUM}%$",
            rf"^      outside operators \(Python: engine, model code\) +{NUM} s +{NUM}%$",
            rf"^      the matmuls alone: {NUM} GFLOP/s = \d+% of the roof",
        ],
    ),
    "insert_memory": (
        [],
        [
            r"^corpus: 0\.00 GB written in \d+ s$",
            r": 14 canaries \(126 insertions\) in \d+ training lines; \d+ validation lines; seed 0$",
            r"^insert: \d+ s, \d+ MB/s, peak resident memory \d+ MB$",
        ],
    ),
    "memorization": (
        [],
        [
            r"^LlamaForCausalLM, .*; 16 records of 8\+8 tokens, batches of 8$",
            r"^part +audit rec/s +bare rec/s +audit/bare$",
            rf"^\(a\) scoring, 1 pass/record +{NUM} +{NUM} +{NUM}$",
            rf"^\(b\) greedy suffix, KV cache +{NUM} +{NUM} +{NUM}$",
        ],
    ),
    "memorization_corpus": (
        ["{tmp}/corpus.jsonl"],
        [r"corpus\.jsonl: 18 records \(13 distinct of \d+ available\), copies \{4: 1, 2: 2, 1: 10\}$"],
    ),
    "scan": (
        [],
        [
            r"^corpus: [\d.]+ MB JSONL, written in [\d.]+ s$",
            r"^scanner +seconds +MB/s +peak RSS MB  exit  found$",
            r"^imports only +[\d.]+ +[\d.]+ +\d+ +0  \(no scan\)$",
            r"^exposure-audit scan +[\d.]+ +[\d.]+ +\d+ +0  \d+ distinct values$",
            r"^detect-secrets scan +[\d.]+ +[\d.]+ +\d+ +0  \d+ results",
            r"^throughput ratio \(exposure-audit / detect-secrets\): [\d.]+x$",
        ],
    ),
    "scan_corpus": (
        [],
        [
            r"corpus\.jsonl: \d+ records, \d+ KB; 14 planted values$",
            r"reference\.jsonl: \d+ records, \d+ distinct values replaced by fresh fillings$",
            r"^\| planted kind \| values \| found \| found as \|$",
            r"^\| aws-key-id \| 2 \| 2 \| aws-access-key \(2\) \|$",
            r"^\| payment-card \| 2 \| 2 \| payment-card \(2\) \|$",
            r"^findings that are not planted values: none$",
            r"^\| planted kind \| copies planted \| in training \| values \| exposure \(bits\) \| reference \| gain \|",
            r"^\| [a-z-]+ \| [14] \| \d \| \d \| [\d.]+ \| [\d.]+ \| -?[\d.]+ \| \d of \d \| \d of \d \| [a-z:]+ \(\d\) \|$",
            r"^\| copies planted \| in training \| values \| exposure \(bits\) \| reference \| gain \| extracted \(top-1\) \| search proven \|$",
            r"^\| [14] \| \d \| \d \| [\d.]+ \| [\d.]+ \| -?[\d.]+ \| \d of \d \| \d of \d \|$",
        ],
    ),
    "stress": (
        [],
        [
            r"^round 1/1: measure 0 bad, extract 0 bad, train 0 bad, train --resume 0 bad$",
            r"^4 torchrun runs at 2 ranks with 0 busy loops: 0 not clean$",
            r"^  measure +1 runs +0 not clean$",
            r"^  train --resume +1 runs +0 not clean$",
        ],
    ),
}


def test_every_benchmark_has_a_case():
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(CASES), "every benchmarks/*.py runs here in its tiny mode"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts' own helper, benchmarks/_tiny.py
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_audit(tmp_path_factory):
    """One tiny audit (benchmarks/_tiny.py, through the CLI) for engine, estimators and extract."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import _tiny

    return _tiny.audit(tmp_path_factory.mktemp("bench-audit"))


# The two scripts that launch torchrun start about five interpreters each even at their tiny size
# (stress: 5 launches, 54 s on the shared 2-core machine; distributed: 4 launches, 28 s), twice the
# budget of this whole file, so they run only when asked; the commands they launch are covered
# under torchrun by tests/test_distributed.py.
TORCHRUN = {"stress", "distributed"}
TORCHRUN_ENV = "EXPOSURE_AUDIT_BENCH_TORCHRUN"


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_tiny(name, request, tmp_path, capsys):
    if name in TORCHRUN and os.environ.get(TORCHRUN_ENV) != "1":
        pytest.skip(f"launches torchrun (~30-55 s even tiny): {TORCHRUN_ENV}=1 runs it")
    extra, patterns = CASES[name]
    fill = {"tmp": str(tmp_path)}
    if any("{audit}" in a for a in extra):
        fill["audit"] = str(request.getfixturevalue("tiny_audit"))
    argv = ["--tiny", *(a.format(**fill) for a in extra)]
    try:
        _load(name).main(argv)
    except SystemExit as e:  # a script's own failure exit (a child failed, a check did not hold)
        assert e.code in (0, None), f"{name} exited {e.code}: {capsys.readouterr().err[-2000:]}"
    lines = capsys.readouterr().out.splitlines()
    at = 0
    for pattern in patterns:
        found = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"{name}: no line matching {pattern!r} after line {at}:\n" + "\n".join(lines)
        at = found + 1


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or __import__("torch").cuda.is_available(),
    reason="checks the no-GPU refusal; a machine with CUDA runs the real benchmark instead",
)
def test_gpu_script_refuses_without_a_gpu():
    """benchmarks/gpu.sh (issue #24's GPU check) stops before any work, with one error line and
    exit 2, where torch sees no CUDA device: a CPU-only machine never starts the GPU benchmark."""
    import subprocess

    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCH / "gpu.sh")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: benchmarks/gpu.sh: torch sees no CUDA GPU here (torch.cuda.is_available() is False)"
    ]
