"""``ssa check MODEL``: what the analysis will see, before running it.

:func:`check_report` loads a model (ONNX file, or anything :func:`ssa.load_model` takes),
prepares it on a few images and returns a :class:`CheckReport`: for ONNX files the input and
outputs, the parity numbers against onnxruntime and how the logits were found; for every
model the taps (shape, neurons, channel axis, producing op), the tap DAG (each tap's parent
taps) and which computation each step uses. :meth:`CheckReport.render` is the text the CLI
prints; :meth:`CheckReport.to_dict` is JSON-ready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol, TypeGuard

import numpy as np
from ssa_torch.families import engine_families, families_text, seconds_text, time_statistics
from ssa_torch.kinds import display_name, target_name
from ssa_torch.network import steps_summary

from ssa.core.interfaces import Network, Tap
from ssa.errors import InvalidInputError
from ssa.io.images import load_images
from ssa.io.loading import load_model
from ssa.io.preprocess import resolve_preprocess

from .model import OnnxInfo
from .outputs import LogProbabilities
from .parity import ParityResult

__all__ = ["CheckReport", "check_report", "render_report", "report_of", "example_batch", "unknown_ops"]


class _OnnxNetworkLike(Protocol):
    """What the report reads of an :class:`~ssa_onnx.network.OnnxNetwork` (which imports this module)."""

    name: str
    onnx: Any
    parity: ParityResult | None
    parity_images: int
    output_kind: str
    notes: list[str]


def _is_onnx(network: Any) -> TypeGuard[_OnnxNetworkLike]:
    """An ONNX network (duck-typed: this module does not import :mod:`ssa_onnx.network`)."""
    return getattr(network, "onnx", None) is not None and hasattr(network, "parity")


@dataclass(frozen=True)
class CheckReport:
    """What ``ssa check`` reports about a model.

    model : its name. backend : "onnx" or "torch". source : the path or description given.
    info : the ONNX file's input / outputs / opset (None for other models).
    parity : the onnxruntime comparison (None for other models, or when skipped).
    output_kind : "logits", "softmax stripped", "log-softmax stripped" or "probabilities"
        (ONNX; for PyTorch models: "logits" or the stripped op).
    example : how the example images were obtained, and their shape.
    taps : every tap, execution order. steps : "upper -> parent" -> computation.
    unknown_ops : computed ops tap discovery does not classify (candidates for --taps).
    notes : anything the user should know (log-probabilities, fixed batch size, ...).
    engines : engine ("closed form", "autograd") -> op family -> how many ops of the family its steps go
        through (:func:`ssa_torch.families.engine_families`): why a step is slow.
    timings : seconds per stage (loading, conversion, parity, tracing/canon, planning, statistics), in order.
    """

    model: str
    backend: str
    source: str
    info: OnnxInfo | None
    parity: ParityResult | None
    output_kind: str
    example: str
    taps: tuple[Tap, ...]
    steps: Mapping[str, str]
    unknown_ops: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    engines: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.parity is None or self.parity.ok

    def dag(self) -> dict[str, tuple[str, ...]]:
        """The tap DAG: each tap's parent taps (cut semantics, method doc section 4)."""
        return {t.name: tuple(t.parents) for t in self.taps}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "backend": self.backend, "source": self.source,
            "onnx": None if self.info is None else {
                "opset": self.info.opset, "producer": self.info.producer,
                "input": asdict(self.info.input), "outputs": [asdict(o) for o in self.info.outputs],
                "output_index": self.info.output_index, "layout": self.info.layout,
                "fixed_batch": self.info.fixed_batch, "op_types": dict(self.info.op_types),
            },
            "parity": None if self.parity is None else asdict(self.parity),
            "output_kind": self.output_kind, "example": self.example,
            "taps": [{"name": t.name, "order": t.order, "kind": t.kind, "op": t.op, "shape": list(t.shape),
                      "channel_axis": t.channel_axis, "neurons": t.n_neurons, "parents": list(t.parents)}
                     for t in self.taps],
            "steps": dict(self.steps), "unknown_ops": list(self.unknown_ops), "notes": list(self.notes),
            "engines": {engine: dict(fams) for engine, fams in self.engines.items()}, "timings": dict(self.timings),
        }

    def render(self) -> str:
        return render_report(self)


def onnx_section(r: CheckReport) -> list[str]:
    """The ONNX-specific lines of the report: file, input / outputs, parity, logits."""
    lines: list[str] = []
    if r.info is not None:
        i = r.info
        lines.append(f"  ONNX opset {i.opset}, producer {i.producer}, {sum(i.op_types.values())} nodes")
        lay = f", layout {i.layout.upper()}" if i.layout else ""
        lines.append(f"  input  {i.input.name} {i.input.shape_text()} {i.input.dtype}{lay}")
        for k, o in enumerate(i.outputs):
            mark = "  <- class scores" if k == i.output_index and len(i.outputs) > 1 else ""
            lines.append(f"  output {k}: {o.name} {o.shape_text()} {o.dtype}{mark}")
    lines.append(f"  example: {r.example}")
    if r.parity is not None:
        lines.append(f"  parity {r.parity.text()}")
    lines.append(f"  logits: {r.output_kind}")
    return lines


def advice_section(r: CheckReport) -> list[str]:
    """Unknown ops and notes."""
    lines: list[str] = []
    if r.unknown_ops:
        lines.append(f"  ops tap discovery does not classify: {', '.join(r.unknown_ops)}; if one of them is an "
                     "activation, name the taps by hand with --taps")
    for note in r.notes:
        lines.append(f"  note: {note}")
    return lines


def render_report(r: CheckReport) -> str:
    """The text ``ssa check`` prints."""
    lines = [f"model {r.model} ({r.backend} backend): {r.source}"]
    lines.extend(onnx_section(r))
    lines.append(f"  taps ({len(r.taps)}), top first:")
    w = max((len(t.name) for t in r.taps), default=4)
    for t in sorted(r.taps, key=lambda t: -t.order):
        parents = ", ".join(t.parents) if t.parents else "-"
        lines.append(f"    {t.name:<{w}}  {t.kind:<10} {t.op:<22} shape {str(tuple(t.shape)):<16} "
                     f"axis {t.channel_axis}  {t.n_neurons:>5} neurons  <- {parents}")
    if r.steps:
        lines.append(f"  steps ({len(r.steps)}):")
        for step, how in r.steps.items():
            lines.append(f"    {step}: {how}")
        lines.append(f"  {steps_summary(r.steps)}")
    if r.engines:
        lines.append(f"  ops by engine: {families_text(r.engines)}")
    if r.timings:
        lines.append(f"  time: {seconds_text(r.timings)}")
    lines.extend(advice_section(r))
    return "\n".join(lines)


def report_of(network: Network, example: str, source: str = "") -> CheckReport:
    """The report of a prepared network."""
    notes: list[str] = []
    if _is_onnx(network):
        info, parity, output_kind, kind = network.onnx.info, network.parity, network.output_kind, "onnx"
        notes.extend(network.notes)
        source = source or info.path
    else:
        info, parity = None, None
        kind = getattr(type(network), "__module__", "").split(".")[0].replace("ssa_", "") or "unknown"
        stripped = getattr(getattr(network, "plan", None), "stripped", None)
        output_kind = f"{stripped} stripped" if stripped else "logits"
    try:
        unknown = tuple(unknown_ops(network))
    except (AttributeError, RuntimeError):
        unknown = ()
    steps = dict(network.describe_steps())  # plans the closed form (timed as "planning")
    try:
        engines = engine_families(network.graph_module, network.plan, network.closed_form)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        engines = {}
    stages = getattr(network, "stages", None)
    timings = dict(stages.seconds) if stages is not None else {}
    return CheckReport(model=network.name, backend=kind, source=source or network.name, info=info, parity=parity,
                       output_kind=output_kind, example=example, taps=tuple(network.taps), steps=steps,
                       unknown_ops=unknown, notes=tuple(notes), engines=engines, timings=timings)


def example_batch(network: Network, n: int = 4, seed: int = 0) -> np.ndarray:
    """Random images (standard normal, seeded) shaped like the ONNX file's declared input."""
    if not _is_onnx(network):
        raise InvalidInputError("pass images (--images) to check a model that does not declare its input shape.")
    shape = network.onnx.info.input.shape
    if not shape or any(d is None for d in shape[1:]):
        raise InvalidInputError(
            f"the model's input {network.onnx.info.input.name!r} is {network.onnx.info.input.shape_text()} with "
            "dynamic sizes; pass images (--images) to check it."
        )
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *[int(d) for d in shape[1:]])).astype(np.float32)


def check_report(model: Any, images: Any = None, *, preprocess: Any = None, labels: Any = None,
                 n_images: int = 8, device: str = "cpu", output_index: int | None = None,
                 taps: Sequence[str] | None = None, include_input: bool = False,
                 channel_axes: Mapping[str, int] | None = None, backend: str | None = None,
                 **options: Any) -> CheckReport:
    """Load and prepare ``model`` and report what the analysis will see (for ``ssa check``).

    Parameters
    ----------
    model : an ``.onnx`` path, anything :func:`ssa.load_model` accepts, or a loaded network.
    images : example images (what :func:`ssa.io.images.load_images` accepts); None uses seeded random
        images shaped like the ONNX input (ONNX files with a fixed input size only).
    preprocess : for image folders: a preset name, a config path or dict, or a Preprocess;
        the layout and size are read from the ONNX input when possible.
    n_images : how many images the parity check and tap discovery run on.
    Other options go to the backend (``provider``, ``parity_tolerance``, ...).
    """
    start = time.perf_counter()
    network = load_model(model, backend=backend, device=device, output_index=output_index, taps=taps,
                         include_input=include_input, channel_axes=channel_axes, **options)
    stages = getattr(network, "stages", None)
    if stages is not None and not stages.seconds:  # the backend did not time its loading itself
        stages.add("loading", time.perf_counter() - start)
    if _is_onnx(network):
        network.parity_images = n_images
    if images is None:
        batch = example_batch(network, n=n_images)
        example = f"{batch.shape[0]} random images (seeded standard normal) shaped {tuple(batch.shape[1:])}"
    else:
        shape = network.onnx.info.input.shape if _is_onnx(network) else None
        pre = resolve_preprocess(preprocess, input_shape=shape) if preprocess is not None or shape else None
        arr, _ = load_images(images, preprocess=pre, labels=labels)
        batch = arr[:n_images]
        src = os.fspath(images) if isinstance(images, (str, os.PathLike)) else "array"
        example = f"{batch.shape[0]} of {arr.shape[0]} images from {src} shaped {tuple(batch.shape[1:])}"
    network.prepare(batch)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    report = report_of(network, example, source)
    if stages is not None and hasattr(network, "closed_form"):
        time_statistics(network, batch)
        report = replace(report, timings=dict(stages.seconds))
    return report


def unknown_ops(network: Any, max_names: int = 3) -> list[str]:
    """The computed ops tap discovery does not classify, with their node names (candidates for ``--taps``).

    Each entry reads ``"OnnxErf x2 (gelu/Erf, gelu_1/Erf)"``; the node names are what ``--taps`` takes.
    """
    gm = network.graph_module
    modules = dict(gm.named_modules())
    kinds = network.plan.kinds
    computed: set[str] = set()
    seen: dict[str, list[str]] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" or any(a.name in computed for a in n.all_input_nodes):
            computed.add(n.name)
            if kinds.get(n.name) == "other" and not (n.op == "call_module"
                                                     and isinstance(modules[n.target], LogProbabilities)):
                label = target_name(n, modules)
                seen.setdefault(label, []).append(display_name(n))
    out = []
    for label, names in seen.items():
        count = f" x{len(names)}" if len(names) > 1 else ""
        shown = ", ".join(names[:max_names]) + (", ..." if len(names) > max_names else "")
        out.append(f"{label}{count} ({shown})")
    return out
