"""The explorer as a folder (``ssa explore --out DIR/``): only its own files, listed in a manifest.

The folder holds ``index.html``, ``data/...`` and ``.ssa-explorer.json``, the list of every file the run
wrote. A new explorer is written to a temporary sibling and renamed into place (an interrupted run leaves
the previous explorer, or nothing). Into an existing folder it goes only when that folder holds nothing but
the files its manifest lists (or, for a folder written before manifests, nothing but ``index.html`` and
``data/*.json``): anything else there (the user's notes, another tool's output, a folder) makes the run
refuse, before any computation, and nothing in the folder is deleted. The previous explorer's files are then
removed one by one from the manifest's list, never as a whole tree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from ssa.errors import InvalidInputError, SSAWarning

__all__ = ["MANIFEST", "check_explorer_folder", "write_folder"]

MANIFEST = ".ssa-explorer.json"


def _listing(path: Path) -> tuple[set[str], set[str]]:
    """The files (and links, and anything else that is not a folder) and the folders below ``path``."""
    files, dirs = set(), set()
    for root, dirnames, filenames in os.walk(path):
        rel = Path(root).relative_to(path)
        for d in list(dirnames):
            p = Path(root) / d
            if p.is_symlink():  # a link is not ours to follow
                files.add((rel / d).as_posix())
                dirnames.remove(d)
            else:
                dirs.add((rel / d).as_posix())
        files.update((rel / f).as_posix() for f in filenames)
    return files, dirs


def _ours(path: Path) -> set[str] | None:
    """The files and folders (``"data/neurons/"``) the manifest of ``path`` lists (None: no readable manifest)."""
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    listed = [*data.get("files", ()), *(f"{d}/" for d in data.get("folders", ()))] if isinstance(data, dict) else []
    if not listed or not all(isinstance(f, str) for f in listed):
        return None
    return {f for f in listed if not f.startswith(("/", "..")) and "/../" not in f}


def _legacy(files: set[str]) -> set[str]:
    """An explorer folder written before manifests: index.html, data/*.json and the folder data/neurons/."""
    return {f for f in files if f == "index.html" or (f.startswith("data/") and f.endswith(".json"))} \
        | {"data/neurons/"}


def _foreign(path: Path) -> list[str]:
    """What in the folder ``path`` no explorer run wrote (sorted; empty when the folder is all ours)."""
    files, dirs = _listing(path)
    ours = _ours(path)
    if ours is None:
        ours = _legacy(files) if "index.html" in files else set()
    ours = ours | {MANIFEST}
    folders = {f.rstrip("/") for f in ours if f.endswith("/")}
    folders |= {p.as_posix() for f in ours for p in Path(f.rstrip("/")).parents if p.as_posix() != "."}
    return sorted((files - ours) | (dirs - folders))


def check_explorer_folder(path: str | os.PathLike) -> Path:
    """Refuse an ``--out`` folder that is a file or holds anything an explorer run did not write there."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InvalidInputError(f"--out {str(p)!r} is a file; a folder explorer needs a folder: remove the file or "
                                "pass another path (or end --out in .html for one file).")
    if p.is_dir():
        foreign = _foreign(p)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InvalidInputError(
                f"{str(p)!r} is a folder that holds something else than an explorer ({shown}, which no earlier "
                "`ssa explore` wrote there); ssa replaces only its own files: move that away or pass an empty or "
                "new folder.")
    return p


def write_folder(path: Path, fill: Callable[[Path], None]) -> None:
    """Write an explorer folder at ``path``: ``fill(tmp)`` writes the files into a temporary sibling, which then
    replaces the previous explorer (see the module docstring)."""
    check_explorer_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        fill(tmp)
        files, folders = _listing(tmp)
        manifest = {"version": 1, "note": "files written by `ssa explore`; see ssa/viz/explorer/folder.py",
                    "files": sorted(files), "folders": sorted(folders)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o755)
        if not path.exists():
            os.replace(tmp, path)
            return
        check_explorer_folder(path)  # again: nothing was added while the data were computed
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old)  # over the empty temporary folder
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_previous(old, path)


def _remove_previous(old: Path, path: Path) -> None:
    """Delete the previous explorer's files (those its manifest lists), then its empty folders."""
    ours = _ours(old)
    files, dirs = _listing(old)
    if ours is None:
        ours = _legacy(files)
    for f in sorted(files & (ours | {MANIFEST})):
        (old / f).unlink(missing_ok=True)
    for d in sorted(dirs, key=lambda d: -d.count("/")):
        try:
            (old / d).rmdir()
        except OSError:
            pass
    try:
        old.rmdir()
    except OSError:  # something appeared in the folder while it was replaced: kept, and said
        warnings.warn(f"{str(old)!r} keeps files that appeared in {str(path)!r} while it was replaced; look at "
                      "them and remove the folder.", SSAWarning, stacklevel=3)
