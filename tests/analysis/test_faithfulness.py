"""ssa.analysis.faithfulness: ablating a graph's neurons against random sets and keep-only, through the
network's SupportsAblation capability."""

from __future__ import annotations

import copy

import networkx as nx
import numpy as np
import pytest
import torch

import ssa
from ssa.analysis.faithfulness import faithfulness, graph_neurons
from ssa.analysis.stability import stability
from ssa.core.capabilities import SupportsAblation
from ssa.core.interfaces import Network
from ssa.errors import InvalidInputError, UnsupportedModelError
from ssa.models import digits_cnn
from ssa.session import Session

from .. import onnx_models as om

TAP_MODULES = {"features.1": ("features", 1), "features.3": ("features", 3), "features.6": ("features", 6),
               "classifier.2": ("classifier", 2)}


def _graph(target: int, nodes: dict[str, list[int]], inhibitory: dict[str, list[int]] | None = None) -> nx.DiGraph:
    g = nx.DiGraph(target=target)
    top = f"logits:{target}"
    g.add_node(top, tap="logits", neuron=target, sign=1)
    for tap, ns in nodes.items():
        for n in ns:
            g.add_node(f"{tap}:{n}", tap=tap, neuron=n, sign=1)
            g.add_edge(top, f"{tap}:{n}")
    for tap, ns in (inhibitory or {}).items():
        for n in ns:
            g.add_node(f"{tap}:{n}", tap=tap, neuron=n, sign=-1)
            g.add_edge(top, f"{tap}:{n}")
    return g


def _reference_logits(images: np.ndarray, ablate: dict[str, list[int]], fill: dict[str, torch.Tensor] | None = None
                      ) -> np.ndarray:
    """Slow reference: forward hooks on a fresh copy of the digits CNN replace the channels."""
    model = digits_cnn()
    handles = []
    for tap, neurons in ablate.items():
        seq, idx = TAP_MODULES[tap]

        def hook(module, inputs, output, _n=tuple(neurons), _tap=tap):
            _n = list(_n)
            out = output.clone()
            out[:, _n] = 0.0 if fill is None else fill[_tap][_n].unsqueeze(0).expand_as(out[:, _n])
            return out

        handles.append(getattr(model, seq)[idx].register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(torch.from_numpy(images)).double().numpy()
    finally:
        for h in handles:
            h.remove()


def test_graph_ablation_matches_a_hook_based_reference(session3, class3) -> None:
    net = session3.network
    nodes = {"classifier.2": [51, 53, 63], "features.3": [8, 11, 14], "features.1": [2, 15]}
    f = faithfulness(session3, _graph(3, nodes), draws=2, seed=0)
    base = _reference_logits(class3, {})
    assert f.base_logit == pytest.approx(base[:, 3].mean(), rel=1e-6)
    assert f.base_accuracy == pytest.approx(np.mean(base.argmax(1) == 3))
    by_tap = {lf.tap: lf for lf in f.layers}
    # every tap below the logits is in scope, top first (features.6 has no graph neuron)
    assert [lf.tap for lf in f.layers] == ["classifier.2", "features.6", "features.3", "features.1"]
    for tap, neurons in nodes.items():
        ref = _reference_logits(class3, {tap: neurons})
        assert by_tap[tap].graph.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref[:, 3]), abs=1e-4)
        assert by_tap[tap].graph.accuracy.value == pytest.approx(np.mean(ref.argmax(1) == 3))
        keep = [n for n in range(net.tap(tap).n_neurons) if n not in neurons]
        ref_keep = _reference_logits(class3, {tap: keep})
        assert by_tap[tap].keep_only.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref_keep[:, 3]),
                                                                       abs=1e-4)
        empty = _reference_logits(class3, {tap: list(range(net.tap(tap).n_neurons))})
        want = (ref_keep[:, 3].mean() - empty[:, 3].mean()) / (base[:, 3].mean() - empty[:, 3].mean())
        assert by_tap[tap].keep_only.recovered.value == pytest.approx(want, abs=1e-4)
        assert by_tap[tap].n_graph == len(neurons) and by_tap[tap].n_neurons == net.tap(tap).n_neurons
    ref_all = _reference_logits(class3, nodes)
    assert f.total.tap == "all" and f.total.n_graph == 8
    assert f.total.graph.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref_all[:, 3]), abs=1e-4)
    keep_all = {t: [n for n in range(net.tap(t).n_neurons) if n not in nodes.get(t, [])] for t in TAP_MODULES}
    ref_keep_all = _reference_logits(class3, keep_all)
    assert f.total.keep_only.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref_keep_all[:, 3]), abs=1e-4)


def test_mean_ablation_matches_the_reference_and_is_a_no_op_on_one_image(session3, class3, digits) -> None:
    images, _ = digits
    net = session3.network
    nodes = {"features.6": [5, 30], "classifier.2": [51]}
    f = faithfulness(session3, _graph(3, nodes), ablation="mean", draws=1, mean_images=images)
    model = digits_cnn()
    acts = {}
    hooks = [getattr(model, s)[i].register_forward_hook(lambda m, a, o, _t=t: acts.__setitem__(_t, o.mean(0)))
             for t, (s, i) in TAP_MODULES.items()]
    with torch.no_grad():
        model(torch.from_numpy(images))
    for h in hooks:
        h.remove()
    base = _reference_logits(class3, {})
    ref = _reference_logits(class3, nodes, fill=acts)
    assert f.total.graph.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref[:, 3]), abs=1e-4)
    # one image: its mean map is itself, so mean-ablating even every neuron changes nothing
    one = class3[:1]
    everything = {t: list(range(net.tap(t).n_neurons)) for t in TAP_MODULES}
    f1 = faithfulness(Session("digits", one), _graph(3, everything), ablation="mean", draws=2)
    assert f1.total.graph.logit_drop.value == pytest.approx(0.0, abs=1e-5)
    assert f1.total.keep_only.logit_drop.value == pytest.approx(0.0, abs=1e-5)


def test_random_sets_have_the_graph_size_and_are_seeded(session3) -> None:
    g = _graph(3, {"classifier.2": [51, 53, 63], "features.1": [2]})
    a = faithfulness(session3, g, draws=4, seed=1)
    b = faithfulness(session3, g, draws=4, seed=1)
    c = faithfulness(session3, g, draws=4, seed=2)
    assert a == b
    assert a.total.random != c.total.random
    # a whole layer in the graph: every random set is that layer too, and keep-only ablates nothing there
    whole = _graph(3, {"classifier.2": list(range(64))})
    w = faithfulness(session3, whole, draws=3)
    dense = w.layers[0]
    assert dense.tap == "classifier.2"
    assert dense.random.logit_drop.value == pytest.approx(dense.graph.logit_drop.value)
    assert dense.random.logit_drop.low == pytest.approx(dense.graph.logit_drop.low)  # draws that cannot differ
    assert dense.keep_only.logit_drop.value == pytest.approx(0.0, abs=1e-9)
    assert dense.keep_only.recovered.value == pytest.approx(1.0)
    assert dense.graph.accuracy.value < 0.1  # nothing of the dense layer is left


def test_inhibitory_nodes_are_kept_but_not_ablated(session3, class3) -> None:
    g = _graph(3, {"classifier.2": [51]}, inhibitory={"classifier.2": [7]})
    assert graph_neurons(g)["classifier.2"].tolist() == [51]
    assert graph_neurons(g, excitatory_only=False)["classifier.2"].tolist() == [7, 51]
    f = faithfulness(session3, g, draws=1)
    base = _reference_logits(class3, {})
    ref_keep = _reference_logits(class3, {"classifier.2": [n for n in range(64) if n not in (7, 51)]})
    assert f.total.n_graph == 1 and f.total.n_kept == 2
    assert f.layers[0].keep_only.logit_drop.value == pytest.approx(np.mean(base[:, 3] - ref_keep[:, 3]), abs=1e-4)


def test_a_graph_without_layers_ablates_nothing_and_keeps_nothing(session3) -> None:
    f = faithfulness(session3, _graph(3, {}), draws=2)
    assert f.total.n_graph == 0 and f.total.graph.logit_drop.value == 0.0
    assert f.total.keep_only.recovered.value == 0.0  # keeping only the graph ablates every neuron
    assert f.total.keep_only.logit_drop.value == pytest.approx(f.base_logit - f.empty_logit)


def test_the_users_module_is_never_modified(class3) -> None:
    model = digits_cnn().train()  # in training mode on purpose
    before = copy.deepcopy(model.state_dict())
    network = ssa.load_model(model)
    network.prepare(class3)
    result = ssa.analyse(network, class3, 3, preset="paper")
    session = Session(network, class3, rule="gradient")
    faithfulness(session, result.graph, ablation="zero", draws=2)
    faithfulness(session, result.graph, ablation="mean", draws=2)
    faithfulness(session, result.graph, ablation="resample", draws=2, pool_images=class3,
                 pool_classes=np.arange(len(class3)) % 10)
    stability(session, 3, resamples=1, graph=result.graph, selector="tukey")
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_faithfulness_refuses_bad_arguments(session3) -> None:
    g = _graph(3, {"classifier.2": [1]})
    with pytest.raises(InvalidInputError, match="ablation must be one of zero, mean, resample, got 'noise'"):
        faithfulness(session3, g, ablation="noise")
    with pytest.raises(InvalidInputError, match="draws must be >= 1, got 0"):
        faithfulness(session3, g, draws=0)
    with pytest.raises(InvalidInputError, match="at least one image"):
        faithfulness(session3, g, indices=[])
    with pytest.raises(InvalidInputError, match="'conv9' , which is not a tap".replace(" ,", ",")):
        faithfulness(session3, _graph(3, {"conv9": [0]}))


# --- the capability ----------------------------------------------------------------------------------


class _NoAblation(Network):
    """A network of a backend without ablation: everything else delegated to a prepared digits CNN."""

    def __init__(self, inner: Network) -> None:
        self.inner = inner
        self.name = inner.name

    def prepare(self, example):
        return self.inner.prepare(example)

    @property
    def taps(self):
        return self.inner.taps

    def logits(self, batch):
        return self.inner.logits(batch)

    def tap_scalars(self, batch):
        return self.inner.tap_scalars(batch)

    def step_relevance(self, batch, upper, neurons, rule):
        return self.inner.step_relevance(batch, upper, neurons, rule)

    def model_hash(self) -> str:
        return self.inner.model_hash()


def test_ablation_goes_through_the_capability(session3, class3) -> None:
    assert isinstance(session3.network, SupportsAblation)
    other = Session(_NoAblation(ssa.load_model("digits")), class3)
    assert not isinstance(other.network, SupportsAblation)
    with pytest.raises(UnsupportedModelError) as info:
        faithfulness(other, _graph(3, {"classifier.2": [1]}))
    assert "ssa evaluate needs a network that supports Ablation" in str(info.value)
    assert "_NoAblation" in str(info.value) and len(str(info.value).splitlines()) == 1


def test_an_onnx_network_ablates_like_the_torch_model_it_was_exported_from(tmp_path, session3, class3) -> None:
    """The ONNX backend's network is a TorchNetwork: it has the capability, and the same numbers."""
    path = om.export(digits_cnn(), class3, tmp_path / "digits.onnx")
    onnx_session = Session(str(path), class3)
    assert isinstance(onnx_session.network, SupportsAblation)
    torch_taps = [t.name for t in session3.network.taps]
    onnx_taps = [t.name for t in onnx_session.network.taps]
    assert len(onnx_taps) == len(torch_taps)  # the same layers, named by the export
    nodes = {"classifier.2": [51, 53, 63], "features.3": [8, 11, 14], "features.1": [2, 15]}
    rename = dict(zip(torch_taps, onnx_taps, strict=False))
    ref = faithfulness(session3, _graph(3, nodes), draws=2, seed=0)
    got = faithfulness(onnx_session, _graph(3, {rename[t]: ns for t, ns in nodes.items()}), draws=2, seed=0)
    assert got.base_logit == pytest.approx(ref.base_logit, abs=1e-4)
    assert [lf.n_graph for lf in got.layers] == [lf.n_graph for lf in ref.layers]
    for a, b in zip((*got.layers, got.total), (*ref.layers, ref.total), strict=False):
        for which in ("graph", "random", "keep_only", "keep_random"):
            assert getattr(a, which).logit_drop.value == pytest.approx(getattr(b, which).logit_drop.value, abs=1e-4)
            assert getattr(a, which).accuracy.value == pytest.approx(getattr(b, which).accuracy.value)
