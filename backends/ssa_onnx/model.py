"""Reading and validating ONNX files (onnx checker, shape inference, one input, one output).

:func:`read_onnx` returns an :class:`OnnxModel`: the validated ``ModelProto`` prepared
for analysis (only the chosen output kept, a fixed batch size made dynamic) and an
:class:`OnnxInfo` describing its input and outputs. Every failure is an
:mod:`ssa.errors` exception with a one-line message naming the problem and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import InvalidInputError, ModelLoadError, UnsupportedModelError

from .pads import explicit_auto_pads, split_asymmetric_average_pools, split_asymmetric_transposed_convs

__all__ = ["OnnxModel", "OnnxInfo", "TensorInfo", "read_onnx", "input_shape_of", "check_converters",
           "fold_constant_identities", "drop_omitted_inputs", "drop_reshape_allowzero"]

_TWO_GB = 2 * 1024**3


@dataclass(frozen=True)
class TensorInfo:
    """An input or output of the ONNX graph.

    name : the graph's value name. shape : dimensions, None where dynamic. dtype : numpy dtype name.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def shape_text(self) -> str:
        return "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"


@dataclass(frozen=True)
class OnnxInfo:
    """What the file says about itself.

    path : the file. opset : the default-domain opset. producer : e.g. "pytorch 2.14", "tf2onnx 1.16".
    input : the image input. outputs : every graph output (before choosing one).
    output_index : the chosen output. layout : "nchw", "nhwc" or None (unclear) read from the input shape.
    fixed_batch : the batch size the file fixed (made dynamic for the analysis), or None.
    op_types : how many nodes of each operator type the graph has.
    """

    path: str
    opset: int
    producer: str
    input: TensorInfo
    outputs: tuple[TensorInfo, ...]
    output_index: int
    layout: str | None
    fixed_batch: int | None
    op_types: dict[str, int] = field(default_factory=dict)

    @property
    def output(self) -> TensorInfo:
        return self.outputs[self.output_index]


@dataclass(frozen=True)
class OnnxModel:
    """A validated ONNX model prepared for conversion and onnxruntime (see :func:`read_onnx`)."""

    proto: Any  # onnx.ModelProto
    info: OnnxInfo
    big: bool = False  # 2 GB or more (protobuf's limit): onnxruntime and shape inference go through the file
    shapes_inferred: bool = False  # ``proto`` has been through strict shape inference (onnx2torch need not redo it)
    #: onnxruntime may load the file itself: ``proto`` is the file's model as read (inferred shapes added at most),
    #: or differs from it only by :func:`fold_constant_identities` (an Identity of a weight is that weight, in
    #: onnxruntime as in the file)
    as_file: bool = False

    def session_source(self) -> bytes | str:
        """What onnxruntime loads: the file itself for models over 2 GB and for models that compute in onnxruntime
        what the file does (:attr:`as_file`; no serialisation: 1.5 s for VGG16's 553 MB, and the session built
        from the file while torch is imported is used, :mod:`ssa_onnx.prefetch`), else the serialized proto."""
        if self.big or self.as_file:
            return self.info.path
        return self.proto.SerializeToString()


def _dims(value_info) -> tuple[int | None, ...]:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return ()
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in t.tensor_type.shape.dim)


def _dtype(value_info) -> str:
    from onnx import helper

    t = value_info.type
    if not t.HasField("tensor_type"):
        return "non-tensor"
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)))
    except (KeyError, TypeError, ValueError):
        return f"onnx type {t.tensor_type.elem_type}"


def _tensor_info(vi) -> TensorInfo:
    return TensorInfo(vi.name, _dims(vi), _dtype(vi))


def _layout(shape: tuple[int | None, ...]) -> str | None:
    if len(shape) != 4:
        return None
    c1, c3 = shape[1] in (1, 3), shape[3] in (1, 3)
    if c1 and not c3:
        return "nchw"
    if c3 and not c1:
        return "nhwc"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _load_proto(path: Path):
    return _read_proto(path)[0]


def _read_proto(path: Path):
    """``(proto, data)``: the model as ``onnx.load`` reads it (external data loaded), and the file's bytes when they
    are the whole model (no tensor kept outside), else None: the checker and shape inference then take the bytes
    instead of serialising the proto again (a third of a second for ResNet-50)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        data: bytes | None = None
        if path.suffix.lower() == ".onnx":  # protobuf, as onnx.load takes this suffix
            data = path.read_bytes()
            proto = onnx.load_model_from_string(data)
            if _has_external_data(proto):
                data = None
                onnx.load_external_data_for_model(proto, os.path.dirname(str(path)))  # what onnx.load(path) does
        else:
            proto = onnx.load(str(path), load_external_data=True)
    except DecodeError:
        raise ModelLoadError(
            f"{path.name!r} is not a readable ONNX file (protobuf decoding failed: truncated or not ONNX); "
            "re-export or re-download it."
        ) from None
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        missing = _missing_external_data(path)
        if missing is not None:
            raise ModelLoadError(
                f"{path.name!r} keeps its weights in the external data file {missing.name!r}, which is missing (looked "
                f"for {str(missing)!r}); put that file next to the model, or re-export the model with the weights "
                "inside.") from None
        raise ModelLoadError(
            f"cannot read {path.name!r} as ONNX ({_first_line(exc)}); re-export or re-download it.") from None
    if proto.ir_version < 3 or len(proto.graph.node) == 0 or not proto.opset_import:
        raise ModelLoadError(
            f"{path.name!r} is not an ONNX model (no graph, IR version {proto.ir_version}); "
            "pass an .onnx file written by an ONNX exporter."
        )
    return proto, data


def _has_external_data(proto) -> bool:
    """Whether any tensor of the model (initializers, node attributes, subgraphs) keeps its data in another file."""
    from onnx.external_data_helper import uses_external_data

    def graph(g) -> bool:
        return any(uses_external_data(t) for t in g.initializer) or any(
            uses_external_data(t) for n in g.node for a in n.attribute for t in (a.t, *a.tensors)) or any(
            graph(sub) for n in g.node for a in n.attribute for sub in (a.g, *a.graphs))

    return any(uses_external_data(t) for f in proto.functions for n in f.node for a in n.attribute
               for t in (a.t, *a.tensors)) or graph(proto.graph)


def _missing_external_data(path: Path) -> Path | None:
    """The first external data file the model at ``path`` names that does not exist (None: none is missing)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not readable even without its data: the caller says so
        return None
    for tensor in proto.graph.initializer:  # where exporters put the weights they write outside
        if uses_external_data(tensor):
            where = path.resolve().parent / ExternalDataInfo(tensor).location
            if not where.is_file():
                return where
    return None


def _check(proto, path: Path, big: bool, data: bytes | None = None) -> None:
    """The ONNX checker on the model (``data``: its serialized bytes, when at hand)."""
    import onnx

    try:
        if not big:
            onnx.checker.check_model(data if data is not None else proto)
        else:
            onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(
            f"{path.name!r} fails the ONNX checker ({_first_line(exc)}); re-export the model or fix the graph."
        ) from None


def _opset(proto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def check_converters(proto, path_name: str) -> None:
    """Refuse, naming the node, when onnx2torch has no converter for an operator of the graph."""
    from .compat import install

    install({node.op_type for node in proto.graph.node})  # onnx2torch, with the converters of these ops
    from onnx2torch.node_converters import get_converter

    versions = {imp.domain: int(imp.version) for imp in proto.opset_import}
    missing: list[tuple[str, str, str]] = []
    for i, node in enumerate(proto.graph.node):
        domain = node.domain if node.domain != "ai.onnx" else ""
        try:
            get_converter(operation_type=node.op_type, version=versions.get(node.domain, versions.get("", 1)),
                          domain=domain)
        except NotImplementedError:
            missing.append((node.op_type, node.name or f"#{i}", domain))
    if missing:
        op, name, domain = missing[0]
        where = f"{domain}::{op}" if domain else op
        others = sorted({f"{d}::{o}" if d else o for o, _, d in missing[1:]} - {where})
        listed = ": " + ", ".join(others) if others else ""
        more = f" (and {len(missing) - 1} more node(s){listed})" if len(missing) > 1 else ""
        raise UnsupportedModelError(
            f"operator {where} (node {name!r}) of {path_name!r} cannot be converted by onnx2torch{more}; "
            "re-export without it (another opset or an equivalent op), or cut the graph before it "
            "(onnx.utils.extract_model) and name taps by hand with --taps."
        )


#: initializers with more elements than this are given to shape inference as typed inputs, without their values
_LIGHT_ELEMENTS = 1024


def _without_weights(proto):
    """A copy of ``proto`` whose initializers of more than :data:`_LIGHT_ELEMENTS` elements are graph inputs of
    their type and shape (no values), or None where that could change what inference finds (subgraphs, functions,
    sparse initializers). Shape inference reads only small constants' values (shapes, axes, pads), so it finds the
    same shapes on the copy, without serialising and parsing the weights (2.0 -> 0.6 s CPU for VGG16's 553 MB)."""
    import onnx
    from onnx import helper

    g = proto.graph
    if proto.functions or g.sparse_initializer or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                                        for n in g.node for a in n.attribute):
        return None
    def repeated(fd) -> bool:  # protobuf 6 has ``is_repeated``, older ones ``label``
        return bool(fd.is_repeated) if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED

    light = onnx.ModelProto()
    for fd, value in proto.ListFields():
        if fd.name != "graph":
            if repeated(fd):
                getattr(light, fd.name).extend(value)
            elif fd.message_type is not None:
                getattr(light, fd.name).CopyFrom(value)
            else:
                setattr(light, fd.name, value)
    lg = light.graph
    for fd, value in g.ListFields():
        if fd.name != "initializer":
            if repeated(fd):
                getattr(lg, fd.name).extend(value)
            else:
                setattr(lg, fd.name, value)
    inputs = {vi.name for vi in g.input}
    for t in g.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n <= _LIGHT_ELEMENTS:
            lg.initializer.append(t)
        elif t.name not in inputs:
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


def _infer_shapes(proto, path: Path, big: bool, data: bytes | None = None):
    """Strict shape inference: on the model without its large weights (:func:`_without_weights`), the inferred
    value infos and outputs then copied into ``proto``; else on ``data`` (the serialized bytes of ``proto``, when
    at hand) or ``proto``. ``tests/test_onnx_models.py`` checks that both give the same model, byte for byte."""
    import onnx

    if big:
        return proto  # onnx2torch runs shape inference through a file for these
    try:
        light = _without_weights(proto)
        if light is None:
            return onnx.shape_inference.infer_shapes(data if data is not None else proto, strict_mode=True)
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True).graph
        g = proto.graph
        del g.value_info[:]
        g.value_info.extend(inferred.value_info)
        del g.output[:]
        g.output.extend(inferred.output)
        return proto
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(
            f"ONNX shape inference fails on {path.name!r} ({_first_line(exc)}); the graph is "
            "inconsistent: re-export it."
        ) from None


def fold_constant_identities(proto) -> int:
    """Remove Identity nodes that only rename an initializer; their consumers read the initializer.

    torch's exporter writes shared weights (identical tensors) once and Identity nodes for the other
    uses; onnx2torch needs conv and dense weights to be initializers. Returns how many were removed.
    """
    initializers = {t.name for t in proto.graph.initializer}
    outputs = {o.name for o in proto.graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in proto.graph.node:
        src = node.input[0] if len(node.input) == 1 else ""
        src = rename.get(src, src)
        if node.op_type == "Identity" and node.domain in ("", "ai.onnx") and src in initializers \
                and node.output[0] not in outputs:
            rename[node.output[0]] = src
            continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del proto.graph.node[:]
    proto.graph.node.extend(keep)
    return len(rename)


def drop_omitted_inputs(proto) -> int:
    """Drop the trailing omitted optional inputs (empty names) of every node, as ONNX allows.

    torch's exporter writes ``Clip(x, min, "")`` for a clamp with a minimum only (``F.normalize`` in Swin v2)
    and ``Clip(x, "", max)`` for a maximum only; onnx2torch takes the empty name for a tensor computed at run
    time and refuses the node. The first loses its empty input, the second becomes ``Min(x, max)`` (the same
    values). Returns how many inputs were dropped.
    """
    dropped = 0
    for node in proto.graph.node:
        while len(node.input) and node.input[-1] == "":
            node.input.pop()
            dropped += 1
        if node.op_type == "Clip" and node.domain in ("", "ai.onnx") and len(node.input) == 3 \
                and node.input[1] == "":
            # a maximum only (Swin v2's torch.clamp(logit_scale, max=...)): Clip(x, "", hi) is Min(x, hi)
            node.op_type = "Min"
            del node.input[1]
            dropped += 1
    return dropped


def drop_reshape_allowzero(proto) -> int:
    """Drop ``allowzero=1`` from every Reshape whose target shape has no literal zero; returns how many.

    torch's dynamo exporter writes every Reshape with ``allowzero=1`` (a 0 in the target shape is a size,
    not "copy this axis"), which onnx2torch refuses. A reshape of a tensor that has elements cannot have a
    0 in its target shape, so for such a tensor both readings agree: the attribute is dropped unless the
    shape is a constant holding a zero (that node is still refused, by name). The parity check against
    onnxruntime verifies the result.
    """
    from onnx import numpy_helper

    constants = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    dropped = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        flags = [a for a in node.attribute if a.name == "allowzero" and a.i == 1]
        shape = constants.get(node.input[1])
        if not flags or (shape is not None and (numpy_helper.to_array(shape) == 0).any()):
            continue
        node.attribute.remove(flags[0])
        dropped += 1
    return dropped


def read_onnx(path: str | os.PathLike, *, output_index: int | None = None) -> OnnxModel:
    """Load, validate and prepare an ONNX file for analysis.

    Checks: the file decodes, passes ``onnx.checker`` and strict shape inference, every
    operator has an onnx2torch converter, it has exactly one (non-initializer) input, and one
    output or ``output_index`` choosing one. The returned proto keeps only the chosen output,
    and a fixed batch dimension is made dynamic (``fixed_batch`` records it).
    """
    import onnx

    p = Path(os.fspath(path))
    if not p.is_file():
        raise ModelLoadError(f"ONNX file {str(p)!r} does not exist; check the path.")
    proto, data = _read_proto(p)
    # once: protobuf computes ByteSize anew at each call (0.2 s for ResNet-50); the file's size where it is the model
    big = (len(data) if data is not None else proto.ByteSize()) >= _TWO_GB
    _check(proto, p, big, data)

    initializers = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        listed = ", ".join(f"{vi.name} {_tensor_info(vi).shape_text()}" for vi in inputs) or "none"
        raise UnsupportedModelError(
            f"{p.name!r} has {len(inputs)} inputs ({listed}), expected one image input; re-export it with a single "
            "image input (fix the others as constants)."
        )
    outputs = tuple(_tensor_info(vi) for vi in proto.graph.output)
    if output_index is not None:
        if isinstance(output_index, bool) or not isinstance(output_index, (int, np.integer)):
            raise InvalidInputError(f"output_index must be an integer, got {output_index!r}.")
        if not 0 <= int(output_index) < len(outputs):
            raise InvalidInputError(
                f"output_index must be in [0, {len(outputs) - 1}] ({p.name!r} has {len(outputs)} output(s)), got "
                f"{output_index}."
            )
        index = int(output_index)
    elif len(outputs) == 1:
        index = 0
    else:
        listed = ", ".join(f"{i}: {o.name} {o.shape_text()}" for i, o in enumerate(outputs))
        raise UnsupportedModelError(
            f"{p.name!r} has {len(outputs)} outputs ({listed}); choose the class scores with --output-index N "
            "(Python: output_index=N)."
        )

    # Identity nodes of weights folded: onnx2torch needs the weights as initializers; onnxruntime may still run the
    # file itself, where such a node passes its weight on unchanged (the other rewrites change what it would run)
    renamed = fold_constant_identities(proto)
    changed = drop_omitted_inputs(proto) + drop_reshape_allowzero(proto) + explicit_auto_pads(proto, p.name)
    changed += split_asymmetric_average_pools(proto) + split_asymmetric_transposed_convs(proto)
    check_converters(proto, p.name)
    opset = _opset(proto)
    op_types: dict[str, int] = {}
    for node in proto.graph.node:
        op_types[node.op_type] = op_types.get(node.op_type, 0) + 1

    # keep only the chosen output; make a fixed batch size dynamic (both onnxruntime and the
    # converted module then take any batch; a Reshape that bakes the batch in is caught by the parity check)
    chosen = proto.graph.output[index]
    if len(proto.graph.output) > 1:
        changed += 1
        keep = onnx.ValueInfoProto()
        keep.CopyFrom(chosen)
        del proto.graph.output[:]
        proto.graph.output.append(keep)
    image_input = inputs[0]
    fixed_batch = None
    in_dims = image_input.type.tensor_type.shape.dim if image_input.type.HasField("tensor_type") else []
    if len(in_dims) >= 2 and in_dims[0].HasField("dim_value") and in_dims[0].dim_value > 0:
        fixed_batch = int(in_dims[0].dim_value)
        in_dims[0].dim_param = "batch"
        out_dims = proto.graph.output[0].type.tensor_type.shape.dim
        if len(out_dims) >= 1 and out_dims[0].HasField("dim_value") and out_dims[0].dim_value == fixed_batch:
            out_dims[0].dim_param = "batch"
        del proto.graph.value_info[:]
        changed += 1
    proto = _infer_shapes(proto, p, big, data if not (changed or renamed) else None)  # the file's bytes if as read

    # report the input and the chosen output as the analysis sees them (batch axis dynamic)
    outputs = tuple(_tensor_info(proto.graph.output[0]) if i == index else o for i, o in enumerate(outputs))
    image_info = _tensor_info(image_input)
    info = OnnxInfo(
        path=str(p), opset=opset,
        producer=" ".join(x for x in (proto.producer_name, proto.producer_version) if x) or "unknown",
        input=TensorInfo(image_info.name, (None, *image_info.shape[1:]) if image_info.shape else (), image_info.dtype),
        outputs=outputs, output_index=index, layout=_layout(image_info.shape), fixed_batch=fixed_batch,
        op_types=op_types,
    )
    return OnnxModel(proto, info, big=big, shapes_inferred=not big, as_file=not changed)  # renames: as the file


def input_shape_of(path: str | os.PathLike) -> tuple[int | None, ...]:
    """The image input's shape declared by an ONNX file (None for dynamic dimensions).

    Cheap (no conversion); meant for :func:`ssa.io.preprocess.resolve_preprocess`'s ``input_shape``.
    """

    p = Path(os.fspath(path))
    if not p.is_file():
        raise ModelLoadError(f"ONNX file {str(p)!r} does not exist; check the path.")
    proto = _load_proto(p)
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"{p.name!r} has {len(inputs)} inputs, expected one image input; re-export it "
                                    "with a single image input.")
    dims = _dims(inputs[0])
    return (None, *dims[1:]) if dims else dims
