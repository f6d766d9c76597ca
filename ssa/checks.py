"""Checks of user input and of the environment, in one place.

Every check raises an :class:`ssa.errors.SSAError` subclass whose message is one line:
what was wrong, what was expected, and how to fix it. The command line runs the checks
of output paths and stores **before** any computation, so a run that would fail to write
its result fails at once and leaves earlier outputs untouched (``docs/errors.md``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .errors import InvalidInputError, OutputError, PluginError

__all__ = ["check_int", "check_device", "check_output_file", "check_output_dir", "check_writable_dir",
           "check_distinct_outputs", "describe_os_error", "ENVIRONMENT_ERRNOS", "call_selector", "call_rule", "check_labels",
           "looks_unscaled"]

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


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> int:
    """``value`` as an int >= ``minimum`` (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.{(' ' + fix) if fix else ''}")
    if value < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value}.{(' ' + fix) if fix else ''}")
    return int(value)


def check_device(device: str) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"``, and a GPU when one is asked for."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} was asked for but no CUDA GPU is available; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidInputError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    return str(dev)


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


def _plugin_bug(kind: str, obj: Any, what: str, flag: str) -> PluginError:
    origin = type(obj).__module__.split(".")[0]
    return PluginError(f"{kind} {getattr(obj, 'name', type(obj).__name__)!r} (from {origin}) {what}; this is a bug in "
                       f"the {kind} plugin: report it to its author, or choose another {flag} (see `ssa plugins`).")


def call_selector(selector: Any, rows: Any) -> Any:
    """``selector.select(rows)``, checked: the same shape as ``rows`` and only -1, 0 or +1 (else a plugin bug).

    ``rows`` may be any array-API array (numpy, torch on any device): a selector that declares
    ``array_api = True`` gets them as they are, any other gets float64 numpy rows (converted here, at
    the boundary). The labels come back as int8 in the rows' own library and device.
    """
    from .core.arrays import asarray_like, namespace, to_numpy

    native = bool(getattr(selector, "array_api", False))
    given = rows if native else np.asarray(to_numpy(rows), dtype=np.float64)
    shape = tuple(rows.shape)
    try:
        out = selector.select(given)
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug("selector", selector, f"raised {type(exc).__name__}"
                          f"{': ' + text[0][:160] if text else ''} on relevance rows of shape {shape}",
                          "--selector") from exc
    if tuple(getattr(out, "shape", ())) != shape:
        raise _plugin_bug("selector", selector, f"returned an array of shape {tuple(getattr(out, 'shape', ()))} for "
                          f"rows of shape {shape} (expected one label per entry)", "--selector")
    xp = namespace(rows)
    if native and namespace(out) is xp:
        if str(out.dtype).split(".")[-1] in ("bool",) or "complex" in str(out.dtype):
            raise _plugin_bug("selector", selector, f"returned dtype {out.dtype} (expected int8 labels -1, 0, +1)",
                              "--selector")
        bad = (out != 0) & (out != 1) & (out != -1)
        if bool(xp.any(bad)):
            host = to_numpy(out)
            wrong = host[~np.isin(host, (-1, 0, 1))]
            raise _plugin_bug("selector", selector, f"returned {wrong.reshape(-1)[0].item()!r} (expected only -1, 0 or "
                              f"+1; {wrong.size} entries are something else)", "--selector")
        return out if out.dtype == xp.int8 else xp.astype(out, xp.int8)
    out = np.asarray(to_numpy(out))
    if out.dtype.kind not in "biuf":
        raise _plugin_bug("selector", selector, f"returned dtype {out.dtype} (expected int8 labels -1, 0, +1)",
                          "--selector")
    bad = ~np.isin(out, (-1, 0, 1))
    if bad.any():
        raise _plugin_bug("selector", selector, f"returned {out[bad].reshape(-1)[0].item()!r} (expected only -1, 0 or +1; "
                          f"{int(bad.sum())} entries are something else)", "--selector")
    out = out.astype(np.int8, copy=False)
    return out if isinstance(rows, np.ndarray) else asarray_like(out, rows)


def call_rule(rule: Any, grad: Any, activation: Any) -> Any:
    """``rule.combine(grad, activation)``, checked: a tensor shaped like ``grad`` (else a plugin bug)."""
    try:
        out = rule.combine(grad, activation)
    except Exception as exc:  # noqa: BLE001 - the plugin's code
        text = str(exc).strip().splitlines()
        raise _plugin_bug("rule", rule, f"raised {type(exc).__name__}{': ' + text[0][:160] if text else ''} in "
                          f"combine() on a gradient of shape {tuple(grad.shape)}", "--rule") from exc
    if tuple(getattr(out, "shape", ())) != tuple(grad.shape):
        raise _plugin_bug("rule", rule, f"combine() returned shape {tuple(getattr(out, 'shape', ()))} for a gradient "
                          f"of shape {tuple(grad.shape)} (expected the gradient's shape)", "--rule")
    return out


def check_labels(labels: Any, n_images: int, source: str = "labels") -> np.ndarray:
    """Integer class labels, one per image (integral floats are accepted; one-hot rows are refused with a hint)."""
    lab = np.asarray(labels)
    if lab.ndim == 2 and lab.shape[0] == n_images and lab.shape[1] > 1:
        raise InvalidInputError(
            f"{source} has shape {lab.shape}, one row per image: they look one-hot or like scores; pass one "
            "integer class per image, e.g. numpy.save('labels.npy', labels.argmax(axis=1)).")
    lab = lab.reshape(-1)
    if lab.shape[0] != n_images:
        raise InvalidInputError(f"{source} has {lab.shape[0]} entries for {n_images} images; they must match.")
    if lab.dtype == bool or np.issubdtype(lab.dtype, np.integer):
        return lab.astype(np.int64)
    if np.issubdtype(lab.dtype, np.floating):
        if np.isfinite(lab).all() and np.array_equal(lab, np.round(lab)):
            return lab.astype(np.int64)
        bad = lab[~(np.isfinite(lab) & (lab == np.round(lab)))]
        raise InvalidInputError(
            f"{source} must be integer class indices, got {lab.dtype} values such as {float(bad[0])!r}; "
            "save them as integers, e.g. numpy.save('labels.npy', labels.astype(int)).")
    raise InvalidInputError(f"{source} must be integer class indices, got dtype {lab.dtype}; "
                            "save them as integers with numpy.save.")


def looks_unscaled(images: np.ndarray) -> str | None:
    """Why ``images`` look like raw 0-255 pixels (every value a whole number in [0, 255], some > 1), or None."""
    if images.size == 0:
        return None
    lo, hi = float(images.min()), float(images.max())
    if lo < 0 or hi <= 1.0 or hi > 255:
        return None
    sample = images.reshape(-1)[: 1 << 20]
    if not np.array_equal(sample, np.round(sample)):
        return None
    return f"values are whole numbers from {lo:g} to {hi:g}"
