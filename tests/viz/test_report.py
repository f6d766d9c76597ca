"""The HTML report (ssa.viz.report, `ssa report`): self-contained, renders in headless Chromium with every image."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

import ssa
from ssa.cli import main
from ssa.viz.report import build_report
from tests.analysis.test_compare import make_graph

CHROMIUM = "/usr/bin/chromium"
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var im = document.images, ok = 0, bad = [];
  for (var i = 0; i < im.length; i++) {
    if (im[i].complete && im[i].naturalWidth > 0) { ok++; } else { bad.push(im[i].alt); }
  }
  document.body.setAttribute('data-images', ok + '/' + im.length);
  document.body.setAttribute('data-svgs', String(document.querySelectorAll('figure svg').length));
  document.body.setAttribute('data-bad', bad.join('|'));
});
</script>"""


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("graphs")
    res = ssa.analyse_many("digits", "digits", [6, 8], rule="gradient_x_activation", selector="tukey", max_per_class=10)
    return [str(r.write(d / f"class-{c}.json")) for c, r in res.items()]


@pytest.fixture(scope="module")
def reports(graph_files, tmp_path_factory):
    """The report with the model (PNG figures) and without it (inline SVG), written once for the module."""
    d = tmp_path_factory.mktemp("reports")
    png, svg = d / "report.html", d / "report-svg.html"
    assert main(["report", *graph_files, "--model", "digits", "--images", "digits", "--out", str(png),
                 "--n-images", "4"]) == 0
    assert main(["report", *graph_files, "--out", str(svg), "--format", "svg"]) == 0
    return png, svg


def _self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), "external reference"
    assert "<link" not in text and "<script" not in text and "@import" not in text


def test_report_without_model_from_hand_made_graphs():
    a = make_graph(0, [("logits:0", "fc:1"), ("fc:1", "conv2:5"), ("conv2:5", "conv1:0")])
    b = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:5"), ("fc:1", "conv2:6", -1)])
    text = build_report([a, b], ["a.json", "b.json"], title="toy <report>")
    _self_contained(text)
    assert "<title>toy &lt;report&gt;</title>" in text
    for needle in ("Run parameters", "Comparison", "Jaccard similarity per layer", "Shared sub-graphs",
                   "Interconnectedness", 'id="c0"', 'id="c1"', "class 0", "class 1"):
        assert needle in text, needle
    # clustermap, bag-of-nodes map, dendrogram, shared (all = the pair), shared pair, two class graphs
    assert text.count('src="data:image/png;base64,') == 7
    one = build_report([a])  # one graph: no comparison, still a report
    assert "Comparison" not in one and one.count("data:image/png;base64,") == 1


def test_cli_report_with_model(reports, graph_files, tmp_path, capsys):
    out, svg = reports
    text = out.read_text()
    _self_contained(text)
    for needle in ("Outlier frequency (Fig. 2a)", "Relevance rows across images (Fig. 2b)", "Saliency (Fig. 4b,c)",
                   "Activation maps (Fig. 5)", "gradient_x_activation", "max_per_class"):
        assert needle in text, needle
    assert text.count("data:image/png;base64,") >= 3 + 2 * 5
    stext = svg.read_text()
    _self_contained(stext)
    assert stext.count("<svg") >= 5 and "<img " not in stext  # (SVG embeds its raster parts itself)
    capsys.readouterr()
    one = tmp_path / "one.html"  # the CLI prints where the report is
    assert main(["report", graph_files[0], "--out", str(one)]) == 0
    assert str(one.resolve()) in capsys.readouterr().out


@pytest.mark.parametrize("case,needle", [
    ("models", "different models"),
    ("empty", "empty graph"),
    ("model-only", "pass both --model and --images"),
    ("suffix", "must end in .html"),
])
def test_cli_report_bad_input(tmp_path, graph_files, capsys, case, needle):
    extra: list[str] = []
    files = list(graph_files)
    out = str(tmp_path / "r.html")
    if case == "models":
        p = tmp_path / "other.json"
        ssa.write_graph(make_graph(5, [("logits:5", "fc:1")], model="resnet"), p)
        files.append(str(p))
    elif case == "empty":
        p = tmp_path / "empty.json"
        g = make_graph(5, [])
        real = ssa.read_graph(files[0]).graph  # the same model and run as the real graphs: only empty
        g.graph.update({k: v for k, v in real.items() if k not in ("target", "n_images")})
        ssa.write_graph(g, p)
        files.append(str(p))
    elif case == "model-only":
        extra = ["--model", "digits"]
    else:
        out = str(tmp_path / "r.txt")
    assert main(["report", *files, "--out", out, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path(out).exists()


def _chromium_dom(html_path: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="ssa-chromium-") as profile:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", html_path.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} is absent: install the Debian package `chromium` to render the report")
def test_report_renders_in_headless_chromium(tmp_path, reports):
    out, svg = reports
    text = out.read_text()
    n_img = text.count("<img ")
    assert n_img >= 10
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _chromium_dom(checked)
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert f'data-images="{n_img}/{n_img}"' in body.group(0), body.group(0)
    assert "Shared sub-graphs" in dom and "class 8" in dom
    # the SVG flavour: every figure is an inline <svg> the browser parses
    stext = svg.read_text()
    n_fig = stext.count("<figure>")
    svg_checked = tmp_path / "svg-checked.html"
    svg_checked.write_text(stext.replace("</body>", CHECK_SCRIPT + "</body>"))
    body = re.search(r"<body[^>]*>", _chromium_dom(svg_checked)).group(0)
    assert f'data-svgs="{n_fig}"' in body, body


def test_report_links_to_the_explorer(tmp_path):
    from ssa.viz.report import write_report

    a = make_graph(0, [("logits:0", "fc:1"), ("fc:1", "conv2:5")])
    b = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:6")])
    out = write_report(tmp_path / "out" / "report.html", [a, b], explorer=tmp_path / "out" / "explorer.html")
    text = out.read_text()
    _self_contained(text)
    assert text.count('href="explorer.html"') == 2  # in the navigation and in the opening paragraph
    site = write_report(tmp_path / "r2.html", [a, b], explorer=f"{tmp_path}/out/site/")
    assert 'href="out/site/index.html"' in site.read_text()
    assert "interactive explorer" not in write_report(tmp_path / "r3.html", [a, b]).read_text()


def test_report_renders_from_the_template_in_memory(monkeypatch):
    """Figures are rendered in memory (no temporary folder) and laid out by templates/report.html."""
    import tempfile
    from importlib import resources

    def refuse(*a, **k):
        raise AssertionError("building a report must not write temporary files")

    for name in ("mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile"):
        monkeypatch.setattr(tempfile, name, refuse)
    a = make_graph(0, [("logits:0", "fc:1"), ("fc:1", "conv2:5")])
    b = make_graph(1, [("logits:1", "fc:1"), ("fc:1", "conv2:6")])
    text = build_report([a, b], ["a.json", "b.json"], fmt="svg", title="<b>bold</b>")
    assert "<title>&lt;b&gt;bold&lt;/b&gt;</title>" in text  # autoescaped
    assert text.count("<figure><svg") == text.count("<figure>") >= 5  # every figure inline, none from a file
    template = resources.files("ssa.viz").joinpath("templates", "report.html").read_text(encoding="utf-8")
    assert 'id="params"' in template and 'id="params"' in text
    css = resources.files("ssa.viz").joinpath("templates", "report.css").read_text(encoding="utf-8").strip()
    assert css in text
