"""The vocabulary that gradient rules are written in, and the rule registry.

A rule receives a :class:`RuleContext` for one forward node and returns, for each node input,
the name of the tensor holding d(score)/d(input) or ``None`` (no gradient / not needed)::

    @vjp("Sigmoid")
    def sigmoid(ctx):
        y = ctx.y(0)
        return [ctx.emit("Mul", ctx.grad_out(0), ctx.emit("Mul", y, ctx.emit("Sub", ctx.one, y)))]

Shared work (summing fan-out, unbroadcasting, pruning, the missing-rule error) lives in the
engine (``builder.py``); rules only state their formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

# The backward rule at rectifying units (rules/activation.py): guided backprop and the
# deconvnet apply theirs at every rectifier (Relu, Clip from 0); ":relu" restricts it to Relu.
ReluRule = Literal["standard", "guided", "deconvnet", "guided:relu", "deconvnet:relu"]
RELU_RULES: tuple[str, ...] = ("standard", "guided", "deconvnet", "guided:relu", "deconvnet:relu")

# A dimension as known at build time: an int, a symbolic name (the batch), or None (unknown).
Dim = int | str | None
Shape = tuple[Dim, ...]

RuleFn = Callable[["RuleContext"], Sequence[str | None]]


@dataclass(frozen=True)
class Rule:
    op_type: str
    fn: RuleFn
    # True: the rule returns gradients in the output's (broadcast) shape and the engine reduces
    # them to each input's shape.
    broadcast: bool


REGISTRY: dict[str, Rule] = {}


def vjp(*op_types: str, broadcast: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register a vector-Jacobian-product rule for ONNX (default domain) op types."""

    def register(fn: RuleFn) -> RuleFn:
        for op_type in op_types:
            if op_type in REGISTRY:
                raise ValueError(f"duplicate gradient rule for {op_type}")
            REGISTRY[op_type] = Rule(op_type, fn, broadcast)
        return fn

    return register


class GraphWriter:
    """Collects the nodes and initializers that the backward pass emits."""

    def __init__(self, opset: int, taken: set[str], prefix: str = "cnnvis_bwd") -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken = taken
        self._prefix = prefix
        self._count = 0
        self._consts: dict[tuple[Any, ...], str] = {}

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{self._prefix}/{hint}/{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def node(
        self, op: str, inputs: Sequence[str], n_out: int, hint: str, **attrs: Any
    ) -> list[str]:
        outs = [self.fresh(f"{hint}/{op}") for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op, list(inputs), outs, name=self.fresh(f"{hint}/{op}_node"), **attrs)
        )
        return outs

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        value = np.ascontiguousarray(value)
        key = (value.dtype.str, value.shape, value.tobytes()) if value.size <= 64 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        if key is not None:
            self._consts[key] = name
        return name


class RuleContext:
    """One forward node seen from its gradient rule."""

    def __init__(
        self,
        node: onnx.NodeProto,
        writer: GraphWriter,
        grads_out: Sequence[str | None],
        needed: Sequence[bool],
        shapes: dict[str, Shape],
        dtypes: dict[str, int],
        constants: Callable[[str], np.ndarray | None],
        relu_rule: ReluRule,
        options: dict[str, Any],
        source: Any = None,
    ) -> None:
        self.node = node
        self.writer = writer
        self._grads_out = grads_out
        self._needed = needed
        self._shapes = shapes
        self._dtypes = dtypes
        self._constants = constants
        base, _, scope = relu_rule.partition(":")
        self.relu_rule = base  # what Relu nodes apply
        self.rectifier_rule = "standard" if scope == "relu" else base  # other rectifiers
        self.options = options
        self._source = source
        self.opset = writer.opset
        self._hint = node.name or node.op_type
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # -- the forward node ---------------------------------------------------------------
    def x(self, i: int) -> str:
        return self.node.input[i]

    def y(self, i: int) -> str:
        return self.node.output[i]

    def n_inputs(self) -> int:
        return len(self.node.input)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def grad_out(self, i: int = 0) -> str:
        """The gradient at output ``i``. A rule runs only when one of its outputs has one, so a
        single-output node always has it; multi-output rules use ``grad_out_or_none``."""
        g = self.grad_out_or_none(i)
        if g is None:
            raise AssertionError(f"{self._hint}: output {i} has no gradient")
        return g

    def grad_out_or_none(self, i: int = 0) -> str | None:
        """The gradient at output ``i``, None when nothing downstream of it is differentiated."""
        return self._grads_out[i] if i < len(self._grads_out) else None

    def needs(self, i: int) -> bool:
        return i < len(self._needed) and self._needed[i]

    def attr(self, name: str, default: Any = None) -> Any:
        value = self.attrs.get(name, default)
        if isinstance(value, bytes):
            return value.decode()
        return value

    def shape(self, name: str) -> Shape:
        if name not in self._shapes:
            raise UnknownShape(name)
        return self._shapes[name]

    def static_shape(self, name: str, skip_batch: bool = True) -> tuple[int, ...]:
        """Dims that must be known at build time (all but the first when ``skip_batch``)."""
        shape = self.shape(name)
        dims = shape[1:] if skip_batch else shape
        if any(not isinstance(d, int) for d in dims):
            raise UnknownShape(name)
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def dtype(self, name: str | None = None) -> np.dtype:
        elem = self._dtypes.get(name or self.node.output[0], onnx.TensorProto.FLOAT)
        return helper.tensor_dtype_to_np_dtype(elem)

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a tensor that is fixed at build time (initializer / Constant), or None."""
        return None if name == "" else self._constants(name)

    def int_list(self, name: str) -> list[int] | None:
        value = self.constant(name)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def shape_only_value(self, name: str, batch: int) -> np.ndarray | None:
        """Build-time value of a tensor that depends on input shapes only, at a batch size."""
        return None if self._source is None else self._source.evaluate_shape_only(name, batch)

    def producer(self, name: str) -> onnx.NodeProto | None:
        """The forward node that computes ``name`` (None for inputs and initializers)."""
        return None if self._source is None else self._source.producer.get(name)

    def element_count(self, name: str, batch: int) -> int | None:
        return None if self._source is None else self._source.element_count(name, batch)

    # -- emitting -----------------------------------------------------------------------
    def emit(self, op: str, *inputs: str, **attrs: Any) -> str:
        return self.writer.node(op, inputs, 1, self._hint, **attrs)[0]

    def emit_multi(self, op: str, inputs: Sequence[str], n_out: int, **attrs: Any) -> list[str]:
        return self.writer.node(op, inputs, n_out, self._hint, **attrs)

    def scalar(self, value: float, dtype: np.dtype | None = None) -> str:
        return self.writer.const(np.array(value, dtype=dtype or self.dtype()), "scalar")

    def ints(self, values: Sequence[int]) -> str:
        return self.writer.const(np.array(list(values), dtype=np.int64), "ints")

    def const(self, value: np.ndarray) -> str:
        return self.writer.const(value, f"{self._hint}/const")

    @property
    def one(self) -> str:
        return self.scalar(1.0)

    @property
    def zero(self) -> str:
        return self.scalar(0.0)

    # -- small helpers every rule family uses --------------------------------------------
    def reduce_sum(self, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        return self.emit("ReduceSum", x, self.ints(axes), keepdims=int(keepdims))

    def reduce_mean(self, x: str, axes: Sequence[int], count: int, keepdims: bool = True) -> str:
        # ReduceSum * 1/n: the same form for every opset (ReduceMean's axes moved to an input
        # only at opset 18).
        return self.emit("Mul", self.reduce_sum(x, axes, keepdims), self.scalar(1.0 / count))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Unsqueeze", x, self.ints(axes))

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Squeeze", x, self.ints(axes))

    def shape_of(self, name: str) -> str:
        return self.emit("Shape", name)

    def reshape_like(self, g: str, like: str) -> str:
        return self.emit("Reshape", g, self.shape_of(like))

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        return self.emit("Slice", x, self.ints(starts), self.ints(ends), self.ints(axes))

    def pad(self, x: str, pads: Sequence[int]) -> str:
        return self.emit("Pad", x, self.ints(pads))

    def cast(self, t: str) -> str:
        """``t`` cast to this node's float dtype (booleans become 0/1)."""
        elem = helper.np_dtype_to_tensor_dtype(self.dtype())
        return self.emit("Cast", t, to=elem)

    mask = cast

    def unbroadcast(self, g: str, g_shape: Shape, target: str) -> str:
        """Sum ``g`` (of shape ``g_shape``) down to the shape of forward tensor ``target``."""
        return unbroadcast(self, g, g_shape, self.shape(target))


class UnknownShape(Exception):
    """A rule needed a static dimension that shape inference could not provide."""


def unbroadcast(ctx: RuleContext, g: str, g_shape: Shape, target: Shape) -> str:
    lead = len(g_shape) - len(target)
    axes = list(range(lead))
    for j, dim in enumerate(target):
        gdim = g_shape[lead + j]
        if dim == 1 and gdim != 1:
            axes.append(lead + j)
    if not axes:
        return g
    summed = ctx.reduce_sum(g, axes, keepdims=True)
    return ctx.squeeze(summed, list(range(lead))) if lead else summed


def broadcast_shape(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for j in range(rank):
        dims = [s[j - rank + len(s)] for s in shapes if j - rank + len(s) >= 0]
        chosen: Dim = 1
        for d in dims:
            if d != 1:
                chosen = d
        out.append(chosen)
    return tuple(out)
