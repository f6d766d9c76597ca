"""Closed-form steps of a prepared network (method doc, section 6): the plan, statistics, omega from them.

:class:`ClosedFormSteps` is a mixin of :class:`~ssa_torch.network.TorchNetwork`: the plan
(:attr:`~ClosedFormSteps.closed_form`, planned on first use), the one forward pass that collects
per-image statistics (:meth:`~ClosedFormSteps.collect`) and the relevance of a step from them as typed blocks
(:meth:`~ClosedFormSteps.relevance_blocks`: rows, sorted where known, or rank-1 factors); :func:`steps_summary`
is the line ``ssa check`` prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx

from ssa.core.arrays import host_view
from ssa.core.interfaces import DenseBlock, Rank1Block, Rank1Factors, SortedKeys
from ssa.core.stages import StageTimes

from .closed_form import ClosedFormPlan, StatsInterpreter, deferred, plan_closed_form
from .closed_form.terms import as_float64, rank1_rows, stat_device
from .families import check_lines
from .host import exact_arithmetic, statistics_input
from .interpreters import ModelCodeInterpreter, node_values

if TYPE_CHECKING:
    from .taps import TapPlan

__all__ = ["ClosedFormSteps", "graph_values_at_one", "steps_summary"]


class ClosedFormSteps:
    """The closed form of a prepared network's steps (a mixin; see the module doc)."""

    if TYPE_CHECKING:  # provided by TorchNetwork
        device: str
        graph_module: fx.GraphModule
        plan: TapPlan
        _example: torch.Tensor
        _fast: ClosedFormPlan | None
        _plan_values: dict[str, Any] | None
        _stat_bytes: dict[str, int]
        stages: StageTimes

        def to_tensor(self, batch: Any) -> torch.Tensor: ...

    @property
    def closed_form(self) -> ClosedFormPlan:
        """Which steps have the exact closed form, their terms, and why the others do not (on first use)."""
        if self._fast is None:
            with self.stages.stage("planning"), torch.no_grad():
                fast = plan_closed_form(self.graph_module, self.plan, self._values_at_one())
                for tf in fast.taps.values():  # constants on the device once (Term.to), never per class
                    for term in tf.terms:
                        term.to(self.device)
                self._fast = fast
            self._drop_class_token_forms(self._fast)
        return self._fast

    def _values_at_one(self) -> dict[str, Any]:
        """Every node's value of the canonical graph on the example image (batch 1): the ones canonicalisation
        computed last, kept by ``prepare`` for this one use, else a forward pass
        (:func:`graph_values_at_one`, the reference the kept values are tested against)."""
        env1, self._plan_values = self._plan_values, None
        return env1 if env1 is not None else graph_values_at_one(self.graph_module, self._example)

    def _drop_class_token_forms(self, cf: ClosedFormPlan) -> None:
        """The closed form averages over positions: a step with a tap that takes its class token alone
        (``tokens="cls"``, :mod:`ssa_torch.tokens`) keeps autograd."""
        alone = set(getattr(self, "_token_axes", {}))
        for name, form in list(cf.taps.items()):
            if name in alone or any(t.parent in alone for t in form.terms):
                del cf.taps[name]
                cf.reasons[name] = "the class token alone (tokens='cls') has no closed form"

    def fast_taps(self, form: str | None = None) -> frozenset[str]:
        return frozenset(t for t in self.closed_form.taps if self.closed_form.covers(t, form))

    def relevance_blocks(self, upper: str, stats: Mapping[str, Any], neurons: Sequence[int], form: str,
                         factors: bool = False) -> list[DenseBlock | Rank1Block]:
        """The blocks of a closed-form step from statistics (:meth:`ssa.core.interfaces.Network.relevance_blocks`).

        A parent reached by exactly one term whose omega is rank-1 per upper neuron (1x1 conv, dense layer, skip
        connection under the gradient rule; skips under both rules) is a :class:`Rank1Block` with ``factors``,
        else, where the rows are labelled on the host, a :class:`DenseBlock` with its rows sorted without a sort
        (:func:`~ssa_torch.closed_form.terms.rank1_rows`); every other parent is a :class:`DenseBlock` of its
        terms' omega summed (float64 tensors on the statistics' device). Exact arithmetic is entered once per
        analysis (``Network.arithmetic``), not here.
        """
        tf = self.closed_form.taps[upper]
        by_parent: dict[str, list[int]] = {}
        for i, term in enumerate(tf.terms):
            by_parent.setdefault(term.parent, []).append(i)
        out: list[DenseBlock | Rank1Block] = []
        first = next((v for k, v in stats.items() if k.startswith(f"{upper}/")), None)
        # the neurons on the statistics' device once, for every term of the block
        rows: Any = neurons if first is None else torch.as_tensor(list(neurons), dtype=torch.long,
                                                                  device=stat_device(first))
        # a rank-1 block is handed as factors, or as rows with them sorted without a sort where they are labelled on
        # the host (numpy sorts slowly); a device labels the terms' own rows (it sorts in one kernel, fewer calls
        # than making the factors and the sorted rows take)
        host = first is not None and isinstance(host_view(first), np.ndarray)
        for parent, idx in by_parent.items():
            term = tf.terms[idx[0]]
            r = term.rank1(_term_stats(stats, upper, idx[0]), rows, form) if len(idx) == 1 and (
                factors or host) else None
            if r is not None:
                order = term.rank1_order(rows, r[1].device) if factors else None
                f = Rank1Factors(r[0], r[1], float(term.scale), r[2], order)
                out.append(Rank1Block(parent, 0, f) if factors else
                           DenseBlock(parent, 0, *rank1_rows(f, term.feeds_all)))
                continue
            keyed = _keyed_block(term, parent, _term_stats(stats, upper, idx[0]), rows, form) if (
                len(idx) == 1 and factors and host) else None
            if keyed is not None:
                out.append(keyed)
                continue
            om = None
            for i in idx:
                part = tf.terms[i].omega(_term_stats(stats, upper, i), rows, form)
                om = part if om is None else om + part
            out.append(DenseBlock(parent, 0, om))
        return out

    def statistics_bytes(self, form: str) -> int:
        """Bytes per image of :meth:`collect`'s arrays for ``form`` (measured once on one image, cached)."""
        cache, key = self._stat_bytes, form + ("/rows-per-class" if deferred.per_class() else "")
        if key not in cache:
            arrays = self.collect(self._example, [form])
            cache[key] = int(sum(v[0].numel() * v.element_size() for v in arrays.values()))
        return cache[key]

    def rows_per_class(self) -> contextlib.AbstractContextManager[None]:
        """Within: the statistics pass (and :meth:`statistics_bytes`) keeps what one class needs to make its own rows
        of the default rule where that is cheaper for a single class (:mod:`.closed_form.deferred`, "Rows per class"),
        the same values (:class:`~ssa.core.capabilities.SupportsRowsPerClass`)."""
        return deferred.rows_per_class()

    def collect(self, batch: np.ndarray | torch.Tensor, forms: Sequence[str], slots: Any = None
                ) -> dict[str, np.ndarray]:
        """Per-image sufficient statistics of every closed-form step, and every tap's scalars, in one forward pass.

        Keys: ``"scalars/<tap>"`` (B, N) and ``"<tap>/<term index>/<field>"`` (see the terms in
        :mod:`ssa_torch.closed_form`). Computed and kept on the model's device (float32 torch tensors). ``slots``:
        see :meth:`ssa.core.interfaces.Network.collect` (terms that can write there do, in float32).
        """
        interp = _StatsRun(self.graph_module, self.plan, self.closed_form, tuple(forms))
        interp.args_batch = len(batch)
        if slots is not None:
            interp.slots = lambda key, shape, like: slots(key, shape, like) if like.dtype == torch.float32 else None
        with torch.no_grad(), exact_arithmetic(self.device):
            outputs = interp.run(statistics_input(self.to_tensor(batch), self.device, self.graph_module))
        self._statistics_outputs(batch, outputs)
        # float32 statistics (a class's kept 0/1 masks stay uint8: .closed_form.deferred)
        return {k: v if v.dtype == torch.uint8 else v.float() for k, v in interp.stats.items()}

    def _statistics_outputs(self, batch: np.ndarray | torch.Tensor, outputs: Any) -> None:
        """What the statistics pass's forward returned on ``batch`` (the model's outputs, which it computes anyway):
        nothing is done with them here; a front end may check them (the ONNX backend's parity check)."""

    def describe_steps(self) -> dict[str, str]:
        out = {}
        cf = self.closed_form
        for t in self.plan.taps:
            for p in t.parents:
                if cf.covers(t.name):
                    labels = sorted({term.label for term in cf.taps[t.name].terms if term.parent == p})
                    only = "" if len(cf.taps[t.name].forms) == 2 else "; gradient rule only"
                    out[f"{t.name} -> {p}"] = f"fast ({', '.join(labels)}{only})"
                else:
                    out[f"{t.name} -> {p}"] = f"autograd ({cf.reasons.get(t.name, 'no closed form')})"
        return out

    def closed_form_summary(self) -> str:
        """One line for ``ssa check``: how many steps take the closed form, and why the others do not."""
        return steps_summary(self.describe_steps())

    def check_details(self, images: np.ndarray) -> list[str]:
        """``ssa check``: ops by engine and seconds per stage (:func:`ssa_torch.families.check_lines`)."""
        return check_lines(self, images)


class _StatsRun(StatsInterpreter, ModelCodeInterpreter):
    """The statistics pass, with errors inside the model's own code named in one line.

    See :class:`~ssa_torch.interpreters.ModelCodeInterpreter`.
    """


def graph_values_at_one(gm: fx.GraphModule, example: torch.Tensor) -> dict[str, Any]:
    """Every node's value of ``gm`` on ``example`` (one forward pass, no autograd)."""
    return node_values(gm, example)


def steps_summary(steps: Mapping[str, str]) -> str:
    """"N of M steps by the closed form", and the count of each fallback reason."""
    fast = sum(1 for how in steps.values() if how.startswith("fast"))
    line = f"{fast} of {len(steps)} steps by the closed form"
    reasons: dict[str, int] = {}
    for how in steps.values():
        if not how.startswith("fast"):
            reason = how[how.find("(") + 1:-1] if how.endswith(")") and "(" in how else how
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        parts = [f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))]
        line += "; by autograd: " + "; ".join(parts)
    return line


def _keyed_block(term: Any, parent: str, stats: Mapping[str, Any], rows: Any, form: str) -> DenseBlock | None:
    """A host's block of a term whose omega is its float32 statistics picked, converted and scaled
    (:meth:`~ssa_torch.closed_form.terms.Term.own_rows`): omega as the term makes it, and those float32 values sorted
    in place as its :class:`~ssa.core.interfaces.SortedKeys` (numpy sorts them in about half the time of the float64
    rows; the products by a positive scale keep their order). None where the term has no such form."""
    own = term.own_rows(stats, rows, form)
    if own is None or own[0].dtype != torch.float32 or not float(term.scale) > 0:
        return None
    picked, fed = own
    om = term.finish(as_float64(picked), fed, inplace=True)  # as the term's omega makes it
    keys = host_view(picked)  # the picked values are the block's own, and om a converted copy: sorted in place
    keys.sort(axis=-1)
    return DenseBlock(parent, 0, om, SortedKeys(keys, float(term.scale), None if term.feeds_all else host_view(fed)))


def _term_stats(stats: Mapping[str, Any], upper: str, i: int) -> dict[str, Any]:
    """The statistics of term ``i`` of step ``upper`` (keys ``"<upper>/<i>/<field>"``), by field."""
    prefix = f"{upper}/{i}/"
    return {k[len(prefix):]: stats[k] for k in stats if k.startswith(prefix)}
