"""ssa.analysis.strategies and ``ssa evaluate``: the rules x selectors table, its CSV and text, the command line."""

from __future__ import annotations

import csv
import gc

import numpy as np
import pytest
import torch
from ssa_torch.network import TorchNetwork

from ssa.analysis.strategies import (
    TABLE_COLUMNS,
    compare_strategies,
    evaluate,
    format_table,
    write_csv,
    write_layers_csv,
)
from ssa.cli import main
from ssa.errors import InvalidInputError
from ssa.models import digits_cnn
from ssa.session import Session

GXA = "gradient_x_activation"


def test_evaluate_row_and_graph_ablation_beats_random_on_digits(net, digits) -> None:
    images, labels = digits
    row = evaluate(Session(net, images[labels == 3], rule="gradient_x_activation"), 3, selector="tukey", draws=5,
                   resamples=2, seed=0)
    assert row.nodes == row.faithfulness.total.n_graph + 1  # one-sided: every node but the class node
    assert row.graph_logit_drop > row.random_logit_drop + 2 * row.random_logit_drop_std
    assert row.graph_accuracy_drop > row.random_accuracy_drop
    assert row.base_accuracy > 0.95


def test_compare_writes_the_table(tmp_path) -> None:
    rows = compare_strategies(Session("digits", "digits", rule="gradient_x_activation"), [0, 3],
                              selectors=["tukey", "topk"], draws=2, resamples=1, seed=0,
                              selector_params={"topk": {"k": 2}})
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
    with pytest.raises(InvalidInputError, match="lists a class twice"):
        compare_strategies(Session("digits", "digits", rule="gradient"), [3, 3], selectors=["tukey"], resamples=0,
                           draws=1)


# --- statistics belong to the session that computed them -----------------------------------------------------


def _checkpoint(noise: float) -> torch.nn.Module:
    """The digits CNN's architecture with the shipped weights (noise 0) or another checkpoint of it."""
    model = digits_cnn()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return model


def _network_at(address: int, module: torch.nn.Module) -> TorchNetwork:
    """A TorchNetwork of ``module``, at ``address`` (the id of a freed network) when CPython hands that memory out
    again, which it does for one of many objects of the same size allocated right after the free. The test does not
    depend on it; it makes certain the case that broke a cache keyed by ``id(network)``."""
    spare = [TorchNetwork.__new__(TorchNetwork) for _ in range(100_000)]
    network = next((n for n in spare if id(n) == address), spare[0])
    del spare
    network.__init__(module)
    return network


def _same_graph(a, b) -> bool:
    return set(a.nodes) == set(b.nodes) and set(a.edges) == set(b.edges) and all(
        a.nodes[n]["frequency"] == b.nodes[n]["frequency"] for n in a.nodes)


def test_two_checkpoints_evaluated_one_after_the_other_get_their_own_statistics(digits) -> None:
    """Issue 11, item 4: the first network is freed before the second (same architecture, other weights) is built,
    and CPython gives the second the first one's id; each still gets its own statistics and graphs."""
    images, labels = digits
    cls = images[labels == 3][:40]
    a, b = _checkpoint(0.0), _checkpoint(0.5)
    kw = dict(selector="tukey", draws=2, resamples=2, seed=0)
    alone = Session(TorchNetwork(b), cls, rule=GXA)  # the second checkpoint analysed alone (kept alive)
    ref = evaluate(alone, 3, **kw)
    first = Session(TorchNetwork(a), cls, rule=GXA)
    row_a = evaluate(first, 3, **kw)
    assert not _same_graph(row_a.graph, ref.graph)  # the two checkpoints give different graphs
    address = id(first.network)
    del first, row_a
    gc.collect()
    second = Session(_network_at(address, b), cls, rule=GXA)
    row_b = evaluate(second, 3, **kw)
    assert _same_graph(row_b.graph, ref.graph)
    assert row_b.faithfulness == ref.faithfulness
    assert row_b.stability == ref.stability  # every bootstrap graph too


def test_one_session_per_rule_shares_the_model_and_keeps_its_own_statistics(net, class3) -> None:
    first = Session(net, class3, rule="gradient")
    other = first.with_rule(GXA)
    assert other.network is first.network and other.images is first.images
    assert (first.rule.name, other.rule.name) == ("gradient", GXA)
    rows = compare_strategies([first, other], [3], selectors=["tukey"], draws=1, resamples=1)
    assert [(r.rule, r.selector) for r in rows] == [("gradient", "tukey"), (GXA, "tukey")]
    for row in rows:  # each as a fresh session with that rule alone gives it
        alone = evaluate(Session(net, class3, rule=row.rule), 3, selector="tukey", draws=1, resamples=1)
        assert _same_graph(row.graph, alone.graph)
        assert (row.faithfulness, row.stability) == (alone.faithfulness, alone.stability)
    with pytest.raises(InvalidInputError, match="two sessions have rule 'gradient'"):
        compare_strategies([first, first.with_rule("gradient")], [3], selectors=["tukey"])
