"""An ONNX model prepared for SSA: a canonical torch module under the PyTorch backend's machinery.

The ONNX backend is a loader: onnx2torch converts the file, :mod:`ssa_onnx.canon` turns
onnx2torch's modules into native torch ops, and :class:`OnnxNetwork` (a
:class:`ssa_torch.TorchNetwork`) hands the result to the PyTorch backend, whose passes bring it
into canonical form and whose tap discovery, cut-semantics execution, closed form and autograd
do the analysis. What it adds happens in :meth:`OnnxNetwork.prepare`, on the first batch:

1. the batch's shape is checked against the input the file declares;
2. **parity**: the original model runs in onnxruntime and onnx2torch's conversion in torch on
   the same images (up to ``parity_images``); when the outputs differ by more than
   ``parity_tolerance`` (max absolute difference divided by the largest absolute output of
   onnxruntime) the model is refused, and the message says by how much. The conversion's check
   (:attr:`parity_converted`) runs in :meth:`~OnnxNetwork.prepare`, before any long computation; an
   analysis (:meth:`~OnnxNetwork.prepare_deferred`) makes it only where the canonical module disagrees
   (to say which of the two changed the function), where its preparation or statistics pass fails first,
   or when :attr:`parity_converted` is read, so it spends no forward pass on it when all agree.
   The check runs **again on the canonical module** the analysis uses (:attr:`parity`), without
   a forward pass of its own where it can: the statistics pass's first batch starts with the
   parity images, and its forward returns the canonical module's outputs on them, which are
   compared (a mismatch refuses the model before that batch's statistics are used). Anything
   else that uses the canonical module first (:attr:`~OnnxNetwork.graph_module`: autograd steps,
   maps, ablations, ``ssa check``), and reading :attr:`parity`, runs the check first by one
   forward pass of the parity images, the reference the statistics pass's outputs are tested
   against;
3. **logits**: a final Softmax / LogSoftmax is stripped by tap discovery (method doc,
   section 3). When the output is probabilities without such a node (every value in [0, 1],
   every row summing to 1, e.g. a softmax written out as Exp / ReduceSum / Div), the top tap
   is their logarithm instead: log-probabilities equal the logits up to a per-image constant,
   so the class ranking is the same, but their gradients also carry the normaliser's. This is
   said in :attr:`notes` and by ``ssa check``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ssa_torch.canon import DEFAULT_PASSES, CanonPass
from ssa_torch.closed_form import ClosedFormPlan
from ssa_torch.host import statistics_input
from ssa_torch.network import TorchNetwork
from torch import fx

from ssa.core.interfaces import Tap
from ssa.errors import InvalidInputError, UnsupportedModelError

from . import parity_cache
from .canon import Onnx2TorchNative
from .check import advice_section, example_batch, onnx_section, report_of, unknown_ops
from .convert import failing_node
from .model import OnnxInfo, OnnxModel
from .outputs import (
    PROB_ATOL,
    LogProbabilities,
    append_log,
    final_kind,
    looks_like_probabilities,
    output_to_probabilities,
    softmax,
)
from .parity import ParityResult, compare, default_tolerance
from .prefetch import PARITY_IMAGES, Prefetch, wanted
from .runtime import make_session

__all__ = ["OnnxNetwork", "ParityResult", "LogProbabilities", "looks_like_probabilities", "softmax", "run_session",
           "output_to_probabilities", "unknown_ops", "default_tolerance", "check_input_shape", "PROB_ATOL"]

ONNX_PASSES: tuple[CanonPass, ...] = (Onnx2TorchNative(),)


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
                 channel_axes: Mapping[str, int] | None = None, tokens: str = "all", provider: str = "auto",
                 parity_tolerance: float | None = None, parity_images: int = PARITY_IMAGES, check_parity: bool = True,
                 ) -> None:
        super().__init__(module, name=name, device=device, taps=taps, include_input=include_input,
                         channel_axes=channel_axes, output_index=None, tokens=tokens)
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
        self._canonical_parity: ParityResult | None = None  # of the canonical module the analysis runs (parity)
        self._parity_converted: ParityResult | None = None  # of onnx2torch's conversion (parity_converted)
        # the conversion's check, where an analysis left it out (see prepare_deferred): images, onnxruntime's outputs
        self._conversion_pending: tuple[np.ndarray, np.ndarray] | None = None
        # the canonical module's parity check, while it waits for the statistics pass: images and onnxruntime's outputs
        self._parity_pending: tuple[np.ndarray, np.ndarray] | None = None
        self._deferring = 0  # > 0: inside the planner or the statistics pass, which do not settle the check
        self._measuring = False  # inside statistics_bytes' pass on the example image: it neither checks nor settles
        self._cache_key: str | None = None  # the parity cache's key of this preparation (remembered once both pass)
        self.output_kind: str = "unknown"  # "logits", "softmax stripped", "log-softmax stripped", "probabilities"
        self.notes: list[str] = []
        self._session: Any = None
        #: onnxruntime's session and the file's hash, computed while torch was imported (:mod:`ssa_onnx.prefetch`)
        self.prefetch: Prefetch | None = None
        self._file_hash: str | None = None
        self._converted = module  # the module as onnx2torch built it
        self._parity_batch: tuple[np.ndarray, np.ndarray] | None = None  # images and onnxruntime's outputs

    # -- onnxruntime ---------------------------------------------------------------------------
    @property
    def session(self) -> Any:
        """The onnxruntime session of the original model (created on first use)."""
        if self._session is None:
            source = self.onnx.session_source()
            if self.prefetch is not None and wanted(self.device, self.provider, True):
                self._session = self.prefetch.session(source)  # built while torch was imported (None: not this one)
            if self._session is None:
                self._session = make_session(source, self.provider, self.device)
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
        session = self.session
        if self.prefetch is not None:  # run on these images before the model was loaded (the parity images)?
            done = self.prefetch.reference(session, np.asarray(batch), self.onnx.info.output.name)
            if done is not None:
                return done
        return run_session(session, self.onnx.info, batch)

    @property
    def default_input_shape(self) -> tuple[int, ...] | None:
        """The per-image input shape the file declares, when it is fully static (for ``ssa check``)."""
        shape = self.onnx.info.input.shape
        dims = tuple(int(d) for d in shape[1:] if d is not None)
        return dims if shape and len(dims) == len(shape) - 1 else None

    def check_report(self, images: np.ndarray | None = None) -> str:
        """The ONNX part of ``ssa check``: file, input / outputs, parity, logits, notes (prepares if needed)."""
        if self._plan is None:
            if images is None:
                images = example_batch(self)
            self.prepare(images)
        n = self.parity.n_images if self.parity is not None else 0
        report = report_of(self, f"{n} image(s) for the parity check")
        return "\n".join([f"model {self.name} (onnx backend): {self.onnx.info.path}", *onnx_section(report),
                          *advice_section(report)])

    # -- preparation -----------------------------------------------------------------------------
    def canon_passes(self) -> Sequence[CanonPass]:
        """onnx2torch's modules to native torch ops first, then the PyTorch backend's passes."""
        return (*ONNX_PASSES, *DEFAULT_PASSES)

    def prepare(self, example: np.ndarray) -> tuple[Tap, ...]:
        """Check the input and the conversion, trace, canonicalise, check the canonical module's parity and discover
        the taps (see the module doc); a file whose parity was remembered is not run in onnxruntime."""
        taps = self._prepare_onnx(example, defer=False)
        if self._parity_pending is not None:
            self._check_canonical(None)
        return taps

    def prepare_deferred(self, example: np.ndarray) -> tuple[Tap, ...]:
        """:meth:`prepare`, with the canonical module's parity check left to the statistics pass's first batch
        (:class:`~ssa.core.capabilities.SupportsDeferredChecks`; the session prepares so): made on the outputs that
        pass computes anyway, or by a forward pass of the parity images when the module is used otherwise first.
        onnx2torch's conversion is then checked only where it can tell something: when the canonical module
        disagrees (the refusal says whether the conversion or ssa's passes changed the function), when the
        preparation or the statistics pass fails (its refusal first, as when it was checked before them), or when
        :attr:`parity_converted` is read; an analysis whose canonical module agrees spends no forward pass on it."""
        return self._prepare_onnx(example, defer=True)

    def _prepare_onnx(self, example: np.ndarray, *, defer: bool) -> tuple[Tap, ...]:
        example = np.asarray(example)
        self.check_input(example)
        if self._plan is not None and self.input_shape == tuple(example.shape[1:]):
            return self._plan.taps  # prepared for images of this shape (and checked): as TorchNetwork.prepare
        x = example[: max(1, int(self.parity_images))]
        self._canonical_parity = self._parity_converted = None
        self._parity_batch = self._parity_pending = self._conversion_pending = None
        with self.stages.stage("parity"):
            key = self._cache_key = self._parity_key(x)
            recalled = parity_cache.recall(key) if key is not None else None
            if recalled is not None and recalled[0] is None and not defer:
                recalled = None  # remembered by an analysis, without the conversion's check: prepare shows both
            ref = None
            if recalled is None:
                if defer and self.check_parity:  # the conversion's check waits (see above)
                    ref = self.ort_outputs(x)
                    self._conversion_pending = (x, ref)
                else:
                    ref, conv = self._reference_and_converted(x)
                    if self.check_parity:
                        self._parity_converted = self._parity(ref, conv)
                        self._refuse_conversion(self._parity_converted)
            else:
                self._parity_converted = recalled[0]
        self.notes = []
        if self.onnx.info.fixed_batch is not None:
            self.notes.append(f"the file fixes the batch size to {self.onnx.info.fixed_batch}; it was made dynamic "
                              "(the parity check covers models that bake it into a Reshape)")
        final = final_kind(self._converted)
        if final == "softmax":
            self.output_kind = "softmax stripped"
        elif final == "log_softmax":
            self.output_kind = "log-softmax stripped"
        elif recalled[2] == "probabilities" if recalled is not None else \
                ref is not None and looks_like_probabilities(ref):
            self.output_kind = "probabilities"
            self.notes.append("the output is probabilities (values in [0, 1], rows summing to 1) without a final "
                              "Softmax node; the top tap is their logarithm (log-probabilities)")
        else:
            self.output_kind = "logits"
        self.module = self._converted
        if ref is not None:
            self._parity_batch = (x, ref)
        # a recalled parity was remembered after a whole preparation of this file by this code, which ran the traced
        # copy on a batch of 2: no need to try again
        self._batches_checked = recalled is not None
        try:
            taps = super().prepare(example)
        except Exception as exc:
            self._conversion_first(exc)
            raise
        self._parity_batch = None
        if recalled is not None:
            self._canonical_parity = recalled[1]
        elif self._parity_pending is None:  # checked during the preparation (or not at all)
            self._remember()
        return taps

    # -- the conversion's and the canonical module's parity ------------------------------------------
    @property
    def parity_converted(self) -> ParityResult | None:
        """onnx2torch's conversion's parity check against onnxruntime (None: not checked: ``check_parity=False``,
        or recalled from an analysis's check that left it out). Where an analysis left it out
        (:meth:`prepare_deferred`), reading it runs it now (one forward pass of the parity images; no refusal)."""
        if self._conversion_pending is not None:
            self._settle_conversion(refuse=False)
            if self._parity_pending is None:
                self._remember()  # both checks are in now
        return self._parity_converted

    def _settle_conversion(self, *, refuse: bool = True) -> None:
        """Check onnx2torch's conversion where :meth:`prepare_deferred` left it out: its module's outputs on the
        parity images against onnxruntime's; ``refuse``: refuse the model when they disagree (as :meth:`prepare`)."""
        assert self._conversion_pending is not None
        images, ref = self._conversion_pending
        self._conversion_pending = None
        with self.stages.stage("parity"):
            p = self._parity_converted = self._parity(ref, self._module_outputs(self._converted, images))
        if refuse:
            self._refuse_conversion(p)

    def _conversion_first(self, exc: Exception) -> None:
        """Before ``exc`` (a failure of the preparation or of the canonical module, before its check) is raised:
        where the conversion's check waits, make it, so that a conversion that disagrees is refused first, as when
        it was checked before everything. Not for running out of memory, which says nothing of the conversion."""
        if self._conversion_pending is not None and not isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
            self._settle_conversion()

    @property
    def parity(self) -> ParityResult | None:
        """The canonical module's parity check against onnxruntime (None: not checked, ``check_parity=False``).
        Reading it runs the check now if the statistics pass has not yet (one forward pass of the parity images)."""
        if self._parity_pending is not None:
            self._check_canonical(None)
        return self._canonical_parity

    @property  # the mixins' attribute declarations (for typing) make mypy see a writeable attribute here
    def graph_module(self) -> fx.GraphModule:  # type: ignore[override]
        """The canonical module; its parity is checked first where it is still waiting (not inside the planner or
        the statistics pass, which checks it on its own outputs)."""
        gm = super().graph_module
        if self._parity_pending is not None and not self._deferring:
            self._check_canonical(None)
        return gm

    @property
    def closed_form(self) -> ClosedFormPlan:
        with self._deferred():  # planning reads the graph and its batch-1 values: no result of the analysis
            return super().closed_form

    def statistics_bytes(self, form: str) -> int:
        """:meth:`ssa_torch.TorchNetwork.statistics_bytes`: its pass on the example image measures array sizes and
        gives no result of the analysis, so, as planning, it leaves a waiting parity check to the statistics pass
        (a one-class session measures before its pass: ``SupportsRowsPerClass``)."""
        measuring, self._measuring = self._measuring, True
        try:
            return super().statistics_bytes(form)
        finally:
            self._measuring = measuring

    def collect(self, batch: np.ndarray | torch.Tensor, forms: Sequence[str], slots: Any = None) -> dict[str, Any]:
        """The statistics pass (:meth:`ssa_torch.TorchNetwork.collect`); while the canonical module's parity
        waits, a batch that starts with the parity images checks it on the pass's own outputs, any other batch
        after a forward pass of the parity images (not the measuring pass of :meth:`statistics_bytes`). Where it
        fails before that check, the conversion's (where it waits) refuses a conversion that disagrees first."""
        if self._parity_pending is not None and not self._measuring and not self._starts_with_parity_images(batch):
            self._check_canonical(None)
        with self._deferred():
            try:
                return super().collect(batch, forms, slots)
            except Exception as exc:
                if self._parity_pending is not None:  # before the canonical module's check
                    self._conversion_first(exc)
                raise

    def statistics_pass(self) -> contextlib.AbstractContextManager[Any]:
        """:meth:`ssa_torch.TorchNetwork.statistics_pass`, decided from the canonical module without checking its
        parity first (the pass checks it on its own outputs)."""
        with self._deferred():
            return super().statistics_pass()

    def _statistics_outputs(self, batch: np.ndarray | torch.Tensor, outputs: Any) -> None:
        # collect let this batch through: its first images are the parity images (or it is only measuring)
        if self._parity_pending is not None and not self._measuring:
            self._check_canonical(_first_output(outputs)[: len(self._parity_pending[0])])

    def _starts_with_parity_images(self, batch: np.ndarray | torch.Tensor) -> bool:
        assert self._parity_pending is not None
        images = self._parity_pending[0]
        return isinstance(batch, np.ndarray) and len(batch) >= len(images) and \
            np.array_equal(batch[: len(images)], images)

    @contextlib.contextmanager
    def _deferred(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _check_canonical(self, outputs: np.ndarray | None) -> None:
        """Compare the canonical module's ``outputs`` on the parity images (None: compute them, one forward pass)
        with onnxruntime's; refuse the model (and undo its preparation) when they disagree."""
        assert self._parity_pending is not None and self._gm is not None
        images, ref = self._parity_pending
        try:
            if outputs is None:
                with self.stages.stage("parity"):
                    outputs = self._module_outputs(self._gm, images)
            self._parity_pending = None
            p = self._canonical_parity = self._parity(ref, outputs)
        except Exception as exc:  # the module fails, or gives another shape
            self._conversion_first(exc)
            raise
        if not p.ok:
            self._plan = self._gm = None  # refused: no analysis of this module (prepare again to retry)
            self._refuse_canonical(p)
        self._remember()

    def _refuse_canonical(self, p: ParityResult) -> None:
        if self._conversion_pending is not None:  # did the conversion change the function, or ssa's passes?
            self._settle_conversion()
        passes = self.canon_report.by_pass() if self.canon_report is not None else "(none)"
        raise UnsupportedModelError(
            f"the canonical form of {self.name!r} (after the passes {passes}) disagrees "
            f"with onnxruntime: max |diff| {p.max_abs_diff:.3g} = {p.relative:.3g} of the output scale "
            f"(tolerance {p.tolerance:g}) on {p.n_images} image(s), although onnx2torch's conversion agrees; "
            "this is a bug in ssa: please report it with the model."
        )

    def _remember(self) -> None:
        """Remember the checks in the parity cache once they passed, after a whole preparation: the canonical
        module's, and the conversion's where it ran (an analysis whose canonical module agreed leaves it out; it is
        remembered as not checked, and added where it runs later, :attr:`parity_converted`)."""
        key, converted, canonical = self._cache_key, self._parity_converted, self._canonical_parity
        if key is not None and canonical is not None and not canonical.remembered and \
                (converted is not None or self._conversion_pending is not None):
            parity_cache.remember(key, converted, canonical, self.output_kind, self._file_hash)
            if converted is not None:
                self._cache_key = None  # once both are in

    def _reference_and_converted(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """onnxruntime's outputs (:meth:`ort_outputs`) and onnx2torch's module's on ``x``, side by side: the session
        is built and run in a thread (onnxruntime's C++ code runs without the GIL) while torch runs the module, so a
        second core shortens a first run (on the CPU; on a GPU one after the other). The same two arrays as one
        after the other; when both fail, onnxruntime's error is the one raised, as when it ran first."""
        from concurrent.futures import ThreadPoolExecutor

        if torch.device(self.device).type != "cpu":  # a GPU: one after the other, as before
            return self.ort_outputs(x), self._module_outputs(self._converted, x)
        with ThreadPoolExecutor(1, thread_name_prefix="ssa-onnxruntime") as pool:
            reference = pool.submit(self.ort_outputs, x)
            try:
                converted = self._module_outputs(self._converted, x)
            except Exception:
                reference.result()  # onnxruntime's error first
                raise
            return reference.result(), converted

    def _parity_key(self, x: np.ndarray) -> str | None:
        """The parity cache's key for this file and these settings (None: no check, or the cache is off)."""
        if not (self.check_parity and parity_cache.enabled()):
            return None
        tol = self.parity_tolerance if self.parity_tolerance is not None else default_tolerance(self.device)
        path = self.onnx.info.path
        known = self.prefetch.file_hash(path) if self.prefetch is not None else None
        self._file_hash = known if known is not None else parity_cache.file_sha256(path)
        return parity_cache.parity_key(self._file_hash, tolerance=tol,
                                       device=self.device, provider=self.provider,
                                       input_shape=tuple(x.shape[1:]), n_images=len(x))

    def _refuse_conversion(self, p: ParityResult) -> None:
        if not p.ok:
            raise UnsupportedModelError(
                f"the onnx2torch conversion of {self.name!r} disagrees with onnxruntime: max |diff| "
                f"{p.max_abs_diff:.3g} = {p.relative:.3g} of the output scale (tolerance {p.tolerance:g}) on "
                f"{p.n_images} image(s); report the model to onnx2torch, or accept the difference with "
                f"parity_tolerance={max(p.relative * 2, p.tolerance):.1g}."
            )

    def _canonicalize(self, gm: fx.GraphModule, x: torch.Tensor, values: dict[str, Any] | None = None,
                      ) -> fx.GraphModule:
        """The PyTorch backend's canonical form, whose parity check then waits for the statistics pass (see the
        module doc); with probabilities for outputs it runs now, before the log is appended."""
        gm = super()._canonicalize(gm, x, values)
        if self._parity_batch is not None and self.check_parity:
            images, ref = self._parity_batch
            if self.output_kind == "probabilities":  # the log appended below changes the outputs: check now
                with self.stages.stage("parity"):
                    p = self._canonical_parity = self._parity(ref, self._module_outputs(gm, images))
                if not p.ok:
                    self._refuse_canonical(p)
            else:
                self._parity_pending = (images, ref)
        if self.output_kind == "probabilities":
            gm = append_log(gm)
            self._canon_values = None  # of the graph before the log
        return gm

    def _module_outputs(self, module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        device = torch.device(self.device)
        module = module.eval().to(device)
        with torch.no_grad():
            try:  # in the statistics pass's layout (channels-last on the CPU): it checks what the analysis runs
                out = module(statistics_input(self.to_tensor(x), self.device, module))
            except Exception as exc:  # noqa: BLE001
                msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                failing = failing_node(module, self.to_tensor(x)) if isinstance(module, fx.GraphModule) else None
                if failing is not None:  # onnxruntime ran these images (prepare runs it first)
                    node, op, err = failing
                    raise UnsupportedModelError(
                        f"the onnx2torch conversion of {self.name!r} fails at ONNX node {node!r} ({op}): {err[:160]}; "
                        "onnxruntime runs the same images, so the conversion is at fault: re-export without this "
                        "op (another opset or an equivalent op), or report the model."
                    ) from None
                raise InvalidInputError(
                    f"the converted model failed on images shaped {tuple(x.shape)} ({msg}); "
                    f"the model's input is {self.onnx.info.input.shape_text()}: check --preprocess."
                ) from None
        return _first_output(out)

    def _parity(self, ref: np.ndarray, conv: np.ndarray) -> ParityResult:
        tol = self.parity_tolerance if self.parity_tolerance is not None else default_tolerance(self.device)
        if ref.shape != conv.shape:
            raise UnsupportedModelError(
                f"the onnx2torch conversion of {self.name!r} returns shape {conv.shape}, onnxruntime {ref.shape} "
                f"on {ref.shape[0] if ref.ndim else 0} image(s); a Reshape may fix the batch size: re-export with a "
                "dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))."
            )
        return compare(ref, conv, tol, self.onnx.info.output.name, self.session_provider)

    def class_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities by onnxruntime (the output itself when it is probabilities, else its softmax)."""
        out = self.ort_outputs(batch)
        kind = self.output_kind if self.output_kind != "unknown" else None
        return output_to_probabilities(out, kind, final_kind(self._converted))


def _first_output(out: Any) -> np.ndarray:
    """A module's (first) output as a float64 array on the host."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().double().cpu().numpy()


def check_input_shape(info: OnnxInfo, batch: np.ndarray) -> None:
    """Refuse (InvalidInputError) a batch whose shape does not match the ONNX file's declared input."""
    declared = info.input.shape
    if not declared:
        return
    got = tuple(int(d) for d in np.shape(batch))
    bad = len(got) != len(declared) or any(d is not None and d != g for d, g in zip(declared[1:], got[1:], strict=True))
    if bad:
        layout = f" ({info.layout.upper()})" if info.layout else ""
        hint = "check --preprocess (image size and layout)"
        if len(got) == len(declared) == 4 and sorted(got[1:]) == sorted(d or 0 for d in declared[1:]):
            hint = "the axes are in another order: set the layout (nchw / nhwc) in --preprocess"
        raise InvalidInputError(
            f"the model's input {info.input.name!r} is {info.input.shape_text()}{layout}, got images shaped {got}; "
            f"{hint}."
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


