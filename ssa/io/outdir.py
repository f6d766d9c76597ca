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

Each recorded output also has its content hash, taken when it is recorded (``hashes`` in the manifest): an
output whose file no longer parses or no longer has that hash (cut short, changed by hand, a disk error) is
not kept but computed again, with a one-line notice.

Commands whose outputs belong together (``compare``, ``figures``; ``all_or_nothing=True``) replace them all or
none: entering keeps the earlier run's files as hard links (copies where the file system has none) in a hidden
folder ``DIR/.ssa-previous.*``, and a run that fails or is interrupted (Ctrl-C, a full disk) puts them back and removes
what it wrote, so the folder never mixes two runs' figures and tables; a run that succeeds drops them.

One process at a time writes a folder: entering takes the folder's lock (``DIR/.ssa-outputs.lock``, removed
when released), and a second process on the same folder waits for the first to finish (one line says so),
then runs as a re-run of that folder would. The manifest therefore always describes the folder.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path

from ssa.errors import OutputError, SSAWarning
from ssa.io import locks
from ssa.io.atomic import atomic_write_bytes, write_listeners
from ssa.io.paths import check_output_dir, describe_os_error

__all__ = ["OutputDir", "MANIFEST", "ANALYSE_OUTPUTS", "COMPARE_OUTPUTS", "FIGURES_OUTPUTS"]

MANIFEST = ".ssa-outputs.json"
LOCK = ".ssa-outputs.lock"
PREVIOUS = ".ssa-previous."  # prefix of the folder that keeps an all-or-nothing run's earlier files
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

    def __init__(self, path: str | os.PathLike, command: str, patterns: Sequence[str], flag: str = "--out-dir",
                 all_or_nothing: bool = False):
        self.path = Path(path)
        self.all_or_nothing = all_or_nothing
        self._kept: Path | None = None  # the earlier files of an all-or-nothing run (hard links)
        self.command = command
        self.patterns = tuple(patterns)
        self.flag = flag
        self.written: set[str] = set()
        self._previous: set[str] = set()
        self._manifest: dict = {}
        self._created = False
        self._keys: dict[str, str] = {}
        self._hashes: dict[str, str] = {}
        self._memo: dict[str, object] = {}
        self._lock = ExitStack()
        self._damaged: set[str] = set()
        self._attrs: dict[str, dict] = {}

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
        data: dict = {"version": 1, "note": "files written by ssa; see ssa/io/outdir.py",
                      "commands": self._others("commands") | {self.command: names}}
        for section, mine in (("keys", {n: self._keys[n] for n in names if n in self._keys}),
                              ("hashes", {n: self._hashes[n] for n in names if n in self._hashes}),
                              ("memo", dict(self._memo))):
            merged = self._others(section) | ({self.command: mine} if mine else {})
            if merged:
                data[section] = merged
        self._manifest = data
        atomic_write_bytes(self.path / MANIFEST, json.dumps(data, indent=1, sort_keys=True).encode())

    def _others(self, section: str) -> dict:
        """The other commands' entries of a manifest section (kept as they are)."""
        entries = self._manifest.get(section, {})
        return {c: v for c, v in entries.items() if c != self.command and isinstance(v, (dict, list))} \
            if isinstance(entries, dict) else {}

    # -- resumable runs ------------------------------------------------------------------------------
    def recorded(self, name: str) -> str | None:
        """The key an earlier run recorded for output ``name`` (None when none, when the file is gone, or when it is
        damaged: see :meth:`damaged`, said in one line)."""
        key = self._keys.get(name)
        if key is None or name not in self._previous or not (self.path / name).is_file():
            return None
        why = self.damaged(name)
        if why is not None:
            if name not in self._damaged:
                self._damaged.add(name)
                warnings.warn(f"{self.flag} {str(self.path)!r}: {name} is damaged ({why}); it is computed again.",
                              SSAWarning, stacklevel=2)
            return None
        return key

    def drop_damaged(self, name: str) -> None:
        """Remove output ``name`` if :meth:`recorded` found it damaged (a job then writes it again rather than
        trusting what the file says about itself)."""
        if name in self._damaged:
            (self.path / name).unlink(missing_ok=True)

    def damaged(self, name: str) -> str | None:
        """Why the recorded output ``name`` cannot be kept (its content hash differs from the one recorded when it
        was written, or it does not parse), or None when it is intact."""
        try:
            data = (self.path / name).read_bytes()
        except OSError as exc:
            return f"unreadable: {exc.strerror or type(exc).__name__}"
        want = self._hashes.get(name)
        if want is not None and _content_hash(data) != want:
            return f"its content is not what was written: {len(data)} bytes, another hash"
        if name.endswith(".json"):
            try:
                doc = json.loads(data)
            except ValueError:
                return "not valid JSON"
            attrs = doc.get("graph") if isinstance(doc, dict) else None
            self._attrs[name] = attrs if isinstance(attrs, dict) else {}
        return None

    def graph_attrs(self, name: str) -> dict:
        """The ``graph`` object (a node-link graph's attributes) of the recorded JSON output ``name``, as read when
        :meth:`recorded` checked it (``{}`` when it has none or was not checked): no second read of the file."""
        return self._attrs.get(name, {})

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
        try:
            self._hashes[name] = _content_hash((self.path / name).read_bytes())
        except OSError:
            self._hashes.pop(name, None)
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
        hashes = self._manifest.get("hashes", {}).get(self.command, {})
        self._hashes = {n: h for n, h in hashes.items() if n in self._keys and isinstance(h, str)} \
            if isinstance(hashes, dict) else {}
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
            self._hashes.pop(path.name, None)

    def _remove_leftovers(self) -> None:
        """Temporary files of atomic writes that a killed run left behind (``.class-3.json.x1y2.tmp``)."""
        if not self.path.is_dir():
            return
        for p in self.path.iterdir():
            name = p.name
            if name.startswith(PREVIOUS) and p.is_dir() and not p.is_symlink():  # of a run killed with SIGKILL
                shutil.rmtree(p, ignore_errors=True)
            if name.startswith(".") and name.endswith(".tmp") and p.is_file():
                target = name[1:-4].rsplit(".", 1)[0]
                if self._ours(target) or target == MANIFEST:
                    p.unlink(missing_ok=True)

    def _take_lock(self) -> bool:
        """Create the folder if needed and hold its lock (waiting for another process); True if it was created."""
        check_output_dir(self.path, flag=self.flag)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.enter_context(locks.hold(self.path / LOCK, wait=True, keep=False, on_wait=self._waiting,
                                                 on_unsupported=self._unlocked))
        except OSError as exc:
            raise OutputError(describe_os_error(exc, f"cannot write {self.flag} {str(self.path)!r}", show_file=False)
                              ) from exc
        return created

    def _waiting(self, pid: str) -> None:
        print(f"ssa: another ssa process (pid {pid}) is writing {self.flag} {str(self.path)!r}; waiting for it to "
              "finish.", file=sys.stderr, flush=True)

    def _unlocked(self, exc: OSError) -> None:
        warnings.warn(f"{self.flag} {str(self.path)!r} is on a file system without file locks ({exc.strerror}); "
                      "going on without one: do not run a second ssa process into this folder at the same time.",
                      SSAWarning, stacklevel=2)

    def _release(self, remove_folder: bool) -> None:
        self._lock.close()
        if remove_folder:  # a failed first run leaves no empty folder behind
            try:
                (self.path / MANIFEST).unlink(missing_ok=True)  # planned or remembered, nothing written
                self.path.rmdir()
            except OSError:
                pass

    def _keep_previous(self) -> None:
        """Keep the earlier run's files (hard links, else copies) for :meth:`_roll_back`."""
        names = sorted(n for n in self._previous if (self.path / n).is_file() and not (self.path / n).is_symlink())
        if not names:
            return
        try:
            self._kept = Path(tempfile.mkdtemp(prefix=PREVIOUS, dir=self.path))
            for n in names:
                try:
                    os.link(self.path / n, self._kept / n)
                except OSError:  # a file system without hard links
                    shutil.copy2(self.path / n, self._kept / n)
        except OSError as err:
            self._drop_previous()
            raise OutputError(describe_os_error(err, f"cannot keep the earlier outputs of {self.flag} "
                                                     f"{str(self.path)!r} while this run replaces them",
                                                show_file=False)) from err

    def _roll_back(self) -> None:
        """A failed all-or-nothing run: the files it wrote are removed and the earlier run's are put back."""
        for name in sorted(self.written):
            kept = self._kept / name if self._kept is not None else None
            if kept is not None and kept.is_file():
                os.replace(kept, self.path / name)
            else:
                (self.path / name).unlink(missing_ok=True)
        self.written.clear()

    def _drop_previous(self) -> None:
        if self._kept is not None:
            shutil.rmtree(self._kept, ignore_errors=True)
            self._kept = None

    def __enter__(self) -> OutputDir:
        created = self._take_lock()
        try:
            self.check()
            self._created = created
            self._remove_leftovers()
            if self.all_or_nothing:
                self._keep_previous()
        except BaseException:
            self._drop_previous()
            self._release(created)
            raise
        write_listeners.append(self._saw)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        write_listeners.remove(self._saw)
        try:
            if exc_type is not None and self.all_or_nothing:
                self._roll_back()
            self._finish(exc_type is not None)
        finally:
            self._drop_previous()
            self._release(exc_type is not None and not self.written and self._created)

    def _finish(self, failed: bool) -> None:
        if failed:
            if self.written:  # keep the record of everything that may be ours, so the next run cleans up
                self._write_manifest(self._previous | self.written)
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


def _content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
