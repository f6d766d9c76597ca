"""ssa.analysis.strategies and ``ssa evaluate``: the rules x selectors table, its CSV and text, the command line."""

from __future__ import annotations

import csv
import gc

import numpy as np
import pytest
import torch
from ssa_selectors.selectors import TopKSelector, TukeySelector
from ssa_torch.network import TorchNetwork

from ssa.analysis.ablation import Interval
from ssa.analysis.curves import BRANCHINGS, CURVE_COLUMNS, CurvePoint, areas
from ssa.analysis.faithfulness import faithfulness
from ssa.analysis.split import split_images
from ssa.analysis.strategies import (
    METRICS,
    TABLE_COLUMNS,
    class_split,
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
    assert (row.n_build, row.n_scored) == (92, 91)  # 183 images: held-out half by default
    assert row.necessity.low > row.necessity_random.high  # intervals that do not overlap
    assert row.necessity_accuracy.value < row.necessity_random_accuracy.value
    assert row.sufficiency.low > row.sufficiency_random.high
    assert row.base_accuracy > 0.95
    for m in METRICS[:-4]:  # the curves' areas are NaN without curves
        iv = row.metrics[m]
        assert iv.low <= iv.value <= iv.high, m
    assert all(np.isnan(row.metrics[m].value) for m in ("cpr", "cpr_random", "cmd", "cmd_random"))
    assert row.stability is not None and len(row.stability.jaccards) == 2
    assert (row.node_jaccard.low, row.node_jaccard.high) == pytest.approx(
        tuple(np.percentile(row.stability.jaccards, [2.5, 97.5])))  # the resamples' indices
    assert row.faithfulness.n_images == 91


def test_the_held_out_split_never_shares_an_image() -> None:
    chosen = np.arange(0, 300, 3)
    for split, seed in ((0.5, 0), (0.3, 1), ("auto", 2), (0.9, 3)):
        build, score = split_images(chosen, split, seed=seed, target=4)
        assert not set(build) & set(score)
        assert sorted([*build, *score]) == chosen.tolist()
        share = 0.5 if split == "auto" else split
        assert len(build) == round(share * len(chosen))
    a, b = split_images(chosen, 0.5, seed=0, target=4), split_images(chosen, 0.5, seed=0, target=5)
    assert not np.array_equal(a[0], b[0])  # each class its own draw
    few = np.arange(19)
    assert [h.tolist() for h in split_images(few, "auto")] == [few.tolist(), few.tolist()]  # < 20: no split
    assert [h.tolist() for h in split_images(chosen, 0)] == [chosen.tolist(), chosen.tolist()]
    with pytest.raises(InvalidInputError, match=r"split must be 'auto' or a number in \[0, 1\)"):
        split_images(chosen, 1.0)


def test_a_row_builds_on_one_half_and_scores_on_the_other(net, digits) -> None:
    images, labels = digits
    session = Session(net, images[:600], labels=labels[:600], rule=GXA)
    build, score = class_split(session, 3, None, 0.5, 0)
    row = evaluate(session, 3, selector="tukey", draws=2, resamples=0, split=0.5)
    same = session.analyse(3, 3, selector="tukey", indices=build).graph
    assert _same_graph(row.graph, same)
    ref = faithfulness(session, same, target=3, indices=score, draws=2, seed=0)
    assert row.faithfulness == ref
    assert row.split == pytest.approx(len(build) / (len(build) + len(score)))
    assert f"{len(build)}/{len(score)}" in format_table([row])
    whole = evaluate(session, 3, selector="tukey", draws=1, resamples=0, split=0)
    assert whole.split == 0.0 and whole.n_build == whole.n_scored == len(build) + len(score)
    assert f"all {whole.n_scored}" in format_table([whole])


def test_compare_writes_the_table(tmp_path) -> None:
    rows = compare_strategies(Session("digits", "digits", rule="gradient_x_activation"), [0, 3],
                              selectors=["tukey", "topk"], draws=2, resamples=1, seed=0,
                              selector_params={"topk": {"k": 2}})
    assert [(r.target, r.selector) for r in rows] == [("0", "tukey"), ("0", "topk"), ("3", "tukey"), ("3", "topk"),
                                                      ("mean", "tukey"), ("mean", "topk")]
    mean_tukey = rows[4]
    assert mean_tukey.necessity.value == pytest.approx((rows[0].necessity.value + rows[2].necessity.value) / 2)
    assert mean_tukey.necessity.low >= min(rows[0].necessity.value, rows[2].necessity.value)  # over classes
    path = write_csv(rows, tmp_path / "table.csv")
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == TABLE_COLUMNS and len(table) == 6
    assert float(table[0]["necessity"]) == pytest.approx(rows[0].necessity.value, abs=1e-5)
    assert float(table[0]["sufficiency_low"]) == pytest.approx(rows[0].sufficiency.low, abs=1e-5)
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
    assert "necessity graph" in printed and f"wrote {out}" in printed
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6 and {r["selector"] for r in table} == {"tukey", "zscore"}


@pytest.mark.parametrize("argv,message", [
    (["--ablation", "noise"], "--ablation must list some of zero, mean, resample (or 'all'), got 'noise'."),
    (["--ablation", "zero,zero"], "--ablation must list each ablation once"),
    (["--split", "1.5"], "split must be 'auto' or a number in [0, 1)"),
    (["--bootstrap", "-1"], "bootstrap must be >= 0"),
    (["--draws", "0"], "draws must be >= 1, got 0"),
    (["--resamples", "-1"], "resamples must be >= 0"),
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


def test_cli_resample_needs_another_class(tmp_path, capsys, digits) -> None:
    """Donors come from other classes: images of one class alone are refused before any work."""
    images, labels = digits
    np.save(tmp_path / "x3.npy", images[labels == 3][:30])
    np.save(tmp_path / "y3.npy", labels[labels == 3][:30])
    code = main(["evaluate", "digits", "--images", str(tmp_path / "x3.npy"), "--labels", str(tmp_path / "y3.npy"),
                 "--targets", "3", "--ablation", "resample", "--selectors", "tukey", "--rules", "gradient"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "the resample ablation needs images of another class than 3" in captured.err
    assert captured.err.count("\n") == 1


def test_cli_three_ablations(tmp_path, capsys) -> None:
    out = tmp_path / "t.csv"
    code = main(["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules", "gradient_x_activation",
                 "--selectors", "mad", "--draws", "2", "--resamples", "1", "--ablation", "all", "--bootstrap", "100",
                 "--out", str(out), "-q"])
    assert code == 0
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["ablation"] for r in table] == ["zero", "mean", "resample"]
    assert len({r["nodes"] for r in table}) == 1  # one graph, scored three ways
    assert {(r["n_build"], r["n_scored"]) for r in table} == {("92", "91")}
    assert len({r["necessity"] for r in table}) == 3


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


# --- curves over circuit size ---------------------------------------------------------------------------------


def _point(size: float, value: float, reps: list[float], random: float = 0.0) -> CurvePoint:
    iv = Interval(value, min(reps), max(reps))
    return CurvePoint(target=0, rule="r", selector="s", ablation="zero", parameter="b", value=1.0,
                      n_kept=int(round(size * 100)), n_neurons=100, sufficiency=iv,
                      sufficiency_random=Interval(random, random, random), accuracy=iv, replicates=np.array(reps),
                      random_replicates=np.full(len(reps), random))


def test_curve_areas_match_a_written_out_trapezoid() -> None:
    points = [_point(0.5, 0.9, [0.8, 1.0]), _point(0.1, 0.3, [0.2, 0.4]), _point(0.3, 0.3, [0.3, 0.3])]

    def area(xy):
        return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(xy, xy[1:], strict=False))

    def trapezoid(xy):  # closed by the empty circuit (0, 0) and the full model (1, 1)
        return area([(0.0, 0.0), *sorted(xy), (1.0, 1.0)])

    a = areas(points)
    assert a.cpr.value == pytest.approx(trapezoid([(0.1, 0.3), (0.3, 0.3), (0.5, 0.9)]))
    # |1 - y|, from the empty circuit (0, 1) to the full model (1, 0)
    assert a.cmd.value == pytest.approx(area([(0.0, 1.0), (0.1, 0.7), (0.3, 0.7), (0.5, 0.1), (1.0, 0.0)]))
    replicate_areas = [trapezoid([(0.1, 0.2), (0.3, 0.3), (0.5, 0.8)]), trapezoid([(0.1, 0.4), (0.3, 0.3), (0.5, 1.0)])]
    assert (a.cpr.low, a.cpr.high) == pytest.approx(tuple(np.percentile(replicate_areas, [2.5, 97.5])))
    assert a.cpr_random.value == pytest.approx(trapezoid([(0.1, 0.0), (0.3, 0.0), (0.5, 0.0)]))


def test_every_curve_point_is_the_faithfulness_of_a_graph_built_on_the_build_half(net, digits) -> None:
    images, labels = digits
    session = Session(net, images[:600], labels=labels[:600], rule=GXA)
    row = evaluate(session, 3, selector="tukey", draws=2, resamples=0, curves=True, per_tap=False)
    build, score = class_split(session, 3, None, "auto", 0)
    assert row.faithfulness.layers == ()
    assert [(p.parameter, p.value) for p in row.curve] == [("b", b) for b in BRANCHINGS] + [
        ("k", k) for k in TukeySelector.sweep[1]]
    for p in (row.curve[0], row.curve[-1]):
        params = {} if p.parameter == "b" else {"k": p.value}
        b = int(p.value) if p.parameter == "b" else 3
        graph = session.analyse(3, b, selector="tukey", selector_params=params, indices=build).graph
        ref = faithfulness(session, graph, target=3, indices=score, draws=2, seed=0)
        assert p.sufficiency == ref.total.keep_only.recovered
        assert p.sufficiency_random == ref.total.keep_random.recovered
        assert p.n_kept == ref.total.n_kept and p.n_neurons == 144
    at3 = next(p for p in row.curve if (p.parameter, p.value) == ("b", 3.0))
    assert at3.sufficiency == row.sufficiency  # the table's b
    assert row.cpr.value == areas(row.curve).cpr.value and row.cpr.low <= row.cpr.value <= row.cpr.high


def test_cli_curves_write_the_csv_and_the_figure(tmp_path, capsys) -> None:
    out, fig = tmp_path / "curves.csv", tmp_path / "curves.png"
    code = main(["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules", GXA, "--selectors", "topk",
                 "--draws", "2", "--resamples", "0", "--ablation", "zero,resample", "--bootstrap", "50",
                 "--curves-out", str(out), "--figure", str(fig), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "CPR graph" in printed and f"wrote {fig}" in printed
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert tuple(table[0]) == CURVE_COLUMNS
    assert len(table) == 2 * (len(BRANCHINGS) + len(TopKSelector.sweep[1]))
    assert {r["ablation"] for r in table} == {"zero", "resample"}
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_warns_about_a_class_of_one_image(tmp_path, capsys, digits) -> None:
    """One image of a class: every bootstrap resample is that image (intervals of no width, stability 1 whatever
    the method). The table is written, and one warning line per class says why its numbers mean nothing; before,
    jaccard 1.00 [1.00, 1.00] looked like a perfectly stable graph."""
    images, labels = digits
    keep = np.concatenate([np.flatnonzero(labels == 3)[:1], np.flatnonzero(labels == 5)[:20]])
    np.save(tmp_path / "x.npy", images[keep])
    np.save(tmp_path / "y.npy", labels[keep])
    code = main(["evaluate", "digits", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--targets", "3,5", "--selectors", "mad,topk", "--rules", "gradient", "--draws", "1",
                 "--resamples", "2", "--bootstrap", "10", "-q"])
    captured = capsys.readouterr()
    assert code == 0 and "jaccard" in captured.out
    warned = [ln for ln in captured.err.splitlines() if ln.startswith("ssa: warning:")]
    assert warned == ["ssa: warning: class 3: its graph is built from 1 image(s) and scored on 1; with one image the "
                      "95% intervals have no width and the stability (jaccard) is 1 whatever the rule and selector: "
                      "give the class more images (or a lower --split)."], captured.err
