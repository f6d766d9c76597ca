"""The class token alone (``tokens="cls"``, ``--tokens cls``; method doc, section 4b; issue 19, item 1).

On a tiny torchvision ViT the token taps (residual streams and GELUs, (N, T, C)) take their class token alone:
the graph changes, and equals the slow reference's (:func:`ssa.testing.reference.reference_ssa`, each token
tap's neuron read at position 0 of the token axis) under both rules. A model without a class token (a CNN,
a Swin: tokens but none of them a class token) is refused. The ablations of ``ssa evaluate`` ablate the class
token alone there too (against a written-out forward pass of the ViT).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

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


def _vit_forward(model, image, replace):
    """One image through the tiny ViT, written out; ``replace(tap, values) -> values`` edits a token tap's (T, C)
    values (the taps: the two residual adds of each encoder block and its MLP's GELU)."""
    with torch.no_grad():
        x = model.conv_proj(torch.from_numpy(image[None]))
        x = x.reshape(1, model.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([model.class_token, x], dim=1) + model.encoder.pos_embedding

        def edit(tap, v):
            return torch.from_numpy(replace(tap, v[0].numpy().copy()))[None]

        for k, layer in enumerate(model.encoder.layers):
            h = layer.ln_1(x)
            h, _ = layer.self_attention(h, h, h, need_weights=False)
            x = edit(f"add_{2 * k + 1}", h + x)
            y = edit(f"encoder.layers.encoder_layer_{k}.mlp.1", layer.mlp[1](layer.mlp[0](layer.ln_2(x))))
            x = edit(f"add_{2 * k + 2}", x + layer.mlp[3](y))
        logits = model.heads(model.encoder.ln(x)[:, 0])
    return logits[0].double().numpy()


def test_the_ablations_take_the_class_token_alone():
    """With tokens="cls" an ablated neuron of a token tap is its channel at the class token: the ablator's
    logits equal the written-out forward pass that changes position 0 of the channel alone (zero, mean,
    resample); with tokens="all" the one that changes the channel at every token."""
    model, _, _ = _vit()
    scored, pool = zm.images("vit", 3, seed=1), zm.images("vit", 4, seed=2)
    clean = {}

    def record(i):
        def keep(tap, v):
            clean[i, tap] = v.copy()
            return v
        return keep

    for i, image in enumerate(pool):
        _vit_forward(model, image, record(i))
    np.testing.assert_allclose(_vit_forward(model, scored[0], lambda tap, v: v),
                               model(torch.from_numpy(scored[:1]))[0].detach().double().numpy(), rtol=1e-5,
                               atol=1e-5)  # the written-out pass is the model's
    taps = sorted({tap for _, tap in clean})
    assert len(taps) == 6
    ablate = {tap: np.array([1, 4, 9]) + (k % 2) for k, tap in enumerate(taps)}
    rng = np.random.default_rng(0)
    got = {}
    for tokens in ("all", "cls"):
        net = ssa.load_model(model, tokens=tokens)
        net.prepare(scored)
        assert {t.name for t in net.taps if t.name != "logits"} == set(taps)
        ablator = net.ablator(batch_size=2)  # several batches: donors are sliced per batch
        ablator.fit_means(pool, taps)
        ablator.fit_pool(pool, taps)
        donors = {t: rng.integers(0, len(pool), size=(len(scored), net.tap(t).n_neurons)) for t in taps}
        positions = slice(0, 1) if tokens == "cls" else slice(None)
        for mode in ("zero", "mean", "resample"):
            got[tokens, mode] = ablator.logits(scored, ablate, mode, donors if mode == "resample" else None)
            for i, image in enumerate(scored):
                def replace(tap, v, _i=i, _mode=mode, _donors=donors, _at=positions):
                    for c in ablate[tap]:
                        if _mode == "zero":
                            v[_at, c] = 0.0
                        elif _mode == "mean":
                            v[_at, c] = np.mean([clean[p, tap][_at, c] for p in range(len(pool))], axis=0)
                        else:  # the donor's clean value of this very neuron
                            v[_at, c] = clean[_donors[tap][_i, c], tap][_at, c]
                    return v

                np.testing.assert_allclose(got[tokens, mode][i], _vit_forward(model, image, replace), rtol=1e-4,
                                           atol=1e-5, err_msg=f"{tokens} {mode}")
    for mode in ("zero", "mean", "resample"):  # the two token modes ablate different neurons
        assert np.abs(got["all", mode] - got["cls", mode]).max() > 1e-3, mode
