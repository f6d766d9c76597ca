"""What a new user saw in the explorer, in a real browser (Playwright driving Debian's chromium): the search hides
the classes it does not match, switching class clears the clicked node's ring with the panel, and a node shows its
index under the mouse even where it is too small to be labelled or faded by a selection.

The page is built from three hand-made class graphs (fast; the ten digit classes are tested in
test_explorer_browser.py). What sigma draws is read from its canvases: the ring and the label of a hovered or
selected node are drawn on the 2-D canvas ``canvas.sigma-hovers``, whose pixels the tests count.
"""

from __future__ import annotations

import pytest

from ssa.viz.explorer import write_explorer
from tests.analysis.test_compare import make_graph
from tests.browser import needs_chromium, watched_page

pytestmark = needs_chromium

SMALL = "conv1:0"  # an outlier in 1 of 10 images: drawn too small for a label
SHARED = "fc:1"  # kept by classes 0 and 1


@pytest.fixture(scope="module")
def page_path(tmp_path_factory):
    a = make_graph(0, [("logits:0", "fc:1"), ("logits:0", "fc:2"), ("fc:1", "conv2:5"), ("fc:2", "conv2:6"),
                       ("conv2:5", SMALL)], freq={SMALL: 1})
    b = make_graph(1, [("logits:1", "fc:1"), ("logits:1", "fc:3"), ("fc:1", "conv2:5"), ("fc:3", "conv2:7")])
    c = make_graph(2, [("logits:2", "fc:4"), ("fc:4", "conv2:8")])
    path = tmp_path_factory.mktemp("views") / "explorer.html"
    write_explorer(path, [a, b, c], names=["a.json", "b.json", "c.json"])
    return path


@pytest.fixture
def watched(browser, page_path):
    w = watched_page(browser)
    w.page.goto(page_path.as_uri())
    w.page.wait_for_function("document.body.dataset.ready", timeout=30000)
    assert w.page.evaluate("document.body.dataset.ready") == "1"
    yield w
    w.assert_clean()
    w.page.context.close()


def _show_class(page, target: int) -> None:
    page.locator(f"#class-list li[data-class='{target}']").click()
    page.wait_for_function(f"document.body.dataset.cls === '{target}'")
    page.wait_for_timeout(100)  # sigma renders on the next frame


def _where(page, node: str) -> tuple[float, float]:
    return tuple(page.evaluate("""(n) => { const s = window.ssaExplorer.sigma;
        const v = s.framedGraphToViewport(s.getNodeDisplayData(n));
        const r = document.getElementById('graph').getBoundingClientRect(); return [v.x + r.left, v.y + r.top]; }""",
                               node))


def _hover_layer(page) -> dict[str, int]:
    """Pixels of sigma's 2-D hover canvas: ``drawn`` (any ink: a ring's box or shadow, a label) and ``text``
    (opaque dark pixels: only a label's glyphs are; the box is white and its shadow translucent)."""
    page.wait_for_timeout(100)
    return page.evaluate("""() => { const c = document.querySelector('canvas.sigma-hovers');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let drawn = 0, text = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i + 3] > 0) drawn++;
          if (d[i + 3] > 200 && d[i] < 100 && d[i + 1] < 100 && d[i + 2] < 100) text++; }
        return { drawn, text }; }""")


def test_the_search_hides_the_classes_it_does_not_match(watched):
    page = watched.page
    items = page.locator("#class-list li")
    assert items.count() == 3
    page.fill("#search", "1")
    assert [li.is_visible() for li in items.all()] == [li.get_attribute("data-class") == "1" for li in items.all()]
    assert page.locator("#class-list li:visible .label").all_inner_texts() == ["class 1"]
    page.fill("#search", "class")
    assert page.locator("#class-list li:visible").count() == 3
    page.fill("#search", "no such class")
    assert page.locator("#class-list li:visible").count() == 0
    page.fill("#search", "")
    assert page.locator("#class-list li:visible").count() == 3


def test_switching_class_clears_the_selected_nodes_ring_with_the_panel(watched):
    page = watched.page
    _show_class(page, 0)
    assert _hover_layer(page)["drawn"] == 0
    page.mouse.click(*_where(page, SHARED))
    page.wait_for_function(f"document.querySelector('#panel h2')?.textContent === '{SHARED}'")
    assert _hover_layer(page)["drawn"] > 0  # the clicked node's ring
    _show_class(page, 1)  # a class that keeps the same node, clicked in the list (the mouse left the graph)
    assert page.locator("#panel h2").count() == 0  # the panel is cleared ...
    assert page.evaluate(f"window.ssaExplorer.sigma.getGraph().hasNode('{SHARED}')")
    assert _hover_layer(page) == {"drawn": 0, "text": 0}  # ... and so is the ring
    page.mouse.click(*_where(page, SHARED))  # clicking it again rings it again
    page.wait_for_function(f"document.querySelector('#panel h2')?.textContent === '{SHARED}'")
    assert _hover_layer(page)["drawn"] > 0


def test_a_small_node_shows_its_index_on_hover_also_when_faded(watched):
    page = watched.page
    _show_class(page, 0)
    size = page.evaluate(f"window.ssaExplorer.sigma.getNodeDisplayData('{SMALL}').size")
    threshold = page.evaluate("window.ssaExplorer.sigma.getSetting('labelRenderedSizeThreshold')")
    assert size < threshold  # too small for sigma to label it
    x, y = _where(page, SMALL)
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=4)
    assert _hover_layer(page)["text"] > 0  # its index, drawn beside it
    page.mouse.click(*_where(page, "fc:2"))  # a selection fades the nodes off its paths, SMALL among them
    page.wait_for_function("document.querySelector('#panel h2')?.textContent === 'fc:2'")
    assert page.evaluate(f"window.ssaExplorer.sigma.getNodeDisplayData('{SMALL}').label") == ""
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y, steps=4)
    page.wait_for_function(f"window.ssaExplorer.sigma.hoveredNode === '{SMALL}'")
    with_hover = _hover_layer(page)["text"]
    page.mouse.move(5, 5)  # off the graph: only the selected node's label stays
    assert with_hover > _hover_layer(page)["text"] > 0
