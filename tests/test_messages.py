"""Messages that were wrong or confusing (issue 9, item 8), user model code that raises, and options that
make no sense: each is one line that says what was wrong, what was expected and how to fix it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from ssa.cli import main
from ssa.models import digits_data


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("messages")
    x, y = digits_data()
    np.save(d / "x.npy", x[:60])
    np.save(d / "float_labels.npy", np.linspace(0.1, 0.9, 60))
    np.save(d / "onehot.npy", np.eye(10)[y[:60]])
    np.save(d / "y.npy", y[:60])
    gray = d / "gray"
    gray.mkdir()
    for i in range(6):
        Image.fromarray((x[i, 0] * 255).astype(np.uint8)).save(gray / f"{i}.png")
    rgb = d / "rgb"
    rgb.mkdir()
    for i in range(6):
        Image.fromarray((x[i, 0] * 255).astype(np.uint8)).convert("RGB").save(rgb / f"{i}.png")
    (d / "models.py").write_text(
        "import torch\n"
        "import torch.nn as nn\n"
        "from ssa.models import digits_cnn\n"
        "def raising():\n"
        "    raise ValueError('no weights here')\n"
        "class Picky(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = digits_cnn()\n"
        "    def forward(self, x):\n"
        "        torch._assert((x >= 0).all(), 'negative images are not supported')\n"
        "        return self.net(x)\n"
        "def picky():\n"
        "    return Picky()\n")
    np.save(d / "mixed.npy", np.concatenate([x[:8], -x[8:16]]))  # the first image is fine, later ones are not
    return d


def _error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    assert captured.out == ""
    return lines[0]


def test_negative_target_in_targets(capsys):
    assert main(["analyse", "digits", "--images", "digits", "--targets", "3,-1"]) == 2
    assert _error(capsys) == "ssa: error: --targets must be class indices >= 0, got -1 in '3,-1'."


def test_target_above_the_logits_in_targets(capsys):
    assert main(["analyse", "digits", "--images", "digits", "--targets", "3,12", "-q"]) == 2
    assert "--targets must be in [0, 9] (the model has 10 logits), got 12." in _error(capsys)


def test_mean_with_too_many_values_for_grayscale(files, capsys):
    assert main(["analyse", "digits", "--images", str(files / "gray"), "-t", "0", "--channels", "1",
                 "--mean", "0.5,0.5"]) == 2
    line = _error(capsys)
    assert "mean has 2 values but the images are read with 1 channel" in line and "--channels 3" in line
    assert "1 or 1" not in line


def test_float_and_one_hot_labels(files, capsys):
    assert main(["analyse", "digits", "--images", str(files / "x.npy"), "--labels", str(files / "float_labels.npy"),
                 "-t", "0"]) == 2
    line = _error(capsys)
    assert "labels must be integer class indices, got float64 values such as 0.1" in line
    assert "no image is labelled" not in line
    assert main(["analyse", "digits", "--images", str(files / "x.npy"), "--labels", str(files / "onehot.npy"),
                 "-t", "0"]) == 2
    assert "look one-hot" in _error(capsys)


def test_integral_float_labels_are_accepted(files, tmp_path, capsys):
    np.save(tmp_path / "y.npy", np.load(files / "y.npy").astype(np.float32))
    assert main(["analyse", "digits", "--images", str(files / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "-t", "0", "-q", "-o", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["graph"]["n_images"] == int((np.load(files / "y.npy") == 0)
                                                                                     .sum())


def test_folder_given_as_a_graph(files, capsys):
    assert main(["compare", str(files), str(files / "x.npy")]) == 2
    line = _error(capsys)
    assert "is a folder" in line and "does not exist" not in line


def test_figures_message_does_not_mention_targets(files, tmp_path, capsys):
    """`ssa figures` has no --targets, so its message must not say to drop the class from --targets."""
    assert main(["analyse", "digits", "--images", "digits", "--targets", "5", "-q", "--out-dir", str(tmp_path)]) == 0
    no_fives = np.load(files / "y.npy")
    np.save(tmp_path / "no5.npy", np.where(no_fives == 5, 6, no_fives))
    capsys.readouterr()
    assert main(["figures", "digits", "--images", str(files / "x.npy"), "--labels", str(tmp_path / "no5.npy"),
                 "--graph", str(tmp_path / "class-5.json"), "--out-dir", str(tmp_path / "fig"), "--allow-mixed"]) == 2
    line = _error(capsys)
    assert "no image is labelled class 5, the graph's class; pass the images (and --labels) the graph was made " \
           "with." in line and "--targets" not in line


@pytest.mark.parametrize("folder, channels, hint", [("gray", "3", "--channels 1"), ("rgb", "3", "--channels 1")])
def test_channel_mismatch_of_image_files_hints_at_channels(files, capsys, folder, channels, hint):
    assert main(["analyse", "digits", "--images", str(files / folder), "-t", "0", "--channels", channels]) == 2
    line = _error(capsys)
    assert hint in line and "the image files were read as RGB (3 channels" in line


TWIN_LOGITS_PY = """
import torch
from ssa.models import digits_cnn


def model():
    m = digits_cnn()
    with torch.no_grad():  # class 2's logit is class 1's: on the same images their graphs are identical
        m.classifier[3].weight[2] = m.classifier[3].weight[1]
        m.classifier[3].bias[2] = m.classifier[3].bias[1]
    return m
"""


def test_comparing_identical_graphs_prints_no_warnings(tmp_path, capsys):
    """Two classes with identical graphs (every merge of the dendrogram at distance 0). A graph and its own copy
    were used here before; one class of one run twice is refused now (compare-same-graph-twice)."""
    (tmp_path / "twin.py").write_text(TWIN_LOGITS_PY)
    np.save(tmp_path / "x.npy", digits_data()[0][:40])
    for c in (1, 2):
        assert main(["analyse", f"{tmp_path / 'twin.py'}:model", "--images", str(tmp_path / "x.npy"), "-t", str(c),
                     "-q", "-o", str(tmp_path / f"class-{c}.json")]) == 0
    a, b = (json.loads((tmp_path / f"class-{c}.json").read_text()) for c in (1, 2))
    assert [n for n in a["nodes"] if n["tap"] != "logits"] == [n for n in b["nodes"] if n["tap"] != "logits"]
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert main(["compare", str(tmp_path / "class-1.json"), str(tmp_path / "class-2.json"), "--out-dir",
                     str(tmp_path / "cmp")]) == 0
    assert capsys.readouterr().err == ""


def test_check_help_has_a_description(capsys):
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "what an analysis will see" in out and "the tap DAG" in out


@pytest.mark.parametrize("argv, words", [
    (["check", "digits", "--input-shape=-1,8,8"], "--input-shape must hold integers >= 1, got -1 in '-1,8,8'."),
    (["check", "digits", "--input-shape=0,8,8"], "--input-shape must hold integers >= 1, got 0"),
    (["check", "digits", "--input-shape=1,8,8", "--channel-axis", "T=abc"],
     "--channel-axis must look like TAP=AXIS with an integer axis (e.g. T=1), got T=abc."),
    (["evaluate", "digits", "--images", "digits", "--targets", "3", "--stop-at", "nosuch", "--rules", "gradient",
      "--selectors", "tukey"], "stop_at 'nosuch' is not a tap; taps are: features.1"),
])
def test_bad_option_values(argv, words, capsys):
    assert main(argv) == 2
    assert words in _error(capsys)


def test_user_model_code_that_raises(files, capsys):
    assert main(["analyse", f"{files / 'models.py'}:raising", "--images", "digits", "-t", "3"]) == 2
    line = _error(capsys)
    assert "models.py:raising() to build the model raised ValueError: no weights here; fix the model code." in line
    assert main(["analyse", f"{files / 'models.py'}:picky", "--images", str(files / "mixed.npy"), "-t", "3",
                 "--batch-size", "4"]) == 2
    line = _error(capsys)
    assert "the model raised AssertionError at node '_assert' (_assert) on a batch of 4 image(s): negative images " \
           "are not supported; fix the model code" in line
