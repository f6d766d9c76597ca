"""Relevance from per-image statistics by the closed form (method doc, section 6).

:class:`ClosedFormSource` serves the traversal one class at a time: for each step it takes the
class's rows of that step's statistics once (on the network's device: from memory there, or read
from a store on disk and moved over once), computes omega for the upper neurons in blocks that fit
a memory budget, and yields them as typed blocks (:class:`~ssa.core.interfaces.DenseBlock`,
:class:`~ssa.core.interfaces.Rank1Block`; arrays on the device). Steps without a closed form are computed by
exact autograd on the class's images (:class:`~ssa.engines.autograd.AutogradSource`), which yields
``DenseBlock``s too: the traversal cannot tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ssa.core.arrays import all_finite
from ssa.core.budget import work_bytes
from ssa.core.interfaces import DenseBlock, Network, Rank1Block, Rule
from ssa.engines.autograd import AutogradSource
from ssa.errors import InvalidInputError, StoreError

__all__ = ["ClosedFormSource", "work_bytes"]


class ClosedFormSource:
    """Relevance from per-image statistics (method doc, section 6); autograd for the other steps.

    Parameters
    ----------
    network : the prepared network.
    stats : a :class:`~ssa.engines.statistics.DeviceStatistics` or :class:`~ssa.engines.store.StatsStore`
        holding every image of ``images`` (in their order).
    form : the closed form's name (``rule.form``).
    images : the image set (for the steps that need autograd), or None.
    indices : the positions of the analysed images (one class) in ``images``; None: all of them.
    """

    def __init__(self, network: Network, stats: Any, form: str, images: np.ndarray | None, batch_size: int,
                 indices: np.ndarray | None = None) -> None:
        self.network = network
        self.device = network.device  # where its arrays live (ssa.core.traversal.SupportsDevice)
        self.stats = stats
        self.form = form
        self.batch_size = int(batch_size)
        self.taps = network.taps
        self.fast = network.fast_taps(form)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.n_images = int(len(self.indices)) if self.indices is not None else int(stats.n_images)
        sub = images if self.indices is None or images is None else images[self.indices]
        self._autograd = AutogradSource(network, sub, batch_size) if sub is not None else None
        self.engines: dict[str, str] = {}
        self._scalars: dict[str, Any] = {}
        self._sizes = {t.name: t.n_neurons for t in self.taps}
        self._device_index: Any = None

    @property
    def _on_disk(self) -> bool:
        return hasattr(self.stats, "path")

    def _rows(self, key: str) -> Any:
        """The analysed images' rows of one statistics key, on the network's device.

        Statistics collected in this session were checked for NaN when collected; rows read from a
        store are checked here, on the host, before they move to the device.
        """
        try:
            rows = self.stats.rows(self.form, key, self._class_index())
            if self._on_disk and not all_finite(rows):
                self._not_finite(f"statistics {key!r}")
            return self.network.as_array(rows)
        except KeyError:
            if self._on_disk:
                raise StoreError(f"the store {str(self.stats.path)!r} lacks the statistics {key!r}; run "
                                 "`ssa collect --verify` to repair it.") from None
            raise

    def _class_index(self) -> Any:
        """The analysed images' positions: numpy for a store on disk; for statistics in memory, an array on the
        network's device, made once per class (not copied there per statistics key)."""
        if self.indices is None or self._on_disk:
            return self.indices
        if self._device_index is None:
            self._device_index = self.network.as_array(self.indices)
        return self._device_index

    def _not_finite(self, what: str) -> None:
        if self._on_disk:
            raise StoreError(f"the store {str(self.stats.path)!r} holds NaN or infinite statistics ({what}); run "
                             "`ssa collect --verify` to repair it.")
        raise InvalidInputError(f"{what} is NaN or infinite on some images; the model produces non-finite values "
                                "there: check its weights and the images' scaling.")

    def _step_data(self, upper: str) -> Mapping[str, Any]:
        prefix = f"{upper}/"
        return {k: self._rows(k) for k in self.stats.keys(self.form) if k.startswith(prefix)}

    def iter_blocks(self, upper: str, neurons: Sequence[int], rule: Rule, factors: bool = False
                    ) -> Iterator[DenseBlock | Rank1Block]:
        """The step's relevance in blocks of upper neurons that fit the memory budget; with ``factors`` (the
        traversal's selector has sorted or searched cuts), rank-1 parents of closed-form steps as
        :class:`Rank1Block`."""
        tap = next(t for t in self.taps if t.name == upper)
        if upper in self.fast and rule.form == self.form:
            for p in tap.parents:
                self.engines[f"{upper} -> {p}"] = "fast"
            data = self._step_data(upper)  # the class's rows of this step, moved to the device once
            per_neuron = 8 * max(self.n_images, 1) * max(sum(self._sizes[p] for p in tap.parents), 1) * 3
            chunk = max(1, work_bytes(self.network.device) // per_neuron)
            for j0 in range(0, len(neurons), chunk):
                part = list(neurons[j0:j0 + chunk])
                try:
                    blocks = self.network.relevance_blocks(upper, data, part, self.form, factors)
                except (ValueError, IndexError, KeyError, RuntimeError) as exc:  # arrays that do not fit together
                    if not self._on_disk:
                        raise
                    raise StoreError(f"the store {str(self.stats.path)!r} does not fit this model at step {upper} "
                                     f"({type(exc).__name__}); run `ssa collect --verify` to repair it.") from None
                for block in blocks:  # finite statistics give finite omega
                    yield block._replace(start=block.start + j0)
            return
        if self._autograd is None:
            raise RuntimeError(f"step {upper} needs autograd but no images were given")
        yield from self._autograd.iter_blocks(upper, neurons, rule)
        self.engines.update(self._autograd.engines)

    def scalars(self, tap: str) -> Any:
        if tap not in self._scalars:
            self._scalars[tap] = self._rows(f"scalars/{tap}")
        return self._scalars[tap]

