"""ONNX ``auto_pad=SAME_UPPER | SAME_LOWER`` written out as the explicit ``pads`` it stands for.

Keras models exported by tf2onnx and PaddlePaddle exports pad their convolutions and poolings with
``auto_pad="SAME_UPPER"`` (or ``SAME_LOWER``): the output has ``ceil(input / stride)`` positions per spatial axis,
and the padding this needs is split between the two ends of the axis, the odd one at the end (UPPER) or at the
start (LOWER). onnx2torch refuses both. :func:`explicit_auto_pads` computes the pads from the input's static
spatial sizes (ONNX shape inference) as the ONNX operator definitions do and writes them into the node
(``auto_pad`` removed). Symmetric pads become the layer's own padding; asymmetric ones (a stride 2 on an even size)
an explicit pad before the layer, which the canonical form absorbs into a convolution (zero pad) or keeps before a
max pooling (a pad of -inf), so such layers still run by the closed form. Asymmetric pads that onnx2torch refuses,
from SAME or written so, are split into ops it converts: an ``AveragePool``'s (:func:`split_asymmetric_average_pools`)
and a ``ConvTranspose``'s (:func:`split_asymmetric_transposed_convs`). ``tests/test_onnx_auto_pad.py`` checks the
results against onnxruntime on the file as written.
"""

from __future__ import annotations

from typing import Any

from ssa.errors import UnsupportedModelError

__all__ = ["explicit_auto_pads", "same_pads", "split_asymmetric_average_pools", "split_asymmetric_transposed_convs"]

_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")
_SAME = ("SAME_UPPER", "SAME_LOWER")


def same_pads(mode: str, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int],
              transposed: bool = False, output_padding: list[int] | None = None) -> list[int] | None:
    """ONNX's ``pads`` (all starts, then all ends) for ``auto_pad=mode`` on an input of spatial ``sizes``.

    A convolution or pooling keeps ``ceil(size / stride)`` outputs; a transposed convolution makes
    ``size * stride``. None where the padding would be negative (a transposed convolution whose stride exceeds
    its kernel's extent), which explicit pads cannot express.
    """
    heads: list[int] = []
    tails: list[int] = []
    for i, size in enumerate(sizes):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if transposed:
            extra = (output_padding or [0] * len(sizes))[i]
            total = strides[i] * (size - 1) + extra + extent - size * strides[i]
            if total < 0:
                return None
        else:
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + extent - size)
        head = total // 2 if mode == "SAME_UPPER" else total - total // 2
        heads.append(head)
        tails.append(total - head)
    return heads + tails


def _attr(node, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _shapes(proto) -> dict[str, tuple[int | None, ...]]:
    """Every value's shape that ONNX shape inference finds (None where a size is not fixed)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - no shapes known: every SAME node is refused below, by name
        inferred = proto
    out: dict[str, tuple[int | None, ...]] = {}
    g = inferred.graph
    for vi in (*g.input, *g.value_info, *g.output):
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape"):
            out[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                                 for d in t.shape.dim)
    for init in g.initializer:
        out[init.name] = tuple(int(d) for d in init.dims)
    return out


def _image_input(proto) -> str:
    """The name of the graph's first input that is not an initializer."""
    inits = {t.name for t in proto.graph.initializer}
    return next((vi.name for vi in proto.graph.input if vi.name not in inits), "INPUT")


def _runtime_pads(proto, node, mode: str, kernel: list[int], strides: list[int], fill: float | None,
                  base: str) -> list[Any]:
    """Nodes that pad ``node``'s input as ``auto_pad=mode`` asks, the pads computed from its shape at run time
    (``Shape``, integer arithmetic, ``Pad``); ``node`` then reads the padded tensor. The canonical form folds the
    pads to constants at the size of the images analysed (``ssa_onnx.canon``: a Pad whose pads are the same at two
    batch sizes)."""
    import numpy as np
    from onnx import helper, numpy_helper

    rank = len(kernel)
    consts = {"starts": [2], "ends": [2 + rank], "s": strides, "s1": [s - 1 for s in strides], "k": kernel,
              "one": [1] * rank, "zero": [0] * rank, "two": [2] * rank, "batch": [0, 0]}
    for key, values in consts.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}/{key}"))
    if fill is not None:
        proto.graph.initializer.append(numpy_helper.from_array(np.array(fill, np.float32), f"{base}/fill"))

    def op(kind: str, inputs: list[str], out: str, **attrs: Any) -> Any:
        return helper.make_node(kind, [i if i.startswith(base) or i == node.input[0] else f"{base}/{i}"
                                       for i in inputs], [f"{base}/{out}"], name=f"{base}/{out}", **attrs)

    half_at = ("head", "tail") if mode == "SAME_UPPER" else ("tail", "head")  # the odd pad at the end for UPPER
    nodes = [op("Shape", [node.input[0]], "shape"), op("Slice", [f"{base}/shape", "starts", "ends"], "size"),
             op("Add", [f"{base}/size", "s1"], "a"), op("Div", [f"{base}/a", "s"], "out"),  # ceil(size / stride)
             op("Sub", [f"{base}/out", "one"], "b"), op("Mul", [f"{base}/b", "s"], "c"),
             op("Add", [f"{base}/c", "k"], "d"), op("Sub", [f"{base}/d", f"{base}/size"], "e"),
             op("Max", [f"{base}/e", "zero"], "total"), op("Div", [f"{base}/total", "two"], half_at[0]),
             op("Sub", [f"{base}/total", f"{base}/{half_at[0]}"], half_at[1]),
             op("Concat", ["batch", f"{base}/head", "batch", f"{base}/tail"], "pads", axis=0),
             op("Pad", [node.input[0], f"{base}/pads"] + ([f"{base}/fill"] if fill is not None else []), "padded",
                mode="constant")]
    node.input[0] = f"{base}/padded"
    keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
    del node.attribute[:]
    node.attribute.extend(keep)
    return nodes


def explicit_auto_pads(proto, path_name: str) -> int:
    """Write every Conv / ConvTranspose / MaxPool / AveragePool with ``auto_pad=SAME_*`` with explicit ``pads``.

    Returns how many nodes were rewritten. On an input whose spatial size is not fixed (tf2onnx writes SAME for a
    Keras model with input size ``None``), a Conv or MaxPool gets its pads computed at run time
    (:func:`_runtime_pads`); any other such node is refused in one line naming the node and its op.
    """
    from onnx import helper

    nodes = [n for n in proto.graph.node if n.op_type in _OPS and n.domain in ("", "ai.onnx")
             and _attr(n, "auto_pad", b"NOTSET") in (b"SAME_UPPER", b"SAME_LOWER")]
    if not nodes:
        return 0
    shapes = _shapes(proto)
    opset = next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")), 0)
    before: dict[int, list[Any]] = {}
    for i, node in enumerate(nodes):
        mode = _attr(node, "auto_pad").decode()
        shape = shapes.get(node.input[0])
        name = node.name or f"#{i}"
        kernel = _attr(node, "kernel_shape")
        if kernel is None and len(node.input) > 1:
            w = shapes.get(node.input[1])
            kernel = list(w[2:]) if w is not None and None not in w[2:] else None
        if kernel is None or (shape is not None and len(kernel) != len(shape) - 2):
            raise UnsupportedModelError(
                f"operator {node.op_type} (node {name!r}) of {path_name!r} pads with auto_pad={mode}, but its "
                "kernel shape is not known (no kernel_shape attribute, weights computed in the graph); re-export "
                "with explicit pads.")
        rank = len(kernel)
        dilations = list(_attr(node, "dilations", [1] * rank))
        if any(d != 1 for d in dilations):
            raise UnsupportedModelError(
                f"operator {node.op_type} (node {name!r}) of {path_name!r} pads with auto_pad={mode} and dilations "
                f"{dilations}, whose pads ONNX and onnxruntime define differently (onnxruntime refuses such convs and "
                "pads such poolings as if undilated); re-export with explicit pads.")
        strides = list(_attr(node, "strides", [1] * rank))
        if shape is None or len(shape) < 3 or any(s is None for s in shape[2:]):
            if node.op_type in ("Conv", "MaxPool") and opset >= 12:
                fill = float("-inf") if node.op_type == "MaxPool" else None
                before[id(node)] = _runtime_pads(proto, node, mode, list(kernel), strides, fill, f"{name}/same")
                continue
            shown = "unknown" if shape is None else "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            image = _image_input(proto)
            raise UnsupportedModelError(
                f"operator {node.op_type} (node {name!r}) of {path_name!r} pads with auto_pad={mode}, but its input's "
                f"spatial size is not fixed (shape {shown}), and the pads depend on it; fix the image size in the "
                f"file (python -m onnxruntime.tools.make_dynamic_shape_fixed --input_name {image} --input_shape "
                f"1,... IN.onnx OUT.onnx, the batch size is made dynamic again when read) or re-export with a "
                "static height and width.")
        sizes = [int(s) for s in shape[2:] if s is not None]
        transposed = node.op_type == "ConvTranspose"
        if transposed and _attr(node, "output_shape") is not None:
            continue  # the output shape decides the pads: left as it is (onnx2torch refuses it, by name)
        pads = same_pads(mode, sizes, list(kernel), strides, dilations, transposed,
                         list(_attr(node, "output_padding", [0] * rank)))
        if pads is None:
            continue  # a negative padding: left as it is (onnx2torch refuses it, by name)
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(keep)
        node.attribute.append(helper.make_attribute("pads", pads))
        before[id(node)] = []
    if any(before.values()):
        order = [n for node in proto.graph.node for n in (*before.get(id(node), []), node)]
        del proto.graph.node[:]
        proto.graph.node.extend(order)
    return len(before)


def _window_counts(size: int, kernel: int, stride: int, head: int, tail: int) -> list[int]:
    """Per output position of a pooling along one axis: how many of its window's positions read the input."""
    out = (size + head + tail - kernel) // stride + 1
    return [min(o * stride - head + kernel, size) - max(o * stride - head, 0) for o in range(out)]


def split_asymmetric_average_pools(proto) -> int:
    """Write every ``AveragePool`` with asymmetric pads as ``Pad`` (zeros), the pooling without pads counting every
    position, and, where padding is not counted (``count_include_pad=0``, the default), a ``Mul`` by the constant
    ``kernel size / positions read`` of each output (what onnx2torch refuses: "AvgPool with non symmetrical
    padding"). Keras's ``AveragePooling2D(padding="same")`` with a stride 2 on an even size (NASNet) exports so.
    The pooling keeps the node's name. Left as they are (onnx2torch then refuses them, by name): ``ceil_mode=1``,
    opsets before 11, inputs that are not float32 or whose spatial size is not fixed. Returns how many were split.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    opset = next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")), 0)

    def asymmetric(n) -> bool:
        pads = list(_attr(n, "pads", []))
        half = len(pads) // 2
        return (n.op_type == "AveragePool" and n.domain in ("", "ai.onnx") and pads[:half] != pads[half:]
                and _attr(n, "auto_pad", b"NOTSET") == b"NOTSET" and not _attr(n, "ceil_mode", 0))

    if opset < 11 or not any(asymmetric(n) for n in proto.graph.node):
        return 0
    image = proto.graph.input[0].type.tensor_type.elem_type if proto.graph.input else 0
    if image != TensorProto.FLOAT:
        return 0
    shapes = _shapes(proto)
    nodes, split = [], 0
    for i, node in enumerate(proto.graph.node):
        shape = shapes.get(node.input[0]) if asymmetric(node) else None
        if shape is None or len(shape) < 3 or any(s is None for s in shape[2:]):
            nodes.append(node)
            continue
        sizes = [int(s) for s in shape[2:] if s is not None]
        rank = len(sizes)
        pads = [int(p) for p in _attr(node, "pads")]
        kernel = [int(k) for k in _attr(node, "kernel_shape")]
        strides = [int(s) for s in _attr(node, "strides", [1] * rank)]
        base = node.name or f"AveragePool_{i}"
        proto.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:rank], 0, 0, *pads[rank:]], dtype=np.int64), f"{base}/pads"))
        nodes.append(helper.make_node("Pad", [node.input[0], f"{base}/pads"], [f"{base}/padded"], mode="constant",
                                      name=f"{base}/Pad"))
        counted = bool(_attr(node, "count_include_pad", 0))
        pooled = node.output[0] if counted else f"{base}/pooled"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if a.name not in ("pads", "count_include_pad", "auto_pad")}
        nodes.append(helper.make_node("AveragePool", [f"{base}/padded"], [pooled], name=node.name,
                                      count_include_pad=1, **attrs))
        if not counted:
            counts = np.ones([1, 1], dtype=np.float64)
            for a in range(rank):
                per = np.array(_window_counts(sizes[a], kernel[a], strides[a], pads[a], pads[rank + a]), np.float64)
                counts = counts[..., None] * per
            scale = (float(np.prod(kernel)) / counts).astype(np.float32)
            proto.graph.initializer.append(numpy_helper.from_array(scale, f"{base}/count"))
            nodes.append(helper.make_node("Mul", [pooled, f"{base}/count"], [node.output[0]], name=f"{base}/Mul"))
        split += 1
    if split:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return split


def split_asymmetric_transposed_convs(proto) -> int:
    """Write every ``ConvTranspose`` with asymmetric pads (SAME with kernel 3, stride 2: Keras's
    ``Conv2DTranspose(padding="same")``) as the ``ConvTranspose`` with the smaller pad of each axis on both sides and
    a ``Slice`` cropping the rest (a transposed conv's pads crop its output), which onnx2torch converts (it refuses
    asymmetric pads). The transposed conv keeps the node's name. Left as they are: opsets before 10 (a Slice with
    attributes), and nodes with ``output_shape``. Returns how many were split."""
    import numpy as np
    from onnx import helper, numpy_helper

    opset = next((int(i.version) for i in proto.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        return 0
    nodes, split = [], 0
    for i, node in enumerate(proto.graph.node):
        pads = [int(p) for p in _attr(node, "pads", [])]
        rank = len(pads) // 2
        if (node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx") or pads[:rank] == pads[rank:]
                or _attr(node, "auto_pad", b"NOTSET") != b"NOTSET" or _attr(node, "output_shape") is not None):
            nodes.append(node)
            continue
        both = [min(pads[a], pads[rank + a]) for a in range(rank)]
        axes = [a for a in range(rank) if pads[a] != pads[rank + a]]
        starts = [pads[a] - both[a] for a in axes]
        ends = [-(pads[rank + a] - both[a]) or np.iinfo(np.int64).max for a in axes]
        base = node.name or f"ConvTranspose_{i}"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "pads"}
        nodes.append(helper.make_node("ConvTranspose", list(node.input), [f"{base}/uncropped"], name=node.name,
                                      pads=both + both, **attrs))
        for what, values in (("starts", starts), ("ends", ends), ("axes", [2 + a for a in axes])):
            proto.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), f"{base}/{what}"))
        nodes.append(helper.make_node("Slice", [f"{base}/uncropped", f"{base}/starts", f"{base}/ends", f"{base}/axes"],
                                      [node.output[0]], name=f"{base}/crop"))
        split += 1
    if split:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return split
