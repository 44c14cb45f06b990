"""Local files and folders that appear whole or not at all: written as ``<path>.partial``, renamed.

Every local write of the project that a reader may see half-done goes through here (checkpoints,
training state, token caches, route folders, manifests, PNGs, output objects).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def partial_of(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield ``<path>.partial`` to write (a fresh empty folder when ``directory``); when the block
    succeeds it replaces ``path`` (an existing folder is swapped out first, then removed), when it
    fails it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_of(path)
    _remove(partial)
    if directory:
        partial.mkdir()
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    if directory and path.exists():
        old = path.with_name(path.name + ".old")
        _remove(old)
        os.replace(path, old)
        os.replace(partial, path)
        _remove(old)
    else:
        os.replace(partial, path)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (``fsync``: on disk before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return path


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy ``source`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return Path(path)
