"""What the model outputs: logits, a (log-)softmax, or probabilities without a Softmax node.

:func:`final_kind` reads the last op of onnx2torch's conversion; :func:`looks_like_probabilities`
tells probabilities by their values; :func:`append_log` makes log-probabilities the top tap
(method doc, section 3: the logits, or the input of a final Softmax).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
from torch import fx

__all__ = ["LogProbabilities", "softmax", "looks_like_probabilities", "output_to_probabilities", "append_log",
           "final_kind", "PROB_ATOL"]

PROB_ATOL = 1e-3  # rows must sum to 1 within this, values lie in [-PROB_ATOL, 1 + PROB_ATOL]


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


def final_kind(gm: fx.GraphModule) -> str:
    """"softmax", "log_softmax" or "other": the last op of onnx2torch's conversion."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    res = out.args[0]
    if isinstance(res, (tuple, list)) and len(res) == 1:
        res = res[0]
    if not isinstance(res, fx.Node) or res.op != "call_module":
        return "other"
    mod = gm.get_submodule(str(res.target))
    if isinstance(mod, nn.Softmax) or (type(mod).__name__ == "OnnxSoftmaxV1V11" and not mod.is_log):
        return "softmax"
    if isinstance(mod, nn.LogSoftmax) or (type(mod).__name__ == "OnnxSoftmaxV1V11" and mod.is_log):
        return "log_softmax"
    return "other"


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


def append_log(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` whose output is followed by :class:`LogProbabilities`."""
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
