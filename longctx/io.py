"""Atomic writes: a crash or Ctrl-C never leaves a half-written file or folder behind.

Everything is written to a temporary sibling and renamed into place when complete. Temporary files
and folders are created private (0600/0700); they get the usual permissions (0666/0777 less the
umask) before the rename, so results are readable like any other file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`, renamed to `path` on success and removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_folder_once(path: str | Path, build: Callable[[Path], None]) -> Path:
    """Make `path` with `build(staging)` unless it exists, one process at a time.

    Processes started together (test workers, torchrun ranks) would otherwise all build it and all but
    the first fail to rename onto the finished folder; under a lock beside it the others wait and reuse it.
    A folder that exists is complete: it only appears by the rename.
    """
    path = Path(path)
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not path.is_dir():
            with atomic_folder(path) as staging:
                build(staging)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
