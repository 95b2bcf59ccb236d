"""torchrun: real process groups (gloo on 127.0.0.1) on the CPU, one thread per rank.

What runs under torchrun must give what one process gives: the measure report (ranks, exposures,
intervals, model steps) at world sizes 1, 2 and 3, the extraction order and proof; DDP training
finishes, matches one process up to floating-point reduction order, and resumes bit-identically
after a kill. Errors on any rank stop every rank; a dead rank stops the others within a timeout.
Every launched process is killed in a ``finally``, whatever the test's outcome.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from exposure_audit.cli import main
from exposure_audit.data.formats import Format
from exposure_audit.files import staging_path

from .conftest import make_data

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 120  # seconds any launched job may take before the test kills it and fails


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    return env


def cli(args, cwd) -> list[str]:
    return [sys.executable, "-m", "exposure_audit", *[str(a) for a in args]]


class Ranks:
    """The ranks of one CLI job started as torchrun starts them (one process per rank, its env)."""

    def __init__(self, per_rank_args: list[list], cwd: Path) -> None:
        port = free_port()
        world = len(per_rank_args)
        self.cwd = cwd
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        for rank, args in enumerate(per_rank_args):
            out, err = open(cwd / f"rank{rank}.out", "w+"), open(cwd / f"rank{rank}.err", "w+")
            self.logs.append((out, err))
            env = {**base_env(), **rank_env(rank, world, port)}
            self.procs.append(subprocess.Popen(cli(args, cwd), cwd=cwd, env=env, stdout=out, stderr=err))

    def wait(self, limit: float = LIMIT) -> list[int]:
        deadline = time.time() + limit
        codes = []
        for p in self.procs:
            codes.append(p.wait(timeout=max(0.1, deadline - time.time())))
        return codes

    def text(self, rank: int, which: int) -> str:
        f = self.logs[rank][which]
        f.flush()
        return Path(f.name).read_text()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for out, err in self.logs:
            out.close()
            err.close()


def run_ranks(per_rank_args, cwd, limit=LIMIT):
    job = Ranks(per_rank_args, cwd)
    try:
        codes = job.wait(limit)
        return codes, [job.text(r, 0) for r in range(len(codes))], [job.text(r, 1) for r in range(len(codes))]
    finally:
        job.close()


def single(args, cwd):
    """One process, no torchrun environment, one thread (as each rank has)."""
    p = subprocess.run(cli(args, cwd), cwd=cwd, env=base_env(), capture_output=True, text=True, timeout=LIMIT)
    return p.returncode, p.stdout, p.stderr


# -- library runs in spawned process groups -------------------------------------------------
class Canary:
    def __init__(self, fmt: str, secret: str, insertions: int) -> None:
        self.format, self.secret, self.insertions = fmt, secret, insertions


FORMAT = "pin {d:3}"
SECRETS = ["000", "482", "913", "555"]
METHODS = [
    ("enumerate", {}),
    ("brute", {}),
    ("pruned", {}),
    ("pruned", {"max_steps": 30}),  # the budget runs out: bounds, then the estimate
    ("estimate", {"samples": 300}),
    ("estimate", {"samples": 300, "estimator": "skewnorm", "bootstrap": 10}),
    ("auto", {"samples": 20, "max_steps": 100}),  # estimate, then plan pruned walks
]


def measure_everything(model_dir: str) -> dict:
    """Every method of measure, and best-first extraction, on the checkpoint in ``model_dir``."""
    from exposure_audit.exposure.extract import best_first
    from exposure_audit.exposure.measure import measure
    from exposure_audit.models import load_model

    model = load_model(Path(model_dir))
    canaries = [Canary(FORMAT, s, i) for i, s in enumerate(SECRETS)]
    out = {}
    for k, (method, kw) in enumerate(METHODS):
        plans: dict = {}
        results = measure(model, canaries, method=method, seed=3, batch=64, plans=plans, **kw)
        out[k] = ([strip(r.to_json()) for r in results], strip(plans))
    ex = best_first(model, Format.parse("x{[ACGT]:2} {d:2}."), top=15, batch=32)
    out["extract"] = ([(c.secret, c.log_perplexity) for c in ex.candidates], ex.proven, ex.model_steps)
    return out


def strip(obj):
    """A report without its timings."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def _worker(rank, world, port, job, args, out_path):
    os.environ.update(rank_env(rank, world, port))
    torch.set_num_threads(1)
    from exposure_audit import distributed

    distributed.start("gloo", timeout=60)
    try:
        result = job(*args)
        if rank == 0:
            Path(out_path).write_bytes(pickle.dumps(result))
    finally:
        distributed.stop()
    # as the command leaves (docs/distributed.md, "Shutdown"): a normal exit would run gloo's and
    # DDP's C++ destructors during interpreter finalization, which now and then aborts a rank
    # ("terminate called without an active exception": once in a full suite run under load)
    distributed.leave(0)


def spawn(world: int, job, args, tmp_path: Path):
    """Run ``job(*args)`` on ``world`` spawned ranks; rank 0's result."""
    out = tmp_path / f"result-{world}.pickle"
    ctx = mp.start_processes(
        _worker, args=(world, free_port(), job, args, str(out)), nprocs=world, join=False, start_method="spawn"
    )
    try:
        deadline = time.time() + LIMIT
        while not ctx.join(timeout=1):
            assert time.time() < deadline, "the ranks did not finish in time"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
    return pickle.loads(out.read_bytes())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    from exposure_audit.models import save_checkpoint

    folder = tmp_path_factory.mktemp("dist") / "model"
    folder.mkdir()
    save_checkpoint(tiny_model, folder, {})
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint):
    """One process, one thread (as every rank runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure_everything(str(checkpoint))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("world", [2, 3])
def test_measure_and_extraction_do_not_depend_on_the_world_size(checkpoint, reference, tmp_path, world):
    got = spawn(world, measure_everything, (str(checkpoint),), tmp_path)
    for k, (method, kw) in enumerate(METHODS):
        assert got[k] == reference[k], (method, kw)
    # the methods really ran as named (and the budget ran out where it was meant to)
    assert {r["method"] for r in reference[0][0]} == {"enumerate"}
    assert any(r["method"].startswith("pruned-bounds+") for r in reference[3][0])
    assert reference[6][1][FORMAT]["chosen"] in ("pruned+estimate", "estimate")
    # extraction: the order, the proof and the steps are the single process's; a score may differ
    # in float32 rounding, since a rank steps a sub-batch, and a matrix product need not round a
    # row the same in every batch size (seen: 5e-7 bits of 43)
    (got_c, got_proven, got_steps), (ref_c, ref_proven, ref_steps) = got["extract"], reference["extract"]
    assert [s for s, _ in got_c] == [s for s, _ in ref_c] and (got_proven, got_steps) == (ref_proven, ref_steps)
    assert got_proven and len(got_c) == 15
    assert [lp for _, lp in got_c] == pytest.approx([lp for _, lp in ref_c], abs=1e-5)


# -- the command line under a launcher --------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-data")
    make_data(root, lines=240, schedule="0,1,8", fmt="pin {d:4}")
    return root


def test_torchrun_measure_prints_and_writes_once_the_single_process_report(checkpoint, data, tmp_path):
    args = ["measure", "--model", checkpoint, "--canaries", data / "data" / "canaries.json", "--method", "estimate"]
    args += ["--samples", "800", "-q", "--any-model"]
    code, ref_out, _ = single([*args, "--json", tmp_path / "one.json"], tmp_path)
    assert code == 0
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    cmd += ["-m", "exposure_audit", *[str(a) for a in args], "--json", str(tmp_path / "two.json")]
    p = subprocess.run(cmd, cwd=tmp_path, env=base_env(), capture_output=True, text=True, timeout=LIMIT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("canary ") == 1 and p.stdout.strip() == ref_out.strip()  # the table, once
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert strip(one["canaries"]) == strip(two["canaries"]) and one["table"] == two["table"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["one.json", "two.json"]  # rank 1 wrote nothing


def test_nccl_without_cuda_is_one_line_and_exit_2_on_every_rank(checkpoint, data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args = ["measure", "--model", checkpoint, "--canaries", data / "data" / "canaries.json", "--backend", "nccl"]
    args += ["--json", tmp_path / "r.json"]
    codes, outs, errs = run_ranks([args, args], tmp_path)
    assert codes == [2, 2]
    lines = [x for e in errs for x in e.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: backend nccl needs CUDA"), errs
    assert not (tmp_path / "r.json").exists() and not any(outs)


def test_an_error_on_one_rank_stops_every_rank_and_reaches_rank_0(checkpoint, data, tmp_path):
    good = ["measure", "--model", checkpoint, "--canaries", data / "data" / "canaries.json", "--any-model"]
    good += ["--json", tmp_path / "r.json", "-q", "--method", "estimate", "--samples", "500"]
    bad = [*good[:4], tmp_path / "missing.json", *good[5:]]  # rank 1 cannot read its manifest
    codes, outs, errs = run_ranks([good, bad], tmp_path)
    assert codes == [2, 2], errs
    assert errs[0].strip().startswith("error: rank 1: ") and "missing.json" in errs[0], errs
    assert errs[1].strip() == "" and len(errs[0].strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists() and not any(outs)


def test_a_killed_rank_makes_the_others_exit_within_the_timeout(checkpoint, data, tmp_path):
    args = ["measure", "--model", checkpoint, "--canaries", data / "data" / "canaries.json", "--any-model"]
    args += ["--method", "estimate", "--samples", "60000", "--timeout", "30", "--json", tmp_path / "r.json"]
    job = Ranks([args, args], tmp_path)
    try:
        deadline = time.time() + LIMIT
        # both ranks are in the group and sampling once rank 0 draws its progress bar
        while "importance" not in job.text(0, 1) and time.time() < deadline:
            assert job.procs[0].poll() is None and job.procs[1].poll() is None, job.text(0, 1)
            time.sleep(0.1)
        killed = time.time()
        job.procs[1].send_signal(signal.SIGKILL)
        code = job.procs[0].wait(timeout=45)
        assert code == 3 and time.time() - killed < 45
        assert "lost contact with another rank" in job.text(0, 1)
        assert not (tmp_path / "r.json").exists()
    finally:
        job.close()


# -- DDP training -----------------------------------------------------------------------------
TRAIN = ["--hidden", "16", "--layers", "1", "--embedding", "8", "--epochs", "6", "--seq-len", "30"]
TRAIN += ["--batch-size", "8", "--checkpoint-every", "3", "-q"]


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_ddp_training_matches_one_process_up_to_reduction_order_and_resumes_bit_identically(data, tmp_path, capsys):
    d = data / "data"
    (tmp_path / "one.yaml").write_text("train: {threads: 1}\n")  # one thread, as every rank has
    assert single(["train", "--data", d, "--out", tmp_path / "one", *TRAIN, "--config", "one.yaml"], tmp_path)[0] == 0
    codes, outs, errs = run_ranks([["train", "--data", d, "--out", tmp_path / "two", *TRAIN]] * 2, tmp_path)
    assert codes == [0, 0], errs
    assert outs[0].startswith(f"{tmp_path / 'two'}: 6 epochs") and outs[1] == ""
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    # the same gradient of the same global batch, summed in another order: equal up to rounding
    for k in one:
        np.testing.assert_allclose(one[k].numpy(), two[k].numpy(), rtol=0, atol=1e-4, err_msg=k)

    # kill both ranks mid-epoch, then resume under torchrun: bit-identical to the uninterrupted run
    out = tmp_path / "killed"
    staging = staging_path(out, "train")
    job = Ranks([["train", "--data", d, "--out", out, *TRAIN]] * 2, tmp_path)
    try:
        deadline = time.time() + LIMIT
        state = staging / "train_state.json"
        while time.time() < deadline:
            assert all(p.poll() is None for p in job.procs), "training finished before it could be killed"
            try:
                pos = json.loads(state.read_text())["position"]
            except (OSError, json.JSONDecodeError, KeyError):
                pos = None
            if pos and pos["step"] >= 9 and pos["batch"] > 0:
                break
            time.sleep(0.01)
        for p in job.procs:
            p.send_signal(signal.SIGKILL)
    finally:
        job.close()
    assert not out.exists() and json.loads(state.read_text())["world_size"] == 2
    # resuming in one process is refused: the state belongs to two ranks
    assert main(["train", "--resume", str(out), "-q"]) == 2
    assert "ran on 2 rank(s)" in capsys.readouterr().err
    codes, outs, errs = run_ranks([["train", "--resume", out, "-q"]] * 2, tmp_path)
    assert codes == [0, 0], errs
    a, b = weights(tmp_path / "two"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = ((f / "metrics.jsonl").read_text().splitlines() for f in (tmp_path / "two", out))
    assert [json.loads(x)["train_bpc"] for x in ma] == [json.loads(x)["train_bpc"] for x in mb]


def test_a_rank_killed_in_ddp_training_stops_the_other_with_exit_3(data, tmp_path):
    """The other rank is waiting inside backward, in the gradient all-reduce (the shared-memory
    hook): it must end with the lost-peer line and exit 3, not a traceback or exit 2."""
    out = tmp_path / "m"
    args = ["train", "--data", data / "data", "--out", out, *TRAIN, "--timeout", "60"]
    args[args.index("--epochs") + 1] = "1000"
    job = Ranks([args, args], tmp_path)
    try:
        deadline = time.time() + LIMIT
        state = staging_path(out, "train") / "train_state.json"
        while not state.exists() and time.time() < deadline:
            assert all(p.poll() is None for p in job.procs), job.text(0, 1)
            time.sleep(0.05)
        killed = time.time()
        job.procs[1].send_signal(signal.SIGKILL)
        code = job.procs[0].wait(timeout=45)
        err = job.text(0, 1)
        assert code == 3 and time.time() - killed < 20, err
        assert "lost contact with another rank" in err and "Traceback" not in err
        assert err.count("error:") == 1
        assert not out.exists()
    finally:
        job.close()


def test_dp_sgd_under_torchrun_is_refused_in_one_line(data, tmp_path):
    args = ["train", "--data", data / "data", "--out", tmp_path / "m", *TRAIN, "--dp", "--noise-multiplier", "1"]
    codes, outs, errs = run_ranks([args, args], tmp_path)
    assert codes == [2, 2], (codes, errs)
    assert errs[0].strip().startswith("error: DP-SGD under torchrun is refused") and errs[1].strip() == ""
    assert not (tmp_path / "m").exists() and not staging_path(tmp_path / "m", "train").exists()


def test_pipeline_commands_run_on_rank_0_alone(tmp_path):
    corpus = tmp_path / "c.txt"
    from .conftest import make_corpus

    make_corpus(corpus, lines=100)
    args = [
        "insert",
        "--corpus",
        corpus,
        "--out",
        tmp_path / "data",
        "--format",
        "pin {d:3}",
        "--schedule",
        "0,1",
        "-q",
    ]
    codes, outs, errs = run_ranks([args, args], tmp_path)
    assert codes == [0, 0] and outs[1] == "" and errs[1] == ""
    assert "runs on rank 0 only" in errs[0] and (tmp_path / "data" / "canaries.json").is_file()


def test_shards_cover_the_range_once():
    from exposure_audit.distributed import Team

    for size, align, world in ((10**6, 10**4, 3), (7, 1, 3), (5, 2, 4), (3, 1, 5)):
        parts = [Team(rank=r, world=world).split(size, align) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert all(lo % align == 0 for lo, _ in parts)


def test_a_rank_that_gets_no_piece_still_reports_the_teams_exact_rank(monkeypatch):
    """The other ranks may take every piece of a pruned walk (fewer pieces than ranks, or a rank
    that starts late): this rank walks nothing and reports the team's sums."""
    from types import SimpleNamespace

    from exposure_audit import distributed
    from exposure_audit.exposure import sharded

    class OthersTookAll(distributed.Team):
        def claim(self, total):
            return iter(())

        def all_sum(self, values):
            assert list(values) == [0, 0, 0]  # nothing found, stepped or left unfinished here
            return [7, 123, 0]  # the other rank's: 7 candidates at or under the canary, 123 steps

    monkeypatch.setattr(distributed, "_TEAM", OthersTookAll(rank=1, world=2))
    scorer = SimpleNamespace(steps=5)
    cf = SimpleNamespace(track_index=True, fmt=Format.parse("pin {d:2}"))
    pr = sharded.pruned_rank(scorer, cf, 1.0, max_steps=1000, batch=8)
    assert (pr.rank, pr.bounds, pr.found) == (7, (7, 7), 7)
    assert pr.result.steps == 123 and pr.result.complete
    assert scorer.steps == 5 + 123
