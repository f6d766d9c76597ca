"""Relevance sources for the traversal.

:class:`AutogradSource` streams the images through the network in batches and
computes every step's relevance by exact autograd (method doc, section 4).
Memory stays bounded by one batch; only the per-image neuron scalars (used for
``active_fraction``) are kept.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from .errors import InvalidInputError, StoreError
from .interfaces import Network, Rule, Tap
from .store import RowView

__all__ = ["AutogradSource", "FastSource", "collect"]


class AutogradSource:
    def __init__(self, network: Network, images: np.ndarray, batch_size: int = 32) -> None:
        self.network = network
        self.images = images
        self.batch_size = int(batch_size)
        self.taps: tuple[Tap, ...] = network.taps
        self.n_images = int(images.shape[0])
        self._scalars: dict[str, np.ndarray] | None = None
        self.engines: dict[str, str] = {}

    def batches(self) -> Iterator[np.ndarray]:
        for i in range(0, self.n_images, self.batch_size):
            yield self.images[i:i + self.batch_size]

    @property
    def n_batches(self) -> int:
        return -(-self.n_images // self.batch_size)

    def iter_relevance(self, upper: str, neurons: Sequence[int], rule: Rule) -> Iterator[dict[str, np.ndarray]]:
        parts: dict[str, list[np.ndarray]] = {}
        for p in next(t for t in self.taps if t.name == upper).parents:
            self.engines[f"{upper} -> {p}"] = "autograd"
        for batch in self.batches():
            rel, scalars = self.network.step_relevance(batch, upper, neurons, rule)
            if self._scalars is None:
                for k, v in scalars.items():
                    parts.setdefault(k, []).append(v)
            yield rel
        if self._scalars is None and parts:
            self._scalars = {k: np.concatenate(v) for k, v in parts.items()}

    def scalars(self, tap: str) -> np.ndarray:
        if self._scalars is None:
            parts: dict[str, list[np.ndarray]] = {}
            for batch in self.batches():
                for k, v in self.network.tap_scalars(batch).items():  # type: ignore[attr-defined]
                    parts.setdefault(k, []).append(v)
            self._scalars = {k: np.concatenate(v) for k, v in parts.items()}
        return self._scalars[tap]


class FastSource:
    """Relevance from per-image statistics (method doc, section 6); autograd for the other steps.

    ``stats`` is a :class:`ssa.store.MemoryStats` or :class:`ssa.store.StatsStore`
    holding the batches of ``images`` (all of them); ``indices`` selects the
    images analysed (e.g. one class), in the order of ``images``.
    """

    def __init__(self, network: Network, stats, form: str, images: np.ndarray | None, batch_size: int,
                 indices: np.ndarray | None = None) -> None:
        self.network = network
        self.stats = stats
        self.form = form
        self.batch_size = int(batch_size)
        self.taps = network.taps
        self.fast = network.fast_taps(form)
        total = stats.n_batches(form)
        self._rows: list[np.ndarray | None] = []
        for i in range(total):
            lo = i * self.batch_size
            hi = lo + self.batch_size
            if indices is None:
                self._rows.append(None)
            else:
                sel = indices[(indices >= lo) & (indices < hi)] - lo
                self._rows.append(sel)
        self.indices = indices
        self.n_images = int(len(indices)) if indices is not None else int(stats.n_images)
        sub = images if indices is None or images is None else images[indices]
        self._autograd = AutogradSource(network, sub, batch_size) if sub is not None else None
        self.engines: dict[str, str] = {}
        self._scalars: dict[str, np.ndarray] = {}

    @property
    def _on_disk(self) -> bool:
        return hasattr(self.stats, "path")

    def _not_finite(self, i: int, what: str) -> None:
        if self._on_disk:
            raise StoreError(f"batch {i} of the store {str(self.stats.path)!r} holds NaN or infinite statistics "
                             f"({what}); run `ssa collect --verify` to repair it.")
        raise InvalidInputError(f"{what} is NaN or infinite on some images of batch {i}; the model produces "
                                "non-finite values there: check its weights and the images' scaling.")

    def _batches(self) -> Iterator[tuple[int, Mapping[str, np.ndarray]]]:
        for i, rows in enumerate(self._rows):
            if rows is not None and len(rows) == 0:
                continue
            data = self.stats.batch(self.form, i)
            yield i, (data if rows is None else RowView(data, rows))

    def iter_relevance(self, upper: str, neurons: Sequence[int], rule: Rule) -> Iterator[dict[str, np.ndarray]]:
        if upper in self.fast and rule.fast_form == self.form:
            for p in next(t for t in self.taps if t.name == upper).parents:
                self.engines[f"{upper} -> {p}"] = "fast"
            for i, data in self._batches():
                try:
                    rel = self.network.fast_relevance(upper, data, neurons, self.form)
                except (ValueError, IndexError, KeyError) as exc:  # arrays that do not fit together: a damaged store
                    if not self._on_disk:
                        raise
                    raise StoreError(f"batch {i} of the store {str(self.stats.path)!r} does not fit this model "
                                     f"({type(exc).__name__}); run `ssa collect --verify` to repair it.") from None
                for omega in rel.values():
                    if not np.isfinite(omega).all():
                        self._not_finite(i, f"the relevance of step {upper}")
                yield rel
            return
        if self._autograd is None:
            raise RuntimeError(f"step {upper} needs autograd but no images were given")
        yield from self._autograd.iter_relevance(upper, neurons, rule)
        self.engines.update(self._autograd.engines)

    def scalars(self, tap: str) -> np.ndarray:
        if tap not in self._scalars:
            parts = []
            for i, d in self._batches():
                part = np.asarray(d[f"scalars/{tap}"])
                if not np.isfinite(part).all():
                    self._not_finite(i, f"the scalars of tap {tap}")
                parts.append(part)
            self._scalars[tap] = np.concatenate(parts)
        return self._scalars[tap]


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
    from .store import MemoryStats

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
