"""Reads a model's graph for what the explain methods need: candidate layers with their
static shapes (from onnx shape inference) and the automatic default layer."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import inliner, shape_inference

from models_store.errors import LayerNotFound
from models_store.fold import fold_constants
from models_store.graph import Dim, value_info


@dataclass(frozen=True)
class Layer:
    name: str  # the tensor name, what clients pass as `layer`
    op_type: str  # the op that produces it
    shape: tuple[Dim, ...]
    spatial: bool  # has extent in two axes besides batch and channels


@dataclass(frozen=True)
class GraphSummary:
    layers: tuple[Layer, ...]  # rank-4 tensors on the path from the image to the score
    default_layer: str | None

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        hint = f"; the default is {self.default_layer!r}" if self.default_layer else ""
        raise LayerNotFound(
            f"no layer named {name!r}; GET /v1/models/{{name}}/layers lists them{hint}"
        )


def summarize(model: onnx.ModelProto, image: str, score: str) -> GraphSummary:
    """Candidate layers are rank-4 float tensors that depend on ``image`` and feed ``score``."""
    if model.functions:
        model = inliner.inline_local_functions(model)
    model = fold_constants(model)  # static pads and shapes for shape inference
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: value_info(v) for v in inferred.graph.value_info}
    shapes.update({v.name: value_info(v) for v in inferred.graph.output})

    nodes = list(model.graph.node)
    depends = {image}
    for node in nodes:  # ONNX nodes are topologically sorted
        if any(i in depends for i in node.input):
            depends.update(o for o in node.output if o)
    feeds = {score}
    for node in reversed(nodes):
        if any(o in feeds for o in node.output):
            feeds.update(i for i in node.input if i)

    layers = []
    for node in nodes:
        for out in node.output:
            info = shapes.get(out)
            if not out or info is None or out not in depends or out not in feeds:
                continue
            if len(info.shape) != 4 or not info.dtype.startswith("float"):
                continue
            extent = [d for d in info.shape[1:] if not (isinstance(d, int) and d <= 1)]
            layers.append(Layer(out, node.op_type, info.shape, spatial=len(extent) >= 2))
    spatial = [layer for layer in layers if layer.spatial]
    return GraphSummary(tuple(layers), spatial[-1].name if spatial else None)
