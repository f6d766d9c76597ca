"""ONNX -> torch.fx conversion with onnx2torch, failures named by node."""

from __future__ import annotations

import warnings

from torch import fx

from ssa.errors import ModelLoadError, UnsupportedModelError

from .model import OnnxModel

__all__ = ["convert_model"]


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
    import onnx2torch

    from .compat import install

    install()
    name = model.info.path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
    gm.graph.eliminate_dead_code()
    gm.recompile()
    gm.eval()
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm
