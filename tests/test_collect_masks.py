"""The statistics pass reads ReLU masks from the activations (``ssa_torch.closed_form.collect.relu_mask``) where a
tap is a ReLU of its heads summed: every statistic is bit for bit what the backward pass gives (the plain form,
``StatsInterpreter.relu_masks = False``), and taps of any other form keep the backward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ssa_torch.closed_form.collect import StatsInterpreter, relu_of_sums
from ssa_torch.closed_form.conv import conv_input_relevance
from ssa_torch.closed_form.masks import relu_mask
from torch import nn

import ssa
from ssa.testing.models import ALL_CASES

from .test_conv_kernels import ALL, CASES, _case, _kernels_for

FORMS = ("gradient", "gradient_x_activation")


class _Mixed(nn.Module):
    """A residual sum (masked), a head summed twice (no closed form), a leaky ReLU (the backward pass), a ReLU of
    a sum with a constant (folded into the bias: masked), a sum with a broadcast head (the backward pass: the shapes
    differ) and a dense ReLU (masked)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 6, 1)
        self.d = nn.Conv2d(6, 6, 3, padding=1)
        self.e = nn.Conv2d(6, 6, 1)
        self.f = nn.Conv2d(6, 6, 3, padding=1)
        self.g = nn.Conv2d(6, 6, 1)
        self.shift = nn.Parameter(torch.linspace(-1.0, 1.0, 6).reshape(1, 6, 1, 1))
        self.fc1 = nn.Linear(6 * 8 * 8, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = F.relu(self.b(x) + x)  # residual: two heads, one mask
        y = self.c(x)
        x = F.relu(y + y)  # the head twice: m = 2 * mask, not a mask
        x = F.leaky_relu(self.d(x), 0.1)
        x = F.relu(self.e(x) + self.shift)  # a constant in the sum
        x = F.relu(self.f(x) + self.g(F.adaptive_avg_pool2d(x, 1)))  # a sum that broadcasts a head
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def _both(net, images, monkeypatch) -> tuple[dict, dict]:
    """The statistics with the masks (each image's mask made in the conv kernels, ReLUs in place; then every mask
    made whole, ReLUs out of place), and by the backward pass; both mask forms must equal the backward pass."""
    fast = {f: net.collect(images, [f]) for f in FORMS}
    monkeypatch.setattr(StatsInterpreter, "lazy_masks", False)
    monkeypatch.setattr(StatsInterpreter, "relu_in_place", False)
    _assert_equal({f: net.collect(images, [f]) for f in FORMS}, fast)
    monkeypatch.setattr(StatsInterpreter, "relu_masks", False)
    plain = {f: net.collect(images, [f]) for f in FORMS}
    monkeypatch.undo()
    return fast, plain


def _assert_equal(fast: dict, plain: dict) -> None:
    for f in FORMS:
        assert fast[f].keys() == plain[f].keys()
        for k, v in plain[f].items():
            assert fast[f][k].dtype == v.dtype and torch.equal(fast[f][k], v), (f, k)


def _masked(net) -> set[str]:
    return {tf.tap for tf in net.closed_form.taps.values() if relu_of_sums(tf, net.graph_module)}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_masked_statistics_equal_the_backward_pass(monkeypatch, case):
    torch.manual_seed(0)
    net = ssa.load_model(case.build())
    images = case.images(5)
    net.prepare(images)
    fast, plain = _both(net, images, monkeypatch)
    _assert_equal(fast, plain)
    if case.name in ("plain", "residual"):
        assert _masked(net), "no tap took the masks: the test compared the backward pass with itself"
    if case.name == "residual":  # a residual block's output: two heads summed
        assert any(net.closed_form.taps[t].segment for t in _masked(net))


def test_only_a_relu_of_heads_summed_once_takes_the_mask(monkeypatch):
    torch.manual_seed(0)
    net = ssa.load_model(_Mixed().eval())
    images = torch.randn(4, 3, 8, 8).numpy()
    net.prepare(images)
    cf = net.closed_form
    masked = _masked(net)
    segments = {t: cf.taps[t].segment for t in cf.taps}
    assert any(segments[t] for t in masked)  # the residual sum
    # the first ReLU is the lowest tap (no step); y + y has no closed form; the leaky ReLU is no ReLU; the shift is
    # folded into e's bias; the broadcast sum takes the mask by its form, and the backward pass by its shapes (below)
    assert masked == {"relu_1", "relu_3", "relu_4", "relu_5"} and "leaky_relu" in cf.taps
    in_place = StatsInterpreter(net.graph_module, net.plan, cf, FORMS).in_place
    assert set(in_place) == {cf.taps[t].act_node for t in masked}
    fast, plain = _both(net, images, monkeypatch)
    _assert_equal(fast, plain)


def test_relu_mask_is_autograds_derivative():
    z = torch.tensor([[-2.0, -0.0, 0.0, 1e-30, 3.0, -1e-30]], requires_grad=True)
    out = torch.relu(z)
    (d,) = torch.autograd.grad(out.sum(), z)
    m = relu_mask(out.detach())
    assert m.dtype == d.dtype and torch.equal(m, d)


LAYOUTS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(ALL))
def test_conv_kernels_make_each_images_mask(name, layout, monkeypatch):
    """``relu_of=True`` (m given as a ReLU's output) gives the bits of the kernel given the mask itself, for every
    kernel that takes the geometry (the per-image kernels make each image's mask; the others the whole mask), in
    both layouts of the statistics pass (channels-last: the kernels of ``closed_form/conv_nhwc.py``)."""
    monkeypatch.setitem(CASES, name, ALL[name])
    op, m, x = _case(name, torch.float32, batch=4)
    m, x = (t.contiguous(memory_format=LAYOUTS[layout]) for t in (m, x))
    act = torch.relu(m)
    assert bool((act == 0).any()) and bool((act > 0).any())
    for kernel in _kernels_for(op):
        want = conv_input_relevance(op, relu_mask(act), x, kernel)
        got = conv_input_relevance(op, act, x, kernel, relu_of=True)
        assert torch.equal(got, want), kernel
        assert not torch.equal(conv_input_relevance(op, act, x, kernel), want), kernel  # act itself is not the mask


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (4, 16, 9, 9), (2, 3, 1, 1)])
def test_identity_sums_one_image_at_a_time(shape, layout):
    """The skip term's per-image masked sums are the bits of the whole batch's mask times x, summed per channel (in
    both layouts of the statistics pass)."""
    from ssa_torch.closed_form.identity import IdentityTerm

    gen = torch.Generator().manual_seed(sum(shape))
    act = torch.relu(torch.randn(shape, generator=gen)).contiguous(memory_format=LAYOUTS[layout])
    x = torch.randn(shape, generator=gen).contiguous(memory_format=LAYOUTS[layout]) * 1e3
    term = IdentityTerm("p", "h", 1)
    want = term.statistics(relu_mask(act), {"h": x}, ["gradient_x_activation"])["a"]
    got = term.statistics(act, {"h": x}, ["gradient_x_activation"], relu_of=True)["a"]
    assert torch.equal(got, want)
    assert torch.equal(term.statistics(act, {"h": x}, FORMS, relu_of=True)["a"], want)  # with "gradient": whole


def test_an_onnx_models_relus_take_the_mask(monkeypatch, tmp_path):
    """A ResNet-like model through ONNX (its ReLUs and additions as the conversion writes them) takes the masks for
    every ReLU step, with the backward pass's statistics."""
    pytest.importorskip("onnx2torch")
    case = next(c for c in ALL_CASES if c.name == "residual")
    path = tmp_path / "residual.onnx"
    torch.onnx.export(case.build().eval(), torch.from_numpy(case.images(2)), str(path), opset_version=17,
                      dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    net = ssa.load_model(str(path))
    images = case.images(5)
    net.prepare(images)
    assert _masked(net) == {t for t in net.closed_form.taps if t != "logits"}
    assert any(net.closed_form.taps[t].segment for t in _masked(net))
    fast, plain = _both(net, images, monkeypatch)
    _assert_equal(fast, plain)


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.name == "plain"], ids=lambda c: c.name)
def test_max_pooling_channels_last_gives_the_same_statistics(monkeypatch, case):
    """The statistics pass runs a contiguous CPU max-pooling channels-last (``StatsInterpreter.nhwc_max_pool``): every
    statistic equal, bit for bit, to those of the pooling as the model runs it."""
    net = ssa.load_model(case.build())
    images = case.images(5)
    net.prepare(images)
    taken: list[str] = []
    original = StatsInterpreter._nchw_max_pool

    def recording(self, n):
        taken.append(n.name) if original(self, n) else None
        return original(self, n)

    monkeypatch.setattr(StatsInterpreter, "_nchw_max_pool", recording)
    fast = {f: net.collect(images, [f]) for f in FORMS}
    assert taken, "no max-pooling ran channels-last: nothing was tested"
    monkeypatch.setattr(StatsInterpreter, "nhwc_max_pool", False)
    _assert_equal(fast, {f: net.collect(images, [f]) for f in FORMS})


class _Lowest(nn.Module):
    """ReLUs outside the masked taps: the lowest tap's, of the input itself (the caller's array: never in place); one
    of a convolution's output read twice (not in place); a tap without a closed-form step (its parents' sum has an
    unmasked head) of a convolution's new output (in place). ``F.relu(self.a(x))`` is a masked tap (in place as
    before)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        y = self.b(x)
        x = torch.cat([F.relu(self.a(x)), F.relu(y) + y], 1)
        return self.fc(torch.flatten(F.relu(self.c(x)), 1))


def test_other_relus_of_a_layers_own_output_run_in_place(monkeypatch):
    torch.manual_seed(0)
    net = ssa.load_model(_Lowest().eval())
    images = torch.randn(4, 3, 8, 8).numpy()
    before = images.copy()
    net.prepare(images)
    gm = net.graph_module
    relus = {n.name: n.args[0].name for n in gm.graph.nodes if n.target in (F.relu, torch.relu)}
    free = StatsInterpreter(gm, net.plan, net.closed_form, FORMS).free_in_place
    assert relus == {"relu": "x", "relu_1": "a", "relu_2": "b", "relu_3": "c"}
    assert "relu_1" in StatsInterpreter(gm, net.plan, net.closed_form, FORMS).in_place
    assert free == {"relu_3"}
    fast = {f: net.collect(images, [f]) for f in FORMS}
    assert np.array_equal(images, before)  # the input's ReLU made a new tensor
    monkeypatch.setattr(StatsInterpreter, "relu_in_place", False)
    _assert_equal(fast, {f: net.collect(images, [f]) for f in FORMS})
