"""The ONNX backend's plugin module, named in ssa's ``ssa`` entry-point group like any plugin's.

Every ``ssa`` command imports it, so it imports neither torch nor onnx.
"""

from __future__ import annotations

from collections.abc import Callable

from ssa.core.options import ModelOption
from ssa.hookspecs import hookimpl

from .backend import OnnxBackend  # light: the converter and onnxruntime are imported when a model is loaded


@hookimpl
def ssa_register_backends(register: Callable[[type], None]) -> None:
    register(OnnxBackend)


@hookimpl
def ssa_register_model_options(register: Callable[[ModelOption], None]) -> None:
    register(ModelOption(
        "--parity-tolerance", "parity_tolerance", backend="onnx", type=float, metavar="TOL", models="ONNX models",
        help="largest relative difference allowed between onnxruntime and the converted model "
             "(default 1e-3 on CPU, 1e-2 on CUDA)"))
