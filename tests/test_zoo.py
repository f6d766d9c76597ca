"""Real architectures (torchvision definitions, random heavy-tailed weights, tiny inputs): tap discovery
runs, the traversal goes deep, and the one-pass engine gives exactly the autograd graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import ssa
from ssa.api import load_model
from ssa.testing.models import _heavy_tail_

pytestmark = pytest.mark.slow  # six torchvision architectures, each traversed by both engines

ZOO = {
    "resnet18": (torchvision.models.resnet18, {}),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, {}),
    "squeezenet1_1": (torchvision.models.squeezenet1_1, {}),
    "regnet_x_400mf": (torchvision.models.regnet_x_400mf, {}),
    "efficientnet_b0": (torchvision.models.efficientnet_b0, {}),
    "googlenet": (torchvision.models.googlenet, {"aux_logits": False, "init_weights": False}),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_fast_equals_autograd(name):
    build, kwargs = ZOO[name]
    torch.manual_seed(0)
    model = _heavy_tail_(build(weights=None, num_classes=10, **kwargs), 3)
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    with torch.no_grad():
        target = int(model(torch.from_numpy(x)).argmax(1)[0])
    net = load_model(model)
    taps = net.prepare(x)
    assert len(taps) > 5
    steps = net.describe_steps()
    assert any(v.startswith("fast") for v in steps.values()), steps
    fast = ssa.analyse(model, x, target, 2, engine="auto", preset="paper")
    auto = ssa.analyse(model, x, target, 2, engine="autograd", preset="paper")
    assert sorted(fast.graph.edges) == sorted(auto.graph.edges)
    depth = {d["tap"] for _, d in fast.graph.nodes(data=True)}
    assert len(depth) >= 3, depth
