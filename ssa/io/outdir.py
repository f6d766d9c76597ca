"""Output folders that a run owns (``--out-dir``): earlier outputs are replaced, never mixed in.

A command that writes several files into a folder (``ssa analyse --targets ... --out-dir``,
``ssa compare --out-dir``, ``ssa figures --out-dir``) records the names it wrote in a small
manifest, ``DIR/.ssa-outputs.json`` (per command). On the next run into the same folder:

* before any computation, files that look like the command's outputs (``class-*.json`` for
  ``analyse``; the figure, CSV and JSON names of ``compare`` and ``figures``) but are not in its
  manifest are refused: ssa did not write them (or an older ssa did), so it neither deletes them
  nor mixes them in; the message says to remove them or choose another folder;
* after the run, the files the manifest lists that this run did not write again (``class-7.json``
  after ``--targets 3,5``; ``clustermap.png`` after ``--format svg``) are removed, and the
  manifest lists exactly this run's files.

Only files that match the command's patterns **and** are in its manifest are ever removed, so
other files in the folder (the user's) are never touched. A run that fails half-way keeps its
earlier files and adds what it wrote to the manifest, so the next run cleans up after it.

Resumable runs (``ssa analyse --targets ... --out-dir``, ``ssa study``: :mod:`ssa.scale`) also record a
key per output, the hash of everything the file depends on (:meth:`OutputDir.record`, written at once,
so a run killed half-way leaves an exact record), announce the names they may write before they start
(:meth:`OutputDir.plan`: after a crash the files are known as ours, not refused as foreign), and keep an
earlier output whose recorded key is the one they would write (:meth:`OutputDir.keep`) instead of
computing it again.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from ssa.errors import OutputError
from ssa.io.atomic import atomic_write_bytes, write_listeners
from ssa.io.paths import check_output_dir, describe_os_error

__all__ = ["OutputDir", "MANIFEST", "ANALYSE_OUTPUTS", "COMPARE_OUTPUTS", "FIGURES_OUTPUTS"]

MANIFEST = ".ssa-outputs.json"
_FORMATS = ("png", "svg")

#: the names each command writes into its --out-dir (fnmatch patterns)
ANALYSE_OUTPUTS = ("class-*.json",)
COMPARE_OUTPUTS = (
    *(f"{stem}.{ext}" for stem in ("clustermap", "clustermap-nodes", "dendrogram", "shared") for ext in _FORMATS),
    "bag-of-nodes.csv", "cosine-similarity.csv", "jaccard.csv", "linkage.csv", "interconnectedness.csv",
    "frequency-rank.csv", "shared.json",
)
FIGURES_OUTPUTS = tuple(f"{stem}.{ext}" for stem in ("graph", "frequency-*", "relevance-*", "saliency-*",
                                                      "activations-*") for ext in _FORMATS)


class OutputDir:
    """The output folder of one run of ``command`` (use as a context manager around the run).

    Entering checks the folder (not a file, writable, no outputs-lookalikes the command did not write);
    leaving after success removes this command's earlier files that the run did not write again and
    records what it wrote.
    """

    def __init__(self, path: str | os.PathLike, command: str, patterns: Sequence[str], flag: str = "--out-dir"):
        self.path = Path(path)
        self.command = command
        self.patterns = tuple(patterns)
        self.flag = flag
        self.written: set[str] = set()
        self._previous: set[str] = set()
        self._manifest: dict = {}
        self._created = False
        self._keys: dict[str, str] = {}
        self._memo: dict[str, object] = {}

    # -- manifest ------------------------------------------------------------------------------------
    def _read_manifest(self) -> dict:
        f = self.path / MANIFEST
        if not f.is_file():
            return {}
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and isinstance(data.get("commands"), dict) else {}

    def _write_manifest(self, names: Iterable[str]) -> None:
        names = sorted(names)
        commands = dict(self._manifest.get("commands", {}))
        commands[self.command] = names
        data = {"version": 1, "note": "files written by ssa; see ssa/io/outdir.py", "commands": commands}
        keys = {c: k for c, k in self._manifest.get("keys", {}).items() if isinstance(k, dict) and c != self.command}
        mine = {n: self._keys[n] for n in names if n in self._keys}
        if mine:
            keys[self.command] = mine
        if keys:
            data["keys"] = keys
        memo = {c: m for c, m in self._manifest.get("memo", {}).items() if isinstance(m, dict) and c != self.command}
        if self._memo:
            memo[self.command] = dict(self._memo)
        if memo:
            data["memo"] = memo
        self._manifest = data
        atomic_write_bytes(self.path / MANIFEST, json.dumps(data, indent=1, sort_keys=True).encode())

    # -- resumable runs ------------------------------------------------------------------------------
    def recorded(self, name: str) -> str | None:
        """The key an earlier run recorded for output ``name`` (None when none, or when the file is gone)."""
        key = self._keys.get(name)
        return key if key is not None and name in self._previous and (self.path / name).is_file() else None

    def memo(self, key: str) -> object:
        """A value an earlier run of the command remembered here (:meth:`remember`), or None."""
        return self._memo.get(key)

    def remember(self, key: str, value: object) -> None:
        """Remember a JSON-able ``value`` under ``key`` in the manifest (e.g. the image set's content hash)."""
        self._memo[key] = value
        self._write_manifest(self._previous | self.written)

    def plan(self, names: Iterable[str]) -> None:
        """Record now that this run may write ``names`` (a run killed half-way leaves them known as ours)."""
        names = {n for n in names if self._ours(n)}
        self._previous |= names
        self._write_manifest(self._previous | self.written)

    def keep(self, name: str) -> None:
        """Keep the earlier output ``name`` as this run's (it is not computed again, nor removed at the end)."""
        self.written.add(name)

    def record(self, name: str, key: str) -> None:
        """Output ``name`` is complete with ``key``: recorded in the manifest at once (atomically)."""
        self.written.add(name)
        self._keys[name] = key
        self._write_manifest(self._previous | self.written)

    def _ours(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    # -- the run ---------------------------------------------------------------------------------------
    def check(self) -> OutputDir:
        """Refuse a folder that is a file, cannot be written, or holds output-like files ssa did not record."""
        check_output_dir(self.path, flag=self.flag)
        self._created = not self.path.exists()
        self._manifest = self._read_manifest()
        listed = self._manifest.get("commands", {}).get(self.command, [])
        self._previous = {n for n in listed if isinstance(n, str) and self._ours(n) and "/" not in n}
        keys = self._manifest.get("keys", {}).get(self.command, {})
        self._keys = {n: k for n, k in keys.items() if n in self._previous and isinstance(k, str)} \
            if isinstance(keys, dict) else {}
        memo = self._manifest.get("memo", {}).get(self.command, {})
        self._memo = dict(memo) if isinstance(memo, dict) else {}
        if self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir()
                             if self._ours(p.name) and p.name not in self._previous)
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                it = "it" if len(foreign) == 1 else "them"
                raise OutputError(
                    f"{self.flag} {str(self.path)!r} already holds {shown}, which no earlier `ssa {self.command}` run "
                    f"there recorded writing; this run's outputs would be mixed with {it}: remove {it} or choose an "
                    "empty folder.")
        return self

    def _saw(self, path: Path) -> None:
        if path.parent.resolve() == self.path.resolve() and path.name != MANIFEST:
            self.written.add(path.name)
            self._keys.pop(path.name, None)  # a new file: its key is what record() says next, if anything

    def _remove_leftovers(self) -> None:
        """Temporary files of atomic writes that a killed run left behind (``.class-3.json.x1y2.tmp``)."""
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            name = p.name
            if name.startswith(".") and name.endswith(".tmp") and p.is_file():
                target = name[1:-4].rsplit(".", 1)[0]
                if self._ours(target) or target == MANIFEST:
                    p.unlink(missing_ok=True)

    def __enter__(self) -> OutputDir:
        self.check()
        self._remove_leftovers()
        write_listeners.append(self._saw)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        write_listeners.remove(self._saw)
        if exc_type is not None:
            if self.written:  # keep the record of everything that may be ours, so the next run cleans up
                self._write_manifest(self._previous | self.written)
            elif self._created:  # a failed first run leaves no empty folder behind
                try:
                    (self.path / MANIFEST).unlink(missing_ok=True)  # planned or remembered, nothing written
                    self.path.rmdir()
                except OSError:
                    pass
            return
        for name in sorted(self._previous - self.written):
            f = self.path / name
            try:
                if f.is_file() and not f.is_symlink():
                    f.unlink()
            except OSError as err:
                raise OutputError(describe_os_error(err, f"cannot remove the stale output {str(f)!r}",
                                                    show_file=False)) from err
        if self.written or self._previous:
            self._write_manifest(self.written)
