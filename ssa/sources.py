"""Relevance sources for the traversal.

:class:`AutogradSource` streams the images through the network in batches and
computes every step's relevance by exact autograd (method doc, section 4).
Memory stays bounded by one batch; only the per-image neuron scalars (used for
``active_fraction``) are kept.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

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

    def _batches(self) -> Iterator[Mapping[str, np.ndarray]]:
        for i, rows in enumerate(self._rows):
            if rows is not None and len(rows) == 0:
                continue
            data = self.stats.batch(self.form, i)
            yield data if rows is None else RowView(data, rows)

    def iter_relevance(self, upper: str, neurons: Sequence[int], rule: Rule) -> Iterator[dict[str, np.ndarray]]:
        if upper in self.fast and rule.fast_form == self.form:
            for p in next(t for t in self.taps if t.name == upper).parents:
                self.engines[f"{upper} -> {p}"] = "fast"
            for data in self._batches():
                yield self.network.fast_relevance(upper, data, neurons, self.form)
            return
        if self._autograd is None:
            raise RuntimeError(f"step {upper} needs autograd but no images were given")
        yield from self._autograd.iter_relevance(upper, neurons, rule)
        self.engines.update(self._autograd.engines)

    def scalars(self, tap: str) -> np.ndarray:
        if tap not in self._scalars:
            self._scalars[tap] = np.concatenate([np.asarray(d[f"scalars/{tap}"]) for d in self._batches()])
        return self._scalars[tap]


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
                if store is None:
                    stats.add(form, arrays)
                else:
                    store.write_batch(form, i, arrays)
                if bar is not None:
                    bar.update(1)
            done += 1
        if store is not None:
            for form in forms:
                store.mark_complete(form, n_batches)
    finally:
        if bar is not None:
            bar.close()
    return stats
