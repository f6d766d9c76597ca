"""Strided transposed convolutions by the closed form (issue 19, item 4): ``ConvTranspose{1,2,3}d`` with a stride above
1 or an output padding is the convolution, kernel flipped, of its input spread out (``ZeroInsert``: zeros between the
positions and at the borders; pass ``conv-transpose-as-conv``).

The rewrite against the layer itself (float64, every geometry); the relevance kernel on a spread input against a
per-image autograd loop of the transposed layer itself; and a small upsampling network (strides 2 and 3, output
padding, groups, dilation, 1-D, 2-D and 3-D) whose every step runs by the closed form, as a module and through ONNX,
each step's omega equal to its exact autograd and the graphs equal to the slow reference under both rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_torch.canon.conv_transpose import ZeroInsert, as_conv
from ssa_torch.closed_form.conv import conv_input_relevance
from ssa_torch.closed_form.linear import LinearOp

from ssa.testing.models import RefTap

from . import onnx_models as om
from .closed_form_checks import assert_closed_form_equals_reference

LAYERS = {
    "2d stride 2": nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1),
    "2d stride 2, output padding": nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
    "2d stride (3, 2), groups": nn.ConvTranspose2d(4, 6, (2, 3), stride=(3, 2), groups=2, bias=False),
    "2d stride 2, dilated": nn.ConvTranspose2d(4, 4, 3, stride=2, padding=2, dilation=2, output_padding=1),
    "2d kernel = stride": nn.ConvTranspose2d(4, 6, 2, stride=2),
    "2d stride 1, output padding": nn.ConvTranspose2d(4, 6, 3, padding=1, dilation=2, output_padding=1),
    "1d stride 2": nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1),
    "3d stride (1, 2, 2)": nn.ConvTranspose3d(4, 2, 3, stride=(1, 2, 2), padding=1, output_padding=(0, 1, 0)),
    "2d padding beyond the kernel (a crop)": nn.ConvTranspose2d(4, 6, 3, padding=(3, 1)),
    "2d stride 2, padding beyond the kernel": nn.ConvTranspose2d(4, 6, 2, stride=2, padding=(2, 0)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_the_rewrite_computes_the_layer(name):
    torch.manual_seed(0)
    layer = LAYERS[name].double().eval()
    new = as_conv(layer)
    assert isinstance(new, nn.Sequential) and isinstance(new[0], ZeroInsert)
    x = torch.randn((3, layer.in_channels) + (5,) * (layer.weight.dim() - 2), dtype=torch.float64)
    with torch.no_grad():
        want = layer(x)
        assert want.numel() > 0
        torch.testing.assert_close(new(x), want, rtol=1e-12, atol=1e-12)


def test_zero_insert_places_the_values():
    x = torch.arange(1.0, 7.0).reshape(1, 1, 2, 3)
    y = ZeroInsert((2, 3), (1, 0), (0, 2))(x)
    want = torch.zeros(1, 1, 4, 9)
    want[0, 0, 1::2, 0:7:3] = x[0, 0]
    torch.testing.assert_close(y, want, rtol=0, atol=0)


def test_other_modules_stay():
    assert as_conv(nn.Conv2d(4, 4, 3)) is None
    assert as_conv(nn.ConvTranspose2d(4, 4, 3, stride=2, padding_mode="zeros")) is not None


@pytest.mark.parametrize("name", ["2d stride 2, output padding", "2d stride (3, 2), groups", "2d stride 2, dilated"])
def test_the_kernel_on_the_spread_input_equals_a_per_image_loop_of_the_layer(name):
    """A[b, n, c] = sum_p m[b, n, p] (W x)[...] of the rewritten conv, against autograd's weight gradient of one
    image's transposed conv (sum_p m * ConvTranspose(x; W)) times W, summed over the offsets: the same bilinear
    form, with the rewrite's kernel flip and channel swap undone."""
    torch.manual_seed(1)
    layer = LAYERS[name].double().eval()
    seq = as_conv(layer)
    conv = seq[1]
    x = torch.randn((3, layer.in_channels, 5, 4), dtype=torch.float64)
    with torch.no_grad():
        out = layer(x)
    m = torch.randn(out.shape, dtype=torch.float64)
    op = LinearOp("conv", conv.weight.detach(), conv.groups, conv.stride, conv.dilation, (0, 0, 0, 0))
    got = conv_input_relevance(op, m, seq[0](x))  # (B, C_out, C_in / g) of the rewritten conv
    g, c_in, c_out = layer.groups, layer.in_channels, layer.out_channels
    for b in range(3):
        w = layer.weight.detach().clone().requires_grad_(True)
        y = F.conv_transpose2d(x[b:b + 1], w, None, layer.stride, layer.padding, layer.output_padding, g,
                               layer.dilation)
        (gw,) = torch.autograd.grad((m[b:b + 1] * y).sum(), w)
        per = (gw * layer.weight).flatten(2).sum(-1)  # (C_in, C_out / g)
        want = per.detach().reshape(g, c_in // g, c_out // g).transpose(1, 2).reshape(c_out, c_in // g)
        torch.testing.assert_close(got[b], want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


# --- an upsampling network: every step by the closed form, graphs equal to the reference -----------------------


class _Up1d(nn.Module):
    """A 1-D transposed conv on the rows of a map (as a waveform decoder would have)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x.flatten(2))


def _upsampling_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.ConvTranspose2d(6, 8, 3, stride=2, padding=1, output_padding=1, groups=2), nn.BatchNorm2d(8),
                      nn.ReLU(),
                      nn.ConvTranspose2d(8, 8, (2, 3), stride=(3, 2), padding=(2, 1), dilation=(1, 2)),  # crops rows
                      nn.ReLU(),
                      _Up1d(), nn.ReLU(),
                      nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 5))
    return om.heavy_tail_(m, 4, sigma=2.0).eval()


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_upsampling_net_by_the_closed_form_equals_the_reference(rule, tmp_path):
    model = _upsampling_net()
    x = np.random.default_rng(2).standard_normal((12, 3, 8, 8)).astype(np.float32)
    ref_taps = (RefTap("1", "1"), RefTap("5", "5", 0, 1, ("1",)), RefTap("7", "7", 0, 1, ("5",)),
                RefTap("9", "9", 0, 1, ("7",)), RefTap("13", "13", 0, 1, ("9",)),
                RefTap("logits", "14", 0, 1, ("13",)))
    onnx_path = str(om.export(model, x, tmp_path / "up.onnx", opset=17))
    want = assert_closed_form_equals_reference(model, x, ref_taps, rule, (model, onnx_path), 5)
    assert len(want) >= (1 if rule == "gradient" else 6)
