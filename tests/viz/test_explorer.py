"""The explorer's data (ssa.viz.explorer), its reference images against slow references, the CLI's
refusals and the committed front-end bundle. The browser tests are in test_explorer_browser.py."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ssa
from ssa.analysis.compare import compare
from ssa.cli import main
from ssa.core.arrays import to_numpy
from ssa.errors import InvalidInputError
from ssa.testing.tolerance import REL
from ssa.viz import figures as F
from ssa.viz.explorer import (
    explorer_files,
    layered_positions,
    node_file,
    write_explorer,
)
from ssa.viz.explorer.references import (
    _per_image_relevance,
    class_indices,
    decode_maps,
    reference_images,
)
from ssa.viz.figures.common import display_image, saliency_map

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "ssa" / "viz" / "explorer" / "static"
FRONTEND = ROOT / "frontend" / "explorer"


@pytest.fixture(scope="module")
def small():
    """Graphs of classes 3 and 5 on 20 images each, the prepared network and the images."""
    res = ssa.analyse_many("digits", "digits", [3, 5], rule="gradient_x_activation", max_per_class=20)
    net = ssa.load_model("digits")
    x, y = ssa.load_images("digits")
    net.prepare(x)
    return [r.graph for r in res.values()], net, x, y


def test_explorer_files_hold_the_graphs_and_the_clustering(small):
    graphs, *_ = small
    files = explorer_files(graphs, ["a.json", "b.json"])
    index = files["index.json"]
    cmp = compare(graphs)
    assert index["order"] == list(cmp.order)
    assert np.allclose(index["similarity"], cmp.similarity, atol=1e-4)
    assert [c["label"] for c in index["classes"]] == ["class 3", "class 5"]
    assert index["references"] is False and "--model" in index["references_note"]
    for i, g in enumerate(graphs):
        data = files[f"class-{i}.json"]
        assert {n["id"] for n in data["nodes"]} == set(g.nodes)
        assert {(e["source"], e["target"]) for e in data["edges"]} == set(g.edges)
        for n in data["nodes"]:
            for k in ("tap", "neuron", "frequency", "in_degree", "sign"):
                assert n[k] == g.nodes[n["id"]][k]
            kept = [j for j, h in enumerate(graphs) if n["id"] in h]
            assert [c for c, _ in n["shared_by"]] == kept
            assert [f for _, f in n["shared_by"]] == [int(graphs[j].nodes[n["id"]]["frequency"]) for j in kept]
            assert n["ref"] is None
    g = graphs[0].copy()
    g.graph["images_hash"] = "abc"  # attributes added later (issue 9) are kept, not refused
    g.nodes["logits:3"]["extra"] = np.float32(1.5)
    data = explorer_files([g])["class-0.json"]
    assert data["graph"]["images_hash"] == "abc"
    assert next(n for n in data["nodes"] if n["id"] == "logits:3")["extra"] == 1.5


def test_layered_positions_rows_follow_the_taps(small):
    g = small[0][0]
    pos = layered_positions(g)
    order = sorted({d["tap_order"] for _, d in g.nodes(data=True)})
    for n, d in g.nodes(data=True):
        assert pos[n][1] == order.index(d["tap_order"])  # one row per tap, the logits on top
    assert pos["logits:3"] == (0.0, len(order) - 1)
    for tap in {d["tap"] for _, d in g.nodes(data=True)}:
        xs = sorted(pos[n][0] for n, d in g.nodes(data=True) if d["tap"] == tap)
        assert len(set(np.round(np.diff(xs), 9))) <= 1  # equally spaced within a row


def test_per_image_relevance_equals_autograd_and_the_graph(small):
    graphs, net, x, y = small
    g = graphs[0]
    rows = class_indices(net, g, x, y)
    assert len(rows) == 20 and (y[rows] == 3).all()
    per = _per_image_relevance(net, x, rows, g, 8, {})
    rule = ssa.make_rule("gradient_x_activation")
    for v in [n for n in g.nodes if g.in_degree(n)]:
        ref = []  # slow reference: autograd rows of every upper neuron that keeps v
        for u in g.predecessors(v):
            tu, ku = F.parse_node(u)
            parent, omega = F.relevance_rows(net, x[rows], tu, ku, rule=rule, parent=g.nodes[v]["tap"], batch_size=4)
            ref.append(omega[:, g.nodes[v]["neuron"]])
        assert np.allclose(per[v], np.mean(ref, axis=0), rtol=1e-4, atol=1e-6), v
        assert per[v].mean() == pytest.approx(g.nodes[v]["mean_relevance"], rel=1e-4, abs=1e-7)



def test_per_image_relevance_comes_from_a_session_and_its_checks(small):
    """The explorer asks a Session for its relevance source, so a rule whose combine() contradicts its declared
    closed form is refused (check_closed_form), as ssa.analyse refuses it."""
    graphs, net, x, y = small
    g = graphs[0]
    rows = class_indices(net, g, x, y)

    class Lying(ssa.Rule):  # declares the gradient's closed form, combines gradient x activation
        name = "lying_explorer"
        closed_form = ssa.ClosedForm.GRADIENT

        def combine(self, grad, activation):
            return grad * activation

    class Plugin:
        @ssa.hookimpl
        def ssa_register_rules(self, register):
            register(Lying)

    pm = ssa.get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin, name="lying-explorer-test")
    try:
        ssa.registry(refresh=True)
        lying = g.copy()
        lying.graph["rule"], lying.graph["rule_params"] = "lying_explorer", {}
        with pytest.raises(ssa.PluginError, match="lying_explorer"):
            _per_image_relevance(net, x, rows, lying, 8, {})
    finally:
        pm.unregister(plugin)
        ssa.registry(refresh=True)
    sessions: dict = {}
    per = _per_image_relevance(net, x, rows, g, 8, sessions)
    (session,) = sessions.values()  # one session per rule, shared by the classes
    assert session.rule.name == "gradient_x_activation" and session.network is net
    _per_image_relevance(net, x, class_indices(net, graphs[1], x, y), graphs[1], 8, sessions)
    assert len(sessions) == 1
    assert per and all(np.isfinite(r).all() for r in per.values())

def test_pair_gradients_equal_one_pass_per_neuron(small):
    _, net, x, _ = small
    imgs = x[[0, 1, 2, 0]]
    ks = np.array([4, 4, 9, 17])
    grads = net.pair_maps(imgs, "features.3", ks).saliency  # the capability the explorer's references use
    for i, k in enumerate(ks):  # reference: figures.saliency, one neuron and one image at a time
        assert np.allclose(grads[i], F.saliency(net, imgs[i:i + 1], "features.3", int(k))[0], atol=1e-6)
    pm = net.pair_maps(x[:3], "features.1", np.array([2, 2, 7]))
    rf, maps = pm.peak_gradient, pm.activations
    for i in range(3):  # features.1 is a 3x3 convolution of the input: its receptive field is 3x3 at most
        ys, xs = np.nonzero(np.abs(rf[i]).sum(axis=0) > 0)
        assert ys.max() - ys.min() < 3 and xs.max() - xs.min() < 3
        best = np.unravel_index(maps[i].argmax(), maps[i].shape)
        assert ys.min() <= best[0] <= ys.max() and xs.min() <= best[1] <= xs.max()


def test_reference_images_are_the_top_images_and_cached(small, tmp_path):
    graphs, net, x, y = small
    groups = [class_indices(net, g, x, y) for g in graphs]
    refs = reference_images(net, x, groups, graphs, top_k=3, cache_dir=tmp_path)
    assert not refs.cached and refs.path is not None and refs.path.is_file()
    union = np.unique(np.concatenate(groups))
    scal = {t: to_numpy(v) for t, v in net.tap_scalars(x[union]).items()}  # the backend's tensors, on the host
    for node, r in refs.data.items():
        tap, k = F.parse_node(node)
        vals = scal[tap][:, k]
        want = union[np.argsort(-vals, kind="stable")[:3]]
        assert [a["image"] for a in r["active"]] == list(want), node
        # the reference pass batches the images by class, tap_scalars all at once: float32 rounds differently
        assert [a["value"] for a in r["active"]] == pytest.approx(np.sort(vals)[::-1][:3], rel=REL)
        for gi, lst in r["relevant"].items():
            assert set(a["image"] for a in lst) <= set(groups[int(gi)])
            assert [a["value"] for a in lst] == sorted((a["value"] for a in lst), reverse=True)
        for a in r["active"]:
            assert a["src"].startswith("data:image/png;base64,") and str(a["image"]) in r["saliency"]
    assert "logits:3" in refs.data and refs.data["logits:3"]["relevant"] == {}
    again = reference_images(net, x, groups, graphs, top_k=3, cache_dir=tmp_path)
    assert again.cached and again.data == json.loads(json.dumps(refs.data))
    files = explorer_files(graphs, references=refs.data)
    assert files["index.json"]["references"] is True
    for i, _g in enumerate(graphs):
        for n in files[f"class-{i}.json"]["nodes"]:
            assert n["ref"] == node_file(n["id"]) and files[n["ref"]]["node"] == n["id"]


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(small, tmp_path, monkeypatch, capsys):
    """The reference-image cache is no output: a cache folder below a file, or a full disk (ENOSPC, as the rename
    fails), leaves the references computed and used, one warning, no temporary file; before, `ssa explore --model`
    failed after computing everything."""
    import errno

    import ssa.io.atomic as atomic

    graphs, net, x, y = small
    groups = [class_indices(net, g, x, y) for g in graphs]
    want = reference_images(net, x, groups, graphs, top_k=2, use_cache=False)
    (tmp_path / "afile").write_text("a file where the cache folder would go")
    with pytest.warns(ssa.SSAWarning, match=r"cannot cache the reference images in .*afile.* \(Not a directory\); "
                                            r"they were computed and are used, not cached"):
        refs = reference_images(net, x, groups, graphs, top_k=2, cache_dir=tmp_path / "afile")
    assert refs.path is None and not refs.cached and refs.data == want.data

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.warns(ssa.SSAWarning, match=r"\(No space left on device\)"):
        refs = reference_images(net, x, groups, graphs, top_k=2, cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert refs.data == want.data
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no temporary file left
    out = tmp_path / "e.html"
    files = _graph_files(small, tmp_path)
    capsys.readouterr()
    assert main(["explore", *files, "--model", "digits", "--images", "digits", "--out", str(out), "--cache",
                 str(tmp_path / "afile")]) == 0 and out.is_file()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: warning: cannot cache the reference images"), err


def test_saliency_on_any_image_of_the_class_equals_one_neuron_and_image_at_a_time(small):
    graphs, net, x, y = small
    groups = [class_indices(net, g, x, y) for g in graphs]
    refs = reference_images(net, x, groups, graphs, top_k=2, use_cache=False)
    assert refs.note == "Every image of the class has its saliency map (8×8)."
    shape = refs.images["shape"]
    assert shape == [8, 8, 1] and refs.images["factor"] == 1
    index = refs.images["index"]
    assert sorted(index) == sorted(set(np.concatenate(groups).tolist()))  # every analysed image, once
    pixels = np.frombuffer(base64.b64decode(refs.images["pixels"]), np.uint8).reshape(len(index), 8, 8)
    for j in (0, len(index) - 1):
        np.testing.assert_array_equal(pixels[j], np.rint(display_image(x[index[j]]) * 255))
    checked = 0
    for gi, g in enumerate(graphs):
        per = _per_image_relevance(net, x, groups[gi], g, 8, {})
        for v in g.nodes:
            entry = refs.data[v]["class_saliency"][str(gi)]
            assert sorted(entry["images"]) == sorted(groups[gi].tolist())  # every image of the class
            tap, k = F.parse_node(v)
            if v in per:  # ordered by the neuron's relevance in each image, the largest first
                assert entry["by"] == "relevance"
                pos = {int(u): j for j, u in enumerate(groups[gi])}
                want = [per[v][pos[u]] for u in entry["images"]]
                assert entry["value"] == pytest.approx(want, rel=1e-3, abs=1e-6)
                assert want == sorted(want, reverse=True)
            else:  # the class neuron: by its value
                assert entry["by"] == "activation" and tap == "logits"
            maps = decode_maps(entry, shape[:2])
            for j in (0, len(entry["images"]) // 2, len(entry["images"]) - 1):
                u = entry["images"][j]
                ref = saliency_map(F.saliency(net, x[u:u + 1], tap, k)[0], x[u])  # one neuron, one image
                assert entry["max"][j] == pytest.approx(ref.max(), rel=1e-3)
                np.testing.assert_allclose(maps[j], ref, atol=ref.max() * (0.5 / 255 + 1e-3))
                checked += 1
    assert checked > 20
    files = explorer_files(graphs, references=refs.data, saliency_images=refs.images, saliency_note=refs.note)
    assert files["images.json"] == refs.images and files["index.json"]["saliency_images"] == "images.json"
    assert files["index.json"]["saliency_note"] == refs.note


def test_saliency_on_class_images_keeps_the_most_relevant_within_the_budget(small):
    graphs, net, x, y = small
    groups = [class_indices(net, g, x, y) for g in graphs]
    nodes = sum(g.number_of_nodes() for g in graphs)
    refs = reference_images(net, x, groups, graphs, top_k=2, use_cache=False, saliency_budget=3 * 64 * nodes)
    assert refs.note.startswith("Only the 3 images of each class where the neuron is most relevant have saliency maps")
    full = reference_images(net, x, groups, graphs, top_k=2, use_cache=False)
    for v, r in refs.data.items():
        for gi, entry in r["class_saliency"].items():
            whole = full.data[v]["class_saliency"][gi]
            assert entry["images"] == whole["images"][:3] and entry["value"] == whole["value"][:3]
            np.testing.assert_array_equal(decode_maps(entry, (8, 8)), decode_maps(whole, (8, 8))[:3])
    assert sorted(refs.images["index"]) == sorted({u for r in refs.data.values() for e in r["class_saliency"].values()
                                                   for u in e["images"]})
    none = reference_images(net, x, groups, graphs, top_k=2, use_cache=False, saliency_budget=0)
    assert none.images is None and all(r["class_saliency"] == {} for r in none.data.values())
    assert none.note.startswith("Saliency only on the reference images")
    assert all(r["saliency"] for r in none.data.values())  # the reference images keep theirs


def test_folder_and_single_file(small, tmp_path):
    graphs, *_ = small
    page = write_explorer(tmp_path / "e.html", graphs)
    text = page.read_text()
    assert 'id="ssa-data"' in text and "<script src" not in text and "<link" not in text
    site = write_explorer(f"{tmp_path}/site/", graphs)
    assert site == tmp_path / "site" / "index.html"
    assert json.loads((tmp_path / "site" / "data" / "index.json").read_text())["classes"][1]["label"] == "class 5"
    assert 'id="ssa-data"' not in site.read_text()
    write_explorer(f"{tmp_path}/site/", graphs[:1])  # an explorer folder is replaced whole
    assert not (tmp_path / "site" / "data" / "class-1.json").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="holds something else"):
        write_explorer(f"{other}/", graphs)
    assert (other / "notes.txt").read_text() == "mine"


def _graph_files(small, d):
    graphs, *_ = small
    paths = []
    for g in graphs:
        p = d / f"class-{g.graph['target']}.json"
        ssa.write_graph(g, p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("case,needle", [
    ("suffix", "must end in .html"),
    ("model-only", "pass both --model and --images"),
    ("other-images", "was made from 20 images"),
    ("top-k", "--top-k must be >= 1"),
    ("saliency-budget", "--saliency-budget must be >= 0"),
])
def test_cli_explore_bad_input(small, tmp_path, capsys, case, needle):
    files = _graph_files(small, tmp_path)
    out = str(tmp_path / "e.html")
    extra: list[str] = []
    if case == "suffix":
        out = str(tmp_path / "e.txt")
    elif case == "model-only":
        extra = ["--model", "digits"]
    elif case == "other-images":
        x, y = ssa.load_images("digits")
        np.save(tmp_path / "x.npy", x[:60])
        np.save(tmp_path / "y.npy", y[:60])
        extra = ["--model", "digits", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy")]
    elif case == "saliency-budget":
        extra = ["--model", "digits", "--images", "digits", "--saliency-budget", "-1"]
    else:
        extra = ["--model", "digits", "--images", "digits", "--top-k", "0"]
    assert main(["explore", *files, "--out", out, *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not Path(out).exists()


def test_cli_serve_bad_input(small, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "holds no explorer" in capsys.readouterr().err
    write_explorer(f"{tmp_path}/site/", small[0])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(tmp_path / "site"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert "is in use" in err and err.count("\n") == 1


def test_committed_bundle_matches_the_lock_file():
    """The committed bundle says which package versions it holds; they are the lock file's, with licences."""
    versions = json.loads((STATIC / "VERSIONS.json").read_text())["bundled"]
    lock = json.loads((FRONTEND / "package-lock.json").read_text())["packages"]
    assert {"sigma", "graphology"} <= set(versions)
    licences = (STATIC / "THIRD-PARTY-LICENSES.txt").read_text()
    banner = (STATIC / "explorer.min.js").read_text().splitlines()[0]
    for name, v in versions.items():
        assert lock[f"node_modules/{name}"]["version"] == v["version"]
        assert lock[f"node_modules/{name}"]["integrity"] == v["integrity"]
        assert f"{name} {v['version']}" in licences and f"{name}@{v['version']}" in banner
    pkg = json.loads((FRONTEND / "package.json").read_text())
    for name, spec in pkg["dependencies"].items():  # exact pins, no ranges
        assert spec == versions[name]["version"]


@pytest.mark.skipif(not (FRONTEND / "node_modules").is_dir() or shutil.which("node") is None,
                    reason="frontend/explorer/node_modules is absent (run `make explorer-assets` to rebuild and check)")
def test_committed_bundle_is_what_the_build_script_produces(tmp_path):
    proc = subprocess.run(["node", str(FRONTEND / "build.mjs"), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("explorer.min.js", "explorer.min.css", "VERSIONS.json", "THIRD-PARTY-LICENSES.txt"):
        assert (tmp_path / name).read_bytes() == (STATIC / name).read_bytes(), name
