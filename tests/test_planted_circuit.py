"""A hand-built network with a planted circuit: the graph must recover exactly it.

conv1 (1 -> 16) -> ReLU -> maxpool -> conv2 (16 -> 16) -> ReLU -> global average pool -> dense (16 -> 3).
Every relu1 and relu2 channel fires everywhere (bias 1, tiny weights), and all
weights are tiny (|w| <= 1e-3) except the planted ones:

    logit 0 <- relu2 {5, 9};   relu2 5 <- relu1 {3, 11};   relu2 9 <- relu1 {11, 14}
    logit 1 <- relu2 {2};      relu2 2 <- relu1 {7}
    logit 2 <- relu2 {12} with a *negative* weight, and relu2 12 <- relu1 {0} negatively

With b = 3 the graph must hold exactly the planted edges (fewer than b where
fewer neurons are outliers), each in every image; the negative ones show up
only as inhibitory edges with a two-sided selector.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn

import ssa

N_IMAGES = 12
LOGITS = {0: {5: 1.0, 9: 0.8}, 1: {2: 1.0}, 2: {12: -1.0}}
CONV2 = {5: {3: 1.0, 11: 0.7}, 9: {11: 1.0, 14: 0.9}, 2: {7: 1.0}, 12: {0: -0.5}}


def planted_model() -> nn.Module:
    g = torch.Generator().manual_seed(0)

    def tiny(*shape: int) -> torch.Tensor:
        return 1e-3 * (2 * torch.rand(shape, generator=g) - 1)

    m = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 16, 3, padding=1), relu1=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(16, 16, 3, padding=1), relu2=nn.ReLU(),
        gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 3),
    ))
    with torch.no_grad():
        m.conv1.weight.copy_(tiny(16, 1, 3, 3))
        m.conv1.bias.fill_(1.0)
        m.conv2.weight.copy_(tiny(16, 16, 3, 3))
        for upper, lowers in CONV2.items():
            for lower, w in lowers.items():
                m.conv2.weight[upper, lower] = w / 9
        m.conv2.bias.fill_(1.0)
        m.fc.weight.copy_(tiny(3, 16))
        for cls, lowers in LOGITS.items():
            for lower, w in lowers.items():
                m.fc.weight[cls, lower] = w
        m.fc.bias.zero_()
    return m.eval()


def images() -> np.ndarray:
    return np.random.default_rng(1).uniform(0.0, 1.0, size=(N_IMAGES, 1, 8, 8)).astype(np.float32)


def planted_edges(cls: int, sign: int = 1) -> set[tuple[str, int, str, int]]:
    out = set()
    for n, w in LOGITS[cls].items():
        if np.sign(w) == sign:
            out.add(("logits", cls, "relu2", n))
            for k, w2 in CONV2[n].items():
                if np.sign(w2) == sign:
                    out.add(("relu2", n, "relu1", k))
    return out


def edges_of(graph, sign: int | None = None) -> dict[tuple[str, int, str, int], dict]:
    out = {}
    for u, v, d in graph.edges(data=True):
        if sign is None or d["sign"] == sign:
            out[(graph.nodes[u]["tap"], graph.nodes[u]["neuron"], graph.nodes[v]["tap"], graph.nodes[v]["neuron"])] = d
    return out


@pytest.mark.parametrize("engine", ["auto", "autograd"])
@pytest.mark.parametrize("rule", ["gradient", "gradient_x_activation"])
@pytest.mark.parametrize("cls", [0, 1])
def test_graph_is_exactly_the_planted_circuit(cls: int, rule: str, engine: str) -> None:
    result = ssa.analyse(planted_model(), images(), cls, 3, rule=rule, selector="tukey", engine=engine)
    edges = edges_of(result.graph)
    assert set(edges) == planted_edges(cls)
    assert all(d["frequency"] == N_IMAGES and d["sign"] == 1 for d in edges.values())
    assert all(d["relevance"] > 0 for d in edges.values())
    # every node fires on every image (the planted channels are always active)
    assert all(d["active_fraction"] == 1.0 for n, d in result.graph.nodes(data=True) if d["tap"] != "logits")


def test_shared_neuron_is_the_union_of_its_upper_neurons() -> None:
    g = ssa.analyse(planted_model(), images(), 0, 3, preset="paper").graph
    assert g.nodes["relu1:11"]["in_degree"] == 2  # kept by both relu2:5 and relu2:9
    assert set(g.predecessors("relu1:11")) == {"relu2:5", "relu2:9"}
    assert {d["neuron"] for _, d in g.nodes(data=True) if d["tap"] == "relu1"} == {3, 11, 14}
    # the edge weights order the planted weights: relu2:5 relies more on relu1:3 (1.0) than on relu1:11 (0.7)
    assert g.edges["relu2:5", "relu1:3"]["relevance"] > g.edges["relu2:5", "relu1:11"]["relevance"] > 0


def test_branching_one_keeps_the_strongest_planted_edge() -> None:
    g = ssa.analyse(planted_model(), images(), 0, 1, preset="paper").graph
    assert set(edges_of(g)) == {("logits", 0, "relu2", 5), ("relu2", 5, "relu1", 3)}


def test_inhibitory_circuit_needs_two_sided_selector() -> None:
    model = planted_model()
    one_sided = ssa.analyse(model, images(), 2, 3, preset="paper").graph
    assert one_sided.number_of_edges() == 0  # the only planted dependency of logit 2 is negative
    two = ssa.analyse(model, images(), 2, 3, rule="gradient", selector="tukey",
                      selector_params={"two_sided": True}).graph
    neg = edges_of(two, -1)
    assert set(neg) == {("logits", 2, "relu2", 12)}
    assert neg[("logits", 2, "relu2", 12)]["frequency"] == N_IMAGES
    assert neg[("logits", 2, "relu2", 12)]["relevance"] < 0
    assert set(edges_of(two, 1)) == set()
    assert two.nodes["relu2:12"]["sign"] == -1
