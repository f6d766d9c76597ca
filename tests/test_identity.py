"""Model identity by content (issue 9, item 2): graphs record content hashes of the model and the image set
beside a display name; compare, figures and report refuse graphs of different models by hash, and graphs of
different runs unless --allow-mixed, naming the parameter that differs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import ssa
from ssa.cli import main
from ssa.models import DigitsCNN, digits_cnn, digits_data

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _export_onnx(module: torch.nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module.eval(), torch.zeros(1, 1, 8, 8), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity")
    x, y = digits_data()
    np.save(d / "x.npy", x[:300])
    np.save(d / "y.npy", y[:300])
    np.save(d / "x_other.npy", x[300:600])
    np.save(d / "y_other.npy", y[300:600])
    return d


def _error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_the_same_network_gets_the_same_name_and_hash_from_every_source(work, tmp_path, capsys):
    x = np.load(work / "x.npy")[:40]
    api = ssa.analyse(digits_cnn(), x, 3, rule="gradient_x_activation")
    attr = ssa.analyse("ssa.models:digits_cnn", x, 3, rule="gradient_x_activation")
    out = tmp_path / "cli.json"
    np.save(tmp_path / "x40.npy", x)
    assert main(["analyse", "digits", "--images", str(tmp_path / "x40.npy"), "-t", "3", "--rule",
                 "gradient_x_activation", "-o", str(out)]) == 0
    assert "class 3 of digits: 40 images" in capsys.readouterr().out
    cli = ssa.read_graph(out)
    assert api.model == attr.model == cli.graph["model"] == "digits"
    assert HEX32.match(cli.graph["model_hash"]) and HEX32.match(cli.graph["images_hash"])
    assert api.graph.graph["model_hash"] == attr.graph.graph["model_hash"] == cli.graph["model_hash"]
    assert api.graph.graph["images_hash"] == cli.graph["images_hash"]
    # an ONNX export and a .pt2 export of it get the same display name (another graph, so another hash)
    onnx = ssa.analyse(str(_export_onnx(digits_cnn(), tmp_path / "exported.onnx")), x, 3, rule="gradient_x_activation")
    assert onnx.model == "digits" and onnx.graph.graph["model_hash"] != cli.graph["model_hash"]
    pt2 = tmp_path / "exported.pt2"
    torch.export.save(torch.export.export(digits_cnn(), (torch.from_numpy(x[:2]),),
                                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)), str(pt2))
    assert ssa.analyse(str(pt2), x, 3).model == "digits"
    # other weights are not the built-in: the class name (Python) or the file stem (files); a name given wins
    assert ssa.analyse(DigitsCNN(), x, 3).model == "DigitsCNN"
    assert ssa.analyse("ssa.models:DigitsCNN", x, 3).model == "DigitsCNN"
    assert ssa.analyse(digits_cnn(), x, 3, name="mine").model == "mine"
    assert main(["analyse", "digits", "--images", str(tmp_path / "x40.npy"), "-t", "3", "--name", "mine", "-q",
                 "-o", str(out)]) == 0
    assert ssa.read_graph(out).graph["model"] == "mine"


@pytest.fixture(scope="module")
def two_onnx_models(work):
    """Two different networks that are both called model.onnx, and a class graph of each."""
    graphs = {}
    for name, seed in (("mA", 1), ("mB", 2)):
        torch.manual_seed(seed)
        path = _export_onnx(DigitsCNN(), work / name / "model.onnx")
        out = work / f"g{name}"
        assert main(["analyse", str(path), "--images", str(work / "x.npy"), "--labels", str(work / "y.npy"),
                     "--targets", "3,5", "-q", "--out-dir", str(out), "--rule", "gradient_x_activation",
                     "--selector", "topk"]) == 0
        graphs[name] = out
    return graphs


def test_graphs_of_two_models_with_one_file_name_are_refused(work, two_onnx_models, capsys):
    a, b = two_onnx_models["mA"], two_onnx_models["mB"]
    assert ssa.read_graph(a / "class-3.json").graph["model"] == ssa.read_graph(b / "class-3.json").graph["model"]
    capsys.readouterr()
    assert main(["compare", str(a / "class-3.json"), str(b / "class-5.json")]) == 2
    line = _error(capsys)
    assert "the graphs come from different models" in line and "same name, other weights or graph" in line
    assert main(["compare", str(a / "class-3.json"), str(b / "class-5.json"), "--allow-mixed"]) == 2
    assert "different models" in _error(capsys)  # never allowed
    out = work / "fig-B"
    assert main(["figures", str(work / "mB" / "model.onnx"), "--images", str(work / "x.npy"), "--labels",
                 str(work / "y.npy"), "--graph", str(a / "class-3.json"), "--out-dir", str(out)]) == 2
    assert "was made with model 'model' (content hash" in _error(capsys)
    assert not out.exists()
    assert main(["report", str(a / "class-3.json"), str(b / "class-3.json"), "--out", str(work / "r.html")]) == 2
    assert "different models" in _error(capsys)
    assert main(["report", str(a / "class-3.json"), str(a / "class-5.json"), "--model", str(work / "mB" / "model.onnx"),
                 "--images", str(work / "x.npy"), "--labels", str(work / "y.npy"), "--out", str(work / "r.html")]) == 2
    assert "pass the model the graph was made with" in _error(capsys)
    assert not (work / "r.html").exists()


@pytest.fixture(scope="module")
def runs(work):
    """Graphs of classes 3 and 5 from runs that differ in one parameter each."""
    base = ["analyse", "digits", "--images", str(work / "x.npy"), "--labels", str(work / "y.npy"), "--targets",
            "3,5", "-q", "--rule", "gradient_x_activation", "--selector", "tukey"]
    variants = {
        "base": [],
        "rule": ["--rule", "gradient"],
        "selector": ["--selector", "mad"],
        "params": ["--selector-param", "k=1"],
        "branching": ["-b", "2"],
        "images": ["--images", str(work / "x_other.npy"), "--labels", str(work / "y_other.npy")],
    }
    out = {}
    for name, extra in variants.items():
        d = work / f"run-{name}"
        assert main(base + extra + ["--out-dir", str(d)]) == 0
        out[name] = d
    return out


@pytest.mark.parametrize("variant, words", [
    ("rule", r"different rule: class-3(\.json)? gradient_x_activation, class-5(\.json)? gradient;"),
    ("selector", r"different selector: class-3(\.json)? tukey, class-5(\.json)? mad;"),
    ("params", r"different selector parameters: class-3(\.json)? \{\"k\": 1.5, .*\{\"k\": 1.0,"),
    ("branching", r"different branching factor: class-3(\.json)? 3, class-5(\.json)? 2;"),
    # one class from two image sets (graphs of different classes may come from one image file per class)
    ("images", r"different image set: class-3(\.json)? [0-9a-f]{12}, class-3(\.json)? [0-9a-f]{12};"),
])
def test_mixed_runs_are_refused_unless_allow_mixed(runs, capsys, tmp_path, variant, words):
    other = "class-3.json" if variant == "images" else "class-5.json"
    argv = ["compare", str(runs["base"] / "class-3.json"), str(runs[variant] / other)]
    assert main(argv) == 2
    line = _error(capsys)
    assert re.search(words, line) and "--allow-mixed" in line, line
    assert main(argv + ["--allow-mixed"]) == 0
    capsys.readouterr()
    assert main(["report", *argv[1:], "--out", str(tmp_path / "r.html")]) == 2
    assert re.search(words, _error(capsys)) and not (tmp_path / "r.html").exists()
    assert main(["report", *argv[1:], "--out", str(tmp_path / "r.html"), "--allow-mixed"]) == 0


def test_classes_from_their_own_image_files_compare(work, runs, capsys, tmp_path):
    """Issue 18, item 11: graphs of different classes, each built from its own image set (one file per class, the
    paper's set-up), compare without --allow-mixed; the run parameters are still checked."""
    graphs = [str(runs["base"] / "class-3.json"), str(runs["images"] / "class-5.json")]
    assert main(["compare", *graphs]) == 0
    assert "2 graphs of" in capsys.readouterr().out
    assert main(["report", *graphs, "--out", str(tmp_path / "r.html")]) == 0 and (tmp_path / "r.html").is_file()
    capsys.readouterr()
    assert main(["compare", *graphs, str(runs["rule"] / "class-5.json")]) == 2
    assert "different rule" in _error(capsys)
    # and one .npy file per class, analysed class by class
    x, y = np.load(work / "x.npy"), np.load(work / "y.npy")
    for c in (3, 5):
        np.save(tmp_path / f"x{c}.npy", x[y == c])
        assert main(["analyse", "digits", "--images", str(tmp_path / f"x{c}.npy"), "-t", str(c), "-q", "--out",
                     str(tmp_path / f"g{c}.json")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "g3.json"), str(tmp_path / "g5.json")]) == 0, _error(capsys)


def test_classes_from_files_decoded_differently_are_refused(tmp_path, capsys):
    """Issue 18, item 11: the guard is about the preprocessing too (graphs record how image files were decoded)."""
    from PIL import Image

    from ssa.io.preprocess import describe_preprocess

    x, y = digits_data()
    for c in (3, 5):
        (tmp_path / "imgs" / str(c)).mkdir(parents=True)
        for i, im in enumerate(x[y == c][:12]):
            Image.fromarray(np.uint8(np.round(im[0] * 255))).save(tmp_path / "imgs" / str(c) / f"{i}.png")
    base = ["analyse", "digits", "--images", str(tmp_path / "imgs"), "--channels", "1", "-q", "--selector", "tukey"]
    assert main(base + ["-t", "3", "-o", str(tmp_path / "g3.json")]) == 0
    assert main(base + ["-t", "5", "-o", str(tmp_path / "g5.json")]) == 0
    assert main(base + ["-t", "5", "--mean", "0.1", "-o", str(tmp_path / "g5-mean.json")]) == 0
    g3 = ssa.read_graph(tmp_path / "g3.json")
    assert g3.run.preprocess == describe_preprocess(ssa.Preprocess(channels=1)), g3.run.preprocess
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "g3.json"), str(tmp_path / "g5.json")]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "g3.json"), str(tmp_path / "g5-mean.json")]) == 2
    line = _error(capsys)
    assert "different preprocessing" in line and "--allow-mixed" in line, line
    assert main(["compare", str(tmp_path / "g3.json"), str(tmp_path / "g5-mean.json"), "--allow-mixed"]) == 0


def test_figures_refuse_other_images_and_mixed_compare_graphs(work, runs, capsys, tmp_path):
    graph = str(runs["base"] / "class-3.json")
    argv = ["figures", "digits", "--graph", graph, "--out-dir", str(tmp_path / "f")]
    assert main(argv + ["--images", str(work / "x_other.npy"), "--labels", str(work / "y_other.npy")]) == 2
    assert "was made from another image set" in _error(capsys) and not (tmp_path / "f").exists()
    assert main(argv + ["--images", str(work / "x.npy"), "--labels", str(work / "y.npy"), "--compare",
                        str(runs["rule"] / "class-5.json")]) == 2
    assert "different rule" in _error(capsys)
    assert main(argv + ["--images", str(work / "x.npy"), "--labels", str(work / "y.npy"), "--compare",
                        str(runs["base"] / "class-5.json"), "--n-images", "2"]) == 0


def test_the_model_hash_reads_the_same_bytes_as_a_copy_would():
    """The model hash reads each weight's buffer in place: the same digest as hashing a ``.tobytes()`` copy of
    every state entry (the formula written out), with a 0-d constant and a transposed weight (a bfloat16 buffer is
    folded into a float32 constant by canonicalisation)."""
    import hashlib

    class _Mixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)  # num_batches_tracked: a 0-d int64 buffer
            self.fc = torch.nn.Linear(4, 10)
            self.register_buffer("bf16", torch.linspace(0, 1, 5, dtype=torch.bfloat16))
            with torch.no_grad():
                self.fc.weight.set_(torch.randn(4, 10).t())  # not contiguous

        def forward(self, x):
            return self.fc(self.bn(self.conv(x)).relu().mean((2, 3))) + self.bf16.float().sum()

    net = ssa.load_model(_Mixed().eval())
    net.prepare(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32))
    h = hashlib.blake2b(digest_size=16)
    h.update(net.graph_module.code.encode())
    for key, value in net.graph_module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes() if value.dtype != torch.bfloat16
                 else value.float().cpu().numpy().tobytes())
    assert net.model_hash() == h.hexdigest()
    state = net.graph_module.state_dict().values()
    assert any(v.dim() == 0 for v in state) and any(not v.is_contiguous() for v in state)


def test_one_class_of_one_run_twice_is_refused(runs, capsys, tmp_path):
    """A class given twice from one run (the same file, or a copy) would be clustered and counted as two classes:
    refused by compare, report and explore, with --allow-mixed too; one class from two runs still compares."""
    import shutil

    graph = runs["base"] / "class-3.json"
    shutil.copy(graph, tmp_path / "copy.json")
    for other in (graph, tmp_path / "copy.json"):
        for argv in (["compare", str(graph), str(runs["base"] / "class-5.json"), str(other), "--allow-mixed"],
                     ["report", str(graph), str(other), "--out", str(tmp_path / "r.html"), "--allow-mixed"],
                     ["explore", str(graph), str(other), "--out", str(tmp_path / "e.html")]):
            assert main(argv) == 2
            line = _error(capsys)
            assert re.search(rf"and {other.stem}(\.json)? are the same class 3 from one run", line), line
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "e.html").exists()
    assert main(["compare", str(graph), str(runs["rule"] / "class-3.json"), "--allow-mixed"]) == 0
