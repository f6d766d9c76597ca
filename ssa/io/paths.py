"""Checks of output paths and environment errors, before any computation (``docs/errors.md``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ssa.errors import InvalidInputError, OutputError

__all__ = ['ENVIRONMENT_ERRNOS', 'describe_os_error', 'check_writable_dir', 'check_output_file', 'check_output_dir',
           'check_distinct_outputs', 'user_cache_dir']


#: errno values that mean "the environment refused" (disk full, read-only, permissions, limits), not a bug
ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG", "EIO", "EMFILE", "ENFILE", "ENAMETOOLONG",
        "ENOTDIR", "EISDIR", "ENOENT", "ELOOP")
    if hasattr(errno, name)
)


_FIXES = {
    errno.ENOSPC: "free disk space or write somewhere else",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "check the permissions or write somewhere else",
    errno.EPERM: "check the permissions or write somewhere else",
    errno.EFBIG: "the file is larger than allowed (ulimit -f or the file system's limit): write somewhere else",
}


def describe_os_error(exc: OSError, doing: str = "", *, show_file: bool | None = None) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do.

    ``doing`` says what ssa was doing ("cannot write 'out.json'"); the file the system names is shown
    unless ``show_file`` is False (by default it is shown when ``doing`` is empty).
    """
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or str(exc).split("\n")[0] or type(exc).__name__
    if show_file is None:
        show_file = not doing
    where = f" {str(exc.filename)!r}" if exc.filename and show_file else ""
    fix = _FIXES.get(exc.errno or 0, "check the path, the free space and the permissions")
    head = f"{doing}{where}: " if doing else (f"{where.strip()}: " if where else "")
    return f"{head}{what}{f' ({name})' if name else ''}; {fix}."


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable_dir(folder: str | os.PathLike, flag: str) -> Path:
    """Refuse a folder ssa cannot create files in (read-only file system, permissions)."""
    d = Path(folder)
    try:
        read_only = bool(os.statvfs(d).f_flag & getattr(os, "ST_RDONLY", 1))
    except OSError:
        read_only = False
    if read_only:
        raise OutputError(f"{flag}: {str(d)!r} is on a read-only file system; write somewhere else.")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{flag}: cannot create files in {str(d)!r} (permission denied); "
                          "check its permissions or write somewhere else.")
    return d


def _check_creatable(path: Path, flag: str) -> None:
    """The folders above ``path`` exist as folders, or can be created."""
    anc = _existing_ancestor(path.parent) if not path.parent.exists() else path.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"{flag}: {str(anc)!r} is a file, so {str(path)!r} cannot be created below it; "
                          "expected a folder: remove the file or choose another path.")
    check_writable_dir(anc, flag)


def check_output_file(path: str | os.PathLike, *, flag: str, suffixes: Iterable[str]) -> Path:
    """Check an output file before computing: its suffix, that it is not a folder, and that it can be written."""
    p = Path(path)
    suffixes = tuple(s.lower() for s in suffixes)
    if p.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{flag} must end in {' or '.join(suffixes)}, got {str(path)!r}; rename it.")
    if p.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a folder; expected a file name ending in {suffixes[0]}, "
                          f"e.g. {str(p / ('out' + suffixes[0]))!r}.")
    _check_creatable(p, flag)
    if p.exists() and not os.access(p, os.W_OK):
        # replaced by a rename, so only the folder must be writable; still refuse a file the user protected
        raise OutputError(f"{flag} {str(path)!r} is write-protected; make it writable or choose another name.")
    return p


def check_output_dir(path: str | os.PathLike, *, flag: str) -> Path:
    """Check an output folder before computing: not a file, creatable and writable."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a file; expected a folder: remove the file or choose another "
                          "path.")
    if p.is_dir():
        check_writable_dir(p, flag)
    else:
        _check_creatable(p, flag)
    return p


def check_distinct_outputs(paths: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two output options that name the same file (the second write would replace the first)."""
    seen: dict[str, str] = {}
    for flag, path in paths.items():
        if path is None:
            continue
        key = os.path.normcase(os.path.abspath(os.fspath(path)))
        if key in seen:
            raise InvalidInputError(f"{seen[key]} and {flag} name the same file {str(path)!r}; the second would "
                                    "overwrite the first: give them different names.")
        seen[key] = flag


def user_cache_dir() -> Path:
    """ssa's cache folder: ``$SSA_CACHE``, else ``$XDG_CACHE_HOME/ssa``, else ``~/.cache/ssa`` (not created here)."""
    root = os.environ.get("SSA_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "ssa"
