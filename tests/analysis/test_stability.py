"""ssa.analysis.stability: bootstrap resamples of a class's images, each a Session.analyse with indices=."""

from __future__ import annotations

import math

import numpy as np

import ssa
from ssa.analysis.stability import stability
from ssa.session import Session

GXA = "gradient_x_activation"


def test_stability_is_seeded_and_bounded(net, class3) -> None:
    session = Session(net, class3, rule=GXA)
    kw = dict(selector="tukey", resamples=3)
    a = stability(session, 3, seed=0, **kw)
    b = stability(session, 3, seed=0, **kw)
    assert a == b
    assert 0.0 <= a.jaccard_mean <= 1.0 and 0.0 <= a.edge_jaccard_mean <= 1.0
    full = ssa.analyse(net, class3, 3, rule=GXA, selector="tukey").graph
    assert set(a.node_frequency) == {n for n, d in full.nodes(data=True) if d["tap"] != "logits"}
    assert set(a.edge_frequency) == set(full.edges())
    assert all(v in (0.0, 1 / 3, 2 / 3, 1.0) for v in a.node_frequency.values())
    assert not set(a.new_nodes) & set(a.node_frequency)


def test_identical_images_give_perfect_stability(net, class3) -> None:
    same = np.repeat(class3[:1], 12, axis=0)
    s = stability(Session(net, same, rule=GXA), 3, selector="tukey", resamples=3, seed=5)
    assert s.jaccard_mean == 1.0 and s.jaccard_std == 0.0 and s.edge_jaccard_mean == 1.0
    assert set(s.node_frequency.values()) == {1.0} and s.new_nodes == {}


def test_zero_resamples_give_nan(net, class3) -> None:
    s = stability(Session(net, class3, rule="gradient"), 3, selector="tukey", resamples=0)
    assert math.isnan(s.jaccard_mean) and s.node_frequency == {}


def test_resamples_from_the_sessions_statistics_equal_fresh_analyses_of_the_resampled_images(net, class3) -> None:
    """Slow reference: each bootstrap graph analysed from scratch (its own statistics) on the resampled images."""
    images = class3[:30]
    s = stability(Session(net, images, rule=GXA), 3, selector="tukey", resamples=3, seed=2)
    rng = np.random.default_rng(2)
    full = ssa.analyse(net, images, 3, rule=GXA, selector="tukey").graph
    full_nodes = {n for n, d in full.nodes(data=True) if d["tap"] != "logits"}
    hits = {n: 0 for n in full_nodes}
    jac = []
    for _ in range(3):
        idx = rng.integers(0, len(images), size=len(images))
        g = ssa.analyse(net, images[idx], 3, rule=GXA, selector="tukey").graph
        nodes = {n for n, d in g.nodes(data=True) if d["tap"] != "logits"}
        for n in nodes & full_nodes:
            hits[n] += 1
        jac.append(len(nodes & full_nodes) / len(nodes | full_nodes))
    assert s.node_frequency == {n: c / 3 for n, c in sorted(hits.items())}
    assert s.jaccard_mean == np.mean(jac) and s.jaccard_std == np.std(jac)


def test_a_class_chosen_by_label_is_resampled_like_a_session_of_its_images_alone(net, digits) -> None:
    images, labels = digits
    sub = np.flatnonzero(labels[:400] == 5)
    by_label = stability(Session(net, images[:400], labels=labels[:400], rule=GXA), 5, selector="tukey",
                         resamples=2, seed=1)
    alone = stability(Session(net, images[sub], rule=GXA), 5, selector="tukey", resamples=2, seed=1)
    assert by_label == alone
    chosen = stability(Session(net, images[:400], rule=GXA), 5, selector="tukey", resamples=2, seed=1, indices=sub)
    assert chosen == alone
