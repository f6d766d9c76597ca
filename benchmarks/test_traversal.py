"""Traversal speed: full traversal (collect + analyse) against a plain forward pass, batched autograd
and the naive per-neuron reference, measured in one run on one machine (issue: exact traversal at the
cost of one forward pass). Run with ``make bench``; results go to benchmarks/results/.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ssa_torch import spatial_mean

import ssa
from ssa.engines.autograd import AutogradSource
from ssa.engines.closed_form import ClosedFormSource
from ssa.engines.statistics import collect
from ssa.session import Session, open_store, run_traversal

from .conftest import bench_device, bench_images, cpu_model, sync, timed

B = 3
BATCH = 8
SAMPLE_NEURONS = 2  # naive reference: neurons measured per step
AUTOGRAD_NEURONS = 4  # batched autograd: neurons measured per step


@pytest.fixture(scope="module")
def prepared(case):
    name, model, images = case
    device = bench_device()
    session = Session(model, images, batch_size=BATCH, device=device, name=name, preset="paper")
    session.prepare()
    net = session.network
    logits = np.concatenate([net.logits(images[i:i + BATCH]) for i in range(0, len(images), BATCH)])
    target = int(np.bincount(logits.argmax(1)).argmax())
    return name, model, images, session, target


@pytest.mark.benchmark(group="traversal")
def test_forward(benchmark, prepared, results):
    name, model, images, session, target = prepared
    dev_model = model.to(bench_device())

    def forward():
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                dev_model(torch.from_numpy(images[i:i + BATCH]).to(bench_device()))
        sync()

    benchmark.pedantic(forward, rounds=3, iterations=1, warmup_rounds=1)
    results["forward_s"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="traversal")
def test_full_traversal(benchmark, prepared, results):
    name, model, images, session, target = prepared
    net = session.network
    rule = ssa.make_rule("gradient")
    sel = ssa.make_selector("tukey")
    holder = {}

    def full():
        stats = collect(net, images, ["gradient"], BATCH)
        sync()
        src = ClosedFormSource(net, stats, "gradient", images, BATCH)
        holder["result"] = run_traversal(src, net, target, B, rule, sel)

    benchmark.pedantic(full, rounds=3, iterations=1, warmup_rounds=1)
    res = holder["result"]
    results["traversal_s"] = benchmark.stats.stats.min
    results["graph_nodes"] = res.graph.number_of_nodes()
    results["graph_edges"] = res.graph.number_of_edges()
    results["fast_steps"] = sum(v == "fast" for v in res.engines.values())
    results["visited_steps"] = len(res.engines)
    # correctness after timing: the top steps agree with autograd
    auto = run_traversal(AutogradSource(net, images, BATCH), net, target, B, rule, sel, stop_at=None) \
        if name == "resnet18" and len(images) <= 8 else None
    if auto is not None:
        assert sorted(auto.graph.edges) == sorted(res.graph.edges)
    results["sets"] = {t: sorted(res.graph.neurons(t)) for t in res.graph.taps()}  # for the extrapolations


PAIRS = 5


@pytest.mark.benchmark(group="traversal")
def test_paired_traversal_over_forward(benchmark, prepared, results):
    """Forward pass and full traversal alternated PAIRS times: the median of the paired ratios is robust
    to a shared machine whose speed drifts between the separate benchmarks."""
    name, model, images, session, target = prepared
    net = session.network
    rule, sel = ssa.make_rule("gradient"), ssa.make_selector("tukey")
    dev_model = model.to(bench_device())

    def forward():
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                dev_model(torch.from_numpy(images[i:i + BATCH]).to(bench_device()))

    def full():
        stats = collect(net, images, ["gradient"], BATCH)
        run_traversal(ClosedFormSource(net, stats, "gradient", images, BATCH), net, target, B, rule, sel)

    ratios = []

    def run():
        for _ in range(PAIRS):
            t_f, _ = timed(forward)
            t_t, _ = timed(full)
            ratios.append(t_t / t_f)

    benchmark.pedantic(run, rounds=1, iterations=1)
    results["paired_ratios"] = [float(r) for r in ratios]
    results["paired_median_traversal_over_forward"] = float(np.median(ratios))


@pytest.mark.benchmark(group="traversal")
def test_reanalyse_from_store(benchmark, prepared, results):
    name, model, images, session, target = prepared
    net = session.network
    with tempfile.TemporaryDirectory() as d:
        s2 = Session(net, images, batch_size=BATCH, device=bench_device(), store=d, preset="paper")  # prepared net
        s2.analyse(target, B)  # fills the store
        other = (target + 1) % 1000

        def again():
            return s2.analyse(other, 2)

        result = benchmark.pedantic(again, rounds=3, iterations=1, warmup_rounds=1)
        assert result.graph.number_of_nodes() >= 1
        results["reanalyse_s"] = benchmark.stats.stats.min
        results["store_mib_per_image"] = open_store(net, images, d).size_bytes() / 2**20 / len(images)


def _step_plan(net, sets):
    taps = {t.name: t for t in net.taps}
    return [(u, sorted(sets[u])) for u in sorted(sets, key=lambda t: -taps[t].order) if taps[u].parents and sets[u]]


@pytest.mark.benchmark(group="traversal")
def test_batched_autograd_extrapolated(benchmark, prepared, results):
    """Batched autograd on every visited step with at most AUTOGRAD_NEURONS upper neurons, scaled to |S|."""
    name, model, images, session, target = prepared
    net = session.network
    rule = ssa.make_rule("gradient")
    plan = _step_plan(net, results["sets"])
    per_step = {}

    def run():
        for upper, neurons in plan:
            sample = neurons[:AUTOGRAD_NEURONS]
            t_fwd, _ = timed(lambda: [net.run(images[i:i + BATCH], grad=True)
                                       for i in range(0, len(images), BATCH)])
            t, _ = timed(lambda u=upper, s=sample: [net.step_relevance(images[i:i + BATCH], u, s, rule)
                                                     for i in range(0, len(images), BATCH)])
            # the forward pass is paid once per step; the backward part grows with the neurons
            per_step[upper] = t_fwd + max(t - t_fwd, 0.0) * len(neurons) / len(sample)

    benchmark.pedantic(run, rounds=1, iterations=1)
    results["autograd_extrapolated_s"] = float(sum(per_step.values()))
    results["autograd_measured_s"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="traversal")
def test_naive_reference_extrapolated(benchmark, prepared, results):
    """The naive per-neuron reference, as ``tests/reference.py`` computes relevance: for every upper
    neuron and every image, one forward pass (taps cut) and one backward pass.

    Measured on one image and SAMPLE_NEURONS neurons of every visited step, extrapolated to all
    images and all neurons of the traversal. Also reported: a kinder variant that shares the forward
    pass of an image between the neurons of a step (one forward per image and step).
    """
    name, model, images, session, target = prepared
    net = session.network
    plan = _step_plan(net, results["sets"])
    taps = {t.name: t for t in net.taps}
    x1 = images[:1]
    per_pair = {}
    shared = {}

    def run():
        for upper, neurons in plan:
            tap = taps[upper]
            sample = neurons[:SAMPLE_NEURONS]
            t_fwd = t_bwd = 0.0
            for n in sample:  # exactly the reference: forward, then one backward, per (neuron, image)
                dt, interp = timed(lambda: net.run(x1, grad=True))
                t_fwd += dt
                leaves = [interp.leaf[p] for p in tap.parents]
                s = spatial_mean(interp.raw[upper], tap.channel_axis)
                dt, _ = timed(lambda n=n, s=s, leaves=leaves: torch.autograd.grad(s[0, n], leaves,
                                                                                   allow_unused=True))
                t_bwd += dt
            t_fwd, t_bwd = t_fwd / len(sample), t_bwd / len(sample)
            per_pair[upper] = len(images) * len(neurons) * (t_fwd + t_bwd)
            shared[upper] = len(images) * (t_fwd + len(neurons) * t_bwd)

    benchmark.pedantic(run, rounds=1, iterations=1)
    results["naive_extrapolated_s"] = float(sum(per_pair.values()))
    results["naive_shared_forward_extrapolated_s"] = float(sum(shared.values()))
    results["naive_measured_s"] = benchmark.stats.stats.min


@pytest.mark.benchmark(group="report")
def test_report_ratios(benchmark, prepared, results):
    """Print the ratios of this run and save them (runs last in the module)."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    name, session = prepared[0], prepared[3]
    r = {k: v for k, v in results.items() if k != "sets"}
    steps = session.network.describe_steps()
    r["closed_form_steps"] = sum(v.startswith("fast") for v in steps.values())
    r["steps"] = len(steps)
    dev = bench_device()
    cpu = f"{cpu_model()} ({torch.get_num_threads()} threads)"
    card = torch.cuda.get_device_name(0) if dev.startswith("cuda") else cpu
    r.update({"images": bench_images(), "device": dev, "card": card, "branching": B, "batch_size": BATCH,
              "torch": torch.__version__, "threads": torch.get_num_threads()})
    r["traversal_over_forward"] = r["traversal_s"] / r["forward_s"]
    r["naive_over_traversal"] = r["naive_extrapolated_s"] / r["traversal_s"]
    r["naive_shared_forward_over_traversal"] = r["naive_shared_forward_extrapolated_s"] / r["traversal_s"]
    r["autograd_over_traversal"] = r["autograd_extrapolated_s"] / r["traversal_s"]
    print(f"\n[{name} on {dev} ({card}), {bench_images()} images, b={B}]")
    print(f"  share of steps by the closed form: {r['closed_form_steps']} of {r['steps']} "
          f"({r['closed_form_steps'] / max(r['steps'], 1):.0%})")
    print(f"  plain forward            {r['forward_s']:.3f} s")
    print(f"  full traversal           {r['traversal_s']:.3f} s  = {r['traversal_over_forward']:.2f}x forward "
          f"({r['fast_steps']}/{r['visited_steps']} visited steps fast, {r['graph_nodes']} nodes)")
    print(f"  paired (forward, traversal) x {PAIRS}: median ratio {r['paired_median_traversal_over_forward']:.2f}x "
          f"(each: {', '.join(f'{x:.2f}' for x in r['paired_ratios'])})")
    print(f"  re-analysis from store   {r['reanalyse_s']:.3f} s  ({r['store_mib_per_image']:.2f} MiB/image on disk)")
    print(f"  batched autograd (extrapolated from <= {AUTOGRAD_NEURONS} neurons/step) "
          f"{r['autograd_extrapolated_s']:.1f} s = {r['autograd_over_traversal']:.1f}x traversal")
    print(f"  naive per-neuron reference (forward + backward per neuron and image; extrapolated from "
          f"{SAMPLE_NEURONS} neurons x 1 image per step) {r['naive_extrapolated_s']:.1f} s = "
          f"{r['naive_over_traversal']:.0f}x traversal")
    print(f"  the same sharing one forward per image and step (extrapolated) "
          f"{r['naive_shared_forward_extrapolated_s']:.1f} s = {r['naive_shared_forward_over_traversal']:.0f}x "
          "traversal")
    out = Path(__file__).parent / "results" / f"{dev.split(':')[0]}-{name}-{bench_images()}.json"
    out.write_text(json.dumps(r, indent=1, sort_keys=True))
