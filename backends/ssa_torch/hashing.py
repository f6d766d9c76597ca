"""What identifies a prepared network: the model hash, the fingerprint of what statistics depend on, the weights.

:class:`ModelIdentity` is a mixin of :class:`~ssa_torch.network.TorchNetwork`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from torch import fx

    from .taps import TapPlan

__all__ = ["ModelIdentity"]


class ModelIdentity:
    """:meth:`model_hash`, :meth:`fingerprint` and :meth:`weight_arrays` of a prepared network (a mixin)."""

    if TYPE_CHECKING:  # provided by TorchNetwork
        module: Any
        graph_module: fx.GraphModule
        plan: TapPlan
        _model_hash: str | None

    def model_hash(self) -> str:
        """blake2b of the traced graph's code and every weight and buffer (names and bytes); cached per prepare()."""
        if self._model_hash is None:
            import hashlib

            h = hashlib.blake2b(digest_size=16)
            h.update(self.graph_module.code.encode())
            for key, value in self.graph_module.state_dict().items():
                h.update(key.encode())
                h.update(_flat_bytes(value))
            self._model_hash = h.hexdigest()
        return self._model_hash

    def fingerprint(self) -> str:
        """The model hash and the taps (names, shapes, channel axes, parents, the taps that take their class token
        alone): what the statistics depend on."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(self.model_hash().encode())
        h.update(repr([(t.name, t.shape, t.channel_axis, t.parents) for t in self.plan.taps]).encode())
        alone = sorted(getattr(self, "_token_axes", {}).items())
        if alone:  # as before for every network that aggregates all tokens
            h.update(repr(alone).encode())
        return h.hexdigest()

    def weight_arrays(self) -> list[np.ndarray]:
        return [v.detach().float().cpu().numpy() for v in self.module.state_dict().values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()]


def _flat_bytes(value: torch.Tensor) -> np.ndarray:
    """The bytes the model hash reads of a tensor, as a flat C-contiguous host array (hashlib reads its buffer: the
    same bytes as ``.tobytes()``, without copying them); bfloat16 as float32."""
    host = value.detach().cpu().contiguous() if value.dtype != torch.bfloat16 else value.detach().float().cpu()
    return host.numpy().reshape(-1)
