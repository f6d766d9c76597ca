"""A PyTorch model prepared for SSA: :class:`TorchNetwork`.

The class is put together from one mixin per concern; this module keeps the preparation (tracing,
with ``torch.export`` as the fallback, :mod:`ssa_torch.tracing`; canonicalisation; tap discovery),
the plan and the tensors' way on and off the device:

* :class:`~ssa_torch.autograd_steps.AutogradSteps` - cut-semantics execution, tap scalars, logits and
  step relevance by autograd (batched over upper neurons, with a sticky per-neuron fallback; segment-wise);
* :class:`~ssa_torch.closed_form_steps.ClosedFormSteps` - the closed-form plan, statistics and omega from them;
* :class:`~ssa_torch.hashing.ModelIdentity` - the model hash and fingerprint;
* :class:`~ssa_torch.maps.InputMaps` - saliency, activation maps and receptive fields;
* :mod:`ssa_torch.host` - :func:`exact_arithmetic` and :class:`HostCopy`.

The public names of those modules that were defined here are re-exported (``__all__``).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ssa.core.heap import kept_memory
from ssa.core.interfaces import Network, Tap
from ssa.core.stages import StageTimes
from ssa.errors import InvalidInputError, UnsupportedModelError

from .ablation import TorchAblator
from .autograd_steps import AutogradSteps, spatial_mean
from .canon import DEFAULT_PASSES, CanonPass, CanonReport, canonicalize_values
from .closed_form_steps import ClosedFormSteps, steps_summary
from .hashing import ModelIdentity
from .host import HostCopy, exact_arithmetic, wide_convolutions
from .maps import InputMaps
from .segments import Segment, TapValues
from .taps import TapPlan, discover_taps
from .tokens import TOKEN_MODES, class_token_axes
from .tracing import EXPORT_FIX, trace_module

__all__ = ["TorchNetwork", "HostCopy", "exact_arithmetic", "spatial_mean", "trace_module", "steps_summary"]

_VALUES_BYTES = 512 * 2**20  # budget for the tap values kept per batch between the steps of a traversal


def _check_batches(gm: fx.GraphModule, x: torch.Tensor) -> None:
    """Refuse a module that runs on 1 image but not on a batch of 2 (a program exported with a static batch), or
    that gives the two copies of one image different outputs (:func:`_check_deterministic`)."""
    with torch.no_grad():
        try:
            out = gm(torch.cat([x, x]))
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own code or an exported program's guard
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            static = "Guard failed" in text or "_guards_fn" in dict(gm.named_modules())
            why = ("it was exported with a static batch size; re-export it with " + EXPORT_FIX) if static else \
                "ssa runs the images in batches: make the model accept any batch size"
            raise UnsupportedModelError(f"the model runs on 1 image but fails on a batch of 2 ({text}); {why}.") \
                from None
    if isinstance(out, torch.Tensor) and not out.is_floating_point():
        raise UnsupportedModelError(
            f"the model returns {str(out.dtype).replace('torch.', '')} values, not floating-point class scores, so "
            "nothing can be differentiated; return the logits (before argmax, rounding or .long()).")
    _check_deterministic(out)


def _check_deterministic(out: Any, rtol: float = 1e-3) -> None:
    """Refuse a model whose outputs for a batch of two copies of one image differ by more than ``rtol`` of their
    scale: it draws random numbers in ``forward`` (``F.dropout(x, p)`` without ``training=self.training`` stays
    active in eval mode, added noise), so every run would give another graph. Rounding differences between the rows
    of a batch are far smaller; non-finite outputs are left to the logits check."""
    tensors = [out] if isinstance(out, torch.Tensor) else [t for t in (out if isinstance(out, (tuple, list)) else ())
                                                           if isinstance(t, torch.Tensor)]
    for t in tensors:
        if not t.is_floating_point() or t.ndim == 0 or t.shape[0] != 2 or not bool(torch.isfinite(t).all()):
            continue
        a, b = t[0].double(), t[1].double()
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        scale = float(torch.maximum(a.abs().max(), b.abs().max())) if a.numel() else 0.0
        if diff > rtol * scale:
            raise UnsupportedModelError(
                f"the model gives two copies of one image different outputs in one batch (they differ by up to "
                f"{diff:.3g}, {diff / scale:.2g} of the output scale {scale:.3g}), so it is random in forward() and "
                "every run would give another graph; turn off what draws random numbers there (F.dropout(x, p) "
                "needs training=self.training; nn.Dropout is turned off by eval mode, which ssa sets).")


class TorchNetwork(ClosedFormSteps, AutogradSteps, ModelIdentity, InputMaps, Network):
    """A PyTorch ``nn.Module`` (or fx graph) ready for step-wise analysis.

    Parameters
    ----------
    module : the classifier; a deep copy is put in eval mode (the caller's module is not touched).
    name : model name recorded in the results.
    device : "cpu", "cuda", "cuda:1", ...
    taps : tap names chosen by hand (module paths or fx node names), or None for the default taps.
    include_input : add the input image's channels as the lowest tap.
    channel_axes : override the channel axis of taps, by name.
    output_index : which output is the logits when the model returns several.
    tokens : ``"all"`` (a token tap's tokens are aggregated as positions) or ``"cls"`` (the taps that carry a
        class token take it alone; :mod:`ssa_torch.tokens`).

    Saliency, activation maps and receptive fields (:class:`ssa.core.capabilities.SupportsInputMaps`) come from
    the mixin :class:`ssa_torch.maps.InputMaps`.
    """

    def __init__(self, module: nn.Module, *, name: str = "model", device: str = "cpu",
                 taps: Sequence[str] | None = None, include_input: bool = False,
                 channel_axes: Mapping[str, int] | None = None, output_index: int | None = None,
                 tokens: str = "all") -> None:
        if tokens not in TOKEN_MODES:
            raise InvalidInputError(f"tokens must be one of {', '.join(TOKEN_MODES)}, got {tokens!r}.")
        self.tokens = tokens
        self._token_axes: dict[str, int] = {}
        self.module = module
        self.name = name
        self.device = device
        self.tap_names = list(taps) if taps else None
        self.include_input = include_input
        self.channel_axes = dict(channel_axes or {})
        self.output_index = output_index
        self._plan: TapPlan | None = None
        self._gm: fx.GraphModule | None = None
        self._batched_ok = True
        self._model_hash = None
        self.input_shape: tuple[int, ...] | None = None
        self.input_dtype = torch.float32
        self.canon_report: CanonReport | None = None
        self.stages = StageTimes()  # seconds per preparation stage (``ssa check`` prints them)
        self._batches_checked = False  # True: the traced copy is known to run on a batch of 2 (no need to try)
        self._canon_values: dict[str, Any] | None = None  # see _canonicalize
        self._plan_values: dict[str, Any] | None = None  # see ClosedFormSteps.closed_form

    def canon_passes(self) -> Sequence[CanonPass]:
        """The canonicalisation passes :meth:`prepare` runs on the traced copy (front ends add theirs)."""
        return DEFAULT_PASSES

    def _canonicalize(self, gm: fx.GraphModule, x: torch.Tensor, values: dict[str, Any] | None = None,
                      ) -> fx.GraphModule:
        """Bring the traced copy into canonical form (in place); see :mod:`ssa_torch.canon`. ``values``: its nodes'
        values on ``x`` (batch 1), when already computed; the canonical graph's, where the passes computed them
        after their last rewrite, are kept in ``_canon_values`` (an override that changes the graph after this
        sets it to None)."""
        self.canon_report, self._canon_values = canonicalize_values(gm, x, self.canon_passes(),
                                                                    protect=self.tap_names or (), values=values)
        return gm

    # -- preparation ---------------------------------------------------------------
    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        """Trace, canonicalise and discover the taps for inputs like ``example`` (once per input shape).

        A network already prepared for images of the same shape keeps its preparation (a worker
        analysing class after class reuses it).
        """
        if self._plan is not None and self.input_shape == tuple(example.shape[1:]):
            return self._plan.taps
        with self.stages.stage("tracing/canon"):
            return self._prepare(example)

    def _prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        device = torch.device(self.device)
        x = self.to_tensor(example[:1])
        module = copy.deepcopy(self.module).eval().to(device)
        for p in module.parameters():
            p.requires_grad_(False)
        gm = trace_module(module, x).to(device)
        shapes: dict[str, tuple[int, ...]] = {}
        values: dict[str, Any] = {}  # of the traced copy at batch 1: canonicalisation's first values

        class _Shapes(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                values[n.name] = out
                if isinstance(out, torch.Tensor):
                    shapes[n.name] = tuple(out.shape)
                return out

        with torch.no_grad():
            try:
                _Shapes(gm).run(x)
            except Exception as exc:  # noqa: BLE001
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                fix = "check the image shape and layout the model expects"
                if "Guard failed" in text:
                    fix = f"the program was exported for other input shapes; re-export it with {EXPORT_FIX}"
                raise InvalidInputError(f"the model failed on an input of shape {tuple(x.shape)}: {text}; {fix}.") \
                    from None
        if not self._batches_checked:
            _check_batches(gm, x)
        gm = self._canonicalize(gm, x, dict(values))
        shapes.clear()
        values.clear()
        if self._canon_values is not None:  # the last values the passes computed are the canonical graph's
            shapes.update((k, tuple(v.shape)) for k, v in self._canon_values.items() if isinstance(v, torch.Tensor))
        else:
            with torch.no_grad():
                _Shapes(gm).run(x)
        # the canonical graph's values at batch 1, for the closed-form planner (which reads them once, then drops them)
        self._plan_values = self._canon_values
        self._canon_values = None
        self._plan = discover_taps(gm, shapes, tap_names=self.tap_names, include_input=self.include_input,
                                   channel_axes=self.channel_axes, output_index=self.output_index)
        self._token_axes = class_token_axes(gm, self._plan, x) if self.tokens == "cls" else {}
        self._gm = gm
        self._example = x
        self._values = TapValues(_VALUES_BYTES)
        self._segments: dict[str, Segment] = {}
        self._graph_taps: tuple[frozenset[str], frozenset[str]] | None = None  # see AutogradSteps._graph_plan
        self._graphs_fit = True  # False once a batch's values with their autograd graph did not fit the budget
        self._input_node = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
        self._stat_bytes: dict[str, int] = {}
        self._fast = None
        self._model_hash: str | None = None
        self.input_shape = tuple(example.shape[1:])
        return self._plan.taps

    @property
    def plan(self) -> TapPlan:
        if self._plan is None:
            raise RuntimeError("call prepare() first")
        return self._plan

    @property
    def graph_module(self) -> fx.GraphModule:
        if self._gm is None:
            raise RuntimeError("call prepare() first")
        return self._gm

    @property
    def taps(self) -> tuple[Tap, ...]:
        return self.plan.taps

    def tap(self, name: str) -> Tap:
        for t in self.plan.taps:
            if t.name == name:
                return t
        raise InvalidInputError(f"unknown tap {name!r}; taps are: {', '.join(t.name for t in self.plan.taps)}.")

    def to_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, torch.float32)
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def as_array(self, values: Any) -> torch.Tensor:
        """``values`` (numpy, e.g. memory-mapped statistics) as a tensor on the model's device, same dtype.

        On a GPU the host copy goes through pinned memory and the transfer does not block the host.
        """
        if isinstance(values, torch.Tensor):
            return values.to(self.device)
        arr = np.ascontiguousarray(values)
        if not arr.flags.writeable:  # a read-only memory map of the store: nothing writes to these tensors
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                t = torch.from_numpy(arr)
        else:
            t = torch.from_numpy(arr)
        if torch.device(self.device).type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def arithmetic(self, fast_math: bool = False) -> contextlib.AbstractContextManager[Any]:
        """:func:`exact_arithmetic` on this network's device (TF32 too with ``fast_math``); nothing on the CPU."""
        return exact_arithmetic(self.device, fast_math=fast_math)

    def statistics_pass(self) -> contextlib.AbstractContextManager[Any]:
        """On the CPU, for models of mostly wide spatial convolutions (:func:`~ssa_torch.host.wide_convolutions`:
        VGG16, whose pass frees and allocates activations of hundreds of MB per batch), the pass keeps freed memory
        in glibc's heap (:func:`ssa.core.heap.kept_memory`); elsewhere nothing (ResNet-50's pass gained nothing
        from it, and its defaults' first class measured slower: docs/device.md, "Freed memory kept during the
        statistics pass")."""
        if torch.device(self.device).type == "cpu" and wide_convolutions(self.graph_module):
            return kept_memory()
        return contextlib.nullcontext()

    def to_host_async(self, arrays: Mapping[str, Any]) -> HostCopy:
        """Start copying ``arrays`` (device tensors) to pinned host memory without stalling the GPU.

        ``.result()`` waits for the copies and returns numpy arrays (used by the store's writer thread).
        """
        return HostCopy(arrays, self.device)

    # -- capabilities (ssa.core.capabilities) ---------------------------------------------
    def ablator(self, batch_size: int = 256) -> TorchAblator:
        """An ablator of this prepared network (:class:`~ssa.core.capabilities.SupportsAblation`): class logits
        with chosen neurons of chosen taps set to 0 or to their mean map; the caller's module is never modified."""
        return TorchAblator(self, batch_size=batch_size)
