"""The ONNX backend (placeholder until the ONNX issue lands: refuses .onnx files clearly)."""

from __future__ import annotations

import os
from typing import Any

from ssa.errors import UnsupportedModelError
from ssa.interfaces import Backend, Network


class OnnxBackend(Backend):
    """ONNX files (.onnx), converted with onnx2torch."""

    name = "onnx"
    description = "ONNX file (.onnx), converted with onnx2torch and checked against onnxruntime"
    priority = 10

    @classmethod
    def can_load(cls, source: Any) -> bool:
        return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(".onnx")

    def load(self, source: Any, *, device: str = "cpu", **options: Any) -> Network:
        raise UnsupportedModelError("ONNX models are not supported yet.")
