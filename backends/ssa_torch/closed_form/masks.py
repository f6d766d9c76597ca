"""ReLU's derivative read from its output (the statistics pass's masks; :mod:`.collect`, :mod:`.conv`)."""

from __future__ import annotations

import torch

__all__ = ["relu_mask", "ImageMasks"]


def relu_mask(out: torch.Tensor) -> torch.Tensor:
    """ReLU's derivative from its output: 1 where ``out > 0``, else 0, in ``out``'s dtype.

    What autograd gives for ``d sum(relu(z)) / dz`` (``threshold_backward`` of ones: 0 where the output is at
    most 0), one comparison written into a float tensor. A NaN output gives 0 here and 1 from autograd; a NaN
    activation makes its tap's mean NaN, so such a batch is refused before its statistics are used."""
    return torch.gt(out, 0, out=torch.empty_like(out, memory_format=torch.preserve_format))


class ImageMasks:
    """The masks of a batch's ReLU output ``act`` (B, ...), one image at a time, in one buffer of an image: image
    ``b``'s mask lies at the offset from a 64-byte boundary it has in ``relu_mask(act)`` (a new tensor starts on one),
    since the rounding of the matrix products that read it may depend on their operands' alignment; the same values
    as that mask's rows, without a tensor of the whole batch."""

    def __init__(self, act: torch.Tensor) -> None:
        self.act = act
        self.size = act[0].numel()
        self.lanes = 64 // act.element_size()
        self.spare = torch.empty(self.size + self.lanes, dtype=act.dtype, device=act.device)

    def __call__(self, b: int) -> torch.Tensor:
        """Image ``b``'s mask, shaped as ``act[b]`` and laid out as it (channels-last where ``act`` is; valid until
        the next call)."""
        at = (b * self.size - self.spare.data_ptr() // self.act.element_size()) % self.lanes
        img = self.act[b]
        dense = img.dim() == 3 and not img.is_contiguous() and img.permute(1, 2, 0).is_contiguous()
        view = self.spare.as_strided(img.shape, img.stride(), at) if dense else self.spare[at:at + self.size].view(
            img.shape)
        return torch.gt(img, 0, out=view)
