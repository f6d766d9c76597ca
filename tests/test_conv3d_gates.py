"""3-D squeeze-excitation gates and linear chains of 3-D convolutions by the closed form (issue 19, item 4).

A small video classifier with an SE block on a 3-D map (``x * sigmoid(conv1x1x1(relu(conv1x1x1(pool(x)))))``, the
gate's inner activation a tap of its own) and a 1x1x1 projection conv straight into a grouped 3x3x3 conv (no tap in
between: one composed linear operator), as a module and through ONNX: every step by the closed form, every step's
omega equal to its exact autograd, and the graphs equal to the slow reference under both rules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_torch.closed_form.linear import LinearOp

from ssa.testing.models import RefTap

from . import onnx_models as om
from .closed_form_checks import assert_closed_form_equals_reference


class _SE3d(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc1 = nn.Conv3d(c, r, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv3d(r, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _gated_video_net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv3d(3, 12, 3, padding=1), nn.ReLU(), _SE3d(12, 6),
                      nn.Conv3d(12, 16, 3, padding=1, stride=(1, 2, 2)), nn.ReLU(),
                      nn.Conv3d(16, 24, 1),  # a projection with no activation: composed with the next conv
                      nn.Conv3d(24, 16, 3, padding=1, groups=4), nn.BatchNorm3d(16), nn.ReLU(),
                      nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 5))
    return om.heavy_tail_(m, 6, sigma=1.5).eval()


def _op(conv: nn.Conv3d) -> LinearOp:
    return LinearOp("conv", conv.weight.detach(), conv.groups, conv.stride, conv.dilation,
                    tuple(p for p in conv.padding for _ in range(2)))


def test_3d_chains_compose_like_their_layers():
    """A composed 3-D operator computes its two convolutions one after the other (bias-free, float64): a 1x1x1 conv
    into a grouped 3x3x3 one, and a grouped 3x3x3 conv into a 1x1x1 one."""
    torch.manual_seed(0)
    inner = nn.Conv3d(8, 12, 1, bias=False).double()
    spatial = nn.Conv3d(12, 8, 3, padding=1, groups=4, bias=False).double()
    outer = nn.Conv3d(8, 3, 1, bias=False).double()
    x = torch.randn(2, 8, 4, 5, 5, dtype=torch.float64)
    first = _op(spatial).compose(_op(inner))
    assert first.layers == 2 and first.groups == 1 and first.weight.shape == (8, 8, 3, 3, 3)
    torch.testing.assert_close(F.conv3d(x, first.weight, padding=1), spatial(inner(x)), rtol=1e-12, atol=1e-12)
    second = _op(outer).compose(_op(spatial))
    assert second.layers == 2 and second.weight.shape == (3, 12, 3, 3, 3) and second.pad == (1,) * 6
    y = inner(x)
    torch.testing.assert_close(F.conv3d(y, second.weight, padding=1), outer(spatial(y)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_gated_video_net_by_the_closed_form_equals_the_reference(rule, tmp_path):
    model = _gated_video_net()
    x = np.random.default_rng(3).standard_normal((12, 3, 4, 8, 8)).astype(np.float32)
    ref_taps = (RefTap("1", "1"), RefTap("2.act", "2.act", 0, 1, ("1",)), RefTap("4", "4", 0, 1, ("1", "2.act")),
                RefTap("8", "8", 0, 1, ("4",)), RefTap("logits", "11", 0, 1, ("8",)))
    onnx_path = str(om.export(model, x, tmp_path / "gated.onnx", opset=17))
    want = assert_closed_form_equals_reference(model, x, ref_taps, rule, (model, onnx_path), 5,
                                               kinds=("gate", "chain"))
    # the gradient rule's graph stops below the logits (no outliers at the next step); every step's omega is
    # checked above under both rules
    steps = {(u, v) for (u, _, v, _) in want}
    assert steps >= ({("4", "1"), ("4", "2.act"), ("8", "4")} if rule == "gradient_x_activation" else {("logits", "8")})
