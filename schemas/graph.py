"""Response of GET /v1/models/{name}/graph: the network as nodes and edges with shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Shape = list[int | str | None]


class GraphNode(BaseModel):
    id: str = Field(..., description="Unique id; edges refer to it.")
    kind: Literal["input", "op", "output"]
    name: str = Field(..., description="The ONNX node name (or the tensor's, for inputs/outputs).")
    op_type: str = Field(..., description="The ONNX op; Input or Output for the graph's ends.")
    outputs: list[str] = Field(..., description="Output tensor names.")
    shapes: list[Shape | None] = Field(
        ..., description="Shape of each output (onnx shape inference; null = unknown)."
    )
    params: int = Field(0, description="Elements of the weights (initializers) it reads.")
    group: str | None = Field(
        None, description="The block it belongs to: the first part of a '/'-scoped node name."
    )
    layer: str | None = Field(
        None, description="An output tensor usable as `layer` (GET /layers), if any."
    )


class GraphEdge(BaseModel):
    source: str
    target: str
    tensor: str
    shape: Shape | None


class ModelGraph(BaseModel):
    model: dict[str, str]
    nodes: list[GraphNode] = Field(..., description="Topological order, inputs first.")
    edges: list[GraphEdge]
    params: int = Field(..., description="Elements of every initializer of the model.")
