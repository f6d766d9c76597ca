"""The explorer in a real browser (Playwright driving Debian's chromium): the ten digit classes.

One browser for the module; each test clicks what a person would click and compares what the page
shows with the graph files. No request may leave file:// or 127.0.0.1, and the console stays clean.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import ssa
from ssa.analysis.compare import compare
from ssa.cli import main
from ssa.viz.explorer import node_file
from tests.browser import needs_chromium, watched_page

pytestmark = needs_chromium

SHARED = "#e6862e"
PATH = "#7b3294"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Graphs of the ten digit classes (`ssa analyse --targets all`), the one-file explorer with reference
    images and the folder form."""
    d = tmp_path_factory.mktemp("explorer")
    assert main(["analyse", "digits", "--images", "digits", "--targets", "all", "--rule", "gradient_x_activation",
                 "--out-dir", str(d / "graphs"), "--quiet"]) == 0
    files = sorted((d / "graphs").glob("class-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    assert len(files) == 10
    page = d / "explorer.html"
    common = ["--model", "digits", "--images", "digits", "--top-k", "3", "--cache", str(d / "cache")]
    assert main(["explore", *map(str, files), *common, "--out", str(page)]) == 0
    folder = d / "site"
    assert main(["explore", *map(str, files), *common, "--out", f"{folder}/"]) == 0
    graphs = {int(p.stem.split("-")[1]): ssa.read_graph(p) for p in files}
    return {"page": page, "folder": folder, "graphs": graphs, "files": files}


def _open(browser, url):
    w = watched_page(browser)
    w.page.goto(url)
    w.page.wait_for_function("document.body.dataset.ready", timeout=30000)
    assert w.page.evaluate("document.body.dataset.ready") == "1"
    return w


def _search(page, text):
    page.fill("#search", text)
    page.press("#search", "Enter")
    page.wait_for_function(f"document.body.dataset.cls === {json.dumps(str(int(text)))}")


def _index_of(built, target):
    return [int(p.stem.split("-")[1]) for p in built["files"]].index(target)


def _click_node(page, node):
    """Click where sigma draws ``node`` (its position comes from sigma; the click is a real mouse click)."""
    x, y = page.evaluate("""(n) => { const s = window.ssaExplorer.sigma;
        const v = s.framedGraphToViewport(s.getNodeDisplayData(n));
        const r = document.getElementById('graph').getBoundingClientRect(); return [v.x + r.left, v.y + r.top]; }""",
        node)
    page.mouse.click(x, y)
    page.wait_for_function("(n) => document.querySelector('#panel h2') && document.querySelector('#panel "
                           "h2').textContent === n",
                           arg=node, timeout=5000)


def _drawn(page, color):
    """Nodes and edges sigma draws in ``color`` (its display data after the highlight reducers)."""
    return page.evaluate("""(c) => { const s = window.ssaExplorer.sigma, g = s.getGraph(), n = [], e = [];
        g.forEachNode((k) => { if (s.getNodeDisplayData(k).color === c) n.push(k); });
        g.forEachEdge((k) => { if (s.getEdgeDisplayData(k).color === c) e.push(k); });
        return [n, e]; }""", color)


def test_load_and_search_a_class(browser, built):
    w = _open(browser, built["page"].as_uri())
    page = w.page
    items = page.locator("#class-list li")
    assert items.count() == 10
    _search(page, "7")
    assert page.locator("#class-list li.current .label").inner_text() == "class 7"
    assert page.locator("#class-list li:not([hidden])").count() == 1  # the search filters the list
    g7 = built["graphs"][7]
    status = page.locator("#status").inner_text()
    assert f"{g7.number_of_nodes()} neurons" in status and f"{g7.number_of_edges()} edges" in status
    assert page.evaluate("window.ssaExplorer.sigma.getGraph().order") == g7.number_of_nodes()
    page.fill("#search", "")  # similarities to class 7, in dendrogram order, from ssa.analysis.compare
    cmp = compare([built["graphs"][c] for c in range(10)])
    order = [int(t) for t in page.locator("#class-list li").evaluate_all("els => els.map(e => e.dataset.class)")]
    assert order == list(cmp.order)
    sims = page.locator("#class-list li .sim").all_inner_texts()
    assert [float(s) for s in sims] == pytest.approx([cmp.similarity[7, i] for i in order], abs=0.006)
    w.assert_clean()


def test_click_a_node_shows_its_numbers_reference_images_and_paths(browser, built):
    w = _open(browser, built["page"].as_uri())
    page = w.page
    _search(page, "3")
    g = built["graphs"][3]
    node = max((n for n, d in g.nodes(data=True) if d["tap"] == "features.3"),
               key=lambda n: (g.nodes[n]["in_degree"], g.nodes[n]["frequency"]))
    _click_node(page, node)
    d = g.nodes[node]
    field = {k: page.locator(f'#panel [data-field="{k}"]').inner_text()
             for k in ("tap", "neuron", "frequency", "mean_relevance", "active_fraction", "in_degree", "sign")}
    assert field["tap"] == d["tap"]
    assert int(field["neuron"]) == d["neuron"]
    assert int(field["frequency"]) == d["frequency"]
    assert int(field["in_degree"]) == d["in_degree"]
    assert int(field["sign"]) == d["sign"]
    assert float(field["mean_relevance"]) == pytest.approx(d["mean_relevance"], rel=1e-3)
    assert float(field["active_fraction"]) == pytest.approx(d["active_fraction"], rel=1e-3, abs=1e-9)
    kept_by = {c for c, h in built["graphs"].items() if node in h}
    shown = page.locator("#panel .shared-by li a").all_inner_texts()
    assert sorted(shown) == sorted(f"class {c}" for c in kept_by)
    # reference images: most relevant in class 3, most active, and the saliency, all decoded
    page.wait_for_selector('#refs .thumbs[data-kind="relevant"] img')
    page.wait_for_selector("#refs .saliency img")
    sizes = page.locator("#refs img").evaluate_all("els => els.map(e => [e.complete, e.naturalWidth])")
    assert len(sizes) == 3 + 3 + 1
    assert all(ok and width > 0 for ok, width in sizes), sizes
    shown_rel = page.locator('#refs .thumbs[data-kind="relevant"] img').evaluate_all("els => els.map(e => "
                                                                                     "+e.dataset.image)")
    x, y = ssa.load_images("digits")
    assert all(y[i] == 3 for i in shown_rel)  # the most relevant images are class 3's
    # the path view: every path from the class logit to the node, and nothing else
    nodes, edges = _drawn(page, PATH)
    want = nx.ancestors(g, node) | {node}
    assert set(nodes) == want
    assert set(edges) == {f"{u}->{v}" for u, v in g.subgraph(want).edges}
    assert "logits:3" in nodes
    w.assert_clean()


def test_saliency_on_any_image_of_the_class(browser, built):
    """The slider offers every image of the class; an image without a stored picture is drawn in the page from
    the neuron's saliency maps, with the colours ssa uses (checked pixel by pixel)."""
    w = _open(browser, built["page"].as_uri())
    page = w.page
    _search(page, "3")
    g = built["graphs"][3]
    node = max((n for n, d in g.nodes(data=True) if d["tap"] == "features.3"),
               key=lambda n: (g.nodes[n]["in_degree"], g.nodes[n]["frequency"]))
    _click_node(page, node)
    page.wait_for_selector("#refs .saliency img")
    data = json.loads((built["folder"] / "data" / node_file(node)).read_text())  # the folder holds the same data
    pixels = json.loads((built["folder"] / "data" / "images.json").read_text())
    entry = data["class_saliency"][str(_index_of(built, 3))]
    x, y = ssa.load_images("digits")
    assert sorted(entry["images"]) == sorted(np.flatnonzero(y == 3).tolist())  # every image of class 3
    assert int(page.locator("#sal-pick").get_attribute("max")) == g.graph["n_images"] - 1 == len(entry["images"]) - 1
    page.focus("#sal-pick")
    page.keyboard.press("End")  # the image where the neuron is least relevant
    last = entry["images"][-1]
    assert str(last) not in data["saliency"]  # no stored picture: drawn from the maps
    page.wait_for_function(f"document.querySelector('#refs .saliency img').dataset.image === '{last}'")
    assert page.locator("#sal-which").inner_text().endswith(f"{len(entry['images'])} of {len(entry['images'])}")
    width, rgba = page.evaluate("""() => { const im = document.querySelector('#refs .saliency img');
        const c = document.createElement('canvas'); c.width = im.naturalWidth; c.height = im.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(im, 0, 0);
        return [c.width, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)]; }""")
    h, wd, ch = pixels["shape"]
    f = 200 // max(h, wd)
    assert width == wd * f
    shown = np.asarray(rgba, dtype=np.float64).reshape(h * f, wd * f, 4)[::f, ::f, :3]
    k = pixels["index"].index(last)
    base = np.frombuffer(base64.b64decode(pixels["pixels"]), np.uint8).reshape(-1, h, wd, ch)[k] / 255.0
    lut = np.frombuffer(base64.b64decode(pixels["lut"]), np.uint8).reshape(256, 3) / 255.0
    q = np.frombuffer(base64.b64decode(entry["maps"]), np.uint8).reshape(-1, h, wd)[-1]
    want = np.rint(np.clip(0.35 * base + 0.65 * lut[q], 0, 1) * 255)
    assert np.abs(shown - want).max() <= 1  # the colours ssa would draw
    assert q.max() == 255 and q.min() < 128  # a real map, not a flat one
    page.keyboard.press("Home")  # back to the most relevant image
    page.wait_for_function(f"document.querySelector('#refs .saliency img').dataset.image === '{entry['images'][0]}'")
    assert page.locator("#refs .saliency img").evaluate("e => e.naturalWidth") > 0
    w.assert_clean()


def test_second_class_highlights_exactly_the_shared_nodes(browser, built):
    w = _open(browser, built["page"].as_uri())
    page = w.page
    _search(page, "5")
    page.select_option("#second", str(_index_of(built, 8)))
    page.wait_for_function("document.getElementById('status').dataset.mode === 'shared'")
    a, b = built["graphs"][5], built["graphs"][8]
    nodes, edges = _drawn(page, SHARED)
    assert set(nodes) == set(a.nodes) & set(b.nodes)
    both = {f"{u}->{v}" for u, v, dd in a.edges(data=True) if b.has_edge(u, v) and b.edges[u, v]["sign"] == dd["sign"]}
    assert set(edges) == both
    assert nodes and len(nodes) < a.number_of_nodes()  # a real test: some shared, some not
    status = page.locator("#status").inner_text()
    plural = lambda n, w: f"{n} {w}{'' if n == 1 else 's'}"  # noqa: E731
    assert f"share {plural(len(nodes), 'neuron')} and {plural(len(both), 'edge')}" in status
    # the sub-graph export is the shared part, readable by ssa.read_graph
    with page.expect_download() as dl:
        page.click("#export-json")
    path = Path(dl.value.path())
    sub = ssa.read_graph(path.rename(path.with_suffix(".json")))
    assert set(sub.nodes) == set(nodes)
    assert {f"{u}->{v}" for u, v in sub.edges} == both
    assert sub.nodes[nodes[0]]["frequency"] == a.nodes[nodes[0]]["frequency"]
    w.assert_clean()


def test_export_svg_and_png(browser, built):
    w = _open(browser, built["page"].as_uri())
    page = w.page
    _search(page, "0")
    with page.expect_download() as dl:
        page.click("#export-svg")
    assert dl.value.suggested_filename == "ssa-class-0.svg"
    root = ET.fromstring(Path(dl.value.path()).read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    circles = root.findall(".//{http://www.w3.org/2000/svg}circle")
    g = built["graphs"][0]
    assert {c.get("data-node") for c in circles} == set(g.nodes)  # the fitted view shows every node
    lines = root.findall(".//{http://www.w3.org/2000/svg}line")
    assert {(ln.get("data-source"), ln.get("data-target")) for ln in lines} == set(g.edges)
    with page.expect_download() as dl:
        page.click("#export-png")
    data = Path(dl.value.path()).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    w.assert_clean()


def test_serve_a_folder(browser, built):
    folder = built["folder"]
    assert not re.search(r'id="ssa-data"', (folder / "index.html").read_text())  # data load lazily
    proc = subprocess.Popen([sys.executable, "-m", "ssa.cli", "serve", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line
        w = _open(browser, m.group(0))
        page = w.page
        _search(page, "9")
        g = built["graphs"][9]
        node = next(n for n, d in g.nodes(data=True) if d["tap"] == "features.6")
        _click_node(page, node)
        page.wait_for_selector('#refs .thumbs[data-kind="active"] img')
        sizes = page.locator("#refs img").evaluate_all("els => els.map(e => e.naturalWidth)")
        assert sizes and min(sizes) > 0
        assert any("/data/neurons/" in u for u in w.requests) and any("/data/class-" in u for u in w.requests)
        assert all(u.startswith(m.group(0)) or u.startswith(("data:", "blob:")) for u in w.requests)
        w.assert_clean()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped" in err and "Traceback" not in err
