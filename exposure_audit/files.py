"""Atomic outputs and safe output folders.

Every file is written to a temporary name in its own folder, flushed, fsynced and renamed,
so an interrupted command never leaves a file that a later command would take as complete.
Output folders are built under a temporary name and renamed into place when finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import AuditError

TMP_MARK = ".partial-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise AuditError(f"{path} is a folder; give a file name")
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_MARK + path.name + ".", dir=folder)
    except OSError as e:
        raise AuditError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def check_writable_file(path: Path, force: bool) -> None:
    """Refuse, before any work, an output file that exists (without --force) or cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise AuditError(f"{path} is a folder; give a file name")
    if path.exists() and not force:
        raise AuditError(f"{path} exists; use --force to overwrite it")
    _check_parent(path, path.parent if str(path.parent) else Path("."))


def _check_parent(path: Path, parent: Path) -> None:
    if not parent.is_dir():
        raise AuditError(f"folder {parent} does not exist (for {path})")
    if not os.access(parent, os.W_OK):
        raise AuditError(f"cannot write to folder {parent}")


def check_output_dir(path: Path, force: bool) -> None:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AuditError(f"{path} exists and is not a folder")
    if path.exists() and not force:
        raise AuditError(f"{path} exists; use --force to replace it")
    _check_parent(path, path.resolve().parent)


def staging_path(path: Path, kind: str) -> Path:
    """The fixed staging folder of a resumable output (e.g. training): ``.partial-NAME.KIND``."""
    path = Path(path)
    return path.resolve().parent / f"{TMP_MARK}{path.name}.{kind}"


@contextlib.contextmanager
def output_dir(
    path: Path, force: bool, staging: Path | None = None, resumable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    On any error the temporary folder is removed and ``path`` is left as it was, except a
    fixed ``staging`` folder that ``resumable(staging)`` says holds resumable work.
    """
    path = Path(path)
    check_output_dir(path, force)
    parent = path.resolve().parent
    if staging is not None:
        staging.mkdir(exist_ok=True)
        tmp = staging
    else:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_MARK + path.name + ".", dir=parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the finished folder gets the usual mode
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=TMP_MARK + "old-" + path.name + ".", dir=parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        if staging is None or resumable is None or not resumable(staging):
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_sha256(obj: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys, no spaces)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise AuditError(f"{what} {path} does not exist")
    if path.is_dir():
        raise AuditError(f"{what} {path} is a folder, not a file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AuditError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AuditError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise AuditError(f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
