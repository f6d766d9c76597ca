"""JSON embedded in HTML (issue 18, item 9): ``ssa.viz.html`` escapes ``<``, ``>``, ``&``, U+2028 and U+2029,
and the explorer draws graphs whose tap names, node names and title are hostile HTML, in Debian's chromium.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import networkx as nx
import pytest

import ssa
from ssa.viz.explorer import page_html, write_explorer
from ssa.viz.html import json_script, script_json
from tests.browser import needs_chromium, watched_page
from tests.viz.test_explorer_browser import _click_node

HOSTILE = ["<!--<script>", "</script><script>window.__pwned = 1</script>", '"><img src=x onerror="window.__pwned=2">',
           "a & b > c", "line\u2028sep\u2029par", "</SCRIPT >", "<!-- -->", "<\\/script>"]


@pytest.mark.parametrize("value", [*HOSTILE, {"k<!--": ["</script>", 1.5, None, True]}, "ä€😀\u0000"])
def test_script_json_has_no_markup_and_parses_back(value):
    text = script_json(value)
    assert not set(text) & {"<", ">", "&", "\u2028", "\u2029"}, text
    assert json.loads(text) == value


def test_json_script_is_one_element_the_html_parser_reads_back():
    """Python's HTML parser (the standard's tokenizer for script data) sees one script element whose text is
    the JSON, and nothing after it, for every hostile string at once."""
    value = {"names": HOSTILE, "nested": {h: h for h in HOSTILE}}
    element = json_script(value, 'd"x')
    page = f"<!DOCTYPE html><body>{element}<p id=after>after</p></body>"

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.data, self.inside = [], [], False

        def handle_starttag(self, tag, attrs):
            self.tags.append((tag, dict(attrs)))
            self.inside = tag == "script"

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.data.append(data)

    p = Collect()
    p.feed(page)
    assert [t for t, _ in p.tags] == ["body", "script", "p"]
    assert p.tags[1][1] == {"type": "application/json", "id": 'd"x'}
    assert json.loads("".join(p.data)) == value


def _hostile_graph(g: nx.DiGraph, names: dict[str, str]) -> nx.DiGraph:
    """``g`` with its taps renamed (node ids ``tap:neuron`` follow), every other attribute as it was."""
    h = nx.DiGraph()
    h.graph.update(g.graph)
    h.graph["tap_neurons"] = {names.get(t, t): n for t, n in g.graph["tap_neurons"].items()}

    def new(n):
        d = g.nodes[n]
        return f"{names.get(d['tap'], d['tap'])}:{d['neuron']}"

    for n, d in g.nodes(data=True):
        h.add_node(new(n), **{**d, "tap": names.get(d["tap"], d["tap"])})
    for u, v, d in g.edges(data=True):
        h.add_edge(new(u), new(v), **d)
    return h


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Graphs of classes 3 and 5 whose hidden taps are named with HTML that would break out of a script
    element or inject an element, written as the one-file explorer (the data embedded in the page)."""
    res = ssa.analyse_many("digits", "digits", [3, 5], rule="gradient_x_activation", max_per_class=10)
    graphs = [r.graph for r in res.values()]
    taps = sorted({d["tap"] for g in graphs for _, d in g.nodes(data=True)} - {"logits"})
    assert len(taps) >= 3, taps
    names = {t: f"{HOSTILE[i % len(HOSTILE)]} {t}" for i, t in enumerate(taps)}
    graphs = [_hostile_graph(g, names) for g in graphs]
    out = tmp_path_factory.mktemp("hostile") / "explorer.html"
    write_explorer(out, graphs, ["<!--<script>.json", "</script>.json"], title=HOSTILE[0] + HOSTILE[2])
    return out, graphs


def test_the_page_holds_no_markup_from_the_names(hostile):
    out, graphs = hostile
    text = out.read_text()
    data = re.search(r'<script type="application/json" id="ssa-data">(.*?)</script>', text, re.S).group(1)
    assert not set(data) & {"<", ">", "&"}
    assert "<img src=x" not in text and "<!--<script>" not in text
    assert text.count("<script") == 2  # the data and the bundle
    assert text == page_html(json.loads(data)["index"]["title"], json.loads(data)["files"])


@needs_chromium
def test_hostile_names_draw_in_chromium(hostile, browser):
    """The page draws every node of the class, the console stays clean, no element was injected."""
    out, graphs = hostile
    w = watched_page(browser)
    page = w.page
    page.goto(out.as_uri())
    page.wait_for_function("document.body.dataset.ready", timeout=30000)
    assert page.evaluate("document.body.dataset.ready") == "1"
    shown = set(page.evaluate("window.ssaExplorer.sigma.getGraph().nodes()"))
    assert any(shown == set(g.nodes) for g in graphs), sorted(shown)[:5]
    assert any("<!--<script>" in n for n in shown) and any('onerror="window.__pwned=2"' in n for n in shown)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src=x], img[onerror]").count() == 0
    assert page.locator("script").count() == 2
    assert page.title() == HOSTILE[0] + HOSTILE[2]
    assert page.locator("#class-list li").count() == 2
    node = next(n for n in shown if n.startswith(HOSTILE[2]))
    _click_node(page, node)  # the panel shows the hostile tap name as text
    assert page.locator('#panel [data-field="tap"]').inner_text() == node.rsplit(":", 1)[0]
    assert page.evaluate("window.__pwned") is None and page.locator("img[onerror]").count() == 0
    w.assert_clean()
    w.page.context.close()
