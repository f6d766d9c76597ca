"""ssa.analysis.evaluate and ``ssa evaluate``: ablation faithfulness, bootstrap stability, the comparison table."""

from __future__ import annotations

import copy
import csv
import math

import networkx as nx
import numpy as np
import pytest
import torch

import ssa
from ssa.analysis.evaluate import (
    TABLE_COLUMNS,
    compare,
    evaluate,
    faithfulness,
    format_table,
    graph_neurons,
    stability,
    write_csv,
    write_layers_csv,
)
from ssa.cli import main
from ssa.errors import InvalidInputError
from ssa.models import digits_cnn

TAP_MODULES = {"features.1": ("features", 1), "features.3": ("features", 3), "features.6": ("features", 6),
               "classifier.2": ("classifier", 2)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The digits CNN is tiny: one torch thread avoids oversubscription next to other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    images, labels = ssa.load_images("digits")
    return images, labels


@pytest.fixture(scope="module")
def net(digits):
    images, _ = digits
    network = ssa.load_model("digits")
    network.prepare(images)
    return network


@pytest.fixture(scope="module")
def class3(digits):
    images, labels = digits
    return images[labels == 3][:60]


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

        def hook(module, inputs, output, _n=list(neurons), _tap=tap):  # noqa: B006 - binds this pass's neurons
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


# --- faithfulness ------------------------------------------------------------------------------------


def test_graph_ablation_matches_a_hook_based_reference(net, class3) -> None:
    nodes = {"classifier.2": [51, 53, 63], "features.3": [8, 11, 14], "features.1": [2, 15]}
    f = faithfulness(net, class3, _graph(3, nodes), draws=2, seed=0)
    base = _reference_logits(class3, {})
    assert f.base_logit == pytest.approx(base[:, 3].mean(), rel=1e-6)
    assert f.base_accuracy == pytest.approx(np.mean(base.argmax(1) == 3))
    by_tap = {lf.tap: lf for lf in f.layers}
    assert [lf.tap for lf in f.layers] == ["classifier.2", "features.3", "features.1"]  # top first
    for tap, neurons in nodes.items():
        ref = _reference_logits(class3, {tap: neurons})
        assert by_tap[tap].graph.logit_drop == pytest.approx(np.mean(base[:, 3] - ref[:, 3]), abs=1e-4)
        assert by_tap[tap].graph.accuracy_drop == pytest.approx(
            np.mean(base.argmax(1) == 3) - np.mean(ref.argmax(1) == 3))
        keep = [n for n in range(net.tap(tap).n_neurons) if n not in neurons]
        ref_keep = _reference_logits(class3, {tap: keep})
        assert by_tap[tap].keep_only.logit_drop == pytest.approx(np.mean(base[:, 3] - ref_keep[:, 3]), abs=1e-4)
        assert by_tap[tap].n_graph == len(neurons) and by_tap[tap].n_neurons == net.tap(tap).n_neurons
    ref_all = _reference_logits(class3, nodes)
    assert f.total.tap == "all" and f.total.n_graph == 8
    assert f.total.graph.logit_drop == pytest.approx(np.mean(base[:, 3] - ref_all[:, 3]), abs=1e-4)


def test_mean_ablation_matches_the_reference_and_is_a_no_op_on_one_image(net, class3, digits) -> None:
    images, _ = digits
    nodes = {"features.6": [5, 30], "classifier.2": [51]}
    f = faithfulness(net, class3, _graph(3, nodes), ablation="mean", draws=1, mean_images=images)
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
    assert f.total.graph.logit_drop == pytest.approx(np.mean(base[:, 3] - ref[:, 3]), abs=1e-4)
    # one image: its mean map is itself, so mean-ablating even every neuron changes nothing
    one = class3[:1]
    everything = {t: list(range(net.tap(t).n_neurons)) for t in TAP_MODULES}
    f1 = faithfulness(net, one, _graph(3, everything), ablation="mean", draws=2)
    assert f1.total.graph.logit_drop == pytest.approx(0.0, abs=1e-5)
    assert f1.total.keep_only.logit_drop == pytest.approx(0.0, abs=1e-5)


def test_random_sets_have_the_graph_size_and_are_seeded(net, class3) -> None:
    g = _graph(3, {"classifier.2": [51, 53, 63], "features.1": [2]})
    a = faithfulness(net, class3, g, draws=4, seed=1)
    b = faithfulness(net, class3, g, draws=4, seed=1)
    c = faithfulness(net, class3, g, draws=4, seed=2)
    assert a == b
    assert a.total.random != c.total.random
    assert a.total.random.logit_drop_std > 0
    # a whole layer in the graph: every random set is that layer too, and keep-only ablates nothing
    whole = _graph(3, {"classifier.2": list(range(64))})
    w = faithfulness(net, class3, whole, draws=3)
    assert w.total.random.logit_drop == pytest.approx(w.total.graph.logit_drop)
    assert w.total.random.logit_drop_std == pytest.approx(0.0, abs=1e-9)
    assert w.total.keep_only.logit_drop == pytest.approx(0.0, abs=1e-9)
    assert w.total.graph.accuracy_drop > 0.9  # nothing of the dense layer is left


def test_inhibitory_nodes_are_kept_but_not_ablated(net, class3) -> None:
    g = _graph(3, {"classifier.2": [51]}, inhibitory={"classifier.2": [7]})
    assert graph_neurons(g)["classifier.2"].tolist() == [51]
    assert graph_neurons(g, excitatory_only=False)["classifier.2"].tolist() == [7, 51]
    f = faithfulness(net, class3, g, draws=1)
    base = _reference_logits(class3, {})
    ref_keep = _reference_logits(class3, {"classifier.2": [n for n in range(64) if n not in (7, 51)]})
    assert f.total.n_graph == 1
    assert f.total.keep_only.logit_drop == pytest.approx(np.mean(base[:, 3] - ref_keep[:, 3]), abs=1e-4)


def test_a_graph_without_layers_ablates_nothing(net, class3) -> None:
    f = faithfulness(net, class3, _graph(3, {}), draws=2)
    assert f.layers == () and f.total.n_graph == 0 and f.total.graph.logit_drop == 0.0


def test_the_users_module_is_never_modified(class3) -> None:
    model = digits_cnn().train()  # in training mode on purpose
    before = copy.deepcopy(model.state_dict())
    network = ssa.load_model(model)
    network.prepare(class3)
    result = ssa.analyse(network, class3, 3, preset="paper")
    faithfulness(network, class3, result.graph, ablation="zero", draws=2)
    faithfulness(network, class3, result.graph, ablation="mean", draws=2)
    stability(network, class3, 3, resamples=1, graph=result.graph, rule="gradient", selector="tukey")
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.requires_grad for p in model.parameters())


def test_faithfulness_refuses_bad_arguments(net, class3) -> None:
    g = _graph(3, {"classifier.2": [1]})
    with pytest.raises(InvalidInputError, match="ablation must be one of zero, mean, got 'noise'"):
        faithfulness(net, class3, g, ablation="noise")
    with pytest.raises(InvalidInputError, match="draws must be an integer >= 1, got 0"):
        faithfulness(net, class3, g, draws=0)
    with pytest.raises(InvalidInputError, match="at least one image"):
        faithfulness(net, class3[:0], g)
    with pytest.raises(InvalidInputError, match="'conv9' , which is not a tap".replace(" ,", ",")):
        faithfulness(net, class3, _graph(3, {"conv9": [0]}))


# --- stability ---------------------------------------------------------------------------------------


def test_stability_is_seeded_and_bounded(net, class3) -> None:
    kw = dict(rule="gradient_x_activation", selector="tukey", resamples=3)
    a = stability(net, class3, 3, seed=0, **kw)
    b = stability(net, class3, 3, seed=0, **kw)
    assert a == b
    assert 0.0 <= a.jaccard_mean <= 1.0 and 0.0 <= a.edge_jaccard_mean <= 1.0
    full = ssa.analyse(net, class3, 3, rule="gradient_x_activation", selector="tukey").graph
    assert set(a.node_frequency) == {n for n, d in full.nodes(data=True) if d["tap"] != "logits"}
    assert set(a.edge_frequency) == set(full.edges())
    assert all(v in (0.0, 1 / 3, 2 / 3, 1.0) for v in a.node_frequency.values())
    assert not set(a.new_nodes) & set(a.node_frequency)


def test_identical_images_give_perfect_stability(net, class3) -> None:
    same = np.repeat(class3[:1], 12, axis=0)
    s = stability(net, same, 3, rule="gradient_x_activation", selector="tukey", resamples=3, seed=5)
    assert s.jaccard_mean == 1.0 and s.jaccard_std == 0.0 and s.edge_jaccard_mean == 1.0
    assert set(s.node_frequency.values()) == {1.0} and s.new_nodes == {}


def test_zero_resamples_give_nan(net, class3) -> None:
    s = stability(net, class3, 3, rule="gradient", selector="tukey", resamples=0)
    assert math.isnan(s.jaccard_mean) and s.node_frequency == {}


# --- comparison table and CLI ----------------------------------------------------------------------


def test_evaluate_row_and_graph_ablation_beats_random_on_digits(net, digits) -> None:
    images, labels = digits
    row = evaluate(net, images[labels == 3], 3, rule="gradient_x_activation", selector="tukey", draws=5,
                   resamples=2, seed=0)
    assert row.nodes == row.faithfulness.total.n_graph + 1  # one-sided: every node but the class node
    assert row.graph_logit_drop > row.random_logit_drop + 2 * row.random_logit_drop_std
    assert row.graph_accuracy_drop > row.random_accuracy_drop
    assert row.base_accuracy > 0.95


def test_compare_writes_the_table(tmp_path) -> None:
    rows = compare("digits", "digits", [0, 3], rules=["gradient_x_activation"], selectors=["tukey", "topk"],
                   draws=2, resamples=1, seed=0, selector_params={"topk": {"k": 2}})
    assert [(r.target, r.selector) for r in rows] == [("0", "tukey"), ("0", "topk"), ("3", "tukey"), ("3", "topk"),
                                                      ("mean", "tukey"), ("mean", "topk")]
    mean_tukey = rows[4]
    assert mean_tukey.graph_logit_drop == pytest.approx((rows[0].graph_logit_drop + rows[2].graph_logit_drop) / 2)
    path = write_csv(rows, tmp_path / "table.csv")
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == TABLE_COLUMNS and len(table) == 6
    assert float(table[0]["graph_logit_drop"]) == pytest.approx(rows[0].graph_logit_drop, abs=1e-5)
    layers = write_layers_csv(rows, tmp_path / "layers.csv")
    with open(layers, newline="") as fh:
        per_layer = list(csv.DictReader(fh))
    assert {r["tap"] for r in per_layer} >= {"classifier.2", "all"}
    text = format_table(rows)
    assert "gradient_x_activation" in text and "mean" in text.splitlines()[-1]


def test_cli_evaluate(tmp_path, capsys) -> None:
    out = tmp_path / "t.csv"
    code = main(["evaluate", "digits", "--images", "digits", "--targets", "0,3", "--rules", "gradient_x_activation",
                 "--selectors", "tukey,zscore", "--draws", "2", "--resamples", "1", "--selector-param", "tukey.k=2",
                 "--out", str(out), "--layers-out", str(tmp_path / "l.csv"), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "logit drop graph" in printed and f"wrote {out}" in printed
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and {r["selector"] for r in table} == {"tukey", "zscore"}


@pytest.mark.parametrize("argv,message", [
    (["--ablation", "noise"], "invalid choice"),
    (["--draws", "0"], "draws must be an integer >= 1, got 0"),
    (["--resamples", "-1"], "resamples must be an integer >= 0"),
    (["--out", "t.txt"], "--out must end in .csv"),
    (["--selectors", "nope"], "unknown selector 'nope'"),
    (["--selector-param", "nonsense=1"], "no evaluated selector has that parameter"),
    (["--selector-param", "zscore.k=1"], "names selector 'zscore', which is not evaluated"),
    (["--selector-param", "tukey.k=-1"], "must be >= 0"),
    (["--targets", "12"], "--targets must be in [0, 9] (the model has 10 logits), got 12."),
    (["--targets", "3,3"], "--targets lists a class twice, got '3,3'; list each class once."),
    (["--out", "same.csv", "--layers-out", "same.csv"], "--out and --layers-out name the same file 'same.csv'"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_cli_evaluate_errors(argv, message, capsys) -> None:
    base = ["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules", "gradient",
            "--selectors", "tukey", "--resamples", "0", "--draws", "1"]
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1


def test_cli_several_targets_need_labels(tmp_path, capsys, digits) -> None:
    images, _ = digits
    np.save(tmp_path / "x.npy", images[:50])
    code = main(["evaluate", "digits", "--images", str(tmp_path / "x.npy"), "--targets", "0,3"])
    assert code == 2 and "need labels" in capsys.readouterr().err


def test_cli_evaluate_all_targets_and_same_output_file(tmp_path, capsys) -> None:
    """`--targets all` is accepted (as by `ssa analyse`); one file for --out and --layers-out is refused before
    any computation, so an existing table is not overwritten."""
    same = tmp_path / "same.csv"
    same.write_text("earlier table")
    assert main(["evaluate", "digits", "--images", "digits", "--targets", "3", "--out", str(same), "--layers-out",
                 str(same)]) == 2
    assert same.read_text() == "earlier table"
    capsys.readouterr()
    out = tmp_path / "all.csv"
    assert main(["evaluate", "digits", "--images", "digits", "--targets", "all", "--rules", "gradient_x_activation",
                 "--selectors", "mad", "--draws", "1", "--resamples", "0", "--out", str(out), "-q"]) == 0
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["target"] for r in table] == [*map(str, range(10)), "mean"]


def test_evaluate_refuses_a_class_twice() -> None:
    from ssa.analysis.evaluate import compare as evaluate_compare

    with pytest.raises(InvalidInputError, match="lists a class twice"):
        evaluate_compare("digits", "digits", [3, 3], rules=["gradient"], selectors=["tukey"], resamples=0, draws=1)
