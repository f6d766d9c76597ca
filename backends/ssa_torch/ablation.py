"""Ablating neurons of taps: the torch backend's :class:`~ssa.core.capabilities.Ablator` (``ssa evaluate``).

Ablating a neuron sets its channel of the tap tensor to 0 (``"zero"``), to
its mean over a set of images (``"mean"``: the per-position mean map of that
channel, :meth:`TorchAblator.fit_means`), or to its map on a donor image
(``"resample"``: the caller names, per image and neuron, a donor of the pool
given to :meth:`TorchAblator.fit_pool`, whose clean tap values are kept).
The values are replaced while an :class:`torch.fx.Interpreter` runs the network's own
traced copy (:attr:`TorchNetwork.graph_module`, a deep copy made by ``prepare``), so the user's module
is never modified and no hook is
ever registered on it. Ablations in several taps act at once; an ablation
propagates to every tap above it.

With ``tokens="cls"`` (:mod:`ssa_torch.tokens`) a neuron of a tap that takes the class token is its channel at
the class token alone, so only that position (0 of the token axis) is ablated there: set to 0, to the mean
map's value at the class token, or to the donor's; the channel's other tokens keep their values. Every other
tap, and ``tokens="all"``, ablate the channel at every position.

Get one with :meth:`TorchNetwork.ablator` (the capability the analysis layer asks for).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ssa.errors import InvalidInputError

from .interpreters import ModelCodeInterpreter

if TYPE_CHECKING:  # the network imports this module to offer ablator()
    from .network import TorchNetwork

__all__ = ["AblationInterpreter", "TorchAblator"]


class AblationInterpreter(ModelCodeInterpreter):
    """Runs the traced graph, replacing tap values and recording the logits.

    Parameters
    ----------
    gm : the network's traced graph module (not modified).
    edits : fx node name -> ``(mask, fill)``; ``mask`` is a bool tensor broadcastable to the
        node's value (True = ablate), ``fill`` a tensor broadcastable to it (0 or the mean map).
    logits_node : the fx node whose value is the logits (recorded in :attr:`logits`).
    """

    def __init__(self, gm: fx.GraphModule, edits: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 logits_node: str) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.edits = dict(edits)
        self.logits_node = logits_node
        self.logits: torch.Tensor | None = None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        edit = self.edits.get(n.name)
        if edit is not None and isinstance(out, torch.Tensor):
            mask, fill = edit
            out = torch.where(mask, fill.to(out.dtype), out)
        if n.name == self.logits_node and isinstance(out, torch.Tensor):
            self.logits = out
        return out


class TorchAblator:
    """Class logits of a prepared :class:`TorchNetwork` with neurons of taps ablated.

    Construction does no work; :meth:`fit_means` computes the mean maps used by
    ``mode="mean"``.
    """

    def __init__(self, network: TorchNetwork, batch_size: int = 256) -> None:
        self.network = network
        self.batch_size = int(batch_size)
        self.means: dict[str, torch.Tensor] = {}
        self.pool: dict[str, torch.Tensor] = {}

    def _batches(self, images: np.ndarray) -> Iterator[np.ndarray]:
        for i in range(0, images.shape[0], self.batch_size):
            yield images[i:i + self.batch_size]

    def fit_means(self, images: np.ndarray, taps: Sequence[str]) -> None:
        """Per-position mean over ``images`` of every tap in ``taps`` (shape: the tap's per-image shape)."""
        sums: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for batch in self._batches(images):
                interp = self.network.run(batch, grad=False)
                for t in taps:
                    v = interp.raw[t].detach().double().sum(dim=0)
                    sums[t] = v if t not in sums else sums[t] + v
        self.means = {t: (s / max(images.shape[0], 1)).float() for t, s in sums.items()}

    def fit_pool(self, images: np.ndarray, taps: Sequence[str]) -> None:
        """Keep the clean values of every tap in ``taps`` on each of ``images`` (the donors of ``mode="resample"``;
        ``(n_images, *tap shape)`` per tap, in memory on the network's device)."""
        parts: dict[str, list[torch.Tensor]] = {t: [] for t in taps}
        with torch.no_grad():
            for batch in self._batches(images):
                interp = self.network.run(batch, grad=False)
                for t in taps:
                    parts[t].append(interp.raw[t].detach().float())
        self.pool = {t: torch.cat(v, dim=0) for t, v in parts.items() if v}

    def _edit(self, tap: str, neurons: np.ndarray, mode: str, ndim: int,
              donors: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        info = self.network.tap(tap)
        device = torch.device(self.network.device)
        mask = torch.zeros(info.n_neurons, dtype=torch.bool, device=device)
        idx = torch.as_tensor(np.asarray(neurons, dtype=np.int64), device=device)
        mask[idx] = True
        shape = [1] * ndim
        shape[info.channel_axis] = info.n_neurons
        mask = mask.reshape(shape)
        token_axis = self.network._token_axes.get(tap)
        if token_axis is not None:  # tokens="cls": the neuron is its channel at the class token alone
            first = torch.zeros(info.shape[token_axis - 1], dtype=torch.bool, device=device)
            first[0] = True  # position 0 of the token axis
            mask = mask & first.reshape([-1 if a == token_axis else 1 for a in range(ndim)])
        if mode == "zero":
            fill = torch.zeros((), device=device)
        elif mode == "mean":
            if tap not in self.means:
                raise InvalidInputError(f"no mean map for tap {tap!r}; call fit_means() with the taps first.")
            fill = self.means[tap].to(device).unsqueeze(0)
        elif mode == "resample":
            if tap not in self.pool:
                raise InvalidInputError(f"no donor values for tap {tap!r}; call fit_pool() with the taps first.")
            if donors is None:
                raise InvalidInputError(f"resample ablation needs donors for tap {tap!r} (pool index per image and "
                                        "neuron).")
            pool = self.pool[tap]  # (P, C, ...) with the channel axis first after the batch
            rows = torch.as_tensor(np.asarray(donors, dtype=np.int64), device=pool.device)  # (B, C)
            cols = torch.arange(info.n_neurons, device=pool.device).unsqueeze(0)
            fill = pool.movedim(info.channel_axis, 1)[rows, cols].movedim(1, info.channel_axis).to(device)
        else:
            raise InvalidInputError(f"ablation must be 'zero', 'mean' or 'resample', got {mode!r}.")
        return mask, fill

    def logits(self, images: np.ndarray, ablate: Mapping[str, np.ndarray], mode: str = "zero",
               donors: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Logits (n_images, n_classes) with ``ablate[tap]`` (neuron indices) ablated in every tap at once.

        ``donors[tap]`` (``mode="resample"`` only): ``(n_images, n_neurons)`` positions in the pool of
        :meth:`fit_pool`; neuron ``c`` of image ``i`` takes its value on pool image ``donors[tap][i, c]``.
        """
        net = self.network
        plan = net.plan
        out = []
        with torch.no_grad():
            for start, batch in zip(range(0, images.shape[0], self.batch_size), self._batches(images), strict=True):
                part = {t: np.asarray(d)[start:start + batch.shape[0]] for t, d in (donors or {}).items()}

                x = net.to_tensor(batch)
                edits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
                for tap, neurons in ablate.items():
                    if tap == "logits":
                        raise InvalidInputError("the logits tap cannot be ablated; ablate the taps below it.")
                    if len(neurons) == 0:
                        continue
                    if tap == plan.input_tap:
                        mask, fill = self._edit(tap, neurons, mode, x.dim(), part.get(tap))
                        x = torch.where(mask, fill.to(x.dtype), x)
                        continue
                    if tap not in plan.node_of:
                        raise InvalidInputError(f"unknown tap {tap!r}; taps are: "
                                                f"{', '.join(t.name for t in net.taps)}.")
                    edits[plan.node_of[tap]] = self._edit(tap, neurons, mode, len(net.tap(tap).shape) + 1,
                                                          part.get(tap))
                interp = AblationInterpreter(net.graph_module, edits, plan.node_of["logits"])
                interp.args_batch = int(x.shape[0])
                interp.run(x)
                if interp.logits is None:  # pragma: no cover - the plan always names the logits node
                    raise RuntimeError("the logits node was not reached")
                out.append(interp.logits.detach().double().cpu().numpy())
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0))
