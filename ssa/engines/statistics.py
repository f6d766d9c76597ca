"""Collecting the per-image statistics of the closed form, in memory or into a store.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError

__all__ = ['check_finite_stats', 'collect', 'verify_store']


def check_finite_stats(arrays: Mapping[str, np.ndarray], first: int) -> None:
    """Refuse non-finite statistics of a batch (they would silently count as "no outlier")."""
    for key in sorted(arrays, key=lambda k: (k != "scalars/logits", k)):  # the logits first: the likely cause
        a = np.asarray(arrays[key])
        if a.size and not np.isfinite(a).all():
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


def collect(network: Network, images: np.ndarray, forms: Sequence[str], batch_size: int, store=None,
            progress: bool = False, stop_after: int | None = None):
    """Fill ``store`` (or memory) with the per-image statistics of ``images``, batch by batch.

    Batches already in the store are skipped (resume). ``stop_after`` stops
    after that many new batches (used by tests to simulate an interruption).
    Returns the statistics provider.
    """
    from ssa.engines.store import MemoryStats

    n = int(images.shape[0])
    n_batches = -(-n // batch_size)
    if store is None:
        stats = MemoryStats(batch_size, n, forms)
    else:
        stats = store
        for form in forms:
            store.clean_partial(form)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches * len(forms), desc="collect", unit="batch", leave=False, disable=None)
    done = 0
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    try:
        for i in range(n_batches):
            todo = [f for f in forms if store is None or not store.has_batch(f, i)]
            if not todo:
                if bar is not None:
                    bar.update(len(forms))
                continue
            if stop_after is not None and done >= stop_after:
                return stats
            batch = images[i * batch_size:(i + 1) * batch_size]
            for form in todo:  # one pass per form keeps memory at one form's statistics
                arrays = network.collect(batch, [form])
                check_finite_stats(arrays, i * batch_size)
                shapes.setdefault(form, {k: tuple(v.shape[1:]) for k, v in arrays.items()})
                if store is None:
                    stats.add(form, arrays)
                else:
                    store.write_batch(form, i, arrays)
                if bar is not None:
                    bar.update(1)
            done += 1
        if store is not None:
            for form in forms:
                known = shapes.get(form) or _shapes_of(store, form)
                store.mark_complete(form, n_batches, known)
    finally:
        if bar is not None:
            bar.close()
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
