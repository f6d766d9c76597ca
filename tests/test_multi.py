"""Several classes at once (ssa.analyse_many, `ssa analyse --targets`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import ssa
import ssa.session
from ssa.cli import main
from ssa.io.outdir import MANIFEST
from ssa.testing.tolerance import assert_graphs_close, fixture_margin

GXA = "gradient_x_activation"


@pytest.fixture(scope="module")
def digits():
    return ssa.load_images("digits")


def test_each_class_equals_a_single_analysis(digits):
    x, y = digits
    res = ssa.analyse_many("digits", "digits", [0, 5], rule=GXA, selector="tukey", max_per_class=15)
    assert list(res) == [0, 5]
    for c, r in res.items():
        assert r.target == c and r.n_images == 15
        assert r.graph.graph["grouping"] == "labels" and r.graph.graph["max_per_class"] == 15
        single = ssa.analyse("digits", x[y == c][:15], c, rule=GXA, selector="tukey")
        # shared statistics of both classes' images against one class's batch: float32 rounds differently
        net = ssa.load_model("digits")
        net.prepare(x[:2])
        margin = fixture_margin(net, x[y == c][:15], single, GXA, "tukey")
        assert_graphs_close(r.graph, single.graph, margin=margin)


def test_model_loaded_and_prepared_once(monkeypatch):
    from ssa_torch.network import TorchNetwork

    calls = {"load": 0, "prepare": 0}
    real_load, real_prepare = ssa.session.load_model, TorchNetwork.prepare

    def load(*a, **k):
        calls["load"] += 1
        return real_load(*a, **k)

    def prepare(self, example):
        calls["prepare"] += 1
        return real_prepare(self, example)

    monkeypatch.setattr(ssa.session, "load_model", load)
    monkeypatch.setattr(TorchNetwork, "prepare", prepare)
    res = ssa.analyse_many("digits", "digits", "all", max_per_class=4, by_prediction=True, preset="paper")
    assert sorted(res) == list(range(10))
    assert calls == {"load": 1, "prepare": 1}


def test_cli_class_folders(tmp_path, digits, capsys):
    x, y = digits
    root = tmp_path / "imgs"
    for c in (3, 5):
        (root / str(c)).mkdir(parents=True)
        for i, im in enumerate(x[y == c][:6]):
            Image.fromarray(np.uint8(np.round(im[0] * 255))).save(root / str(c) / f"{i}.png")
    out = tmp_path / "graphs"
    assert main(["analyse", "digits", "--images", str(root), "--channels", "1", "--targets", "3,5",
                 "--rule", GXA, "--selector", "tukey", "--out-dir", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == ["class-3.json", "class-5.json"]
    g = ssa.read_graph(out / "class-5.json")
    assert g.graph["target"] == 5 and g.graph["n_images"] == 6
    # one class from class folders, with --target and --out
    assert main(["analyse", "digits", "--images", str(root), "--channels", "1", "--target", "3", "--preset", "paper",
                 "--out", str(tmp_path / "three.json"), "-q"]) == 0
    assert ssa.read_graph(tmp_path / "three.json").graph["n_images"] == 6
    capsys.readouterr()


def test_cli_labels_file(tmp_path, digits, capsys):
    x, y = digits
    np.save(tmp_path / "x.npy", x[:300])
    np.save(tmp_path / "y.npy", y[:300])
    assert main(["analyse", "digits", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--targets", "1,2", "--preset", "paper", "--out-dir", str(tmp_path / "g")]) == 0
    printed = capsys.readouterr().out
    assert "class 1 of digits:" in printed and "class 2 of digits:" in printed
    assert ssa.read_graph(tmp_path / "g" / "class-2.json").graph["n_images"] == int((y[:300] == 2).sum())


FLAT_MODEL = '''
import torch.nn as nn

class Flat(nn.Module):
    """Every class gets probability 0.1 on every image."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(256, 10)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))

model = Flat()
'''


@pytest.mark.parametrize("argv,needle", [
    (["--images", "digits"], "exactly one of --target"),
    (["--images", "digits", "--target", "1", "--targets", "1,2"], "exactly one of --target"),
    (["--images", "digits", "--targets", "1,2", "--out", "g.json"], "--out-dir"),
    (["--images", "digits", "--targets", "1,x"], "--targets must be"),
    (["--images", "digits", "--targets", "3", "--min-confidence", "2"], "min_confidence must be in [0, 1]"),
    (["--images", "NPY", "--targets", "1,2"], "no labels"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    if "NPY" in argv:
        np.save(tmp_path / "x.npy", ssa.load_images("digits")[0][:20])
        argv = [str(tmp_path / "x.npy") if a == "NPY" else a for a in argv]
    assert main(["analyse", "digits", *argv, "-q"]) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_class_without_confident_image(tmp_path, capsys):
    path = tmp_path / "flat.py"
    path.write_text(FLAT_MODEL)
    assert main(["analyse", f"{path}:model", "--images", "digits", "--targets", "3,4", "--min-confidence", "0.5",
                 "-q"]) == 2
    err = capsys.readouterr().err
    assert "class 3 has no image with probability >= 0.5" in err and "--min-confidence" in err
    assert err.count("\n") == 1
    # by prediction every image goes to class 0 (all logits tie), so class 4 has none
    assert main(["analyse", f"{path}:model", "--images", "digits", "--targets", "0,4", "--by-prediction", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no image is predicted as class 4" in err and err.count("\n") == 1
