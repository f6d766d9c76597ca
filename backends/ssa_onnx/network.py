"""An ONNX model prepared for SSA: the onnx2torch module under the PyTorch backend's machinery.

:class:`OnnxNetwork` is a :class:`ssa_torch.TorchNetwork`: tap discovery, cut-semantics
execution and step relevance are the PyTorch backend's, run on the ``fx.GraphModule``
onnx2torch builds. What it adds happens in :meth:`OnnxNetwork.prepare`, on the first batch:

1. the batch's shape is checked against the input the file declares;
2. **parity**: the original model runs in onnxruntime and the converted module in torch on
   the same images (up to ``parity_images``); when the outputs differ by more than
   ``parity_tolerance`` (max absolute difference divided by the largest absolute output of
   onnxruntime) the model is refused, and the message says by how much;
3. **logits**: a final Softmax / LogSoftmax is stripped by tap discovery (method doc,
   section 3). When the output is probabilities without such a node (every value in [0, 1],
   every row summing to 1, e.g. a softmax written out as Exp / ReduceSum / Div), the top tap
   is their logarithm instead: log-probabilities equal the logits up to a per-image constant,
   so the class ranking is the same, but their gradients also carry the normaliser's. This is
   said in :attr:`notes` and by ``ssa check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from ssa.errors import InvalidInputError, UnsupportedModelError
from ssa.interfaces import Tap
from ssa_torch.network import TorchNetwork
from ssa_torch.kinds import node_kind, target_name

from .model import OnnxInfo, OnnxModel
from .runtime import make_session

__all__ = ["OnnxNetwork", "ParityResult", "LogProbabilities", "looks_like_probabilities", "softmax", "run_session",
           "output_to_probabilities", "unknown_ops", "default_tolerance", "check_input_shape"]

PROB_ATOL = 1e-3  # rows must sum to 1 within this, values lie in [-PROB_ATOL, 1 + PROB_ATOL]


@dataclass(frozen=True)
class ParityResult:
    """How closely the converted module reproduces onnxruntime on the first images.

    n_images : images compared. output : the ONNX output compared (its name).
    max_abs_diff : largest absolute difference of any output value.
    scale : largest absolute output value of onnxruntime.
    relative : max_abs_diff / scale (what the tolerance applies to).
    tolerance : the largest relative difference accepted.
    top1_agreement : share of images whose arg-max class agrees.
    provider : the onnxruntime execution provider used.
    ok : relative <= tolerance.
    """

    n_images: int
    output: str
    max_abs_diff: float
    scale: float
    relative: float
    tolerance: float
    top1_agreement: float
    provider: str
    ok: bool

    def text(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{verdict}: max |onnxruntime - converted| = {self.max_abs_diff:.3g} on {self.n_images} image(s) "
                f"= {self.relative:.3g} of the output scale {self.scale:.3g} (tolerance {self.tolerance:g}); "
                f"top-1 agreement {self.top1_agreement:.0%}; onnxruntime provider {self.provider}")


class LogProbabilities(nn.Module):
    """log(p), the top tap of a model whose output is probabilities without a Softmax node."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def looks_like_probabilities(out: np.ndarray) -> bool:
    """Every value in [0, 1] and every row summing to 1 (within 1e-3), for a 2-D output."""
    if out.ndim != 2 or out.shape[1] < 2 or not np.isfinite(out).all():
        return False
    return bool((out >= -PROB_ATOL).all() and (out <= 1 + PROB_ATOL).all()
                and np.allclose(out.sum(axis=1), 1.0, atol=PROB_ATOL))


def _final_kind(gm: fx.GraphModule) -> str:
    modules = dict(gm.named_modules())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, (tuple, list)) and len(res) == 1:
        res = res[0]
    return node_kind(res, modules) if isinstance(res, fx.Node) else "other"


def default_tolerance(device: str) -> float:
    """1e-3 on the CPU; 1e-2 on CUDA, where torch's convolutions may use TF32."""
    return 1e-2 if str(device).startswith("cuda") else 1e-3


class OnnxNetwork(TorchNetwork):
    """An ONNX file converted with onnx2torch, analysed by the PyTorch backend.

    Parameters
    ----------
    module : the converted ``fx.GraphModule`` (see :func:`ssa_onnx.convert.convert_model`).
    model : the validated ONNX model (:func:`ssa_onnx.model.read_onnx`).
    provider : onnxruntime provider, "auto", "cpu" or "cuda".
    parity_tolerance : relative tolerance of the parity check (default 1e-3 on CPU, 1e-2 on CUDA).
    parity_images : how many images of the first batch the parity check runs on.
    check_parity : False skips the parity check (not recommended).
    Other parameters as :class:`ssa_torch.TorchNetwork`.
    """

    def __init__(self, module: fx.GraphModule, model: OnnxModel, *, name: str = "model", device: str = "cpu",
                 taps: Sequence[str] | None = None, include_input: bool = False,
                 channel_axes: Mapping[str, int] | None = None, provider: str = "auto",
                 parity_tolerance: float | None = None, parity_images: int = 8, check_parity: bool = True) -> None:
        super().__init__(module, name=name, device=device, taps=taps, include_input=include_input,
                         channel_axes=channel_axes, output_index=None)
        if parity_tolerance is not None and (isinstance(parity_tolerance, bool) or
                                             not isinstance(parity_tolerance, (int, float)) or parity_tolerance < 0):
            raise InvalidInputError(f"parity_tolerance must be a number >= 0, got {parity_tolerance!r}.")
        if isinstance(parity_images, bool) or not isinstance(parity_images, int) or parity_images < 1:
            raise InvalidInputError(f"parity_images must be an integer >= 1, got {parity_images!r}.")
        if provider not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(f"provider must be 'auto', 'cpu' or 'cuda', got {provider!r}.")
        self.onnx = model
        self.provider = provider
        self.parity_tolerance = parity_tolerance
        self.parity_images = parity_images
        self.check_parity = check_parity
        self.parity: ParityResult | None = None
        self.output_kind: str = "unknown"  # "logits", "softmax stripped", "log-softmax stripped", "probabilities"
        self.notes: list[str] = []
        self._session: Any = None
        self._converted = module  # the module as onnx2torch built it (before a log is appended)

    # -- onnxruntime ---------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        """The onnxruntime session of the original model (created on first use)."""
        if self._session is None:
            self._session = make_session(self.onnx.session_source(), self.provider, self.device)
        return self._session

    @property
    def session_provider(self) -> str:
        return self.session.get_providers()[0]

    def check_input(self, batch: np.ndarray) -> None:
        """Refuse a batch whose shape does not match the input the ONNX file declares."""
        check_input_shape(self.onnx.info, batch)

    def ort_outputs(self, batch: np.ndarray) -> np.ndarray:
        """The chosen output of the original model, by onnxruntime."""
        self.check_input(batch)
        return run_session(self.session, self.onnx.info, batch)

    @property
    def default_input_shape(self) -> tuple[int, ...] | None:
        """The per-image input shape the file declares, when it is fully static (for ``ssa check``)."""
        shape = self.onnx.info.input.shape
        if not shape or any(d is None for d in shape[1:]):
            return None
        return tuple(int(d) for d in shape[1:])

    def check_report(self, images: np.ndarray | None = None) -> str:
        """The ONNX part of ``ssa check``: file, input / outputs, parity, logits, notes (prepares if needed)."""
        from .check import advice_section, onnx_section, report_of

        if self._plan is None:
            if images is None:
                from .check import example_batch

                images = example_batch(self)
            self.prepare(images)
        n = self.parity.n_images if self.parity is not None else 0
        report = report_of(self, f"{n} image(s) for the parity check")
        return "\n".join([f"model {self.name} (onnx backend): {self.onnx.info.path}", *onnx_section(report),
                          *advice_section(report)])

    # -- preparation -----------------------------------------------------------------------------
    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        example = np.asarray(example)
        self.check_input(example)
        x = example[: max(1, int(self.parity_images))]
        ref = self.ort_outputs(x)
        conv = self._converted_outputs(x)
        if self.check_parity:
            self.parity = self._parity(ref, conv)
            if not self.parity.ok:
                p = self.parity
                raise UnsupportedModelError(
                    f"the onnx2torch conversion of {self.name!r} disagrees with onnxruntime: max |diff| "
                    f"{p.max_abs_diff:.3g} = {p.relative:.3g} of the output scale (tolerance {p.tolerance:g}) on "
                    f"{p.n_images} image(s); report the model to onnx2torch, or accept the difference with "
                    f"parity_tolerance={max(p.relative * 2, p.tolerance):.1g}."
                )
        self.notes = []
        if self.onnx.info.fixed_batch is not None:
            self.notes.append(f"the file fixes the batch size to {self.onnx.info.fixed_batch}; it was made dynamic "
                              "(the parity check covers models that bake it into a Reshape)")
        final = _final_kind(self._converted)
        if final == "softmax":
            self.output_kind = "softmax stripped"
            self.module = self._converted
        elif final == "log_softmax":
            self.output_kind = "log-softmax stripped"
            self.module = self._converted
        elif looks_like_probabilities(ref):
            self.output_kind = "probabilities"
            self.module = _append_log(self._converted)
            self.notes.append("the output is probabilities (values in [0, 1], rows summing to 1) without a final "
                              "Softmax node; the top tap is their logarithm (log-probabilities)")
        else:
            self.output_kind = "logits"
            self.module = self._converted
        return super().prepare(example)

    def _converted_outputs(self, x: np.ndarray) -> np.ndarray:
        device = torch.device(self.device)
        gm = self._converted.eval().to(device)
        with torch.no_grad():
            try:
                out = gm(self.to_tensor(x))
            except Exception as exc:  # noqa: BLE001
                msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                raise InvalidInputError(
                    f"the converted model failed on images shaped {tuple(x.shape)} ({msg}); "
                    f"the model's input is {self.onnx.info.input.shape_text()}: check --preprocess."
                ) from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().double().cpu().numpy()

    def _parity(self, ref: np.ndarray, conv: np.ndarray) -> ParityResult:
        tol = self.parity_tolerance if self.parity_tolerance is not None else default_tolerance(self.device)
        provider = self.session_provider
        if ref.shape != conv.shape:
            raise UnsupportedModelError(
                f"the onnx2torch conversion of {self.name!r} returns shape {conv.shape}, onnxruntime {ref.shape} "
                f"on {ref.shape[0] if ref.ndim else 0} image(s); a Reshape may fix the batch size: re-export with a "
                "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))."
            )
        diff = float(np.max(np.abs(ref - conv))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        rel = diff / max(scale, 1e-12)
        if ref.ndim == 2 and ref.shape[1] > 1:
            top1 = float(np.mean(ref.argmax(axis=1) == conv.argmax(axis=1)))
        else:
            top1 = 1.0
        ok = bool(np.isfinite(conv).all() and rel <= tol)
        return ParityResult(int(ref.shape[0]), self.onnx.info.output.name, diff, scale, rel, float(tol), top1,
                            provider, ok)

    def class_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities by onnxruntime (the output itself when it is probabilities, else its softmax)."""
        out = self.ort_outputs(batch)
        kind = self.output_kind if self.output_kind != "unknown" else None
        return output_to_probabilities(out, kind, _final_kind(self._converted))


def check_input_shape(info: OnnxInfo, batch: np.ndarray) -> None:
    """Refuse (InvalidInputError) a batch whose shape does not match the ONNX file's declared input."""
    declared = info.input.shape
    if not declared:
        return
    got = tuple(int(d) for d in np.shape(batch))
    bad = len(got) != len(declared) or any(d is not None and d != g for d, g in zip(declared[1:], got[1:]))
    if bad:
        layout = f" ({info.layout.upper()})" if info.layout else ""
        hint = "check --preprocess (image size and layout)"
        if len(got) == len(declared) == 4 and sorted(got[1:]) == sorted(d or 0 for d in declared[1:]):
            hint = "the axes are in another order: set the layout (nchw / nhwc) in --preprocess"
        raise InvalidInputError(
            f"the model's input {info.input.name!r} is {info.input.shape_text()}{layout}, got images shaped {got}; {hint}."
        )


def run_session(session: Any, info: OnnxInfo, batch: np.ndarray) -> np.ndarray:
    """The chosen output of an onnxruntime session on ``batch`` (cast to the input's dtype), as float64."""
    x = np.ascontiguousarray(batch)
    if info.input.dtype.startswith(("float", "int", "uint")):
        dtype = np.dtype(info.input.dtype)
        if np.issubdtype(dtype, np.integer):
            x = np.clip(np.rint(x), np.iinfo(dtype).min, np.iinfo(dtype).max)
        x = x.astype(dtype, copy=False)
    try:
        out = session.run([info.output.name], {info.input.name: x})[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(
            f"onnxruntime cannot run the model on images shaped {tuple(batch.shape)} ({msg}); "
            f"the model's input is {info.input.shape_text()}: check --preprocess."
        ) from None
    return np.asarray(out, dtype=np.float64)


def output_to_probabilities(out: np.ndarray, kind: str | None, final: str) -> np.ndarray:
    """Probabilities from a classifier output: as is for a softmax, exp for a log-softmax, else softmax."""
    if out.ndim != 2:
        out = out.reshape(out.shape[0], -1)
    if final == "softmax" or kind == "probabilities":
        return out
    if final == "log_softmax":
        return np.exp(out)
    if kind is None and looks_like_probabilities(out):
        return out
    return softmax(out)


def _append_log(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` whose output is followed by :class:`LogProbabilities`."""
    import copy

    new = copy.deepcopy(gm)
    new.add_module("log_probabilities", LogProbabilities())
    out = next(n for n in new.graph.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, (tuple, list)):
        res = res[0]
    with new.graph.inserting_before(out):
        log = new.graph.call_module("log_probabilities", (res,))
    out.args = (log,)
    new.graph.lint()
    new.recompile()
    return new


def unknown_ops(network: TorchNetwork, max_names: int = 3) -> list[str]:
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
                if label == "OnnxFunction":
                    fn = getattr(modules[n.target], "function", None)
                    label = f"OnnxFunction({getattr(fn, '__name__', '?')})"
                seen.setdefault(label, []).append(str(n.target) if n.op == "call_module" else n.name)
    out = []
    for label, names in seen.items():
        count = f" x{len(names)}" if len(names) > 1 else ""
        shown = ", ".join(names[:max_names]) + (", ..." if len(names) > max_names else "")
        out.append(f"{label}{count} ({shown})")
    return out
