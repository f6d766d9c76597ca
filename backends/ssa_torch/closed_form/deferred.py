"""Deferred rows: the default rule's per-image relevance of a wide 1x1 convolution, made when a class asks for it.

For ``gradient_x_activation`` a conv term's statistics are the per-image correlation of ``m`` with the conv input,
A[b, n, c] = W[n, c] * sum_p m[b, n, p] x[b, c, p] for a 1x1 convolution (:func:`.conv.conv_input_relevance`),
(B, N, C) values per batch. Where the layer is wide and its output small (ResNet-50's 1x1 convolutions at 7x7:
2048 x 512 values per image from 49 positions of 2048 + 512 channels), that is many times what it is computed from,
and a class reads only the rows of its kept upper neurons (14-25 % of them at ResNet-50's 7x7 steps). Such a term
keeps ``m`` (B, N, P) and the input at the positions the convolution reads (B, C, P) instead (:func:`collect`), and
computes the picked rows from them when a class asks (:func:`rows`): the statistics pass saves the correlation and
the memory of its output (fresh memory, faulted in page by page), a class pays for its own rows.

The rows are the same products as the per-image kernel's (:func:`.conv._per_image`: one matrix product of an
image's ``m`` rows with its input, then times W), bit for bit (``tests/test_deferred_rows.py`` compares every kernel,
and whole analyses with and without deferring); a row's values do not depend on the rows or images asked with it.
The choice is made from shapes alone (:func:`defers`), so every path (a session's statistics, a store, a device)
takes it alike.

**Rows per class (a one-class run).** Within :func:`rows_per_class` (the network's
:meth:`~ssa_torch.closed_form_steps.ClosedFormSteps.rows_per_class`, which a one-class session enters around its
statistics pass) every convolution whose correlation the CPU pass computes with its per-image kernels
(``shifted_rows``, ``per_image``: one group, 2-D) and whose output channels are a multiple of :data:`ROW_BLOCK`
keeps ``m`` (as a 0/1 ``uint8`` mask where it is a ReLU's output) and its input instead, each in the layout the pass
has (:func:`keep_for_class`), and a class makes its rows with the pass's own kernel restricted to its output
channels (:func:`.conv.class_rows`), bit for bit the pass's values. A run of several classes precomputes (each
further class would pay for its rows again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch

from .linear import LinearOp
from .terms import statistics_slot

__all__ = ["DEFER_RATIO", "ROW_BLOCK", "as_tensor", "collect", "defers", "keep_for_class", "kept_for_class",
           "per_class", "rows", "rows_per_class"]

#: a term defers where its per-image statistics (N x C values) are at least this many times what they are
#: computed from ((N + C) x P values): ResNet-50's 1x1 convolutions at 7x7 (ratios 7-8), not those at 14x14 (about 1)
DEFER_RATIO = 4.0


def defers(op: LinearOp, out_hw: tuple[int, ...]) -> bool:
    """Whether a 1x1 convolution (one group, 2-D, no padding) with output positions ``out_hw`` keeps ``m`` and its
    input rather than their per-image correlation (the caller checks that the term writes its values unscattered
    and without a gate)."""
    w = op.weight
    if w.dim() != 4 or op.groups != 1 or tuple(w.shape[2:]) != (1, 1) or any(op.pad) or len(out_hw) != 2:
        return False
    n, c = int(w.shape[0]), int(w.shape[1])
    p = int(out_hw[0]) * int(out_hw[1])
    return n * c >= DEFER_RATIO * (n + c) * p


def collect(op: LinearOp, m: torch.Tensor, x: torch.Tensor, relu_of: bool) -> dict[str, torch.Tensor]:
    """The statistics of a deferring term: ``"m"`` (B, N, P), the derivative (``relu_of``: ``m`` is a ReLU's output,
    kept as its 0/1 mask), and ``"x"`` (B, C, P), the input at the positions the convolution reads, in ``m``'s dtype;
    written into the whole image set's rows where the statistics pass offers them (:func:`statistics_slot`)."""
    B, n, ho, wo = m.shape
    c = op.weight.shape[1]
    sy, sx = op.stride
    mk = _slot("m", (B, n, ho * wo), m)
    if relu_of:
        torch.gt(m, 0, out=mk.view(B, n, ho, wo))
    else:
        mk.view(B, n, ho, wo).copy_(m)
    xk = _slot("x", (B, c, ho * wo), m)
    xk.view(B, c, ho, wo).copy_(x[:, :, :sy * (ho - 1) + 1:sy, :sx * (wo - 1) + 1:sx])
    return {"m": mk, "x": xk}


def _slot(field: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    slot = statistics_slot(field, shape, like)
    return slot if slot is not None else torch.empty(shape, dtype=like.dtype, device=like.device)


#: fewest rows multiplied at once: this CPU's MKL multiplies fewer than 4 rows by another kernel (other roundings),
#: and torch multiplies products of fewer than 400 terms in its own loop; below either, rows are repeated to fill
MIN_ROWS, MIN_TERMS = 4, 400


def rows(w: torch.Tensor, m: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A[b, h[j], c] as rows (n, B, C), fresh and contiguous, from the kept ``m`` (B, N, P) and ``x`` (B, C, P);
    ``w``: the weight (N, C) in their dtype. One batched product of the picked ``m`` rows with the inputs, then
    times W, as :func:`.conv._per_image` computes it for every row (one product per image and tile of output channels,
    the tile's rows at least :data:`MIN_ROWS`); a few rows are multiplied together with copies of the first, so that
    a row's values never depend on the rows asked with it."""
    n, (b, c, p) = int(h.shape[0]), x.shape
    fill = max(MIN_ROWS, -(-MIN_TERMS // max(1, p * c)))
    hh = torch.cat([h, h[:1].expand(fill - n)]) if 0 < n < fill else h
    # the product written straight into its rows' places (n, B, C): its (B, n, C) view is what bmm fills, image by
    # image (no temporary product, no transposing copy); then times W in place
    out = torch.empty((int(hh.shape[0]), b, c), dtype=m.dtype, device=m.device)
    torch.bmm(m.index_select(1, hh), x.transpose(1, 2), out=out.transpose(0, 1))
    return out[:n].mul_(w.index_select(0, h)[:, None, :])


def as_tensor(value: Any) -> torch.Tensor:
    """Kept statistics as a tensor (a store's numpy rows: a view of them), their dtype unchanged."""
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


#: whether the statistics pass keeps what a class needs to make its own rows (:func:`rows_per_class`)
_PER_CLASS: ContextVar[bool] = ContextVar("ssa_rows_per_class", default=False)
#: rows a class's product is padded to (repeating its first): this CPU's MKL rounds an incomplete block of 16 rows
#: of a product otherwise, so only convolutions with a multiple of it output channels defer per class
ROW_BLOCK = 16
#: the fields of :func:`keep_for_class`, by the layout the statistics pass had: channels-last rows (B, H, W, C), or
#: the contiguous (B, C, H, W)
FIELDS = {True: ("km_nhwc", "kx_nhwc"), False: ("km_nchw", "kx_nchw")}


@contextlib.contextmanager
def rows_per_class(on: bool = True) -> Iterator[None]:
    """Within: :func:`per_class` is ``on`` (the statistics pass of a one-class run)."""
    token = _PER_CLASS.set(bool(on))
    try:
        yield
    finally:
        _PER_CLASS.reset(token)


def per_class() -> bool:
    """Whether the current statistics pass keeps ``m`` and the input of the convolutions that can make a class's
    rows themselves (:func:`rows_per_class`)."""
    return _PER_CLASS.get()


def keep_for_class(m: torch.Tensor, x: torch.Tensor, relu_of: bool, nhwc_m: bool, nhwc_x: bool
                   ) -> dict[str, torch.Tensor]:
    """What a convolution keeps to make a class's rows (:func:`.conv.class_rows`): its ``m`` (B, N, Ho, Wo), as the
    0/1 ``uint8`` mask where it is a ReLU's output (``relu_of``), and its input ``x`` (B, C, H, W), each as rows of
    the layout the statistics pass has (``nhwc_*``: channels-last, kept as (B, H, W, C); else (B, C, H, W)), the
    float32 input written into the whole image set's rows where the pass offers them."""
    fm, fx = FIELDS[nhwc_m][0], FIELDS[nhwc_x][1]
    mr = m.permute(0, 2, 3, 1) if nhwc_m else m
    xr = x.permute(0, 2, 3, 1) if nhwc_x else x
    if relu_of:
        mk = torch.gt(mr, 0).view(torch.uint8)  # laid out as ``mr``: its (B, H, W, C) rows where m is channels-last
    else:
        mk = _slot(fm, tuple(mr.shape), m)
        mk.copy_(mr)
    xk = _slot(fx, tuple(xr.shape), x)
    xk.copy_(xr)
    return {fm: mk, fx: xk}


def kept_for_class(stats: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``m`` (B, N, Ho, Wo) (``uint8``: a mask) and ``x`` (B, C, H, W) as :func:`keep_for_class` kept them, views in
    the statistics pass's layouts; None where the term kept its rows."""
    m = next((as_tensor(stats[f]) for f in ("km_nhwc", "km_nchw") if f in stats), None)
    x = next((as_tensor(stats[f]) for f in ("kx_nhwc", "kx_nchw") if f in stats), None)
    if m is None or x is None:
        return None
    if "km_nhwc" in stats:
        m = m.permute(0, 3, 1, 2)
    if "kx_nhwc" in stats:
        x = x.permute(0, 3, 1, 2)
    return m, x
