"""Relevance by exact autograd, batched over upper neurons (method doc, section 4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ssa.core.arrays import namespace
from ssa.core.interfaces import DenseBlock, Network, Rule, Tap

__all__ = ['AutogradSource']


class AutogradSource:
    def __init__(self, network: Network, images: np.ndarray, batch_size: int = 32) -> None:
        self.network = network
        self.device = network.device  # where its arrays live (ssa.core.traversal.SupportsDevice)
        self.images = images
        self.batch_size = int(batch_size)
        self.taps: tuple[Tap, ...] = network.taps
        self.n_images = int(images.shape[0])
        self._scalars: dict[str, Any] | None = None
        self.engines: dict[str, str] = {}

    def batches(self) -> Iterator[np.ndarray]:
        for i in range(0, self.n_images, self.batch_size):
            yield self.images[i:i + self.batch_size]

    @property
    def n_batches(self) -> int:
        return -(-self.n_images // self.batch_size)

    def iter_blocks(self, upper: str, neurons: Sequence[int], rule: Rule, factors: bool = False
                    ) -> Iterator[DenseBlock]:
        """The step's relevance per batch of images, every neuron at once (``start`` 0); ``factors`` is not used
        (exact autograd gives rows)."""
        parts: dict[str, list[np.ndarray]] = {}
        for p in next(t for t in self.taps if t.name == upper).parents:
            self.engines[f"{upper} -> {p}"] = "autograd"
        for batch in self.batches():
            rel, scalars = self.network.step_relevance(batch, upper, neurons, rule)
            if self._scalars is None:
                for k, v in scalars.items():
                    parts.setdefault(k, []).append(v)
            for parent, omega in rel.items():
                yield DenseBlock(parent, 0, omega)
        if self._scalars is None and parts:
            self._scalars = {k: _concat(v) for k, v in parts.items()}

    def scalars(self, tap: str) -> np.ndarray:
        if self._scalars is None:
            parts: dict[str, list[np.ndarray]] = {}
            for batch in self.batches():
                for k, v in self.network.tap_scalars(batch).items():
                    parts.setdefault(k, []).append(v)
            self._scalars = {k: _concat(v) for k, v in parts.items()}
        return self._scalars[tap]


def _concat(parts: list[Any]) -> Any:
    """Join per-batch arrays along the image axis, in their own library and on their device."""
    return parts[0] if len(parts) == 1 else namespace(parts[0]).concat(parts, axis=0)
