"""ssa.analysis.grouping: choosing each class's images by labels, predictions and confidence thresholds."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

import ssa
from ssa.analysis.grouping import class_probabilities, group_images, images_for_graph, parse_targets
from ssa.core.capabilities import SupportsClassProbabilities
from ssa.errors import InvalidInputError


def test_grouping_by_prediction_and_confidence(digits):
    x, y = digits
    net = ssa.load_model("digits")
    net.prepare(x)
    probs = class_probabilities(net, x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    groups = group_images(net, x, None, [2, 7], by_prediction=True, min_confidence=0.9)
    for c, g in groups.items():
        assert np.all(probs[g.indices].argmax(axis=1) == c)
        assert np.all(g.confidence >= 0.9)
        expected = np.flatnonzero((probs.argmax(axis=1) == c) & (probs[:, c] >= 0.9))
        np.testing.assert_array_equal(g.indices, expected)
    # with labels, the threshold applies to the labelled class's probability (the paper's selection)
    lab = group_images(net, x, y, [4], min_confidence=0.99)[4]
    assert np.all(y[lab.indices] == 4) and np.all(probs[lab.indices, 4] >= 0.99)
    res = ssa.analyse_many("digits", x, [7], by_prediction=True, min_confidence=0.9, max_per_class=9, preset="paper")
    assert res[7].n_images == 9 and res[7].graph.graph["grouping"] == "prediction"
    assert res[7].graph.graph["min_confidence"] == 0.9


def test_parse_targets():
    assert parse_targets("0,3, 5") == [0, 3, 5]
    assert parse_targets("ALL") == "all"
    for bad in ("a,b", "", "1,1", "-1"):
        with pytest.raises(InvalidInputError):
            parse_targets(bad)
    with pytest.raises(InvalidInputError, match=r"\[0, 9\]"):
        ssa.analyse_many("digits", "digits", [10])


def test_class_probabilities_are_the_softmax_of_the_logits_unless_the_network_computes_them(net, digits):
    x, _ = digits
    assert not isinstance(net, SupportsClassProbabilities)
    z = net.logits(x[:50]).astype(np.float64)
    reference = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # the definition, without the max shift
    np.testing.assert_allclose(class_probabilities(net, x[:50], batch_size=7), reference, rtol=1e-5, atol=1e-12)

    class Own:  # a network whose runtime gives its own probabilities (as onnxruntime does for ONNX models)
        taps = net.taps

        def class_probabilities(self, images):
            return np.full((len(images), 10), 0.1)

        def logits(self, images):  # pragma: no cover - must not be used
            raise AssertionError("the logits were used")

    assert isinstance(Own(), SupportsClassProbabilities)
    np.testing.assert_array_equal(class_probabilities(Own(), x[:20], batch_size=6), np.full((20, 10), 0.1))


def test_a_class_the_model_does_not_have_is_refused(net, digits):
    x, y = digits
    with pytest.raises(InvalidInputError, match=r"target must be in \[0, 9\] \(the model has 10 logits\), got 10"):
        group_images(net, x, y, [3, 10])


def test_images_for_graph_read_the_run_of_the_graph(net, digits):
    x, y = digits
    g = nx.DiGraph(target=4, grouping="labels", min_confidence="null", max_per_class=5)  # an older writer's "null"
    np.testing.assert_array_equal(images_for_graph(net, g, "digits"), x[y == 4][:5])
    g = nx.DiGraph(target=4, grouping="prediction", min_confidence=0.99)
    probs = class_probabilities(net, x)
    expected = np.flatnonzero((probs.argmax(axis=1) == 4) & (probs[:, 4] >= 0.99))
    np.testing.assert_array_equal(images_for_graph(net, g, "digits"), x[expected])
    with pytest.raises(InvalidInputError, match="the graph has no 'target' attribute"):
        images_for_graph(net, nx.DiGraph(), "digits")
