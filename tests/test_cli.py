"""The command line: model sources, bad input (one line, exit code 2, nothing written), plugins."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ssa
from ssa.cli import main
from ssa.models import digits_cnn, digits_data


@pytest.fixture(scope="module")
def threes(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    x, y = digits_data()
    np.save(d / "x3.npy", x[y == 3][:40])
    return d


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_analyse_writes_graph_and_summary(threes, capsys):
    out = threes / "g.json"
    assert main(["analyse", "digits", "--images", str(threes / "x3.npy"), "-t", "3", "-b", "2",
                 "--rule", "gradient_x_activation", "--selector", "tukey", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "class 3 of digits:" in text and "features.1" in text and f"wrote {out}" in text
    data = json.loads(out.read_text())
    assert data["graph"]["branching"] == 2 and data["graph"]["rule"] == "gradient_x_activation"
    g = ssa.read_graph(out)
    assert g.number_of_edges() > 3
    # graphml too
    assert main(["analyse", "digits", "--images", str(threes / "x3.npy"), "-t", "3", "-q", "--rule", "gradient",
                 "--selector", "tukey", "-o", str(threes / "g.graphml")]) == 0
    assert ssa.read_graph(threes / "g.graphml").number_of_nodes() >= 1


def _bad_cases(d):
    x = np.load(d / "x3.npy")
    np.save(d / "wrong_shape.npy", x[:, :, :4, :])
    np.save(d / "nan.npy", np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x))
    np.save(d / "empty.npy", x[:0])
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    (d / "garbage.npy").write_bytes(b"not an array")
    (d / "broken.pt2").write_bytes(b"PK\x03\x04 truncated")
    imgs = str(d / "x3.npy")
    return {
        "missing model file": (["analyse", str(d / "nothere.pt2"), "--images", imgs, "-t", "3"], "does not exist"),
        "unreadable model file": (["analyse", str(d / "broken.pt2"), "--images", imgs, "-t", "3"], "cannot read"),
        "missing attr": (["analyse", "ssa.models:nope", "--images", imgs, "-t", "3"], "no attribute"),
        "missing module": (["analyse", "ssa.nomodule:x", "--images", imgs, "-t", "3"], "cannot import"),
        "wrong shape": (["analyse", "digits", "--images", str(d / "wrong_shape.npy"), "-t", "3"], "shape"),
        "wrong dtype": (["analyse", "digits", "--images", str(d / "strings.npy"), "-t", "3"], "dtype"),
        "not npy": (["analyse", "digits", "--images", str(d / "garbage.npy"), "-t", "3"], "cannot read"),
        "nan": (["analyse", "digits", "--images", str(d / "nan.npy"), "-t", "3"], "NaN"),
        "empty": (["analyse", "digits", "--images", str(d / "empty.npy"), "-t", "3"], "empty"),
        "target": (["analyse", "digits", "--images", imgs, "-t", "10"], "target must be in [0, 9]"),
        "branching": (["analyse", "digits", "--images", imgs, "-t", "3", "-b", "0"], "branching"),
        "rule": (["analyse", "digits", "--images", imgs, "-t", "3", "--rule", "magic"], "unknown rule 'magic'"),
        "selector": (["analyse", "digits", "--images", imgs, "-t", "3", "--selector", "nope"],
                     "unknown selector 'nope'"),
        "selector param": (["analyse", "digits", "--images", imgs, "-t", "3", "--selector", "tukey",
                            "--selector-param", "k=-1"], "k"),
        "out suffix": (["analyse", "digits", "--images", imgs, "-t", "3", "-o", str(d / "g.txt")], ".json"),
        "missing flag": (["analyse", "digits", "--images", imgs], "--target"),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(threes, capsys):
    out = threes / "keep.json"
    for name, (argv, needle) in _bad_cases(threes).items():
        out.write_text("previous result")
        code = main(argv + ["-o", str(out)] if "-o" not in argv else argv)
        assert code == 2, name
        _one_line_error(capsys, needle)
        assert out.read_text() == "previous result", f"{name}: the previous output was touched"
    leftovers = [p.name for p in threes.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert leftovers == []


def test_no_traceback_in_a_real_process(threes):
    proc = subprocess.run([sys.executable, "-m", "ssa.cli", "analyse", "digits", "--images",
                           str(threes / "x3.npy"), "-t", "12"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("ssa: error: target must be in [0, 9]")


def test_model_sources_give_the_same_graph(threes, tmp_path):
    x = np.load(threes / "x3.npy")[:20]
    ref = ssa.analyse(digits_cnn(), x, 3, rule="gradient_x_activation", selector="tukey")
    edges = sorted(ref.graph.edges)
    assert edges

    (tmp_path / "mymodel.py").write_text(textwrap.dedent("""
        from ssa.models import digits_cnn
        MODEL = digits_cnn()
        def build():
            return digits_cnn()
    """))
    for source in (f"{tmp_path / 'mymodel.py'}:MODEL", f"{tmp_path / 'mymodel.py'}:build",
                   "ssa.models:digits_cnn", "digits"):
        got = ssa.analyse(source, x, 3, rule="gradient_x_activation", selector="tukey")
        assert sorted(got.graph.edges) == edges, source

    pt2 = tmp_path / "digits.pt2"
    program = torch.export.export(digits_cnn(), (torch.from_numpy(x[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
    torch.export.save(program, str(pt2))
    got = ssa.analyse(str(pt2), x, 3, rule="gradient_x_activation", selector="tukey")
    assert sorted(d["tap_order"] for _, d in got.graph.nodes(data=True)) == \
        sorted(d["tap_order"] for _, d in ref.graph.nodes(data=True))
    same = {(u.split(":")[1], v.split(":")[1], ref.graph.nodes[u]["tap_order"]) for u, v in ref.graph.edges}
    got_edges = {(u.split(":")[1], v.split(":")[1], got.graph.nodes[u]["tap_order"]) for u, v in got.graph.edges}
    assert got_edges == same


def test_plugins_lists_everything_with_distribution(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "onnx", "gradient", "gradient_x_activation", "tukey", "zscore", "mad", "percentile",
                 "topk"):
        assert f"  {name} " in out
    assert "[stepwise-sa 0.1.0]" in out  # ssa's own distribution


def test_autoload_switch_keeps_builtins():
    code = ("import ssa.plugins as p; r = p.registry(); "
            "print(sorted(r.names('selector')), p.get_plugin_manager().list_plugin_distinfo())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, "SSA_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "'tukey'" in proc.stdout and proc.stdout.strip().endswith("[]")


def test_inline_plugin_registers_and_unregisters():
    import numpy as np

    class Everything(ssa.Selector):
        name = "everything_positive"
        description = "every positive entry"
        parameters = {"two_sided": ssa.Param(False, "unused", bool)}

        def select(self, rows):
            return (np.nan_to_num(rows) > 0).astype(np.int8)

    class Plugin:
        @ssa.hookimpl
        def ssa_register_selectors(self, register):
            register(Everything)

    pm = ssa.get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin, name="inline-test")
    try:
        reg = ssa.registry(refresh=True)
        assert "everything_positive" in reg.names("selector")
        res = ssa.analyse("digits", "digits", 3, 1, rule="gradient", selector="everything_positive")
        assert res.selector == "everything_positive"
    finally:
        pm.unregister(plugin)
        ssa.registry(refresh=True)
    assert "everything_positive" not in ssa.registry().names("selector")


def test_pt2_with_a_static_batch_is_refused_by_check_and_analyse(tmp_path, capsys):
    """A program exported with a static batch used to pass `ssa check` and fail in analyse with an AssertionError."""
    x = torch.from_numpy(digits_data()[0][:4])
    one = tmp_path / "static1.pt2"
    torch.export.save(torch.export.export(digits_cnn(), (x[:1],)), str(one))
    four = tmp_path / "static4.pt2"
    torch.export.save(torch.export.export(digits_cnn(), (x,)), str(four))
    for argv in (["check", str(one), "--input-shape", "1,8,8"], ["analyse", str(one), "--images", "digits", "-t", "3"],
                 ["collect", str(one), "--images", "digits", "--store", str(tmp_path / "s")]):
        assert main(argv) == 2, argv
        line = _one_line_error(capsys, "runs on 1 image but fails on a batch of 2", "static batch size",
                               "dynamic_shapes=({0: torch.export.Dim('batch', min=1)},)")
        assert "internal error" not in line
    assert main(["analyse", str(four), "--images", "digits", "-t", "3"]) == 2
    _one_line_error(capsys, "exported for other input shapes", "dynamic_shapes")
    assert not (tmp_path / "s").exists()
