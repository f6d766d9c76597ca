"""--out-dir runs own their folder (issue 9, item 2): stale outputs of an earlier run are removed, files ssa
did not record writing are refused before any computation and never deleted."""

from __future__ import annotations

import json

import ssa
from ssa.cli import main
from ssa.io.outdir import MANIFEST


def _names(d):
    return sorted(p.name for p in d.iterdir())


def _analyse(out, targets, *extra):
    return main(["analyse", "digits", "--images", "digits", "--targets", targets, "-q", "--out-dir", str(out),
                 "--max-per-class", "30", *extra])


def test_rerun_with_fewer_targets_leaves_no_stale_graph(tmp_path, capsys):
    out = tmp_path / "graphs"
    assert _analyse(out, "1,2,3") == 0
    (out / "notes.txt").write_text("mine")
    assert _names(out) == [MANIFEST, "class-1.json", "class-2.json", "class-3.json", "notes.txt"]
    assert _analyse(out, "1,2") == 0
    assert _names(out) == [MANIFEST, "class-1.json", "class-2.json", "notes.txt"]
    assert json.loads((out / MANIFEST).read_text())["commands"]["analyse"] == ["class-1.json", "class-2.json"]
    assert (out / "notes.txt").read_text() == "mine"
    # the README's glob now picks up exactly this run's graphs
    capsys.readouterr()
    assert main(["compare", *sorted(str(p) for p in out.glob("class-*.json"))]) == 0
    assert capsys.readouterr().out.startswith("2 graphs of digits")


def test_unrecorded_lookalikes_are_refused_before_computing(tmp_path, capsys, monkeypatch):
    out = tmp_path / "graphs"
    out.mkdir()
    (out / "class-7.json").write_text("from somewhere else")
    import ssa.api

    def boom(*a, **k):
        raise AssertionError("computed although the folder is refused")

    monkeypatch.setattr(ssa.session.Session, "prepare", boom)
    assert _analyse(out, "1,2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds class-7.json, which no earlier `ssa analyse` run there recorded" in err[0]
    assert _names(out) == ["class-7.json"] and (out / "class-7.json").read_text() == "from somewhere else"


def test_compare_svg_after_png_leaves_no_png(tmp_path, capsys):
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "1,2,3") == 0
    files = sorted(str(p) for p in graphs.glob("class-*.json"))
    out = tmp_path / "cmp"
    assert main(["compare", *files, "--out-dir", str(out)]) == 0
    assert "clustermap.png" in _names(out)
    (out / "my-plot.png").write_bytes(b"user's")
    assert main(["compare", *files, "--out-dir", str(out), "--format", "svg"]) == 0
    names = _names(out)
    assert [n for n in names if n.endswith(".png")] == ["my-plot.png"]
    assert {"clustermap.svg", "dendrogram.svg", "clustermap-nodes.svg", "jaccard.csv"} <= set(names)
    assert (out / "my-plot.png").read_bytes() == b"user's"


def test_a_failed_run_records_what_it_wrote(tmp_path, capsys, monkeypatch):
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "1,2") == 0
    files = sorted(str(p) for p in graphs.glob("class-*.json"))
    out = tmp_path / "cmp"
    import ssa.viz.figures

    def broken(*a, **k):
        raise ssa.InvalidInputError("drawing failed")

    monkeypatch.setattr(ssa.viz.figures, "plot_dendrogram", broken)
    assert main(["compare", *files, "--out-dir", str(out)]) == 2
    written = _names(out)
    assert "clustermap.png" in written  # written before the failure
    assert "clustermap.png" in json.loads((out / MANIFEST).read_text())["commands"]["compare"]
    monkeypatch.undo()
    assert main(["compare", *files, "--out-dir", str(out), "--format", "svg"]) == 0  # not refused: it is ours
    assert not any(n.endswith(".png") for n in _names(out))


def test_figures_rerun_replaces_its_figures(tmp_path, capsys):
    graphs = tmp_path / "graphs"
    assert _analyse(graphs, "3", "--rule", "gradient_x_activation") == 0
    g = ssa.read_graph(graphs / "class-3.json")
    out = tmp_path / "fig"
    base = ["figures", "digits", "--images", "digits", "--graph", str(graphs / "class-3.json"), "--out-dir", str(out),
            "--n-images", "2"]
    assert main(base) == 0
    first = set(_names(out))
    node = sorted(n for n, d in g.nodes(data=True) if d["tap"] == "features.3")[0]
    assert main(base + ["--neuron", node, "--format", "svg"]) == 0
    second = set(_names(out))
    assert not any(n.endswith(".png") for n in second) and first != second
