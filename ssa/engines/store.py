"""Per-image sufficient statistics: in memory or in a resumable store on disk.

The statistics of one batch of images (see ``docs/store.md``) are everything the
closed form of method doc section 6 needs to give omega for any upper neuron, so
any class, branching factor or selector can be re-run without the network.

On disk, one directory per model and image set, keyed by content hashes::

    STORE/<model-name>-<model hash>/<images hash>/
        meta.json                      model, taps, image count, batch size
        <form>/batch-00000/<key>.npy   one folder per batch, renamed into place when complete
        <form>/batch-00000/hashes.json the content hash of each file, taken when it was written
        <form>/complete.json           written last: number of batches

A batch folder is written under a temporary name and renamed, so an
interrupted ``ssa collect`` leaves only whole batches; running it again
resumes at the first missing batch and gives an identical store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import OutputError, StoreError
from ssa.io import locks
from ssa.io.atomic import atomic_write_bytes
from ssa.io.paths import check_writable_dir, describe_os_error

__all__ = ["images_hash", "StatsStore", "FORMAT_VERSION", "default_store_root", "check_store_root"]

FORMAT_VERSION = 1
#: each batch folder's record of its files' content hashes, taken when they were written (``ssa collect --verify``)
HASHES = "hashes.json"


def default_store_root() -> Path:
    return Path(os.environ.get("SSA_STORE", ".ssa-store"))


def check_store_root(root: str | os.PathLike, *, flag: str = "--store", write: bool = False) -> Path:
    """Refuse a store path that is a file, or (``write``) one that cannot be created or written."""
    p = Path(root)
    if p.exists() and not p.is_dir():
        raise StoreError(f"{flag} {str(p)!r} is a file; a statistics store is a folder: remove the file or pass "
                         "another folder.")
    if write:
        anc = p
        while not anc.exists() and anc.parent != anc:
            anc = anc.parent
        if not anc.is_dir():
            raise StoreError(f"{flag}: {str(anc)!r} is a file, so the store {str(p)!r} cannot be created below it; "
                             "pass another folder.")
        try:
            check_writable_dir(anc, flag)
        except OutputError as exc:
            raise StoreError(f"{exc} (the statistics store)") from None
    return p


def images_hash(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def _content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _key_to_file(key: str) -> str:
    return key.replace("/", "__") + ".npy"


def _file_to_key(name: str) -> str:
    return name[:-4].replace("__", "/")


class LazyArrays(Mapping):
    """``{key: array}`` over ``.npy`` files, each memory-mapped when first asked for.

    ``rows`` and ``shapes`` (the images in the batch, and each key's shape after the image axis, as
    ``complete.json`` records them) are checked on first access, so a file of the wrong shape is named.
    """

    def __init__(self, files: Mapping[str, Path], rows: int | None = None,
                 shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        self._files = dict(files)
        self._cache: dict[str, np.ndarray] = {}
        self._rows = rows
        self._shapes = dict(shapes or {})

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            if key not in self._files:
                folder = next(iter(self._files.values())).parent if self._files else "?"
                raise StoreError(f"store batch {str(folder)!r} lacks {_key_to_file(key)!r}; run "
                                 "`ssa collect --verify` to repair the store.")
            f = self._files[key]
            try:
                arr = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                raise StoreError(f"store file {str(f)!r} is corrupt (truncated or not a .npy array); run "
                                 "`ssa collect --verify` to repair the store.") from None
            want = None
            if self._rows is not None:
                want = (self._rows, *self._shapes[key]) if key in self._shapes else None
                if arr.ndim == 0 or arr.shape[0] != self._rows or (want is not None and arr.shape != want):
                    expected = want if want is not None else f"({self._rows}, ...)"
                    raise StoreError(f"store file {str(f)!r} has shape {arr.shape}, expected {expected}; run "
                                     "`ssa collect --verify` to repair the store.")
            self._cache[key] = arr
        return self._cache[key]

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


class RowView(Mapping):
    """The rows ``rows`` of every array of a batch, taken on access."""

    def __init__(self, data: Mapping[str, np.ndarray], rows: np.ndarray) -> None:
        self._data = data
        self._rows = rows

    def __getitem__(self, key: str) -> np.ndarray:
        return np.asarray(self._data[key])[self._rows]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class StatsStore:
    """A store directory for one model and one image set."""

    def __init__(self, root: str | os.PathLike, model_name: str, model_hash: str, image_hash: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:40] or "model"
        self.path = Path(root) / f"{safe}-{model_hash[:16]}" / image_hash[:16]
        self.model_hash = model_hash
        self.image_hash = image_hash
        self._open: dict[tuple[str, int], LazyArrays] = {}
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    # -- metadata ---------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        f = self.path / "meta.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            raise StoreError(
                f"store metadata {str(f)!r} is unreadable; delete {str(self.path)!r} and collect again.") from None

    def init(self, meta: dict[str, Any]) -> None:
        """Create the store, or check that an existing one matches ``meta``."""
        existing = self.meta()
        meta = {"format": FORMAT_VERSION, "model_hash": self.model_hash, "images_hash": self.image_hash, **meta}
        if existing is not None:
            for key in ("format", "model_hash", "images_hash", "batch_size", "n_images", "taps"):
                if existing.get(key) != meta.get(key):
                    raise StoreError(
                        f"store {str(self.path)!r} was collected with another {key} ({existing.get(key)!r}, now "
                        f"{meta.get(key)!r}); pass the same --batch-size or delete the store folder."
                    )
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(describe_os_error(exc, f"cannot create the store {str(self.path)!r}", show_file=False)
                             ) from exc

    @property
    def n_images(self) -> int:
        meta = self.meta()
        if meta is None:
            raise StoreError(f"store {str(self.path)!r} has no metadata; run `ssa collect` again.")
        return int(meta["n_images"])

    # -- batches ----------------------------------------------------------------
    def _batch_dir(self, form: str, i: int) -> Path:
        return self.path / form / f"batch-{i:05d}"

    def has_batch(self, form: str, i: int) -> bool:
        return self._batch_dir(form, i).is_dir()

    def write_batch(self, form: str, i: int, arrays: Mapping[str, np.ndarray]) -> None:
        try:
            self._write_batch(form, i, arrays)
        except OSError as exc:
            raise StoreError(describe_os_error(exc, f"cannot write batch {i} of the store {str(self.path)!r}",
                                               show_file=False)) from exc

    def _write_batch(self, form: str, i: int, arrays: Mapping[str, np.ndarray]) -> None:
        final = self._batch_dir(form, i)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-batch-{i:05d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            hashes = {}
            for key in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
                data = buf.getvalue()
                hashes[_key_to_file(key)] = _content_hash(data)
                _write_synced(tmp / _key_to_file(key), data)
            _write_synced(tmp / HASHES, json.dumps(hashes, indent=1, sort_keys=True).encode())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def clean_partial(self, form: str) -> None:
        d = self.path / form
        if d.is_dir():
            for p in d.glob(".tmp-batch-*"):
                shutil.rmtree(p, ignore_errors=True)

    def mark_complete(self, form: str, n_batches: int, shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        """Record that every batch of ``form`` is there (and each key's shape after the image axis)."""
        data: dict[str, Any] = {"n_batches": n_batches}
        if shapes:
            data["shapes"] = {k: [int(d) for d in v] for k, v in sorted(shapes.items())}
        try:
            atomic_write_bytes(self.path / form / "complete.json", json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            raise StoreError(f"cannot complete the store {str(self.path)!r}: {exc}") from exc
        self._shapes.pop(form, None)

    def is_complete(self, form: str) -> bool:
        return (self.path / form / "complete.json").is_file()

    def n_batches(self, form: str) -> int:
        f = self.path / form / "complete.json"
        try:
            return int(json.loads(f.read_text())["n_batches"])
        except (OSError, ValueError, KeyError):
            raise StoreError(f"store {str(self.path)!r} is incomplete for {form}; run `ssa collect` again.") from None

    def batch_rows(self, i: int) -> int:
        """The number of images in batch ``i``."""
        meta = self.meta() or {}
        n, bs = int(meta.get("n_images", 0)), int(meta.get("batch_size", 1))
        return max(0, min(bs, n - i * bs))

    def shapes(self, form: str) -> dict[str, tuple[int, ...]]:
        """Each key's shape after the image axis, as recorded when the form was completed (empty if unknown)."""
        try:
            data = json.loads((self.path / form / "complete.json").read_text())
            return {str(k): tuple(int(d) for d in v) for k, v in dict(data.get("shapes", {})).items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def batch(self, form: str, i: int) -> Mapping[str, np.ndarray]:
        """The arrays of one batch, memory-mapped on first access (an analysis reads only its steps').

        Each array's shape is checked against the batch's image count and the recorded shapes.
        """
        key = (form, i)
        if key not in self._open:
            d = self._batch_dir(form, i)
            if not d.is_dir():
                raise StoreError(f"store {str(self.path)!r} lacks batch {i} of {form}; run `ssa collect --verify` "
                                 "to repair it.")
            if form not in self._shapes:
                self._shapes[form] = self.shapes(form)
            self._open[key] = LazyArrays({_file_to_key(f.name): f for f in sorted(d.iterdir())
                                          if f.name.endswith(".npy")}, self.batch_rows(i), self._shapes[form])
        return self._open[key]

    def keys(self, form: str) -> list[str]:
        """The statistics keys of ``form`` (from batch 0)."""
        return list(self.batch(form, 0))

    def rows(self, form: str, key: str, indices: np.ndarray | None = None) -> np.ndarray:
        """The rows ``indices`` (positions in the whole image set; None: all) of one key, from every batch.

        Only the batches holding those rows are read (memory-mapped); the result is one host array,
        which the closed-form source moves to the network's device once per step.
        """
        n_batches = self.n_batches(form)
        bs = int((self.meta() or {}).get("batch_size", 1))
        if indices is None:
            parts = [np.asarray(self.batch(form, i)[key]) for i in range(n_batches)]
            return np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return np.zeros((0, *self.shapes(form).get(key, ())), np.float32)
        order = np.argsort(indices, kind="stable")
        batch_of = indices[order] // bs
        parts = []
        for i in np.unique(batch_of):  # only the batches that hold the rows
            parts.append(np.asarray(self.batch(form, int(i))[key])[indices[order][batch_of == i] - int(i) * bs])
        gathered = np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])
        out = np.empty_like(gathered)
        out[order] = gathered  # back in the order of ``indices``
        return out

    def verify_batch(self, form: str, i: int, expected: Mapping[str, Sequence[int]]) -> str | None:
        """Read every array of batch ``i`` in full; why it is broken (missing, truncated, wrong shape, NaN), or None."""
        d = self._batch_dir(form, i)
        if not d.is_dir():
            return "missing"
        files = {_file_to_key(f.name): f for f in d.iterdir() if f.name.endswith(".npy")}
        missing = sorted(set(expected) - set(files))
        if missing:
            return f"{_key_to_file(missing[0])} is missing"
        rows = self.batch_rows(i)
        try:
            recorded = json.loads((d / HASHES).read_text())
        except FileNotFoundError:
            recorded = {}  # a batch written before hashes were recorded: checked as it reads
        except (OSError, ValueError):
            return f"{HASHES} is unreadable"
        for key, f in sorted(files.items()):
            try:
                data = f.read_bytes()
                arr = np.load(io.BytesIO(data), allow_pickle=False)
            except (OSError, ValueError) as exc:
                return f"{f.name} is unreadable ({(str(exc).splitlines() or [type(exc).__name__])[0][:80]})"
            want = (rows, *expected[key]) if key in expected else None
            if arr.ndim == 0 or arr.shape[0] != rows or (want is not None and arr.shape != want):
                return f"{f.name} has shape {arr.shape}, expected {want or (rows, '...')}"
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                return f"{f.name} holds NaN or infinite values"
            if isinstance(recorded, dict) and f.name in recorded and recorded[f.name] != _content_hash(data):
                return f"{f.name} is not what was written (its content hash differs: a changed byte)"
        return None

    def remove_batch(self, form: str, i: int) -> None:
        """Delete batch ``i`` (``ssa collect`` then collects it again)."""
        self._open.pop((form, i), None)
        shutil.rmtree(self._batch_dir(form, i), ignore_errors=True)
        (self.path / form / "complete.json").unlink(missing_ok=True)

    @contextmanager
    def writing(self, meta: dict[str, Any]):
        """Lock the store and :meth:`init` it for writing batches.

        When the run fails before a single batch is stored in a store it created, the store folders it
        made are removed again, so a refused run (NaN logits, a model that raises) leaves nothing behind;
        a store that holds batches is kept (``ssa collect`` resumes it).
        """
        missing = []
        p = self.path
        while not p.exists() and p.parent != p:
            missing.append(p)
            p = p.parent
        try:
            with self.lock():
                self.init(meta)
                yield self
        except BaseException:
            if missing and not any(self.path.glob("*/batch-*")):
                shutil.rmtree(self.path, ignore_errors=True)
                for d in missing[1:]:  # the model folder and the root, when this run made them and they are empty
                    try:
                        d.rmdir()
                    except OSError:
                        break
            raise

    @contextmanager
    def lock(self):
        """Hold the store's write lock (``<store>/.lock``): a second writer is refused, not interleaved."""
        held = ExitStack()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            held.enter_context(locks.hold(self.path / ".lock"))  # emptied when released: stores stay identical
        except locks.Locked as exc:
            raise StoreError(f"another ssa process (pid {exc.pid}) is writing the store {str(self.path)!r}; wait "
                             "for it to finish, or use another --store.") from None
        except OSError as exc:
            raise StoreError(describe_os_error(exc, f"cannot write the store {str(self.path)!r}", show_file=False)
                             ) from exc
        with held:
            yield self

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*.npy"))
