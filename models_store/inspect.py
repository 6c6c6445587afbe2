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
   Split, Resize, Softmax, LayerNormalization, Reduce* with keepdims, ...) give their output
   the layout of their rank-4 inputs, and back; so does a MatMul by a constant matrix (a
   Linear layer on the last axis) on a layout whose last axis is C (NHWC: Swin, ConvNeXt);
4. propagated forward and backward until nothing changes; a rank-4 tensor still unknown is
   taken as NCHW.

Token models (ViT and its kin, :func:`token_grids`, docs/methods.md "Token models"): a
rank-3 (N, L, C) tensor is a layer when the graph shows where its tokens come from: a patch
grid, a rank-4 (N, C, h, w) tensor with static h, w (the patch-embedding Conv's output)
reshaped to (N, C, h*w) and transposed to (N, h*w, C) (or an NHWC grid reshaped to
(N, h*w, C)), optionally concatenated along the token axis with extra tokens (the class
token) in front of or behind it. Such a layer is read as the grid: the extra tokens dropped,
(N, h*w, C) -> (N, C, h, w), as pytorch-grad-cam's ViT ``reshape_transform``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx
from onnx import inliner, shape_inference

from models_store.errors import LayerNotFound, UnsupportedModel
from models_store.fold import fold_constants
from models_store.graph import Dim, TensorInfo, value_info

# Layer candidates are floating-point tensors (bfloat16 is not a numpy "float*" name).
FLOAT_DTYPES = {"float16", "float32", "float64", "bfloat16"}

NCHW = "NCHW"
NHWC = "NHWC"


@dataclass(frozen=True)
class TokenGrid:
    """How a (N, L, C) token tensor holds a patch grid: ``prefix`` extra tokens (the class
    token), then ``height * width`` patch tokens in row-major order, then ``suffix`` extra
    tokens."""

    prefix: int
    height: int
    width: int
    suffix: int = 0
    source: str = ""  # the rank-4 grid tensor the patch tokens were flattened from

    @property
    def tokens(self) -> int:
        return self.prefix + self.height * self.width + self.suffix

    @property
    def layout(self) -> str:
        """What /layers reports, e.g. ``N(1+4x4)C``: a class token, then a 4 x 4 grid."""
        extra = f"+{self.suffix}" if self.suffix else ""
        return f"N({self.prefix}+{self.height}x{self.width}{extra})C"


@dataclass(frozen=True)
class Layer:
    name: str  # the tensor name, what clients pass as `layer`
    op_type: str  # the op that produces it
    shape: tuple[Dim, ...]
    spatial: bool  # has extent in two axes besides batch and channels
    layout: str = NCHW  # axis order, letters N, C, H, W (module docstring)
    grid: TokenGrid | None = None  # a (N, L, C) token tensor read as its patch grid

    @property
    def channels(self) -> Dim:
        return self.shape[2] if self.grid is not None else self.shape[1]


@dataclass(frozen=True)
class GraphSummary:
    layers: tuple[Layer, ...]  # rank-4 tensors and token grids from the image to the score
    default_layer: str | None
    input_layout: str | None = None  # detected from the graph; None = ambiguous
    # tensors a client might take for a layer but that are no spatial map: name -> why
    refused: dict[str, str] = field(default_factory=dict)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        why = self.refused.get(name)
        if why is not None:
            raise UnsupportedModel(f"layer {name!r} is not a spatial map: {why}")
        hint = f"; the default is {self.default_layer!r}" if self.default_layer else ""
        raise LayerNotFound(
            f"no layer named {name!r}; GET /v1/models/{{name}}/layers lists them{hint}"
        )

    def token_grids(self) -> dict[str, TokenGrid]:
        return {layer.name: layer.grid for layer in self.layers if layer.grid is not None}


def summarize(
    model: onnx.ModelProto, image: str, score: str, layout: str | None = None
) -> GraphSummary:
    """Candidate layers are rank-4 float tensors that depend on ``image`` and feed ``score``,
    and (N, L, C) token tensors with a patch grid (:func:`token_grids`); tensors of a token
    model that look like layers but hold no grid are in ``refused`` with the reason.

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
    weights = {t.name for t in model.graph.initializer}
    grids, why_not = token_grids(model, shapes, layouts)
    tokens = set(grids) | set(why_not)
    downstream = _descendants(nodes, tokens)  # inside the token part of the graph
    layers = []
    refused: dict[str, str] = {}
    for node in nodes:
        for out in node.output:
            info = shapes.get(out)
            if not out or info is None or out not in depends or out not in feeds:
                continue
            if info.dtype not in FLOAT_DTYPES or out in weights:
                continue
            if out in grids:
                layers.append(
                    Layer(out, node.op_type, info.shape, True, grids[out].layout, grids[out])
                )
                continue
            if len(info.shape) == 3 and out in why_not:
                refused[out] = why_not[out]
                continue
            if len(info.shape) != 4:
                continue
            if out in downstream and out not in layouts:
                refused[out] = (
                    f"a rank-4 tensor of shape {_shape(info.shape)} inside the token part of "
                    "the graph (e.g. attention heads x tokens): its axes are no (N, C, h, w) "
                    "grid; name a token layer instead (GET /layers)"
                )
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
    default = _default_layer(nodes, layers, depends)
    return GraphSummary(tuple(layers), default, detected, refused)


def _shape(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _descendants(nodes: Sequence[onnx.NodeProto], roots: set[str]) -> set[str]:
    seen = set(roots)
    for node in nodes:
        if any(i in seen for i in node.input):
            seen.update(o for o in node.output if o)
    return seen


def _default_layer(
    nodes: Sequence[onnx.NodeProto], layers: Sequence[Layer], depends: set[str]
) -> str | None:
    """The last spatial layer; on a token model the last token layer of the model's width
    whose patch tokens still reach the score through token mixing (docs/methods.md, "Token
    models"), unless a spatial rank-4 layer comes after it."""
    spatial = [layer for layer in layers if layer.spatial]
    tokens = [layer for layer in spatial if layer.grid is not None]
    if not tokens:
        return spatial[-1].name if spatial else None
    # token mixing: a MatMul (attention's q.k and attn.v) both of whose operands depend on
    # the image; after the last one the patch tokens no longer reach a class-token score
    order = {o: k for k, node in enumerate(nodes) for o in node.output if o}
    mixing = [
        k
        for k, node in enumerate(nodes)
        if node.op_type in ("MatMul", "Einsum") and sum(1 for i in node.input if i in depends) >= 2
    ]
    chosen = tokens[-1]
    if mixing:
        last = nodes[mixing[-1]]
        ancestors = _ancestors(nodes[: mixing[-1] + 1], last)
        before = [layer for layer in tokens if layer.name in ancestors]
        # of the model's width (the first token layer's channels): the normalised residual
        # stream (ViT's ln_1, timm's norm1), not a fused q/k/v projection (3 x the width)
        width = next((t.channels for t in tokens if isinstance(t.channels, int)), None)
        wide = [layer for layer in before if layer.channels == width]
        if wide or before:
            chosen = (wide or before)[-1]
    after = [
        layer for layer in spatial if layer.grid is None and order[layer.name] > order[chosen.name]
    ]
    return after[-1].name if after else chosen.name


def _ancestors(nodes: Sequence[onnx.NodeProto], last: onnx.NodeProto) -> set[str]:
    needed = set(i for i in last.input if i)
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
    return needed


# -- token grids ------------------------------------------------------------------------------

# per-token ops: the output keeps the (N, L, C) axes of its rank-3 inputs (C may change)
TOKENWISE = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Sqrt",
        "Erf",
        "Gelu",
        "Relu",
        "Sigmoid",
        "Tanh",
        "HardSwish",
        "HardSigmoid",
        "LeakyRelu",
        "Elu",
        "Softplus",
        "Neg",
        "Identity",
        "Dropout",
        "Cast",
        "LayerNormalization",
        "Clip",
    }
)


def token_grids(
    model: onnx.ModelProto, shapes: dict[str, TensorInfo], layouts: dict[str, str]
) -> tuple[dict[str, TokenGrid], dict[str, str]]:
    """Token tensors of ``model`` read as patch grids (module docstring), and the rank-3
    tensors downstream of a patch grid that cannot be read as one, with the reason.

    ``shapes``: inferred tensor infos (of the same, folded, graph); ``layouts``: from
    :func:`tensor_layouts`."""
    nodes = list(model.graph.node)
    weights = {t.name: t for t in model.graph.initializer}

    def dims(name: str) -> tuple[Dim, ...] | None:
        info = shapes.get(name)
        return None if info is None else tuple(info.shape)

    def static(d: Dim) -> bool:
        return isinstance(d, int) and d > 0

    # axis state of tensors on the way from a grid to tokens:
    # ("NCT" | "NTC", h, w, source, C) before the sequence is assembled
    flat: dict[str, tuple[str, int, int, str]] = {}
    grids: dict[str, TokenGrid] = {}
    why_not: dict[str, str] = {}
    for node in nodes:
        ins = [i for i in node.input if i]
        if not ins:
            continue
        x = ins[0]
        out = node.output[0] if node.output else ""
        if node.op_type == "Reshape" and x not in flat:
            shape_in, shape_out = dims(x), dims(out)
            layout = layouts.get(x)
            if shape_in is None or len(shape_in) != 4 or layout not in (NCHW, NHWC):
                continue
            if shape_out is not None and len(shape_out) != 3:
                continue
            h, w = _size(shape_in[layout.index("H")]), _size(shape_in[layout.index("W")])
            c = _size(shape_in[layout.index("C")])
            if h is None or w is None or c is None:
                continue
            kind = "NCT" if layout == NCHW else "NTC"
            want = (c, h * w) if kind == "NCT" else (h * w, c)
            if shape_out is not None and any(
                static(got) and got != exp for got, exp in zip(shape_out[1:], want, strict=True)
            ):
                continue
            if _reshape_target_ok(node, weights, want):
                flat[out] = (kind, h, w, x)
            continue
        if x in flat and node.op_type == "Transpose":
            perm = _attr(node, "perm", None)
            kind, h, w, src = flat[x]
            if isinstance(perm, (list, tuple)) and [int(p) for p in perm] == [0, 2, 1]:
                flat[out] = ("NTC" if kind == "NCT" else "NCT", h, w, src)
            continue
        if node.op_type == "Concat":
            axis = int(_attr(node, "axis", 0))  # type: ignore[call-overload]
            inside = [k for k, i in enumerate(node.input) if i in flat]
            if not inside:
                continue
            k = inside[0]
            kind, h, w, src = flat[node.input[k]]
            if kind != "NTC" or axis not in (1, -2) or len(inside) > 1:
                continue
            total = _token_count(out, nodes, shapes)
            others = [i for j, i in enumerate(node.input) if j != k]
            counts = [_token_axis(dims(i)) for i in others]
            grid: TokenGrid | None = None
            if total is not None:
                extra = total - h * w
                before, after = counts[:k], counts[k:]
                if not after:
                    grid = TokenGrid(extra, h, w, 0, src)
                elif not before:
                    grid = TokenGrid(0, h, w, extra, src)
                else:
                    known_before = [n for n in before if n is not None]
                    if len(known_before) == len(before):
                        grid = TokenGrid(sum(known_before), h, w, extra - sum(known_before), src)
            if grid is None or grid.prefix < 0 or grid.suffix < 0:
                why_not[out] = (
                    f"the {h}x{w} patch grid of {src!r} is concatenated with other tokens "
                    f"at {node.name or out!r}, but how many come before it cannot be told "
                    "from the graph's static shapes"
                )
                continue
            grids[out] = grid
            continue
        if x in flat and node.op_type in TOKENWISE and flat[x][0] == "NTC":
            flat[out] = flat[x]  # e.g. a position embedding added before any class token
    # a grid with no extra tokens at all: the flattened tokens themselves
    for name, (kind, h, w, src) in flat.items():
        if kind == "NTC":
            grids.setdefault(name, TokenGrid(0, h, w, 0, src))
    if not grids:
        return {}, why_not

    # propagate along per-token ops: rank-3 outputs with the same token count
    for node in nodes:
        if not node.output or not node.output[0]:
            continue
        out = node.output[0]
        if out in grids or node.op_type not in (*TOKENWISE, "MatMul"):
            continue
        have = [grids[i] for i in node.input if i in grids]
        if not have:
            continue
        grid = have[0]
        shape = dims(out)
        if node.op_type == "MatMul":
            w = weights.get(node.input[1]) if len(node.input) > 1 else None
            if node.input[0] not in grids or w is None or len(w.dims) != 2:
                continue  # attention's token mixing, not a per-token projection
        if shape is None or len(shape) != 3:
            continue
        if static(shape[1]) and shape[1] != grid.tokens:
            continue
        if not static(shape[1]):
            why_not[out] = (
                f"its token axis has no static size (shape {_shape(shape)}), so the "
                f"{grid.height}x{grid.width} patch grid cannot be located in it"
            )
            continue
        grids[out] = grid
    # the rest of the rank-3 float tensors downstream: no grid to read
    downstream = _descendants(nodes, set(grids))
    for node in nodes:
        for out in node.output:
            info = shapes.get(out)
            if (
                out
                and out in downstream
                and out not in grids
                and out not in why_not
                and info is not None
                and len(info.shape) == 3
            ):
                why_not[out] = (
                    f"a rank-3 tensor of shape {_shape(info.shape)} whose axes are not "
                    "(N, tokens, channels) of the patch grid (e.g. tokens first inside "
                    "attention)"
                )
    return grids, why_not


def _size(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _token_axis(shape: tuple[Dim, ...] | None) -> int | None:
    return _size(shape[1]) if shape is not None and len(shape) == 3 else None


def _reshape_target_ok(
    node: onnx.NodeProto, weights: dict[str, onnx.TensorProto], want: tuple[int, int]
) -> bool:
    """A constant target shape must be (N or 0 or -1, *want) up to one -1; a computed one
    (the exporters' Shape -> Gather -> Concat) is taken on the shapes' word."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return True
    from onnx import numpy_helper

    target = [int(v) for v in numpy_helper.to_array(weights[node.input[1]]).tolist()]
    if len(target) != 3:
        return False
    return all(t in (-1, 0, e) for t, e in zip(target[1:], want, strict=True))


def _token_count(
    name: str, nodes: Sequence[onnx.NodeProto], shapes: dict[str, TensorInfo]
) -> int | None:
    """The static token count of ``name`` (axis 1), or of the first per-token op downstream
    that knows it (an exporter's Concat often loses it; the position embedding's Add has it)."""
    frontier = [name]
    seen: set[str] = set()
    while frontier:
        t = frontier.pop(0)
        if t in seen:
            continue
        seen.add(t)
        info = shapes.get(t)
        if info is not None and len(info.shape) == 3 and isinstance(info.shape[1], int):
            return int(info.shape[1])
        for node in nodes:
            if t in node.input and node.op_type in TOKENWISE and node.output:
                frontier.append(node.output[0])
    return None


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
        "LayerNormalization",
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


def _channel_matmul(node: onnx.NodeProto, matrices: set[str]) -> bool:
    """A Linear layer on the last axis: MatMul by a constant matrix. It keeps a channels-last
    layout (the channel count may change); on any other layout it mixes a spatial axis."""
    return node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in matrices


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
    matrices = {t.name for t in model.graph.initializer if len(t.dims) == 2}

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
            if _channel_matmul(node, matrices):
                if node.input[0] in known and known[node.input[0]].endswith("C"):
                    learn(node.output[0], known[node.input[0]])
            elif node.op_type == "Transpose":
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
            if _channel_matmul(node, matrices):
                if node.output[0] in known and known[node.output[0]].endswith("C"):
                    learn(node.input[0], known[node.output[0]])
            elif node.op_type == "Transpose":
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
