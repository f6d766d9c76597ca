"""A batch's cut pass keeps what the autograd steps' forward passes compute, with its autograd graph
(``AutogradSteps._tap_values(graph=True)``), so that such a step runs its backward passes only: its omega equals
bit for bit the step that runs its own forward pass through its segment (the reference: the same network with
``_graphs_fit`` off, the path before), for every step of a ViT, a Swin, a ConvNeXt and a ConvNeXt-like net, under
both rules; the steps read the kept values (no forward pass of their segment); when the values with the graph do
not fit the budget, the values alone are kept and the steps run their forward passes, equal to the whole network."""

from __future__ import annotations

import pytest
import ssa_torch.autograd_steps as autograd_steps
import torch
from ssa_rules.rules import GradientRule, GradientXActivationRule
from ssa_torch.segments import TapValues, recorded_nodes

import ssa

from . import any_models as am
from .test_step_head import MODELS, TAPS

FAMILIES = {**MODELS, "swin": lambda: am.build("swin")}


def _pair(name: str, include_input: bool):
    """The network with kept graphs and the same network without (the reference), prepared on the same images."""
    x = am.images(5)
    model = FAMILIES[name]()
    new, old = (ssa.load_model(model, taps=TAPS.get(name), include_input=include_input) for _ in range(2))
    taps = new.prepare(x)
    old.prepare(x)
    old._graphs_fit = False
    return new, old, taps, x


@pytest.mark.parametrize("name, include_input", [(f, False) for f in sorted(FAMILIES)] + [("vit", True)])
def test_a_step_from_the_kept_graph_equals_the_step_with_its_own_forward_pass_bit_for_bit(name, include_input,
                                                                                          monkeypatch):
    new, old, taps, x = _pair(name, include_input)
    computed: list[tuple[str, ...]] = []
    run_nodes = autograd_steps.run_nodes

    def spy(gm, segment, values, batch, nodes=None):
        computed.append(tuple(segment.nodes if nodes is None else nodes))
        return run_nodes(gm, segment, values, batch, nodes)

    attrs = {n.name for n in new.graph_module.graph.nodes if n.op == "get_attr"}
    kept = 0
    for rule in (GradientRule(), GradientXActivationRule()):
        for tap in taps:
            if not tap.parents:
                continue
            for n in (1, 3, 9):
                neurons = list(range(min(n, tap.n_neurons)))[::-1]
                monkeypatch.setattr(autograd_steps, "run_nodes", spy)
                computed.clear()
                got, got_scalars = new.step_relevance(x, tap.name, neurons, rule)
                monkeypatch.setattr(autograd_steps, "run_nodes", run_nodes)
                want, want_scalars = old.step_relevance(x, tap.name, neurons, rule)
                assert set(got) == set(want) == set(tap.parents)
                for p in want:
                    assert torch.equal(got[p], want[p]), (tap.name, p, n)
                for t in want_scalars:
                    assert torch.equal(got_scalars[t], want_scalars[t])
                if recorded_nodes(new.graph_module, new._segments[tap.name]):  # a backward pass below the head
                    assert computed and all(set(c) <= attrs for c in computed), (tap.name, computed)
                    kept += 1
    assert kept, "no step ran from a kept graph"


def test_values_without_the_graph_when_both_do_not_fit_the_budget(monkeypatch):
    net = ssa.load_model(am.build("deit"))
    x = am.images(5)
    taps = net.prepare(x)
    values = net._tap_values(x)  # the values alone
    size = sum(int(v.numel()) * v.element_size() for v in values.values()) + x.nbytes
    net._values = TapValues(size + 64)  # room for the values and the batch's bytes, not for the graph
    runs: list[bool] = []
    run = net.run

    def counted(batch, grad, only=None, keep=()):
        runs.append(grad)
        return run(batch, grad, only, keep)

    monkeypatch.setattr(net, "run", counted)
    steps = [t for t in taps if t.parents]
    for tap in steps:
        got, _ = net.step_relevance(x, tap.name, [0, 2], GradientXActivationRule())
        monkeypatch.setattr(net, "run", run)
        want, _ = net._step_relevance_full(x, tap.name, [0, 2], GradientXActivationRule())
        monkeypatch.setattr(net, "run", counted)
        for p in want:
            torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
    assert runs == [True]  # one pass with gradients, whose graph did not fit; its values serve every step
    assert not net._graphs_fit
    kept = net._values.get(net._values.key(x))
    assert kept is not None and not any(k.startswith(("graph/", "leaf/")) for k in kept)


def test_values_replaced_by_values_with_their_graph_free_their_bytes_and_views_count_once():
    cache = TapValues(100)
    cache.put(b"a", {"x": torch.zeros(10)})  # 40 bytes
    cache.put(b"a", {"x": torch.zeros(10), "graph/y": torch.zeros(10), "graph/t": (torch.zeros(1),)})  # 80
    cache.put(b"b", {"x": torch.zeros(5)})  # 20 more: 100 in all, nothing goes
    assert cache.get(b"a") is not None and cache.get(b"b") is not None
    assert cache.fits({"x": torch.zeros(25)}) and not cache.fits({"x": torch.zeros(26)})
    big = torch.zeros(25)  # views of one another's (a layer's output and its heads) hold its memory once
    assert cache.fits({"a": big, "b": big[1:], "c": big.view(5, 5), "d": (big[:3],)})
    assert not cache.fits({"a": big, "b": torch.zeros(1)})


def test_values_without_the_graph_when_the_pass_with_gradients_fails(monkeypatch):
    net = ssa.load_model(am.build("deit"))
    x = am.images(5)
    taps = net.prepare(x)
    run = net.run
    runs: list[bool] = []

    def no_memory_with_grad(batch, grad, only=None, keep=()):
        runs.append(grad)
        if grad:
            raise torch.OutOfMemoryError("out of memory (a test)")
        return run(batch, grad, only, keep)

    monkeypatch.setattr(net, "run", no_memory_with_grad)
    tap = next(t for t in taps if t.parents and t.kind == "stream" and all(net.tap(p).kind == "stream"
                                                                            for p in t.parents))
    got, _ = net.step_relevance(x, tap.name, [0, 1, 2], GradientRule())
    net.step_relevance(x, tap.name, [0, 1, 2], GradientRule())
    assert runs == [True, False] and not net._graphs_fit  # once with gradients, then the values alone, kept
    monkeypatch.setattr(net, "run", run)
    want, _ = net._step_relevance_full(x, tap.name, [0, 1, 2], GradientRule())
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=1e-6, atol=1e-9)
