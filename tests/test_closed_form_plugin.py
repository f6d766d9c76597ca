"""A plugin adds a closed form for a custom op without editing ssa: through the pluggy hook
``ssa_register_closed_forms`` and through ``register_closed_form``; the step then takes the closed
form and its omega equals autograd's; without the plugin it falls back to autograd, naming the op."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from ssa_torch.closed_form import (
    ClosedForm,
    NotClosedForm,
    Term,
    as_tensor,
    closed_forms,
    register_closed_form,
    unregister_closed_form,
)

import ssa
from ssa.core.arrays import to_numpy
from ssa.errors import PluginError
from ssa.plugins import get_plugin_manager
from ssa.testing.models import _heavy_tail_


def channel_scale(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """A custom op (an fx leaf function) ssa does not know: a per-channel scale."""
    return x * gamma[None, :, None, None]


torch.fx.wrap("channel_scale")


class ChannelScale(nn.Module):
    """A learned per-channel scale (ConvNeXt's "layer scale") computed by the custom op."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(-1.5, 2.0, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_scale(x, self.gamma)


class ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.scale = ChannelScale(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r2 = nn.ReLU()
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.r1(self.c1(x))
        y = self.r2(self.scale(y) + self.c2(y))  # the custom op and a conv, both from r1
        return self.fc(y.mean((2, 3)))


class ChannelScaleTerm(Term):
    """d(upper n) / d(parent n) = gamma[n] * m[n]: a diagonal term."""

    label = "channel scale"

    def __init__(self, parent: str, x: str, gamma: torch.Tensor) -> None:
        self.parent = parent
        self.x = x
        self.gamma = gamma.detach().double().cpu()

    @property
    def needs(self):
        return (self.x,)

    def statistics(self, m, values, forms):
        out = {}
        if "gradient" in forms:
            out["g"] = m.sum(dim=(2, 3))
        if "gradient_x_activation" in forms:
            out["a"] = (m * values[self.x]).sum(dim=(2, 3))
        return out

    def omega(self, stats, neurons, form):
        d = as_tensor(stats["g" if form == "gradient" else "a"])  # (B, N)
        h, fed = self.head_channels(neurons, d.device)
        om = torch.zeros((len(h), d.shape[0], self.n_parent), dtype=d.dtype, device=d.device)
        om[torch.arange(len(h)), :, h] = (d[:, h] * self.gamma.to(d.device)[h]).t()
        return self.finish(om, fed)


class ChannelScaleForm(ClosedForm):
    name = "channel scale"
    kinds = ("channel_scale",)
    targets = {channel_scale: "channel_scale"}

    def terms(self, node, ctx):
        x, gamma = node.args
        if not ctx.is_tap(x):
            raise NotClosedForm("a channel scale of something that is not a tap")
        return [ChannelScaleTerm(ctx.tap_of_node[x.name], x.name, ctx.value(gamma))]


class Plugin:
    @ssa.hookimpl
    def ssa_register_closed_forms(self, register):
        register(ChannelScaleForm)


def _model():
    torch.manual_seed(0)
    return _heavy_tail_(ScaledNet(), 4)


def _images(n=6):
    return np.random.default_rng(0).uniform(0, 1, (n, 3, 8, 8)).astype(np.float32)


def _steps():
    net = ssa.load_model(_model())
    net.prepare(_images(2))
    return net, net.describe_steps()


@pytest.fixture
def plugin():
    pm = get_plugin_manager()
    p = Plugin()
    pm.register(p, name="closed-form-test")
    closed_forms(refresh=True)
    try:
        yield p
    finally:
        pm.unregister(p)
        closed_forms(refresh=True)


def test_without_the_plugin_the_step_falls_back_and_names_the_op():
    _, steps = _steps()
    assert steps["r2 -> r1"] in ("autograd (other op between the tap and its parents)",
                                 "autograd (channel_scale op between the tap and its parents)"), steps


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
def test_a_plugin_closed_form_equals_autograd(plugin, form):
    net, steps = _steps()
    assert steps["r2 -> r1"] == "fast (channel scale, conv)", steps
    x = _images()
    net = ssa.load_model(_model())
    net.prepare(x)
    stats = net.collect(x, [form])
    neurons = list(range(8))
    ref, _ = net.step_relevance(x, "r2", neurons, ssa.make_rule(form))
    fast = {b.parent: b.omega for b in net.relevance_blocks("r2", stats, neurons, form)}
    ref, fast = ({k: to_numpy(v) for k, v in d.items()} for d in (ref, fast))  # device arrays -> host
    scale = np.abs(ref["r1"]).max()
    np.testing.assert_allclose(fast["r1"], ref["r1"], atol=2e-5 * scale, rtol=1e-4)
    target = int(np.bincount(net.logits(x).argmax(1)).argmax())
    a = ssa.analyse(_model(), x, target, 3, rule=form, engine="auto")
    b = ssa.analyse(_model(), x, target, 3, rule=form, engine="autograd")
    assert a.engines["r2 -> r1"] == "fast"
    assert sorted(a.graph.edges(data="frequency")) == sorted(b.graph.edges(data="frequency"))


def test_register_closed_form_in_python():
    try:
        register_closed_form(ChannelScaleForm)
        assert _steps()[1]["r2 -> r1"].startswith("fast")
        with pytest.raises(PluginError, match="already has the closed form"):
            class Other(ChannelScaleForm):
                pass

            register_closed_form(Other)
        with pytest.raises(PluginError, match="no op kinds"):
            class Empty(ClosedForm):
                pass

            register_closed_form(Empty)
    finally:
        unregister_closed_form(ChannelScaleForm)
    assert _steps()[1]["r2 -> r1"].startswith("autograd")
