"""The CPU's per-image correlation kernels for a channels-last (NHWC) statistics pass (:mod:`.conv`).

When the statistics forward runs channels-last (:func:`ssa_torch.host.channels_last`), a convolution's input ``x``
and its ``m`` lie as (B, H, W, C) in memory. For one image, the weight gradient at one kernel offset is then
``m_b^T @ x_b(shifted)``: (P, N)^T times (P, C), both operands rows of positions as they lie, so neither kernel copies
an image back to NCHW. The same two forms as :func:`.conv._shifted_rows` and :func:`.conv._per_image`, with positions
as rows instead of columns (their NCHW forms are these kernels' references in ``tests/test_conv_kernels.py``).
"""

from __future__ import annotations

import torch

from .linear import LinearOp
from .masks import ImageMasks

__all__ = ["is_nhwc", "offset_sums_nhwc", "per_image_nhwc", "shifted_rows", "shifted_rows_nhwc", "tile_rows",
           "window_products"]


def is_nhwc(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor lies channels-last (and not also contiguous: one channel or one position)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """One image (C, H, W) as its (H, W, C) view: contiguous where the image lies channels-last."""
    return t.permute(1, 2, 0)


def offset_sums_nhwc(m: torch.Tensor, vy: torch.Tensor, vx: torch.Tensor) -> torch.Tensor:
    """The ``gradient`` form's C[b, n, i, j] = sum_{y, x} m[b, n, y, x] vy[y, i] vx[x, j] (B, N, kh * kw) of a
    channels-last ``m``: the two small products over (W, N) and (H, kw * N) rows as they lie (the contiguous form,
    ``vy^T @ (m @ vx)``, would first copy ``m`` back to NCHW)."""
    B, n, h, _ = m.shape
    kh, kw = vy.shape[1], vx.shape[1]
    t = torch.matmul(vx.t(), m.permute(0, 2, 3, 1))  # (B, H, kw, N)
    c = torch.matmul(vy.t(), t.reshape(B, h, kw * n))  # (B, kh, kw * N)
    return c.view(B, kh * kw, n).transpose(1, 2).contiguous()


def shifted_rows_nhwc(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                      relu_of: bool, tile_bytes: int, tile_n: int | None = None) -> torch.Tensor:
    """:func:`.conv._shifted_rows` with positions as rows: the image copied once into a zero-padded (Hp * Wp, C)
    buffer, ``m`` onto (Ho * Wp, N) rows (zero rows at the ``Wp - Wo`` extra columns); kernel offset (i, j) reads the
    input rows shifted by ``i * dy * Wp + j * dx``, a contiguous block, so each offset is one product
    ``m^T @ x`` over tiles of positions within ``tile_bytes`` (:func:`shifted_rows`)."""
    return shifted_rows(op, m, x, w, out, relu_of, tile_bytes, nhwc=True, tile_n=tile_n)


def shifted_rows(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                 relu_of: bool, tile_bytes: int, nhwc: bool, tile_n: int | None = None) -> torch.Tensor:
    """The shifted-rows form in either layout: :func:`.conv._shifted_rows` (``nhwc`` False: channels as rows of the
    buffers) and :func:`shifted_rows_nhwc` (positions as rows). Both products are written over (positions, channels)
    views of the buffers (for NCHW buffers, their transposes), so each layout multiplies its operands as they lie.
    ``tile_n``: the output channels (per group) the tile of positions is sized for (default ``op``'s): a class's
    rows of a subset of the channels (:func:`.conv.class_rows`) keep the statistics pass's tiles, so its sums."""
    n, cg, kh, kw = op.weight.shape
    g, ng, kk = op.groups, n // op.groups, kh * kw
    B, (ho, wo) = m.shape[0], m.shape[2:]
    top, bottom, left, right = op.pad
    dy, dx = op.dilation
    h, wd = x.shape[2:]
    hp, wp = h + top + bottom, wd + left + right
    span = ho * wp  # the flat output positions, extra columns included
    wk = w.permute(2, 0, 1).contiguous()  # (kk, N, Cg)
    length = hp * wp + dx * (kw - 1)
    if nhwc:
        xbuf = torch.zeros((length, g * cg), dtype=m.dtype, device=m.device)  # (positions, channels)
        xin = xbuf[:hp * wp].view(hp, wp, g * cg)[top:top + h, left:left + wd]
        mbuf = torch.zeros((ho, wp, n), dtype=m.dtype, device=m.device)
        mrows, mwin, image = mbuf.view(span, n), mbuf[:, :wo], _rows
    else:
        xbuf = torch.zeros((g * cg, length), dtype=m.dtype, device=m.device).t()  # (positions, channels) view
        xin = xbuf.t()[:, :hp * wp].view(g * cg, hp, wp)[:, top:top + h, left:left + wd]
        mbuf = torch.zeros((n, ho, wp), dtype=m.dtype, device=m.device)
        mrows, mwin, image = mbuf.view(n, span).t(), mbuf[:, :, :wo], _same
    acc = torch.empty((kk, ng, cg), dtype=m.dtype, device=m.device)
    offsets = [i * dy * wp + j * dx for i in range(kh) for j in range(kw)]
    tile = max(wp, tile_bytes // (((tile_n or ng) + cg) * m.element_size()))
    for b in range(B):
        xin.copy_(image(x[b]))
        if relu_of:  # the image's mask, written where its m goes
            torch.gt(image(m[b]), 0, out=mwin)
        else:
            mwin.copy_(image(m[b]))
        for r0 in range(0, n, ng):  # one group's output channels read its cg input channels
            c0 = (r0 // ng) * cg
            mg, xg = mrows[:, r0:r0 + ng], xbuf[:, c0:c0 + cg]
            for s in range(0, span, tile):
                e = min(span, s + tile)
                for d, o in enumerate(offsets):
                    if s == 0:
                        torch.mm(mg[s:e].t(), xg[o + s:o + e], out=acc[d])
                    else:
                        acc[d].addmm_(mg[s:e].t(), xg[o + s:o + e])
            torch.sum(acc.mul_(wk[:, r0:r0 + ng]), dim=0, out=out[b, r0:r0 + ng])
    return out


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def tile_rows(ng: int, cg: int, element_size: int, tile_bytes: int) -> int:
    """Output channels per product of the per-image kernels (:func:`.conv._per_image`, :func:`per_image_nhwc`): a
    (rows, ``cg``) tile within ``tile_bytes``, at most ``ng`` (a group's output channels), at least 1. One formula
    for the kernels and for :func:`.conv.class_kernel`, whose exactness depends on the tiles it predicts."""
    return max(1, min(ng, tile_bytes // (cg * element_size)))


def per_image_nhwc(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                   relu_of: bool, tile_bytes: int, tile_n: int | None = None) -> torch.Tensor:
    """:func:`.conv._per_image` with positions as rows: the image's shifted input windows copied once into a
    (kk, P, C) buffer (from one zero-padded copy of the image); then per group, tile of output channels (a
    (rows, C / groups) product within ``tile_bytes``) and kernel offset, one product ``m^T @ window`` multiplied by
    W and accumulated into the output rows. ``tile_n``: the output channels (per group) the tile of rows is sized
    for (default ``op``'s; see :func:`shifted_rows`)."""
    n, cg, kh, kw = op.weight.shape
    g, ng, kk = op.groups, n // op.groups, kh * kw
    B, (ho, wo) = m.shape[0], m.shape[2:]
    p = ho * wo
    top, bottom, left, right = op.pad
    (sy, sx), (dy, dx) = op.stride, op.dilation
    h, wd = x.shape[2:]
    wk = w.permute(2, 0, 1).contiguous()  # (kk, N, Cg)
    rows = tile_rows(tile_n or ng, cg, m.element_size(), tile_bytes)
    prod = torch.empty((rows, cg), dtype=m.dtype, device=m.device)
    direct = kk == 1 and op.stride == (1, 1) and not any(op.pad) and x.dtype == m.dtype and is_nhwc(x)
    if direct:
        xpad = buf = None
    else:
        xpad = torch.zeros((h + top + bottom, wd + left + right, g * cg), dtype=m.dtype, device=m.device)
        buf = torch.empty((kk, ho, wo, g * cg), dtype=m.dtype, device=m.device)
    mask = ImageMasks(m) if relu_of else None  # each image's mask, aligned as in a mask of the whole batch
    for b in range(B):
        if xpad is None or buf is None:  # 1x1, stride 1: the image itself
            xw = _rows(x[b]).reshape(1, p, g * cg)
        else:
            xpad[top:top + h, left:left + wd].copy_(_rows(x[b]))
            for d in range(kk):
                i, j = divmod(d, kw)
                buf[d].copy_(xpad[i * dy:i * dy + sy * (ho - 1) + 1:sy, j * dx:j * dx + sx * (wo - 1) + 1:sx])
            xw = buf.view(kk, p, g * cg)
        window_products(out[b], _rows(m[b] if mask is None else mask(b)).reshape(p, n), xw, wk, ng, cg, rows, prod)
    return out


def window_products(out: torch.Tensor, mrows: torch.Tensor, windows: torch.Tensor, wk: torch.Tensor, ng: int,
                    cg: int, rows: int, prod: torch.Tensor) -> torch.Tensor:
    """One image's per-image form from its (P, N) ``m`` rows and (kk, P, C) shifted input windows (views as they
    lie in either layout): per group (``ng`` output, ``cg`` input channels), tile of ``rows`` output channels and
    kernel offset, one product ``m^T @ window`` multiplied by W (``wk``: (kk, N, Cg)) and accumulated into ``out``
    (N, Cg); ``prod`` is a (rows, Cg) buffer. The per-image kernels of both layouts (:func:`.conv._per_image`,
    :func:`per_image_nhwc`) call it."""
    n, kk = mrows.shape[1], windows.shape[0]
    for r0 in range(0, n, ng):  # one group's output channels read its cg input channels
        c0 = (r0 // ng) * cg
        for r in range(r0, r0 + ng, rows):
            t = min(rows, r0 + ng - r)
            acc = out[r:r + t]
            mt = mrows[:, r:r + t].t()
            torch.mm(mt, windows[0, :, c0:c0 + cg], out=acc)
            acc.mul_(wk[0, r:r + t])
            for d in range(1, kk):
                torch.mm(mt, windows[d, :, c0:c0 + cg], out=prod[:t])
                acc.addcmul_(prod[:t], wk[d, r:r + t])
    return out
