"""Input maps of a prepared :class:`~ssa_torch.TorchNetwork`: :class:`ssa.core.capabilities.SupportsInputMaps`.

Saliency (the gradient of a neuron's scalar w.r.t. the input image), activation maps and the
gradient of a neuron's strongest position (its receptive field on an image) for the figures
(paper, Fig. 4b,c and Fig. 5), the report and the explorer's reference images.

Unlike the traversal, these maps go through the **whole** network, without cuts: the traced copy
(:attr:`TorchNetwork.graph_module`) runs in an :class:`torch.fx.Interpreter` that records the tap's
fx node and stops there (nothing above the tap is computed). Everything is batched:

* :meth:`InputMaps.activation_maps`: one forward pass per batch of images for all the neurons;
* :meth:`InputMaps.saliency`: one forward pass per batch of images, then one backward pass batched over
  the neurons (``is_grads_batched``; one backward pass per neuron where an op has no batching rule);
* :meth:`InputMaps.pair_maps`: rows that each carry their own neuron: one forward and one backward pass
  per batch of rows (two backward passes for a conv tap: the neuron's scalar and its strongest position).

A neuron's scalar is the mean of its map over positions or, on a tap that takes the class token alone
(``tokens="cls"``), its value at the class token (position 0 of the token axis): the saliency is the gradient of
that value, and its "strongest position" is the class token itself.

A token tap's map (a ViT's ``(N, T, C)`` tap, channels last, ``T = k + g * g`` with ``k <= 8`` leading
non-patch tokens: a class token, register or distillation tokens) is drawn where on the image it fires: the
``k`` leading tokens are dropped and the ``g * g`` patch tokens reshaped row-major to ``(g, g)``, a spatial map
like a conv tap's (:func:`token_grid`). Any other token count keeps the row of its T token values.

Rows never interact because the network is in eval mode, so each result equals the one-neuron,
one-image computation (``tests/backends/ssa_torch/test_maps.py`` checks it against plain torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ssa.core.budget import WORK_BYTES
from ssa.core.capabilities import PairMaps
from ssa.core.interfaces import Tap
from ssa.errors import InvalidInputError

__all__ = ["InputMaps", "token_grid", "MAX_PREFIX_TOKENS"]

MAX_PREFIX_TOKENS = 8  # at most this many leading non-patch tokens (class, distillation, register tokens)


def token_grid(tap: Tap) -> tuple[int, int] | None:
    """``(k, g)`` for a token tap whose T tokens are ``k`` leading non-patch tokens and a ``g`` x ``g`` patch
    grid (``g = isqrt(T)``, ``k = T - g * g <= MAX_PREFIX_TOKENS``, ``g >= 2``); ``None`` for any other tap
    (a conv tap, a dense tap, a token count that is not such a grid)."""
    if len(tap.shape) != 2 or tap.channel_axis != 2:  # (T, C) per image, channels last
        return None
    T = int(tap.shape[0])
    g = math.isqrt(T)
    k = T - g * g
    return (k, g) if g >= 2 and k <= MAX_PREFIX_TOKENS else None


def _as_map(tap: Tap, v: torch.Tensor) -> torch.Tensor:
    """A tap's maps ``(..., *spatial)`` as drawn: a token tap's ``(..., T)`` becomes its patch grid
    ``(..., g, g)`` (:func:`token_grid`); any other map is returned as is."""
    grid = token_grid(tap)
    if grid is None:
        return v
    k, g = grid
    return v[..., k:].reshape(*v.shape[:-1], g, g)


def _spatial(tap: Tap) -> tuple[int, ...]:
    """A tap's map shape per image and neuron: its shape without the channel axis, or a token tap's patch grid."""
    grid = token_grid(tap)
    if grid is not None:
        return (grid[1], grid[1])
    return tuple(d for i, d in enumerate(tap.shape) if i != tap.channel_axis - 1)


class _Found(Exception):
    """Raised once the recorded node is computed: the rest of the network is not run."""


class _Recorder(fx.Interpreter):
    """Runs the traced graph until one node, and keeps that node's value."""

    def __init__(self, gm: fx.GraphModule, node: str) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.extra_traceback = False
        self.node = node
        self.value: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name == self.node:
            self.value = out
            raise _Found
        return out


class InputMaps:
    """:class:`~ssa.core.capabilities.SupportsInputMaps` for :class:`~ssa_torch.TorchNetwork` (a mixin).

    It needs the network's ``graph_module``, ``plan`` (``node_of``: tap name -> fx node), ``tap(name)``
    and ``to_tensor(batch)``; networks built on the PyTorch backend (the ONNX backend's too) inherit it.
    """

    _maps_batched_ok = True  # False after an op without a batching rule: one backward pass per neuron

    if TYPE_CHECKING:  # provided by TorchNetwork
        graph_module: fx.GraphModule
        plan: Any
        _token_axes: dict[str, int]

        def tap(self, name: str) -> Tap: ...

        def to_tensor(self, batch: Any) -> torch.Tensor: ...

    # -- checks and the recording run -------------------------------------------------------------------
    def _map_tap(self, name: str, neurons: Sequence[int]) -> tuple[Tap, str, np.ndarray]:
        tap = self.tap(name)  # an unknown tap is refused there, with the list of taps
        idx = np.asarray(neurons, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= tap.n_neurons)]
        if bad.size:
            raise InvalidInputError(f"neuron must be in [0, {tap.n_neurons - 1}] for tap {name!r}, got {int(bad[0])}.")
        return tap, self.plan.node_of[name], idx

    def _record(self, x: torch.Tensor, node: str) -> torch.Tensor:
        """The value of fx node ``node`` when the (uncut) network runs on ``x``."""
        rec = _Recorder(self.graph_module, node)
        try:
            rec.run(x)
        except _Found:
            pass
        if rec.value is None:  # pragma: no cover - every tap's node lies on the graph
            raise RuntimeError(f"fx node {node!r} was not computed")
        return rec.value

    def _scalar(self, tap: Tap, flat: torch.Tensor) -> torch.Tensor:
        """A neuron's scalar from its map flattened on the last axis: the mean over positions, or, for a tap that
        takes the class token alone (``tokens="cls"``, :mod:`ssa_torch.tokens`), its value at the class token."""
        return flat[..., 0] if tap.name in self._token_axes else flat.mean(dim=-1)

    @staticmethod
    def _channels(value: torch.Tensor, tap: Tap, idx: torch.Tensor) -> torch.Tensor:
        """``(B, K, *spatial)``: the channels ``idx`` of a tap value, channel axis moved to 1."""
        return value.movedim(tap.channel_axis, 1)[:, idx]

    # -- SupportsInputMaps ---------------------------------------------------------------------------------
    def activation_maps(self, images: np.ndarray, tap: str, neurons: Sequence[int], *,
                        batch_size: int = 64) -> np.ndarray:
        t, node, idx = self._map_tap(tap, neurons)
        if len(t.shape) < 2:
            raise InvalidInputError(f"tap {tap!r} is a dense layer (one value per neuron, no map); pick a conv tap.")
        parts = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = self.to_tensor(images[i:i + batch_size])
                sel = torch.as_tensor(idx, device=x.device)
                parts.append(_as_map(t, self._channels(self._record(x, node), t, sel)).float().cpu().numpy())
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, len(idx), *_spatial(t)), np.float32)

    def saliency(self, images: np.ndarray, tap: str, neurons: Sequence[int], *, batch_size: int = 32) -> np.ndarray:
        t, node, idx = self._map_tap(tap, neurons)
        images = np.asarray(images)
        K = len(idx)
        out = np.zeros((len(images), K, *images.shape[1:]), np.float32)
        if K == 0:
            return out
        for i in range(0, len(images), batch_size):
            x = self.to_tensor(images[i:i + batch_size]).detach().requires_grad_(True)
            sel = torch.as_tensor(idx, device=x.device)
            with torch.enable_grad():
                v = self._channels(self._record(x, node), t, sel)
                s = self._scalar(t, v.reshape(v.shape[0], K, -1))  # (B, K): each neuron's scalar
                per = int(x.numel()) * 4 * 3
                chunk = max(1, min(K, WORK_BYTES // max(per, 1)))
                for k0 in range(0, K, chunk):
                    g = self._batched_grads(s, x, k0, min(K, k0 + chunk))  # (k, B, *image)
                    out[i:i + len(x), k0:k0 + g.shape[0]] = g.transpose(0, 1).float().cpu().numpy()
        return out

    def _batched_grads(self, s: torch.Tensor, x: torch.Tensor, k0: int, k1: int) -> torch.Tensor:
        """``(k1 - k0, *x.shape)``: d s[:, k].sum() / d x for k in [k0, k1): one batched backward pass."""
        m = k1 - k0
        if m > 1 and self._maps_batched_ok:
            go = torch.zeros((m, *s.shape), device=s.device, dtype=s.dtype)
            go[torch.arange(m), :, torch.arange(k0, k1)] = 1.0
            try:
                (g,) = torch.autograd.grad(s, x, go, retain_graph=True, allow_unused=True, is_grads_batched=True)
                return g if g is not None else torch.zeros((m, *x.shape), device=x.device, dtype=x.dtype)
            except RuntimeError:
                self._maps_batched_ok = False  # an op without a batching rule: one backward pass per neuron
        rows = []
        for k in range(k0, k1):
            (g,) = torch.autograd.grad(s[:, k].sum(), x, retain_graph=True, allow_unused=True)
            rows.append(g if g is not None else torch.zeros_like(x))
        return torch.stack(rows)

    def pair_maps(self, images: np.ndarray, tap: str, neurons: Sequence[int], *, batch_size: int = 32) -> PairMaps:
        t, node, idx = self._map_tap(tap, neurons)
        images = np.asarray(images)
        if len(idx) != len(images):
            raise InvalidInputError(f"pair_maps needs one neuron per image, got {len(idx)} neurons for "
                                    f"{len(images)} images.")
        spatial = len(t.shape) >= 2
        sal = np.zeros(images.shape, np.float32)
        peak = np.zeros(images.shape, np.float32) if spatial else None
        maps: list[np.ndarray] = []
        for i in range(0, len(images), batch_size):
            x = self.to_tensor(images[i:i + batch_size]).detach().requires_grad_(True)
            sel = torch.as_tensor(idx[i:i + batch_size], device=x.device)
            rows = torch.arange(len(sel), device=x.device)
            with torch.enable_grad():
                v = self._record(x, node).movedim(t.channel_axis, 1)[rows, sel]  # (P, *spatial) or (P,)
                flat = v.reshape(v.shape[0], -1)
                (g,) = torch.autograd.grad(self._scalar(t, flat).sum(), x, retain_graph=spatial, allow_unused=True)
                if g is not None:
                    sal[i:i + len(x)] = g.float().cpu().numpy()
                if spatial:
                    best = flat.detach().argmax(dim=1)
                    if t.name in self._token_axes:  # the class token alone: its strongest position is itself
                        best = torch.zeros_like(best)
                    (g,) = torch.autograd.grad(flat[rows, best].sum(), x, allow_unused=True)
                    if g is not None:
                        peak[i:i + len(x)] = g.float().cpu().numpy()  # type: ignore[index]
                    maps.append(_as_map(t, v.detach()).float().cpu().numpy())
        activations = None
        if spatial:
            activations = np.concatenate(maps, axis=0) if maps else np.zeros((0, *_spatial(t)), np.float32)
        return PairMaps(sal, peak, activations)
