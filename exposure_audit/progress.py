"""Progress on stderr: a live tqdm bar on a terminal; in a log (CI, a file, a pipe) a plain line
now and then and one at the end, never carriage returns; ``--quiet`` silences both.

Under torchrun only rank 0 reports.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between the plain lines of a log


def _si(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.1f}"


class LogLines:
    """What a log gets instead of a bar: ``desc: 1.2k/5k batch (24%), 310 batch/s, 4s elapsed[, key=value]``
    every ``interval`` seconds while work goes on, and once when it ends (if it ran at all)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        interval: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = LOG_INTERVAL if interval is None else interval
        self.n, self.start_n = initial, initial
        self.stream = stream
        self.t0 = self.last = time.monotonic()
        self.fields: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line(now)

    def set_postfix(self, refresh: bool = False, **kw: Any) -> None:
        self.fields = kw

    def close(self) -> None:
        if self.n > self.start_n:
            self._line(time.monotonic(), done=True)

    def _line(self, now: float, done: bool = False) -> None:
        elapsed = max(now - self.t0, 1e-9)
        count = f"{_si(self.n)}/{_si(self.total)} {self.unit}" if self.total else f"{_si(self.n)} {self.unit}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f"{_si((self.n - self.start_n) / elapsed)} {self.unit}/s"
        extra = "".join(f", {k}={v}" for k, v in self.fields.items())
        state = "done in" if done else "elapsed"
        stream = self.stream or sys.stderr
        stream.write(f"{self.desc}: {count}{share}, {rate}, {elapsed:.0f}s {state}{extra}\n")
        stream.flush()


class Progress:
    def __init__(
        self, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it", **kw: Any
    ) -> None:
        from .distributed import is_main

        self.bar: Any = None
        if quiet or not is_main():  # under torchrun only rank 0 reports
            return
        if not sys.stderr.isatty():
            self.bar = LogLines(total, desc, unit, initial=int(kw.get("initial", 0)))
            return
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.2,
            **kw,
        )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, **kw: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**kw, refresh=False)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
