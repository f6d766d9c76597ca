"""The closed form of method doc section 6 for 3-D convolutions (``nn.Conv3d``: video and volume classifiers).

The same statistics as a 2-D convolution (:mod:`.conv`), over three spatial axes (depth, height, width):

* ``gradient``: C[b, n, delta] = sum_p m[b, n, p] * s(p + delta) * [p + delta reads inside the input], three small
  matrix products with per-axis validity matrices (the positional input scale factors into s_d s_y s_x);
* ``gradient_x_activation``: A[b, n, c] = sum_delta W[n, c, delta] * G[b, n, c, delta] with G the per-image
  weight gradient of ``m`` against the conv input (:func:`torch.nn.grad.conv3d_weight` with the images of a chunk
  folded into its groups), one kernel for every geometry.

The 2-D code paths do not pass through here: :class:`~ssa_torch.closed_form.conv.ConvTerm` and
:func:`~ssa_torch.closed_form.conv.conv_input_relevance` hand 5-D weights to these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .linear import LinearOp, NotClosedForm
from .terms import WORK_BYTES, chunks

__all__ = ["factor_scale_3d", "check_conv3d_geometry", "offset_sums_3d", "conv3d_input_relevance"]

#: the per-image weight gradients of one chunk of images stay below this many bytes on the CPU (as for 2-D)
KERNEL_BYTES = 16 * 2**20


def factor_scale_3d(scale: torch.Tensor | None, shape: tuple[int, ...]
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Split a per-element input scale (C, D, H, W) into s_c (C,) and (s_d, s_y, s_x) with scale their product."""
    c, *spatial = shape
    if scale is None:
        return (torch.ones(c, dtype=torch.float64), tuple(torch.ones(n, dtype=torch.float64) for n in spatial))
    scale = scale.double().cpu()
    flat = scale.reshape(c, -1)
    j = int(flat.abs().sum(0).argmax())
    s_c = flat[:, j].clone()
    ci = int(s_c.abs().argmax())
    if s_c[ci] == 0:
        return s_c, tuple(torch.ones(n, dtype=torch.float64) for n in spatial)
    pos = (flat[ci] / s_c[ci]).reshape(spatial)
    at = torch.unravel_index(torch.tensor(j), tuple(spatial))
    zi, yi, xi = (int(i) for i in at)
    axes = (pos[:, yi, xi].clone(), pos[zi, :, xi].clone() / pos[zi, yi, xi], pos[zi, yi, :].clone() / pos[zi, yi, xi])
    rebuilt = s_c[:, None, None, None] * axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    if not torch.allclose(scale, rebuilt, rtol=1e-9, atol=1e-12):
        raise NotClosedForm("the path scales a conv input by factors that vary with both channel and position")
    return s_c, axes


def check_conv3d_geometry(op: LinearOp, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    """The head's output shape must be what the 3-D conv computes from its input."""
    n, cg, *k = op.weight.shape
    if len(x_shape) != 4 or x_shape[0] != cg * op.groups or len(out_shape) != 5 or out_shape[1] != n:
        raise NotClosedForm("unexpected convolution shapes")
    size = tuple((x_shape[1 + a] + op.pad[2 * a] + op.pad[2 * a + 1] - op.dilation[a] * (k[a] - 1) - 1)
                 // op.stride[a] + 1 for a in range(3))
    if size != tuple(out_shape[2:]):
        raise NotClosedForm("unexpected convolution geometry")


def offset_sums_3d(m: torch.Tensor, valid: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """C[b, n, (i, j, l)] = sum_{z, y, x} m[b, n, z, y, x] vd[z, i] vy[y, j] vx[x, l], shape (B, N, kd * kh * kw)
    (offsets row-major, as the weight's), with ``valid`` the per-axis (outputs, offsets) matrices."""
    vd, vy, vx = valid
    B, n, d = m.shape[:3]
    t = torch.matmul(vy.t(), torch.matmul(m, vx))  # (B, N, D, kh, kw)
    t = torch.matmul(vd.t(), t.reshape(B, n, d, -1))  # (B, N, kd, kh * kw)
    return t.reshape(B, n, -1)


def conv3d_input_relevance(op: LinearOp, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A[b, n, c] = sum_p m[b, n, p] sum_delta W[n, c, delta] x[b, c, p + delta] for a 3-D conv, (B, N, C / groups).

    Per chunk of images, :func:`torch.nn.grad.conv3d_weight` on the input ``(1, b * C, D, H, W)`` with
    ``groups = b * groups`` gives every image's weight gradient on its own (an image's values do not depend on the
    batch; one image alone is computed twice, as in the 2-D kernel, so that it rounds as in any batch); times W,
    summed over the kernel offsets.
    """
    n, cg, *k = op.weight.shape
    g, B, kk = op.groups, m.shape[0], k[0] * k[1] * k[2]
    w = op.weight.to(device=m.device, dtype=m.dtype).reshape(n, cg, kk)
    pad = op.pad
    sym = all(pad[2 * a] == pad[2 * a + 1] for a in range(3))
    if not sym:  # asymmetric zero padding ('same' with an even kernel): padded here, none in the kernel
        x = F.pad(x, (pad[4], pad[5], pad[2], pad[3], pad[0], pad[1]))
    padding = (pad[0], pad[2], pad[4]) if sym else (0, 0, 0)
    out = torch.empty((B, n, cg), dtype=m.dtype, device=m.device)
    budget = WORK_BYTES if m.device.type != "cpu" else KERNEL_BYTES
    c_in = cg * g
    for lo, hi in chunks(B, n * cg * kk * m.element_size(), budget):
        xb, mb = x[lo:hi].to(m.dtype), m[lo:hi]
        if (hi - lo) * g == 1:
            xb, mb = xb.expand(2, *xb.shape[1:]), mb.expand(2, *mb.shape[1:])
        b = xb.shape[0]
        gw = torch.nn.grad.conv3d_weight(xb.reshape(1, b * c_in, *x.shape[2:]), (b * n, cg, *k),
                                         mb.reshape(1, b * n, *m.shape[2:]), stride=op.stride, padding=padding,
                                         dilation=op.dilation, groups=b * g)  # (b * n, Cg, kd, kh, kw)
        gw = gw.reshape(b, n, cg, kk)[:hi - lo].mul_(w)
        torch.sum(gw, dim=-1, out=out[lo:hi])
    return out
