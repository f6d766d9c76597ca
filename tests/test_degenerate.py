"""Degenerate results are flagged (issue 9, item 4): NaN or infinite logits are refused, and a graph that stops
above the lowest tap says why (no outliers at a step, neurons that never fire, no taps) and what to try."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import ssa
from ssa.cli import main
from ssa.errors import UnsupportedModelError
from ssa.models import digits_cnn, digits_data


def _x(n: int = 60) -> np.ndarray:
    return digits_data()[0][:n]


def _with_bias(value: float) -> nn.Module:
    m = digits_cnn()
    with torch.no_grad():
        m.classifier[3].bias[2] = value
    return m


class NoTaps(nn.Module):
    """A linear classifier: no activation function, so no tap below the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def never_firing() -> nn.Module:
    """Units 0-2 of the hidden dense layer never fire, but carry class 3's largest weights: the gradient rule keeps
    them (its dense step does not look at activations) and the walk stops there."""
    m = digits_cnn()
    with torch.no_grad():
        m.classifier[1].bias[:3] = -1e4
        m.classifier[3].weight[3, :3] = 50.0
    return m


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("engine", ["auto", "autograd"])
def test_non_finite_logits_are_refused(value, engine):
    with pytest.raises(ssa.InvalidInputError, match="the model's logits are NaN or infinite on .* image"):
        ssa.analyse(_with_bias(value), _x(), 3, engine=engine)


def test_non_finite_logits_in_the_cli_and_when_grouping_by_prediction(tmp_path, capsys):
    (tmp_path / "m.py").write_text("import torch\nfrom ssa.models import digits_cnn\n"
                                   "def build():\n    m = digits_cnn()\n    with torch.no_grad():\n"
                                   "        m.classifier[3].bias[2] = float('nan')\n    return m\n")
    for argv in (["analyse", f"{tmp_path / 'm.py'}:build", "--images", "digits", "-t", "3"],
                 ["analyse", f"{tmp_path / 'm.py'}:build", "--images", "digits", "--targets", "3",
                  "--by-prediction"],
                 ["collect", f"{tmp_path / 'm.py'}:build", "--images", "digits", "--store", str(tmp_path / "s")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "NaN or infinite" in err[0] and "internal" not in err[0], err
    assert not list((tmp_path / "s").glob("*/*/gradient/batch-*"))  # nothing NaN was stored


def test_no_outliers_at_the_first_step_is_explained(capsys):
    res = ssa.analyse("digits", "digits", 3, rule="gradient", selector="tukey", selector_params={"k": 1000.0})
    assert res.graph.number_of_nodes() == 1
    (note,) = res.notes
    assert "the graph stops at logits: no outliers at step logits -> classifier.2 with selector tukey (k=1000.0" in note
    assert "try --selector-param k=1, or --selector mad or --selector topk" in note
    assert f"note: {note}" in res.summary()
    assert res.graph.graph["notes"] == [note] and res.graph.run.notes == (note,)
    # on the command line: in the summary, or one warning line with --quiet
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--rule", "gradient", "--selector", "tukey",
                 "--selector-param", "k=1000"]) == 0
    assert "note: the graph stops at logits" in capsys.readouterr().out
    assert main(["analyse", "digits", "--images", "digits", "-t", "3", "--rule", "gradient", "--selector", "tukey",
                 "--selector-param", "k=1000", "-q"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssa: warning: class 3: the graph stops at logits")


def test_neurons_that_never_fire_are_explained():
    res = ssa.analyse(never_firing(), _x(200), 3, rule="gradient", selector="tukey")
    kept = sorted(d["neuron"] for _, d in res.graph.nodes(data=True) if d["tap"] == "classifier.2")
    assert kept == [0, 1, 2]
    assert any("the graph stops at classifier.2: its 3 kept neuron(s) never fire on these images" in n
               and "try --rule gradient_x_activation" in n for n in res.notes), res.notes


def test_a_model_without_taps_is_refused():
    """Method doc, section 4b: a graph that stops at the logits because no tap was found is an error, not a result."""
    with pytest.raises(UnsupportedModelError, match="no taps below the logits: .* name taps by hand with --taps, or "
                                                    "add the input's channels with --include-input"):
        ssa.analyse(NoTaps(), _x(), 3)
    res = ssa.analyse(NoTaps(), _x(), 3, include_input=True)  # the input's channels are a tap below the logits
    assert [t.name for t in res.taps] == ["input", "logits"]


def test_a_full_graph_has_no_notes():
    res = ssa.analyse("digits", "digits", 3, rule="gradient_x_activation", selector="mad")
    assert {d["tap"] for _, d in res.graph.nodes(data=True)} >= {"features.1"} and res.notes == ()
    assert "note:" not in res.summary()


def test_notes_never_advise_the_rule_in_use():
    """Issue 18, item 15: the rule that made the graph is never the advice (tried with a step whose relevance is
    zero on every image, and the summary's never-fire note)."""
    from dataclasses import replace

    from ssa.core.defaults import DEFAULT_RULE
    from ssa.core.traversal import explain_stop
    from ssa.plugins import make_rule, make_selector

    res = ssa.analyse(never_firing(), _x(200), 3, rule="gradient", selector="tukey")
    net = ssa.load_model(never_firing())
    net.prepare(_x(8))
    first = res.steps[0]
    zero = replace(first, mean_array=np.zeros_like(np.asarray(first.mean_array)), kept_sign=np.zeros(0, np.int64))
    active = {first.upper: np.ones(10)}
    for rule, advised in (("gradient", True), (DEFAULT_RULE, False)):
        (note,) = explain_stop(net.taps, [zero], active, make_rule(rule), make_selector("tukey"))
        assert "is zero on every image" in note and (f"--rule {DEFAULT_RULE}" in note) == advised, note
        (line,) = [ln for ln in replace(res, rule=rule, notes=()).summary().splitlines() if "never fire on the c" in ln]
        assert (f"--rule {DEFAULT_RULE}" in line) == advised, line
