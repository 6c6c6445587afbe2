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
from .shapes import correct_ceil_pools, settle, shape_of

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
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise UnsupportedModel("the model imports no standard ONNX opset")


_SMALL = 4096  # initializers up to this many elements stay visible to data propagation


def normalise(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.ValueInfoProto]]:
    """Inline model-local functions, lift old opsets to 13, fold constants, infer shapes.

    Returns the model to differentiate (the caller's own object when nothing had to change)
    and the inferred value infos. Folding and shape inference run on a skeleton whose large
    weights are typed graph inputs: fast on models of hundreds of megabytes, and the weights
    are never copied here. Where inference leaves sizes symbolic that the runtime knows,
    :func:`.shapes.settle` runs the model on a probe to freeze the shape arithmetic and
    complete the shapes.
    """
    if len(model.functions):
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    if default_opset(model) < MIN_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, MIN_OPSET)
    model, value_infos = fold_and_infer(model)
    return settle(model, value_infos, fold_and_infer)


def fold_and_infer(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, list[onnx.ValueInfoProto]]:
    """Constant folding and shape inference, with ceil_mode pool sizes corrected."""
    model, value_infos = _fold_and_infer(model)
    return model, correct_ceil_pools(model, value_infos)


def _fold_and_infer(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, list[onnx.ValueInfoProto]]:
    """Constant folding and ONNX shape inference (data propagation on) on a weightless
    skeleton; the model returned carries the folded nodes and every weight still used."""
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    large = [t for t in model.graph.initializer if int(np.prod(t.dims)) > _SMALL]
    large_names = {t.name for t in large}
    for t in model.graph.initializer:
        if t.name not in large_names:
            graph.initializer.append(t)
        elif t.name not in declared:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    # Exporters leave pads and shapes as ConstantOfShape/Concat/Cast chains; folded, they
    # become initializers and shape inference sees static sizes.
    folded = fold_constants(skeleton)
    try:
        inferred = onnx.shape_inference.infer_shapes(folded, data_prop=True)
    except Exception:  # a stricter inference failure must not block the build
        inferred = onnx.shape_inference.infer_shapes(folded, strict_mode=False)
    value_infos = [*inferred.graph.value_info, *inferred.graph.output]
    if folded is not skeleton:
        model = _working_model(model, folded, large, large_names, declared)
    return model, value_infos


def _working_model(
    model: onnx.ModelProto,
    folded: onnx.ModelProto,
    large: list[onnx.TensorProto],
    large_names: set[str],
    declared: set[str],
) -> onnx.ModelProto:
    working = onnx.ModelProto()
    working.ir_version = model.ir_version
    working.opset_import.extend(model.opset_import)
    wgraph = working.graph
    wgraph.name = model.graph.name
    wgraph.node.extend(folded.graph.node)
    wgraph.input.extend(
        i for i in folded.graph.input if i.name not in large_names or i.name in declared
    )
    wgraph.output.extend(model.graph.output)
    used = {i for n in folded.graph.node for i in n.input} | {o.name for o in model.graph.output}
    wgraph.initializer.extend(folded.graph.initializer)
    wgraph.initializer.extend(t for t in large if t.name in used)
    return working


class SourceGraph:
    """Indexes over a normalised model."""

    def __init__(
        self, model: onnx.ModelProto, inferred: Sequence[onnx.ValueInfoProto] = ()
    ) -> None:
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
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output, *inferred]:
            shape = shape_of(vi.type)
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

    # -- sub-models ------------------------------------------------------------------
    def pruned(self, outputs: Sequence[str]) -> onnx.ModelProto:
        """This graph exposing ``outputs`` and keeping only the nodes they need."""
        needed = self.upstream(outputs)
        nodes = [n for n in self.nodes if any(o in needed for o in n.output)]
        for node in nodes:
            for attr in node.attribute:
                for g in [attr.g, *attr.graphs]:
                    needed |= outer_names(g)
        result = onnx.ModelProto()
        result.ir_version = self.model.ir_version
        result.opset_import.extend(self.model.opset_import)
        graph = result.graph
        graph.name = self.graph.name
        graph.node.extend(nodes)
        graph.input.extend(vi for vi in self.graph.input if vi.name in self.inputs)
        graph.output.extend(self.value_info(name) for name in outputs)
        graph.initializer.extend(t for t in self.graph.initializer if t.name in needed)
        graph.value_info.extend(
            vi for vi in self.graph.value_info if vi.name in needed and vi.name not in outputs
        )
        return result

    @cached_property
    def value_dependent(self) -> set[str]:
        """Tensors whose *values* depend on a runtime input (Shape/Size outputs do not)."""
        reached = set(self.inputs)
        for node in self.nodes:
            if node.op_type in ("Shape", "Size"):
                continue
            if any(i in reached for i in node.input if i):
                reached.update(o for o in node.output if o)
        return reached

    def evaluate_shape_only(self, name: str, batch: int) -> np.ndarray | None:
        """The value of a tensor computed from input *shapes* only (e.g. index arithmetic on
        the batch size), for a given batch size; None if it depends on input values."""
        if name in self.value_dependent:
            return None
        import onnxruntime as ort

        feeds = {}
        for vi in self.graph.input:
            if vi.name not in self.inputs:
                continue
            dims = self.shapes.get(vi.name)
            if dims is None or any(not isinstance(d, int) for d in dims[1:]):
                return None
            elem = self.dtypes.get(vi.name, onnx.TensorProto.FLOAT)
            sizes = [d for d in dims[1:] if isinstance(d, int)]  # all of them (checked)
            feeds[vi.name] = np.zeros((batch, *sizes), dtype=helper.tensor_dtype_to_np_dtype(elem))
        model = self.pruned([name])
        used = {i for n in model.graph.node for i in n.input}
        feeds = {k: v for k, v in feeds.items() if k in used}
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return np.asarray(session.run(None, feeds)[0])

    def element_count(self, name: str, batch: int) -> int | None:
        """Number of elements of ``name`` at a batch size, following reshape-like ops back to
        a tensor whose shape is static but for the image's batch dimension."""
        image_shape = self.shapes.get(self.inputs[0]) or (None,)
        batch_dim = image_shape[0] if isinstance(image_shape[0], str) else None
        while True:
            shape = self.shapes.get(name)
            if shape is not None:
                lead, rest = 1, shape
                if shape and batch_dim is not None and shape[0] == batch_dim:
                    lead, rest = batch, shape[1:]
                if all(isinstance(d, int) for d in rest):
                    return lead * int(np.prod(rest))  # type: ignore[arg-type]
            node = self.producer.get(name)
            if node is None or node.op_type not in _RESHAPES:
                return None
            name = node.input[0]

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


def outer_names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(i for i in node.input if i)
        for attr in node.attribute:
            for g in [attr.g, *attr.graphs]:
                names |= outer_names(g)
    return names


def describe(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def format_path(path: Sequence[str], keep: int = 6) -> str:
    """``a -> b -> ...`` with long paths cut in the middle (the ends say where it is)."""
    if len(path) > 2 * keep + 1:
        path = [*path[:keep], f"... ({len(path) - 2 * keep} nodes) ...", *path[-keep:]]
    return " -> ".join(path)
