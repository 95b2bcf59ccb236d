"""Progress bars on stderr (tqdm), silenced by --quiet."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(self, total: int | None = None, desc: str = "", quiet: bool = False, unit: str = "it", **kw: Any) -> None:
        self.bar = None if quiet else tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True, **kw)

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
