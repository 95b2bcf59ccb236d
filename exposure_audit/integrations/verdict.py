"""The verdict a tracked run leaves for a CI gate: ``exposure_verdict.json``.

Written (atomically, after every measurement) by ``ExposureCallback(fail_above=T)``: whether the
last measured model, the one training ended with, has an inserted canary above ``T`` bits.
``exposure-audit gate FILE`` reads it and exits 1 on a failed verdict, 0 on a passed one (the
same exit codes as ``measure --fail-above``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import AuditError, gate_exit
from ..files import atomic_write_json, read_json

VERDICT = "exposure_verdict.json"
KIND = "exposure-audit/verdict"
SCHEMA = 1


def write_verdict(path: Path, *, threshold: float, tracked: Any, step: int, highest_seen: float | None) -> dict:
    top = tracked.highest
    verdict = {
        "schema": SCHEMA,
        "kind": KIND,
        "passed": not tracked.above(threshold),
        "threshold": threshold,
        "step": step,
        "highest_exposure": None if top is None else round(top.exposure, 4),
        "canary": None if top is None else top.id,
        "method": None if top is None else top.method,
        "highest_seen": None if highest_seen is None else round(highest_seen, 4),
    }
    atomic_write_json(Path(path), verdict)
    return verdict


def gate(path: Path | str) -> tuple[int, str]:
    """(exit code, one line) for a verdict file or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / VERDICT
    v = read_json(path, "verdict")
    if not isinstance(v, dict) or v.get("kind") != KIND or v.get("schema") != SCHEMA:
        raise AuditError(f"verdict {path}: not an exposure-audit verdict file (schema {SCHEMA})")
    if not isinstance(v.get("passed"), bool):
        raise AuditError(f"verdict {path}: no boolean 'passed'")
    where = f"at step {v.get('step')}"
    if v["highest_exposure"] is None:
        return gate_exit(False), f"PASS: no inserted canary measured {where}"
    word = "PASS" if v["passed"] else "FAIL"
    line = (
        f"{word}: highest exposure of an inserted canary {v['highest_exposure']:.2f} bits {where} "
        f"(canary {v['canary']}); threshold {v['threshold']:g} bits"
    )
    return gate_exit(not v["passed"]), line
