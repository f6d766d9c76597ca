"""The closed-form package's pieces, and its new forms step by step on real architectures:
linear-chain composition against the layers applied in turn, the input-scale factorisation, the
channel scatter, squeeze-excitation gates and linear chains (torchvision's MobileNetV3 and
MobileNetV2) against autograd omega, and the summary line of ``ssa check``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from ssa_torch.closed_form import LinearOp, NotClosedForm, scatter_channels
from ssa_torch.closed_form.conv import factor_scale

import ssa
from ssa.cli import main
from ssa.testing.models import _heavy_tail_

from .test_fast import _omega_close


def _conv(op: LinearOp, x: torch.Tensor) -> torch.Tensor:
    top, bottom, left, right = op.pad
    return F.conv2d(F.pad(x, (left, right, top, bottom)), op.weight, stride=op.stride, dilation=op.dilation,
                    groups=op.groups)


def _jacobian(f, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(f, x)


@pytest.mark.parametrize("case", ["inner 1x1", "outer 1x1", "grouped outer", "depthwise inner"])
def test_composed_convolutions_have_the_chain_jacobian(case):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 7, 7, generator=g, dtype=torch.float64)
    if case == "inner 1x1":
        inner = LinearOp("conv", torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64))
        outer = LinearOp("conv", torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64), stride=(2, 2),
                         pad=(1, 1, 0, 1))
    elif case == "outer 1x1":
        inner = LinearOp("conv", torch.randn(4, 6, 3, 3, generator=g, dtype=torch.float64), dilation=(2, 2),
                         pad=(2, 2, 2, 2))
        outer = LinearOp("conv", torch.randn(5, 4, 1, 1, generator=g, dtype=torch.float64))
    elif case == "grouped outer":
        inner = LinearOp("conv", torch.randn(4, 6, 1, 1, generator=g, dtype=torch.float64))
        outer = LinearOp("conv", torch.randn(4, 2, 3, 3, generator=g, dtype=torch.float64), groups=2, pad=(1, 1, 1, 1))
    else:
        inner = LinearOp("conv", torch.randn(6, 1, 3, 3, generator=g, dtype=torch.float64), groups=6, pad=(1, 1, 1, 1))
        outer = LinearOp("conv", torch.randn(5, 6, 1, 1, generator=g, dtype=torch.float64))
    both = outer.compose(inner)
    assert both.layers == 2 and both.groups == 1
    want = _jacobian(lambda v: _conv(outer, _conv(inner, v)), x)
    got = _jacobian(lambda v: _conv(both, v), x)
    torch.testing.assert_close(got, want)


def test_composition_limits():
    w3 = torch.randn(4, 4, 3, 3)
    with pytest.raises(NotClosedForm, match="two spatial convolutions"):
        LinearOp("conv", w3, pad=(1, 1, 1, 1)).compose(LinearOp("conv", w3, pad=(1, 1, 1, 1)))
    with pytest.raises(NotClosedForm, match="linear chain of a conv layer into a dense layer"):
        LinearOp("dense", torch.randn(3, 4)).compose(LinearOp("conv", w3))
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    torch.testing.assert_close(LinearOp("dense", a).compose(LinearOp("dense", b)).weight, a @ b)


def test_factor_scale_and_scatter():
    s_c, s_y, s_x = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, 1.0, 0.5]), torch.tensor([2 / 3, 1.0,
                                                                                                      2 / 3])
    scale = (s_c[:, None, None] * s_y[None, :, None] * s_x[None, None, :]).double()
    a, b, c = factor_scale(scale, (3, 4, 3))
    torch.testing.assert_close(a[:, None, None] * b[None, :, None] * c[None, None, :], scale)
    bad = scale.clone()
    bad[1, 0, 0] += 1
    with pytest.raises(NotClosedForm):
        factor_scale(bad, (3, 4, 3))
    values = torch.arange(12.0).reshape(2, 6)
    chan = torch.tensor([0, 2, -1, 2, 1, 0])
    torch.testing.assert_close(scatter_channels(values, chan, 3),
                               torch.tensor([[5.0, 4.0, 4.0], [17.0, 10.0, 16.0]]))


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_gate_rows_without_the_scatter_are_the_scatters(groups):
    """A gate's (B, N, C) input-channel rows with one group are ``a + 0``: bit for bit the scatter-add into zeros
    (the reference), signed zeros, infinities and NaN included; grouped convs keep the scatter."""
    from ssa_torch.closed_form.gate import input_channel_rows, scatter_input_channels

    gen = torch.Generator().manual_seed(groups)
    op = LinearOp("conv", torch.randn(8, 12 // groups, 1, 1, generator=gen), groups=groups)
    a = torch.randn(3, 8, 12 // groups, generator=gen)
    a[0, 0, :4] = torch.tensor([-0.0, 0.0, float("inf"), float("nan")])[: a.shape[2]]
    fast, ref = input_channel_rows(op, a), scatter_input_channels(op, a)
    assert fast.shape == ref.shape == (3, 8, 12)
    assert torch.equal(torch.nan_to_num(fast, nan=7.0), torch.nan_to_num(ref, nan=7.0))
    assert torch.equal(torch.signbit(fast), torch.signbit(ref)) and torch.equal(fast.isnan(), ref.isnan())
    assert fast.data_ptr() != a.data_ptr()


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v2"])
def test_gates_and_linear_chains_equal_autograd_per_step(name, form):
    """Squeeze-excitation gates (both parents) and projection + residual chains, torchvision's definitions."""
    torch.manual_seed(0)
    model = _heavy_tail_(getattr(torchvision.models, name)(weights=None, num_classes=10), 3)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    net = ssa.load_model(model)
    net.prepare(x)
    steps = net.describe_steps()
    assert all(v.startswith("fast") for v in steps.values()), [k for k, v in steps.items() if not v.startswith("fast")]
    labels = " ".join(steps.values())
    assert "conv chain" in labels
    if name == "mobilenet_v3_small":
        assert "gate" in labels and "gated conv" in labels
    assert _omega_close(net, x, form) > 20


def test_check_prints_the_summary_line(capsys, tmp_path):
    assert main(["check", "digits", "--images", "digits"]) == 0
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    # the summary, then the op families each engine took and the seconds per stage (issue 19, item 8)
    assert lines[-3] == "4 of 4 steps by the closed form"
    assert lines[-2].startswith("ops by engine: closed form: ") and "autograd" not in lines[-2]
    assert lines[-1].startswith("time: loading ")


class _SiLUNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = torch.nn.SiLU()
        self.c2 = torch.nn.Conv2d(8, 12, 3, padding=1)
        self.a2 = torch.nn.Hardswish()
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.a2(self.c2(self.a1(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("opset", [11, 17])
def test_composite_activations_of_onnx_exports(tmp_path, opset):
    """SiLU exports as x * Sigmoid(x) and, before opset 14, HardSwish as x * HardSigmoid(x): the product is the
    tap, and its step takes the closed form (the derivative through both factors comes from autograd)."""
    from . import onnx_models as om

    model = om.heavy_tail_(_SiLUNet(), 3)
    x = om.images((3, 8, 8), 6)
    path = om.export(model, x, tmp_path / f"silu_{opset}.onnx", opset=opset)
    net = ssa.load_model(str(path))
    net.prepare(x)
    ops = [t.op for t in net.taps]
    assert "swish" in ops and (opset >= 14 or "hardswish" in ops), ops
    steps = net.describe_steps()
    assert all(v.startswith("fast") for v in steps.values()), steps
    for form in ("gradient", "gradient_x_activation"):
        assert _omega_close(net, x, form) == 2
