"""Pooling and reductions: MaxPool, AveragePool, global pools, ReduceMean/ReduceSum/ReduceMax."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper

from models_store.errors import UnsupportedModel

from ..context import RuleContext, vjp
from .conv import crop_or_pad, transposed_conv_grad, window_geometry


def _non_overlapping(geo: dict[str, list[int]]) -> bool:
    return geo["kernel"] == geo["strides"] and all(d == 1 for d in geo["dilations"])


def _windows_back(ctx: RuleContext, per_offset: str, geo: dict[str, list[int]]) -> str:
    """Route (N, C, K, *out) per-window-offset gradients back to (N, C, *in).

    Offsets are in row-major kernel order. Non-overlapping windows are a pure depth-to-space
    rearrangement; overlapping ones a grouped ConvTranspose with a one-hot kernel.
    """
    n = len(geo["in"])
    channels = ctx.static_shape(ctx.x(0))[0]
    kernel, out = geo["kernel"], geo["out"]
    k_total = int(np.prod(kernel))
    if _non_overlapping(geo):
        # (N, C, k1..kn, o1..on) -> (N, C, o1, k1, ..., on, kn) -> (N, C, o1*k1, ...)
        t = ctx.emit("Reshape", per_offset, ctx.ints([0, channels, *kernel, *out]))
        perm = [0, 1]
        for j in range(n):
            perm += [2 + n + j, 2 + j]
        t = ctx.emit("Transpose", t, perm=perm)
        full = [o * k for o, k in zip(out, kernel, strict=True)]
        t = ctx.emit("Reshape", t, ctx.ints([0, channels, *full]))
        return crop_or_pad(ctx, t, full, geo["begin"], geo["in"])
    stacked = ctx.emit("Reshape", per_offset, ctx.ints([0, channels * k_total, *out]))
    one_hot = np.zeros((channels * k_total, 1, *kernel), dtype=ctx.dtype())
    for c in range(channels):
        for k, offset in enumerate(itertools.product(*[range(k) for k in kernel])):
            one_hot[(c * k_total + k, 0, *offset)] = 1
    return transposed_conv_grad(ctx, stacked, ctx.const(one_hot), one_hot, channels, geo)


@vjp("MaxPool")
def max_pool(ctx: RuleContext) -> list[str | None]:
    """First maximum of each window (row-major) takes the gradient, as in PyTorch.

    Scatter-free: each kernel offset's strided view of the -inf padded input is compared with
    Y; a running count along the offsets keeps only the first match.
    """
    if ctx.attr("storage_order", 0) not in (0,):
        raise UnsupportedModel(f"MaxPool {ctx.node.name!r}: storage_order=1 is not supported")
    geo = window_geometry(ctx, ctx.attr("kernel_shape"))
    n = len(geo["in"])
    axes = list(range(2, 2 + n))
    span = [(o - 1) * s + e for o, s, e in zip(geo["out"], geo["strides"], geo["eff"], strict=True)]
    x = ctx.x(0)
    # Pad / crop the input to exactly the span the windows read.
    tail = [sp - b - h for sp, b, h in zip(span, geo["begin"], geo["in"], strict=True)]
    if any(t < 0 for t in tail):
        x = ctx.slice(
            x, [0] * n, [h + min(t, 0) for h, t in zip(geo["in"], tail, strict=True)], axes
        )
    if any(geo["begin"]) or any(t > 0 for t in tail):
        pads = [0, 0, *geo["begin"], 0, 0, *[max(t, 0) for t in tail]]
        x = ctx.emit("Pad", x, ctx.ints(pads), ctx.scalar(-np.inf))
    views = []
    for offset in itertools.product(*[range(k) for k in geo["kernel"]]):
        starts = [i * d for i, d in zip(offset, geo["dilations"], strict=True)]
        ends = [
            st + (o - 1) * s + 1
            for st, o, s in zip(starts, geo["out"], geo["strides"], strict=True)
        ]
        view = ctx.emit(
            "Slice", x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes), ctx.ints(geo["strides"])
        )
        views.append(ctx.unsqueeze(view, [2]))
    stacked = views[0] if len(views) == 1 else ctx.emit("Concat", *views, axis=2)
    # The window maxima are Y. With ceil_mode, onnx's shape inference can keep a last window
    # that starts in the end padding (the runtime drops it), and onnxruntime then refuses to
    # compare the views with Y of the wrong static size: take the maxima of the views.
    if not ctx.attr("ceil_mode", 0):
        maxima = ctx.unsqueeze(ctx.y(0), [2])
    elif ctx.opset >= 18:  # ReduceMax's axes became an input
        maxima = ctx.emit("ReduceMax", stacked, ctx.ints([2]), keepdims=1)
    else:
        maxima = ctx.emit("ReduceMax", stacked, axes=[2], keepdims=1)
    hit = ctx.emit("Equal", stacked, maxima)
    count = ctx.emit("CumSum", ctx.mask(hit), ctx.ints([2]))
    first = ctx.emit("And", hit, ctx.emit("Equal", count, ctx.one))
    per_offset = ctx.emit("Mul", ctx.mask(first), ctx.unsqueeze(ctx.grad_out(0), [2]))
    return [_windows_back(ctx, per_offset, geo)]


def _inverse_divisor(ctx: RuleContext, geo: dict[str, list[int]]) -> np.ndarray:
    """1/D per output position, D being the divisor onnxruntime's AveragePool uses.

    Found at build time by running the node's own attributes on ones: the pooled ones equal
    (real elements in the window) / D, and the real-element count is plain geometry.
    """
    import onnxruntime as ort

    shape = [1, 1, *geo["in"]]
    node = helper.make_node("AveragePool", ["x"], ["y"], **ctx.attrs)
    graph = helper.make_graph(
        [node],
        "divisor",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.opset)])
    model.ir_version = min(model.ir_version, 9)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pooled = sess.run(None, {"x": np.ones(shape, np.float32)})[0][0, 0].astype(np.float64)
    real = np.ones((), np.float64)
    for h, o, s, b, k, d in zip(
        geo["in"],
        geo["out"],
        geo["strides"],
        geo["begin"],
        geo["kernel"],
        geo["dilations"],
        strict=True,
    ):
        starts = np.arange(o) * s - b
        pos = starts[:, None] + np.arange(k)[None, :] * d
        count = ((pos >= 0) & (pos < h)).sum(axis=1).astype(np.float64)
        real = np.multiply.outer(real, count)
    return (pooled / real).astype(ctx.dtype())


@vjp("AveragePool")
def average_pool(ctx: RuleContext) -> list[str | None]:
    geo = window_geometry(ctx, ctx.attr("kernel_shape"))
    inv = _inverse_divisor(ctx, geo)
    g = ctx.grad_out(0)
    if not np.allclose(inv, inv.flat[0], rtol=0, atol=0):
        g = ctx.emit("Mul", g, ctx.const(inv))
    else:
        g = ctx.emit("Mul", g, ctx.scalar(float(inv.flat[0])))
    channels = ctx.static_shape(ctx.x(0))[0]
    if _non_overlapping(geo):
        k_total = int(np.prod(geo["kernel"]))
        per_offset = ctx.emit(
            "Expand",
            ctx.unsqueeze(g, [2]),
            ctx.ints([1, channels, k_total, *geo["out"]]),
        )
        return [_windows_back(ctx, per_offset, geo)]
    ones = np.ones((channels, 1, *geo["kernel"]), dtype=ctx.dtype())
    return [transposed_conv_grad(ctx, g, ctx.const(ones), ones, channels, geo)]


def _spatial_count(ctx: RuleContext) -> int:
    return int(np.prod(ctx.static_shape(ctx.x(0))[1:]))


@vjp("GlobalAveragePool")
def global_average_pool(ctx: RuleContext) -> list[str | None]:
    g = ctx.emit("Mul", ctx.grad_out(0), ctx.scalar(1.0 / _spatial_count(ctx)))
    return [ctx.emit("Expand", g, ctx.shape_of(ctx.x(0)))]


@vjp("GlobalMaxPool")
def global_max_pool(ctx: RuleContext) -> list[str | None]:
    n = ctx.rank(ctx.x(0)) - 2
    axes = list(range(2, 2 + n))
    hit = ctx.mask(ctx.emit("Equal", ctx.x(0), ctx.y(0)))
    share = ctx.emit("Div", ctx.grad_out(0), ctx.reduce_sum(hit, axes))
    return [ctx.emit("Mul", hit, share)]


def _reduce_axes(ctx: RuleContext) -> list[int] | None:
    rank = ctx.rank(ctx.x(0))
    axes = ctx.attr("axes")
    if axes is None and ctx.has_input(1):
        axes = ctx.int_list(ctx.x(1))
        if axes is None:
            raise UnsupportedModel(f"{ctx.node.op_type} {ctx.node.name!r}: axes must be a constant")
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return list(range(rank))
    return sorted(a % rank for a in axes)


def _keep_dims(ctx: RuleContext, g: str, axes: list[int]) -> str:
    return g if ctx.attr("keepdims", 1) else ctx.unsqueeze(g, axes)


@vjp("ReduceSum", "ReduceMean")
def reduce_sum_mean(ctx: RuleContext) -> list[str | None]:
    axes = _reduce_axes(ctx)
    if axes is None:
        return [ctx.grad_out(0)]
    g = _keep_dims(ctx, ctx.grad_out(0), axes)
    if ctx.node.op_type == "ReduceMean":
        shape = ctx.shape(ctx.x(0))
        dims = [shape[a] for a in axes]
        if not all(isinstance(d, int) for d in dims):
            raise UnsupportedModel(
                f"ReduceMean {ctx.node.name!r} reduces a dynamic axis; not supported"
            )
        count = int(np.prod([d for d in dims if isinstance(d, int)]))  # all of them (checked)
        g = ctx.emit("Mul", g, ctx.scalar(1.0 / count))
    return [ctx.emit("Expand", g, ctx.shape_of(ctx.x(0)))]


@vjp("ReduceMax")
def reduce_max(ctx: RuleContext) -> list[str | None]:
    axes = _reduce_axes(ctx)
    if axes is None:
        return [ctx.grad_out(0)]
    y = _keep_dims(ctx, ctx.y(0), axes)
    hit = ctx.mask(ctx.emit("Equal", ctx.x(0), y))
    share = ctx.emit("Div", _keep_dims(ctx, ctx.grad_out(0), axes), ctx.reduce_sum(hit, axes))
    return [ctx.emit("Mul", hit, share)]


@vjp("ReduceL2")
def reduce_l2(ctx: RuleContext) -> list[str | None]:
    """y = sqrt(sum x^2): dX = g x / y, and 0 where y = 0 (PyTorch's norm backward; F.normalize
    in Swin V2's cosine attention)."""
    axes = _reduce_axes(ctx)
    if axes is None:  # the identity on |x|
        sign = ctx.emit("Sign", ctx.x(0))
        return [ctx.emit("Mul", ctx.grad_out(0), sign)]
    y = _keep_dims(ctx, ctx.y(0), axes)
    g = _keep_dims(ctx, ctx.grad_out(0), axes)
    zero = ctx.emit("Equal", y, ctx.zero)
    safe = ctx.emit("Add", y, ctx.cast(zero))  # 1 where y = 0; x is 0 there too
    return [ctx.emit("Mul", ctx.x(0), ctx.emit("Div", g, safe))]
