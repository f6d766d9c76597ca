"""Conv3d by the closed form (issue 19, item 4; method doc section 6 over three spatial axes).

The per-image weight-gradient kernel (``conv3d_input_relevance``, through ``conv_input_relevance``) against a plain
loop over images (autograd's weight gradient of one image's conv, times W, summed over the kernel offsets); the
per-axis factoring of a path's input scale; and a small video classifier (Conv3d, BatchNorm3d, pools, a zero pad,
strides, dilation, groups) whose every step runs by the closed form, as a module and through an ONNX export
(opset 17), with every step's omega equal to its exact autograd and graphs equal to the slow reference under both
rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_torch.closed_form import conv3d as conv3d_mod
from ssa_torch.closed_form.conv import conv_input_relevance
from ssa_torch.closed_form.conv3d import factor_scale_3d
from ssa_torch.closed_form.linear import LinearOp, NotClosedForm

import ssa
from ssa.testing.models import RefTap
from ssa.testing.reference import reference_ssa

from . import onnx_models as om
from .closed_form_checks import assert_closed_form_equals_reference
from .graph_keys import assert_same_edges, edges_by_order, predicted_class
from .test_fast import _omega_close

#: name: (out channels, in channels, kernel, stride, pad (front, back, top, bottom, left, right), dilation, groups,
#: input (D, H, W))
CASES = {
    "3x3x3": (6, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1, 1, 1, 1), (1, 1, 1), 1, (4, 6, 6)),
    "strided, dilated": (6, 4, (3, 3, 3), (1, 2, 1), (1, 1, 2, 2, 2, 2), (1, 2, 2), 1, (4, 8, 7)),
    "groups": (6, 4, (2, 3, 3), (2, 1, 2), (0, 0, 1, 1, 1, 1), (1, 1, 1), 2, (5, 6, 6)),
    "depthwise": (4, 4, (3, 3, 3), (1, 1, 1), (1, 1, 1, 1, 1, 1), (1, 1, 1), 4, (3, 5, 5)),
    "asymmetric pad (absorbed)": (5, 3, (2, 2, 2), (1, 1, 1), (1, 0, 0, 1, 0, 1), (1, 1, 1), 1, (3, 4, 5)),
    "1x1x1": (5, 3, (1, 1, 1), (1, 1, 1), (0, 0, 0, 0, 0, 0), (1, 1, 1), 1, (3, 4, 4)),
}


def _case(name: str, dtype: torch.dtype, batch: int) -> tuple[LinearOp, torch.Tensor, torch.Tensor]:
    n, c, k, stride, pad, dil, g, size = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    w = torch.randn((n, c // g, *k), generator=gen, dtype=dtype)
    op = LinearOp("conv", w, g, stride, dil, pad)
    x = torch.randn((batch, c, *size), generator=gen, dtype=dtype)
    out = _conv(op, x)
    m = torch.randn(out.shape, generator=gen, dtype=dtype)
    return op, m, x


def _conv(op: LinearOp, x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    p = op.pad
    xp = F.pad(x, (p[4], p[5], p[2], p[3], p[0], p[1]))
    return F.conv3d(xp, op.weight if w is None else w, stride=op.stride, dilation=op.dilation, groups=op.groups)


def per_image_loop(op: LinearOp, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One image at a time: autograd's weight gradient of sum(m * conv(x)), times W, summed over the offsets."""
    rows = []
    for b in range(x.shape[0]):
        w = op.weight.double().clone().requires_grad_(True)
        (gw,) = torch.autograd.grad((m[b:b + 1].double() * _conv(op, x[b:b + 1].double(), w)).sum(), w)
        rows.append((gw * op.weight.double()).flatten(2).sum(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernel_equals_a_per_image_loop(name):
    op, m, x = _case(name, torch.float64, batch=3)
    got = conv_input_relevance(op, m, x)
    ref = per_image_loop(op, m, x)
    assert got.shape == (3, op.weight.shape[0], op.weight.shape[1])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12 * float(ref.abs().max()))
    op32, m32, x32 = _case(name, torch.float32, batch=3)
    torch.testing.assert_close(conv_input_relevance(op32, m32, x32).double(), per_image_loop(op32, m32, x32),
                               rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["strided, dilated", "groups", "asymmetric pad (absorbed)"])
def test_an_images_values_do_not_depend_on_the_batch(name, monkeypatch):
    """The same bits alone, in a batch of two, in a batch of seven and in chunks of one image (float32)."""
    op, m, x = _case(name, torch.float32, batch=7)
    whole = conv_input_relevance(op, m, x)
    for lo, hi in [(3, 4), (0, 2), (2, 7)]:
        torch.testing.assert_close(conv_input_relevance(op, m[lo:hi], x[lo:hi]), whole[lo:hi], rtol=0, atol=0)
    monkeypatch.setattr(conv3d_mod, "KERNEL_BYTES", 1)
    torch.testing.assert_close(conv_input_relevance(op, m, x), whole, rtol=0, atol=0)


def test_a_2d_kernel_name_is_refused_for_3d():
    op, m, x = _case("3x3x3", torch.float64, batch=1)
    with pytest.raises(ValueError, match="grouped_weight_grad"):
        conv_input_relevance(op, m, x, kernel="per_image")


def test_factor_scale_3d():
    gen = torch.Generator().manual_seed(0)
    s_c, s_d, s_y, s_x = (0.5 + torch.rand(n, generator=gen, dtype=torch.float64) for n in (3, 4, 5, 6))
    scale = s_c[:, None, None, None] * s_d[:, None, None] * s_y[:, None] * s_x
    c, (d, y, x) = factor_scale_3d(scale, (3, 4, 5, 6))
    torch.testing.assert_close(c[:, None, None, None] * d[:, None, None] * y[:, None] * x, scale)
    assert factor_scale_3d(None, (3, 4, 5, 6))[1][2].tolist() == [1.0] * 6
    bad = scale.clone()
    bad[1, 2, 3, 4] *= 2
    with pytest.raises(NotClosedForm, match="vary with both channel and position"):
        factor_scale_3d(bad, (3, 4, 5, 6))


# --- a video classifier: every step by the closed form, graphs equal to the reference ----------------------------


class _Pad(nn.Module):
    """An asymmetric zero pad (absorbed into the next conv; through ONNX a Pad with pads computed from constants)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 1, 0, 1, 1, 0))


def _video_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(3, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.MaxPool3d(2),
                      nn.Conv3d(6, 8, 3, padding=(1, 2, 2), dilation=(1, 2, 2), stride=(1, 2, 1), groups=2),
                      nn.ReLU(), nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False),
                      _Pad(), nn.Conv3d(8, 8, 2), nn.ReLU(),
                      nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 5))
    return om.heavy_tail_(m, 4, sigma=2.0).eval()


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_video_net_by_the_closed_form_equals_the_reference(rule, tmp_path):
    model = _video_net()
    x = np.random.default_rng(1).standard_normal((12, 3, 8, 16, 16)).astype(np.float32)
    target = predicted_class(model, x)
    ref_taps = (RefTap("2", "2"), RefTap("5", "5", 0, 1, ("2",)), RefTap("9", "9", 0, 1, ("5",)),
                RefTap("13", "13", 0, 1, ("9",)), RefTap("logits", "14", 0, 1, ("13",)))
    order = {t.name: i for i, t in enumerate(ref_taps)}
    path = om.export(model, x, tmp_path / "video.onnx", opset=17)
    for branching in (2, 4):
        want = reference_ssa(model, x, ref_taps, target, branching, rule)
        want_by_order = {(order[u], n, order[v], k): val for (u, n, v, k), val in want.items()}
        for source in (model, str(path)):
            net = ssa.load_model(source)
            net.prepare(x)
            steps = net.describe_steps()
            assert len(steps) == 4 and all(v.startswith("fast") for v in steps.values()), steps
            if branching == 2:  # every omega of every step (6 upper neurons) against the step's exact autograd
                assert _omega_close(net, x, rule) == 4
            res = ssa.analyse(source, x, target, branching, rule=rule, selector="tukey", engine="auto")
            assert_same_edges(edges_by_order(res), want_by_order)
        assert len(want) >= 4


# --- transposed convolutions with stride 1: the convolutions they equal (pass conv-transpose-as-conv) ------------


@pytest.mark.parametrize("layer", [
    nn.ConvTranspose1d(4, 6, 3, padding=1, groups=2),
    nn.ConvTranspose2d(4, 6, (3, 2), padding=(2, 0), dilation=(2, 1)),
    nn.ConvTranspose2d(6, 6, 3, groups=3, bias=False),
    nn.ConvTranspose3d(4, 2, (1, 3, 3), padding=(0, 1, 1), groups=2),
], ids=["1d groups", "2d dilated", "2d grows the map", "3d groups"])
def test_a_stride_1_transposed_conv_is_its_conv(layer):
    from ssa_torch.canon.conv_transpose import as_conv

    torch.manual_seed(0)
    layer = layer.eval()
    conv = as_conv(layer)
    assert conv is not None and not isinstance(conv, nn.modules.conv._ConvTransposeNd)
    x = torch.randn((3, layer.in_channels) + (7,) * (layer.weight.dim() - 2), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(conv.double()(x), layer.double()(x), rtol=1e-12, atol=1e-12)


def test_a_strided_transposed_conv_spreads_its_input():
    """A stride above 1 or an output padding: the conv of the input spread out (tests/test_conv_transpose.py)."""
    from ssa_torch.canon.conv_transpose import ZeroInsert, as_conv

    assert isinstance(as_conv(nn.ConvTranspose2d(4, 4, 3, stride=2))[0], ZeroInsert)
    assert isinstance(as_conv(nn.ConvTranspose2d(4, 4, 3, padding=3))[0], ZeroInsert)  # a crop of the input
    assert isinstance(as_conv(nn.ConvTranspose2d(4, 4, 3, padding_mode="zeros", output_padding=1, dilation=2))[0],
                      ZeroInsert)


def _transposed_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.ConvTranspose2d(6, 8, 3, padding=0, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.ConvTranspose2d(8, 16, 3, padding=1, dilation=2), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 5))
    return om.heavy_tail_(m, 4, sigma=2.0).eval()


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_transposed_conv_net_by_the_closed_form_equals_the_reference(rule, tmp_path):
    model = _transposed_net()
    x = np.random.default_rng(2).standard_normal((12, 3, 12, 12)).astype(np.float32)
    ref_taps = (RefTap("1", "1"), RefTap("5", "5", 0, 1, ("1",)), RefTap("7", "7", 0, 1, ("5",)),
                RefTap("11", "11", 0, 1, ("7",)), RefTap("logits", "12", 0, 1, ("11",)))
    onnx_path = str(om.export(model, x, tmp_path / "transposed.onnx", opset=17))
    want = assert_closed_form_equals_reference(model, x, ref_taps, rule, (model, onnx_path), 4)
    assert len(want) >= (1 if rule == "gradient" else 6)  # the per-step omega check above covers every step
