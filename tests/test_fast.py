"""The exact closed form (method doc, section 6) against batched autograd, step by step and graph by graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import ssa
from ssa.api import load_model
from ssa.core.arrays import to_numpy
from ssa.testing.models import ALL_CASES, _heavy_tail_
from ssa.testing.tolerance import assert_graphs_close, fixture_margin


class GroupedNet(nn.Module):
    """Strided, dilated, grouped and depthwise convolutions, 'same' padding, avg pooling, BN after conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=4)
        self.b2 = nn.BatchNorm2d(8)
        self.r2 = nn.ReLU6()
        self.c3 = nn.Conv2d(8, 8, 3, padding="same", groups=8, bias=False)
        self.r3 = nn.Hardswish()
        self.pool = nn.AvgPool2d(2)
        self.c4 = nn.Conv2d(8, 12, 1)
        self.r4 = nn.LeakyReLU(0.1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = self.r1(self.c1(x))
        x = self.r2(self.b2(self.c2(x)))
        x = self.r3(self.c3(x))
        x = self.r4(self.c4(self.pool(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def _grouped():
    torch.manual_seed(3)
    m = _heavy_tail_(GroupedNet(), 11)
    with torch.no_grad():
        m.b2.weight.uniform_(-1.5, 1.5)  # negative batch-norm scales too
    return m.eval()


def _omega_close(net, images, form):
    stats = net.collect(images, [form])
    rule = ssa.make_rule(form)
    checked = 0
    for tap in sorted(net.fast_taps(form)):
        n = net.tap(tap).n_neurons
        neurons = list(range(min(n, 6)))
        ref, _ = net.step_relevance(images, tap, neurons, rule)
        fast = {b.parent: b.omega for b in net.relevance_blocks(tap, stats, neurons, form)}
        ref, fast = ({k: to_numpy(v) for k, v in d.items()} for d in (ref, fast))  # device arrays -> host
        assert set(fast) == set(ref)
        for parent in ref:
            scale = np.abs(ref[parent]).max() + 1e-12
            np.testing.assert_allclose(fast[parent], ref[parent], atol=2e-5 * scale, rtol=1e-4,
                                       err_msg=f"{form} {tap} -> {parent}")
            checked += 1
    return checked


CASES = [(c.name, c.build, c.images) for c in ALL_CASES]
CASES.append(("grouped", _grouped, lambda n: np.random.default_rng(5).uniform(0, 1, (n, 3, 12, 12)).astype(np.float32)))


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("name,build,images", CASES, ids=[c[0] for c in CASES])
def test_fast_equals_autograd_per_step(name, build, images, form):
    x = images(6)
    net = load_model(build())
    net.prepare(x)
    assert net.fast_taps(), f"{name}: no step has the closed form"
    assert _omega_close(net, x, form) > 0


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("name,build,images", CASES, ids=[c[0] for c in CASES])
def test_fast_graph_equals_autograd_graph(name, build, images, rule):
    x = images(12)
    model = build()
    target = int(np.bincount(load_logits(model, x).argmax(1)).argmax())
    fast = ssa.analyse(model, x, target, 3, rule=rule, selector="tukey", engine="auto", batch_size=5)
    auto = ssa.analyse(model, x, target, 3, rule=rule, selector="tukey", engine="autograd", batch_size=5)
    assert any(v == "fast" for v in fast.engines.values())
    assert all(v == "autograd" for v in auto.engines.values())
    assert auto.graph.number_of_edges() > 0
    # two engines in float32: counts apart only by values on the selector's cut (the fixture's margin is
    # asserted), relevances to 1e-4 as before
    net = ssa.load_model(model)
    net.prepare(x)
    margin = fixture_margin(net, x, auto, rule, "tukey", batch_size=5)
    assert_graphs_close(fast, auto, margin=margin, rel=1e-4, abs=1e-7)


def load_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_grouped_net_is_fully_fast():
    net = load_model(_grouped())
    net.prepare(np.zeros((1, 3, 12, 12), np.float32))
    steps = net.describe_steps()
    assert steps and all(v.startswith("fast") for v in steps.values()), steps


class LayerNormNet(nn.Module):
    """ConvNeXt-style: a LayerNorm over the channels of each position between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.norm = nn.LayerNorm(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r2 = nn.GELU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.r1(self.c1(x))
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.fc(self.r2(self.c2(y)).mean((2, 3)))


def test_fallback_reason_is_reported():
    """A LayerNorm mixes the channels of a position: no closed form; the step falls back to autograd and says why.
    (A squeeze-excitation product, this test's example before, now has a closed form.)"""
    torch.manual_seed(0)
    net = load_model(LayerNormNet().eval())
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.prepare(x)
    steps = net.describe_steps()
    assert steps["r2 -> r1"].startswith("autograd (layer normalisation mixes the channels"), steps
    assert steps["logits -> r2"] == "fast (linear)"
    assert net.closed_form_summary() == ("1 of 2 steps by the closed form; by autograd: 1 x layer normalisation "
                                         "mixes the channels of a position (no closed form)")


def test_session_reanalyses_without_the_network(monkeypatch):
    from ssa.session import Session

    s = Session("digits", "digits", labels=None, rule="gradient")
    s.labels_spec = None
    first = s.analyse(3, 3, selector="tukey")
    net = s.network

    def boom(*a, **k):
        raise AssertionError("the network ran again")

    monkeypatch.setattr(net, "collect", boom)
    monkeypatch.setattr(net, "step_relevance", boom)
    monkeypatch.setattr(net, "run", boom)
    other = s.analyse(5, 2, selector="zscore")
    assert other.target == 5 and first.target == 3


ONNX_CASES = ["vgg", "resnet", "mobilenetv3", "channels_last", "keras"]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    from . import onnx_models as om

    root = tmp_path_factory.mktemp("fast_onnx")
    specs = {"vgg": (om.vgg_style, (3, 8, 8)), "resnet": (om.resnet_style, (3, 8, 8)),
             "mobilenetv3": (om.mobilenet_style, (3, 8, 8)), "channels_last": (om.channels_last, (8, 8, 3))}
    out = {}
    for name, (build, shape) in specs.items():
        x = om.images(shape, 6)
        out[name] = (om.export(build(), x, root / f"{name}.onnx"), x)
    out["keras"] = (om.keras_style_onnx(om.keras_style_torch(), root / "keras.onnx"), om.images((8, 8, 3), 6))
    return out


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("name", ONNX_CASES)
def test_fast_equals_autograd_on_onnx_conversions(onnx_files, name, form):
    """onnx2torch graphs (Transposes, MatMul + Add, constant scales) take the closed form too, exactly."""
    path, x = onnx_files[name]
    net = load_model(str(path))
    net.prepare(x)
    assert net.fast_taps("gradient"), net.describe_steps()
    _omega_close(net, x, form)


def test_keras_dense_layers_are_fast_with_the_batchnorm_scale_folded(onnx_files):
    path, x = onnx_files["keras"]
    net = load_model(str(path))
    net.prepare(x)
    steps = net.describe_steps()
    assert all(v.startswith("fast") for v in steps.values()), steps
    # the exported batch-norm (Mul + Add between the dense ReLU and the next dense layer) is folded into
    # that layer's weight and bias by canonicalisation, so both forms hold for the logits step
    assert net.canon_report.by_pass()["fold-affine"] >= 2
    assert "logits" in net.fast_taps("gradient") and "logits" in net.fast_taps("gradient_x_activation")


@pytest.mark.parametrize("form", ["gradient", "gradient_x_activation"])
def test_fast_equals_autograd_through_concatenations(form):
    """SqueezeNet's Fire modules concatenate two taps into the next conv's input: one term per parent."""
    import torchvision

    torch.manual_seed(0)
    model = _heavy_tail_(torchvision.models.squeezenet1_1(weights=None, num_classes=10), 5)
    x = np.random.default_rng(1).standard_normal((3, 3, 48, 48)).astype(np.float32)
    net = load_model(model)
    net.prepare(x)
    multi = [t for t in net.fast_taps(form) if len(net.tap(t).parents) > 1]
    assert multi, net.describe_steps()
    assert _omega_close(net, x, form) > 0


def test_statistics_serve_bootstrap_resamples():
    """A resample with repeated images, read from statistics collected once, equals autograd on the resample."""
    from ssa.engines.autograd import AutogradSource
    from ssa.engines.closed_form import ClosedFormSource
    from ssa.engines.statistics import collect
    from ssa.io.images import load_images
    from ssa.session import run_traversal

    x, y = load_images("digits")
    x = x[y == 5][:90]
    net = load_model("digits")
    net.prepare(x)
    rule, sel = ssa.make_rule("gradient_x_activation"), ssa.make_selector("tukey")
    stats = collect(net, x, ["gradient_x_activation"], 32)
    idx = np.random.default_rng(0).integers(0, len(x), len(x))
    assert len(np.unique(idx)) < len(idx)
    fast = run_traversal(ClosedFormSource(net, stats, "gradient_x_activation", x, 32, idx), net, 5, 3, rule, sel)
    auto = run_traversal(AutogradSource(net, x[idx], 32), net, 5, 3, rule, sel)
    assert fast.n_images == auto.n_images == len(idx)
    ef = sorted((u, v, d["frequency"]) for u, v, d in fast.graph.edges(data=True))
    ea = sorted((u, v, d["frequency"]) for u, v, d in auto.graph.edges(data=True))
    assert ef == ea and ef
