"""Class maps for image folders (issue 18, item 1): ImageNet-layout folders get the model's class indices.

A folder of synset-named class folders (``n01440764/``, ...) with ``--class-map imagenet`` gives each graph its
true ILSVRC-2012 index; without a map it is refused with the fix; numbered folders are those classes; ``--targets
all`` means the classes present; the labels used are recorded in the graphs and the ``--out-dir`` manifest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssa
from ssa.cli import main
from ssa.io.classmap import class_folder_labels, class_map, imagenet_synsets
from ssa.io.datasets import iter_batches, open_source
from ssa.io.folders import load_grouped_images
from ssa.io.images import Preprocess
from ssa.io.outdir import MANIFEST

SCRIPT = Path(sys.executable).with_name("ssa")

#: ten ImageNet classes by their well-known indices: tench, goldfish, great white shark, golden retriever, tabby,
#: analog clock, wine bottle, Granny Smith, banana, toilet tissue
TRUE = {"n01440764": 0, "n01443537": 1, "n01484850": 2, "n02099601": 207, "n02123045": 281, "n02708093": 409,
        "n04591713": 907, "n07742313": 948, "n07753592": 954, "n15075141": 999}

MODEL_PY = """
import torch
import torch.nn as nn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 1000))
"""


def _folder(root: Path, names, n: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / name / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imagenet")
    _folder(d / "val", TRUE)
    (d / "model.py").write_text(MODEL_PY)
    return d


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: error: "), err
    return err[0]


def test_the_shipped_imagenet_order_is_the_standard_one():
    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000 and list(synsets) == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"
    for name, idx in TRUE.items():
        assert synsets.index(name) == idx


def test_imagenet_folders_get_their_true_indices_with_the_map(imagenet, capsys, tmp_path):
    model, images = f"{imagenet / 'model.py'}:net", str(imagenet / "val")
    out = tmp_path / "graphs"
    assert main(["analyse", model, "--images", images, "--class-map", "imagenet", "--targets", "all", "--out-dir",
                 str(out), "-q"]) == 0
    written = sorted(p.name for p in out.glob("class-*.json"))
    assert written == sorted(f"class-{i}.json" for i in TRUE.values())
    for name, idx in TRUE.items():
        g = ssa.read_graph(out / f"class-{idx}.json")
        assert g.run.target == idx and g.run.n_images == 3
        assert g.run.class_map == TRUE and g.run.class_map[name] == idx  # the labels the run used, in every graph
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["memo"]["analyse"]["class_map"] == TRUE
    # the in-memory path (no --out-dir) and one class with --target give the same indices
    res = ssa.analyse_many(f"{imagenet / 'model.py'}:net", images, "all", labels=ssa.class_map("imagenet"))
    assert sorted(res) == sorted(TRUE.values()) and all(r.n_images == 3 for r in res.values())
    assert main(["analyse", model, "--images", images, "--class-map", "imagenet", "-t", "207", "-o",
                 str(tmp_path / "g.json"), "-q"]) == 0
    g = ssa.read_graph(tmp_path / "g.json")
    assert (g.run.target, g.run.n_images, g.run.class_map) == (207, 3, TRUE)
    # a class with no folder has no image
    capsys.readouterr()
    assert main(["analyse", model, "--images", images, "--class-map", "imagenet", "-t", "5"]) == 2
    assert "no image is labelled class 5" in _err(capsys)


def test_imagenet_folders_without_a_map_are_refused_with_the_fix(imagenet, capsys):
    model, images = f"{imagenet / 'model.py'}:net", str(imagenet / "val")
    fix = "pass --class-map imagenet (the standard ILSVRC-2012 order)"
    for argv in (["--targets", "all"], ["-t", "0"], ["--targets", "all", "--out-dir", str(imagenet / "never")]):
        assert main(["analyse", model, "--images", images, *argv]) == 2
        assert fix in _err(capsys)
    assert not (imagenet / "never").exists()
    with pytest.raises(ssa.InvalidInputError, match="ImageNet synset ids"):
        ssa.analyse_many(f"{imagenet / 'model.py'}:net", images, "all")
    # as a real process: one line, exit code 2
    proc = subprocess.run([str(SCRIPT), "analyse", model, "--images", images, "--targets", "all"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and fix in proc.stderr and "Traceback" not in proc.stderr


def test_the_map_is_checked_against_the_logits(imagenet, capsys):
    # the digits model has 10 logits; the ImageNet map gives 207, 281, ... (and the images are 3-channel: the
    # map is refused first, before any analysis)
    assert main(["analyse", "digits", "--images", str(imagenet / "val"), "--class-map", "imagenet", "--targets",
                 "all", "--channels", "1", "--resize", "8,8"]) == 2
    assert "class folder 'n15075141' is class 999, but the model has 10 logits" in _err(capsys)


def test_numbered_folders_and_targets_all_mean_the_classes_present(imagenet, tmp_path, capsys):
    """A 4-class folder (classes 3, 17, 400, 999) with a 1000-logit model: --targets all is those four."""
    root = _folder(tmp_path / "num", ["3", "17", "400", "999"], n=2)
    res = ssa.analyse_many(f"{imagenet / 'model.py'}:net", root, "all")
    assert sorted(res) == [3, 17, 400, 999] and all(r.graph.run.class_map == {"3": 3, "17": 17, "400": 400,
                                                                               "999": 999} for r in res.values())
    out = tmp_path / "g"
    assert main(["analyse", f"{imagenet / 'model.py'}:net", "--images", str(root), "--targets", "all", "--out-dir",
                 str(out), "-q"]) == 0
    assert sorted(p.name for p in out.glob("class-*.json")) == ["class-17.json", "class-3.json", "class-400.json",
                                                                  "class-999.json"]


def test_json_and_csv_maps(imagenet, tmp_path, capsys):
    root = _folder(tmp_path / "pets", ["cat", "dog"], n=2)
    assert class_folder_labels(root) == {"cat": 0, "dog": 1}  # no map: sorted names (torchvision's ImageFolder)
    (tmp_path / "m.json").write_text(json.dumps({"cat": 281, "dog": 207}))
    (tmp_path / "m.csv").write_text("folder,index\ncat,281\ndog,207\n")
    (tmp_path / "list.json").write_text(json.dumps(["dog", "cat"]))
    for spec, want in (("m.json", {"dog": 207, "cat": 281}), ("m.csv", {"dog": 207, "cat": 281}),
                       ("list.json", {"dog": 0, "cat": 1})):
        assert class_folder_labels(root, class_map(tmp_path / spec)) == want
        assert list(class_folder_labels(root, class_map(tmp_path / spec))) == list(want)  # in class order
    res = ssa.analyse_many(f"{imagenet / 'model.py'}:net", root, "all", labels=class_map(tmp_path / "m.json"))
    assert sorted(res) == [207, 281]
    # a folder the map does not name, a bad index, two folders of one class
    (tmp_path / "short.json").write_text(json.dumps({"cat": 281}))
    with pytest.raises(ssa.InvalidInputError, match=r"class folder .*dog' is not in the class map"):
        class_folder_labels(root, class_map(tmp_path / "short.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"cat": "x", "dog": 1}))
    with pytest.raises(ssa.InvalidInputError, match="every folder needs a class index"):
        class_map(tmp_path / "bad.json")
    (tmp_path / "same.json").write_text(json.dumps({"cat": 1, "dog": 1}))
    with pytest.raises(ssa.InvalidInputError, match="both get class 1"):
        class_folder_labels(root, class_map(tmp_path / "same.json"))


def test_the_map_reaches_every_reader_in_the_same_order(imagenet):
    """The in-memory reader, the streamed source and the single-class session read the same images in the same
    order with the same labels (so stores and --out-dir runs agree)."""
    images, pre = imagenet / "val", Preprocess()
    cmap = class_map("imagenet")
    arr, lab = load_grouped_images(images, labels=cmap, preprocess=pre)
    src = open_source(images, labels=cmap, preprocess=pre)
    streamed = np.concatenate([b for _, b in iter_batches(src, batch_size=7)])
    np.testing.assert_array_equal(streamed, arr)
    np.testing.assert_array_equal(src.labels, lab)
    assert list(np.unique(lab)) == sorted(TRUE.values()) and src.class_map == TRUE
    session = ssa.Session(f"{imagenet / 'model.py'}:net", images, labels=cmap).prepare()
    np.testing.assert_array_equal(session.labels, lab)


def test_mixed_and_misused_maps_are_refused(imagenet, tmp_path, capsys):
    root = _folder(tmp_path / "mixed", ["3", "cat"], n=1)
    assert main(["analyse", "digits", "--images", str(root), "--targets", "all"]) == 2
    assert "mix numbers (3) and names (cat)" in _err(capsys)
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert main(["analyse", "digits", "--images", str(tmp_path / "x.npy"), "--class-map", "imagenet", "-t", "3"]) == 2
    assert "--class-map applies to a folder with one sub-folder per class" in _err(capsys)
    np.save(tmp_path / "y.npy", np.zeros(2, np.int64))
    assert main(["analyse", "digits", "--images", str(imagenet / "val"), "--class-map", "imagenet", "--labels",
                 str(tmp_path / "y.npy"), "-t", "3"]) == 2
    assert "--labels and --class-map cannot be combined" in _err(capsys)
    assert main(["analyse", "digits", "--images", str(imagenet / "val"), "--class-map", "wordnet", "-t", "3"]) == 2
    assert "class map must be 'imagenet' or a .json or .csv file" in _err(capsys)
    torch.manual_seed(0)  # nothing above ran a model


def test_a_study_takes_the_class_map(imagenet, tmp_path, capsys):
    f = tmp_path / "s.toml"
    body = (f"out = 'out'\ntargets = 'all'\n[[model]]\nname = 'm'\nspec = '{imagenet / 'model.py'}:net'\n"
            f"[images]\npath = '{imagenet / 'val'}'\n{{}}[outputs]\nreport = false\ncompare = false\n")
    f.write_text(body.format(""))
    assert main(["study", str(f), "-q"]) == 2
    assert "pass --class-map imagenet" in _err(capsys)  # (in a study: [images] class_map)
    f.write_text(body.format("class_map = 'imagenet'\n"))
    assert main(["study", str(f), "-q"]) == 0
    (folder,) = (tmp_path / "out" / "m").iterdir()
    assert sorted(p.name for p in folder.glob("class-*.json")) == sorted(f"class-{i}.json" for i in TRUE.values())
    assert ssa.read_graph(folder / "class-281.json").run.class_map == TRUE
    summary = json.loads((tmp_path / "out" / "study.json").read_text())
    assert summary["study"]["images"]["class_map"] == "imagenet"
