"""Progress in a log: plain lines at an interval and one at the end, never carriage returns."""

import time

from exposure_audit import progress
from exposure_audit.progress import Progress


def test_a_log_gets_plain_occasional_lines_and_a_last_one(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.05)
    with Progress(total=40, desc="train", unit="batch") as bar:  # stderr is captured: not a terminal
        for i in range(40):
            bar.update(1)
            bar.postfix(bpc=f"{2 - i / 40:.3f}")
            time.sleep(0.005)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and "\x1b" not in err
    assert 2 <= len(lines) <= 8  # about every 0.05 s of a 0.2 s job, and the end
    assert all(line.startswith("train: ") for line in lines)
    assert lines[-1].startswith("train: 40/40 batch (100%)") and "done in" in lines[-1] and "bpc=" in lines[-1]


def test_quiet_is_silent_and_a_job_that_did_nothing_prints_nothing(capsys):
    with Progress(total=10, desc="x", quiet=True) as bar:
        bar.update(10)
    with Progress(total=10, desc="y"):
        pass
    assert capsys.readouterr().err == ""


def test_resumed_work_counts_from_where_it_was(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 1e9)
    with Progress(total=100, desc="train", unit="batch", initial=60) as bar:
        bar.update(40)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("train: 100/100 batch (100%)")
