"""The companion-graph builder: prune -> reverse topological sweep -> accumulate -> emit.

The emitted model takes the source's runtime inputs plus ``seed`` (the cotangent at the score)
and returns the score, each requested layer's activation and gradient, and optionally the
gradient at the image input: one onnxruntime run, standard ops only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import helper

from models_store.errors import LayerNotFound, UnsupportedModel

from . import rules as _rules  # noqa: F401  (registers every rule)
from .context import REGISTRY, RELU_RULES, GraphWriter, ReluRule, RuleContext, UnknownShape
from .graph import SourceGraph, describe, format_path, normalise, outer_names

# Bump whenever an emitted graph can change for the same inputs (invalidates the cache).
BUILDER_VERSION = "3"

SEED = "seed"
SCORE = "score"


@dataclass(frozen=True)
class CompanionSpec:
    image_input: str
    seed: str
    score: str
    layers: tuple[str, ...]
    activations: tuple[str, ...]
    gradients: tuple[str, ...]
    input_gradient: str | None

    @property
    def outputs(self) -> tuple[str, ...]:
        extra = (self.input_gradient,) if self.input_gradient else ()
        pairs = tuple(
            n for pair in zip(self.activations, self.gradients, strict=True) for n in pair
        )
        return (self.score, *pairs, *extra)


@dataclass(frozen=True)
class BuildOptions:
    """How convolution input gradients are formulated (the same numbers either way).

    "conv_transpose": ConvTranspose with the forward weight (pads 0, output_padding, Slice).
    "flipped_conv": g zero-stuffed by the stride, then a forward Conv with the spatially
    flipped, in/out-swapped weight; the crop is folded into the Conv's pads.
    "auto": flipped_conv at unit stride (no stuffing needed), conv_transpose otherwise.
    ``grouped`` applies to group > 1 (depthwise), ``dense`` to group = 1.
    """

    dense: str = "auto"
    grouped: str = "auto"


def build_companion(
    model: onnx.ModelProto,
    layers: Sequence[str] = (),
    *,
    rule: ReluRule = "standard",
    input_gradient: bool = False,
    score: str | None = None,
    options: BuildOptions | None = None,
) -> tuple[onnx.ModelProto, CompanionSpec]:
    """Derive the companion graph of ``model`` (see ``docs/companion.md``)."""
    if rule not in RELU_RULES:
        raise ValueError(f"unknown ReLU rule {rule!r}; one of {', '.join(RELU_RULES)}")
    src = SourceGraph(*normalise(model))
    layers = tuple(layers)
    for layer in layers:
        if not src.has_tensor(layer):
            raise LayerNotFound(f"layer {layer!r} is not a tensor of the graph")
    score_name = src.resolve_score(score)
    image = src.inputs[0]
    pixels = _first_float(src, image) if input_gradient else None
    sweep = _Sweep(src, score_name, layers, pixels, rule, options)
    layer_grads = [sweep.gradient_of(layer) for layer in layers]
    image_grad = sweep.gradient_of(pixels) if pixels else None

    taken = sweep.taken
    out_names: dict[str, str] = {}

    def out_name(base: str) -> str:
        name = base
        k = 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    outputs: list[onnx.ValueInfoProto] = []
    tail: list[onnx.NodeProto] = []

    def expose(tensor: str, base: str, like: str) -> str:
        name = out_name(base)
        tail.append(helper.make_node("Identity", [tensor], [name], name=f"{name}/expose"))
        outputs.append(src.value_info(like, name))
        out_names[name] = tensor
        return name

    def expose_forward(tensor: str, base: str) -> str:
        """A forward tensor is an output under its own name: behind an Identity, onnxruntime's
        EliminateIdentity and Pad+Conv fusion together leave a dangling input (tf2onnx's
        ZeroPadding2D before a strided depthwise conv, when its input is a layer)."""
        if tensor in src.inputs or tensor in out_names.values() or tensor in out_names:
            return expose(tensor, base, tensor)
        outputs.append(src.value_info(tensor))
        out_names[tensor] = tensor
        return tensor

    score_out = expose(score_name, SCORE, score_name)
    acts, grads = [], []
    for i, (layer, g) in enumerate(zip(layers, layer_grads, strict=True)):
        acts.append(expose_forward(layer, f"activation_{i}"))
        grads.append(expose(g, f"gradient_{i}", layer))
    image_out = expose(image_grad, "input_gradient", pixels) if image_grad and pixels else None

    companion = onnx.ModelProto()
    companion.ir_version = src.model.ir_version
    companion.producer_name = "cnnvis-companion"
    companion.opset_import.extend(src.model.opset_import)
    _assemble(companion.graph, src, sweep, tail, outputs)
    spec = CompanionSpec(
        image_input=image,
        seed=sweep.seed,
        score=score_out,
        layers=layers,
        activations=tuple(acts),
        gradients=tuple(grads),
        input_gradient=image_out,
    )
    return companion, spec


def _first_float(src: SourceGraph, image: str) -> str:
    """The tensor the input gradient is taken at: the image input itself, or, for a model fed
    integer pixels (uint8 with preprocessing in the graph), the first floating-point tensor
    computed from it (its Cast), which has the image's shape."""
    if src.is_float(image):
        return image
    tensor = image
    for _ in range(8):  # Cast, or Identity/Reshape plumbing before it
        nodes = src.consumers.get(tensor, [])
        if len(nodes) != 1 or len(nodes[0].output) != 1:
            break
        tensor = nodes[0].output[0]
        if src.is_float(tensor):
            return tensor
    raise UnsupportedModel(
        f"the image input {image!r} is not floating point and no single floating-point tensor "
        "follows it (a Cast), so there is no pixel gradient to take"
    )


class _Sweep:
    """The reverse pass over the nodes between the requested tensors and the score."""

    def __init__(
        self,
        src: SourceGraph,
        score: str,
        layers: tuple[str, ...],
        image: str | None,
        rule: ReluRule,
        options: BuildOptions | None,
    ) -> None:
        self.src = src
        self.score = score
        self.targets = set(layers) | ({image} if image else set())
        self.taken: set[str] = (
            set(src.producer) | set(src.initializers) | {i.name for i in src.graph.input}
        )
        self.seed = SEED if SEED not in self.taken else "cnnvis_seed"
        self.taken.add(self.seed)
        self.writer = GraphWriter(src.opset, self.taken)
        self.rule = rule
        self.options: dict[str, Any] = vars(options or BuildOptions())
        self._contribs: dict[str, list[str]] = {score: [self.seed]}
        self._total: dict[str, str | None] = {}
        self._run()

    def _run(self) -> None:
        src = self.src
        # Float tensors downstream of a requested tensor (constants and Shape-derived integer
        # subgraphs carry no gradient) and tensors the score depends on.
        self.active = src.downstream(self.targets, float_only=True) | self.targets
        self.relevant = src.upstream([self.score])
        for node in reversed(src.nodes):
            if not any(o in self.relevant for o in node.output):
                continue
            needed = [i in self.active and i != "" for i in node.input]
            if not any(needed):
                continue
            grads_out = [self.total(o) if o else None for o in node.output]
            if all(g is None for g in grads_out):
                continue
            self._differentiate(node, needed, grads_out)

    def _differentiate(
        self, node: onnx.NodeProto, needed: list[bool], grads_out: list[str | None]
    ) -> None:
        rule = REGISTRY.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise UnsupportedModel(
                f"no gradient rule for op {node.op_type!r} (domain {node.domain or 'ai.onnx'!r}) "
                f"at node {node.name!r}; path to the score: {format_path(self.path_via(node))}"
            )
        ctx = RuleContext(
            node,
            self.writer,
            grads_out,
            needed,
            self.src.shapes,
            self.src.dtypes,
            self.src.constant,
            self.rule,
            self.options,
            self.src,
        )
        try:
            results = list(rule.fn(ctx))
        except UnknownShape as exc:
            raise UnsupportedModel(
                f"{describe(node)} needs the static shape of {exc.args[0]!r}, which shape "
                f"inference could not determine; path: {format_path(self.path_via(node))}"
            ) from exc
        for i, grad in enumerate(results):
            if grad is None or not needed[i]:
                continue
            if rule.broadcast:
                grad = ctx.unbroadcast(grad, ctx.shape(node.output[0]), node.input[i])
            self._contribs.setdefault(node.input[i], []).append(grad)

    def total(self, tensor: str) -> str | None:
        """The summed gradient of ``tensor`` (call only once all its consumers are swept)."""
        if tensor not in self._total:
            parts = self._contribs.get(tensor, [])
            if not parts:
                self._total[tensor] = None
            elif len(parts) == 1:
                self._total[tensor] = parts[0]
            else:
                self._total[tensor] = self.writer.node("Sum", parts, 1, f"{tensor}/fanout")[0]
        return self._total[tensor]

    def gradient_of(self, tensor: str) -> str:
        grad = self.total(tensor)
        if grad is None:
            raise UnsupportedModel(
                f"tensor {tensor!r} does not influence the score {self.score!r}, so its "
                "gradient is identically zero; choose a tensor upstream of the score"
            )
        return grad

    def path_via(self, node: onnx.NodeProto) -> list[str]:
        """A path requested tensor -> ... -> node -> ... -> score, for error messages."""
        back: list[str] = []
        tensor = next((i for i in node.input if i in self.active), None)
        while tensor is not None and tensor not in self.targets:
            producer = self.src.producer.get(tensor)
            if producer is None:
                break
            back.append(describe(producer))
            tensor = next((i for i in producer.input if i in self.active), None)
        start = [repr(tensor)] if tensor is not None else []
        forward = [describe(node)]
        outs = [o for o in node.output if o in self.relevant]
        seen = set()
        while outs and outs[0] != self.score and outs[0] not in seen:
            seen.add(outs[0])
            nxt = next(
                (
                    c
                    for c in self.src.consumers.get(outs[0], [])
                    if any(o in self.relevant for o in c.output)
                ),
                None,
            )
            if nxt is None:
                break
            forward.append(describe(nxt))
            outs = [o for o in nxt.output if o in self.relevant]
        return [*start, *reversed(back), *forward, f"score {self.score!r}"]


def _assemble(
    graph: onnx.GraphProto,
    src: SourceGraph,
    sweep: _Sweep,
    tail: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
) -> None:
    """Fill ``graph`` in place (no intermediate copies of the weights)."""
    nodes = [*src.nodes, *sweep.writer.nodes, *tail]
    needed = {o.name for o in outputs}
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):  # all lists are topologically ordered, in that order
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer-scope tensors
                for g in [attr.g, *attr.graphs]:
                    needed.update(outer_names(g))
    kept.reverse()
    graph.name = f"{src.graph.name}_companion"
    graph.node.extend(kept)
    graph.input.extend(vi for vi in src.graph.input if vi.name in src.inputs)
    graph.input.append(src.value_info(sweep.score, sweep.seed))
    graph.output.extend(outputs)
    graph.initializer.extend(t for t in src.graph.initializer if t.name in needed)
    graph.initializer.extend(t for t in sweep.writer.initializers if t.name in needed)
    produced = {o for n in kept for o in n.output}
    graph.value_info.extend(
        vi for vi in src.graph.value_info if vi.name in produced and vi.name in src.producer
    )


def forward_model(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """The source graph exposing ``outputs`` (any tensors) and pruned to what they need."""
    src = SourceGraph(*normalise(model))
    for name in outputs:
        if not src.has_tensor(name):
            raise LayerNotFound(f"tensor {name!r} is not in the graph")
    return src.pruned(outputs)
