"""Optional capabilities of a loaded :class:`~ssa.core.interfaces.Network`, as runtime-checkable protocols.

The core and the analysis, view and command-line layers ask a network what it can do with
``isinstance(network, Capability)``, never by probing attributes with ``getattr`` and never by
reaching into a backend's internals (fx graphs, onnx2torch modules). A backend implements the
protocols it supports; a missing capability gives one clear error where it is needed
(:func:`unsupported`, :func:`require`).

Each protocol has its own section below; keep them small and documented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

from ssa.errors import UnsupportedModelError

__all__ = ["Ablator", "SupportsAblation", "SupportsClassProbabilities", "PairMaps", "SupportsInputMaps", "require",
           "unsupported"]

C = TypeVar("C")


def unsupported(network: object, capability: type, what: str) -> UnsupportedModelError:
    """The error for ``network`` lacking ``capability``, which ``what`` needs.

    Typed callers narrow with ``isinstance`` and raise this (a protocol class cannot be passed where ``type[C]``
    is expected: typing spec, "Type and class objects vs protocols"; mypy #4717)::

        if not isinstance(network, SupportsInputMaps):
            raise unsupported(network, SupportsInputMaps, "the saliency figure")
    """
    return UnsupportedModelError(
        f"{what} needs a network that supports {capability.__name__.removeprefix('Supports')} (the torch backend "
        f"does); got {type(network).__name__}.")


def require(network: Any, capability: type[C], what: str) -> C:
    """``network`` itself when it has ``capability``; else an :class:`UnsupportedModelError` saying ``what`` needs
    it (:func:`unsupported`, which type-checked code calls after its own ``isinstance``)."""
    if not isinstance(network, capability):
        raise unsupported(network, capability, what)
    return network


# -- ablation (ssa evaluate: faithfulness) ----------------------------------------------------------------------
class Ablator(Protocol):
    """Runs the network with chosen neurons of chosen taps ablated: set to 0 (``"zero"``), to their mean map
    (``"mean"``), or to their value on a donor image (``"resample"``)."""

    def fit_means(self, images: np.ndarray, taps: Sequence[str]) -> None:
        """Learn each tap's mean map over ``images`` (for ``mode="mean"``)."""

    def fit_pool(self, images: np.ndarray, taps: Sequence[str]) -> None:
        """Keep each tap's clean values on every one of ``images``: the donor pool of ``mode="resample"``."""

    def logits(self, images: np.ndarray, ablate: Mapping[str, np.ndarray], mode: str = "zero",
               donors: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Class logits (B, n_classes) with ``ablate[tap]`` (neuron indices) ablated in every tap at once;
        ``donors[tap]`` is ``(B, n_neurons)`` positions in the pool (``mode="resample"``)."""


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
            "SupportsDeclaredInputShape", "SupportsCheckDetails"]


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
class SupportsCheckDetails(Protocol):
    """Why a model is slow, for ``ssa check``: the time each preparation stage took, the ops each engine takes."""

    stages: Any  # ssa.core.stages.StageTimes: seconds per stage (the caller may add "loading")

    def check_details(self, images: np.ndarray) -> list[str]:
        """Lines for ``ssa check`` of a prepared network: the families of ops each engine (closed form,
        autograd) goes through, and the seconds of each stage (loading, conversion, parity, tracing/canon,
        planning, statistics: the closed form's statistics are collected once on ``images`` to time them)."""


@runtime_checkable
class SupportsDeclaredInputShape(Protocol):
    """A :class:`~ssa.core.interfaces.Backend` capability: read a model file's declared input without loading it."""

    def declared_input_shape(self, source: Any) -> Sequence[int | None] | None:
        """The input shape ``source`` declares, batch axis first, None for a dynamic size (e.g.
        ``(None, 3, 224, 224)``); None when it declares none or cannot be read (loading says why). A
        ``--preprocess`` preset takes the layout and the image size from it."""


# -- work started before a model is loaded (the session's preparation) ---------------------------------------------
__all__ += ["SupportsPrefetch"]


@runtime_checkable
class SupportsPrefetch(Protocol):
    """A :class:`~ssa.core.interfaces.Backend` capability: start, before ``source`` is loaded, work its first
    preparation on ``images`` will need (the ONNX backend: onnxruntime's session and its parity pass on the first
    images, in a thread while torch is imported). Best effort: it raises nothing, and what it computes is used only
    where it equals what loading and preparing would compute."""

    def prefetch(self, source: Any, images: np.ndarray, *, device: str = "cpu", **options: Any) -> None:
        """Start the work for ``source`` loaded with ``device`` and ``options`` and prepared on ``images``."""


# -- preparation that leaves a check to the analysis's own first pass (the session's preparation) -----------------
__all__ += ["SupportsDeferredChecks"]


@runtime_checkable
class SupportsDeferredChecks(Protocol):
    def prepare_deferred(self, example: np.ndarray) -> tuple[Any, ...]:
        """As :meth:`~ssa.core.interfaces.Network.prepare` (the taps), but a check that the first forward pass of the
        analysis can make on the outputs it computes anyway (an ONNX model's parity with its runtime) is left to it:
        made at the latest when the prepared model is first used, so a failure is still refused before any result
        exists, and without a forward pass of its own where the analysis starts with the statistics pass."""


# -- a one-class run's statistics (the session's statistics pass) -----------------------------------------------
__all__ += ["SupportsRowsPerClass"]


@runtime_checkable
class SupportsRowsPerClass(Protocol):
    def rows_per_class(self) -> AbstractContextManager[None]:
        """Within: the statistics pass (and ``statistics_bytes``) keeps what one class needs to make its own rows
        where that is cheaper for a single class than computing every row (the torch backend: the inputs and masks
        of convolutions instead of their per-image correlations), the same values. A session enters it for a
        one-class run (``only_target``) when the kept arrays fit its statistics budget; several classes from one
        pass would each pay for their rows again, so it is not entered for them."""


# -- input maps (ssa figures, ssa report, ssa explore: saliency, activation maps, receptive fields) ---------------
@dataclass(frozen=True)
class PairMaps:
    """Maps of rows that each pair one image with one neuron (:meth:`SupportsInputMaps.pair_maps`).

    saliency : ``(P, *image)``, the gradient of row ``i``'s neuron scalar (its value, the spatial mean of its
        map, or with ``tokens="cls"`` its value at the class token: the quantity SSA works with) with respect to
        row ``i``'s image, through the whole network (no cuts).
    peak_gradient : ``(P, *image)``, the gradient of the neuron's strongest position on the row's image (its
        largest map value; the class token for a class-token neuron); where it is non-zero is that position's
        receptive field on that image. None for a
        dense tap (one value per neuron: the saliency is already its gradient).
    activations : ``(P, *spatial)``, the row's neuron's activation map (a token tap's ``(T, C)`` map: its patch
        tokens as the ``(g, g)`` patch grid, the leading class/register tokens dropped); None for a dense tap.
    """

    saliency: np.ndarray
    peak_gradient: np.ndarray | None
    activations: np.ndarray | None


@runtime_checkable
class SupportsInputMaps(Protocol):
    """Maps over the input image of a tap's neurons (paper, Fig. 4b,c and Fig. 5; the explorer's reference images).

    Batched so that one pass serves many neurons: :meth:`activation_maps` and :meth:`saliency` take a set of
    neurons and return every (image, neuron) combination from one forward pass per batch of images (and, for the
    saliency, one batched backward pass); :meth:`pair_maps` takes one neuron per image, so rows that each carry
    their own neuron share one forward and one backward pass. Rows never interact (the network is in eval mode),
    so every result equals the one-neuron, one-image computation. Unknown taps, neurons out of range and maps of
    a dense tap are refused with :class:`~ssa.errors.InvalidInputError`. Arrays are float32 numpy.
    """

    def activation_maps(self, images: np.ndarray, tap: str, neurons: Sequence[int], *,
                        batch_size: int = 64) -> np.ndarray:
        """``(B, K, *spatial)``: the activation map of each of the ``K`` ``neurons`` of the conv tap ``tap`` on
        every image (``(B, K, g, g)`` for a token tap: its patch grid, as in :class:`PairMaps`)."""

    def saliency(self, images: np.ndarray, tap: str, neurons: Sequence[int], *, batch_size: int = 32) -> np.ndarray:
        """``(B, K, *image)``: the gradient of each neuron's scalar w.r.t. every image (see :class:`PairMaps`)."""

    def pair_maps(self, images: np.ndarray, tap: str, neurons: Sequence[int], *, batch_size: int = 32) -> PairMaps:
        """The maps of ``neurons[i]`` on ``images[i]`` for every row ``i`` (``len(neurons) == len(images)``)."""
