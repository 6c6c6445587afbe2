"""Every rule on single-node models, over its attribute combinations.

Each case is checked two ways: against central finite differences of the forward model in a
random direction (float64 where onnxruntime has the kernels, float32 otherwise), and against
torch autograd on the equivalent torch op (in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from models_store.companion import BuildOptions

from .helpers import (
    DeconvRelu,
    DeconvRelu6,
    GuidedRelu,
    GuidedRelu6,
    build_checked,
    rel_err,
    session,
)

Tensors = dict[str, torch.Tensor]


@dataclass
class Case:
    id: str
    op: str
    inputs: dict[str, tuple[int, ...]]  # runtime inputs; the first is the "image"
    torch_fn: Callable[[Tensors], torch.Tensor]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    node_inputs: list[str] | None = None  # default: runtime inputs then consts, in order
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 17
    data: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray] | None = None
    fd: bool = True  # False where finite differences are meaningless (ties)
    rule: str = "standard"
    options: BuildOptions | None = None
    extra_nodes: list[onnx.NodeProto] = field(default_factory=list)
    n_outputs: int = 1


def away(kinks: tuple[float, ...], scale: float = 1.5, margin: float = 0.05):
    """Random data kept ``margin`` away from the rule's kinks (finite differences stay valid)."""

    def make(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        x = rng.normal(size=shape) * scale
        for k in kinks:
            near = np.abs(x - k) < margin
            x = np.where(near, k + np.where(x >= k, margin, -margin), x)
        return x

    return make


def distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All values 0.1 apart: no window has two maxima within a finite-difference step."""
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) - n / 2) * 0.1


def shifted_distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Distinct values with a random offset, so two operands never tie either."""
    return distinct(rng, shape) + rng.uniform(0.01, 0.09)


def ties(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 3, size=shape).astype(np.float64)


def positive(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(0.5, 2.0, size=shape)


RNG = np.random.default_rng(1234)


def w(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape)


def conv_case(
    id: str,
    x: tuple[int, ...],
    weight: tuple[int, ...],
    *,
    group: int = 1,
    stride: int = 1,
    dilation: int = 1,
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),  # ONNX order: top, left, bottom, right
    auto_pad: str | None = None,
    options: BuildOptions | None = None,
) -> Case:
    attrs: dict[str, Any] = {"group": group, "strides": [stride] * 2, "dilations": [dilation] * 2}
    torch_pads = pads
    if auto_pad:
        attrs["auto_pad"] = auto_pad
        if auto_pad.startswith("SAME"):
            eff = (weight[2] - 1) * dilation + 1
            out = -(-x[2] // stride)
            total = max((out - 1) * stride + eff - x[2], 0)
            small = total // 2
            b = small if auto_pad == "SAME_UPPER" else total - small
            torch_pads = (b, b, total - b, total - b)
    else:
        attrs["pads"] = list(pads)
    wv, bv = w(*weight), w(weight[0])

    def fn(t: Tensors) -> torch.Tensor:
        top, left, bottom, right = torch_pads
        xp = F.pad(t["x"], (left, right, top, bottom))
        return F.conv2d(xp, t["w"], t["b"], stride=stride, dilation=dilation, groups=group)

    return Case(id, "Conv", {"x": x}, fn, {"w": wv, "b": bv}, attrs=attrs, options=options)


FLIPPED = BuildOptions(dense="flipped_conv", grouped="flipped_conv")

CONV_CASES = [
    conv_case("conv3x3", (2, 3, 6, 6), (4, 3, 3, 3), pads=(1, 1, 1, 1)),
    conv_case("conv-stride2-odd", (2, 3, 9, 9), (4, 3, 3, 3), stride=2, pads=(1, 1, 1, 1)),
    conv_case("conv-stride2-even", (2, 3, 8, 8), (4, 3, 3, 3), stride=2, pads=(1, 1, 1, 1)),
    conv_case("conv-1x1-stride2", (1, 3, 8, 7), (5, 3, 1, 1), stride=2),
    conv_case("conv-groups", (2, 4, 7, 7), (6, 2, 3, 3), group=2, pads=(1, 1, 1, 1)),
    conv_case("conv-dilation", (1, 2, 9, 9), (3, 2, 3, 3), dilation=2, pads=(2, 2, 2, 2)),
    conv_case("conv-asym-pads", (1, 2, 7, 8), (3, 2, 3, 3), stride=2, pads=(0, 1, 1, 2)),
    conv_case("conv-same-upper", (1, 2, 7, 7), (3, 2, 3, 3), stride=2, auto_pad="SAME_UPPER"),
    conv_case("conv-same-lower", (1, 2, 8, 8), (3, 2, 4, 4), stride=2, auto_pad="SAME_LOWER"),
    conv_case("conv-valid", (1, 2, 10, 10), (3, 2, 3, 3), stride=3, auto_pad="VALID"),
    conv_case("dw-s1", (2, 4, 6, 6), (4, 1, 3, 3), group=4, pads=(1, 1, 1, 1)),
    conv_case("dw-s2", (2, 4, 9, 9), (4, 1, 3, 3), group=4, stride=2, pads=(1, 1, 1, 1)),
    conv_case("dw-s2-5x5", (1, 4, 8, 8), (4, 1, 5, 5), group=4, stride=2, pads=(2, 2, 2, 2)),
    conv_case("dw-mult2", (1, 3, 7, 7), (6, 1, 3, 3), group=3, stride=2, pads=(0, 1, 1, 0)),
    conv_case(
        "dw-s1-flipped", (2, 4, 6, 6), (4, 1, 3, 3), group=4, pads=(1, 1, 1, 1), options=FLIPPED
    ),
    conv_case(
        "dw-s2-flipped",
        (2, 4, 9, 9),
        (4, 1, 3, 3),
        group=4,
        stride=2,
        pads=(1, 1, 1, 1),
        options=FLIPPED,
    ),
    conv_case(
        "dw-s2-even-flipped",
        (1, 4, 8, 8),
        (4, 1, 5, 5),
        group=4,
        stride=2,
        pads=(2, 2, 2, 2),
        options=FLIPPED,
    ),
    conv_case(
        "dw-mult2-flipped",
        (1, 3, 7, 7),
        (6, 1, 3, 3),
        group=3,
        stride=2,
        pads=(0, 1, 1, 0),
        options=FLIPPED,
    ),
    conv_case(
        "groups-dilated-flipped",
        (1, 4, 9, 9),
        (4, 2, 3, 3),
        group=2,
        dilation=2,
        stride=2,
        pads=(2, 1, 0, 2),
        options=FLIPPED,
    ),
    conv_case(
        "dw-same-upper-flipped",
        (1, 4, 7, 7),
        (4, 1, 3, 3),
        group=4,
        stride=2,
        auto_pad="SAME_UPPER",
        options=FLIPPED,
    ),
]


def pool_case(
    id: str,
    op: str,
    x: tuple[int, ...],
    k: int,
    s: int,
    p: int = 0,
    *,
    ceil: int = 0,
    include_pad: int = 0,
    dilation: int = 1,
    data=distinct,
    fd: bool = True,
) -> Case:
    attrs: dict[str, Any] = {
        "kernel_shape": [k, k],
        "strides": [s, s],
        "pads": [p] * 4,
        "ceil_mode": ceil,
    }
    if op == "MaxPool":
        attrs["dilations"] = [dilation] * 2

        def fn(t: Tensors) -> torch.Tensor:
            return F.max_pool2d(t["x"], k, s, p, dilation=dilation, ceil_mode=bool(ceil))
    else:
        attrs["count_include_pad"] = include_pad

        def fn(t: Tensors) -> torch.Tensor:
            return F.avg_pool2d(
                t["x"], k, s, p, ceil_mode=bool(ceil), count_include_pad=bool(include_pad)
            )

    return Case(id, op, {"x": x}, fn, attrs=attrs, data=data, fd=fd)


POOL_CASES = [
    pool_case("max-3x3s2p1-odd", "MaxPool", (2, 3, 9, 9), 3, 2, 1),
    pool_case("max-3x3s2p1-even", "MaxPool", (2, 3, 8, 8), 3, 2, 1),
    pool_case("max-2x2s2", "MaxPool", (2, 3, 8, 8), 2, 2),
    pool_case("max-2x2s2-odd", "MaxPool", (1, 2, 9, 9), 2, 2),
    pool_case("max-3x3s2-ceil", "MaxPool", (1, 3, 8, 8), 3, 2, ceil=1),
    pool_case("max-2x2s2-ceil", "MaxPool", (1, 2, 7, 7), 2, 2, ceil=1),
    pool_case("max-dilated", "MaxPool", (1, 2, 9, 9), 3, 1, 1, dilation=2),
    pool_case("max-ties-overlap", "MaxPool", (2, 3, 9, 9), 3, 2, 1, data=ties, fd=False),
    pool_case("max-ties-2x2", "MaxPool", (2, 3, 8, 8), 2, 2, data=ties, fd=False),
    pool_case("max-ties-ceil", "MaxPool", (1, 3, 8, 8), 3, 2, ceil=1, data=ties, fd=False),
    pool_case("avg-3x3s1p1-incl", "AveragePool", (2, 3, 7, 7), 3, 1, 1, include_pad=1),
    pool_case("avg-3x3s1p1-excl", "AveragePool", (2, 3, 7, 7), 3, 1, 1, include_pad=0),
    pool_case("avg-2x2s2", "AveragePool", (2, 3, 8, 8), 2, 2),
    pool_case("avg-2x2s2-odd", "AveragePool", (1, 2, 9, 9), 2, 2),
    pool_case("avg-3x3s2p1-ceil-excl", "AveragePool", (1, 2, 8, 8), 3, 2, 1, ceil=1),
    pool_case("avg-3x3s2p1-ceil-incl", "AveragePool", (1, 2, 8, 8), 3, 2, 1, ceil=1, include_pad=1),
    pool_case("avg-2x2s2-ceil", "AveragePool", (1, 2, 7, 7), 2, 2, ceil=1),
    # the last ceil_mode window would start in the end padding: the runtime drops it (3 wide),
    # onnx's shape inference keeps it (4)
    pool_case("max-3x3s3p1-ceil-window-in-pad", "MaxPool", (1, 2, 8, 8), 3, 3, 1, ceil=1),
    pool_case("avg-3x3s3p1-ceil-window-in-pad", "AveragePool", (1, 2, 8, 8), 3, 3, 1, ceil=1),
]

REDUCE_CASES = [
    Case("gap", "GlobalAveragePool", {"x": (2, 3, 5, 4)}, lambda t: t["x"].mean((2, 3), True)),
    Case(
        "gmp",
        "GlobalMaxPool",
        {"x": (2, 3, 5, 4)},
        lambda t: t["x"].amax((2, 3), True),
        data=distinct,
    ),
    Case(
        "reducemean-attr",
        "ReduceMean",
        {"x": (2, 3, 5, 4)},
        lambda t: t["x"].mean((2, 3)),
        attrs={"axes": [2, 3], "keepdims": 0},
    ),
    Case(
        "reducemean-input-18",
        "ReduceMean",
        {"x": (2, 3, 5, 4)},
        lambda t: t["x"].mean((-1, -2), True),
        consts={"axes": np.array([-1, -2])},
        opset=18,
    ),
    Case(
        "reducesum-13",
        "ReduceSum",
        {"x": (2, 3, 5, 4)},
        lambda t: t["x"].sum(1),
        consts={"axes": np.array([1])},
        attrs={"keepdims": 0},
        opset=13,
    ),
    Case(
        "reducesum-all",
        "ReduceSum",
        {"x": (2, 3, 4)},
        lambda t: t["x"].sum(),
        attrs={"keepdims": 0},
    ),
    Case(
        "reducemax",
        "ReduceMax",
        {"x": (2, 3, 5)},
        lambda t: t["x"].amax(2, True),
        attrs={"axes": [2]},
        data=distinct,
    ),
]


def gemm_case(
    trans_a: int, trans_b: int, alpha: float = 1.0, beta: float = 1.0, dynamic_b: bool = False
) -> Case:
    a_shape = (4, 2) if trans_a else (2, 4)
    b_shape = (3, 4) if trans_b else (4, 3)
    inputs = {"a": a_shape, **({"b": b_shape} if dynamic_b else {})}
    consts = {**({} if dynamic_b else {"b": w(*b_shape)}), "c": w(3)}

    def fn(t: Tensors) -> torch.Tensor:
        a = t["a"].T if trans_a else t["a"]
        b = t["b"].T if trans_b else t["b"]
        return alpha * a @ b + beta * t["c"]

    return Case(
        f"gemm-tA{trans_a}-tB{trans_b}-a{alpha}{'-dynB' if dynamic_b else ''}",
        "Gemm",
        inputs,
        fn,
        consts,
        node_inputs=["a", "b", "c"],
        attrs={"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta},
    )


LINEAR_CASES = [
    *[gemm_case(ta, tb) for ta in (0, 1) for tb in (0, 1)],
    gemm_case(0, 1, alpha=0.5, beta=2.0),
    *[gemm_case(ta, tb, alpha=1.5, dynamic_b=True) for ta in (0, 1) for tb in (0, 1)],
    Case(
        "matmul-nd-const", "MatMul", {"a": (2, 3, 4, 5)}, lambda t: t["a"] @ t["b"], {"b": w(5, 6)}
    ),
    Case(
        "matmul-batch-broadcast",
        "MatMul",
        {"a": (3, 4, 5), "b": (2, 1, 5, 6)},
        lambda t: t["a"] @ t["b"],
    ),
    Case("matmul-1d-left", "MatMul", {"a": (5,), "b": (2, 5, 3)}, lambda t: t["a"] @ t["b"]),
    Case("matmul-1d-right", "MatMul", {"a": (2, 4, 5), "b": (5,)}, lambda t: t["a"] @ t["b"]),
    Case(  # attention scores and values, both operands differentiated (MaxViT)
        "einsum-attention",
        "Einsum",
        {"a": (2, 3, 4, 5), "b": (2, 3, 5, 6)},
        lambda t: torch.einsum("bhij,bhjd->bhid", t["a"], t["b"]),
        attrs={"equation": "bhij,bhjd->bhid"},
    ),
    Case(
        "einsum-ellipsis-weight",
        "Einsum",
        {"a": (2, 3, 4)},
        lambda t: torch.einsum("...ij,jk->...ik", t["a"], t["w"]),
        {"w": RNG.normal(size=(4, 5))},
        attrs={"equation": "...ij,jk->...ik"},
    ),
    Case(
        "einsum-implicit-sum",
        "Einsum",
        {"a": (2, 3, 4), "b": (4, 3)},
        lambda t: torch.einsum("nij,ji", t["a"], t["b"]),
        attrs={"equation": "nij,ji"},
    ),
]

NORM_CASES = [
    Case(
        "batchnorm",
        "BatchNormalization",
        {"x": (2, 3, 4, 4)},
        lambda t: F.batch_norm(
            t["x"], t["mean"], t["var"], t["scale"], t["bias"], training=False, eps=1e-3
        ),
        {"scale": w(3), "bias": w(3), "mean": w(3), "var": RNG.uniform(0.5, 2, 3)},
        node_inputs=["x", "scale", "bias", "mean", "var"],
        attrs={"epsilon": 1e-3},
    ),
    Case(
        "layernorm-last",
        "LayerNormalization",
        {"x": (2, 3, 6)},
        lambda t: F.layer_norm(t["x"], (6,), t["scale"], t["bias"], eps=1e-5),
        {"scale": w(6), "bias": w(6)},
        attrs={"axis": -1, "epsilon": 1e-5},
    ),
    Case(
        "layernorm-axis1",
        "LayerNormalization",
        {"x": (2, 3, 4)},
        lambda t: F.layer_norm(t["x"], (3, 4), t["scale"], t["bias"], eps=1e-5),
        {"scale": w(3, 4), "bias": w(3, 4)},
        attrs={"axis": 1, "epsilon": 1e-5},
    ),
]


X4 = {"x": (2, 3, 4, 5)}
ACTIVATION_CASES = [
    Case("relu", "Relu", X4, lambda t: F.relu(t["x"]), data=away((0,))),
    Case(
        "relu-guided",
        "Relu",
        X4,
        lambda t: GuidedRelu.apply(t["x"]),
        data=away((0,)),
        rule="guided",
        fd=False,
    ),
    Case(
        "relu-deconvnet",
        "Relu",
        X4,
        lambda t: DeconvRelu.apply(t["x"]),
        data=away((0,)),
        rule="deconvnet",
        fd=False,
    ),
    Case(
        "clip-relu6",
        "Clip",
        X4,
        lambda t: F.relu6(t["x"]),
        {"lo": np.array(0.0), "hi": np.array(6.0)},
        data=away((0, 6), scale=4),
    ),
    Case(
        "clip-relu6-guided",
        "Clip",
        X4,
        lambda t: GuidedRelu6.apply(t["x"]),
        {"lo": np.array(0.0), "hi": np.array(6.0)},
        data=away((0, 6), scale=4),
        rule="guided",
        fd=False,
    ),
    Case(
        "clip-relu6-deconvnet",
        "Clip",
        X4,
        lambda t: DeconvRelu6.apply(t["x"]),
        {"lo": np.array(0.0), "hi": np.array(6.0)},
        data=away((0, 6), scale=4),
        rule="deconvnet",
        fd=False,
    ),
    Case(  # Captum's scope: only Relu nodes change, ReLU6 keeps its true derivative
        "clip-relu6-guided-relu-only",
        "Clip",
        X4,
        lambda t: F.relu6(t["x"]),
        {"lo": np.array(0.0), "hi": np.array(6.0)},
        data=away((0, 6), scale=4),
        rule="guided:relu",
        fd=False,
    ),
    Case(  # a lower bound other than 0 is no rectifier: the guided rule leaves it alone
        "clip-shifted-guided",
        "Clip",
        X4,
        lambda t: t["x"].clamp(-0.5, 6.0),
        {"lo": np.array(-0.5), "hi": np.array(6.0)},
        data=away((-0.5, 6), scale=4),
        rule="guided",
        fd=False,
    ),
    Case(
        "clip-min-only",
        "Clip",
        X4,
        lambda t: t["x"].clamp(min=-0.5),
        {"lo": np.array(-0.5)},
        data=away((-0.5,)),
    ),
    Case(
        "leakyrelu",
        "LeakyRelu",
        X4,
        lambda t: F.leaky_relu(t["x"], 0.125),
        attrs={"alpha": 0.125},
        data=away((0,)),
    ),
    Case(
        "prelu",
        "PRelu",
        X4,
        lambda t: F.prelu(t["x"], t["slope"].reshape(-1)),
        {"slope": RNG.uniform(0.05, 0.3, (3, 1, 1))},
        data=away((0,)),
    ),
    Case("elu", "Elu", X4, lambda t: F.elu(t["x"], 0.75), attrs={"alpha": 0.75}, data=away((0,))),
    Case("sigmoid", "Sigmoid", X4, lambda t: torch.sigmoid(t["x"])),
    Case(
        "hardsigmoid-torch",
        "HardSigmoid",
        X4,
        lambda t: F.hardsigmoid(t["x"]),
        attrs={"alpha": 1 / 6, "beta": 0.5},
        data=away((-3, 3), scale=3),
    ),
    Case(
        "hardsigmoid-default",
        "HardSigmoid",
        X4,
        lambda t: (0.2 * t["x"] + 0.5).clamp(0, 1),
        data=away((-2.5, 2.5), scale=3),
    ),
    Case(
        "hardswish",
        "HardSwish",
        X4,
        lambda t: F.hardswish(t["x"]),
        data=away((-3, 3), scale=3),
        opset=14,
    ),
    Case(
        "hardswish-at-kinks",
        "HardSwish",
        {"x": (6,)},
        lambda t: F.hardswish(t["x"]),
        data=lambda rng, s: np.array([-4.0, -3.0, -1.0, 2.0, 3.0, 4.0]),
        fd=False,
        opset=14,
    ),
    Case("tanh", "Tanh", X4, lambda t: torch.tanh(t["x"])),
    Case("erf", "Erf", X4, lambda t: torch.erf(t["x"])),
    Case("gelu", "Gelu", X4, lambda t: F.gelu(t["x"]), opset=20),
    Case(
        "gelu-tanh",
        "Gelu",
        X4,
        lambda t: F.gelu(t["x"], approximate="tanh"),
        attrs={"approximate": "tanh"},
        opset=20,
    ),
    Case("softplus", "Softplus", X4, lambda t: F.softplus(t["x"])),
    Case("softmax-1", "Softmax", X4, lambda t: torch.softmax(t["x"], 1), attrs={"axis": 1}),
    Case("softmax-last", "Softmax", {"x": (3, 7)}, lambda t: torch.softmax(t["x"], -1)),
    Case("logsoftmax", "LogSoftmax", {"x": (3, 7)}, lambda t: torch.log_softmax(t["x"], -1)),
    Case("exp", "Exp", X4, lambda t: torch.exp(t["x"])),
    Case("log", "Log", X4, lambda t: torch.log(t["x"]), data=positive),
    Case("sqrt", "Sqrt", X4, lambda t: torch.sqrt(t["x"]), data=positive),
    Case("reciprocal", "Reciprocal", X4, lambda t: 1 / t["x"], data=positive),
    Case("neg", "Neg", X4, lambda t: -t["x"]),
    Case("abs", "Abs", X4, lambda t: t["x"].abs(), data=away((0,))),
]


def binary(
    op: str,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a: tuple[int, ...],
    b: tuple[int, ...],
    dynamic_b: bool,
    data=None,
) -> Case:
    inputs = {"a": a, **({"b": b} if dynamic_b else {})}
    consts = {} if dynamic_b else {"b": (positive(RNG, b) if op in ("Div", "Pow") else w(*b))}
    return Case(
        f"{op.lower()}-{a}-{b}-{'dyn' if dynamic_b else 'const'}",
        op,
        inputs,
        lambda t: fn(t["a"], t["b"]),
        consts,
        node_inputs=["a", "b"],
        data=data,
    )


ELEMENTWISE_CASES = [
    *[
        binary(op, fn, a, b, dyn, data=positive if op == "Div" else None)
        for op, fn in (
            ("Add", torch.add),
            ("Sub", torch.sub),
            ("Mul", torch.mul),
            ("Div", torch.div),
        )
        for a, b in (((2, 3, 4, 5), (3, 1, 1)), ((2, 1, 4, 5), (1, 3, 1, 5)), ((2, 3, 4), (4,)))
        for dyn in (False, True)
    ],
    binary("Div", torch.div, (3, 4), (3, 4), True, data=positive),
    binary("Pow", torch.pow, (3, 4), (1,), False, data=positive),
    binary("Pow", torch.pow, (3, 4), (3, 4), True, data=positive),
    binary("Max", torch.maximum, (2, 3, 4), (3, 1), True, data=shifted_distinct),
    binary("Min", torch.minimum, (2, 3, 4), (3, 4), False, data=shifted_distinct),
    Case("square", "Pow", {"x": (2, 3)}, lambda t: t["x"] ** 2, {"e": np.array(2.0)}),
    Case(
        "where",
        "Where",
        {"a": (2, 3, 4), "b": (3, 1)},
        lambda t: torch.where(t["c"], t["a"], t["b"]),
        {"c": RNG.random((3, 4)) > 0.5},
        node_inputs=["c", "a", "b"],
    ),
    Case(
        "expand",
        "Expand",
        {"x": (3, 1)},
        lambda t: t["x"].expand(2, 3, 4),
        {"shape": np.array([2, 1, 4])},
    ),
    Case(
        "sum3",
        "Sum",
        {"a": (2, 3), "b": (3,)},
        lambda t: t["a"] + t["b"] + t["c"],
        {"c": w(2, 1)},
        node_inputs=["a", "b", "c"],
    ),
]

I64 = np.int64
SHAPE_CASES = [
    Case(
        "reshape",
        "Reshape",
        {"x": (2, 3, 4)},
        lambda t: t["x"].reshape(2, 12),
        {"s": np.array([2, 12], I64)},
    ),
    Case("flatten", "Flatten", {"x": (2, 3, 2, 2)}, lambda t: t["x"].flatten(1)),
    Case(
        "squeeze",
        "Squeeze",
        {"x": (2, 1, 3, 1)},
        lambda t: t["x"].squeeze((1, 3)),
        {"axes": np.array([1, 3], I64)},
    ),
    Case(
        "unsqueeze",
        "Unsqueeze",
        {"x": (2, 3)},
        lambda t: t["x"][:, None, :, None],
        {"axes": np.array([1, 3], I64)},
    ),
    Case(
        "transpose",
        "Transpose",
        {"x": (2, 3, 4, 5)},
        lambda t: t["x"].permute(0, 2, 3, 1),
        attrs={"perm": [0, 2, 3, 1]},
    ),
    Case(
        "concat",
        "Concat",
        {"a": (2, 3, 4), "b": (2, 2, 4)},
        lambda t: torch.cat([t["a"], t["c"], t["b"]], 1),
        {"c": w(2, 1, 4)},
        node_inputs=["a", "c", "b"],
        attrs={"axis": 1},
    ),
    Case(
        "split-unused",
        "Split",
        {"x": (2, 6, 3)},
        lambda t: torch.cat([t["x"][:, 4:], t["x"][:, :1]], 1),
        {"split": np.array([1, 3, 2], I64)},
        attrs={"axis": 1},
        n_outputs=3,
        extra_nodes=[helper.make_node("Concat", ["y2", "y0"], ["z"], axis=1)],
    ),
    Case(
        "slice",
        "Slice",
        {"x": (2, 5, 6)},
        lambda t: t["x"][:, 1:4, -4:-1],
        {"st": np.array([1, -4], I64), "en": np.array([4, -1], I64), "ax": np.array([1, 2], I64)},
    ),
    Case(
        "slice-huge-end",
        "Slice",
        {"x": (2, 5, 6)},
        lambda t: t["x"][:, :, 2:],
        {
            "st": np.array([2], I64),
            "en": np.array([2**63 - 1], I64),
            "ax": np.array([-1], I64),
            "sp": np.array([1], I64),
        },
    ),
    Case(
        "slice-flip",
        "Slice",
        {"x": (2, 5, 6)},
        lambda t: t["x"].flip(1)[:, 1:4],
        {
            "st": np.array([3], I64),
            "en": np.array([0], I64),
            "ax": np.array([1], I64),
            "sp": np.array([-1], I64),
        },
    ),
    Case(  # Swin's patch merging: x[..., 0::2, 1::2, :]
        "slice-step2",
        "Slice",
        {"x": (2, 6, 7, 3)},
        lambda t: t["x"][:, 0::2, 1::2],
        {
            "st": np.array([0, 1], I64),
            "en": np.array([2**63 - 1, 2**63 - 1], I64),
            "ax": np.array([1, 2], I64),
            "sp": np.array([2, 2], I64),
        },
    ),
    Case(
        "slice-step3-cut",
        "Slice",
        {"x": (2, 10, 4)},
        lambda t: t["x"][:, 1:8:3],
        {
            "st": np.array([1], I64),
            "en": np.array([8], I64),
            "ax": np.array([1], I64),
            "sp": np.array([3], I64),
        },
    ),
    Case(
        "slice-step-minus2",
        "Slice",
        {"x": (2, 7, 3)},
        lambda t: t["x"].flip(1)[:, ::2],
        {
            "st": np.array([-1], I64),
            "en": np.array([-(2**63)], I64),
            "ax": np.array([1], I64),
            "sp": np.array([-2], I64),
        },
    ),
    Case(
        "reduce-l2-keepdims",
        "ReduceL2",
        {"x": (2, 3, 5)},
        lambda t: torch.linalg.vector_norm(t["x"], dim=-1, keepdim=True),
        {"axes": np.array([-1], I64)},
        opset=18,
    ),
    Case(
        "reduce-l2-attr",
        "ReduceL2",
        {"x": (2, 3, 5)},
        lambda t: torch.linalg.vector_norm(t["x"], dim=(0, 2)),
        attrs={"axes": [0, 2], "keepdims": 0},
    ),
    Case(
        "pad",
        "Pad",
        {"x": (2, 3, 4, 4)},
        lambda t: F.pad(t["x"], (1, 2, 0, 3), value=0.5),
        {"pads": np.array([0, 0, 0, 1, 0, 0, 3, 2], I64), "v": np.array(0.5)},
    ),
    Case(
        "pad-negative",
        "Pad",
        {"x": (2, 3, 5, 5)},
        lambda t: F.pad(t["x"], (-1, 2, 1, -2)),
        {"pads": np.array([0, 0, 1, -1, 0, 0, -2, 2], I64)},
    ),
    Case(
        "pad-axes-18",
        "Pad",
        {"x": (2, 3, 4, 4)},
        lambda t: F.pad(t["x"], (1, 2)),
        {"pads": np.array([1, 2], I64), "v": np.array(0.0), "axes": np.array([-1], I64)},
        opset=18,
    ),
    Case(
        "gather-scalar",
        "Gather",
        {"x": (2, 3, 4)},
        lambda t: t["x"][:, 1],
        {"i": np.array(1, I64)},
        attrs={"axis": 1},
    ),
    Case(
        "gather-1d-dupes",
        "Gather",
        {"x": (2, 3, 4)},
        lambda t: t["x"][:, :, [3, 0, 3, -1]],
        {"i": np.array([3, 0, 3, -1], I64)},
        attrs={"axis": 2},
    ),
    Case(
        "gathernd",
        "GatherND",
        {"x": (3, 3, 2, 4)},
        lambda t: t["x"][[0, 2, 2], [1, 1, 0]],
        {"i": np.array([[0, 1], [2, 1], [2, 0]], I64)},
    ),
    Case(
        "resize-bilinear-x2",
        "Resize",
        {"x": (2, 3, 4, 5)},
        lambda t: F.interpolate(t["x"], scale_factor=2, mode="bilinear", align_corners=False),
        {"scales": np.array([1, 1, 2, 2], np.float32)},
        node_inputs=["x", "", "scales"],
        attrs={"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    ),
    Case(
        "resize-nearest-x2",
        "Resize",
        {"x": (2, 3, 4, 5)},
        lambda t: F.interpolate(t["x"], scale_factor=2, mode="nearest"),
        {"scales": np.array([1, 1, 2, 2], np.float32)},
        node_inputs=["x", "", "scales"],
        attrs={
            "mode": "nearest",
            "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor",
        },
    ),
    Case(
        "resize-bilinear-sizes",
        "Resize",
        {"x": (1, 2, 7, 6)},
        lambda t: F.interpolate(t["x"], size=(10, 3), mode="bilinear", align_corners=False),
        {"sizes": np.array([1, 2, 10, 3], I64)},
        node_inputs=["x", "", "", "sizes"],
        attrs={"mode": "linear", "coordinate_transformation_mode": "half_pixel"},
    ),
    Case(
        "resize-align-corners",
        "Resize",
        {"x": (1, 2, 4, 4)},
        lambda t: F.interpolate(t["x"], size=(7, 7), mode="bilinear", align_corners=True),
        {"sizes": np.array([1, 2, 7, 7], I64)},
        node_inputs=["x", "", "", "sizes"],
        attrs={"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    ),
    Case("identity", "Identity", {"x": (2, 3)}, lambda t: t["x"]),
    Case("dropout", "Dropout", {"x": (2, 3)}, lambda t: t["x"]),
]

ALL_CASES = [
    *CONV_CASES,
    *POOL_CASES,
    *REDUCE_CASES,
    *LINEAR_CASES,
    *NORM_CASES,
    *ACTIVATION_CASES,
    *ELEMENTWISE_CASES,
    *SHAPE_CASES,
]


def make_model(case: Case, dtype: np.dtype) -> onnx.ModelProto:
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = []
    for name, value in case.consts.items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and name != "scales":  # Resize scales are always float32
            value = value.astype(dtype)
        inits.append(numpy_helper.from_array(value, name))
    node_inputs = case.node_inputs or [*case.inputs, *case.consts]
    outputs = [f"y{i}" for i in range(case.n_outputs)] if case.n_outputs > 1 else ["y"]
    attrs = dict(case.attrs)
    node = helper.make_node(case.op, node_inputs, outputs, name=f"{case.op}_under_test", **attrs)
    final = case.extra_nodes[-1].output[0] if case.extra_nodes else outputs[0]
    graph = helper.make_graph(
        [node, *case.extra_nodes],
        case.id,
        [helper.make_tensor_value_info(n, elem, list(s)) for n, s in case.inputs.items()],
        [helper.make_tensor_value_info(final, elem, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 9
    return model


def _prepare(case: Case):
    """Try float64 (exact finite differences) and fall back to float32 when onnxruntime has no
    double kernel for the op or for something the companion emits."""
    last: Exception | None = None
    for dtype in (np.float64, np.float32):
        model = make_model(case, dtype)
        others = list(case.inputs)[1:]
        companion, spec = build_checked(
            model,
            others,
            rule=case.rule,
            input_gradient=True,
            options=case.options,
            score=model.graph.output[0].name,
        )
        try:
            return dtype, model, spec, session(model), session(companion)
        except Exception as exc:
            last = exc
    raise AssertionError(f"no dtype ran: {last}")


@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_rule(case: Case) -> None:
    dtype, _model, spec, forward, companion = _prepare(case)
    rng = np.random.default_rng(7)
    feeds = {
        name: (case.data or (lambda r, s: r.normal(size=s)))(rng, shape).astype(dtype)
        for name, shape in case.inputs.items()
    }
    (y,) = forward.run(None, feeds)
    seed = rng.normal(size=y.shape).astype(dtype)
    outs = dict(
        zip(companion.get_outputs(), companion.run(None, {**feeds, spec.seed: seed}), strict=True)
    )
    outs = {k.name: v for k, v in outs.items()}
    np.testing.assert_allclose(outs[spec.score], y, rtol=1e-6, atol=1e-6)
    names = list(case.inputs)
    grads = {names[0]: outs[spec.input_gradient]}
    for name, g in zip(names[1:], spec.gradients, strict=True):
        grads[name] = outs[g]
    for name, g in grads.items():
        assert g.shape == feeds[name].shape, name

    # 1) torch autograd, float64
    tensors = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in feeds.items()}
    consts = {
        k: torch.tensor(
            np.asarray(
                v, dtype=np.float64 if np.asarray(v).dtype.kind == "f" else np.asarray(v).dtype
            )
        )
        for k, v in case.consts.items()
    }
    out = case.torch_fn({**tensors, **consts})
    torch_grads = torch.autograd.grad(
        (out * torch.tensor(seed.astype(np.float64))).sum(), list(tensors.values())
    )
    tol = 1e-9 if dtype == np.float64 else 2e-5
    for name, ref in zip(tensors, torch_grads, strict=True):
        assert rel_err(grads[name], ref.numpy()) <= tol, (name, dtype)

    # 2) central finite differences in a random direction
    if not case.fd:
        return
    direction = {k: rng.normal(size=v.shape) for k, v in feeds.items()}
    eps = 1e-6 if dtype == np.float64 else 1e-2

    def objective(sign: float) -> float:
        moved = {k: (feeds[k] + sign * eps * direction[k]).astype(dtype) for k in feeds}
        return float(np.sum(forward.run(None, moved)[0].astype(np.float64) * seed))

    numeric = (objective(1.0) - objective(-1.0)) / (2 * eps)
    analytic = sum(float(np.sum(grads[k].astype(np.float64) * direction[k])) for k in feeds)
    scale = sum(float(np.linalg.norm(grads[k]) * np.linalg.norm(direction[k])) for k in feeds)
    fd_tol = 1e-6 if dtype == np.float64 else 3e-3
    assert abs(numeric - analytic) <= fd_tol * max(scale, 1e-12), (numeric, analytic, dtype)


@pytest.mark.parametrize("order", ["identity", "reversed"])
def test_gather_with_indices_computed_from_the_batch_size(order: str) -> None:
    """The dynamo exporter's as_strided: a Gather on a flattened tensor whose indices are
    Range arithmetic on Shape(input). Identity and permutations are supported."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], end=1),
        helper.make_node("Squeeze", ["shape"], ["n"]),
        helper.make_node("Mul", ["n", "four"], ["count"]),
        helper.make_node("Range", ["zero", "count", "one"], ["ramp"]),
        helper.make_node("Reshape", ["x", "flat"], ["data"]),
    ]
    if order == "identity":
        nodes.append(helper.make_node("Identity", ["ramp"], ["idx"]))
    else:
        nodes += [
            helper.make_node("Sub", ["count", "one"], ["last"]),
            helper.make_node("Sub", ["last", "ramp"], ["idx"]),
        ]
    nodes.append(helper.make_node("Gather", ["data", "idx"], ["y"], axis=0))
    graph = helper.make_graph(
        nodes,
        "as_strided",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializer=[i64("four", 4), i64("zero", 0), i64("one", 1), i64("flat", [-1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    companion, spec = build_checked(model, input_gradient=True, score="y")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype(np.float32)  # a batch size the probe did not use
    seed = rng.normal(size=(12,)).astype(np.float32)
    _, grad = session(companion).run(None, {"x": x, spec.seed: seed})
    xt = torch.from_numpy(x).requires_grad_()
    flat = xt.reshape(-1)
    y = flat if order == "identity" else flat.flip(0)
    (ref,) = torch.autograd.grad((y * torch.from_numpy(seed)).sum(), xt)
    np.testing.assert_allclose(grad, ref.numpy(), rtol=0, atol=0)


def test_silu_pattern_matches_torch() -> None:
    """Mul(x, Sigmoid(x)) is differentiated as one formula; the result must not change."""
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "x"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "silu",
        [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [2, 3, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    companion, spec = build_checked(model, input_gradient=True, score="y")
    assert "Sum" not in {n.op_type for n in companion.graph.node}
    rng = np.random.default_rng(3)
    x, seed = rng.normal(size=(2, 3, 4)) * 3, rng.normal(size=(2, 3, 4))
    _, grad = session(companion).run(None, {"x": x, spec.seed: seed})
    xt = torch.tensor(x, requires_grad=True)
    (ref,) = torch.autograd.grad((F.silu(xt) * torch.tensor(seed)).sum(), xt)
    assert rel_err(grad, ref.numpy()) <= 1e-12
