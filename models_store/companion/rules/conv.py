"""Conv: the input gradient as a transposed convolution that runs well on every provider.

dX = ConvTranspose(g, W) with the forward weight (its (M, C/G, k...) layout is what
ConvTranspose reads), pads = 0 and an output_padding that restores the padded length, then a
Slice of the real input window. onnxruntime's CUDA provider runs a ConvTranspose with
asymmetric pads or auto_pad on the CPU, so neither is ever emitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_store.errors import UnsupportedModel

from ..context import RuleContext, vjp


def resolve_pads(
    auto_pad: str,
    pads: Sequence[int] | None,
    in_sizes: Sequence[int],
    out_sizes: Sequence[int],
    strides: Sequence[int],
    eff_kernel: Sequence[int],
) -> tuple[list[int], list[int]]:
    """Begin/end pads per spatial axis, with SAME_* resolved from the static shapes."""
    n = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for h, o, s, k in zip(in_sizes, out_sizes, strides, eff_kernel, strict=True):
            total = max((o - 1) * s + k - h, 0)
            small = total // 2
            b = small if auto_pad == "SAME_UPPER" else total - small
            begin.append(b)
            end.append(total - b)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * n, [0] * n
    return list(pads[:n]), list(pads[n:])


def window_geometry(ctx: RuleContext, kernel: Sequence[int]) -> dict[str, list[int]]:
    """Strides, dilations and begin/end pads of a Conv/Pool node on its static shapes."""
    in_sizes = ctx.static_shape(ctx.x(0))[1:]
    out_sizes = ctx.static_shape(ctx.y(0))[1:]
    n = len(in_sizes)
    strides = list(ctx.attr("strides", None) or [1] * n)
    dilations = list(ctx.attr("dilations", None) or [1] * n)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    begin, end = resolve_pads(
        ctx.attr("auto_pad", "NOTSET"), ctx.attr("pads"), in_sizes, out_sizes, strides, eff
    )
    return {
        "in": list(in_sizes),
        "out": list(out_sizes),
        "kernel": list(kernel),
        "strides": strides,
        "dilations": dilations,
        "eff": eff,
        "begin": begin,
        "end": end,
    }


def crop_or_pad(
    ctx: RuleContext, t: str, have: Sequence[int], begin: Sequence[int], sizes: Sequence[int]
) -> str:
    """Keep [begin, begin + size) of each spatial axis of ``t`` (spatial lengths ``have``),
    zero-padding at the end where ``t`` is shorter (trailing input rows no window reads)."""
    n = len(sizes)
    axes = list(range(2, 2 + n))
    if any(b > 0 or h > b + s for b, h, s in zip(begin, have, sizes, strict=True)):
        t = ctx.slice(
            t,
            list(begin),
            [b + min(s, h - b) for b, h, s in zip(begin, have, sizes, strict=True)],
            axes,
        )
    short = [max(b + s - h, 0) for b, h, s in zip(begin, have, sizes, strict=True)]
    if any(short):
        t = ctx.pad(t, [0, 0] + [0] * n + [0, 0] + short)
    return t


def transposed_conv_grad(
    ctx: RuleContext,
    g: str,
    weight: str,
    weight_value: np.ndarray | None,
    group: int,
    geo: dict[str, list[int]],
) -> str:
    """d(input) of a convolution with weight (M, C/G, k...) given d(output) ``g``."""
    choice = ctx.options.get("grouped" if group > 1 else "dense", "conv_transpose")
    unit_stride = all(st == 1 for st in geo["strides"])
    if weight_value is not None and (
        choice == "flipped_conv" or (choice == "auto" and unit_stride)
    ):
        return flipped_conv_grad(ctx, g, weight_value, group, geo)
    n = len(geo["in"])
    full = [(o - 1) * s + e for o, s, e in zip(geo["out"], geo["strides"], geo["eff"], strict=True)]
    attrs = {
        "strides": geo["strides"],
        "dilations": geo["dilations"],
        "group": group,
        "kernel_shape": geo["kernel"],
    }
    # Symmetric pads p = begin with output_padding H + 2p - full land exactly on the input
    # window, no Slice needed (symmetric pads are fine on CUDA; asymmetric ones are not).
    sym_pad = [h + 2 * b - f for h, b, f in zip(geo["in"], geo["begin"], full, strict=True)]
    if all(
        0 <= p < max(s, d)
        for p, s, d in zip(sym_pad, geo["strides"], geo["dilations"], strict=True)
    ):
        attrs["pads"] = [*geo["begin"], *geo["begin"]]
        if any(sym_pad):
            attrs["output_padding"] = sym_pad
        return ctx.emit("ConvTranspose", g, weight, **attrs)
    # Otherwise pads 0 and an output_padding (< stride: the shortfall is at most the remainder
    # of the forward's floor division), then a Slice of the input window.
    out_pad = [max(b + h - f, 0) for b, h, f in zip(geo["begin"], geo["in"], full, strict=True)]
    attrs["pads"] = [0] * (2 * n)
    if any(out_pad):
        attrs["output_padding"] = out_pad
    dx = ctx.emit("ConvTranspose", g, weight, **attrs)
    have = [f + p for f, p in zip(full, out_pad, strict=True)]
    return crop_or_pad(ctx, dx, have, geo["begin"], geo["in"])


def flipped_conv_grad(
    ctx: RuleContext, g: str, weight: np.ndarray, group: int, geo: dict[str, list[int]]
) -> str:
    """The same gradient as a forward grouped Conv: zero-stuff g by the stride, then convolve
    with the spatially flipped kernel, W'[g*(C/G)+ci, mo] = flip(W[g*(M/G)+mo, ci])."""
    n = len(geo["in"])
    m, c_per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    w = weight.reshape(group, m // group, c_per_group, *kernel)
    w = np.swapaxes(w, 1, 2).reshape(group * c_per_group, m // group, *kernel)
    w = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + n))))
    strides = geo["strides"]
    stuffed_len = list(geo["out"])
    if any(s > 1 for s in strides):
        channels = m  # g has one channel per forward output channel
        interleave = [3 + 2 * j for j in range(n)]
        t = ctx.unsqueeze(g, interleave)
        pads_end = []
        for s in strides:
            pads_end += [0, s - 1]
        t = ctx.pad(t, [0] * (2 + 2 * n) + [0, 0, *pads_end])
        stuffed_len = [o * s for o, s in zip(geo["out"], strides, strict=True)]
        g = ctx.emit("Reshape", t, ctx.ints([0, channels, *stuffed_len]))
    # Full transposed-conv output = Conv(stuffed, flipped, pads eff-1 each side) over the
    # first (o-1)*s+1 stuffed positions; fold the crop [begin, begin+H) into the pads.
    begin = [e - 1 - b for e, b in zip(geo["eff"], geo["begin"], strict=True)]
    # Conv output length = sl + begin + end - e + 1 must equal H, starting at -begin offset.
    end = [
        h - sl - bp + e - 1
        for h, sl, bp, e in zip(geo["in"], stuffed_len, begin, geo["eff"], strict=True)
    ]
    lead_crop = [max(-b, 0) for b in begin]
    tail_crop = [max(-e, 0) for e in end]
    pads = [max(b, 0) for b in begin] + [max(e, 0) for e in end]
    dx = ctx.emit(
        "Conv",
        g,
        ctx.const(w.astype(ctx.dtype(), copy=False)),
        group=group,
        dilations=geo["dilations"],
        strides=[1] * n,
        pads=pads,
        kernel_shape=list(kernel),
    )
    if any(lead_crop) or any(tail_crop):
        have = [h + lc + tc for h, lc, tc in zip(geo["in"], lead_crop, tail_crop, strict=True)]
        dx = crop_or_pad(ctx, dx, have, lead_crop, geo["in"])
    return dx


@vjp("Conv")
def conv(ctx: RuleContext) -> list[str | None]:
    if ctx.needs(1) or ctx.needs(2):
        raise UnsupportedModel(
            f"Conv {ctx.node.name!r} has a weight or bias computed from the input; only "
            "constant-weight convolutions are supported"
        )
    weight = ctx.x(1)
    kernel = ctx.attr("kernel_shape") or list(ctx.static_shape(weight, skip_batch=False)[2:])
    geo = window_geometry(ctx, kernel)
    grad = transposed_conv_grad(
        ctx, ctx.grad_out(0), weight, ctx.constant(weight), ctx.attr("group", 1), geo
    )
    return [grad]
