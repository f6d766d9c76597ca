"""ONNX -> torch.fx conversion with onnx2torch, failures named by node."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn

from ssa.errors import ModelLoadError, UnsupportedModelError

from .model import OnnxModel

__all__ = ["convert_model", "repair_layer_norms", "failing_node"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _failing_node(proto) -> tuple[str, str, str] | None:
    """Convert node by node to find the first one onnx2torch fails on: (op, node name, error)."""
    from onnx2torch.node_converters import get_converter
    from onnx2torch.onnx_graph import OnnxGraph
    from onnx2torch.utils.safe_shape_inference import safe_shape_inference

    try:
        proto = safe_shape_inference(proto)
    except Exception:  # noqa: BLE001 - diagnose with the proto as it is
        pass
    versions = {imp.domain: int(imp.version) for imp in proto.opset_import}
    graph = OnnxGraph(proto.graph)
    for node in graph.nodes.values():
        try:
            converter = get_converter(domain=node.domain, operation_type=node.operation_type,
                                      version=versions.get(node.domain, versions.get("", 1)))
            converter(node, graph)
        except Exception as exc:  # noqa: BLE001 - any converter failure names the node
            return node.operation_type, node.name or node.unique_name, _first_line(exc)
    return None


def convert_model(model: OnnxModel) -> fx.GraphModule:
    """The onnx2torch ``fx.GraphModule`` of ``model`` (dead nodes removed, eval mode, no grads)."""
    from .compat import install

    install(model.info.op_types)  # imports onnx2torch with only the converter modules the model needs
    import onnx2torch

    # onnx2torch's Slice indexes with a list (a torch deprecation warning on every run of the module): harmless,
    # and the analysis would print it at every forward pass
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning)
    name = model.info.path
    try:
        with warnings.catch_warnings(), _shapes_already_inferred(model), _unscaled_dense_layers():
            warnings.simplefilter("ignore")
            with _uninitialised() as constructed:
                gm = onnx2torch.convert(model.proto)
            if _keeps_any(gm, constructed):  # a converter kept a parameter as constructed: the initialised one
                gm = onnx2torch.convert(model.proto)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError, ValueError, KeyError, ...
        failing = _failing_node(model.proto)
        if failing is not None:
            op, node, err = failing
            raise UnsupportedModelError(
                f"onnx2torch cannot convert operator {op} (node {node!r}): {err}; re-export without it "
                "(another opset or an equivalent op), or cut the graph before it and name taps by hand with --taps."
            ) from None
        raise ModelLoadError(f"onnx2torch failed to convert {name!r} ({type(exc).__name__}: {_first_line(exc)}); "
                             "re-export the model (e.g. another opset).") from None
    repair_layer_norms(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.eval()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm


#: the converting thread's list of the parameters of the layers constructed while converting (see _uninitialised)
_CONVERTING = threading.local()
_SKIPPABLE = (nn.modules.conv._ConvNd, nn.Linear)  # the layers whose weight and bias onnx2torch's converters replace


def _skippable(cls: type) -> None:
    """Make ``cls.reset_parameters`` skip the random initialisation in a thread inside :func:`_uninitialised` (it
    records the layer's parameters instead); everywhere else it is the original method."""
    original = cls.__dict__["reset_parameters"]
    if getattr(original, "_ssa_skippable", False):
        return

    def reset_parameters(self) -> None:
        constructed = getattr(_CONVERTING, "parameters", None)
        if constructed is None:
            original(self)
        else:
            constructed.extend(p.detach() for p in self.parameters(recurse=False))

    reset_parameters._ssa_skippable = True  # type: ignore[attr-defined]
    reset_parameters.__wrapped__ = original  # type: ignore[attr-defined]
    setattr(cls, "reset_parameters", reset_parameters)  # noqa: B010 - a method of torch's class, replaced


@contextlib.contextmanager
def _uninitialised() -> Iterator[list[torch.Tensor]]:
    """While onnx2torch converts, its convolutions and dense layers are constructed without drawing random weights
    (``kaiming_uniform_``: 0.3 s of CPU for ResNet-50's 25 M weights, 1.7 s for VGG16's 138 M), since its converters
    replace every weight and bias with the file's (``torch_module.weight.data = weights``). Only in this thread; the
    parameters as constructed are yielded (kept alive, so no other tensor takes their memory), and
    :func:`_keeps_any` checks that none is left in the converted module."""
    for cls in _SKIPPABLE:
        _skippable(cls)
    constructed: list[torch.Tensor] = []
    _CONVERTING.parameters = constructed
    try:
        yield constructed
    finally:
        _CONVERTING.parameters = None


def _keeps_any(gm: fx.GraphModule, constructed: list[torch.Tensor]) -> bool:
    """Whether a parameter of ``gm`` still lies in the memory of one that :func:`_uninitialised` left without its
    initialisation (the same storage, a view of it included; a parameter without elements has nothing to draw)."""
    left = {t.untyped_storage().data_ptr() for t in constructed if t.numel()}
    return any(p.numel() and p.untyped_storage().data_ptr() in left for p in gm.parameters())


@contextlib.contextmanager
def _shapes_already_inferred(model: OnnxModel) -> Iterator[None]:
    """onnx2torch's ``convert`` runs shape inference first (a serialisation, inference and parse: seconds for a
    large model); :func:`~ssa_onnx.model.read_onnx` ran strict inference on this proto already, so the
    converter is handed the proto as it is (IR 4 and later, where initializers need not be graph inputs: the
    converter removes them from the inputs of the proto it is given)."""
    import onnx2torch.converter as converter

    if not model.shapes_inferred or model.proto.ir_version < 4:
        yield
        return
    infer = converter.safe_shape_inference
    converter.safe_shape_inference = lambda proto, **kwargs: proto
    try:
        yield
    finally:
        converter.safe_shape_inference = infer


@contextlib.contextmanager
def _unscaled_dense_layers() -> Iterator[None]:
    """While onnx2torch converts, a ``Gemm`` that it makes an ``nn.Linear`` of and whose ``alpha`` and ``beta`` are 1
    (every exporter's default) is converted without onnx2torch's ``weights * alpha`` and ``bias * beta``: a copy of
    every dense weight (VGG16: 494 MB of its 553, 0.3-0.4 s of CPU and 120,000 page faults) whose values are the
    weight's own (``x * 1.0`` is ``x`` for every float). Any other ``Gemm`` goes to onnx2torch's converter."""
    import onnx2torch.converter as converter

    lookup = converter.get_converter

    def get_converter(*args: Any, **kwargs: Any) -> Any:
        found = lookup(*args, **kwargs)
        return _unscaled_gemm(found) if kwargs.get("operation_type") == "Gemm" and \
            kwargs.get("domain", "") in ("", "ai.onnx") else found

    converter.get_converter = get_converter
    try:
        yield
    finally:
        converter.get_converter = lookup


def _unscaled_gemm(original: Any) -> Any:
    """onnx2torch's ``Gemm`` converter (``original``) for a Gemm it makes an ``nn.Linear`` of, with ``alpha`` and
    ``beta`` 1 and floating-point weights, without multiplying them by 1 (the same layer, its weight and bias the
    initializers' tensors themselves); ``original`` for any other."""
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    def convert(node: Any, graph: Any) -> Any:
        attrs, inputs = node.attributes, node.input_values
        b_name, c_name = inputs[1], inputs[2] if len(inputs) > 2 else None
        if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA", 0) != 0 or \
                b_name not in graph.initializers or (c_name is not None and c_name not in graph.initializers):
            return original(node, graph)
        weights = graph.initializers[b_name].to_torch()
        bias = None if c_name is None else graph.initializers[c_name].to_torch()
        if not weights.is_floating_point() or (bias is not None and (bias.dim() != 1 or not bias.is_floating_point())):
            return original(node, graph)
        if attrs.get("transB", 0) == 0:
            weights = weights.T
        layer = nn.Linear(in_features=weights.shape[1], out_features=weights.shape[0], bias=bias is not None)
        with torch.no_grad():
            layer.weight.data = weights
            if bias is not None:
                layer.bias.data = bias
        return OperationConverterResult(torch_module=layer,
                                        onnx_mapping=OnnxMapping(inputs=(inputs[0],), outputs=node.output_values))

    return convert


def repair_layer_norms(gm: fx.GraphModule) -> int:
    """Give every ``nn.LayerNorm`` whose normalised shape is unknown (0) its scale's shape; returns how many.

    onnx2torch reads LayerNormalization's normalised shape from the input's inferred shape, which is 0
    where a computed Reshape left it symbolic (Swin, MaxViT, MobileViT exports). ONNX's scale has
    the normalised shape itself (``input.shape[axis:]``), so it is the shape to use; the parity check
    against onnxruntime verifies the result.
    """
    import torch.nn as nn

    fixed = 0
    for mod in gm.modules():
        if isinstance(mod, nn.LayerNorm) and 0 in tuple(mod.normalized_shape) and mod.weight is not None \
                and mod.weight.dim() == len(mod.normalized_shape):
            mod.normalized_shape = tuple(int(d) for d in mod.weight.shape)
            fixed += 1
    return fixed


def failing_node(gm: fx.GraphModule, x) -> tuple[str, str, str] | None:
    """Run ``gm`` node by node on ``x``: (node name, what it computes, error) of the first node that fails."""
    import torch
    from ssa_torch.kinds import display_name, target_name

    class _Run(fx.Interpreter):
        node: fx.Node | None = None

        def run_node(self, n):
            self.node = n
            return super().run_node(n)

    run = _Run(gm)
    try:
        with torch.no_grad():
            run.run(x)
    except Exception as exc:  # noqa: BLE001 - any failure inside the converted graph is named
        n = run.node
        if n is None:
            return None
        return display_name(n), target_name(n, dict(gm.named_modules())), _first_line(exc)
    return None
