"""The class token alone (``tokens="cls"``, ``--tokens cls``; method doc, section 4b; issue 19, item 1).

On a tiny torchvision ViT the token taps (residual streams and GELUs, (N, T, C)) take their class token alone:
the graph changes, and equals the slow reference's (:func:`ssa.testing.reference.reference_ssa`, each token
tap's neuron read at position 0 of the token axis) under both rules. A model without a class token (a CNN,
a Swin: tokens but none of them a class token) is refused.
"""

from __future__ import annotations

import warnings

import pytest

import ssa
from ssa.errors import InvalidInputError
from ssa.testing.models import RefTap
from ssa.testing.reference import reference_ssa

from . import zoo_models as zm
from .graph_keys import assert_same_edges, edges_by_order, predicted_class
from .test_torchvision_zoo import _export, _reference_taps

BRANCHING = 2


def _vit():
    model = zm.build("vit")
    x = zm.images("vit", 3)
    return model, x, predicted_class(model, x)


def test_the_class_token_alone_changes_the_graph():
    model, x, target = _vit()
    graphs = {tokens: edges_by_order(ssa.analyse(model, x, target, BRANCHING, rule="gradient", selector="tukey",
                                                 tokens=tokens)) for tokens in ("all", "cls")}
    assert set(graphs["all"]) != set(graphs["cls"])
    net = ssa.load_model(model, tokens="cls")
    net.prepare(x)
    tokens = [t.name for t in net.taps if len(t.shape) == 2]
    assert len(tokens) == 6 and all(net.describe_steps()[s].startswith("autograd") for s in net.describe_steps())


@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
def test_the_class_token_alone_equals_the_reference(rule):
    model, x, target = _vit()
    res = ssa.analyse(model, x, target, BRANCHING, rule=rule, selector="tukey", tokens="cls")
    # the token taps: per image (T, C), channels last; the reference reads them at token 0
    ref_taps = tuple(RefTap(r.name, r.module, r.call, r.channel_axis, r.parents, r.op,
                            cls=len(t.shape) == 2 and t.channel_axis == 2)
                     for r, t in zip(_reference_taps(model, x, res.taps), res.taps, strict=True))
    assert sum(r.cls for r in ref_taps) == 6
    want_named = reference_ssa(model, x, ref_taps, target, BRANCHING, rule)
    order = {t.name: t.order for t in res.taps}
    want = {(order[u], n, order[v], k): val for (u, n, v, k), val in want_named.items()}
    assert_same_edges(edges_by_order(res), want)
    assert len(want) >= 6, len(want)


def test_the_class_token_alone_through_onnx(tmp_path):
    """The class token is found in the converted ONNX graph too (its Concat), with the module's graph."""
    model, x, target = _vit()
    path = _export("vit", model, x, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ssa.analyse(str(path), x, target, BRANCHING, rule="gradient", selector="tukey", tokens="cls")
    want = ssa.analyse(model, x, target, BRANCHING, rule="gradient", selector="tukey", tokens="cls")
    assert_same_edges(edges_by_order(got), edges_by_order(want))


@pytest.mark.parametrize("family", ["resnet", "swin"])
def test_a_model_without_a_class_token_is_refused(family):
    model = zm.build(family)
    x = zm.images(family, 2)
    with pytest.raises(InvalidInputError, match="the model has no class token"):
        ssa.load_model(model, tokens="cls").prepare(x)
