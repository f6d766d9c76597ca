"""Deferred rows (``ssa_torch.closed_form.deferred``): a wide 1x1 convolution with few output positions keeps ``m`` and
its input as statistics and makes a class's rows of the default rule's relevance when the class asks.

The reference is the per-image kernel the statistics pass ran before (``conv_input_relevance``, kernel
``per_image``): the rows must be its values bit for bit, whichever rows and images are asked together; whole
analyses with every eligible convolution deferred must equal those without, bit for bit, and the slow reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from ssa_torch.closed_form import deferred
from ssa_torch.closed_form.conv import ConvTerm, conv_input_relevance
from ssa_torch.closed_form.linear import LinearOp

import ssa
from ssa.engines.statistics import DeviceStatistics, collect
from ssa.testing.models import ALL_CASES

from .test_fast import _omega_close
from .test_traversal_reference import N_IMAGES, assert_same_edges, cached_reference, graph_edges

# (out channels, in channels, input size, stride): ResNet-50's 7x7 layers, small ones, a few terms per product
GEOMETRIES = [(2048, 512, 7, 1), (512, 2048, 7, 1), (2048, 1024, 14, 2), (64, 48, 5, 1), (40, 33, 3, 1),
              (300, 7, 2, 1), (24, 9, 8, 2)]


def _case(n: int, c: int, size: int, stride: int, batch: int = 5, seed: int = 0):
    """Heavy-tailed weights and inputs, a ReLU output above the convolution (as the statistics pass hands it)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn((n, c, 1, 1), generator=gen) * torch.exp(torch.randn((n, c, 1, 1), generator=gen))
    op = LinearOp("conv", w, 1, (stride, stride))
    x = torch.relu(torch.randn((batch, c, size, size), generator=gen)) * torch.exp(
        2 * torch.randn((batch, c, 1, 1), generator=gen))
    ho = (size - 1) // stride + 1
    act = torch.relu(torch.randn((batch, n, ho, ho), generator=gen))
    return op, act, x


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("relu_of", [True, False])
def test_rows_are_the_per_image_kernels_values(geometry, relu_of):
    op, act, x = _case(*geometry)
    m = act if relu_of else torch.randn(act.shape, generator=torch.Generator().manual_seed(3))
    want = conv_input_relevance(op, m, x, kernel="per_image", relu_of=relu_of).transpose(0, 1)  # (N, B, C)
    kept = deferred.collect(op, m, x, relu_of)
    assert kept["m"].shape == (x.shape[0], geometry[0], act.shape[2] * act.shape[3])
    w = op.weight.reshape(geometry[0], -1)
    gen = torch.Generator().manual_seed(1)
    for n in (1, 2, 3, 5, 17, geometry[0]):
        for _ in range(4):
            h = torch.randperm(geometry[0], generator=gen)[:min(n, geometry[0])]
            got = deferred.rows(w, kept["m"], kept["x"], h)
            assert got.is_contiguous() and torch.equal(got, want[h]), (n, h[:5])


def test_a_rows_values_do_not_depend_on_the_rows_and_images_asked_with_it():
    op, act, x = _case(512, 2048, 7, 1, batch=6)
    kept = deferred.collect(op, act, x, True)
    w = op.weight.reshape(512, -1)
    alone = torch.cat([deferred.rows(w, kept["m"], kept["x"], torch.tensor([j])) for j in range(0, 512, 37)])
    together = deferred.rows(w, kept["m"], kept["x"], torch.arange(0, 512, 37))
    assert torch.equal(alone, together)
    few = deferred.rows(w, kept["m"][[4, 1]], kept["x"][[4, 1]], torch.arange(0, 512, 37))
    assert torch.equal(few, together[:, [4, 1]])


def test_the_choice_is_made_from_shapes():
    def op(n, c, k=(1, 1), stride=1, groups=1, pad=(0, 0, 0, 0)):
        return LinearOp("conv", torch.zeros((n, c // groups, *k)), groups, (stride, stride), pad=pad)

    assert deferred.DEFER_RATIO == 4.0
    assert deferred.defers(op(2048, 512), (7, 7)) and deferred.defers(op(512, 2048), (7, 7))
    assert deferred.defers(op(2048, 1024, stride=2), (7, 7))
    assert not deferred.defers(op(1024, 256), (14, 14))  # ResNet-50's 14x14 1x1 layers: about as large
    assert not deferred.defers(op(512, 1024), (14, 14))
    assert not deferred.defers(op(512, 512, (3, 3)), (7, 7))
    assert not deferred.defers(op(2048, 512, groups=2), (7, 7))
    assert not deferred.defers(op(2048, 512, pad=(1, 1, 1, 1)), (9, 9))


@pytest.fixture
def everywhere(monkeypatch):
    """Every eligible convolution defers (the test models' layers are small); returns the terms that did."""
    monkeypatch.setattr(deferred, "DEFER_RATIO", 0.0)
    did: list[ConvTerm] = []
    original = deferred.collect

    def recording(op, m, x, relu_of):
        did.append(op)
        return original(op, m, x, relu_of)

    monkeypatch.setattr(deferred, "collect", recording)
    return did


def _graph(model, images, selector="tukey", target=0, branching=3):
    res = ssa.analyse(model, images, target, branching, rule="gradient_x_activation", selector=selector,
                      batch_size=5)
    g = res.graph
    return res, sorted((str(u), str(v), sorted(d.items())) for u, v, d in g.edges(data=True)), sorted(
        (str(n), sorted(d.items())) for n, d in g.nodes(data=True))


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_graphs_with_every_1x1_conv_deferred_equal_the_reference(case, everywhere):
    """Forced onto every 1x1 convolution of the test models (their layers are too small to defer by the rule, and
    take other kernels than the per-image one: so equal to the slow reference, not bit for bit to those kernels)."""
    res, _, _ = _graph(case.build(), case.images(N_IMAGES), "tukey", case.target, case.branching)
    assert_same_edges(graph_edges(res.graph), cached_reference(case.name, "gradient_x_activation"))
    if case.name == "residual":
        assert everywhere, "no convolution deferred: nothing was tested"


def _resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.weight.mul_(torch.exp(torch.randn(mod.weight.shape[:2])[:, :, None, None]))
    return model


@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
def test_a_resnet_with_deferred_rows_equals_autograd_per_step(layout, everywhere, monkeypatch):
    """torchvision's ResNet-18 (heavy-tailed weights), its three 1x1 downsampling convolutions deferred, in the CPU's
    channels-last statistics pass (its default for ResNet-18) and the contiguous one: every step's omega equals
    autograd's, and the statistics hold ``m`` and ``x`` for them, in less memory."""
    if layout == "contiguous":
        monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    x = np.random.default_rng(0).standard_normal((6, 3, 64, 64)).astype(np.float32)
    net = ssa.load_model(_resnet18())
    net.prepare(x)
    assert _omega_close(net, x, "gradient_x_activation") > 20
    assert len({id(op) for op in everywhere}) == 3
    stats = collect(net, x, ["gradient_x_activation"], 4)
    assert isinstance(stats, DeviceStatistics)
    assert {"m", "x", "a"} <= {k.rsplit("/", 1)[1] for k in stats.keys("gradient_x_activation")}
    monkeypatch.setattr(deferred, "DEFER_RATIO", float("inf"))
    assert collect(net, x, ["gradient_x_activation"], 4).nbytes > stats.nbytes


@pytest.mark.parametrize("selector", ["mad", "tukey"])
def test_graphs_with_deferred_rows_equal_those_of_the_per_image_kernel(selector, everywhere, monkeypatch):
    """Where the statistics pass took the per-image kernel (wide layers in the contiguous pass, as ResNet-50's), the
    graphs with the rows deferred equal those without, bit for bit (values, counts, every attribute)."""
    monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    model = _resnet18()
    x = np.random.default_rng(1).standard_normal((7, 3, 64, 64)).astype(np.float32)
    deferred_graph = _graph(model, x, selector)[1:]
    assert everywhere
    monkeypatch.setattr(deferred, "DEFER_RATIO", float("inf"))
    assert deferred_graph == _graph(model, x, selector)[1:]
