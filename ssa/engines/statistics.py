"""Collecting the per-image statistics of the closed form, in memory or into a store.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ssa.core.arrays import all_finite, device_of, host_view, is_numpy, namespace, take_rows, to_numpy
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

__all__ = ["DeviceStatistics", "check_finite_stats", "collect", "joined", "verify_store"]


def check_finite_stats(arrays: Mapping[str, Any], first: int) -> None:
    """Refuse non-finite statistics of a batch (they would silently count as "no outlier").

    One pass per key and one decision per batch: a NaN or an infinity anywhere makes an array's sum NaN or
    infinite, so finite sums prove every value finite (one synchronisation on a device). Only where a sum is
    not finite (a non-finite value, or finite values whose sum overflows) are the values themselves checked,
    and only a failing key's rows come to the host, to name them.
    """
    keys = [k for k in arrays if arrays[k].shape[0]]
    if not keys:
        return
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is checked value by value below
        sums = [host_view(arrays[k]).sum() for k in keys]
    if is_numpy(namespace(sums[0])):
        ok = [bool(np.isfinite(v)) for v in sums]
    else:
        xp = namespace(sums[0])
        if bool(xp.all(xp.isfinite(xp.stack(sums)))):
            return
        ok = [False] * len(keys)
    if all(ok):
        return
    suspects = [k for k, good in zip(keys, ok, strict=True) if not good]
    for key in sorted(suspects, key=lambda k: (k != "scalars/logits", k)):  # the logits first: the likely cause
        if all_finite(arrays[key]):
            continue  # finite values whose sum overflows
        a = to_numpy(arrays[key])
        rows = np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)) + first
        where = "the model's logits are" if key == "scalars/logits" else f"the statistics {key!r} are"
        raise InvalidInputError(
            f"{where} NaN or infinite on {len(rows)} image(s) (first: image {int(rows[0])}); the model produces "
            "non-finite values there: check its weights and the images' scaling.")


def _shapes_of(store, form: str) -> dict[str, tuple[int, ...]]:
    """Each key's shape after the image axis, from batch 0's file headers (nothing was collected this time)."""
    known = store.shapes(form)
    if known:
        return known
    try:
        data = store.batch(form, 0)
        return {k: tuple(np.asarray(data[k]).shape[1:]) for k in data}
    except Exception:  # noqa: BLE001 - a broken batch 0: `ssa collect --verify` names it
        return {}


class DeviceStatistics:
    """Per-image statistics kept in memory, where the network computed them (its device).

    Each key's rows for the whole image set live in one array, made when the key's first batch arrives (the image
    count is known): a batch is written into its rows as it comes (:meth:`add`), or the network writes it there
    itself (:meth:`slots`, handed to ``Network.collect``), so a key is never joined from pieces; a class's rows are
    taken from it on the device (no host round trip). :func:`joined` is the reference: the pieces concatenated.
    """

    def __init__(self, n_images: int, forms: Sequence[str]) -> None:
        self.n_images = int(n_images)
        self.forms = tuple(forms)
        self._whole: dict[str, dict[str, Any]] = {f: {} for f in self.forms}
        self._filled = dict.fromkeys(self.forms, 0)  # rows added so far, per form
        self._keys: dict[str, dict[str, None]] = {f: {} for f in self.forms}  # in the order the batches give them
        self.nbytes = 0

    def _array(self, form: str, key: str, shape: Sequence[int], like: Any) -> Any:
        """The whole image set's array of ``key`` (made on first use: rows of ``shape[1:]``, ``like``'s dtype and
        device)."""
        whole = self._whole[form].get(key)
        if whole is None:
            xp = namespace(like)
            whole = xp.empty((self.n_images, *shape[1:]), dtype=like.dtype, device=device_of(like))
            self._whole[form][key] = whole
        return whole

    def slots(self, form: str) -> Any:
        """Where ``Network.collect`` may write the next batch's statistics itself: ``slot(key, shape, like)`` is the
        rows of the next batch in ``key``'s whole array (a batch of ``shape``, ``like``'s dtype and device), or None
        where they do not fit (another row shape or dtype, or more rows than are left); :meth:`add` then copies
        nothing for a key whose batch is that slot."""
        first = self._filled[form]

        def slot(key: str, shape: Sequence[int], like: Any) -> Any:
            whole = self._array(form, key, shape, like)
            if tuple(whole.shape[1:]) != tuple(shape[1:]) or whole.dtype != like.dtype \
                    or first + shape[0] > self.n_images:
                return None
            return whole[first:first + shape[0]]
        return slot

    def add(self, form: str, arrays: Mapping[str, Any]) -> None:
        """Write one batch (the next rows of every key) into the whole image set's arrays."""
        first = self._filled[form]
        rows = 0
        for k, v in arrays.items():
            whole = self._array(form, k, v.shape, v)
            self._keys[form].setdefault(k)
            rows = int(v.shape[0])
            part = whole[first:first + rows]
            if not _same_memory(part, v):  # not already written there by the network
                part[...] = v
            self.nbytes += int(getattr(v, "nbytes", 0) or np.asarray(v).nbytes)
        self._filled[form] = first + rows

    def keys(self, form: str) -> list[str]:
        return list(self._keys[form])

    def rows(self, form: str, key: str, indices: np.ndarray | None = None) -> Any:
        """Rows ``indices`` (None: all rows added) of one key, as an array on the statistics' device."""
        whole = self._whole[form][key]
        if self._filled[form] < self.n_images:
            whole = whole[:self._filled[form]]
        if indices is None:
            return whole
        return take_rows(whole, indices)


def joined(parts: Sequence[Any]) -> Any:
    """The reference for :class:`DeviceStatistics`' arrays: a key's per-batch pieces concatenated."""
    return parts[0] if len(parts) == 1 else namespace(parts[0]).concat(list(parts), axis=0)


def _same_memory(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same elements in memory (the same start, shape and strides)."""
    if hasattr(a, "data_ptr") and hasattr(b, "data_ptr"):
        return bool(a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
                    and a.dtype == b.dtype and a.device == b.device)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return bool(a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
                    and a.strides == b.strides and a.dtype == b.dtype)
    return False


class _Writer:
    """Writes collected batches into a store from a background thread, so the device keeps computing.

    The network starts each batch's copy to (pinned) host memory (``to_host_async``); the thread
    waits for it and writes the batch atomically. Errors surface in the caller at the next batch or
    at :meth:`close`.
    """

    def __init__(self, store: Any, network: Network) -> None:
        self.store = store
        self.network = network
        self._queue: queue.Queue = queue.Queue(maxsize=2)  # at most two batches waiting: bounded host memory
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ssa-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            form, i, copy = item
            if self._error is not None:
                continue
            try:
                self.store.write_batch(form, i, copy.result())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def put(self, form: str, i: int, arrays: Mapping[str, Any]) -> None:
        self._check()
        self._queue.put((form, i, self.network.to_host_async(arrays)))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._check()


def collect(network: Network, images: np.ndarray, forms: Sequence[str], batch_size: int, store=None,
            progress: bool = False, stop_after: int | None = None):
    """Fill ``store`` (or memory) with the per-image statistics of ``images``, batch by batch.

    Without a store the statistics stay on the network's device (:class:`DeviceStatistics`). With a
    store, batches already in it are skipped (resume) and new ones are written by a background
    thread from pinned host buffers. ``stop_after`` stops after that many new batches (used by
    tests to simulate an interruption). Returns the statistics provider.

    The pass runs in the network's :meth:`~ssa.core.interfaces.Network.statistics_pass` context (entered here and
    nowhere else: on the CPU the torch backend keeps freed memory in glibc's heap there for models of large
    activations, :func:`ssa.core.heap.kept_memory`).
    """
    with network.statistics_pass():
        return _collect(network, images, forms, batch_size, store, progress, stop_after)


def _collect(network: Network, images: np.ndarray, forms: Sequence[str], batch_size: int, store: Any,
             progress: bool, stop_after: int | None) -> Any:
    """:func:`collect`'s pass."""
    n = int(images.shape[0])
    n_batches = -(-n // batch_size)
    if store is None:
        stats: Any = DeviceStatistics(n, forms)
        writer = None
    else:
        stats = store
        for form in forms:
            store.clean_partial(form)
        writer = _Writer(store, network)
    bar = None
    if progress:
        from ssa.io.progress import progress as stage

        bar = stage(n_batches * len(forms), "statistics", "batch")
    done = 0
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    completed = False
    try:
        for i in range(n_batches):
            todo = [f for f in forms if store is None or not store.has_batch(f, i)]
            if not todo:
                if bar is not None:
                    bar.update(len(forms))
                continue
            if stop_after is not None and done >= stop_after:
                break
            batch = images[i * batch_size:(i + 1) * batch_size]
            for form in todo:  # one pass per form keeps memory at one form's statistics
                # in memory, the network may write the batch straight into the whole image set's arrays
                arrays = network.collect(batch, [form]) if writer is not None else \
                    network.collect(batch, [form], slots=stats.slots(form))
                check_finite_stats(arrays, i * batch_size)
                shapes.setdefault(form, {k: tuple(v.shape[1:]) for k, v in arrays.items()})
                if writer is None:
                    stats.add(form, arrays)
                else:
                    writer.put(form, i, arrays)
                if bar is not None:
                    bar.update(1)
            done += 1
        else:
            completed = True
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
    if store is not None and completed:
        for form in forms:
            known = shapes.get(form) or _shapes_of(store, form)
            store.mark_complete(form, n_batches, known)
    return stats


def verify_store(network: Network, images: np.ndarray, store, forms: Sequence[str], batch_size: int
                 ) -> list[tuple[str, int, str]]:
    """Re-read every batch of ``forms`` in full and remove the broken ones (truncated or unreadable files,
    missing keys, wrong shapes, NaN or infinite values), so that :func:`collect` computes them again.

    The expected keys and shapes come from the network itself (one image). Returns
    ``[(form, batch index, why)]`` of the batches removed.
    """
    n_batches = -(-int(images.shape[0]) // batch_size)
    broken: list[tuple[str, int, str]] = []
    for form in forms:
        expected = {k: tuple(v.shape[1:]) for k, v in network.collect(images[:1], [form]).items()}
        for i in range(n_batches):
            if not store.has_batch(form, i):
                continue  # missing batches are simply collected
            why = store.verify_batch(form, i, expected)
            if why is not None:
                broken.append((form, i, why))
                store.remove_batch(form, i)
    return broken
