"""The notebook views (``_repr_html_``, :mod:`ssa.viz.notebook`) on hand-made graphs, and the core's registry
(:mod:`ssa.core.display`) they go through. The notebook itself: tests/test_notebook.py."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys

import networkx as nx

import ssa
from ssa.analysis.compare import compare
from ssa.core import display
from ssa.core.graph import DependencyGraph
from tests.analysis.test_compare import make_graph


def _page_data(view: str) -> dict:
    (doc,) = re.findall(r'<iframe class="ssa-explorer"[^>]* srcdoc="([^"]*)"', view)
    page = html.unescape(doc)
    assert "<script>" in page and page.startswith("<!DOCTYPE html>")  # the bundle inline: a one-file page
    return json.loads(page.split('id="ssa-data">', 1)[1].split("</script>", 1)[0].replace("<\\/", "</"))


def _graphs() -> list[DependencyGraph]:
    a = make_graph(0, [("logits:0", "fc:1"), ("logits:0", "fc:2"), ("fc:1", "conv2:5"), ("fc:2", "conv2:5")],
                   freq={"fc:2": 7})
    b = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:6")])
    return [DependencyGraph.from_networkx(g) for g in (a, b)]


def test_a_graph_shows_its_layers_and_its_explorer():
    g = _graphs()[0]
    view = g._repr_html_()
    assert "<b>class 0 of toy</b>: 10 images, b=2, rule=gradient, selector=tukey · 4 nodes, 4 edges" in view
    rows = re.findall(r"<tr><td>([^<]+)</td><td class=num>(\d+)</td><td class=num>[^<]*</td><td>([^<]*)</td>", view)
    assert rows == [("logits", "1", "0 (10/10)"), ("fc", "2", "1 (10/10), 2 (7/10)"), ("conv2", "1", "5 (10/10)")]
    data = _page_data(view)
    assert {n["id"] for n in data["files"]["class-0.json"]["nodes"]} == set(g.nodes)
    assert 'sandbox="allow-scripts allow-downloads"' in view


def test_a_plain_networkx_graph_is_not_claimed_but_an_analysis_and_a_comparison_are():
    g = _graphs()[0]
    assert not hasattr(nx.DiGraph(g), "_repr_html_")  # networkx's own display is left alone
    cmp = compare(_graphs())
    view = cmp._repr_html_()
    data = _page_data(view)
    assert [c["label"] for c in data["index"]["classes"]] == ["class 0", "class 1"]
    cells = [float(x) for x in re.findall(r"<td class=num>([\d.]+)</td>", view)]
    order = list(cmp.order)
    assert cells == [round(float(cmp.similarity[i, j]), 2) for i in order for j in order]


def test_an_analysis_shows_the_summary_ssa_analyse_prints():
    result = ssa.analyse("digits", "digits", target=3)
    view = result._repr_html_()
    assert html.escape(result.summary()) in view
    assert {n["id"] for n in _page_data(view)["files"]["class-0.json"]["nodes"]} == set(result.graph.nodes)


def test_the_registry_finds_a_subclass_and_answers_none_without_a_renderer():
    class Mine(DependencyGraph):
        pass

    assert display.html(Mine(target=2, n_images=1)) is not None  # the DependencyGraph view, by the base class
    assert display.html(object()) is None


def test_import_ssa_registers_the_views_without_importing_the_explorer_or_matplotlib():
    code = ("import sys, ssa; from ssa.core import display; "
            "print(sorted(display._RENDERERS)); "
            "print([m for m in ('ssa.viz.explorer', 'matplotlib', 'scipy', 'torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names, heavy = proc.stdout.splitlines()
    assert names == str(["ssa.analysis.compare.Comparison", "ssa.core.graph.DependencyGraph",
                         "ssa.results.AnalysisResult"])
    assert heavy == "[]"
