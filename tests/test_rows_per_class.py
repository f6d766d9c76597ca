"""Rows per class (``ssa_torch.closed_form.deferred``, "Rows per class"): a one-class run's statistics pass keeps ``m``
(a ReLU's 0/1 mask as ``uint8``) and the input of every convolution its CPU per-image kernels correlate
(``shifted_rows``, ``per_image``), and the class makes its rows with that kernel on its own output channels
(``ssa_torch.closed_form.conv.class_rows``).

The reference is the statistics pass's own values (``conv_input_relevance``): the rows must equal them bit for bit on
each kernel and geometry, in both layouts, whatever rows and images are asked together (without the padding of the
picked channels to 16, MKL rounds some rows otherwise and these tests fail); whole one-class graphs must equal those
with every row precomputed (``SSA_ROWS_PER_CLASS=0``), for a torch model and its ONNX export; the session's memory
budget counts the kept arrays and falls back to precomputing where they do not fit; runs of several classes
precompute as before.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ssa_torch.closed_form import deferred
from ssa_torch.closed_form.conv import class_kernel, class_rows, conv_input_relevance
from ssa_torch.closed_form.linear import LinearOp
from torch import nn

import ssa
from ssa.engines.statistics import collect

FORM = "gradient_x_activation"

# (out channels, in channels, input size, kernel, stride, padding, dilation): VGG16's layers at 56 px (shifted rows)
# and 28 / 14 px (per image), narrower ones, strides, no padding, dilation, a 1x1 convolution
GEOMETRIES = [(64, 64, 56, 3, 1, 1, 1), (128, 64, 56, 3, 1, 1, 1), (256, 128, 28, 3, 1, 1, 1),
              (512, 256, 28, 3, 1, 1, 1), (512, 512, 14, 3, 1, 1, 1), (64, 32, 60, 3, 1, 1, 1),
              (32, 48, 20, 3, 1, 1, 1), (48, 33, 9, 3, 1, 1, 1), (64, 64, 56, 3, 1, 0, 1), (96, 64, 29, 3, 2, 1, 1),
              (48, 40, 16, 3, 1, 2, 2), (80, 64, 12, 1, 1, 0, 1), (64, 32, 15, 5, 2, 2, 1)]


def _case(n, c, size, k, stride, pad, dil, nhwc, relu_of, batch=3, seed=0):
    """Heavy-tailed weights and inputs; ``m`` a ReLU's output (as the statistics pass hands it) or any derivative."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn((n, c, k, k), generator=gen) * torch.exp(torch.randn((n, c, 1, 1), generator=gen))
    op = LinearOp("conv", w, 1, (stride, stride), (dil, dil), (pad,) * 4)
    x = torch.relu(torch.randn((batch, c, size, size), generator=gen)) * torch.exp(
        2 * torch.randn((batch, c, 1, 1), generator=gen))
    ho = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
    m = torch.randn((batch, n, ho, ho), generator=gen)
    m = torch.relu(m) if relu_of else m
    if nhwc:
        x, m = x.contiguous(memory_format=torch.channels_last), m.contiguous(memory_format=torch.channels_last)
    return op, m, x


def _kept(m, x, relu_of):
    kept = deferred.keep_for_class(m, x, relu_of, m.dim() == 4 and not m.is_contiguous(),
                                   x.dim() == 4 and not x.is_contiguous())
    return deferred.kept_for_class(kept)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
@pytest.mark.parametrize("relu_of", [True, False])
def test_class_rows_are_the_pass_kernels_values(geometry, layout, relu_of):
    op, m, x = _case(*geometry, nhwc=layout == "channels-last", relu_of=relu_of)
    kernel = class_kernel(op, m)
    assert kernel in ("shifted_rows", "per_image")
    want = conv_input_relevance(op, m, x, relu_of=relu_of).transpose(0, 1)  # (N, B, C): the pass's values
    km, kx = _kept(m, x, relu_of)
    assert km.dtype == (torch.uint8 if relu_of else torch.float32)
    n = geometry[0]
    gen = torch.Generator().manual_seed(1)
    for k in (1, 2, 5, 15, 16, 17, 33, n):
        h = torch.randperm(n, generator=gen)[:min(k, n)]
        got = class_rows(op, km, kx, h)
        assert got.is_contiguous() and got.shape == (len(h), m.shape[0], op.weight.shape[1])
        assert torch.equal(got, want[h]), (kernel, k, (got - want[h]).abs().max())


def test_the_pass_kernels_tiles_are_kept():
    """A class's few rows use the tile of positions (``shifted_rows``) sized for all the layer's output channels, as
    the pass does: with a tile sized for the class's 16 rows, the sums are made in another order."""
    op, m, x = _case(512, 64, 64, 3, 1, 1, 1, nhwc=True, relu_of=True, batch=2)
    assert class_kernel(op, m) == "shifted_rows"
    want = conv_input_relevance(op, m, x, relu_of=True).transpose(0, 1)
    km, kx = _kept(m, x, True)
    h = torch.arange(0, 512, 32)
    assert torch.equal(class_rows(op, km, kx, h), want[h])


def test_a_rows_values_do_not_depend_on_the_rows_and_images_asked_with_it():
    for geometry in [(128, 64, 56, 3, 1, 1, 1), (256, 128, 28, 3, 1, 1, 1)]:
        op, m, x = _case(*geometry, nhwc=True, relu_of=True, batch=5)
        km, kx = _kept(m, x, True)
        picks = torch.arange(3, geometry[0], 37)
        together = class_rows(op, km, kx, picks)
        alone = torch.cat([class_rows(op, km, kx, picks[j:j + 1]) for j in range(len(picks))])
        assert torch.equal(alone, together)
        reordered = class_rows(op, km, kx, picks.flip(0))
        assert torch.equal(reordered, together.flip(0))
        few = class_rows(op, km[[4, 1]], kx[[4, 1]], picks)
        assert torch.equal(few, together[:, [4, 1]])


def test_which_convolutions_make_their_rows_per_class():
    def case(n, c, size, k=3, stride=1, groups=1, device="cpu"):
        op = LinearOp("conv", torch.zeros((n, c // groups, k, k)), groups, (stride, stride), pad=(k // 2,) * 4)
        return class_kernel(op, torch.zeros((1, n, size // stride, size // stride), device=device))

    assert case(64, 64, 224) == case(128, 128, 112) == case(256, 256, 56) == "shifted_rows"  # VGG16's
    assert case(512, 256, 28) == case(512, 512, 14) == "per_image"
    assert case(64, 3, 224) is None  # few input channels: another kernel
    assert case(40, 64, 28) is None  # not a multiple of 16 output channels
    assert case(64, 64, 28, groups=2) is None
    # per image with tiles of rows that are not whole blocks of 16 (TILE_BYTES // (C * 4) rows: 131072 // 48 = 2730)
    assert case(4096, 48, 10) is None and case(2048, 48, 10) == "per_image"
    op = LinearOp("conv", torch.zeros((64, 64, 3, 3, 3)), 1, (1, 1, 1), (1, 1, 1), (1,) * 6)
    assert class_kernel(op, torch.zeros((1, 64, 8, 8, 8))) is None  # 3-D


def _vgg_like() -> nn.Module:
    """A small VGG (heavy-tailed weights): layers the channels-last pass correlates with shifted rows (56 px) and per
    image (28 and 14 px, one with stride 2), the first layer (3 input channels) by another kernel and one of 40 output
    channels precomputed."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(64, 40, 3, padding=1), nn.ReLU(), nn.Conv2d(40, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.mul_(torch.exp(torch.randn(mod.weight.shape[:2])[:, :, None, None]))
                mod.bias.mul_(0.1)
    return model


def _images(n=6, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 56, 56)).astype(np.float32)


@pytest.fixture
def kept(monkeypatch):
    """Records the convolutions that kept their m and input for a class (:func:`deferred.keep_for_class`) in a batch
    of more than one image (one image: ``statistics_bytes``' measuring pass)."""
    did: list[tuple[int, ...]] = []
    original = deferred.keep_for_class

    def recording(m, x, relu_of, nhwc_m, nhwc_x):
        if m.shape[0] > 1:
            did.append((tuple(m.shape[1:]), relu_of, nhwc_m, nhwc_x))
        return original(m, x, relu_of, nhwc_m, nhwc_x)

    monkeypatch.setattr(deferred, "keep_for_class", recording)
    return did


def _edges(res):
    g = res.graph
    return sorted((str(u), str(v), sorted(d.items())) for u, v, d in g.edges(data=True)), sorted(
        (str(n), sorted(d.items())) for n, d in g.nodes(data=True))


def _both(model, images, monkeypatch, kept, **kw):
    monkeypatch.setenv("SSA_ROWS_PER_CLASS", "0")
    plain = ssa.analyse(model, images, kw.pop("target", 3), 3, batch_size=4, **kw)
    assert not kept
    monkeypatch.delenv("SSA_ROWS_PER_CLASS")
    per_class = ssa.analyse(model, images, 3, 3, batch_size=4, **kw)
    return plain, per_class


@pytest.mark.parametrize("layout", ["channels-last", "contiguous"])
@pytest.mark.parametrize("selector", ["mad", "tukey"])
def test_one_class_graphs_equal_those_with_every_row_precomputed(layout, selector, monkeypatch, kept):
    """The default rule on a small VGG, one class (``ssa.analyse``): the graph with the rows made per class equals the
    one with every row precomputed, bit for bit (values, counts, every attribute)."""
    if layout == "contiguous":
        monkeypatch.setenv("SSA_CHANNELS_LAST", "0")
    plain, per_class = _both(_vgg_like(), _images(), monkeypatch, kept, selector=selector)
    # the four layers of a multiple of 16 output channels above the first: shifted rows at 56 px, per image below
    assert {s[0] for s in kept} == {(32, 56, 56), (48, 28, 28), (64, 14, 14), (32, 14, 14)}
    assert all(relu_of for _, relu_of, _, _ in kept)
    assert {(a, b) for _, _, a, b in kept} == ({(True, True)} if layout == "channels-last" else {(False, False)})
    assert _edges(plain) == _edges(per_class)
    assert plain.graph.number_of_edges() > 10


def test_an_onnx_exports_one_class_graph_equals_the_precomputed_one(monkeypatch, kept, tmp_path):
    pytest.importorskip("onnx2torch")
    path = tmp_path / "vgg.onnx"
    torch.onnx.export(_vgg_like(), torch.from_numpy(_images(2)), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    plain, per_class = _both(str(path), _images(5, seed=2), monkeypatch, kept)
    assert len(kept) >= 3
    assert _edges(plain) == _edges(per_class)


def test_the_budget_counts_the_kept_arrays(monkeypatch, kept):
    """``statistics_bytes`` under ``rows_per_class`` is what the pass then keeps per image (the masks in one byte);
    a session whose budget does not hold them for every image precomputes its rows, with the same graph."""
    images = _images()
    net = ssa.load_model(_vgg_like())
    net.prepare(images)
    plain_bytes = net.statistics_bytes(FORM)
    with net.rows_per_class():
        per_class_bytes = net.statistics_bytes(FORM)
        stats = collect(net, images, [FORM], 4)
    assert stats.nbytes == per_class_bytes * len(images) and per_class_bytes != plain_bytes
    masks = [k for k in stats.keys(FORM) if k.endswith("/km_nhwc")]
    assert len(masks) == 4 and all(stats.rows(FORM, k).dtype == torch.uint8 for k in masks)
    assert net.statistics_bytes(FORM) == plain_bytes  # outside: as before
    kept.clear()

    monkeypatch.setenv("SSA_STATS_BYTES", str(per_class_bytes * len(images) - 1))
    short = ssa.analyse(_vgg_like(), images, 3, 3, batch_size=4)
    assert not kept  # would not fit: every row precomputed
    monkeypatch.setenv("SSA_STATS_BYTES", str(per_class_bytes * len(images)))
    fits = ssa.analyse(_vgg_like(), images, 3, 3, batch_size=4)
    assert kept
    assert _edges(short) == _edges(fits)


def test_runs_of_several_classes_precompute(kept):
    """A session without ``only_target`` (``--targets all``, studies) keeps every row, as before."""
    session = ssa.Session(_vgg_like(), _images())
    graphs = [session.analyse(t, 3) for t in (1, 3)]
    assert not kept and all(g.graph.number_of_edges() for g in graphs)


def test_the_switch_is_checked(monkeypatch):
    from ssa.session import rows_per_class_enabled

    assert rows_per_class_enabled()
    monkeypatch.setenv("SSA_ROWS_PER_CLASS", "0")
    assert not rows_per_class_enabled()
    monkeypatch.setenv("SSA_ROWS_PER_CLASS", "off")  # the words every switch takes (ssa.core.checks.env_switch)
    assert not rows_per_class_enabled()
    for typo in ("of", "2"):
        monkeypatch.setenv("SSA_ROWS_PER_CLASS", typo)
        with pytest.raises(ssa.errors.InvalidInputError, match="SSA_ROWS_PER_CLASS"):
            rows_per_class_enabled()
