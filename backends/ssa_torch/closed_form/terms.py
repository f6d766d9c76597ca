"""The :class:`Term` protocol and the helpers every term uses.

A term is one linear contribution to an upper tap's pre-activation that reaches one parent
tap (method doc, section 6): a conv or dense layer applied to a path from the parent, a skip
connection, a gate. It says

* **what to collect** (:meth:`Term.statistics`): per-image arrays computed in the one forward
  pass from ``m``, the derivative of the upper tap's summed activation with respect to the
  term's *head* (the layer output, or the parent tap for a skip), and the values of the nodes it
  names in :attr:`Term.needs`;
* **how to reconstruct omega** (:meth:`Term.omega`) for any upper neurons from those arrays:
  omega[j, i, k] of upper neuron ``neurons[j]``, image i and parent neuron k.

Statistics are computed with torch on the model's device. :meth:`Term.omega` takes numpy or
torch arrays, computes in float64 on the arrays' device and returns a torch tensor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = ["Term", "as_tensor", "scatter_channels", "chunks", "WORK_BYTES"]

WORK_BYTES = 256 * 2**20  # memory budget of one chunk of an intermediate array


def as_tensor(value: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """``value`` (numpy array, memmap or tensor) as a float64 tensor, on ``device`` when given."""
    if isinstance(value, torch.Tensor):
        t = value
    else:  # numpy (a read-only memory map too): the float64 copy is writable
        t = torch.from_numpy(np.asarray(value, dtype=np.float64))
    if device is not None:
        t = t.to(device)
    return t.to(torch.float64)


def scatter_channels(values: torch.Tensor, chan: torch.Tensor, k: int) -> torch.Tensor:
    """Sum the last axis of ``values`` into ``k`` bins by ``chan`` (entries with ``chan == -1`` are dropped).

    ``chan`` has the length of ``values``' last axis (one bin per column: ``index_add``), or the shape
    of ``values`` itself (a bin per element: ``scatter_add``).
    """
    chan = chan.to(values.device)
    idx = torch.where(chan >= 0, chan, torch.full_like(chan, k))
    out = torch.zeros(values.shape[:-1] + (k + 1,), dtype=values.dtype, device=values.device)
    if idx.dim() == 1:
        out.index_add_(values.dim() - 1, idx, values)
    else:
        out.scatter_add_(-1, idx.expand(values.shape).contiguous(), values)
    return out[..., :k]


def chunks(n: int, bytes_per_item: int, budget: int = WORK_BYTES) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` with about ``budget`` bytes per chunk."""
    step = max(1, min(n, budget // max(int(bytes_per_item), 1)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


class Term:
    """One closed-form term of a step (subclass it to add a closed form for a new op).

    Attributes set by the planner
    -----------------------------
    parent : the parent tap the term reaches.
    head : the fx node whose derivative ``m`` the statistics are computed from.
    out_index : (N_upper,) long tensor: the head channel that feeds each upper channel (-1: none).
    scale : 1 / (P_u * P_l), the spatial means of the upper neuron and of the parent.
    n_parent : the parent's number of neurons K.
    """

    #: short label for ``ssa check`` ("conv", "linear", "identity", "gate", ...)
    label: ClassVar[str] = "term"

    parent: str
    head: str
    out_index: torch.Tensor
    scale: float = 1.0
    n_parent: int = 0

    @property
    def forms(self) -> frozenset[str]:
        """The closed forms this term has ("gradient", "gradient_x_activation")."""
        return frozenset({"gradient", "gradient_x_activation"})

    @property
    def needs(self) -> tuple[str, ...]:
        """fx node names whose values :meth:`statistics` reads (kept during the forward pass)."""
        return ()

    def statistics(self, m: torch.Tensor, values: Mapping[str, torch.Tensor], forms: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
        """Per-image arrays (first axis: image) for the given forms, from the head derivative ``m``."""
        raise NotImplementedError

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        """omega (len(neurons), B, K) in float64 from this term's statistics."""
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------------------
    def head_channels(self, neurons: Sequence[int], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(head channel of each upper neuron, clamped to 0 where none; mask of the neurons this term feeds)."""
        idx = self.out_index.to(device)[torch.as_tensor(list(neurons), dtype=torch.long, device=device)]
        return idx.clamp_min(0), idx >= 0

    def finish(self, om: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """Scale, and zero the rows of upper neurons this term does not feed."""
        om = om * self.scale
        if not bool(fed.all()):
            om = om * fed.to(om.dtype).reshape(-1, *([1] * (om.dim() - 1)))
        return om
