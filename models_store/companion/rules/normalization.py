"""Inference-mode normalisations."""

from __future__ import annotations

import numpy as np

from models_store.errors import UnsupportedModel

from ..context import RuleContext, vjp


@vjp("BatchNormalization")
def batch_norm(ctx: RuleContext) -> list[str | None]:
    """Inference: y = (x - mean) * scale / sqrt(var + eps) + bias, so dX = g * scale / sqrt(...),
    folded into one (C, 1, ...) constant at build time when the statistics are constants."""
    if ctx.attr("training_mode", 0):
        raise UnsupportedModel(f"BatchNormalization {ctx.node.name!r} is in training mode")
    if any(ctx.needs(i) for i in range(1, 5)):
        raise UnsupportedModel(
            f"BatchNormalization {ctx.node.name!r} has statistics computed from the input"
        )
    rank = ctx.rank(ctx.x(0))
    eps = float(ctx.attr("epsilon", 1e-5))
    scale, var = ctx.constant(ctx.x(1)), ctx.constant(ctx.x(4))
    trailing = [1] * (rank - 2)
    if scale is not None and var is not None:
        factor = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        factor_name = ctx.const(factor.reshape(-1, *trailing).astype(ctx.dtype()))
    else:
        std = ctx.emit("Sqrt", ctx.emit("Add", ctx.x(4), ctx.scalar(eps)))
        factor_name = ctx.emit("Div", ctx.x(1), std)
        factor_name = ctx.unsqueeze(factor_name, list(range(1, 1 + len(trailing))))
    return [ctx.emit("Mul", ctx.grad_out(0), factor_name)]


@vjp("LayerNormalization")
def layer_norm(ctx: RuleContext) -> list[str | None]:
    """r = 1/sqrt(var + eps), xh = (x - mu) r, gy = g * scale:
    dX = r (gy - mean(gy) - xh mean(gy xh)) over the normalised axes."""
    if ctx.needs(1) or (ctx.has_input(2) and ctx.needs(2)):
        raise UnsupportedModel(
            f"LayerNormalization {ctx.node.name!r} has scale/bias computed from the input"
        )
    x, g = ctx.x(0), ctx.grad_out(0)
    shape = ctx.shape(x)
    rank = len(shape)
    axis = ctx.attr("axis", -1) % rank
    axes = list(range(axis, rank))
    dims = [shape[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        raise UnsupportedModel(f"LayerNormalization {ctx.node.name!r}: dynamic normalised axes")
    count = int(np.prod(dims))  # type: ignore[arg-type]
    eps = float(ctx.attr("epsilon", 1e-5))
    centred = ctx.emit("Sub", x, ctx.reduce_mean(x, axes, count))
    var = ctx.reduce_mean(ctx.emit("Mul", centred, centred), axes, count)
    r = ctx.emit("Reciprocal", ctx.emit("Sqrt", ctx.emit("Add", var, ctx.scalar(eps))))
    xh = ctx.emit("Mul", centred, r)
    gy = ctx.emit("Mul", g, ctx.x(1))
    inner = ctx.emit(
        "Sub",
        ctx.emit("Sub", gy, ctx.reduce_mean(gy, axes, count)),
        ctx.emit("Mul", xh, ctx.reduce_mean(ctx.emit("Mul", gy, xh), axes, count)),
    )
    return [ctx.emit("Mul", r, inner), None, None]
