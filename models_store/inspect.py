"""Reads a model's graph for what the explain methods need: candidate layers with their
static shapes (from onnx shape inference), the automatic default layer, and the axis order
("layout") of the image input and of every layer tensor.

Layouts are strings of the letters N, C, H, W in the tensor's axis order: ``NCHW`` (ONNX's
native order, what every Conv reads and writes), ``NHWC`` (Keras / TensorFlow), or another
permutation a Transpose produced. The rule (:func:`tensor_layouts`), documented in
docs/methods.md ("Layouts"):

1. anchors: the output of a channel-first op (Conv, ConvTranspose, the pools, BatchNorm,
   InstanceNorm, LRN, DepthToSpace, SpaceToDepth) is NCHW, and so is its first input;
   the image input has the model's input layout (detected or the card's);
2. a Transpose permutes its input's layout (``out[i] = in[perm[i]]``), and back;
3. layout-preserving ops (element-wise arithmetic and activations, Pad, Slice, Concat,
   Split, Resize, Softmax, Reduce* with keepdims, ...) give their output the layout of their
   rank-4 inputs, and back;
4. propagated forward and backward until nothing changes; a rank-4 tensor still unknown is
   taken as NCHW.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
from onnx import inliner, shape_inference

from models_store.errors import LayerNotFound
from models_store.fold import fold_constants
from models_store.graph import Dim, TensorInfo, value_info

NCHW = "NCHW"
NHWC = "NHWC"


@dataclass(frozen=True)
class Layer:
    name: str  # the tensor name, what clients pass as `layer`
    op_type: str  # the op that produces it
    shape: tuple[Dim, ...]
    spatial: bool  # has extent in two axes besides batch and channels
    layout: str = NCHW  # axis order, letters N, C, H, W (module docstring)


@dataclass(frozen=True)
class GraphSummary:
    layers: tuple[Layer, ...]  # rank-4 tensors on the path from the image to the score
    default_layer: str | None
    input_layout: str | None = None  # detected from the graph; None = ambiguous

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        hint = f"; the default is {self.default_layer!r}" if self.default_layer else ""
        raise LayerNotFound(
            f"no layer named {name!r}; GET /v1/models/{{name}}/layers lists them{hint}"
        )


def summarize(
    model: onnx.ModelProto, image: str, score: str, layout: str | None = None
) -> GraphSummary:
    """Candidate layers are rank-4 float tensors that depend on ``image`` and feed ``score``.

    ``layout`` is the image input's layout (the card's); None or ``auto`` = detect it."""
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

    detected = detect_input_layout(model, image)
    start = layout if layout in (NCHW, NHWC) else detected
    layouts = tensor_layouts(model, image, start)
    layers = []
    for node in nodes:
        for out in node.output:
            info = shapes.get(out)
            if not out or info is None or out not in depends or out not in feeds:
                continue
            if len(info.shape) != 4 or not info.dtype.startswith("float"):
                continue
            extent = [d for d in info.shape[1:] if not (isinstance(d, int) and d <= 1)]
            layers.append(
                Layer(
                    out,
                    node.op_type,
                    info.shape,
                    spatial=len(extent) >= 2,
                    layout=layouts.get(out, NCHW),
                )
            )
    spatial = [layer for layer in layers if layer.spatial]
    return GraphSummary(tuple(layers), spatial[-1].name if spatial else None, detected)


# -- layouts ----------------------------------------------------------------------------------

# ONNX defines these on channel-first tensors: their (first) input and output are NCHW
CHANNEL_FIRST = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "QLinearConv",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "BatchNormalization",
        "InstanceNormalization",
        "LRN",
        "MaxUnpool",
        "DepthToSpace",
        "SpaceToDepth",
        "MaxRoiPool",
        "RoiAlign",
    }
)
# the output has the same axes, in the same order, as the rank-4 inputs
PRESERVING = frozenset(
    {
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "Cast",
        "CastLike",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Cos",
        "Cosh",
        "Div",
        "Dropout",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "Greater",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Hardmax",
        "Identity",
        "IsInf",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mod",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "PRelu",
        "Pad",
        "Pow",
        "Reciprocal",
        "Relu",
        "Resize",
        "Round",
        "Selu",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "Split",
        "Sqrt",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Upsample",
        "Where",
        "Xor",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
REDUCE = frozenset(
    {
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceSum",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _is_layout(value: str) -> bool:
    return len(value) == 4 and sorted(value) == sorted(NCHW)


def to_canonical(layout: str) -> tuple[int, ...]:
    """The transpose taking a tensor in ``layout`` to NCHW (``a.transpose(perm)``)."""
    return tuple(layout.index(axis) for axis in NCHW)


def from_canonical(layout: str) -> tuple[int, ...]:
    """The transpose taking an NCHW tensor to ``layout``."""
    return tuple(NCHW.index(axis) for axis in layout)


def _preserves(node: onnx.NodeProto) -> bool:
    if node.op_type in PRESERVING:
        return True
    return node.op_type in REDUCE and bool(_attr(node, "keepdims", 1))


def tensor_layouts(model: onnx.ModelProto, image: str, input_layout: str | None) -> dict[str, str]:
    """Layout of every tensor the rule of the module docstring can decide (rank-4 tensors;
    others may appear too). ``input_layout`` None: the input is decided like any tensor."""
    nodes = list(model.graph.node)
    known: dict[str, str] = {}
    if input_layout is not None:
        known[image] = input_layout
    for node in nodes:
        if node.op_type in CHANNEL_FIRST:
            if node.output and node.output[0]:
                known[node.output[0]] = NCHW
            if node.input and node.input[0]:
                known.setdefault(node.input[0], NCHW)
    weights = {t.name for t in model.graph.initializer}

    def transpose(node: onnx.NodeProto) -> list[int] | None:
        perm = _attr(node, "perm", None)
        if not isinstance(perm, (list, tuple)) or sorted(int(p) for p in perm) != [0, 1, 2, 3]:
            return None
        return [int(p) for p in perm]

    changed = True
    while changed:
        changed = False

        def learn(name: str, value: str) -> None:
            nonlocal changed
            if name and name not in weights and name not in known and _is_layout(value):
                known[name] = value
                changed = True

        for node in nodes:  # forward
            if node.op_type == "Transpose":
                perm = transpose(node)
                if perm is not None and node.input[0] in known:
                    before = known[node.input[0]]
                    learn(node.output[0], "".join(before[p] for p in perm))
            elif _preserves(node):
                have = [known[i] for i in node.input if i in known]
                if have:
                    for out in node.output:
                        learn(out, have[0])
        for node in reversed(nodes):  # backward
            if node.op_type == "Transpose":
                perm = transpose(node)
                if perm is not None and node.output[0] in known:
                    dst = known[node.output[0]]
                    axes = [""] * 4
                    for i, p in enumerate(perm):
                        axes[p] = dst[i]
                    learn(node.input[0], "".join(axes))
            elif _preserves(node):
                have = [known[o] for o in node.output if o in known]
                if have and node.op_type not in ("Where",):
                    for i in (
                        node.input[:1]
                        if node.op_type in ("Pad", "Slice", "Resize", "Upsample", "Clip")
                        else node.input
                    ):
                        if i not in weights:
                            learn(i, have[0])
    return known


def detect_input_layout(
    model: onnx.ModelProto, image: str, channels: Sequence[int] = (1, 3)
) -> str | None:
    """NCHW or NHWC from the graph, or None when the graph does not tell.

    First the static shape: (N, c, H, W) with c in ``channels`` and the last axis not -> NCHW;
    (N, H, W, c) the other way round -> NHWC. Otherwise (dynamic dims, or (N, 3, 3, 3)) the
    structure: the layout :func:`tensor_layouts` derives for the input from its consumers
    (a Transpose perm [0, 3, 1, 2] on the way to a Conv means NHWC, a Conv reading it through
    element-wise ops means NCHW)."""
    info = _input_info(model, image)
    if info is not None and len(info.shape) == 4:
        first, last = info.shape[1], info.shape[3]
        first_c = isinstance(first, int) and first in channels
        last_c = isinstance(last, int) and last in channels
        if first_c and not last_c:
            return NCHW
        if last_c and not first_c:
            return NHWC
    found = tensor_layouts(model, image, None).get(image)
    return found if found in (NCHW, NHWC) else None


def _input_info(model: onnx.ModelProto, image: str) -> TensorInfo | None:
    for vi in model.graph.input:
        if vi.name == image:
            return value_info(vi)
    return None
