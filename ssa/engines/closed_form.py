"""Relevance from per-image statistics by the closed form (method doc, section 6).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np

from ssa.core.interfaces import Network, Rule
from ssa.engines.autograd import AutogradSource
from ssa.engines.store import RowView
from ssa.errors import InvalidInputError, StoreError

__all__ = ['FastSource']


class FastSource:
    """Relevance from per-image statistics (method doc, section 6); autograd for the other steps.

    ``stats`` is a :class:`ssa.engines.store.MemoryStats` or :class:`ssa.engines.store.StatsStore`
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
        if upper in self.fast and rule.form == self.form:
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
