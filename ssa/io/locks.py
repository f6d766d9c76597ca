"""Exclusive locks between processes on a folder's lock file (``fcntl.flock``).

A statistics store (:mod:`ssa.engines.store`) refuses a second writer; an ``--out-dir`` folder
(:mod:`ssa.io.outdir`) makes a second writer wait. Both use :func:`hold`: the lock file holds the pid of
the process that holds it (named in the message a second process gets) and is emptied (``keep=True``) or
removed when released. A process that waits checks, once it holds the lock, that the file it locked is
still the one at the path (the holder may have removed it), and locks the new one otherwise. A process
that enters the same lock again (nested) holds it already and does not wait for itself.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Locked", "hold"]

#: errno values of a file system that cannot lock (some network and FUSE file systems)
_NO_LOCKS = frozenset(getattr(errno, n) for n in ("ENOLCK", "ENOSYS", "EOPNOTSUPP", "ENOTSUP") if hasattr(errno, n))

#: the lock files this process holds now, with how many times each was entered
_held: dict[str, int] = {}


class Locked(BlockingIOError):
    """The lock is held by another process (``pid``: what its lock file says, ``"?"`` when unknown)."""

    def __init__(self, path: Path, pid: str) -> None:
        super().__init__(f"{path} is locked by pid {pid}")
        self.pid = pid


def _holder(fh) -> str:
    fh.seek(0)
    return fh.read().strip() or "?"


def _same_file(fh, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def hold(path: str | os.PathLike, *, wait: bool = False, keep: bool = True,
         on_wait: Callable[[str], None] | None = None,
         on_unsupported: Callable[[OSError], None] | None = None) -> Iterator[None]:
    """Hold the exclusive lock on the file ``path`` (created when missing).

    ``wait``: block until the holder releases it (``on_wait(pid)`` is called first, once), else raise
    :class:`Locked` at once. ``keep``: empty the file on release (it stays, so folders stay byte-identical)
    instead of removing it. ``OSError`` when the file cannot be created, or when the file system has no locks
    (``ENOLCK``, ``EOPNOTSUPP``, ...) unless ``on_unsupported(error)`` is given: then it is called and the
    caller goes on without the lock.
    """
    path = Path(path)
    key = str(path.resolve())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    told = False
    while True:
        fh = open(path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            pid = _holder(fh)
            if not wait:
                fh.close()
                raise Locked(path, pid) from None
            if on_wait is not None and not told:
                on_wait(pid)
                told = True
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            except BaseException:
                fh.close()
                raise
        except OSError as exc:
            fh.close()
            if exc.errno not in _NO_LOCKS or on_unsupported is None:
                raise
            if not keep:  # a file system without locks: no lock file left behind
                path.unlink(missing_ok=True)
            on_unsupported(exc)
            yield
            return
        if _same_file(fh, path):
            break
        fh.close()  # the holder removed the file it locked: lock the one at the path now
    _held[key] = 1
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        del _held[key]
        try:
            if keep:
                fh.seek(0)
                fh.truncate()
            else:
                path.unlink(missing_ok=True)  # still held: a waiter then finds the file gone and locks a new one
        finally:
            fh.close()  # closing releases the lock
