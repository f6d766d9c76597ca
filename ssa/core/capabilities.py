"""Optional capabilities of a loaded :class:`~ssa.core.interfaces.Network`, as runtime-checkable protocols.

The core and the analysis, view and command-line layers ask a network what it can do with
``isinstance(network, Capability)``, never by probing attributes with ``getattr`` and never by
reaching into a backend's internals (fx graphs, onnx2torch modules). A backend implements the
protocols it supports; a missing capability gives one clear error where it is needed
(:func:`require`).

Each protocol has its own section below; keep them small and documented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ssa.errors import UnsupportedModelError

__all__ = ["Ablator", "SupportsAblation", "SupportsClassProbabilities", "require"]

C = TypeVar("C")


def require(network: Any, capability: type[C], what: str) -> C:
    """``network`` itself when it has ``capability``; else an :class:`UnsupportedModelError` saying ``what`` needs
    it."""
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


# -- what `ssa check` shows, and the input a model declares (ssa check, --preprocess) -----------------------
__all__ += ["SupportsCheckReport", "SupportsDefaultInputShape", "SupportsClosedFormSummary",
            "SupportsDeclaredInputShape"]


@runtime_checkable
class SupportsCheckReport(Protocol):
    def check_report(self, images: np.ndarray | None = None) -> str:
        """Lines of its own for ``ssa check`` (e.g. an ONNX file's inputs, outputs and parity with its runtime),
        printed before the taps; prepares the network on ``images`` if it is not prepared yet."""


@runtime_checkable
class SupportsDefaultInputShape(Protocol):
    @property
    def default_input_shape(self) -> tuple[int, ...] | None:
        """The per-image input shape the model declares, when it is fully static (``ssa check`` without images
        runs the model on random inputs of this shape); None when it does not declare one."""


@runtime_checkable
class SupportsClosedFormSummary(Protocol):
    def closed_form_summary(self) -> str:
        """One line: how many steps take the closed form, and which ops make the others use autograd."""


@runtime_checkable
class SupportsDeclaredInputShape(Protocol):
    """A :class:`~ssa.core.interfaces.Backend` capability: read a model file's declared input without loading it."""

    def declared_input_shape(self, source: Any) -> Sequence[int | None] | None:
        """The input shape ``source`` declares, batch axis first, None for a dynamic size (e.g.
        ``(None, 3, 224, 224)``); None when it declares none or cannot be read (loading says why). A
        ``--preprocess`` preset takes the layout and the image size from it."""
