"""Data movement: the gradient is the same numbers moved back into the input's layout."""

from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

from models_store.errors import UnsupportedModel

from ..context import RuleContext, vjp

_HUGE = 2**62  # Slice ends this large mean "to the end"
_TO_THE_END = 2**31 - 1  # tf2onnx writes INT32_MAX for "to the end"; no axis is that long


@vjp("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: RuleContext) -> list[str | None]:
    # Shape(x) rather than a baked shape: the batch dimension stays dynamic.
    return [ctx.reshape_like(ctx.grad_out(0), ctx.x(0))]


@vjp("Identity", "Dropout")
def identity(ctx: RuleContext) -> list[str | None]:
    return [ctx.grad_out(0)]


@vjp("Cast")
def cast(ctx: RuleContext) -> list[str | None]:
    elem = helper.np_dtype_to_tensor_dtype(ctx.dtype(ctx.x(0)))
    return [ctx.emit("Cast", ctx.grad_out(0), to=elem)]


@vjp("Transpose")
def transpose(ctx: RuleContext) -> list[str | None]:
    rank = ctx.rank(ctx.x(0))
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.emit("Transpose", ctx.grad_out(0), perm=inverse)]


def _static_dim(ctx: RuleContext, name: str, axis: int) -> int:
    dim = ctx.shape(name)[axis]
    if not isinstance(dim, int):
        raise UnsupportedModel(
            f"{ctx.node.op_type} {ctx.node.name!r} works along a dynamic axis ({axis})"
        )
    return dim


@vjp("Concat")
def concat(ctx: RuleContext) -> list[str | None]:
    rank = ctx.rank(ctx.y(0))
    axis = ctx.attr("axis") % rank
    grads: list[str | None] = []
    start = 0
    for i in range(ctx.n_inputs()):
        size = _static_dim(ctx, ctx.x(i), axis)
        if ctx.needs(i):
            grads.append(ctx.slice(ctx.grad_out(0), [start], [start + size], [axis]))
        else:
            grads.append(None)
        start += size
    return grads


@vjp("Split")
def split(ctx: RuleContext) -> list[str | None]:
    axis = ctx.attr("axis", 0) % ctx.rank(ctx.x(0))
    parts = []
    for i, out in enumerate(ctx.node.output):
        g = ctx.grad_out_or_none(i)
        if g is None:  # an unused output contributes zeros
            zero = numpy_helper.from_array(np.zeros(1, ctx.dtype()))
            g = ctx.emit("ConstantOfShape", ctx.shape_of(out), value=zero)
        parts.append(g)
    return [parts[0] if len(parts) == 1 else ctx.emit("Concat", *parts, axis=axis), None]


def _picked(start: int, end: int, step: int, dim: int) -> range:
    """The indices a Slice takes along one axis (ONNX's clamping, then Python's range)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return range(start, end, step)


def _stuff(ctx: RuleContext, g: str, axis: int, rank: int, stride: int) -> str:
    """g with stride - 1 zeros after every element along ``axis`` (no scatter): move the
    axis last, append a zero-padded unit axis, merge the two."""
    perm = [*[a for a in range(rank) if a != axis], axis]
    inverse = [perm.index(a) for a in range(rank)]
    moved = ctx.emit("Transpose", g, perm=perm) if axis != rank - 1 else g
    grown = ctx.pad(ctx.unsqueeze(moved, [rank]), [0] * (2 * rank + 1) + [stride - 1])
    merged = ctx.emit("Reshape", grown, ctx.ints([0] * (rank - 1) + [-1]))
    return ctx.emit("Transpose", merged, perm=inverse) if axis != rank - 1 else merged


@vjp("Slice")
def slice_(ctx: RuleContext) -> list[str | None]:
    """dX: g put back where the slice took it, zeros elsewhere. Unit steps pad; a reversed
    axis flips first; a stride k zero-stuffs by k first (each axis independent)."""
    x = ctx.x(0)
    shape = ctx.shape(x)
    rank = len(shape)
    starts, ends = ctx.int_list(ctx.x(1)), ctx.int_list(ctx.x(2))
    axes = ctx.int_list(ctx.x(3)) if ctx.has_input(3) else None
    steps = ctx.int_list(ctx.x(4)) if ctx.has_input(4) else None
    if (
        starts is None
        or ends is None
        or (ctx.has_input(3) and axes is None)
        or (ctx.has_input(4) and steps is None)
    ):
        raise UnsupportedModel(f"Slice {ctx.node.name!r} has non-constant bounds")
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    g = ctx.grad_out(0)
    pads = [0] * (2 * rank)
    flip_axes = []
    strided: list[tuple[int, int]] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis %= rank
        dim = shape[axis]
        if not isinstance(dim, int):  # the batch axis: only "all of it" is differentiable
            if step == 1 and start == 0 and end >= _TO_THE_END:
                continue
            raise UnsupportedModel(f"Slice {ctx.node.name!r} cuts a dynamic axis")
        picked = _picked(start, end, step, dim)
        if step < 0:
            flip_axes.append(axis)
        if not picked:
            raise UnsupportedModel(f"Slice {ctx.node.name!r} takes nothing along axis {axis}")
        lo, hi = min(picked), max(picked) + 1
        if abs(step) > 1:
            strided.append((axis, abs(step)))
            hi = lo + len(picked) * abs(step)  # the stuffed gradient's extent
        pads[axis], pads[rank + axis] = lo, dim - hi
    if flip_axes:
        n = len(flip_axes)
        g = ctx.emit(
            "Slice",
            g,
            ctx.ints([-1] * n),
            ctx.ints([-_HUGE] * n),
            ctx.ints(flip_axes),
            ctx.ints([-1] * n),
        )
    for axis, stride in strided:
        g = _stuff(ctx, g, axis, rank, stride)
    if any(pads):  # negative "after" pads crop the stuffing's trailing zeros
        g = ctx.pad(g, pads)
    return [g, None, None, None, None]


@vjp("Pad")
def pad(ctx: RuleContext) -> list[str | None]:
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise UnsupportedModel(f"Pad {ctx.node.name!r}: mode {mode!r} has no gradient rule")
    rank = ctx.rank(ctx.x(0))
    pads = ctx.attr("pads") or ctx.int_list(ctx.x(1))
    if pads is None:
        raise UnsupportedModel(f"Pad {ctx.node.name!r} has non-constant pads")
    axes = ctx.int_list(ctx.x(3)) if ctx.has_input(3) else None
    axes = [a % rank for a in axes] if axes else list(range(rank))
    n = len(axes)
    g = ctx.grad_out(0)
    starts, ends, slice_axes = [], [], []
    regrow = [0] * (2 * rank)
    for j, axis in enumerate(axes):
        before, after = pads[j], pads[n + j]
        if before > 0 or after > 0:
            starts.append(max(before, 0))
            ends.append(-after if after > 0 else _HUGE)
            slice_axes.append(axis)
        regrow[axis], regrow[rank + axis] = max(-before, 0), max(-after, 0)
    if slice_axes:
        g = ctx.slice(g, starts, ends, slice_axes)
    if any(regrow):  # negative pads cropped the input: those positions get zeros
        g = ctx.pad(g, regrow)
    return [g, None, None, None]


def _one_hot(indices: np.ndarray, depth: int, dtype: np.dtype) -> np.ndarray:
    flat = indices.reshape(-1)
    matrix = np.zeros((flat.size, depth), dtype=dtype)
    matrix[np.arange(flat.size), flat] = 1
    return matrix


@vjp("Gather")
def gather(ctx: RuleContext) -> list[str | None]:
    indices = ctx.constant(ctx.x(1))
    if indices is None:
        return _gather_shape_indexed(ctx)
    x = ctx.x(0)
    rank = ctx.rank(x)
    axis = ctx.attr("axis", 0) % rank
    dim = _static_dim(ctx, x, axis)
    indices = np.where(indices < 0, indices + dim, indices).astype(np.int64)
    g = ctx.grad_out(0)
    if indices.ndim == 0:  # x[..., i, ...]: put the slice back in place
        index = int(indices)
        pads = [0] * (2 * rank)
        pads[axis], pads[rank + axis] = index, dim - index - 1
        return [ctx.pad(ctx.unsqueeze(g, [axis]), pads), None]
    if indices.ndim != 1:
        raise UnsupportedModel(f"Gather {ctx.node.name!r}: only 0-D/1-D indices are supported")
    # Move the gathered axis last, contract it with the one-hot (m, dim), move it back.
    perm = [*[a for a in range(rank) if a != axis], axis]
    inverse = [perm.index(a) for a in range(rank)]
    moved = ctx.emit("Transpose", g, perm=perm) if axis != rank - 1 else g
    back = ctx.emit("MatMul", moved, ctx.const(_one_hot(indices, dim, ctx.dtype())))
    return [ctx.emit("Transpose", back, perm=inverse) if axis != rank - 1 else back, None]


_PROBE_BATCHES = (1, 2, 5)


def _gather_shape_indexed(ctx: RuleContext) -> list[str | None]:
    """Gather on a flat tensor with indices computed from the batch size (the dynamo
    exporter's as_strided). The indices are evaluated at build time for a few batch sizes:
    an identity passes the gradient through; a permutation is inverted at run time with
    TopK (a sort, no scatter). Anything else is refused."""
    x, index = ctx.x(0), ctx.x(1)
    if ctx.rank(x) != 1:
        raise UnsupportedModel(
            f"Gather {ctx.node.name!r}: indices computed at run time are only supported on "
            "a flat tensor"
        )
    kinds = set()
    for batch in _PROBE_BATCHES:
        values, count = ctx.shape_only_value(index, batch), ctx.element_count(x, batch)
        if values is None or count is None or values.size != count:
            raise UnsupportedModel(
                f"Gather {ctx.node.name!r}: indices depend on input values or do not cover "
                "the data; no gradient rule"
            )
        values = values.reshape(-1)
        if np.array_equal(values, np.arange(count)):
            kinds.add("identity")
        elif np.array_equal(np.sort(values), np.arange(count)):
            kinds.add("permutation")
        else:
            raise UnsupportedModel(
                f"Gather {ctx.node.name!r}: run-time indices are not a permutation"
            )
    g = ctx.grad_out(0)
    if kinds == {"identity"}:
        return [ctx.reshape_like(g, x), None]
    # inverse[j] = the position holding j = the order that sorts the indices ascending.
    flat_index = ctx.emit("Reshape", index, ctx.ints([-1]))
    _, inverse = ctx.emit_multi(
        "TopK", [flat_index, ctx.shape_of(flat_index)], 2, axis=0, largest=0, sorted=1
    )
    flat_g = ctx.emit("Reshape", g, ctx.ints([-1]))
    return [ctx.emit("Gather", flat_g, inverse, axis=0), None]


@vjp("GatherND")
def gather_nd(ctx: RuleContext) -> list[str | None]:
    """Constant indices (dynamo's adaptive pooling): dX = onehot^T @ g on the indexed dims."""
    indices = ctx.constant(ctx.x(1))
    if indices is None or ctx.attr("batch_dims", 0):
        raise UnsupportedModel(
            f"GatherND {ctx.node.name!r}: only constant indices with batch_dims=0 are supported"
        )
    x = ctx.x(0)
    q = indices.shape[-1]
    lead = [_static_dim(ctx, x, a) for a in range(q)]
    flat = np.asarray(
        np.ravel_multi_index(
            tuple(np.where(indices < 0, indices + np.array(lead), indices).reshape(-1, q).T), lead
        )
    )
    one_hot_t = np.ascontiguousarray(_one_hot(flat, int(np.prod(lead)), ctx.dtype()).T)
    g = ctx.emit("Reshape", ctx.grad_out(0), ctx.ints([flat.size, -1]))
    back = ctx.emit("MatMul", ctx.const(one_hot_t), g)
    return [ctx.reshape_like(back, x), None]


def _axis_matrix(ctx: RuleContext, axis: int, size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) interpolation matrix of this Resize along one axis, found by
    running the node's own attributes on the identity (Resize is separable per axis)."""
    import onnx
    import onnxruntime as ort

    rank = ctx.rank(ctx.x(0))
    shape_in = [1] * rank
    shape_in[0], shape_in[axis] = size_in, size_in
    sizes = [1] * rank
    sizes[0], sizes[axis] = size_in, size_out
    attrs = {k: v for k, v in ctx.attrs.items() if k not in ("axes", "keep_aspect_ratio_policy")}
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "axis",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape_in)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(sizes, np.int64), "sizes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    model.ir_version = min(model.ir_version, 9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    eye = np.eye(size_in, dtype=np.float32).reshape(shape_in)
    out = sess.run(None, {"x": eye})[0]  # (size_in, ..., size_out, ...): column k = image of e_k
    return np.moveaxis(out, axis, 1).reshape(size_in, size_out).T.astype(np.float64)


@vjp("Resize")
def resize(ctx: RuleContext) -> list[str | None]:
    """Separable interpolation: dX = A_h^T g A_w with per-axis matrices built at build time."""
    x = ctx.x(0)
    shape_in, shape_out = ctx.shape(x), ctx.shape(ctx.y(0))
    rank = len(shape_in)
    changed = [a for a in range(rank) if shape_in[a] != shape_out[a]]
    if any(a < rank - 2 for a in changed) or ctx.attr("coordinate_transformation_mode") == (
        "tf_crop_and_resize"
    ):
        raise UnsupportedModel(
            f"Resize {ctx.node.name!r}: only resizing of the last two axes is supported"
        )
    g = ctx.grad_out(0)
    for axis in changed:
        size_in, size_out = shape_in[axis], shape_out[axis]
        if not isinstance(size_in, int) or not isinstance(size_out, int):
            raise UnsupportedModel(f"Resize {ctx.node.name!r}: dynamic spatial size")
        matrix = _axis_matrix(ctx, axis, size_in, size_out).astype(ctx.dtype())
        if axis == rank - 1:  # (..., out) @ (out, in)
            g = ctx.emit("MatMul", g, ctx.const(matrix))
        else:  # (in, out) @ (..., out, W)
            g = ctx.emit("MatMul", ctx.const(np.ascontiguousarray(matrix.T)), g)
    return [g, None, None, None]
