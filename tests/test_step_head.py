"""A step whose linear head runs in closed form (ssa_torch.head) equals the step through the whole network with every
tap cut (``_step_relevance_full``): a tiny ViT, a tiny ConvNeXt and a ConvNeXt-like net written here with every op
the head takes (additions, subtractions, linear layers as modules and functions, products and quotients by
constants, permutes, transposes, reshapes, flattens, dropout), for 1, 3 and 9 upper neurons under both rules.
The heads are checked too, so that a test cannot pass by running everything through autograd."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from ssa_rules.rules import GradientRule, GradientXActivationRule
from ssa_torch.head import _kind
from ssa_torch.segments import segment_of

import ssa
from ssa.testing.models import _heavy_tail_

from . import any_models as am


class _Block(nn.Module):
    """A ConvNeXt block (depthwise conv, LayerNorm on channels last, MLP, scale) that adds or subtracts its branch."""

    def __init__(self, c: int, subtract: bool) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, 2 * c)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * c, c)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.drop = nn.Dropout(0.1)
        self.subtract = subtract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.norm(self.dw(x).permute(0, 2, 3, 1)))))
        y = self.drop(y).permute(0, 3, 1, 2).contiguous()
        if self.subtract:
            return x - y / self.gamma.view(1, -1, 1, 1)
        return x + y * self.gamma.view(1, -1, 1, 1)


class _ConvNeXtLike(nn.Module):
    def __init__(self, c: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 4, stride=4)
        self.stem_norm = nn.BatchNorm2d(c)
        self.blocks = nn.Sequential(_Block(c, False), _Block(c, True), _Block(c, False))
        self.mix = nn.Parameter(torch.linspace(-1.0, 1.0, c * c).reshape(c, c))
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem_norm(self.stem(x)))
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # tokens (N, HW, C)
        t = t + F.linear(F.gelu(t), self.mix).reshape(n, h * w, c)  # one more stream, by a functional linear
        return self.head(t.mean(1))


def _convnext_like() -> nn.Module:
    torch.manual_seed(0)
    model = _heavy_tail_(_ConvNeXtLike(), 1, sigma=2.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


MODELS = {"vit": lambda: am.build("deit"), "convnext": lambda: am.build("convnext"), "convnext_like": _convnext_like}
# the ConvNeXt-like net's taps by hand: its subtraction and its token stream are no residual streams by the rules
TAPS = {"convnext_like": ["blocks.0.act", "add", "blocks.1.act", "sub", "blocks.2.act", "add_1", "gelu", "add_2"]}


@pytest.fixture(scope="module", params=sorted(MODELS))
def prepared(request):
    x = am.images(5)
    net = ssa.load_model(MODELS[request.param](), taps=TAPS.get(request.param))
    return request.param, net, net.prepare(x), x


@pytest.mark.parametrize("n", (1, 3, 9))
@pytest.mark.parametrize("rule", (GradientRule(), GradientXActivationRule()), ids=lambda r: r.name)
def test_a_step_with_its_head_in_closed_form_equals_the_whole_network_step(prepared, rule, n):
    _, net, taps, x = prepared
    for tap in taps:
        if not tap.parents:
            continue
        neurons = list(range(min(n, tap.n_neurons)))[::-1]  # not in order: the one-hot rows follow the neurons
        got, got_scalars = net.step_relevance(x, tap.name, neurons, rule)
        want, want_scalars = net._step_relevance_full(x, tap.name, neurons, rule)
        assert set(got) == set(want) == set(tap.parents)
        for p in want:
            assert got[p].shape == (len(neurons), len(x), net.tap(p).n_neurons)
            torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
        for t in want_scalars:
            torch.testing.assert_close(got_scalars[t], want_scalars[t], rtol=0, atol=0)


def _heads(net) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    return {t.name: (segment_of(net.graph_module, net.plan, t.name).head.nodes,
                     segment_of(net.graph_module, net.plan, t.name).head.stops) for t in net.plan.taps if t.parents}


def test_the_heads_take_the_linear_top_of_each_step(prepared):
    name, net, taps, _ = prepared
    heads = _heads(net)
    by_name = {node.name: node for node in net.graph_module.graph.nodes}
    kinds = {_kind(by_name[node], net.graph_module) for nodes, _ in heads.values() for node in nodes}
    if name == "convnext_like":
        assert kinds >= {"add", "sub", "mul", "div", "linear", "permute", "transpose", "reshape", "flatten"}
        tops = {t: segment_of(net.graph_module, net.plan, t).head.top for t in ("blocks.1.act", "gelu")}
        assert tops["blocks.1.act"] == ("blocks_1_act", "blocks_1_fc1") and tops["gelu"] is None  # F.gelu(t): no layer
        return
    streams = [t.name for t in taps if t.kind == "stream" and t.parents]
    assert streams, "the model has stream taps"
    for tap in streams:  # every stream's addition and its branch's last linear layer are in the head
        nodes, stops = heads[tap]
        assert net.plan.node_of[tap] in nodes
        assert any(_kind(by_name[node], net.graph_module) == "linear" for node in nodes), tap
    acts = [t.name for t in taps if t.kind == "activation" and t.parents]
    assert acts and all(heads[t][1] == (by_name[net.plan.node_of[t]].args[0].args[0].name,) for t in acts)
    for t in acts:  # every MLP activation of a linear layer: autograd from the layer's input (the top)
        head = segment_of(net.graph_module, net.plan, t).head
        assert head.top == (net.plan.node_of[t], by_name[net.plan.node_of[t]].args[0].name), t
        assert _kind(by_name[head.top[1]], net.graph_module) == "linear"
    if name == "vit":  # the MLP's stream entirely in closed form; the attention's from the attention's output
        mlp = [t for t in streams if any(net.tap(p).kind != "stream" for p in net.tap(t).parents)]
        attn = [t for t in streams if t not in mlp]
        assert mlp and attn
        assert all(heads[t][1] == () for t in mlp)
        assert all(by_name[s].target is F.scaled_dot_product_attention for t in attn for s in heads[t][1])


def test_a_step_in_closed_form_runs_no_backward_pass(monkeypatch):
    net = ssa.load_model(am.build("deit"))
    x = am.images(3)
    taps = net.prepare(x)
    tap = next(t for t in taps if t.kind == "stream" and any(net.tap(p).kind != "stream" for p in t.parents))
    want, _ = net._step_relevance_full(x, tap.name, [0, 2], GradientRule())

    def no_backward(*args, **kwargs):
        raise AssertionError("a backward pass")

    monkeypatch.setattr(torch.autograd, "grad", no_backward)
    got, _ = net.step_relevance(x, tap.name, [0, 2], GradientRule())
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
    skip = next(p for p in tap.parents if net.tap(p).kind == "stream")  # its skip term: the one-hot itself
    tokens = net._tap_values(x)[net.plan.node_of[skip]].shape[1]
    one_hot = np.zeros((2, len(x), net.tap(skip).n_neurons))
    one_hot[0, :, 0] = one_hot[1, :, 2] = 1.0 / tokens
    np.testing.assert_allclose(got[skip].numpy(), one_hot, rtol=1e-7, atol=0)


def test_neurons_in_chunks_within_the_memory_budget(monkeypatch):
    monkeypatch.setenv("SSA_WORK_BYTES", str(1 << 20))  # 1 MiB: 9 neurons of 40 images' tokens take 2 chunks
    net = ssa.load_model(am.build("deit"))
    x = am.images(40)
    taps = net.prepare(x)
    leaf = net._tap_values(x)[net.plan.node_of["blocks.0.mlp.act"]]
    assert 9 * leaf.numel() * 12 > 1 << 20 > leaf.numel() * 12
    for tap in taps:
        if tap.parents:
            got, _ = net.step_relevance(x, tap.name, list(range(9)), GradientXActivationRule())
            want, _ = net._step_relevance_full(x, tap.name, list(range(9)), GradientXActivationRule())
            for p in want:
                torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rule", (GradientRule(), GradientXActivationRule()), ids=lambda r: r.name)
def test_an_activation_of_a_linear_layer_by_its_top_equals_autograd_through_the_layer_bit_for_bit(prepared, rule):
    """The top (the activation's derivative on the neurons' columns times the weight's rows) against the same
    segment with autograd from the activation itself: equal, not close (the layer's backward product sums one
    product and zeros)."""
    _, net, taps, x = prepared
    acts = [t for t in taps if t.parents and segment_of(net.graph_module, net.plan, t.name).head.top]
    assert acts
    for tap in acts:
        neurons = sorted({0, tap.n_neurons - 1, tap.n_neurons // 3, 7 % tap.n_neurons})[::-1]
        got, _ = net.step_relevance(x, tap.name, neurons, rule)
        segment = net._segments[tap.name]
        net._segments[tap.name] = dataclasses.replace(
            segment, head=dataclasses.replace(segment.head, stops=(segment.upper,), top=None), runner=None)
        try:
            want, _ = net.step_relevance(x, tap.name, neurons, rule)
        finally:
            net._segments[tap.name] = segment
        for p in want:
            torch.testing.assert_close(got[p], want[p], rtol=0, atol=0)


def test_a_layer_along_another_axis_than_the_channels_keeps_autograd_from_the_activation():
    """GELU(Linear(x)) where the tap's channels are not the layer's outputs (the layer mixes the positions of a
    (N, C, L) signal, and the tap's channel axis is set to C): the top does not apply, and the step still equals
    the whole-network step."""

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 6, 3, padding=1)
            self.mix = nn.Linear(16, 16)
            self.act = nn.GELU()
            self.head = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.act(self.mix(torch.relu(self.conv(x)))).mean(-1))

    torch.manual_seed(0)
    model = _heavy_tail_(_Net(), 1, sigma=2.0).eval()
    x = np.random.default_rng(0).standard_normal((4, 3, 16)).astype(np.float32)
    net = ssa.load_model(model, taps=["relu", "act"], channel_axes={"act": 1})
    net.prepare(x)
    assert net.tap("act").channel_axis == 1 and segment_of(net.graph_module, net.plan, "act").head.top is not None
    got, _ = net.step_relevance(x, "act", [0, 5, 2], GradientRule())
    want, _ = net._step_relevance_full(x, "act", [0, 5, 2], GradientRule())
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)


def test_activations_called_as_functions_and_methods_take_the_top():
    """``F.gelu(F.linear(...), approximate="tanh")`` and ``linear(...).relu()``: the activation is called on the
    columns as the graph calls it (with its arguments), and the steps equal the whole-network steps."""

    class _Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3 * 8 * 8, 12)
            self.norm = nn.LayerNorm(12)
            self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 24 * 12).reshape(24, 12))
            self.norm2 = nn.LayerNorm(24)
            self.fc = nn.Linear(24, 16)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x.reshape(x.shape[0], 3, -1).transpose(1, 2).reshape(x.shape[0], -1, 3 * 8 * 8)).relu()
            g = F.gelu(F.linear(self.norm(t), self.w), approximate="tanh")
            r = self.fc(self.norm2(g)).relu()
            return self.head(r.mean(1))

    torch.manual_seed(0)
    model = _heavy_tail_(_Net(), 1, sigma=2.0).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    net = ssa.load_model(model, taps=["relu", "gelu", "relu_1"])
    net.prepare(x)
    for tap in ("gelu", "relu_1"):
        assert segment_of(net.graph_module, net.plan, tap).head.top is not None, tap
        for rule in (GradientRule(), GradientXActivationRule()):
            got, _ = net.step_relevance(x, tap, [3, 0, 11], rule)
            want, _ = net._step_relevance_full(x, tap, [3, 0, 11], rule)
            for p in want:
                torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)


def test_a_segments_first_batched_pass_takes_two_neurons(monkeypatch):
    """Where vmap falls back to its own per-slice loop (the attention's backward), the first batched pass of the
    segment holds two neurons, the rest of the chunk goes one by one; the values equal the whole-network step."""
    net = ssa.load_model(am.build("deit"))
    x = am.images(3)
    taps = net.prepare(x)
    tap = next(t for t in taps  # the attention's stream: its only parent is the stream before
               if t.kind == "stream" and t.parents and all(net.tap(p).kind == "stream" for p in t.parents))
    want, _ = net._step_relevance_full(x, tap.name, list(range(9)), GradientRule())
    calls: list[int | None] = []
    grad = torch.autograd.grad

    def counted(outputs, inputs, grad_outputs=None, **kw):
        calls.append(int(grad_outputs[0].shape[0]) if kw.get("is_grads_batched") else None)
        return grad(outputs, inputs, grad_outputs, **kw)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    got, _ = net.step_relevance(x, tap.name, list(range(9)), GradientRule())
    assert calls == [2] + [None] * 7
    assert net._segments[tap.name].probed and not net._segments[tap.name].batched
    calls.clear()
    net.step_relevance(x, tap.name, list(range(9)), GradientRule())  # the choice is kept: no batched pass
    assert calls == [None] * 9
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
