"""docs/notebook.ipynb runs (nbclient, an ipykernel kernel) and shows what it says: the analysis, the comparison
and the graph render as a summary and the explorer (``_repr_html_``, :mod:`ssa.viz.notebook`), and that explorer
starts in a real browser (Playwright driving Debian's chromium) from the notebook's own HTML output."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser import needs_chromium, watched_page

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebook.ipynb"

pytestmark = pytest.mark.slow  # runs the whole notebook: three classes analysed, two strategies evaluated


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cwd = tmp_path_factory.mktemp("notebook")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
                            ).execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    return nb, cwd


def _outputs(nb: Any, source_start: str) -> list[Any]:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    return list(cell.outputs)


def _html(nb: Any, source_start: str) -> str:
    (out,) = [o for o in _outputs(nb, source_start) if o.output_type == "execute_result"]
    return str(out.data["text/html"])


def _text(nb: Any, source_start: str) -> str:
    return "".join(o.text for o in _outputs(nb, source_start) if o.output_type == "stream" and o.name == "stdout")


def _embedded(view: str) -> list[dict[str, Any]]:
    """The explorer data inside each iframe of a view (its ``srcdoc`` is the whole one-file page)."""
    frames = re.findall(r'<iframe class="ssa-explorer"[^>]* srcdoc="([^"]*)"', view)
    out = []
    for doc in frames:
        page = html.unescape(doc)
        out.append(json.loads(page.split('<script type="application/json" id="ssa-data">', 1)[1]
                              .split("</script>", 1)[0].replace("<\\/", "</")))
    return out


def test_the_notebook_runs_and_each_result_shows_its_summary_and_explorer(executed: tuple[Any, Path]) -> None:
    nb, cwd = executed
    shown = _html(nb, "import ssa")  # the analysis: the summary `ssa analyse` prints, then the explorer
    assert "class 3 of digits: 183 images, b=3, rule=gradient_x_activation, selector=mad" in html.unescape(shown)
    printed = _text(nb, "graph = result.graph")
    n_nodes, n_edges = map(int, re.match(r"DependencyGraph (\d+) nodes, (\d+) edges", printed).groups())
    assert f"graph: {n_nodes} nodes, {n_edges} edges" in html.unescape(shown)
    (data,) = _embedded(shown)
    graph = data["files"]["class-0.json"]
    assert (len(graph["nodes"]), len(graph["edges"])) == (n_nodes, n_edges)
    assert "src=\"http" not in shown and "href=\"http" not in shown  # offline: nothing to fetch

    compared = _html(nb, "from ssa.analysis.compare import compare")
    (data,) = _embedded(compared)
    assert [c["label"] for c in data["index"]["classes"]] == ["class 3", "class 5", "class 8"]
    assert "cosine similarity, dendrogram order" in compared and compared.count("<tr>") == 1 + 3
    assert "shared by all three: ['" in _text(nb, "print(\"shared by all three")

    table = _text(nb, "from ssa.analysis.strategies import").splitlines()
    assert table[0].split()[:6] == ["target", "rule", "selector", "ablation", "split", "nodes"]
    rows = [row.split() for row in table[1:3]]
    assert [row[2] for row in rows] == ["mad", "tukey"] and [row[3] for row in rows] == ["zero", "zero"]
    # held-out images by default: class 3's 183 images in a build half and a scored half
    assert [row[4] for row in rows] == ["92/91", "92/91"] and all(int(row[5]) > 1 for row in rows)

    last = _html(nb, "from ssa.viz.explorer import write_explorer")  # a graph shows itself too
    assert "<b>class 8 of digits</b>" in last and len(_embedded(last)) == 1
    assert (cwd / "digits-explorer.html").stat().st_size > 100_000


@needs_chromium
def test_the_notebooks_explorer_renders_in_chromium(executed: tuple[Any, Path], tmp_path: Path, browser: Any) -> None:
    nb, _ = executed
    shots = []
    for start, n_classes in (("import ssa", 1), ("from ssa.analysis.compare import compare", 3)):
        view = _html(nb, start)
        page_file = tmp_path / f"view-{n_classes}.html"
        page_file.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{view}</body></html>")
        w = watched_page(browser, viewport={"width": 1100, "height": 900})
        w.page.goto(page_file.as_uri())
        frame = w.page.frame_locator("iframe.ssa-explorer")
        frame.locator("body[data-ready='1']").wait_for(timeout=30000)
        (inner,) = [f for f in w.page.frames if f != w.page.main_frame]
        index = _embedded(view)[0]["index"]
        shown = _embedded(view)[0]["files"][index["classes"][index["initial"]]["file"]]  # the class it opens on
        assert inner.evaluate("window.ssaExplorer.sigma.getGraph().order") == len(shown["nodes"])
        assert frame.locator("#class-list li").count() == n_classes
        assert frame.locator("#graph canvas").count() >= 2  # sigma drew its layers
        box = w.page.locator("iframe.ssa-explorer").bounding_box()
        assert box is not None and box["height"] >= 500 and box["width"] >= 1000
        shots.append(tmp_path / f"notebook-view-{n_classes}.png")
        w.page.screenshot(path=str(shots[-1]), full_page=True)
        w.assert_clean()
        w.page.context.close()
    assert all(s.stat().st_size > 10_000 for s in shots)
