"""A transformer step by batched autograd against the forward pass of the images through that block (issue 19).

A small ViT (timm's definition, random weights, 64 px, 6 blocks of width 192); the steps are the stream after the
attention of block 3 (LayerNorm, attention, softmax) down to the stream before it, and block 3's MLP activation
(GELU of its first linear layer, after LayerNorm) down to that stream. Printed: each step's cost
through its own segment (``ssa_torch.segments``) from the graph the batch's cut pass kept (its backward passes
only), the same step running its own forward pass through the segment (the path before: values without the graph),
and through the whole network with every tap cut (the path before that), each as a multiple of the block's
forward pass on the same images (timed in turn with the step, best of 15),
for 1, 3 and 9 upper neurons, with the host's load average; and the same ratio in CPU time of the thread (with one
torch thread, ``OMP_NUM_THREADS=1``, what other jobs on a shared host change least). The target is at most 4x for
a handful of neurons; the result is checked against the whole-network path after timing.
Run with ``make bench`` (or ``pytest benchmarks/test_transformer_step.py --benchmark-only -s``).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import ssa

timm = pytest.importorskip("timm")


def _best(*fns, rounds: int = 5, clock=time.perf_counter) -> list[float]:
    """The best time of each function on ``clock``, called in turn ``rounds`` times (after one warm-up call each),
    so that a shared host whose speed drifts slows them alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = clock()
            fn()
            best[i] = min(best[i], clock() - t)
    return best


@pytest.mark.benchmark(group="transformer-step")
@pytest.mark.parametrize("n_neurons", (1, 3, 9))
@pytest.mark.parametrize("step", ("attention", "mlp"))
def test_transformer_step_against_the_block_forward(benchmark, step, n_neurons):
    from ssa_rules.rules import GradientRule
    from ssa_torch.segments import run_segment, segment_of
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=3, num_classes=10).eval()
    x = np.random.default_rng(0).uniform(0.0, 1.0, (16, 3, 64, 64)).astype(np.float32)
    net = ssa.load_model(model)
    taps = net.prepare(x)
    before = ssa.load_model(model)  # the same network, its steps running their own forward passes
    before.prepare(x)
    before._graphs_fit = False
    if step == "attention":  # after block 3's attention; its parent: the stream before
        upper = [t for t in taps if t.kind == "stream"][6]
    else:  # block 3's MLP activation; its parent: the stream after the attention
        upper = [t for t in taps if t.kind == "activation"][3]
    segment = segment_of(net.graph_module, net.plan, upper.name)
    values = net._tap_values(x)
    neurons = list(range(n_neurons))
    rule = GradientRule()

    def block() -> None:
        with torch.no_grad():
            run_segment(net.graph_module, segment, values, len(x))

    rel, _ = benchmark(net.step_relevance, x, upper.name, neurons, rule)
    load = os.getloadavg()[0]
    def step() -> None:
        net.step_relevance(x, upper.name, neurons, rule)

    def step_before() -> None:
        before.step_relevance(x, upper.name, neurons, rule)

    block_s, step_s, before_s = _best(block, step, step_before, rounds=15)
    (whole_s,) = _best(lambda: net._step_relevance_full(x, upper.name, neurons, rule), rounds=3)
    # CPU time of this thread (the work runs on it: one thread): what other jobs on a shared host change least
    block_cpu, step_cpu, before_cpu = _best(block, step, step_before, rounds=15, clock=time.thread_time)
    print(f"\ntransformer step {upper.name} <- {', '.join(upper.parents)}, {n_neurons} upper neuron(s), {len(x)} "
          f"images: segment {step_s * 1e3:.1f} ms = {step_s / block_s:.1f}x the block's forward pass "
          f"({block_s * 1e3:.1f} ms); with its own forward pass {before_s * 1e3:.1f} ms = {before_s / block_s:.1f}x; "
          f"whole network {whole_s * 1e3:.1f} ms = {whole_s / block_s:.1f}x; "
          f"CPU time {step_cpu * 1e3:.1f} ms = {step_cpu / block_cpu:.1f}x, with its own forward pass "
          f"{before_cpu * 1e3:.1f} ms = {before_cpu / block_cpu:.1f}x ({block_cpu * 1e3:.1f} ms) "
          f"(torch threads {torch.get_num_threads()}, load {load:.1f} before, {os.getloadavg()[0]:.1f} after)")
    want, _ = net._step_relevance_full(x, upper.name, neurons, rule)
    old, _ = before.step_relevance(x, upper.name, neurons, rule)
    for p in want:
        torch.testing.assert_close(rel[p], want[p], rtol=1e-6, atol=1e-9)
        assert torch.equal(rel[p], old[p])
