"""The graph comparison helper (ssa.testing.tolerance, issue 18 item 12) passes what float32 noise does and
fails on everything else, and a fixture without margin fails loudly."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import ssa
from ssa.models import digits_data
from ssa.plugins import make_selector
from ssa.testing.reference import tukey_row
from ssa.testing.tolerance import Margin, assert_graphs_close, assert_labels_close, fixture_margin, near_cut


def _row_with_value_on_the_fence():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(40)
    q1, q3 = np.percentile(row, [25, 75])
    fence = q3 + 1.5 * (q3 - q1)
    row[7] = fence * (1 + 1e-7)  # just above Tukey's fence: an outlier by a hair
    return row


def test_near_cut_finds_the_value_on_the_fence_only():
    sel = make_selector("tukey")
    row = _row_with_value_on_the_fence()
    assert tukey_row(row)[7]  # the slow reference agrees it is an outlier
    mask = near_cut(sel, row[None])
    assert mask[0, 7] and mask.sum() == 1
    assert not near_cut(sel, np.r_[row[:7], row[7] * 1.5, row[8:]][None]).any()  # well clear of the fence
    assert not near_cut(sel, np.zeros((2, 5))).any()  # exact zeros stay exact


def test_labels_may_flip_only_on_the_cut():
    sel = make_selector("tukey")
    row = _row_with_value_on_the_fence()
    below = row.copy()
    below[7] = row[7] * (1 - 2e-7)  # float32-sized noise moves it under the fence: allowed
    assert_labels_close(sel, row[None], below[None])
    far = row.copy()
    far[3] = 100.0  # a real difference: a new outlier far from any cut
    with pytest.raises(AssertionError, match="not within"):
        assert_labels_close(sel, row[None], far[None])


def _graph(freq=10, rel=1.0, extra=False):
    g = nx.DiGraph()
    g.add_node("logits:3", tap="logits", neuron=3, frequency=20, in_degree=0, sign=1, mean_relevance=0.0)
    g.add_node("fc:1", tap="fc", neuron=1, frequency=freq, in_degree=1, sign=1, mean_relevance=rel)
    g.add_edge("logits:3", "fc:1", frequency=freq, relevance=rel, sign=1)
    if extra:
        g.add_node("fc:2", tap="fc", neuron=2, frequency=1, in_degree=1, sign=1, mean_relevance=rel)
        g.add_edge("logits:3", "fc:2", frequency=1, relevance=rel, sign=1)
    return g


def test_assert_graphs_close_passes_float_noise_and_nothing_else():
    assert_graphs_close(_graph(rel=1.0), _graph(rel=1.0 + 2.8e-5))  # the AMD EPYC difference
    with pytest.raises(AssertionError, match="relevance"):
        assert_graphs_close(_graph(rel=1.0), _graph(rel=1.001))
    with pytest.raises(AssertionError, match="count of"):
        assert_graphs_close(_graph(freq=10), _graph(freq=11))  # no value on the cut: counts are exact
    on_cut = Margin(1e-4, values=20, slack={("logits:3", "fc:1"): 1})
    assert_graphs_close(_graph(freq=10), _graph(freq=11), margin=on_cut)  # one value on the cut: one flip
    with pytest.raises(AssertionError, match="count of"):
        assert_graphs_close(_graph(freq=10), _graph(freq=12), margin=on_cut)
    with pytest.raises(AssertionError, match="edges differ|nodes differ"):
        assert_graphs_close(_graph(), _graph(extra=True))
    with pytest.raises(AssertionError, match="bad fixture"):
        assert_graphs_close(_graph(), _graph(), margin=Margin(1e-4, fragile=["logits:3: kept fc:1 ..."]))


@pytest.fixture(scope="module")
def class_3():
    x, y = digits_data()
    s = ssa.Session("digits", x[y == 3][:30], rule="gradient_x_activation")
    return s, x[y == 3][:30], s.analyse(3, 3, selector="tukey")


def test_fixture_margin_of_a_real_graph(class_3):
    """A real fixture: its margin at 1e-4 holds and the graph equals itself; with an absurd epsilon every
    value is 'on the cut' and the fixture is refused loudly."""
    s, x, r = class_3
    m = fixture_margin(s.network, x, r, "gradient_x_activation", "tukey").check()
    assert m.values > 10_000
    assert_graphs_close(r, r, margin=m)
    with pytest.raises(AssertionError, match="bad fixture"):
        fixture_margin(s.network, x, r, "gradient_x_activation", "tukey", eps=0.5).check()
