"""Errors of the Python API: clear messages that name the parameter, the expected and the received value."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import ssa
from ssa.testing.models import plain_cnn


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return plain_cnn.build()  # 1 x 12 x 12 images, 6 logits


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return plain_cnn.images(4)


def run(model, images, target=1, branching=2, **kw):
    kw.setdefault("rule", "gradient")  # the defaults before issue 9, so these tests keep testing the same thing
    kw.setdefault("selector", "tukey")
    return ssa.analyse(model, images, target, branching, **kw)


@pytest.mark.parametrize(
    "target, message",
    [
        (6, "target must be in [0, 5] (the model has 6 logits), got 6."),
        (100, "target must be in [0, 5] (the model has 6 logits), got 100."),
        (-1, "target must be >= 0, got -1."),
        (1.5, "target must be an integer >= 0, got 1.5."),
        ("3", "target must be an integer >= 0, got '3'."),
    ],
)
def test_target_outside_the_logits(model, images, target, message) -> None:
    with pytest.raises(ssa.InvalidInputError) as info:
        run(model, images, target=target)
    assert message in str(info.value)


def test_last_class_is_a_valid_target(model, images) -> None:
    result = run(model, images, target=5)
    assert result.target == 5 and "logits:5" in result.graph


@pytest.mark.parametrize(
    "branching, message",
    [
        (0, "branching must be >= 1, got 0."),
        (-3, "branching must be >= 1, got -3."),
        (1.5, "branching must be an integer >= 1, got 1.5."),
        (True, "branching must be an integer >= 1, got True."),
    ],
)
def test_branching_below_one(model, images, branching, message) -> None:
    with pytest.raises(ssa.InvalidInputError) as info:
        run(model, images, branching=branching)
    assert message in str(info.value)


def test_empty_images(model) -> None:
    with pytest.raises(ssa.InvalidInputError, match=re.escape("images is empty (0 images)")):
        run(model, np.zeros((0, 1, 12, 12), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_images(model, images, bad) -> None:
    x = images.copy()
    x[2, 0, 3, 4] = bad
    with pytest.raises(ssa.InvalidInputError, match=re.escape("images contains NaN or infinite values in 1 image(s)")):
        run(model, x)


@pytest.mark.parametrize(
    "shape, words",
    [
        ((2, 3, 12, 12), "the model failed on an input of shape (1, 3, 12, 12)"),  # 3 channels for a 1-channel model
        ((2, 12, 12), "the model failed on an input of shape (1, 12, 12)"),  # no channel axis
        ((5,), "images must be shaped (N, ...) with one image per row, got shape (5,)"),
    ],
)
def test_wrong_image_shape(model, shape, words) -> None:
    with pytest.raises(ssa.InvalidInputError) as info:
        run(model, np.zeros(shape, np.float32))
    assert words in str(info.value)
    assert "Traceback" not in str(info.value) and len(str(info.value).splitlines()) == 1


def test_non_numeric_images(model) -> None:
    with pytest.raises(ssa.InvalidInputError, match="images must hold numbers"):
        run(model, np.array([["a", "b"]]))


def test_unknown_rule_and_selector_are_plugin_errors(model, images) -> None:
    with pytest.raises(ssa.PluginError, match="unknown rule 'lrp'; choose one of: .*gradient"):
        run(model, images, rule="lrp")
    with pytest.raises(ssa.PluginError, match="unknown selector 'grubbs'; choose one of: .*tukey"):
        run(model, images, selector="grubbs")
    assert issubclass(ssa.PluginError, LookupError) and issubclass(ssa.PluginError, ssa.SSAError)


def test_bad_rule_and_selector_parameters(model, images) -> None:
    with pytest.raises(ssa.InvalidInputError, match="rule 'gradient' has no parameter 'alpha'"):
        run(model, images, rule_params={"alpha": 1})
    with pytest.raises(ssa.InvalidInputError, match="selector 'tukey' parameter 'k' must be >= 0, got -1"):
        run(model, images, selector_params={"k": -1})


def test_bad_taps_stop_at_channel_axes_and_batch_size(model, images) -> None:
    with pytest.raises(ssa.InvalidInputError, match="tap 'features.9' is not a node of the model.*relu1"):
        run(model, images, taps=["features.9"])
    with pytest.raises(ssa.InvalidInputError, match="stop_at 'conv1' is not a tap; taps are: relu1, relu2, relu3, "
                                                    "logits"):
        run(model, images, stop_at="conv1")
    with pytest.raises(ssa.InvalidInputError, match=re.escape("channel axis of tap 'relu1' must be in [1, 3]")):
        run(model, images, channel_axes={"relu1": 4})
    with pytest.raises(ssa.InvalidInputError, match="channel axis given for unknown tap 'relu9'"):
        run(model, images, channel_axes={"relu9": 1})
    with pytest.raises(ssa.InvalidInputError, match="batch_size must be >= 1, got 0"):
        run(model, images, batch_size=0)


def test_errors_are_value_errors_and_leave_the_model_untouched(model, images) -> None:
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with pytest.raises(ValueError):
            run(model, images, target=99)
        assert model.training  # ssa works on a copy in eval mode
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    finally:
        model.eval()


@pytest.mark.parametrize("shift", [6, -1])
def test_labels_outside_the_logits_are_refused_not_dropped(model, images, shift) -> None:
    """Labels that are no class of the model (1-based, another model's, -1 for unlabelled) are refused: before,
    ``targets="all"`` analysed only the classes inside the range and left those images out without a word."""
    labels = np.arange(len(images)) % 6
    labels[1] = shift
    for call in (lambda: ssa.analyse_many(model, images, "all", labels=labels, rule="gradient", selector="tukey"),
                 lambda: ssa.Session(model, images, labels=labels).analyse(0),
                 lambda: run(model, images, target=0, labels=labels)):
        with pytest.raises(ssa.InvalidInputError, match=re.escape(
                f"labels must be classes in [0, 5] (the model has 6 logits), got {shift} (image 1; 1 of 4 images")):
            call()
    with torch.no_grad():
        predicted = int(model(torch.from_numpy(images)).argmax(1)[0])
    grouped = ssa.analyse_many(model, images, [predicted], labels=labels, by_prediction=True, rule="gradient",
                               selector="tukey")  # grouped by prediction the labels are not used: accepted
    assert list(grouped) == [predicted]
