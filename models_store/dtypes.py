"""Element types: what cnnvis runs, the float32 upcast of float16/bfloat16 models, refusals.

cnnvis computes in float32 (preprocessing, the companion graph, every method). A model whose
graph holds float16 or bfloat16 tensors — a ``model.half()`` export, or mixed precision with
``Cast`` nodes between float32 and float16 — is converted to float32 by :func:`upcast`, a pure
function of the ModelProto (onnx has no converter in this direction):

* initializers (dense and sparse) and every tensor-valued attribute (``Constant``'s ``value``,
  ``ConstantOfShape``'s ``value``, ...) are converted to float32, in graphs, subgraphs and
  local functions;
* ``Cast(to=float16|bfloat16)`` becomes ``Cast(to=float)`` (a no-op cast), and the ``dtype``
  attributes of the generator ops (``RandomNormal``, ``EyeLike``, ...) likewise;
* the element types of graph inputs, outputs and value_info are rewritten to float32.

Names and shapes are unchanged, so layer names, the card and every derived graph refer to the
same tensors. Everything else a classifier could hold that cnnvis cannot run is refused at
registration by :func:`check_element_types` (quantized operators, float8/float4/int4 tensors,
complex numbers, image inputs that are not float32/float16/uint8).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

from models_store.errors import InvalidModel

__all__ = [
    "LOW_PRECISION",
    "UPCAST_VERSION",
    "check_element_types",
    "needs_upcast",
    "upcast",
]

UPCAST_VERSION = "1"  # bump when upcast() can produce a different graph (derived-graph keys)

LOW_PRECISION = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
_GENERATORS_DTYPE = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "EyeLike",
    "Multinomial",
    "Bernoulli",
}
QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}
_REFUSED_TYPES = {
    getattr(TensorProto, name)
    for name in (
        "COMPLEX64",
        "COMPLEX128",
        "FLOAT8E4M3FN",
        "FLOAT8E4M3FNUZ",
        "FLOAT8E5M2",
        "FLOAT8E5M2FNUZ",
        "FLOAT8E8M0",
        "FLOAT4E2M1",
        "FLOAT6E2M3",
        "FLOAT6E3M2",
        "UINT4",
        "INT4",
        "UINT2",
        "INT2",
    )
    if hasattr(TensorProto, name)
}
_IMAGE_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8}


def _type_name(elem_type: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"element type {elem_type}"


# ---- walking a model ------------------------------------------------------------------------


def _subgraphs(nodes: Iterator[onnx.NodeProto] | list[onnx.NodeProto]) -> list[onnx.GraphProto]:
    found: list[onnx.GraphProto] = []
    for node in nodes:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                found.append(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                found.extend(attr.graphs)
    return found


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, every subgraph (If/Loop/Scan bodies), and subgraphs of functions."""
    stack = [model.graph]
    for function in model.functions:
        stack.extend(_subgraphs(function.node))
    while stack:
        graph = stack.pop()
        yield graph
        stack.extend(_subgraphs(graph.node))


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _value_infos(model: onnx.ModelProto) -> Iterator[onnx.ValueInfoProto]:
    for graph in _graphs(model):
        yield from graph.input
        yield from graph.output
        yield from graph.value_info
    for function in model.functions:
        yield from function.value_info


def _tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    """Every stored tensor: initializers, sparse initializers' values, tensor attributes."""
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
    for node in _nodes(model):
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
            for sparse in attr.sparse_tensors:
                yield sparse.values


def _elem_types(tp: onnx.TypeProto) -> Iterator[onnx.TypeProto.Tensor]:
    """Tensor types inside a TypeProto (tensors, sequences, optionals, map values)."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        yield tp.tensor_type
    elif which == "sparse_tensor_type":
        yield tp.sparse_tensor_type  # type: ignore[misc]
    elif which == "sequence_type":
        yield from _elem_types(tp.sequence_type.elem_type)
    elif which == "optional_type":
        yield from _elem_types(tp.optional_type.elem_type)
    elif which == "map_type":
        yield from _elem_types(tp.map_type.value_type)


def _cast_targets(node: onnx.NodeProto) -> Iterator[AttributeProto]:
    if node.op_type == "Cast":
        yield from (a for a in node.attribute if a.name == "to")
    elif node.op_type in _GENERATORS_DTYPE:
        yield from (a for a in node.attribute if a.name == "dtype")


# ---- questions --------------------------------------------------------------------------------


def needs_upcast(model: onnx.ModelProto) -> bool:
    """Whether any tensor, value type or cast of the model is float16 or bfloat16."""
    if any(t.data_type in LOW_PRECISION for t in _tensors(model)):
        return True
    for vi in _value_infos(model):
        if any(t.elem_type in LOW_PRECISION for t in _elem_types(vi.type)):
            return True
    return any(a.i in LOW_PRECISION for n in _nodes(model) for a in _cast_targets(n))


def check_element_types(model: onnx.ModelProto, image_input: str | None = None) -> None:
    """Refuse (InvalidModel, a 422) what cnnvis cannot run, naming the tensor or node.

    Accepted: float32, float16 and bfloat16 computation (the latter two through
    :func:`upcast`), integer and bool tensors for shapes and indices. Refused: quantized
    operators, float8/float6/float4/int4/int2 and complex tensors, and an image input that is
    not float32/float16/uint8 (a bfloat16 graph is accepted behind a float32 input).
    """
    for node in _nodes(model):
        if node.op_type in QUANTIZED_OPS and node.domain in ("", "ai.onnx"):
            raise InvalidModel(
                f"node {node.name or node.op_type!r} is the quantized operator {node.op_type};"
                " int8/quantized models are not supported (gradients do not flow through"
                " quantization). Register the float32 or float16 model instead"
            )
        for attr in _cast_targets(node):
            if attr.i in _REFUSED_TYPES:
                raise InvalidModel(
                    f"node {node.name or node.op_type!r} casts to {_type_name(attr.i)};"
                    " supported element types are float32, float16 and bfloat16"
                )
    for tensor in _tensors(model):
        if tensor.data_type in _REFUSED_TYPES:
            raise InvalidModel(
                f"tensor {tensor.name!r} has element type {_type_name(tensor.data_type)};"
                " supported element types are float32, float16 and bfloat16"
            )
    for vi in _value_infos(model):
        for t in _elem_types(vi.type):
            if t.elem_type in _REFUSED_TYPES:
                raise InvalidModel(
                    f"tensor {vi.name!r} has element type {_type_name(t.elem_type)};"
                    " supported element types are float32, float16 and bfloat16"
                )
    if image_input is not None:
        for vi in model.graph.input:
            if vi.name != image_input:
                continue
            elem = vi.type.tensor_type.elem_type
            if elem not in _IMAGE_TYPES:
                raise InvalidModel(
                    f"input {image_input!r} has element type {_type_name(elem)}; an image input"
                    " must be float32, float16 or uint8"
                )


# ---- the conversion ---------------------------------------------------------------------------


def _float32_tensor(tensor: TensorProto) -> TensorProto:
    array = numpy_helper.to_array(tensor).astype(np.float32)
    converted = numpy_helper.from_array(array, tensor.name)
    if tensor.doc_string:
        converted.doc_string = tensor.doc_string
    return converted


def upcast(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of ``model`` (the input is not modified; see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in _tensors(out):
        if tensor.data_type in LOW_PRECISION:
            tensor.CopyFrom(_float32_tensor(tensor))
    for vi in _value_infos(out):
        for t in _elem_types(vi.type):
            if t.elem_type in LOW_PRECISION:
                t.elem_type = TensorProto.FLOAT
    for node in _nodes(out):
        for attr in _cast_targets(node):
            if attr.i in LOW_PRECISION:
                attr.i = TensorProto.FLOAT
    return out
