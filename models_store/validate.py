"""Checks an uploaded ONNX model and its card before anything is written to the store.

Every refusal is an ``InvalidModel`` or ``InvalidCard`` whose detail names the problem, so a
client can fix its upload without reading our logs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto

from models_store.errors import InvalidCard, InvalidModel
from models_store.graph import TensorInfo, graph_inputs, graph_outputs
from models_store.inspect import detect_input_layout
from schemas.card import ModelCard

STANDARD_DOMAINS = {"", "ai.onnx"}
MAX_TENSOR_ELEMENTS = 2**32  # no classifier weight is this large; a claim beyond it is hostile


def parse_model(data: bytes) -> onnx.ModelProto:
    """Parse bytes as ONNX, refusing external data and oversized tensor claims."""
    if not data:
        raise InvalidModel("the model file is empty")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ValueError ...
        raise InvalidModel(f"not an ONNX model: {exc}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModel("not an ONNX model: it has no graph nodes")
    for tensor in _all_tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
            raise InvalidModel(
                f"tensor {tensor.name!r} refers to external data; embed all weights in the"
                " .onnx file (onnx.save_model(..., save_as_external_data=False))"
            )
        elements = int(np.prod([max(int(d), 0) for d in tensor.dims], dtype=np.float64))
        if elements > MAX_TENSOR_ELEMENTS:
            raise InvalidModel(
                f"tensor {tensor.name!r} claims {elements} elements (dims {list(tensor.dims)});"
                f" the limit is {MAX_TENSOR_ELEMENTS}"
            )
    return model


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker plus the restrictions the companion graph relies on."""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidModel(f"onnx.checker: {exc}") from None
    local = {f.domain for f in model.functions}
    for node in _all_nodes(model.graph):
        if node.domain not in STANDARD_DOMAINS and node.domain not in local:
            raise InvalidModel(
                f"node {node.name or node.op_type!r} uses op {node.domain}::{node.op_type};"
                " only standard ONNX operators are supported"
            )
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    if opset < 7:
        raise InvalidModel(f"opset {opset} is too old; export with opset 13 or newer")


def image_input(model: onnx.ModelProto, card: ModelCard) -> TensorInfo:
    """The graph input the card feeds, checked against the card's layout and size."""
    inputs = graph_inputs(model)
    if card.input.name is not None:
        match = [i for i in inputs if i.name == card.input.name]
        if not match:
            names = ", ".join(i.name for i in inputs) or "none"
            raise InvalidCard(f"card input.name {card.input.name!r} is not a graph input ({names})")
        tensor = match[0]
    else:
        if len(inputs) != 1:
            raise InvalidModel(
                f"the graph has {len(inputs)} inputs"
                f" ({', '.join(i.name for i in inputs) or 'none'}); a classifier needs exactly one"
                " image input, or name it in the card's input.name"
            )
        tensor = inputs[0]
    if len(tensor.shape) != 4:
        raise InvalidModel(
            f"input {tensor.name!r} has rank {len(tensor.shape)} (shape {tensor.shape});"
            " an image input must have rank 4"
        )
    spec = card.input
    layout = input_layout(model, card, tensor.name)
    expected = (
        {1: spec.channels, 2: spec.height, 3: spec.width}
        if layout == "NCHW"
        else {1: spec.height, 2: spec.width, 3: spec.channels}
    )
    how = "detected from the graph" if spec.layout == "auto" else "the card's input.layout"
    for axis, want in expected.items():
        dim = tensor.shape[axis]
        if isinstance(dim, int) and dim != want:
            raise InvalidCard(
                f"the card says {layout[axis]}={want} (layout {layout}, {how}) but input"
                f" {tensor.name!r} has shape {tensor.shape}"
            )
    check_input_dtype(tensor, card)
    return tensor


INPUT_DTYPES = ("float32", "float16", "uint8")


def input_layout(model: onnx.ModelProto, card: ModelCard, image: str) -> str:
    """The layout the image input is fed in: the card's ``input.layout`` when it names one
    (an override), else the one detected from the graph, else NCHW (ambiguous graphs)."""
    if card.input.layout != "auto":
        return card.input.layout
    return detect_input_layout(model, image, (card.input.channels,)) or "NCHW"


def check_input_dtype(tensor: TensorInfo, card: ModelCard) -> None:
    """float32 / float16 inputs get ``(pixel * scale - mean) / std``; uint8 inputs (the graph
    normalises itself) get the pixels 0..255 as they are, so a card that asks for another
    scaling of them is refused rather than silently ignored."""
    if tensor.dtype not in INPUT_DTYPES:
        raise InvalidModel(
            f"input {tensor.name!r} has dtype {tensor.dtype}; supported image inputs are"
            f" {', '.join(INPUT_DTYPES)}"
        )
    if tensor.dtype == "uint8":
        spec = card.input
        chosen = spec.model_fields_set & {"scale", "mean", "std"}
        values = {"scale": [spec.scale], "mean": spec.mean, "std": spec.std}
        identity = {"scale": 1.0, "mean": 0.0, "std": 1.0}
        bad = [f for f in sorted(chosen) if any(float(v) != identity[f] for v in values[f])]
        if bad:
            raise InvalidCard(
                f"input {tensor.name!r} is uint8: the model receives the pixels 0..255 as they"
                f" are, so input.{'/'.join(bad)} cannot apply; leave them out (or set scale 1,"
                " mean [0], std [1])"
            )


def score_output(model: onnx.ModelProto, card: ModelCard) -> TensorInfo:
    outputs = graph_outputs(model)
    if card.output.name is not None:
        match = [o for o in outputs if o.name == card.output.name]
        if not match:
            names = ", ".join(o.name for o in outputs)
            raise InvalidCard(
                f"card output.name {card.output.name!r} is not a graph output ({names})"
            )
        return match[0]
    return outputs[0]


def check_output_width(width: int, card: ModelCard) -> None:
    """The number of labels (and the task) must agree with the score width."""
    if card.labels is not None and len(card.labels) != width:
        raise InvalidCard(
            f"the card has {len(card.labels)} labels but the model outputs {width} scores"
        )
    if card.task == "binary" and width not in (1, 2):
        raise InvalidCard(f"task 'binary' needs 1 or 2 output scores; the model outputs {width}")


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_nodes(g)


def _all_tensors(model: onnx.ModelProto) -> Iterator[TensorProto]:
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
