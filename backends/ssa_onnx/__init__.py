"""ONNX backend of ssa: .onnx files converted with onnx2torch, checked against onnxruntime.

The backend is a loader: onnx2torch converts the file, :mod:`ssa_onnx.canon` turns onnx2torch's
modules into native torch ops, and the PyTorch backend analyses the canonical module
(:class:`OnnxNetwork` is a :class:`ssa_torch.TorchNetwork`); onnxruntime runs the original model
for the parity check (on the conversion and again on the canonical module) and for the class
probabilities that choose a class's images (:meth:`OnnxNetwork.class_probabilities`, the
:class:`~ssa.core.capabilities.SupportsClassProbabilities` capability). See ``docs/onnx.md``.
"""

from __future__ import annotations

from .backend import OnnxBackend, load_onnx
from .check import CheckReport, check_report, render_report
from .model import OnnxInfo, OnnxModel, TensorInfo, input_shape_of, read_onnx
from .network import OnnxNetwork
from .parity import ParityResult
from .runtime import make_session

__all__ = [
    "OnnxBackend", "load_onnx", "OnnxNetwork", "ParityResult", "CheckReport", "check_report", "render_report",
    "read_onnx", "input_shape_of", "OnnxModel", "OnnxInfo",
    "TensorInfo", "make_session",
]
