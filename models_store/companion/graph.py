"""Reading a source graph: normalisation (inlining, opset), shapes, dtypes, constants, the score.

Everything here is about the forward model; the backward sweep lives in ``builder.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property

import numpy as np
import onnx
from onnx import helper, numpy_helper

from models_store.errors import LayerNotFound, UnsupportedModel
from models_store.fold import fold_constants

from .context import Shape

MIN_OPSET = 13
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}
# Ops a trailing probability head is reached through when looking for the logits.
_PLUMBING = {"Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout", "Cast"}
_PROBABILITY_HEADS = {"Softmax", "Sigmoid", "LogSoftmax"}


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModel("the model imports no standard ONNX opset")


def normalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Inline model-local functions, lift old opsets to 13, fold constants, infer shapes."""
    if len(model.functions):
        model = onnx.inliner.inline_local_functions(model)
    if default_opset(model) < MIN_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, MIN_OPSET)
    # exporters leave pads and shapes as ConstantOfShape/Concat/Cast chains; folded, they
    # become initializers and shape inference sees static sizes
    model = fold_constants(model)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)


def _shape_of(vi_type: onnx.TypeProto) -> Shape | None:
    if not vi_type.HasField("tensor_type") or not vi_type.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in vi_type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


class SourceGraph:
    """Indexes over a normalised model."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = default_opset(model)
        self.nodes = list(self.graph.node)
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.inputs = [i.name for i in self.graph.input if i.name not in self.initializers]
        if not self.inputs:
            raise UnsupportedModel("the model has no runtime input")
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for o in node.output:
                if o:
                    self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.shapes: dict[str, Shape] = {}
        self.dtypes: dict[str, int] = {}
        self.value_infos: dict[str, onnx.ValueInfoProto] = {}
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            shape = _shape_of(vi.type)
            if shape is not None:
                self.shapes[vi.name] = shape
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                self.dtypes[vi.name] = vi.type.tensor_type.elem_type
            self.value_infos[vi.name] = vi
        for name, t in self.initializers.items():
            self.shapes[name] = tuple(int(d) for d in t.dims)
            self.dtypes[name] = t.data_type
        self._constant_cache: dict[str, np.ndarray | None] = {}

    # -- tensors ---------------------------------------------------------------------
    def has_tensor(self, name: str) -> bool:
        return name in self.producer or name in self.inputs

    def is_float(self, name: str) -> bool:
        return self.dtypes.get(name, onnx.TensorProto.FLOAT) in FLOAT_TYPES

    def constant(self, name: str) -> np.ndarray | None:
        if name in self._constant_cache:
            return self._constant_cache[name]
        value: np.ndarray | None = None
        if name in self.initializers:
            value = numpy_helper.to_array(self.initializers[name])
        elif name in self.producer and self.producer[name].op_type == "Constant":
            node = self.producer[name]
            attr = node.attribute[0]
            if attr.name == "value":
                value = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int"):
                value = np.array(helper.get_attribute_value(attr))
            elif attr.name in ("value_floats", "value_ints"):
                value = np.array(list(helper.get_attribute_value(attr)))
        self._constant_cache[name] = value
        return value

    def value_info(self, name: str, new_name: str | None = None) -> onnx.ValueInfoProto:
        """A typed value info for ``name`` (shape when known), optionally renamed."""
        elem = self.dtypes.get(name, onnx.TensorProto.FLOAT)
        shape = self.shapes.get(name)
        return helper.make_tensor_value_info(
            new_name or name, elem, None if shape is None else list(shape)
        )

    # -- reachability ------------------------------------------------------------------
    def downstream(self, sources: Iterable[str], float_only: bool = False) -> set[str]:
        """Tensors reachable forward from ``sources`` (``float_only``: through float tensors)."""
        reached = set(sources)
        for node in self.nodes:  # nodes are topologically sorted
            if any(i in reached for i in node.input if i):
                for o in node.output:
                    if o and (not float_only or self.is_float(o)):
                        reached.add(o)
        return reached

    def upstream(self, targets: Iterable[str]) -> set[str]:
        """Tensors that ``targets`` depend on (including the targets)."""
        needed = set(targets)
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                needed.update(i for i in node.input if i)
        return needed

    @cached_property
    def dynamic(self) -> set[str]:
        """Tensors that depend on a runtime input; everything else is a build-time constant."""
        return self.downstream(self.inputs)

    # -- the score ---------------------------------------------------------------------
    def resolve_score(self, score: str | None) -> str:
        if score is not None:
            if not self.has_tensor(score):
                raise LayerNotFound(f"score tensor {score!r} is not in the graph")
            return score
        first = self.graph.output[0].name
        name = first
        while name in self.producer:
            node = self.producer[name]
            if node.op_type in _PROBABILITY_HEADS:
                return node.input[0]
            if node.op_type not in _PLUMBING:
                break
            name = node.input[0]
        return first


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def format_path(path: Sequence[str]) -> str:
    return " -> ".join(path)
