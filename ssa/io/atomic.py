"""Atomic file writes: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ssa.errors import OutputError
from ssa.io.paths import describe_os_error

__all__ = ['write_listeners', 'atomic_write_bytes', 'write_cache_file']


#: callables told the path of every file :func:`atomic_write_bytes` writes (``ssa.io.outdir`` records a run's files)
write_listeners: list[Callable[[Path], None]] = []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(describe_os_error(exc, f"cannot write {str(path)!r}", show_file=False)) from exc
    for listener in list(write_listeners):
        listener(path)


def write_cache_file(path: str | os.PathLike, data: bytes) -> OSError | None:
    """Write a cache file as :func:`atomic_write_bytes` does, best effort: the OS error (a read-only or full disk, a
    file where a folder must go) is returned, not raised, and the write listeners are not told (a cache is no output
    of a run)."""
    try:
        _atomic_write(Path(path), data)
    except OSError as exc:
        return exc
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
