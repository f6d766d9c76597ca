"""Which families of ops each engine takes: for ``ssa check``, so that a user sees why a step is slow.

Every step (an upper tap and its parent taps) runs by the closed form or by autograd
(:meth:`ssa_torch.TorchNetwork.describe_steps`); its ops are the nodes of its segment
(:func:`ssa_torch.segments.segment_of`: the upper tap's node and everything above it up to the
parent taps). :func:`engine_families` counts those ops by family (the op kinds of
:mod:`ssa_torch.kinds`, shape-only ops left out; an op of no known kind by what it computes), per
engine; :func:`families_text` is the line ``ssa check`` prints, e.g.
``closed form: conv x53, relu x49, add x16; autograd: layernorm x12, matmul x24, softmax x6 (attention)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import fx

from .kinds import SHAPE_ONLY, target_name
from .segments import segment_of
from .taps import TapPlan

__all__ = ["ENGINE_KINDS", "engine_families", "families_text", "check_lines", "time_statistics", "seconds_text"]

#: how a step is computed, in the order `ssa check` reports them (not the `--engine` choices, ssa.core.options)
ENGINE_KINDS = ("closed form", "autograd")
#: kinds that compute nothing a user would look for (moves, casts, shapes)
_SILENT = SHAPE_ONLY | {"meta", "cast", "constant", "identity"}


def engine_families(gm: fx.GraphModule, plan: TapPlan, closed_form: Any) -> dict[str, dict[str, int]]:
    """Engine -> op family -> how many ops of the family the steps of that engine go through.

    ``closed_form`` is the network's :class:`~ssa_torch.closed_form.ClosedFormPlan` (its ``covers(tap)``
    says which steps take the closed form). Families are counted over each step's segment once.
    """
    modules = dict(gm.named_modules())
    by_name = {n.name: n for n in gm.graph.nodes}
    out: dict[str, dict[str, int]] = {engine: {} for engine in ENGINE_KINDS}
    for tap in plan.taps:
        if not tap.parents:
            continue
        counts = out[ENGINE_KINDS[0] if closed_form.covers(tap.name) else ENGINE_KINDS[1]]
        for name in segment_of(gm, plan, tap.name).nodes:
            node = by_name[name]
            if node.op in ("get_attr", "placeholder", "output"):
                continue
            kind = plan.kinds.get(name, "other")
            if kind in _SILENT:
                continue
            family = target_name(node, modules) if kind == "other" else kind
            counts[family] = counts.get(family, 0) + 1
    return {engine: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for engine, c in out.items() if c}


def families_text(families: Mapping[str, Mapping[str, int]], max_families: int = 8) -> str:
    """``"closed form: conv x53, relu x49; autograd: layernorm x12, softmax x6 (attention)"``; a softmax in the
    same engine as a matrix product is marked as attention."""
    parts = []
    for engine in ENGINE_KINDS:
        fams = families.get(engine)
        if not fams:
            continue
        items = []
        for family, n in list(fams.items())[:max_families]:
            mark = " (attention)" if family == "softmax" and "matmul" in fams else ""
            items.append(f"{family} x{n}{mark}")
        more = len(fams) - max_families
        parts.append(f"{engine}: {', '.join(items)}" + (f", {more} more" if more > 0 else ""))
    return "; ".join(parts)


def seconds_text(seconds: Mapping[str, float]) -> str:
    """``"loading 0.41 s, conversion 1.20 s, ..."``."""
    return ", ".join(f"{stage} {s:.2f} s" if s < 10 else f"{stage} {s:.0f} s" for stage, s in seconds.items())


def time_statistics(network: Any, images: Any) -> None:
    """Collect the closed form's per-image statistics on ``images`` once, timed as the stage "statistics"
    (a prepared :class:`~ssa_torch.TorchNetwork`; nothing when no step takes the closed form)."""
    forms = sorted({form for tap_form in network.closed_form.taps.values() for form in tap_form.forms})
    if forms and "statistics" not in network.stages.seconds:
        with network.stages.stage("statistics"):
            network.collect(images, forms)


def check_lines(network: Any, images: Any) -> list[str]:
    """``ssa check``'s lines of a prepared network: ops by engine, then seconds per stage."""
    lines = []
    text = families_text(engine_families(network.graph_module, network.plan, network.closed_form))
    if text:
        lines.append(f"ops by engine: {text}")
    time_statistics(network, images)
    lines.append(f"time: {seconds_text(network.stages.seconds)}")
    return lines
