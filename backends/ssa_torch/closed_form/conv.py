"""Convolutions (and chains of them composed): the closed form of method doc section 6.

With m the derivative of the upper tap's summed activation with respect to the conv output
(autograd, per image: the activation derivative times everything between the conv and the
activation), W' the weight times the path's per-channel input scale, and the path's positional
input scale s_y s_x (1 except for average pooling that counts padding),

    omega[n, k] = 1 / (P_u * P_l) * sum_delta W'[n, k, delta] * C[n, delta],
    C[n, delta] = sum_p m[n, p] * s(p + delta) * [p + delta reads inside the input]      (gradient)

where W'[n, k, .] sums the conv inputs that belong to parent channel k. C is computed as two
small matrix products with 0/1 validity matrices. A squeeze-excitation gate multiplies W' by a
per-image, per-channel factor. For ``gradient_x_activation`` the per-image relevance is the
weight-gradient of m against the conv input, summed with W over the kernel offsets (one of the kernels of
:func:`conv_input_relevance`, chosen from the shapes by :func:`choose_kernel`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from . import conv_nhwc, deferred
from .conv3d import check_conv3d_geometry, conv3d_input_relevance, factor_scale_3d, offset_sums_3d
from .conv_nhwc import is_nhwc, offset_sums_nhwc, per_image_nhwc, shifted_rows, shifted_rows_nhwc, window_products
from .linear import LinearOp, NotClosedForm
from .masks import ImageMasks, relu_mask
from .planner import Branch, Planner
from .registry import ClosedForm, register_builtin
from .terms import (
    WORK_BYTES,
    Term,
    as_float64,
    as_tensor,
    channels_of,
    chunks,
    is_identity_map,
    place_channels,
    scatter_channels,
    stat_device,
    statistics_slot,
)

__all__ = ["ConvTerm", "ConvForm", "KERNELS", "choose_kernel", "class_kernel", "class_rows", "conv_input_relevance",
           "factor_scale"]


def factor_scale(scale: torch.Tensor | None, shape: tuple[int, ...]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a per-element input scale (C, H, W) into s_c (C,), s_y (H,), s_x (W,) with scale = s_c s_y s_x."""
    c, h, w = shape
    if scale is None:
        one = torch.ones
        return one(c, dtype=torch.float64), one(h, dtype=torch.float64), one(w, dtype=torch.float64)
    scale = scale.double().cpu()
    flat = scale.reshape(c, h * w)
    j = int(flat.abs().sum(0).argmax())
    s_c = flat[:, j].clone()
    ci = int(s_c.abs().argmax())
    if s_c[ci] == 0:
        return s_c, torch.ones(h, dtype=torch.float64), torch.ones(w, dtype=torch.float64)
    pos = (flat[ci] / s_c[ci]).reshape(h, w)
    yi, xi = divmod(j, w)
    s_y, s_x = pos[:, xi].clone(), pos[yi, :].clone() / pos[yi, xi]
    if not torch.allclose(scale, s_c[:, None, None] * s_y[None, :, None] * s_x[None, None, :], rtol=1e-9, atol=1e-12):
        raise NotClosedForm("the path scales a conv input by factors that vary with both channel and position")
    return s_c, s_y, s_x


def _valid(n_out: int, n_in: int, k: int, stride: int, pad: int, dil: int, weight: torch.Tensor,
           device, dtype) -> torch.Tensor:
    """(n_out, k): the input scale at output p, offset d, where p * stride - pad + d * dil reads inside the input."""
    p = torch.arange(n_out, device=device).reshape(-1, 1)
    d = torch.arange(k, device=device).reshape(1, -1)
    pos = p * stride - pad + d * dil
    inside = (pos >= 0) & (pos < n_in)
    w = weight.to(device=device, dtype=dtype)[pos.clamp(0, n_in - 1)]
    return torch.where(inside, w, torch.zeros_like(w))


#: the per-image weight gradients of one chunk of images stay below this many bytes (on the CPU, buffers that
#: stay in the allocator's and the caches' reach are faster than one large temporary; on a GPU, the work budget)
KERNEL_BYTES = 16 * 2**20
#: on the CPU, the per-image form (:func:`_per_image`) keeps one product tile within this many bytes (a core's L2)
TILE_BYTES = 512 * 2**10
#: on the CPU, the shifted-rows form (:func:`_shifted_rows`) multiplies tiles of positions within this many bytes of
#: ``m`` and input rows (a few L2s: measured 1-4 MiB alike on VGG16's layers)
SHIFT_TILE_BYTES = 4 * 2**20
#: on the CPU, a stride-1 convolution with at least this many output positions takes :func:`_shifted_rows`
SHIFT_MIN_POSITIONS = 56 * 56
#: kernels of :func:`conv_input_relevance`, by name (tests run each on every geometry it takes)
KERNELS = ("per_image", "per_offset", "matmul_1x1", "grouped_weight_grad", "shifted_rows")


def choose_kernel(op: LinearOp, m: torch.Tensor) -> str:
    """Which kernel computes :func:`conv_input_relevance` for this geometry (a cost model from shapes only, so the
    choice and the rounding never depend on the batch or on timings).

    On the CPU, a convolution with one group whose shifted input windows of one image fit :data:`KERNEL_BYTES`
    and that reads at least 32 input channels takes :func:`_per_image` (matrix products of one image, a tile of
    output channels and one kernel offset, accumulated in the core's cache); measured on ResNet-50 and VGG16 it
    is the fastest there, most of all for wide late layers (7x7 and 14x14 outputs). Elsewhere (a GPU, groups, few
    channels, large images): a 1x1 convolution is a batched matrix product, few output positions take the
    batched per-offset form, and the rest the framework's backward-weight convolution with images in its groups.
    Before all of these, on the CPU: a stride-1 convolution with one group, a kernel larger than 1x1, at least 32
    input channels and at least :data:`SHIFT_MIN_POSITIONS` output positions takes :func:`_shifted_rows` (per
    offset, a matrix product with the input shifted in place: no copy of the windows); measured on VGG16's layers
    at 224, 112 and 56 px it is 0.8-1.0x the forward convolution, where the backward-weight convolution is 1.0-1.5x
    and the per-image form 1.0-1.4x (docs/device.md).
    """
    n, cg, kh, kw = op.weight.shape
    kk = kh * kw
    p = m.shape[2] * m.shape[3]
    cpu_wide = m.device.type == "cpu" and op.groups == 1 and cg >= 32
    if cpu_wide and kk > 1 and op.stride == (1, 1) and p >= SHIFT_MIN_POSITIONS:
        return "shifted_rows"
    if cpu_wide and kk * cg * p * m.element_size() <= KERNEL_BYTES:
        return "per_image"
    if kk == 1 and not any(op.pad):
        return "matmul_1x1"
    if 2 * p < cg * kk:  # few positions, many weights: no (B, N, Cg, kk) temporary
        return "per_offset"
    return "grouped_weight_grad"


def kernel_of(op: LinearOp, m: torch.Tensor, kernel: str | None) -> str:
    """The kernel :func:`conv_input_relevance` takes: ``kernel``, or by :func:`choose_kernel` (a 3-D conv: its own)."""
    if op.weight.dim() == 5:
        return "grouped_weight_grad"
    return kernel or choose_kernel(op, m)


def conv_input_relevance(op: LinearOp, m: torch.Tensor, x: torch.Tensor, kernel: str | None = None, *,
                         relu_of: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """A[b, n, c] = sum_p m[b, n, p] sum_delta W[n, c, delta] x[b, c, p + delta], shape (B, N, C / groups).

    The inner sum over positions is the weight gradient of the convolution for one image. ``kernel`` (one of
    :data:`KERNELS`; default :func:`choose_kernel`) computes it: per image, tile of output channels and kernel
    offset as matrix products accumulated in cache (:func:`_per_image`); per kernel offset as batched products
    (:func:`_per_offset`); for a 1x1 convolution, one batched product with the (strided) input; or with the
    framework's own backward-weight kernel (:func:`torch.nn.grad.conv2d_weight`) with the images of a chunk
    folded into the groups (input ``(1, b * C, H, W)``, ``groups = b * groups``), then multiplied by W and summed
    over the kernel offsets. Every kernel computes each image on its own, so an image's values do not depend on
    the batch. Chunks of images keep the per-image weight gradients within :data:`KERNEL_BYTES` on the CPU and
    :data:`~ssa_torch.closed_form.terms.WORK_BYTES` on a GPU.

    ``relu_of``: ``m`` is a ReLU's output and the derivative is its 0/1 mask (``relu_mask(m)``, the same values): the
    per-image kernels (:func:`_shifted_rows`, :func:`_per_image`) write one image's mask into their own buffer, so
    that no mask of the whole batch is made; the others make it first. ``out``: a (B, N, C / groups) tensor of
    ``m``'s dtype to write the result into (2-D convolutions; the same values), else a new one. Where ``x`` lies
    channels-last (the CPU's statistics pass: :func:`ssa_torch.host.channels_last`), the per-image kernels read it as
    it lies, positions as rows (:mod:`.conv_nhwc`); the others take any layout.
    """
    if relu_of and kernel_of(op, m, kernel) not in ("shifted_rows", "per_image"):
        m, relu_of = relu_mask(m), False
    if op.weight.dim() == 5:  # a 3-D conv: one kernel (see .conv3d)
        if kernel not in (None, "grouped_weight_grad"):
            raise ValueError("3-D convolutions take the grouped_weight_grad kernel")
        return conv3d_input_relevance(op, m, x)
    n, cg, kh, kw = op.weight.shape
    g = op.groups
    B = m.shape[0]
    kk = kh * kw
    kernel = kernel or choose_kernel(op, m)
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: expected one of {KERNELS}")
    w = op.weight.to(device=m.device, dtype=m.dtype).reshape(n, cg, kk)
    top, bottom, left, right = op.pad
    if out is None:
        out = torch.empty((B, n, cg), dtype=m.dtype, device=m.device)
    budget = WORK_BYTES if m.device.type != "cpu" else KERNEL_BYTES
    per_image = n * cg * kk * m.element_size()
    nhwc = is_nhwc(x)  # a channels-last pass: the per-image kernels read positions as rows (.conv_nhwc)
    if kernel == "per_image":
        if nhwc:
            return per_image_nhwc(op, m, x, w, out, relu_of, TILE_BYTES)
        return _per_image(op, m, x, w, out, relu_of)
    if kernel == "shifted_rows":
        if op.stride != (1, 1):
            raise ValueError("the shifted_rows kernel takes stride-1 convolutions")
        if nhwc:
            return shifted_rows_nhwc(op, m, x, w, out, relu_of, SHIFT_TILE_BYTES)
        return _shifted_rows(op, m, x, w, out, relu_of)
    if kernel == "per_offset":
        return _per_offset(op, m, x, w, out, budget)
    if kernel == "matmul_1x1":  # a batched matrix product with the strided input
        if kk != 1 or any(op.pad):
            raise ValueError("the matmul_1x1 kernel takes 1x1 convolutions without padding")
        sy, sx = op.stride
        ho, wo = m.shape[2:]
        for lo, hi in chunks(B, per_image, budget):
            xs = x[lo:hi, :, :sy * (ho - 1) + 1:sy, :sx * (wo - 1) + 1:sx].to(m.dtype)
            xs = xs.reshape(hi - lo, g, cg, ho * wo)
            mb = m[lo:hi].reshape(hi - lo, g, n // g, ho * wo)
            a = torch.matmul(mb, xs.transpose(-1, -2)).reshape(hi - lo, n, cg)
            torch.mul(a, w[:, :, 0], out=out[lo:hi])
        return out
    sym = top == bottom and left == right
    if not sym:  # an absorbed, asymmetric zero pad: padded here, none in the kernel
        x = F.pad(x, (left, right, top, bottom))
    pad = (top, left) if sym else (0, 0)
    c_in = cg * g
    for lo, hi in chunks(B, per_image, budget):
        xb, mb = x[lo:hi].to(m.dtype), m[lo:hi]
        if (hi - lo) * g == 1:  # one group takes another kernel: the image twice, so that every image's sums
            xb, mb = xb.expand(2, *xb.shape[1:]), mb.expand(2, *mb.shape[1:])  # round alike in any batch
        b = xb.shape[0]
        gw = torch.nn.grad.conv2d_weight(xb.reshape(1, b * c_in, *x.shape[2:]), (b * n, cg, kh, kw),
                                         mb.reshape(1, b * n, *m.shape[2:]), stride=op.stride, padding=pad,
                                         dilation=op.dilation, groups=b * g)  # (b * n, Cg, kh, kw)
        gw = gw.reshape(b, n, cg, kk)[:hi - lo].mul_(w)
        torch.sum(gw, dim=-1, out=out[lo:hi])
    return out


def class_kernel(op: LinearOp, m: torch.Tensor) -> str | None:
    """The per-image kernel (``shifted_rows`` or ``per_image``) the statistics pass runs on this convolution where a
    class can make its rows with it, restricted to its output channels, bit for bit (:func:`class_rows`); else None.

    One group, 2-D, a multiple of :data:`.deferred.ROW_BLOCK` output channels, and for ``per_image`` tiles of output
    channels that are too (or one tile of all): each product the pass makes then has whole blocks of 16 rows, as the
    class's padded ones do. ``m``: a tensor of the pass's ``m`` shape and dtype (only its shape, dtype and device are
    read)."""
    w = op.weight
    if w.dim() != 4 or op.groups != 1 or int(w.shape[0]) % deferred.ROW_BLOCK:
        return None
    kernel = choose_kernel(op, m)
    if kernel == "per_image":
        n, cg = int(w.shape[0]), int(w.shape[1])
        rows = conv_nhwc.tile_rows(n, cg, m.element_size(), TILE_BYTES)
        return kernel if rows == n or rows % deferred.ROW_BLOCK == 0 else None
    return kernel if kernel == "shifted_rows" else None


#: images per call of the pass's kernel when a class makes its rows (:func:`class_rows`): bounds its temporaries
CLASS_ROWS_IMAGES = 4


def class_rows(op: LinearOp, m: torch.Tensor, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """A[b, h[j], c] as rows (n, B, C) from a convolution's kept ``m`` (B, N, Ho, Wo; ``uint8``: the 0/1 mask of a
    ReLU's output) and input ``x`` (B, C, H, W), each in the statistics pass's layout
    (:func:`.deferred.kept_for_class`): the pass's own kernel (:func:`class_kernel`) on the output channels ``h``
    alone, padded to a multiple of :data:`.deferred.ROW_BLOCK` with copies of the first and with the pass's tiles
    (sized for all N channels), so every product has the pass's shape of blocks and every row the pass's values bit
    for bit, whatever is asked with it (``tests/test_rows_per_class.py``)."""
    n, cg, kh, kw = op.weight.shape
    dtype = x.dtype if m.dtype == torch.uint8 else m.dtype
    kernel = class_kernel(op, m.new_empty((0, *m.shape[1:]), dtype=dtype))
    if kernel is None:
        raise ValueError("class_rows: this convolution's statistics are not made by a per-image kernel")
    k = int(h.shape[0])
    fill = -k % deferred.ROW_BLOCK
    hh = torch.cat([h, h[:1].expand(fill)]) if fill else h
    kp = k + fill
    sub = replace(op, weight=op.weight.index_select(0, hh.to(op.weight.device)))
    w = sub.weight.to(device=m.device, dtype=dtype).reshape(kp, cg, kh * kw)
    nhwc_m, nhwc_x = is_nhwc(m), is_nhwc(x)
    hm = hh.to(m.device)
    B = int(m.shape[0])
    res = torch.empty((k, B, cg), dtype=dtype, device=m.device)
    out = torch.empty((min(B, CLASS_ROWS_IMAGES), kp, cg), dtype=dtype, device=m.device)
    for b0 in range(0, B, CLASS_ROWS_IMAGES):
        b1 = min(B, b0 + CLASS_ROWS_IMAGES)
        if nhwc_m:  # the picked channels as channels-last rows, as the pass's m lies
            mp = m[b0:b1].permute(0, 2, 3, 1).index_select(3, hm).to(dtype).permute(0, 3, 1, 2)
        else:
            mp = m[b0:b1].index_select(1, hm).to(dtype)
        xb, ob = x[b0:b1], out[:b1 - b0]
        if kernel == "shifted_rows":
            shifted_rows(sub, mp, xb, w, ob, False, SHIFT_TILE_BYTES, nhwc=nhwc_x, tile_n=int(n))
        elif nhwc_x:
            per_image_nhwc(sub, mp, xb, w, ob, False, TILE_BYTES, tile_n=int(n))
        else:
            _per_image(sub, mp, xb, w, ob, False, tile_n=int(n))
        res[:, b0:b1].copy_(ob[:, :k].transpose(0, 1))
    return res


def _windows(x: torch.Tensor, op: LinearOp, out_hw: tuple[int, int]) -> list[torch.Tensor]:
    """Per kernel offset (row-major), the view of the zero-padded input ``x`` (B, C, H, W) that it reads at
    every output position (B, C, Ho, Wo)."""
    _, _, kh, kw = op.weight.shape
    ho, wo = out_hw
    top, bottom, left, right = op.pad
    xp = F.pad(x, (left, right, top, bottom)) if any(op.pad) else x
    (sy, sx), (dy, dx) = op.stride, op.dilation
    return [xp[:, :, i * dy:i * dy + sy * (ho - 1) + 1:sy, j * dx:j * dx + sx * (wo - 1) + 1:sx]
            for i in range(kh) for j in range(kw)]


def _per_image(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
               relu_of: bool = False, tile_n: int | None = None) -> torch.Tensor:
    """:func:`conv_input_relevance` one image at a time: the image's shifted input windows are copied once into a
    (kk, C, P) buffer; then for each group, tile of output channels (a (rows, C / groups) product within
    :data:`TILE_BYTES`, so it stays in the core's cache) and kernel offset, one matrix product of ``m`` with that
    window, multiplied by W and accumulated into the output rows. No (B, N, C / groups, kk) temporary and no pass
    over memory per offset: what goes to memory is the output, once. ``tile_n``: the output channels (per group) the
    tile of rows is sized for (default ``op``'s; see :func:`class_rows`)."""
    n, cg, kh, kw = op.weight.shape
    g, ng, kk = op.groups, n // op.groups, kh * kw
    B, (ho, wo) = m.shape[0], m.shape[2:]
    p = ho * wo
    wk = w.permute(2, 0, 1).contiguous()  # (kk, N, Cg): each offset's weights contiguous
    rows = conv_nhwc.tile_rows(tile_n or ng, cg, m.element_size(), TILE_BYTES)
    prod = torch.empty((rows, cg), dtype=m.dtype, device=m.device)
    direct = kk == 1 and op.stride == (1, 1) and not any(op.pad) and x.dtype == m.dtype
    wins = _windows(x, op, (ho, wo))
    buf = None if direct else torch.empty((kk, g * cg, ho, wo), dtype=m.dtype, device=m.device)
    mask = ImageMasks(m) if relu_of else None  # each image's mask, aligned as in a mask of the whole batch
    for b in range(B):
        if buf is None:  # 1x1, stride 1: the image itself
            xw = x[b].reshape(1, g * cg, p)
        else:
            for d in range(kk):
                buf[d].copy_(wins[d][b])
            xw = buf.view(kk, g * cg, p)
        mb = (m[b] if mask is None else mask(b)).reshape(n, p)
        # transposed views: the same products as channels-last windows
        window_products(out[b], mb.t(), xw.transpose(1, 2), wk, ng, cg, rows, prod)
    return out


def _shifted_rows(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
                  relu_of: bool = False, tile_n: int | None = None) -> torch.Tensor:
    """:func:`conv_input_relevance` of a stride-1 convolution one image at a time, without im2col: the image is
    copied once into a zero-padded buffer whose rows are ``Wp`` long, flattened, and ``m`` onto the output rows of
    the same length (zeros in the ``Wp - Wo`` extra columns). Kernel offset (i, j) then reads the flat input
    shifted by ``i * dy * Wp + j * dx``: a strided view, so each offset is one matrix product of ``m`` with the
    input as it lies (the extra columns wrap into the next row, where ``m`` is zero). Positions are tiled
    (:data:`SHIFT_TILE_BYTES`) so that a tile of ``m`` and of the input rows is read from cache by every offset;
    the per-offset products of a group are accumulated in a (kk, N / groups, C / groups) buffer, multiplied by W
    and summed over the offsets once per image."""
    return shifted_rows(op, m, x, w, out, relu_of, SHIFT_TILE_BYTES, nhwc=False, tile_n=tile_n)


def _per_offset(op: LinearOp, m: torch.Tensor, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, budget: int
                ) -> torch.Tensor:
    """:func:`conv_input_relevance` as a sum over kernel offsets of ``m`` times the shifted (strided) input, for
    late layers (7x7 or 14x14 outputs of wide convolutions), where the weight gradient would be kk times ``out``."""
    n, cg, kh, kw = op.weight.shape
    g = op.groups
    B, (ho, wo) = m.shape[0], m.shape[2:]
    wg = w.reshape(g, n // g, cg, kh * kw)
    wins = _windows(x, op, (ho, wo))
    for lo, hi in chunks(B, 2 * n * cg * m.element_size(), budget):
        acc = out[lo:hi].view(hi - lo, g, n // g, cg).zero_()
        mb = m[lo:hi].reshape(hi - lo, g, n // g, ho * wo)
        for d, win in enumerate(wins):
            xs = win[lo:hi].to(m.dtype).reshape(hi - lo, g, cg, ho * wo)
            prod = torch.matmul(mb, xs.transpose(-1, -2))
            acc.addcmul_(prod, wg[:, :, :, d])
    return out


def global_input_channels(op: LinearOp, device=None) -> torch.Tensor:
    """(N, C / groups): the global input channel of each weight column."""
    n, cg = op.weight.shape[:2]
    rows = torch.arange(n, device=device)
    return (rows // (n // op.groups))[:, None] * cg + torch.arange(cg, device=device)[None, :]


class ConvTerm(Term):
    """A convolution (possibly a composed linear chain, possibly with a gated input) reaching one parent."""

    label = "conv"
    takes_relu_output = True

    def __init__(self, parent: str, branch: Branch, chan: torch.Tensor) -> None:
        self.parent = parent
        self.op = branch.op
        self.x = branch.x
        self.x_shape = branch.x_shape
        self.chan = chan.long()
        self.gate = branch.gate.node if branch.gate is not None else None
        self.shifted = branch.shifted
        if branch.op.weight.dim() == 5:  # a 3-D conv: one scale per spatial axis
            self.s_c, self.s_axes = factor_scale_3d(branch.scale, branch.x_shape)
        else:
            self.s_c, self.s_y, self.s_x = factor_scale(branch.scale, branch.x_shape)
            self.s_axes = (self.s_y, self.s_x)
        if branch.op.layers > 1:
            self.label = "conv chain"
        if self.gate is not None:
            self.label = "gated conv"
        self._static: dict[str, torch.Tensor] = {}

    @property
    def needs(self) -> tuple[str, ...]:
        return (self.x,) + ((self.gate,) if self.gate else ())

    def place(self, device: torch.device) -> None:
        """The channel map and its column plan (and, for grouped convs, the per-column parent map) on ``device``."""
        self.chan = place_channels(self.chan, self.n_parent, device)
        if self.op.groups > 1:
            self._index(device)

    def _index(self, device) -> torch.Tensor:
        """(N, C / groups): the parent channel of each weight column (-1: another parent); made once per device."""
        key = f"index{device}"
        if key not in self._static:
            self._static[key] = self.chan[global_input_channels(self.op, self.chan.device)].to(device)
        return self._static[key]

    def _weight(self, device) -> torch.Tensor:
        """W' (N, C / groups, kk) in float64: the weight times the per-channel input scale."""
        key = f"w{device}"
        if key not in self._static:
            w = self.op.weight.to(device=device, dtype=torch.float64)
            n, cg = w.shape[:2]
            s = self.s_c.to(device)[global_input_channels(self.op, device)]
            self._static[key] = (w.reshape(n, cg, -1) * s[:, :, None])
        return self._static[key]

    def _wk(self, device) -> torch.Tensor:
        """(N, K, kk): W' summed over the conv inputs of each parent channel."""
        key = f"wk{device}"
        if key not in self._static:
            w = self._weight(device).transpose(1, 2)  # (N, kk, Cg)
            self._static[key] = self._to_parents(w, 0).transpose(1, 2).contiguous()
        return self._static[key]

    def _to_parents(self, values: torch.Tensor, n_axis: int) -> torch.Tensor:
        """Sum the last axis (the weight columns Cg of each output channel, on axis ``n_axis``) into parents."""
        if self.op.groups == 1:  # every output channel reads the same input channels
            return scatter_channels(values, self.chan, self.n_parent)
        idx = self._index(values.device)  # (N, Cg): per output channel, the parent of each column
        shape = [1] * values.dim()
        shape[n_axis], shape[-1] = idx.shape
        return scatter_channels(values, idx.reshape(shape), self.n_parent)

    def statistics(self, m: torch.Tensor, values: Mapping[str, torch.Tensor], forms: Sequence[str], *,
                   relu_of: bool = False):
        """See :meth:`Term.statistics`; ``relu_of``: ``m`` is a ReLU's output, the derivative its mask."""
        if relu_of and "gradient" in forms:
            m, relu_of = relu_mask(m), False
        out: dict[str, torch.Tensor] = {}
        B = m.shape[0]
        n, _, *k = self.op.weight.shape
        if "gradient" in forms:
            key = ("valid", tuple(m.shape[2:]), str(m.device), m.dtype)
            if key not in self._static:  # made once per device: no small host-to-device copies per batch
                op = self.op
                self._static[key] = tuple(  # type: ignore[assignment]
                    _valid(m.shape[2 + a], self.x_shape[1 + a], k[a], op.stride[a], op.pad[2 * a], op.dilation[a],
                           self.s_axes[a], m.device, m.dtype) for a in range(len(k)))
            valid = self._static[key]
            if len(k) == 3:
                out["g"] = offset_sums_3d(m, valid)  # type: ignore[arg-type]
            elif is_nhwc(m):  # a channels-last pass: the same two products over m's rows of channels as they lie
                out["g"] = offset_sums_nhwc(m, *valid)  # type: ignore[misc]
            else:
                vy, vx = valid  # type: ignore[misc]
                # C[b, n, i, j] = sum_{y, x} m[b, n, y, x] vy[y, i] vx[x, j], as two small matmuls
                out["g"] = torch.matmul(vy.t(), torch.matmul(m, vx)).reshape(B, n, k[0] * k[1])
            if self.gate is not None:
                out["gate"] = values[self.gate].reshape(B, -1).to(m.dtype)
        if "gradient_x_activation" in forms:
            x = values[self.x]
            if self.gate is not None:  # one factor per image and channel (a 2-D or 3-D map)
                x = x * values[self.gate].reshape(B, -1, *([1] * (x.dim() - 2)))
            if self.defers(m):  # m and the input, not their correlation: a class computes its rows (.deferred)
                out.update(deferred.collect(self.op, m, x, relu_of))
                return out
            if self.defers_per_class(m):  # a one-class run: the class makes its rows with the pass's kernel
                out.update(deferred.keep_for_class(m, x, relu_of, is_nhwc(m), is_nhwc(x)))
                return out
            cg = self.op.weight.shape[1]
            # written straight into the whole image set's rows where the parents are the columns themselves
            slot = statistics_slot("a", (B, n, cg), m) if self.op.groups == 1 and len(k) == 2 and is_identity_map(
                self.chan, self.n_parent) else None
            a = conv_input_relevance(self.op, m, x, relu_of=relu_of, out=slot)  # (B, N, Cg)
            out["a"] = self._to_parents(a, 1)
        return out

    def defers(self, m: torch.Tensor) -> bool:
        """Whether the default rule's statistics are ``m`` and the input, the rows made per class
        (:func:`.deferred.defers`: a wide 1x1 convolution with few output positions, its values unscattered, no
        gate)."""
        return self.gate is None and deferred.defers(self.op, tuple(m.shape[2:])) and is_identity_map(
            self.chan, self.n_parent)

    def defers_per_class(self, m: torch.Tensor) -> bool:
        """Whether, in a one-class run's statistics pass (:func:`.deferred.per_class`), the default rule's statistics
        are ``m`` and the input, a class's rows made with the pass's own kernel (:func:`class_kernel`; no gate, its
        values unscattered)."""
        return deferred.per_class() and self.gate is None and class_kernel(self.op, m) is not None \
            and is_identity_map(self.chan, self.n_parent)

    def rank1(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str):
        """A 1x1 convolution without a gate under the gradient rule: omega = W'[n, k] * C[i, n]."""
        if form != "gradient" or self.gate is not None:
            return None
        raw = stats["g"]  # (B, N, kk)
        if raw.shape[2] != 1:
            return None
        dev = stat_device(raw)
        h, fed = self.head_channels(neurons, dev)
        return channels_of(raw, h)[:, :, 0].t(), self._wk(dev).index_select(0, h)[:, :, 0], fed

    def rank1_order(self, neurons: Sequence[int], device: Any) -> torch.Tensor | None:
        """The weights' rows sorted once per device (stable), picked for ``neurons``."""
        if self.gate is not None:
            return None
        key = f"wk-order{device}"
        if key not in self._static:
            wk = self._wk(device)
            if wk.shape[2] != 1:  # rank-1 only for 1x1 kernels
                return None
            self._static[key] = torch.argsort(wk[:, :, 0], dim=1, stable=True)
        h, _ = self.head_channels(neurons, device)
        return self._static[key].index_select(0, h)  # rows picked: index_select (2-3x faster than [h])

    def omega(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str) -> torch.Tensor:
        if form == "gradient":
            raw = stats["g"]  # (B, N, kk)
            h, fed = self.head_channels(neurons, stat_device(raw))
            cs = channels_of(raw, h)  # (B, n, kk)
            dev = cs.device
            if self.gate is None:
                om = torch.einsum("jkd,bjd->jbk", self._wk(dev).index_select(0, h), cs)
            else:
                g = as_tensor(stats["gate"], dev)  # (B, C)
                cols = global_input_channels(self.op, dev)[h]  # (n, Cg)
                p = torch.einsum("jcd,bjd->jbc", self._weight(dev)[h], cs) * g[:, cols].transpose(0, 1)
                if self.op.groups == 1:
                    om = scatter_channels(p, self.chan, self.n_parent)
                else:  # (n, B, Cg) with the selected output channels first
                    om = scatter_channels(p, self._index(dev)[h][:, None, :], self.n_parent)
        else:
            rows, fed = self.own_rows(stats, neurons, form)  # type: ignore[misc]  # always, for this form
            return self.finish(as_float64(rows), fed, inplace=True)
        return self.finish(om, fed, inplace=True)  # om is the einsum's or the scatter's own: scaled in place

    def own_rows(self, stats: Mapping[str, Any], neurons: Sequence[int], form: str
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The input relevance ``a`` (B, N, K) picked for the upper neurons (gradient x activation): from the
        statistics, or made from ``m`` and the input where the term deferred it (:mod:`.deferred`)."""
        if form == "gradient":
            return None
        if "a" in stats:
            return self.picked_relevance(stats, neurons)
        kept = deferred.kept_for_class(stats)
        if kept is not None:  # a one-class run: the pass's kernel on the class's output channels
            h, fed = self.head_channels(neurons, kept[0].device)
            return class_rows(self.op, kept[0], kept[1], h), fed
        m, x = deferred.as_tensor(stats["m"]), deferred.as_tensor(stats["x"])
        h, fed = self.head_channels(neurons, m.device)
        return deferred.rows(self._weight_as(m), m, x, h), fed

    def _weight_as(self, m: torch.Tensor) -> torch.Tensor:
        """W (N, C) of a 1x1 convolution in ``m``'s dtype and on its device (the deferred rows' factor, unscaled);
        made once per dtype and device."""
        key = f"w{m.dtype}{m.device}"
        if key not in self._static:
            self._static[key] = self.op.weight.to(device=m.device, dtype=m.dtype).reshape(m.shape[1], -1)
        return self._static[key]


def check_conv_geometry(op: LinearOp, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    """The head's output shape must be what the (composed) conv computes from its input."""
    if op.weight.dim() == 5:
        return check_conv3d_geometry(op, x_shape, out_shape)
    n, cg, kh, kw = op.weight.shape
    if len(x_shape) != 3 or x_shape[0] != cg * op.groups or len(out_shape) != 4 or out_shape[1] != n:
        raise NotClosedForm("unexpected convolution shapes")
    top, bottom, left, right = op.pad
    h = (x_shape[1] + top + bottom - op.dilation[0] * (kh - 1) - 1) // op.stride[0] + 1
    w = (x_shape[2] + left + right - op.dilation[1] * (kw - 1) - 1) // op.stride[1] + 1
    if (h, w) != tuple(out_shape[2:]):
        raise NotClosedForm("unexpected convolution geometry")


@register_builtin
class ConvForm(ClosedForm):
    """``nn.Conv2d`` (zero padding, any stride / dilation / groups, a zero pad before it absorbed) and ``nn.Conv3d``
    (zero padding, any stride / dilation / groups; :mod:`.conv3d`)."""

    name = "conv"
    kinds = ("conv",)

    def terms(self, node: fx.Node, ctx: Planner) -> list[Term]:
        from .gate import gate_terms

        op, x = ctx.layer_op(node)
        out_shape = tuple(ctx.value(node).shape)
        terms: list[Term] = []
        gates = {}
        for br in ctx.resolve(x, op):
            check_conv_geometry(br.op, br.x_shape, out_shape)
            terms.extend(ConvTerm(p, br, br.channels_of(p)) for p in br.parents)
            if br.gate is not None:
                gates[br.gate.node] = br.gate
        for gate in gates.values():
            terms.extend(gate_terms(gate, ctx))
        return terms
