"""ReLU's derivative read from its output (the statistics pass's masks; :mod:`.collect`, :mod:`.conv`)."""

from __future__ import annotations

import torch

__all__ = ["relu_mask"]


def relu_mask(out: torch.Tensor) -> torch.Tensor:
    """ReLU's derivative from its output: 1 where ``out > 0``, else 0, in ``out``'s dtype.

    What autograd gives for ``d sum(relu(z)) / dz`` (``threshold_backward`` of ones: 0 where the output is at
    most 0), one comparison written into a float tensor. A NaN output gives 0 here and 1 from autograd; a NaN
    activation makes its tap's mean NaN, so such a batch is refused before its statistics are used."""
    return torch.gt(out, 0, out=torch.empty_like(out, memory_format=torch.preserve_format))
