"""Figures (ssa.viz.figures, `ssa figures`): every figure is written and non-empty; the data behind them is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssa
from ssa.analysis.compare import compare
from ssa.cli import main
from ssa.core.arrays import to_numpy
from ssa.errors import InvalidInputError
from ssa.io.outdir import MANIFEST
from ssa.models import digits_cnn
from ssa.viz import figures as F
from tests.analysis.test_compare import make_graph

PNG = b"\x89PNG\r\n\x1a\n"


def _check(path, fmt="png"):
    data = path.read_bytes()
    assert len(data) > 1000, path
    if fmt == "png":
        assert data.startswith(PNG)
        from PIL import Image

        with Image.open(path) as im:
            assert im.size[0] > 50 and im.size[1] > 50
    else:
        assert b"<svg" in data[:2000]


@pytest.fixture(scope="module")
def digits():
    net = ssa.load_model("digits")
    x, y = ssa.load_images("digits")
    net.prepare(x)
    return net, x[y == 3][:10]


@pytest.fixture(scope="module")
def graphs():
    res = ssa.analyse_many("digits", "digits", [6, 8], rule="gradient_x_activation", selector="tukey", max_per_class=10)
    return res


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_every_plot_writes_an_image(tmp_path, fmt, graphs):
    rng = np.random.default_rng(0)
    counts = np.array([9, 9, 8, 3, 1, 0, 0, 2])
    _check(F.save_figure(F.plot_frequency(counts, n_images=9), tmp_path / f"freq.{fmt}"), fmt)
    _check(F.save_figure(F.plot_frequency(np.zeros(5, int)), tmp_path / f"freq0.{fmt}"), fmt)  # no outliers at all
    omega = rng.normal(size=(6, 12))
    heat = F.plot_relevance_heatmap(omega, selected=(omega > 1).astype(int))
    _check(F.save_figure(heat, tmp_path / f"heat.{fmt}"), fmt)
    g = graphs[6].graph
    _check(F.save_figure(F.plot_graph(g, shared={"features.1:2"}), tmp_path / f"graph.{fmt}"), fmt)
    inhib = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:3", -1), ("fc:1", "conv2:4")])
    _check(F.save_figure(F.plot_graph(inhib), tmp_path / f"inhib.{fmt}"), fmt)
    images = rng.random((3, 1, 8, 8))
    _check(F.save_figure(F.plot_saliency(images, rng.normal(size=images.shape)), tmp_path / f"sal.{fmt}"), fmt)
    rgb = rng.random((2, 3, 16, 16))
    _check(F.save_figure(F.plot_saliency(rgb, rng.normal(size=rgb.shape)), tmp_path / f"salrgb.{fmt}"), fmt)
    _check(F.save_figure(F.plot_activation_grid(rng.random((3, 4, 4)), images=images), tmp_path / f"act.{fmt}"), fmt)
    _check(F.save_figure(F.plot_activation_grid(rng.random((2, 4, 4))), tmp_path / f"act2.{fmt}"), fmt)
    cmp = compare([graphs[6].graph, graphs[8].graph])
    _check(F.save_figure(F.plot_clustermap(cmp), tmp_path / f"cm.{fmt}"), fmt)
    _check(F.save_figure(F.plot_clustermap(cmp, kind="nodes"), tmp_path / f"cmn.{fmt}"), fmt)
    _check(F.save_figure(F.plot_dendrogram(cmp), tmp_path / f"dendro.{fmt}"), fmt)


def test_bad_figure_requests(tmp_path, digits):
    net, x = digits
    with pytest.raises(InvalidInputError, match=".png or .svg"):
        F.save_figure(F.plot_frequency(np.ones(3)), tmp_path / "f.jpg")
    with pytest.raises(InvalidInputError, match="dense layer"):
        F.activation_maps(net, x, "classifier.2", 0)
    with pytest.raises(InvalidInputError, match="neuron must be in"):
        F.saliency(net, x, "features.6", 99)
    with pytest.raises(InvalidInputError, match="lowest tap"):
        F.relevance_rows(net, x, "features.1", 0)
    with pytest.raises(InvalidInputError, match="TAP:INDEX"):
        F.parse_node("features.6")
    assert F.parse_node("features.6:5") == ("features.6", 5)


def test_power_law_fit_recovers_exponent():
    ranks = np.arange(1, 40)
    counts = np.round(500 * ranks ** -1.3).astype(int)
    rng = np.random.default_rng(1)
    alpha, c, r2 = F.power_law_fit(rng.permutation(np.concatenate([counts, np.zeros(20, int)])))
    assert alpha == pytest.approx(1.3, abs=0.1)
    assert c == pytest.approx(500, rel=0.2)
    assert r2 > 0.95
    assert np.isnan(F.power_law_fit(np.array([0, 0, 3]))[0])


def test_relevance_rows_and_counts_match_the_traversal(digits):
    net, x = digits
    rule = ssa.make_rule("gradient_x_activation")
    parent, omega = F.relevance_rows(net, x, "features.6", 5, rule=rule, batch_size=4)
    assert parent == "features.3" and omega.shape == (10, 32)
    direct, _ = net.step_relevance(x, "features.6", [5], rule)
    direct = {k: to_numpy(v) for k, v in direct.items()}  # device arrays -> host
    np.testing.assert_allclose(omega, direct["features.3"][0], rtol=1e-5, atol=1e-8)
    counts, selected = F.outlier_counts(omega)
    expected = ssa.make_selector("tukey").select(omega)
    np.testing.assert_array_equal(counts, (expected > 0).sum(axis=0))
    res = ssa.analyse("digits", x, 3, rule="gradient_x_activation", selector="tukey", engine="autograd")
    step = next(s for s in res.steps if s.upper == "logits")
    _, om = F.relevance_rows(net, x, "logits", 3, rule=rule)
    np.testing.assert_array_equal(F.step_counts(step, 3), F.outlier_counts(om)[0])


def test_saliency_and_maps_match_plain_torch(digits):
    """Saliency is the gradient through the whole (uncut) network; maps are the tap's channel."""
    net, x = digits
    model = digits_cnn()
    seen = {}
    model.features[6].register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))
    xt = torch.from_numpy(x).requires_grad_(True)
    model(xt)
    seen["v"][:, 5].mean(dim=(1, 2)).sum().backward()
    np.testing.assert_allclose(F.saliency(net, x, "features.6", 5), xt.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(F.activation_maps(net, x, "features.6", 5), seen["v"][:, 5].detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(F.saliency(net, x, "logits", 3)).sum() > 0


def test_class_figures_and_cli(tmp_path, graphs, capsys):
    path = tmp_path / "class-6.json"
    graphs[6].write(path)
    other = tmp_path / "class-8.json"
    graphs[8].write(other)
    out = tmp_path / "figs"
    assert main(["figures", "digits", "--images", "digits", "--graph", str(path), "--out-dir", str(out),
                 "--compare", str(other), "--n-images", "4"]) == 0
    printed = capsys.readouterr().out
    kinds = {line.split()[0] for line in printed.splitlines()}
    assert kinds == {"graph", "frequency", "relevance", "saliency", "activations"}
    files = sorted(f for f in out.iterdir() if f.name != MANIFEST)  # the figures, not the record of them
    assert len(files) >= 5 and all(f.stat().st_size > 1000 for f in files)
    assert (out / "frequency-logits-6.png").exists()
    assert main(["figures", "digits", "--images", "digits", "--graph", str(path), "--out-dir", str(out),
                 "--neuron", "nope:1"]) == 2
    assert "not a node of the graph" in capsys.readouterr().err


class _Kept(list):
    """Figures kept in order: ``captured(fig)`` appends and returns ``fig``."""

    def __call__(self, fig):
        self.append(fig)
        return fig


@pytest.fixture
def captured():
    """The matplotlib figures the plot_* functions return (``captured[-1]``: the last one)."""
    return _Kept()


def test_clustermap_rows_read_top_down_and_neuron_labels_are_readable(tmp_path, graphs, captured):
    cmp = compare([graphs[6].graph, graphs[8].graph])
    captured(F.plot_clustermap(cmp))
    ax = next(a for a in captured[-1].axes if a.images and a.get_xticklabels())  # the heat map
    top, bottom = ax.get_ylim()[1], ax.get_ylim()[0]
    assert top < bottom  # y grows downwards: the first row is at the top
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows == cols == [cmp.labels[i] for i in cmp.order]  # the diagonal runs from the top left
    captured(F.plot_clustermap(cmp, kind="nodes"))
    ax = next(a for a in captured[-1].axes if a.images and a.get_xticklabels())
    assert len(ax.get_xticklabels()) == len(cmp.nodes)
    assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 7  # about 11 px at 110 dpi, was 5 pt


def test_frequency_plot_fit_inside_legend_outside_integer_ranks(tmp_path, captured):
    counts = np.zeros(64, int)
    counts[:17] = [183, 183, 183, 183, 183, 183, 183, 182, 181, 181, 179, 176, 156, 42, 15, 5, 2]
    captured(F.plot_frequency(counts, n_images=183))
    fig = captured[-1]
    ax = fig.axes[0]
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    fit = next(ln for ln in ax.get_lines() if ln.get_label().startswith("power law"))
    x, y = np.asarray(fit.get_xdata(), dtype=float), np.asarray(fit.get_ydata(), dtype=float)
    alpha, c, _ = F.power_law_fit(counts)
    assert c > 183  # the tied top ranks put the fit's start above every bar: it must still be inside the axes
    assert not np.isnan(y).any() and x[0] == 1 and x[-1] == 17  # the whole fit is drawn, rank 1 to 17 ...
    assert np.allclose(y, c * x ** -alpha)
    assert lo <= y.min() and y.max() <= hi  # ... inside the axes, as are the bars
    assert lo <= 2 and 183 <= hi and ax.get_yscale() == "log"
    frame = ax.get_window_extent()
    drawn = fit.get_transform().transform(np.column_stack([x, y]))
    assert (drawn[:, 1] >= frame.y0 - 0.5).all() and (drawn[:, 1] <= frame.y1 + 0.5).all()
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "number of images (183)" in labels
    legend = ax.get_legend().get_window_extent()
    assert legend.y0 >= ax.get_window_extent().y1 - 1  # above the axes, not over the bars
    captured(F.plot_frequency(np.array([0, 9, 0]), n_images=9))
    ticks = captured[-1].axes[0].get_xticks()
    assert list(ticks) == [1.0]


def test_saliency_and_activation_figures_have_colour_bars_and_no_gap(tmp_path, captured):
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, 8, 8))
    captured(F.plot_saliency(images, rng.normal(size=images.shape)))
    assert any("input" in a.get_ylabel() for a in captured[-1].axes)  # the colour bar, labelled
    captured(F.plot_activation_grid(rng.random((8, 4, 4)), images=images))
    fig = captured[-1]
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 1 and any(a.get_ylabel() == "activation" for a in fig.axes)  # one mosaic + colour bar
    mosaic = shown[0].images[0].get_array()
    assert mosaic.shape[0] == 2 * 8 + 1  # image row, then its map row, one pixel apart: no gap


def test_graph_colour_says_how_many_classes_keep_a_neuron(tmp_path, graphs, captured):
    g = graphs[6].graph
    kept = {n: (i % 3) + 1 for i, n in enumerate(g.nodes)}
    captured(F.plot_graph(g, kept_by=kept, n_graphs=3))
    ax = captured[-1].axes[0]
    colors = {tuple(np.round(c, 3)) for c in ax.collections[0].get_facecolors()}
    assert len(colors) == 4  # three class counts and the class neuron
    bar = captured[-1].axes[1]
    assert "3 classes" in bar.get_ylabel()
    captured(F.plot_graph(g))  # without other classes: colour by frequency
    assert "share of images" in captured[-1].axes[1].get_ylabel()
