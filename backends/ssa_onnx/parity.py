"""The parity check: does the analysed module compute what onnxruntime computes?

:func:`compare` measures how closely a torch module's outputs reproduce onnxruntime's on the
same images; ``OnnxNetwork.prepare`` runs it on onnx2torch's conversion and again on the
canonical module the analysis uses (after :mod:`ssa_onnx.canon` and the PyTorch backend's
passes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ParityResult", "compare", "default_tolerance"]


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
    remembered : True when the result was recalled from an earlier check of the same file
        (:mod:`ssa_onnx.parity_cache`), not measured in this run.
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
    remembered: bool = False

    def text(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"{verdict}: max |onnxruntime - converted| = {self.max_abs_diff:.3g} on {self.n_images} image(s) "
                f"= {self.relative:.3g} of the output scale {self.scale:.3g} (tolerance {self.tolerance:g}); "
                f"top-1 agreement {self.top1_agreement:.0%}; onnxruntime provider {self.provider}"
                + ("; remembered from an earlier check of the same file" if self.remembered else ""))


def default_tolerance(device: str) -> float:
    """1e-3 on the CPU; 1e-2 on CUDA, where torch's convolutions may use TF32."""
    return 1e-2 if str(device).startswith("cuda") else 1e-3


def compare(ref: np.ndarray, out: np.ndarray, tolerance: float, output: str, provider: str) -> ParityResult:
    """How closely ``out`` (torch) reproduces ``ref`` (onnxruntime); shapes must agree."""
    diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / max(scale, 1e-12)
    top1 = float(np.mean(ref.argmax(axis=1) == out.argmax(axis=1))) if ref.ndim == 2 and ref.shape[1] > 1 else 1.0
    ok = bool(np.isfinite(out).all() and rel <= tolerance)
    return ParityResult(int(ref.shape[0]), output, diff, scale, rel, float(tolerance), top1, provider, ok)
