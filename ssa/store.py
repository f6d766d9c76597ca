"""Per-image sufficient statistics: in memory or in a resumable store on disk.

The statistics of one batch of images (see ``docs/store.md``) are everything the
closed form of method doc section 6 needs to give omega for any upper neuron, so
any class, branching factor or selector can be re-run without the network.

On disk, one directory per model and image set, keyed by content hashes::

    STORE/<model-name>-<model hash>/<images hash>/
        meta.json                      model, taps, image count, batch size
        <form>/batch-00000/<key>.npy   one folder per batch, renamed into place when complete
        <form>/complete.json           written last: number of batches

A batch folder is written under a temporary name and renamed, so an
interrupted ``ssa collect`` leaves only whole batches; running it again
resumes at the first missing batch and gives an identical store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import StoreError
from .graph import atomic_write_bytes

__all__ = ["images_hash", "StatsStore", "MemoryStats", "FORMAT_VERSION", "default_store_root"]

FORMAT_VERSION = 1


def default_store_root() -> Path:
    return Path(os.environ.get("SSA_STORE", ".ssa-store"))


def images_hash(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def _key_to_file(key: str) -> str:
    return key.replace("/", "__") + ".npy"


def _file_to_key(name: str) -> str:
    return name[:-4].replace("__", "/")


class LazyArrays(Mapping):
    """``{key: array}`` over ``.npy`` files, each memory-mapped when first asked for."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self._files = dict(files)
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            f = self._files[key]
            try:
                self._cache[key] = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError):
                raise StoreError(f"store file {str(f)!r} is corrupt; delete {str(f.parent)!r} and run "
                                 "`ssa collect` again.") from None
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


class MemoryStats:
    """Statistics kept in memory (one dict of arrays per batch)."""

    def __init__(self, batch_size: int, n_images: int, forms: Sequence[str]) -> None:
        self.batch_size = batch_size
        self.n_images = n_images
        self.forms = tuple(forms)
        self._batches: dict[str, list[dict[str, np.ndarray]]] = {f: [] for f in self.forms}

    def add(self, form: str, arrays: dict[str, np.ndarray]) -> None:
        self._batches[form].append(arrays)

    def n_batches(self, form: str) -> int:
        return len(self._batches[form])

    def batch(self, form: str, i: int) -> Mapping[str, np.ndarray]:
        return self._batches[form][i]


class StatsStore:
    """A store directory for one model and one image set."""

    def __init__(self, root: str | os.PathLike, model_name: str, model_hash: str, image_hash: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:40] or "model"
        self.path = Path(root) / f"{safe}-{model_hash[:16]}" / image_hash[:16]
        self.model_hash = model_hash
        self.image_hash = image_hash
        self._open: dict[tuple[str, int], LazyArrays] = {}

    # -- metadata ---------------------------------------------------------------
    def meta(self) -> dict[str, Any] | None:
        f = self.path / "meta.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            raise StoreError(f"store metadata {str(f)!r} is unreadable; delete {str(self.path)!r} and collect again.") from None

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
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())

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
        final = self._batch_dir(form, i)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-batch-{i:05d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            for key in sorted(arrays):
                with open(tmp / _key_to_file(key), "wb") as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(arrays[key]), allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def clean_partial(self, form: str) -> None:
        d = self.path / form
        if d.is_dir():
            for p in d.glob(".tmp-batch-*"):
                shutil.rmtree(p, ignore_errors=True)

    def mark_complete(self, form: str, n_batches: int) -> None:
        atomic_write_bytes(self.path / form / "complete.json", json.dumps({"n_batches": n_batches}).encode())

    def is_complete(self, form: str) -> bool:
        return (self.path / form / "complete.json").is_file()

    def n_batches(self, form: str) -> int:
        f = self.path / form / "complete.json"
        try:
            return int(json.loads(f.read_text())["n_batches"])
        except (OSError, ValueError, KeyError):
            raise StoreError(f"store {str(self.path)!r} is incomplete for {form}; run `ssa collect` again.") from None

    def batch(self, form: str, i: int) -> Mapping[str, np.ndarray]:
        """The arrays of one batch, memory-mapped on first access (an analysis reads only its steps')."""
        key = (form, i)
        if key not in self._open:
            d = self._batch_dir(form, i)
            if not d.is_dir():
                raise StoreError(f"store {str(self.path)!r} lacks batch {i} of {form}; run `ssa collect` again.")
            self._open[key] = LazyArrays({_file_to_key(f.name): f for f in sorted(d.iterdir())})
        return self._open[key]

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*.npy"))
