"""ONNX backend of ssa: .onnx files converted with onnx2torch, checked against onnxruntime.

The backend is a loader: onnx2torch converts the file, :mod:`ssa_onnx.canon` turns onnx2torch's
modules into native torch ops, and the PyTorch backend analyses the canonical module
(:class:`OnnxNetwork` is a :class:`ssa_torch.TorchNetwork`); onnxruntime runs the original model
for the parity check (on the conversion and again on the canonical module) and for the class
probabilities that choose a class's images (:meth:`OnnxNetwork.class_probabilities`, the
:class:`~ssa.core.capabilities.SupportsClassProbabilities` capability). See ``docs/onnx.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ssa.plugins import lazy_exports

if TYPE_CHECKING:
    from .backend import OnnxBackend as OnnxBackend
    from .backend import load_onnx as load_onnx
    from .check import CheckReport as CheckReport
    from .check import check_report as check_report
    from .check import render_report as render_report
    from .model import OnnxInfo as OnnxInfo
    from .model import OnnxModel as OnnxModel
    from .model import TensorInfo as TensorInfo
    from .model import input_shape_of as input_shape_of
    from .model import read_onnx as read_onnx
    from .network import OnnxNetwork as OnnxNetwork
    from .parity import ParityResult as ParityResult
    from .runtime import make_session as make_session

#: public name -> the module that defines it; imported on first use (PEP 562), so that importing the
#: plugin module (``ssa_onnx.plugin``, which every ``ssa`` command does) imports neither torch nor onnx
_EXPORTS = {
    "OnnxBackend": "backend", "load_onnx": "backend", "OnnxNetwork": "network", "ParityResult": "parity",
    "CheckReport": "check", "check_report": "check", "render_report": "check",
    "read_onnx": "model", "input_shape_of": "model", "OnnxModel": "model",
    "OnnxInfo": "model", "TensorInfo": "model", "make_session": "runtime",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
