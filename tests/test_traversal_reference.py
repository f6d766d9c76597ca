"""ssa.analyse against the slow reference traversal (method doc, sections 3 and 4).

For every tiny model and both rules, the dependency graph's edges, their
frequencies and relevances must equal those of :func:`ssa.testing.reference.reference_ssa`,
which gets the taps and parents by hand and computes every relevance with one
autograd call per upper neuron and image. Tap discovery must find the same taps,
parents (cut semantics) and channel axes on its own.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import ssa
from ssa.core.arrays import to_numpy
from ssa.core.interfaces import DenseBlock
from ssa.testing.models import (
    ALL_CASES,
    ModelCase,
    channels_last_cnn,
    plain_cnn,
    residual_cnn,
    se_cnn,
)
from ssa.testing.reference import reference_relevance, reference_ssa

N_IMAGES = 16
RULES = ("gradient", "gradient_x_activation")
ENGINES = ("auto", "autograd")  # the closed form of section 6 where a step has one, and exact autograd everywhere
CASE_IDS = [c.name for c in ALL_CASES]
CASES = {c.name: c for c in ALL_CASES}


def graph_edges(graph) -> dict[tuple[str, int, str, int], tuple[int, float]]:
    out = {}
    for u, v, d in graph.edges(data=True):
        nu, nv = graph.nodes[u], graph.nodes[v]
        out[(nu["tap"], nu["neuron"], nv["tap"], nv["neuron"])] = (d["frequency"], d["relevance"])
    return out


def assert_same_edges(got: dict, want: dict) -> None:
    assert set(got) == set(want), (
        f"edges only in ssa: {sorted(set(got) - set(want))}; only in the reference: {sorted(set(want) - set(got))}"
    )
    for key in want:
        assert got[key][0] == want[key][0], f"frequency of {key}: ssa {got[key][0]}, reference {want[key][0]}"
        assert got[key][1] == pytest.approx(want[key][1], rel=1e-4, abs=1e-7), f"relevance of {key}"


def prepared(case: ModelCase, n: int = N_IMAGES, **options):
    model = case.build()
    images = case.images(n)
    net = ssa.load_model(model, **options)
    net.prepare(images)
    return model, images, net


# --- tap discovery -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES, ids=CASE_IDS)
def test_tap_discovery_matches_hand_written_taps(case: ModelCase) -> None:
    _, _, net = prepared(case, 2)
    found = [(t.name, t.channel_axis, set(t.parents)) for t in net.taps]
    want = [(t.name, t.channel_axis, set(t.parents)) for t in case.taps]
    assert found == want
    assert [t.order for t in net.taps] == sorted(t.order for t in net.taps)
    assert net.taps[-1].kind == "logits"


def test_residual_block_output_has_two_parents() -> None:
    _, _, net = prepared(residual_cnn, 2)
    taps = {t.name: t for t in net.taps}
    # relu after "out += identity": the branch's last ReLU and the block input (identity skip)
    assert set(taps["layer1.0.relu@1"].parents) == {"layer1.0.relu", "relu"}
    # conv skip (downsample): the block input is still a parent, through the 1x1 conv and batch-norm
    assert set(taps["layer2.0.relu@1"].parents) == {"layer2.0.relu", "layer1.0.relu@1"}
    assert taps["layer2.0.relu@1"].shape == (16, 5, 5)


def test_squeeze_excitation_gate_is_not_a_tap() -> None:
    _, _, net = prepared(se_cnn, 2)
    names = [t.name for t in net.taps]
    assert "se.gate" not in names
    assert "se.relu" in names  # the ReLU inside the SE branch is an ordinary (2-D) tap
    taps = {t.name: t for t in net.taps}
    assert set(taps["relu3"].parents) == {"relu2", "se.relu"}  # the gate sits inside the step


def test_channels_last_taps_have_channel_axis_3() -> None:
    _, _, net = prepared(channels_last_cnn, 2, include_input=True)
    taps = {t.name: t for t in net.taps}
    assert taps["relu1"].channel_axis == 3 and taps["relu1"].n_neurons == 8
    assert taps["relu2"].channel_axis == 3 and taps["relu2"].shape == (4, 4, 12) and taps["relu2"].n_neurons == 12
    assert taps["relu3"].channel_axis == 1
    assert taps["input"].channel_axis == 3 and taps["input"].n_neurons == 3  # followed through the permute


def test_softmax_is_stripped_from_the_logits() -> None:
    model, images, net = prepared(plain_cnn, 4)
    logits = net.logits(images)
    with torch.no_grad():
        probs = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits.sum(1), 1.0)


# --- whole traversal ---------------------------------------------------------------------------


@functools.cache
def cached_reference(case_name: str, rule: str) -> dict:
    case = CASES[case_name]
    return reference_ssa(case.build(), case.images(N_IMAGES), case.taps, case.target, case.branching, rule)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", ALL_CASES, ids=CASE_IDS)
def test_graph_equals_reference(case: ModelCase, rule: str, engine: str) -> None:
    model = case.build()
    images = case.images(N_IMAGES)
    result = ssa.analyse(model, images, case.target, case.branching, rule=rule, selector="tukey", engine=engine,
                         batch_size=5)
    if engine == "autograd":
        assert set(result.engines.values()) == {"autograd"}
    got = graph_edges(result.graph)
    want = cached_reference(case.name, rule)
    assert_same_edges(got, want)
    # not trivial: edges in several steps, down to the lowest tap
    steps = {(u, lo) for u, _, lo, _ in got}
    assert len(steps) >= 3, steps
    assert case.taps[0].name in {lo for _, lo in steps}
    assert all(1 <= f <= N_IMAGES for f, _ in got.values())
    assert any(f < N_IMAGES for f, _ in got.values()) or rule == "gradient"


@pytest.mark.parametrize("case", ALL_CASES, ids=CASE_IDS)
def test_every_step_relevance_equals_reference(case: ModelCase) -> None:
    """omega of every step, for every upper neuron (not only the kept ones), including the input tap."""
    model = case.build()
    images = case.images(5)
    taps = case.taps_with_input(3 if case is channels_last_cnn else 1)  # NHWC input: channels on axis 3
    net = ssa.load_model(model, include_input=True)
    net.prepare(images)
    assert {t.name: set(t.parents) for t in net.taps} == {t.name: set(t.parents) for t in taps}
    for rule_name in RULES:
        rule = ssa.make_rule(rule_name)
        for tap in net.taps:
            if not tap.parents:
                continue
            neurons = list(range(tap.n_neurons))
            got, _ = net.step_relevance(images, tap.name, neurons, rule)
            got = {k: to_numpy(v) for k, v in got.items()}  # device arrays -> host
            want = reference_relevance(model, images, taps, tap.name, neurons, rule_name)
            assert set(got) == set(want)
            for parent in want:
                assert got[parent].shape == want[parent].shape
                scale = np.abs(want[parent]).max()
                np.testing.assert_allclose(got[parent], want[parent], rtol=1e-4, atol=1e-6 * max(scale, 1e-3),
                                           err_msg=f"{case.name} {rule_name} {tap.name} -> {parent}")


def test_graph_equals_reference_with_branching_one_and_input_tap() -> None:
    case = residual_cnn
    model = case.build()
    images = case.images(12)
    result = ssa.analyse(model, images, 0, 1, rule="gradient_x_activation", selector="tukey", include_input=True,
                         batch_size=7)
    want = reference_ssa(model, images, case.taps_with_input(), 0, 1, "gradient_x_activation")
    got = graph_edges(result.graph)
    assert_same_edges(got, want)
    # b = 1: at most one edge per (upper neuron, parent tap)
    pairs = [(u, n, lo) for u, n, lo, _ in got]
    assert len(pairs) == len(set(pairs))
    assert len(got) >= 4


# --- ranking and selection, known answers on hand-made relevance ----------------------------------


class Above(ssa.Selector):
    """+1 where omega > 0.5 (-1 where omega < -0.5 when two-sided): transparent outliers for the ranking test."""

    name = "above-half"
    parameters = {"two_sided": ssa.Param(False, "negative outliers too", bool)}

    def select(self, rows):
        out = (rows > 0.5).astype(np.int8)
        if self.two_sided:
            out -= (rows < -0.5).astype(np.int8)
        out[~np.isfinite(rows).all(axis=1)] = 0
        return out


# omega of logits:0 -> "b" over 4 images (rows) and 6 neurons (columns):
#   k0: outlier in 3 images, mean 0.75      k1: outlier in 3 images, mean 1.5
#   k2: outlier in all 4, mean 0.6          k3: never an outlier (0.5 is not > 0.5), mean 0.5
#   k4: same count and mean as k1           k5: zero
# ranking: k2 (count 4), k1 and k4 (count 3, mean 1.5; index breaks the tie), k0 (count 3, mean 0.75)
LOGITS_TO_B = np.array([
    [1.0, 2.0, 0.6, 0.5, 2.0, 0.0],
    [1.0, 2.0, 0.6, 0.5, 2.0, 0.0],
    [1.0, 2.0, 0.6, 0.5, 2.0, 0.0],
    [0.0, 0.0, 0.6, 0.5, 0.0, 0.0],
])


class HandMadeSource:
    """Relevance given by hand: logits -> b as above; b:n -> a is 1 at a's neuron n % 4 in every image."""

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign
        self.n_images = 4
        self.taps = (
            ssa.Tap("a", 0, "activation", (4, 3, 3), 1, ()),
            ssa.Tap("b", 1, "activation", (6,), 1, ("a",)),
            ssa.Tap("logits", 2, "logits", (3,), 1, ("b",)),
        )

    def iter_blocks(self, upper, neurons, rule, factors=False):
        for lo, hi in ((0, 3), (3, 4)):  # two batches of images
            if upper == "logits":
                omega = np.stack([self.sign * LOGITS_TO_B[lo:hi] for _ in neurons])
                yield DenseBlock("b", 0, omega)
            else:
                omega = np.zeros((len(neurons), hi - lo, 4))
                for j, n in enumerate(neurons):
                    omega[j, :, n % 4] = self.sign
                yield DenseBlock("a", 0, omega)

    def scalars(self, tap):
        return np.ones((self.n_images, {"a": 4, "b": 6, "logits": 3}[tap]))


def kept_edges(out) -> set[tuple[str, int, str, int, int, int]]:
    return {(s.upper, kp.upper, s.parent, kp.lower, kp.count, kp.sign) for s in out.steps for kp in s.kept}


@pytest.mark.parametrize(
    "branching, expected",
    [
        (1, {("logits", 0, "b", 2, 4, 1), ("b", 2, "a", 2, 4, 1)}),
        (2, {("logits", 0, "b", 2, 4, 1), ("logits", 0, "b", 1, 3, 1), ("b", 1, "a", 1, 4, 1), ("b", 2, "a", 2, 4, 1)}),
        (3, {("logits", 0, "b", 2, 4, 1), ("logits", 0, "b", 1, 3, 1), ("logits", 0, "b", 4, 3, 1),
             ("b", 1, "a", 1, 4, 1), ("b", 2, "a", 2, 4, 1), ("b", 4, "a", 0, 4, 1)}),
        # only 4 neurons have count > 0: b = 6 keeps 4 (k3, whose mean 0.5 beats k5's, has no outlier)
        (6, {("logits", 0, "b", 2, 4, 1), ("logits", 0, "b", 1, 3, 1), ("logits", 0, "b", 4, 3, 1),
             ("logits", 0, "b", 0, 3, 1), ("b", 0, "a", 0, 4, 1), ("b", 1, "a", 1, 4, 1), ("b", 2, "a", 2, 4, 1),
             ("b", 4, "a", 0, 4, 1)}),
    ],
)
def test_ranking_and_selection_known_answer(branching: int, expected: set) -> None:
    from ssa.core.traversal import traverse

    out = traverse(HandMadeSource(), 0, branching, ssa.make_rule("gradient"), Above())
    assert kept_edges(out) == expected
    means = {(s.upper, kp.lower): kp.relevance for s in out.steps for kp in s.kept if s.upper == "logits"}
    assert means[("logits", 2)] == pytest.approx(0.6)
    if branching >= 6:
        assert means[("logits", 0)] == pytest.approx(0.75)  # the mean is over all images, not only the outlier ones
    # the union: a's set holds every kept lower neuron of every b neuron
    assert set(out.selected["a"]) == {e[3] for e in expected if e[0] == "b"}


def test_inhibitory_ranking_known_answer() -> None:
    """Negated relevance, two-sided: the same neurons become inhibitory edges, most negative mean first."""
    from ssa.core.traversal import traverse

    out = traverse(HandMadeSource(sign=-1.0), 0, 3, ssa.make_rule("gradient"), Above(two_sided=True))
    assert kept_edges(out) == {("logits", 0, "b", 2, 4, -1), ("logits", 0, "b", 1, 3, -1), ("logits", 0, "b", 4, 3, -1)}
