"""Progress bars on stderr (tqdm), silenced by --quiet."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(
        self, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it", **kw: Any
    ) -> None:
        from .distributed import is_main

        if quiet or not is_main():  # under torchrun only rank 0 draws bars
            self.bar = None
            return
        # A log file (CI) gets a line every 30 s; a terminal a live bar.
        interval = 0.2 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            unit_scale=True,
            leave=False,
            dynamic_ncols=True,
            mininterval=interval,
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
