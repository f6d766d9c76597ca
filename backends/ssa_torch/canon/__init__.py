"""Canonicalisation: small, named torch.fx passes that bring a traced network into the form the
closed form (method doc, section 6) recognises, without changing what it computes.

Each pass is a :class:`CanonPass`; :func:`canonicalize` runs a sequence of them on the
network's own traced copy (``TorchNetwork.prepare`` does this; the user's module is never
touched). The default sequence, :data:`DEFAULT_PASSES`:

1. :class:`OutOfPlace` - in-place ops to out-of-place ops;
2. :class:`DropIdentities` - identity ops, eval-mode dropout and no-op casts removed;
   :class:`FuseActivations` - GELU written with erf or tanh, Mish with tanh(softplus), to one module;
   :class:`SplitToSlices` - channel splits (``chunk`` / ``split``) read piece by piece to slices;
3. :class:`CollapsePermutes` - consecutive Transpose / permute ops composed;
4. :class:`ResolveShapes` - reshape targets computed from the input's shape to constants;
5. :class:`LayersAsModules` - ``x @ W``, ``F.linear``, ``F.conv2d`` with constant weights to modules;
   :class:`ConvTransposeAsConv` - transposed convolutions to the convolutions they equal (a strided one of
   its input spread out with zeros);
6. :class:`FoldAffine` - batch-norm and per-channel Sub/Mul/Add/Div constants folded into the
   neighbouring conv or dense layer;
7. :class:`Conv1dAs2d` - 1-D convolutions and poolings as 2-D ones on a height-1 image.

Front ends put their own passes first (the ONNX backend turns its converter's modules into native
torch ops). ``docs/store.md`` describes the passes and the closed form.
"""

from __future__ import annotations

from .activations import FuseActivations
from .affine import FoldAffine
from .base import (
           CanonPass,
           CanonReport,
           PassContext,
           canonicalize,
           canonicalize_values,
           fresh_module_path,
           replace_node,
)
from .conv1d import Conv1dAs2d
from .conv_transpose import ConvTransposeAsConv
from .identity import DropIdentities
from .inplace import OutOfPlace
from .layers import LayersAsModules, set_module
from .permute import CollapsePermutes
from .shapes import ResolveShapes, batch_free_reshape
from .split import SplitToSlices

__all__ = ["CanonPass", "CanonReport", "PassContext", "canonicalize", "canonicalize_values", "DEFAULT_PASSES",
           "OutOfPlace", "DropIdentities", "FuseActivations", "SplitToSlices", "CollapsePermutes", "ResolveShapes",
           "LayersAsModules", "ConvTransposeAsConv", "FoldAffine", "Conv1dAs2d",
           "replace_node", "fresh_module_path", "set_module", "batch_free_reshape"]

DEFAULT_PASSES: tuple[CanonPass, ...] = (OutOfPlace(), DropIdentities(), FuseActivations(), SplitToSlices(),
                                         CollapsePermutes(), ResolveShapes(), LayersAsModules(),
                                         ConvTransposeAsConv(), FoldAffine(),
                                         Conv1dAs2d())
