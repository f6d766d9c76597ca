"""Optional capabilities of a loaded :class:`~ssa.core.interfaces.Network`, as runtime-checkable protocols.

The core and the analysis, view and command-line layers ask a network what it can do with
``isinstance(network, Capability)``, never by probing attributes with ``getattr`` and never by
reaching into a backend's internals (fx graphs, onnx2torch modules). A backend implements the
protocols it supports; a missing capability gives one clear error where it is needed
(:func:`require`).

Each protocol has its own section below; keep them small and documented.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from ssa.errors import UnsupportedModelError

__all__ = ["Ablator", "SupportsAblation", "SupportsClassProbabilities", "require"]

C = TypeVar("C")


def require(network: Any, capability: type[C], what: str) -> C:
    """``network`` itself when it has ``capability``; else an :class:`UnsupportedModelError` saying ``what`` needs it."""
    if not isinstance(network, capability):
        raise UnsupportedModelError(
            f"{what} needs a network that supports {capability.__name__.removeprefix('Supports')} (the torch backend "
            f"does); got {type(network).__name__}.")
    return network


# -- ablation (ssa evaluate: faithfulness) ----------------------------------------------------------------------
class Ablator(Protocol):
    """Runs the network with chosen neurons of chosen taps ablated (set to 0, or to their mean map)."""

    def fit_means(self, images: np.ndarray, taps: Sequence[str]) -> None:
        """Learn each tap's mean map over ``images`` (for ``mode="mean"``)."""

    def logits(self, images: np.ndarray, ablate: Mapping[str, np.ndarray], mode: str = "zero") -> np.ndarray:
        """Class logits (B, n_classes) with ``ablate[tap]`` (neuron indices) ablated in every tap at once."""


@runtime_checkable
class SupportsAblation(Protocol):
    def ablator(self, batch_size: int = 256) -> Ablator:
        """An :class:`Ablator` of this network (the caller's model is never modified)."""


# -- class probabilities (grouping images by prediction, --min-confidence) -------------------------------------
@runtime_checkable
class SupportsClassProbabilities(Protocol):
    def class_probabilities(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (B, n_classes) as the model's own runtime computes them (e.g. onnxruntime).

        Networks without this capability get the softmax of their logits.
        """
