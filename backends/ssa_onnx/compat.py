"""Converters for operators and operator versions onnx2torch 1.5 does not register.

onnx2torch looks up a converter by the operator version in force at the model's opset.
Many newer versions only add element types (Identity-19, Reshape-19, Transpose-21, Conv-22, ...),
so a model exported with a recent opset (torch's TorchScript exporter writes opset 20 by default)
fails although the converter of the previous version would do. :func:`install` registers, for
every such missing version, a converter that delegates to the newest older one **when the node
uses nothing the newer version added** (an attribute or input that the older schema lacks, or an
attribute whose default changed): the comparison is made on the ONNX schemas, node by node, and a
node that does use something new is refused with a message naming it. The Reduce operators of
opset 18 (axes moved from an attribute to an input) get their own converter when the axes are
constant. ``GlobalMaxPool``, ``Mish`` (opset 18), ``Gelu`` (opset 20) and ``Swish`` (opset 24) get
converters of their own, and so does ``Split-18`` (its ``num_outputs``: torch's dynamo exporter writes it for
ShuffleNetV2's channel split). Everything is registered through onnx2torch's public
``add_converter`` / ``get_converter``. The parity check against onnxruntime verifies the result
in any case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["install", "GlobalMaxPool", "OnnxSplit18", "Swish"]

_installed = False
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSumSquare")


def _schema(op: str, version: int, domain: str):
    from onnx import defs

    return defs.get_schema(op, max_inclusive_version=version, domain=domain)


def _default(attr) -> Any:
    from onnx import helper

    dv = attr.default_value
    if dv is None or not dv.name and dv.type == 0:
        return None
    try:
        return helper.get_attribute_value(dv)
    except Exception:  # noqa: BLE001
        return None


def _differences(new, old) -> tuple[dict[str, Any], set[int]]:
    """Attributes (name -> default) and input positions the new schema has that the old one lacks or changed."""
    attrs: dict[str, Any] = {}
    for name, a in new.attributes.items():
        if name not in old.attributes or _default(old.attributes[name]) != _default(a):
            attrs[name] = _default(a)
    inputs = {i for i, p in enumerate(new.inputs) if i >= len(old.inputs) or old.inputs[i].name != p.name}
    removed = [name for name in old.attributes if name not in new.attributes]
    if removed or len(new.outputs) != len(old.outputs):
        inputs.add(-1)  # the interface changed: never compatible
    return attrs, inputs


def _delegate(op: str, new_version: int, old_version: int, domain: str, old_converter: Callable) -> Callable:
    new, old = _schema(op, new_version, domain), _schema(op, old_version, domain)
    extra_attrs, extra_inputs = _differences(new, old)

    def convert(node, graph):
        if -1 in extra_inputs:
            raise NotImplementedError(f"{op}-{new_version} changed its interface; onnx2torch converts up to "
                                      f"{op}-{old_version}")
        for name, default in extra_attrs.items():
            value = node.attributes.get(name, default)
            if name == "dilations" and isinstance(value, list) and all(int(v) == 1 for v in value):
                continue  # AveragePool-19: dilations of 1 are what the older version computes
            if value != default:
                raise NotImplementedError(f"attribute {name!r} of {op}-{new_version} is not supported by onnx2torch")
        for i in extra_inputs:
            if i < len(node.input_values) and node.input_values[i]:
                raise NotImplementedError(f"input {i} of {op}-{new_version} is not supported by onnx2torch")
        return old_converter(node, graph)

    return convert


def _reduce18(node: Any, graph: Any) -> Any:
    """Reduce* of opset >= 18: axes as a (constant) input."""
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import (
        OnnxMapping,
        OperationConverterResult,
        get_const_value,
    )

    keepdims = int(node.attributes.get("keepdims", 1))
    noop = int(node.attributes.get("noop_with_empty_axes", 0))
    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            value = get_const_value(node.input_values[1], graph)
        except KeyError:
            raise NotImplementedError(
                f"{node.operation_type} with axes computed in the graph is not supported") from None
        axes = [int(a) for a in (value.tolist() if hasattr(value, "tolist") else value)]
        axes = axes if isinstance(axes, list) else [axes]
    if not axes:
        if noop:
            module: Any = torch.nn.Identity()
            return OperationConverterResult(torch_module=module,
                                            onnx_mapping=OnnxMapping(inputs=(node.input_values[0],),
                                                                     outputs=node.output_values))
        axes = None
    module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes, keepdims=keepdims)
    return OperationConverterResult(
        torch_module=module, onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values))


class GlobalMaxPool(nn.Module):
    """ONNX GlobalMaxPool: the maximum over every spatial axis, kept as size-1 axes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


class Swish(nn.Module):
    """ONNX Swish-24 with ``alpha != 1``: x * sigmoid(alpha * x) (alpha = 1 converts to ``nn.SiLU``)."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.alpha * x)


class OnnxSplit18(nn.Module):
    """ONNX Split-18: pieces of the sizes given as an input, else ``num_outputs`` pieces of ceil(n / num_outputs)
    (the last one smaller), which is ``torch.split`` with that size."""

    def __init__(self, axis: int, num_outputs: int) -> None:
        super().__init__()
        self.axis, self.num_outputs = int(axis), int(num_outputs)

    def sizes(self, x: torch.Tensor, split: torch.Tensor | None = None) -> int | list[int]:
        if split is not None:
            return [int(s) for s in split.tolist()]
        return -(-int(x.shape[self.axis]) // self.num_outputs)

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return torch.split(x, self.sizes(x, split), dim=self.axis)


def _split18(node, graph):
    return _result(node, OnnxSplit18(node.attributes.get("axis", 0), len(node.output_values)))


def _result(node, module: nn.Module):
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node=node))


def _global_max_pool(node, graph):
    return _result(node, GlobalMaxPool())


def _mish(node, graph):
    return _result(node, nn.Mish())


def _gelu(node, graph):
    approximate = node.attributes.get("approximate", "none")
    approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not supported")
    return _result(node, nn.GELU(approximate=approximate))


def _swish(node, graph):
    alpha = float(node.attributes.get("alpha", 1.0))
    return _result(node, nn.SiLU() if alpha == 1.0 else Swish(alpha))


# operator -> converter, registered at every version the operator has (when onnx2torch has none)
_NEW_OPERATORS: dict[str, Callable] = {"GlobalMaxPool": _global_max_pool, "Mish": _mish, "Gelu": _gelu,
                                       "Swish": _swish}
# (operator, version) -> converter, for versions onnx2torch lacks that a delegate to the older one cannot serve
_NEW_VERSIONS: dict[tuple[str, int], Callable] = {("Split", 18): _split18}


def _has_converter(op: str, version: int, domain: str) -> bool:
    from onnx2torch.node_converters import get_converter

    try:
        get_converter(operation_type=op, version=version, domain=domain)
    except NotImplementedError:
        return False
    return True


def _versions() -> dict[str, set[int]]:
    """Every default-domain operator -> the opset versions its schema changed at."""
    from onnx import defs

    since: dict[str, set[int]] = {}
    for schema in defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx") and not schema.deprecated:
            since.setdefault(schema.name, set()).add(int(schema.since_version))
    return since


def _install_operator(op: str, versions: set[int]) -> None:
    """Register converters for the versions of ``op`` onnx2torch lacks (see the module docstring)."""
    from onnx2torch.node_converters import add_converter, get_converter

    have = {v for v in versions if _has_converter(op, v, "")}
    for v in sorted(versions - have):
        if op in _NEW_OPERATORS or (op, v) in _NEW_VERSIONS:
            add_converter(operation_type=op, version=v)(_NEW_VERSIONS.get((op, v)) or _NEW_OPERATORS[op])
            continue
        if not have:
            continue
        if op in _REDUCE and v >= 18:
            add_converter(operation_type=op, version=v)(_reduce18)
            continue
        older = [u for u in have if u < v]
        if not older:
            continue
        u = max(older)
        try:
            delegate = _delegate(op, v, u, "", get_converter(operation_type=op, version=u, domain=""))
        except Exception:  # noqa: BLE001 - schema lookup failed: leave the version unsupported
            continue
        add_converter(operation_type=op, version=v)(delegate)


def install(op_types: Iterable[str] = ()) -> None:
    """Import onnx2torch with the converters of ``op_types`` (:func:`ssa_onnx.converters.require_converters`)
    and register the missing converters with its ``add_converter``: every operator once per process, and the
    operators of a converter module imported later when a model needs it."""
    global _installed
    from ssa_torch.kinds import register_kind

    from .converters import require_converters

    late = require_converters(op_types)
    if _installed:
        since = _versions() if late else {}
        for op in sorted(late & set(since)):
            _install_operator(op, since[op])
        return
    register_kind(GlobalMaxPool, "adaptive_maxpool")
    register_kind(Swish, "swish")
    for op, versions in sorted(_versions().items()):
        _install_operator(op, versions)
    _installed = True
