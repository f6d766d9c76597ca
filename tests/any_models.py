"""Tiny modern classifiers (timm definitions, random heavy-tailed weights, 32 px) and their hand-written taps.

Each family of the method doc's section 4b: ConvNeXt (GELU, LayerNorm, residual streams feeding the next
block's depthwise conv and LayerNorm), DeiT / ViT (tokens (N, T, C), attention, a class token), Swin
(windows, tokens as (N, H, W, C) and (N, H * W, C)). The taps are written out for the slow reference:
every GELU module's output and every residual addition (``op="add"``, counted over the additions of two
tensors in one forward pass, as :func:`ssa.testing.reference.run_cut` counts them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from ssa.testing.models import RefTap, _heavy_tail_

__all__ = ["FAMILIES", "build", "images", "reference_taps"]


def _convnext() -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=10)


def _deit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2,
                             num_classes=10)


def _swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                           num_classes=10)


FAMILIES: dict[str, Callable[[], nn.Module]] = {"convnext": _convnext, "deit": _deit, "swin": _swin}


def build(family: str) -> nn.Module:
    torch.manual_seed(0)
    model = _heavy_tail_(FAMILIES[family](), 1, sigma=2.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def images(n: int, seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, 3, size, size)).astype(np.float32)


def _gelu(path: str, axis: int, *parents: str) -> RefTap:
    return RefTap(path, path, 0, axis, parents)


def _stream(name: str, call: int, axis: int, *parents: str) -> RefTap:
    return RefTap(name, None, call, axis, parents, op="add")


def reference_taps(family: str) -> tuple[RefTap, ...]:
    """The taps by hand, in execution order, logits last (names are the reference's own)."""
    if family == "convnext":
        out: list[RefTap] = []
        below: tuple[str, ...] = ()
        for i in range(4):
            g = _gelu(f"stages.{i}.blocks.0.mlp.act", 3, *below)  # channels last inside the block
            s = _stream(f"stream{i}", i, 1, g.name, *below)  # block output NCHW: GELU branch + skip
            out += [g, s]
            below = (s.name,)
        return (*out, RefTap("logits", "head.fc", 0, 1, below))
    if family == "deit":
        # addition 0 is the position embedding (a parameter): no stream
        return (_stream("s0", 1, 2), _gelu("blocks.0.mlp.act", 2, "s0"), _stream("s1", 2, 2, "blocks.0.mlp.act", "s0"),
                _stream("s2", 3, 2, "s1"), _gelu("blocks.1.mlp.act", 2, "s2"),
                _stream("s3", 4, 2, "blocks.1.mlp.act", "s2"), RefTap("logits", "head", 0, 1, ("s3",)))
    if family == "swin":
        # additions 0 and 3 add the relative position bias inside the attention (windows folded into the batch)
        return (_stream("s0", 1, 3), _gelu("layers.0.blocks.0.mlp.act", 2, "s0"),
                _stream("s1", 2, 2, "layers.0.blocks.0.mlp.act", "s0"), _stream("s2", 4, 3, "s1"),
                _gelu("layers.1.blocks.0.mlp.act", 2, "s2"), _stream("s3", 5, 2, "layers.1.blocks.0.mlp.act", "s2"),
                RefTap("logits", "head.fc", 0, 1, ("s3",)))
    raise KeyError(family)
