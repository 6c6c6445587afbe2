"""GET /v1/models/{name}/graph: the network's layers as nodes and edges with shapes, for
clients that draw it (the explorer at /ui does)."""

from __future__ import annotations

import threading

import numpy as np
import onnx
from fastapi import APIRouter
from onnx import inliner, shape_inference

from models_store.fold import fold_constants
from models_store.graph import graph_inputs, value_info
from models_store.store import ModelRecord
from schemas.graph import GraphEdge, GraphNode, ModelGraph, Shape
from service.api.deps import ApiDep, StateDep, VersionQuery
from service.state import AppState

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[ApiDep])
SKIPPED_OPS = {"Constant"}  # constants are folded into the node that reads them

_cache: dict[str, ModelGraph] = {}
_lock = threading.Lock()


def _shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    folded = fold_constants(model)  # static shapes through Reshape/Shape chains
    inferred = shape_inference.infer_shapes(folded)
    values = [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
    return {v.name: list(value_info(v).shape) for v in values}


def _group(name: str) -> str | None:
    """'/_blocks.7/_depthwise_conv/Conv' -> '/_blocks.7'; an unscoped name has no group."""
    parts = [p for p in name.split("/") if p]
    return "/" + parts[0] if name.startswith("/") and len(parts) > 1 else None


def network_graph(model: onnx.ModelProto, layers: set[str]) -> list[GraphNode]:
    """The nodes of ``model`` (topological, functions inlined), with their output shapes;
    ``layers`` = the tensors a client may pass as `layer`."""
    shapes = _shapes(model)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    nodes = [
        GraphNode(
            id=f"input:{t.name}",
            kind="input",
            name=t.name,
            op_type="Input",
            outputs=[t.name],
            shapes=[list(t.shape)],
        )
        for t in graph_inputs(model)
    ]
    for index, node in enumerate(model.graph.node):
        if node.op_type in SKIPPED_OPS:
            continue
        outputs = [o for o in node.output if o]
        nodes.append(
            GraphNode(
                id=f"node:{index}",
                kind="op",
                name=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                outputs=outputs,
                shapes=[shapes.get(o) for o in outputs],
                params=sum(sizes.get(i, 0) for i in set(node.input)),
                group=_group(node.name),
                layer=next((o for o in outputs if o in layers), None),
            )
        )
    nodes += [
        GraphNode(
            id=f"output:{v.name}",
            kind="output",
            name=v.name,
            op_type="Output",
            outputs=[],
            shapes=[],
        )
        for v in model.graph.output
    ]
    return nodes


def graph_edges(model: onnx.ModelProto, nodes: list[GraphNode]) -> list[GraphEdge]:
    producer: dict[str, GraphNode] = {}
    for node in nodes:
        for tensor in node.outputs:
            producer[tensor] = node
    shapes = {t: s for n in nodes for t, s in zip(n.outputs, n.shapes, strict=True)}
    edges: list[GraphEdge] = []
    by_id = {n.id: n for n in nodes}
    for index, onnx_node in enumerate(model.graph.node):
        target = by_id.get(f"node:{index}")
        if target is None:
            continue
        for tensor in dict.fromkeys(i for i in onnx_node.input if i in producer):
            source = producer[tensor]
            edges.append(
                GraphEdge(
                    source=source.id, target=target.id, tensor=tensor, shape=shapes.get(tensor)
                )
            )
    for output in model.graph.output:
        if output.name in producer:
            edges.append(
                GraphEdge(
                    source=producer[output.name].id,
                    target=f"output:{output.name}",
                    tensor=output.name,
                    shape=shapes.get(output.name),
                )
            )
    return edges


def model_graph(state: AppState, record: ModelRecord) -> ModelGraph:
    with _lock:
        cached = _cache.get(record.sha256)
    if cached is None:
        layers = {layer.name for layer in state.summary(record).layers if layer.spatial}
        model = record.model
        if model.functions:
            model = inliner.inline_local_functions(model)
        nodes = network_graph(model, layers)
        cached = ModelGraph(
            model={"name": record.name, "version": record.version},
            nodes=nodes,
            edges=graph_edges(model, nodes),
            params=sum(int(np.prod(t.dims)) for t in model.graph.initializer),
        )
        with _lock:
            _cache[record.sha256] = cached
    return cached.model_copy(update={"model": {"name": record.name, "version": record.version}})


@router.get(
    "/{name}/graph",
    response_model=ModelGraph,
    summary="The network as a graph: nodes (ops, output shapes, parameter counts) and edges",
)
def get_graph(name: str, state: StateDep, version: VersionQuery = None) -> ModelGraph:
    return model_graph(state, state.store.resolve(name, version))
