"""The report's faithfulness section, from the files `ssa evaluate` writes (--out, --curves-out)."""

from __future__ import annotations

import pytest

from ssa import read_graph
from ssa.analysis.curves import read_curves
from ssa.analysis.strategies import read_table
from ssa.cli import main
from ssa.errors import InvalidInputError
from ssa.viz.report import build_report


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluated")
    argv = ["evaluate", "digits", "--images", "digits", "--targets", "3", "--rules", "gradient_x_activation",
            "--selectors", "topk", "--draws", "2", "--resamples", "1", "--ablation", "zero,mean", "--bootstrap",
            "50", "--out", str(d / "table.csv"), "--curves-out", str(d / "curves.csv"), "-q"]
    assert main(argv) == 0
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "-o", str(d / "g3.json")]) == 0
    return d


def test_the_files_read_back_as_written(evaluated) -> None:
    rows = read_table(evaluated / "table.csv")
    assert [(r.target, r.selector, r.ablation) for r in rows] == [("3", "topk", "zero"), ("3", "topk", "mean")]
    assert rows[0].sufficiency.low <= rows[0].sufficiency.value <= rows[0].sufficiency.high
    points = read_curves(evaluated / "curves.csv")
    assert len(points) == 2 * 10 and {p.ablation for p in points} == {"zero", "mean"}


def test_the_report_gains_a_faithfulness_section(evaluated) -> None:
    html = build_report([read_graph(evaluated / "g3.json")], evaluation=evaluated / "table.csv",
                        curves=evaluated / "curves.csv")
    start = html.index('<h2 id="faithfulness">')
    section = html[start:html.index("<h2", start + 1)]  # up to the next section (class 3's graph)
    assert 'href="#faithfulness"' in html
    rows = read_table(evaluated / "table.csv")
    assert rows[0].necessity.text() in section and rows[1].sufficiency.text() in section
    assert section.count("<img") == 3  # the curves (all classes), and class 3's curves and bars
    plain = build_report([read_graph(evaluated / "g3.json")])
    assert 'id="faithfulness"' not in plain


def test_a_file_not_written_by_evaluate_is_refused(evaluated, tmp_path) -> None:
    with pytest.raises(InvalidInputError, match="has no column 'selector'; pass a CSV written by `ssa evaluate --out`"):
        (tmp_path / "t.csv").write_text("target,rule\n3,x\n")
        build_report([read_graph(evaluated / "g3.json")], evaluation=tmp_path / "t.csv")
    with pytest.raises(InvalidInputError, match="does not exist"):
        build_report([read_graph(evaluated / "g3.json")], curves=tmp_path / "none.csv")
