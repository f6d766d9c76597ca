"""The three ablations (zero, mean, resample) against a slow, written-out forward pass of a tiny network; the
resample donors; the bootstrap intervals; necessity and sufficiency of a circuit planted in a network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ssa
from ssa.analysis.ablation import Scorer, draw_donors, interval, kl_divergence
from ssa.analysis.faithfulness import faithfulness
from ssa.errors import InvalidInputError
from ssa.session import Session

from ..test_planted_circuit import images as planted_images
from ..test_planted_circuit import planted_model

TAPS = ("relu1", "relu2")


def _tiny():
    model = planted_model()
    with torch.no_grad():  # weights that make every channel matter, so that a wrong channel shows
        g = torch.Generator().manual_seed(3)
        model.conv1.weight.copy_(torch.randn(model.conv1.weight.shape, generator=g) * 0.5)
        model.conv2.weight.copy_(torch.randn(model.conv2.weight.shape, generator=g) * 0.2)
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g))
    return model


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 1, 8, 8)).astype(np.float32)


def _forward(model, image: np.ndarray, replace) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One image, written out layer by layer; ``replace(tap, values) -> values`` edits a tap's (C, H, W) map."""
    with torch.no_grad():
        x = torch.from_numpy(image[None])
        a1 = torch.from_numpy(replace("relu1", torch.relu(model.conv1(x))[0].numpy().copy()))[None]
        a2 = torch.relu(model.conv2(model.pool(a1)))
        a2 = torch.from_numpy(replace("relu2", a2[0].numpy().copy()))[None]
        logits = model.fc(a2.mean(dim=(2, 3)))
    return logits[0].double().numpy(), {"relu1": a1[0].numpy(), "relu2": a2[0].numpy()}


def _clean(model, image):
    return _forward(model, image, lambda tap, v: v)[1]


ABLATE = {"relu1": np.array([0, 3, 11]), "relu2": np.array([2, 5, 9, 15])}


def test_each_ablation_matches_a_written_out_forward_pass() -> None:
    model = _tiny()
    net = ssa.load_model(model)
    scored, pool = _images(5, 1), _images(7, 2)
    net.prepare(scored)
    ablator = net.ablator(batch_size=2)  # several batches: donors are sliced per batch
    ablator.fit_means(pool, TAPS)
    ablator.fit_pool(pool, TAPS)
    means = {t: np.mean([_clean(model, p)[t] for p in pool], axis=0) for t in TAPS}
    rng = np.random.default_rng(0)
    donors = {t: rng.integers(0, len(pool), size=(len(scored), 16)) for t in TAPS}
    for mode in ("zero", "mean", "resample"):
        got = ablator.logits(scored, ABLATE, mode, donors if mode == "resample" else None)
        for i, image in enumerate(scored):
            def replace(tap, v, _i=i, _mode=mode):
                for c in ABLATE[tap]:
                    if _mode == "zero":
                        v[c] = 0.0
                    elif _mode == "mean":
                        v[c] = means[tap][c]
                    else:  # the donor's clean value of this very neuron
                        v[c] = _clean(model, pool[donors[tap][_i, c]])[tap][c]
                return v

            want, _ = _forward(model, image, replace)
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5, err_msg=mode)
    unablated = ablator.logits(scored, {}, "zero")
    assert np.abs(got - unablated).max() > 0.1  # the ablations change the logits


def test_resample_never_takes_an_image_of_the_scored_class() -> None:
    classes = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 3])
    donors = draw_donors(1, classes, 50, {"a": 16, "b": 4}, np.random.default_rng(0))
    for d in donors.values():
        assert not np.any(classes[d] == 1)
        assert set(classes[d].ravel()) == {0, 2, 3}  # every other class is drawn
    with pytest.raises(InvalidInputError, match="needs images of another class than 1"):
        draw_donors(1, np.ones(4, int), 3, {"a": 2}, np.random.default_rng(0))


def test_the_resample_scorer_draws_donors_of_other_classes_with_a_seed() -> None:
    images, labels = ssa.load_images("digits")
    net = ssa.load_model("digits")
    net.prepare(images[:300])
    taps = ["classifier.2", "features.6"]
    own = images[:300][labels[:300] == 4]
    a = Scorer(net, own, 4, "resample", taps, pool_images=images[:300], pool_classes=labels[:300], seed=3)
    b = Scorer(net, own, 4, "resample", taps, pool_images=images[:300], pool_classes=labels[:300], seed=3)
    c = Scorer(net, own, 4, "resample", taps, pool_images=images[:300], pool_classes=labels[:300], seed=4)
    assert a.donors is not None and b.donors is not None and c.donors is not None
    for t in taps:
        assert a.donors[t].shape == (len(own), net.tap(t).n_neurons)
        assert not np.any(labels[:300][a.donors[t]] == 4)
        np.testing.assert_array_equal(a.donors[t], b.donors[t])
        assert not np.array_equal(a.donors[t], c.donors[t])


def test_bootstrap_intervals_match_a_loop_over_the_replicates() -> None:
    net = ssa.load_model(_tiny())
    scored = _images(9, 4)
    net.prepare(scored)
    s = Scorer(net, scored, 0, "zero", TAPS, seed=1, n_boot=200)
    e = s.effect([ABLATE], TAPS)
    ablated = net.ablator().logits(scored, ABLATE)
    drop = s.base[:, 0] - ablated[:, 0]
    reps = []
    for w in s.weights:  # each replicate: the images drawn with replacement, as counts
        counts = np.rint(w * len(scored)).astype(int)
        reps.append(np.repeat(drop, counts).mean())
    assert e.logit_drop.value == pytest.approx(drop.mean())
    assert (e.logit_drop.low, e.logit_drop.high) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
    assert e.logit_drop.low <= e.logit_drop.value <= e.logit_drop.high
    kl = kl_divergence(s.base, ablated)
    p, q = (np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in (s.base, ablated))
    np.testing.assert_allclose(kl, (p * np.log(p / q)).sum(1), rtol=1e-9)
    assert e.kl.value == pytest.approx(kl.mean())
    same = interval(2.0, np.full(50, 2.0))
    assert (same.low, same.high) == (2.0, 2.0)


def test_a_planted_circuit_is_sufficient_and_its_complement_is_not() -> None:
    """Keeping only the planted circuit of class 0 gives back the full model's logit; keeping everything else
    leaves (almost) the logit of the model with both taps ablated (zero ablation)."""
    session = Session(planted_model(), planted_images())
    graph = session.analyse(0, 3, selector="tukey").graph
    f = faithfulness(session, graph, ablation="zero", draws=4, seed=0)
    assert f.total.n_kept == 5  # relu2 {5, 9}, relu1 {3, 11, 14}
    assert f.total.keep_only.recovered.value == pytest.approx(1.0, abs=0.01)
    assert f.total.keep_only.recovered.low > 0.98
    assert f.total.keep_only.accuracy.value == 1.0
    assert f.total.keep_random.recovered.high < 0.5  # random sets of the same size recover little
    # the complement: a graph of every other neuron
    nodes = {n for n in graph.nodes if graph.nodes[n]["tap"] != "logits"}
    comp = graph.copy()
    comp.remove_nodes_from(nodes)
    for tap, size in (("relu1", 16), ("relu2", 16)):
        for k in range(size):
            if f"{tap}:{k}" not in nodes:
                comp.add_node(f"{tap}:{k}", tap=tap, neuron=k, sign=1)
                comp.add_edge("logits:0", f"{tap}:{k}")
    fc = faithfulness(session, comp, ablation="zero", draws=2, seed=0)
    assert abs(fc.total.keep_only.recovered.value) < 0.05
    assert fc.total.graph.logit_drop.value < 0.05 * f.base_logit  # ablating the complement barely matters
    assert f.total.graph.logit_drop.value > 0.95 * (f.base_logit - f.empty_logit)  # ablating the circuit does


def test_without_labels_the_donors_are_images_the_model_assigns_to_another_class(digits) -> None:
    """No labels: the resample pool's classes are the model's predictions (arg-max of the logits)."""
    from ssa.analysis.faithfulness import make_scorer, scope_taps

    images, _ = digits
    session = Session("digits", images[:200])
    session.prepare()
    net = session.network
    own = images[:200][:20]
    scorer = make_scorer(session, own, 3, "resample", scope_taps(net), seed=1, n_boot=10)
    predicted = net.ablator().logits(images[:200], {}).argmax(axis=1)
    assert scorer.donors is not None
    for t, d in scorer.donors.items():
        assert d.shape == (20, net.tap(t).n_neurons)
        assert not np.any(predicted[d] == 3)
