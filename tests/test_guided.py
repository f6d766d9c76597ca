"""Guided back-propagation equals the plain gradient within one step (method doc, section 3).

The paper back-propagates with guided back-propagation (at every ReLU the
incoming gradient is clamped at zero). Within one step the only ReLU passed is
the upper tap's own, and its incoming gradient d(spatial mean)/d(output) = 1/P
is positive, so the guided relevance equals ssa's ``gradient`` rule. Across a
step that passes a ReLU which is not a tap the two differ, which the last test
shows (so the equality is not a tautology of the test).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn as nn

import ssa
from ssa.core.arrays import to_numpy
from ssa.testing.models import ALL_CASES, ModelCase, RefTap, plain_cnn
from ssa.testing.reference import reference_relevance


class GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward pass keeps only positive incoming gradients at positive inputs (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


@contextlib.contextmanager
def guided(model: nn.Module):
    """Forward hooks that replace every ReLU's output by the guided ReLU of its input (removed on exit)."""

    def hook(module, inputs, output):
        return GuidedReLUFunction.apply(inputs[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def guided_relevance(model: nn.Module, images: np.ndarray, taps, upper: str, neurons) -> dict[str, np.ndarray]:
    # the reference's cut hooks are registered after the guided ones, so they cut the guided output
    return reference_relevance(model, images, taps, upper, neurons, "gradient", context=guided)


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.name for c in ALL_CASES])
def test_guided_equals_gradient_within_one_step(case: ModelCase) -> None:
    model = case.build()
    images = case.images(6)
    net = ssa.load_model(model)
    net.prepare(images)
    rule = ssa.make_rule("gradient")
    compared = 0
    for tap in net.taps:
        if not tap.parents:
            continue
        neurons = list(range(tap.n_neurons))
        got, _ = net.step_relevance(images, tap.name, neurons, rule)
        got = {k: to_numpy(v) for k, v in got.items()}  # device arrays -> host
        want = guided_relevance(model, images, case.taps, tap.name, neurons)
        for parent in want:
            scale = max(np.abs(want[parent]).max(), 1e-3)
            np.testing.assert_allclose(got[parent], want[parent], rtol=1e-4, atol=1e-6 * scale,
                                       err_msg=f"{case.name}: {tap.name} -> {parent}")
            compared += int(np.count_nonzero(want[parent]))
    assert compared > 0
    assert not _forward_hooks(model)


def _forward_hooks(model: nn.Module) -> list:
    return [h for m in model.modules() for h in m._forward_hooks.values()]


def test_guided_hooks_are_removed_after_an_error() -> None:
    model = plain_cnn.build()
    with pytest.raises(RuntimeError):
        with guided(model):
            assert _forward_hooks(model)
            raise RuntimeError("boom")
    assert not _forward_hooks(model)


def test_guided_differs_from_gradient_across_a_hidden_relu() -> None:
    """With relu2 not a tap, the step relu3 -> relu1 passes relu2, where incoming gradients can be negative."""
    case = plain_cnn
    model = case.build()
    images = case.images(6)
    taps = (RefTap("relu1", "relu1"), RefTap("relu3", "relu3", parents=("relu1",)),
            RefTap("logits", "fc2", parents=("relu3",)))
    net = ssa.load_model(model, taps=["relu1", "relu3"])
    net.prepare(images)
    assert {t.name: t.parents for t in net.taps} == {"relu1": (), "relu3": ("relu1",), "logits": ("relu3",)}
    neurons = list(range(24))
    plain, _ = net.step_relevance(images, "relu3", neurons, ssa.make_rule("gradient"))
    plain = {k: to_numpy(v) for k, v in plain.items()}  # device arrays -> host
    want_plain = reference_relevance(model, images, taps, "relu3", neurons, "gradient")
    np.testing.assert_allclose(plain["relu1"], want_plain["relu1"], rtol=1e-4, atol=1e-7)
    guided_rel = guided_relevance(model, images, taps, "relu3", neurons)["relu1"]
    diff = np.abs(guided_rel - plain["relu1"])
    assert diff.max() > 0.1 * np.abs(plain["relu1"]).max()
