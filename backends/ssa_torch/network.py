"""A PyTorch model prepared for SSA: cut-semantics execution and step relevance by autograd.

Every tap's output is replaced by a detached leaf that requires grad, so that
the derivative of a tap with respect to one of its parent taps follows only the
paths that meet no other tap (method doc, section 4). The relevance of one step
for a set of upper neurons is computed with one batched backward pass
(``torch.autograd.grad(..., is_grads_batched=True)``), falling back to one
backward pass per neuron where an op has no batching rule.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ssa.core.checks import call_rule
from ssa.core.interfaces import Network, Rank1Factors, Rule, Tap
from ssa.core.stages import StageTimes
from ssa.errors import InvalidInputError, UnsupportedModelError

from .ablation import TorchAblator
from .canon import DEFAULT_PASSES, CanonPass, CanonReport, canonicalize
from .closed_form import ClosedFormPlan, StatsInterpreter, plan_closed_form
from .closed_form.terms import rank1_rows
from .families import check_lines
from .interpreters import ModelCodeInterpreter
from .maps import InputMaps
from .segments import Segment, TapValues, batch_key, run_segment, segment_of
from .taps import TapPlan, discover_taps
from .tracing import EXPORT_FIX, trace_module

__all__ = ["TorchNetwork", "HostCopy", "exact_arithmetic", "spatial_mean", "trace_module", "steps_summary"]

_WORK_BYTES = 256 * 2**20  # budget for one chunk of batched gradients
_VALUES_BYTES = 512 * 2**20  # budget for the tap values kept per batch between the steps of a traversal


def _check_batches(gm: fx.GraphModule, x: torch.Tensor) -> None:
    """Refuse a module that runs on 1 image but not on a batch of 2 (a program exported with a static batch)."""
    with torch.no_grad():
        try:
            gm(torch.cat([x, x]))
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the model's own code or an exported program's guard
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            static = "Guard failed" in text or "_guards_fn" in dict(gm.named_modules())
            why = ("it was exported with a static batch size; re-export it with " + EXPORT_FIX) if static else \
                "ssa runs the images in batches: make the model accept any batch size"
            raise UnsupportedModelError(f"the model runs on 1 image but fails on a batch of 2 ({text}); {why}.") \
                from None


def spatial_mean(t: torch.Tensor, channel_axis: int, lead: int = 1) -> torch.Tensor:
    """Mean over every axis except the ``lead`` leading ones and the channel axis; channel last."""
    t = t.movedim(channel_axis, -1)
    dims = tuple(range(lead, t.dim() - 1))
    return t.mean(dim=dims) if dims else t


class _CutInterpreter(ModelCodeInterpreter):
    def __init__(self, gm: fx.GraphModule, cut: Mapping[str, str], input_node: str | None, grad: bool):
        super().__init__(gm, garbage_collect_values=True)
        self.cut = cut
        self.input_node = input_node
        self.grad = grad
        self.raw: dict[str, torch.Tensor] = {}
        self.leaf: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        tap = self.cut.get(n.name)
        if tap is not None and isinstance(out, torch.Tensor):
            self.raw[tap] = out
            leaf = out.detach()
            if self.grad:
                leaf.requires_grad_(True)
            self.leaf[tap] = leaf
            return leaf
        return out


class TorchNetwork(InputMaps, Network):
    """A PyTorch ``nn.Module`` (or fx graph) ready for step-wise analysis.

    Parameters
    ----------
    module : the classifier; a deep copy is put in eval mode (the caller's module is not touched).
    name : model name recorded in the results.
    device : "cpu", "cuda", "cuda:1", ...
    taps : tap names chosen by hand (module paths or fx node names), or None for the default taps.
    include_input : add the input image's channels as the lowest tap.
    channel_axes : override the channel axis of taps, by name.
    output_index : which output is the logits when the model returns several.

    Saliency, activation maps and receptive fields (:class:`ssa.core.capabilities.SupportsInputMaps`) come from
    the mixin :class:`ssa_torch.maps.InputMaps`.
    """

    def __init__(self, module: nn.Module, *, name: str = "model", device: str = "cpu",
                 taps: Sequence[str] | None = None, include_input: bool = False,
                 channel_axes: Mapping[str, int] | None = None, output_index: int | None = None) -> None:
        self.module = module
        self.name = name
        self.device = device
        self.tap_names = list(taps) if taps else None
        self.include_input = include_input
        self.channel_axes = dict(channel_axes or {})
        self.output_index = output_index
        self._plan: TapPlan | None = None
        self._gm: fx.GraphModule | None = None
        self._batched_ok = True
        self._model_hash = None
        self.input_shape: tuple[int, ...] | None = None
        self.input_dtype = torch.float32
        self.canon_report: CanonReport | None = None
        self.stages = StageTimes()  # seconds per preparation stage (``ssa check`` prints them)

    def canon_passes(self) -> Sequence[CanonPass]:
        """The canonicalisation passes :meth:`prepare` runs on the traced copy (front ends add theirs)."""
        return DEFAULT_PASSES

    def _canonicalize(self, gm: fx.GraphModule, x: torch.Tensor) -> fx.GraphModule:
        """Bring the traced copy into canonical form (in place); see :mod:`ssa_torch.canon`."""
        self.canon_report = canonicalize(gm, x, self.canon_passes(), protect=self.tap_names or ())
        return gm

    # -- preparation ---------------------------------------------------------------
    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        """Trace, canonicalise and discover the taps for inputs like ``example`` (once per input shape).

        A network already prepared for images of the same shape keeps its preparation (a worker
        analysing class after class reuses it).
        """
        if self._plan is not None and self.input_shape == tuple(example.shape[1:]):
            return self._plan.taps
        with self.stages.stage("tracing/canon"):
            return self._prepare(example)

    def _prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        device = torch.device(self.device)
        x = self.to_tensor(example[:1])
        module = copy.deepcopy(self.module).eval().to(device)
        for p in module.parameters():
            p.requires_grad_(False)
        gm = trace_module(module, x).to(device)
        shapes: dict[str, tuple[int, ...]] = {}

        class _Shapes(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if isinstance(out, torch.Tensor):
                    shapes[n.name] = tuple(out.shape)
                return out

        with torch.no_grad():
            try:
                _Shapes(gm).run(x)
            except Exception as exc:  # noqa: BLE001
                text = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                fix = "check the image shape and layout the model expects"
                if "Guard failed" in text:
                    fix = f"the program was exported for other input shapes; re-export it with {EXPORT_FIX}"
                raise InvalidInputError(f"the model failed on an input of shape {tuple(x.shape)}: {text}; {fix}.") \
                    from None
        _check_batches(gm, x)
        gm = self._canonicalize(gm, x)
        shapes.clear()
        with torch.no_grad():
            _Shapes(gm).run(x)
        self._plan = discover_taps(gm, shapes, tap_names=self.tap_names, include_input=self.include_input,
                                   channel_axes=self.channel_axes, output_index=self.output_index)
        self._gm = gm
        self._example = x
        self._values = TapValues(_VALUES_BYTES)
        self._segments: dict[str, Segment] = {}
        self._input_node = next(n.name for n in gm.graph.nodes if n.op == "placeholder")
        self._stat_bytes: dict[str, int] = {}
        self._fast = None
        self._model_hash: str | None = None
        self.input_shape = tuple(example.shape[1:])
        return self._plan.taps

    # -- the closed form (method doc, section 6) ----------------------------------------
    @property
    def closed_form(self) -> ClosedFormPlan:
        """Which steps have the exact closed form, their terms, and why the others do not (on first use)."""
        if self._fast is None:
            env1: dict[str, Any] = {}

            class _Values(fx.Interpreter):
                def run_node(self, n):
                    out = super().run_node(n)
                    env1[n.name] = out
                    return out

            with self.stages.stage("planning"), torch.no_grad():
                _Values(self.graph_module).run(self._example)
                self._fast = plan_closed_form(self.graph_module, self.plan, env1)
        return self._fast

    fast_plan = closed_form  # the name the engine used before

    def fast_taps(self, form: str | None = None) -> frozenset[str]:
        return frozenset(t for t in self.closed_form.taps if self.closed_form.covers(t, form))

    def fast_relevance(self, upper: str, stats: Mapping[str, Any], neurons: Sequence[int],
                       form: str) -> dict[str, torch.Tensor]:
        """omega of a closed-form step from statistics (float64 torch tensors on the statistics' device)."""
        tf = self.closed_form.taps[upper]
        return self._omega_sum(upper, range(len(tf.terms)), stats, neurons, form)

    def _omega_sum(self, upper: str, which: Iterable[int], stats: Mapping[str, Any], neurons: Sequence[int],
                   form: str) -> dict[str, torch.Tensor]:
        tf = self.closed_form.taps[upper]
        out: dict[str, torch.Tensor] = {}
        with exact_arithmetic(self.device):
            for i in which:
                term = tf.terms[i]
                om = term.omega(_term_stats(stats, upper, i), neurons, form)
                out[term.parent] = out[term.parent] + om if term.parent in out else om
        return out

    def fast_relevance_sorted(self, upper: str, stats: Mapping[str, Any], neurons: Sequence[int],
                              form: str) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """:meth:`fast_relevance` with each row's sorted order where a term knows it (rank-1 terms).

        A parent reached by exactly one term whose omega is rank-1 per upper neuron (1x1 conv, dense
        layer, skip connection under the gradient rule; skips under both rules) gets its rows sorted
        without a sort (:func:`~ssa_torch.closed_form.terms.rank1_omega`); the others get None.
        """
        out: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for parent, r in self.fast_relevance_factors(upper, stats, neurons, form).items():
            if isinstance(r, Rank1Factors):
                out[parent] = rank1_rows(r)
            else:
                out[parent] = r
        return out

    def fast_relevance_factors(self, upper: str, stats: Mapping[str, Any], neurons: Sequence[int],
                               form: str) -> dict[str, tuple[Any, Any] | Rank1Factors]:
        """:meth:`fast_relevance_sorted` with each rank-1 parent as its factors (coeff, vec, scale, fed)."""
        tf = self.closed_form.taps[upper]
        by_parent: dict[str, list[int]] = {}
        for i, term in enumerate(tf.terms):
            by_parent.setdefault(term.parent, []).append(i)
        out: dict[str, tuple[Any, Any] | Rank1Factors] = {}
        rest: list[int] = []
        with exact_arithmetic(self.device):
            for parent, idx in by_parent.items():
                if len(idx) == 1:
                    term = tf.terms[idx[0]]
                    r = term.rank1(_term_stats(stats, upper, idx[0]), neurons, form)
                    if r is not None:
                        coeff, vec, fed = r
                        out[parent] = Rank1Factors(coeff, vec, float(term.scale), fed,
                                                   term.rank1_order(neurons, vec.device))
                        continue
                rest.extend(idx)
        for parent, om in self._omega_sum(upper, rest, stats, neurons, form).items():
            out[parent] = (om, None)
        return out

    def statistics_bytes(self, form: str) -> int:
        """Bytes per image of :meth:`collect`'s arrays for ``form`` (measured once on one image, cached)."""
        cache = self._stat_bytes
        if form not in cache:
            arrays = self.collect(self._example, [form])
            cache[form] = int(sum(v[0].numel() * v.element_size() for v in arrays.values()))
        return cache[form]

    def model_hash(self) -> str:
        """blake2b of the traced graph's code and every weight and buffer (names and bytes); cached per prepare()."""
        if self._model_hash is None:
            import hashlib

            h = hashlib.blake2b(digest_size=16)
            h.update(self.graph_module.code.encode())
            for key, value in self.graph_module.state_dict().items():
                h.update(key.encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes() if value.dtype != torch.bfloat16
                         else value.float().cpu().numpy().tobytes())
            self._model_hash = h.hexdigest()
        return self._model_hash

    def fingerprint(self) -> str:
        """The model hash and the taps (names, shapes, channel axes, parents): what the statistics depend on."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        h.update(self.model_hash().encode())
        h.update(repr([(t.name, t.shape, t.channel_axis, t.parents) for t in self.plan.taps]).encode())
        return h.hexdigest()

    def weight_arrays(self) -> list[np.ndarray]:
        return [v.detach().float().cpu().numpy() for v in self.module.state_dict().values()
                if isinstance(v, torch.Tensor) and v.is_floating_point()]

    def collect(self, batch: np.ndarray | torch.Tensor, forms: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-image sufficient statistics of every closed-form step, and every tap's scalars, in one forward pass.

        Keys: ``"scalars/<tap>"`` (B, N) and ``"<tap>/<term index>/<field>"`` (see the terms in
        :mod:`ssa_torch.closed_form`). Computed and kept on the model's device (float32 torch tensors).
        """
        interp = _StatsRun(self.graph_module, self.plan, self.closed_form, tuple(forms))
        interp.args_batch = len(batch)
        with torch.no_grad(), exact_arithmetic(self.device):
            interp.run(self.to_tensor(batch))
        return {k: v.float() for k, v in interp.stats.items()}

    @property
    def plan(self) -> TapPlan:
        if self._plan is None:
            raise RuntimeError("call prepare() first")
        return self._plan

    @property
    def graph_module(self) -> fx.GraphModule:
        if self._gm is None:
            raise RuntimeError("call prepare() first")
        return self._gm

    @property
    def taps(self) -> tuple[Tap, ...]:
        return self.plan.taps

    def tap(self, name: str) -> Tap:
        for t in self.plan.taps:
            if t.name == name:
                return t
        raise InvalidInputError(f"unknown tap {name!r}; taps are: {', '.join(t.name for t in self.plan.taps)}.")

    def to_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, torch.float32)
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def as_array(self, values: Any) -> torch.Tensor:
        """``values`` (numpy, e.g. memory-mapped statistics) as a tensor on the model's device, same dtype.

        On a GPU the host copy goes through pinned memory and the transfer does not block the host.
        """
        if isinstance(values, torch.Tensor):
            return values.to(self.device)
        arr = np.ascontiguousarray(values)
        if not arr.flags.writeable:  # a read-only memory map of the store: nothing writes to these tensors
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                t = torch.from_numpy(arr)
        else:
            t = torch.from_numpy(arr)
        if torch.device(self.device).type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def to_host_async(self, arrays: Mapping[str, Any]) -> HostCopy:
        """Start copying ``arrays`` (device tensors) to pinned host memory without stalling the GPU.

        ``.result()`` waits for the copies and returns numpy arrays (used by the store's writer thread).
        """
        return HostCopy(arrays, self.device)

    # -- capabilities (ssa.core.capabilities) ---------------------------------------------
    def ablator(self, batch_size: int = 256) -> TorchAblator:
        """An ablator of this prepared network (:class:`~ssa.core.capabilities.SupportsAblation`): class logits
        with chosen neurons of chosen taps set to 0 or to their mean map; the caller's module is never modified."""
        return TorchAblator(self, batch_size=batch_size)

    # -- execution -------------------------------------------------------------------
    def run(self, batch: np.ndarray | torch.Tensor, grad: bool) -> _CutInterpreter:
        """Run the model with every tap cut; returns the interpreter holding raw and leaf values."""
        plan = self.plan
        cut = {node: tap for tap, node in plan.node_of.items() if tap != plan.input_tap}
        x = self.to_tensor(batch)
        interp = _CutInterpreter(self.graph_module, cut, None, grad)
        interp.args_batch = int(x.shape[0])
        if plan.input_tap is not None:
            if grad:
                x = x.detach().requires_grad_(True)
            interp.raw[plan.input_tap] = x
            interp.leaf[plan.input_tap] = x
        with torch.set_grad_enabled(grad):
            interp.run(x)
        return interp

    def scalars_of(self, interp: _CutInterpreter) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            for tap in self.plan.taps:
                value = interp.raw[tap.name].detach()
                out[tap.name] = spatial_mean(value, tap.channel_axis).double()
        return out

    def logits(self, batch: np.ndarray) -> np.ndarray:
        with exact_arithmetic(self.device):
            interp = self.run(batch, grad=False)
        return interp.raw["logits"].detach().double().cpu().numpy()

    def tap_scalars(self, batch: np.ndarray) -> dict[str, torch.Tensor]:
        """Every tap's neuron scalars (value, or spatial mean) on a batch, float64 torch on the device."""
        with exact_arithmetic(self.device):
            return self.scalars_of(self.run(batch, grad=False))

    def step_relevance(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """omega ``{parent: (n, B, K)}`` of one step by autograd, and every tap's scalars (torch, on the device)."""
        with exact_arithmetic(self.device):
            return self._step_relevance(batch, upper, neurons, rule)

    def _step_relevance(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The step through its own segment only, from the batch's tap values (see :mod:`ssa_torch.segments`)."""
        tap = self.tap(upper)
        values = self._tap_values(batch)
        plan = self.plan
        scalars = {t.name: spatial_mean(values[plan.node_of[t.name]], t.channel_axis).double() for t in plan.taps}
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        if upper not in self._segments:
            self._segments[upper] = segment_of(self.graph_module, plan, upper)
        segment = self._segments[upper]
        feed = dict(values)
        leaves = []
        for p in parents:
            leaf = values[plan.node_of[p.name]].detach().requires_grad_(True)
            feed[plan.node_of[p.name]] = leaf
            leaves.append(leaf)
        with torch.enable_grad():
            out = run_segment(self.graph_module, segment, feed, len(batch))
        s = spatial_mean(out, tap.channel_axis)[:, list(neurons)]  # (B, n)
        return self._relevance(s, leaves, parents, rule), scalars

    def _tap_values(self, batch: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tap's value and the input on ``batch`` (node name -> tensor): one cut forward pass, remembered."""
        key = batch_key(batch)
        found = self._values.get(key)
        if found is None:
            interp = self.run(batch, grad=False)
            plan = self.plan
            found = {plan.node_of[t]: v.detach() for t, v in interp.raw.items()}
            found[self._input_node] = self.to_tensor(batch)
            self._values.put(key, found)
        return found

    def _step_relevance_full(self, batch: np.ndarray, upper: str, neurons: Sequence[int], rule: Rule
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The reference of :meth:`_step_relevance`: the whole network run with every tap cut, then the gradients."""
        tap = self.tap(upper)
        interp = self.run(batch, grad=True)
        scalars = self.scalars_of(interp)
        parents = [self.tap(p) for p in tap.parents]
        if not parents or len(neurons) == 0:
            return {}, scalars
        s = spatial_mean(interp.raw[upper], tap.channel_axis)[:, list(neurons)]  # (B, n)
        rel = self._relevance(s, [interp.leaf[p.name] for p in parents], parents, rule)
        return rel, scalars

    def _relevance(self, s: torch.Tensor, leaves: list[torch.Tensor], parents: list[Tap], rule: Rule
                   ) -> dict[str, torch.Tensor]:
        B, n = s.shape
        per = max(int(leaf[0].numel()) for leaf in leaves) * B * 4 * 3
        chunk = max(1, min(n, _WORK_BYTES // max(per, 1)))
        chunks: dict[str, list[torch.Tensor]] = {p.name: [] for p in parents}
        for j0 in range(0, n, chunk):
            j1 = min(n, j0 + chunk)
            grads = self._grads(s, leaves, j0, j1)
            for p, leaf, g in zip(parents, leaves, grads, strict=True):
                if g is None:
                    g = torch.zeros((j1 - j0, *leaf.shape), device=leaf.device, dtype=leaf.dtype)
                c = call_rule(rule, g, leaf.detach().unsqueeze(0))  # checked: a plugin bug is named
                chunks[p.name].append(spatial_mean(c, p.channel_axis + 1, lead=2).double())
        return {k: torch.cat(v, dim=0) for k, v in chunks.items()}

    def _grads(self, s: torch.Tensor, leaves: list[torch.Tensor], j0: int, j1: int) -> list[torch.Tensor | None]:
        m = j1 - j0
        if self._batched_ok and m > 1:
            go = torch.zeros((m, *s.shape), device=s.device, dtype=s.dtype)
            go[torch.arange(m), :, torch.arange(j0, j1)] = 1.0
            try:
                out = torch.autograd.grad(s, leaves, go, retain_graph=True, allow_unused=True, is_grads_batched=True)
                return list(out)
            except RuntimeError:
                self._batched_ok = False  # an op without a batching rule: one backward pass per neuron
        per_neuron = []
        for j in range(j0, j1):
            g = torch.autograd.grad(s[:, j].sum(), leaves, retain_graph=True, allow_unused=True)
            per_neuron.append(g)
        out: list[torch.Tensor | None] = []
        for idx, leaf in enumerate(leaves):
            parts = [g[idx] for g in per_neuron]
            out.append(None if all(p is None for p in parts) else
                       torch.stack([p if p is not None else torch.zeros_like(leaf) for p in parts]))
        return out

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


class HostCopy:
    """Device tensors being copied to pinned host memory (see :meth:`TorchNetwork.to_host_async`)."""

    def __init__(self, arrays: Mapping[str, Any], device: str) -> None:
        self._event = None
        if torch.device(device).type == "cuda":
            self._host = {}
            for k, v in arrays.items():
                buf = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                buf.copy_(v, non_blocking=True)
                self._host[k] = buf
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = {k: (v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(v))
                          for k, v in arrays.items()}

    def result(self) -> dict[str, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return {k: v.numpy() for k, v in self._host.items()}


@contextlib.contextmanager
def exact_arithmetic(device: str):
    """While analysing on CUDA: no TF32 in matrix products and convolutions, deterministic algorithms.

    TF32 rounds inputs to 10 mantissa bits and would make CUDA graphs differ from CPU graphs; the
    previous settings are restored afterwards. On the CPU this does nothing.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved[:3]
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


def _term_stats(stats: Mapping[str, Any], upper: str, i: int) -> dict[str, Any]:
    """The statistics of term ``i`` of step ``upper`` (keys ``"<upper>/<i>/<field>"``), by field."""
    prefix = f"{upper}/{i}/"
    return {k[len(prefix):]: stats[k] for k in stats if k.startswith(prefix)}
