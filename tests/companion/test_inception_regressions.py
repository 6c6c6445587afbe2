"""Issue 9: googlenet / inception saliency off torch's float64 gradient by 1e-3..3e-2.

Finding: no backward rule is wrong. Every gap traced back to a *forward* float32 rounding at
a kink: a max-pool window whose two largest values differ by less than float32 resolves
(float64 gaps of 1e-8..3e-5 on values of 0.2-1, where the float32 forward is off by up to 4.5e-5
at googlenet's last blocks), or a ReLU input within 1e-6 of zero. onnxruntime's float32 forward
picks one element, torch float64 another, and a whole gradient entry moves (a 7x7 patch at the
input when it happens at conv1 / maxpool1). torch's own float32 forward flips *other* near-ties
(1e-3..5e-2 on the same models), so "3 x torch float32's error" bounds ours only on average,
not per image. Given onnxruntime's forward values, the companion equals torch autograd to 5e-7.

What is pinned here:

- the pool geometries googlenet and inception use, with exact ties (integer data, so float32
  holds them exactly) against torch autograd in float64: partial last windows of ceil_mode,
  ties across overlapping windows, pads, count_include_pad both ways;
- transform_input's Gather/Unsqueeze/Mul/Add/Concat against torch float64 and central finite
  differences, in float64;
- the mechanism itself: a near-tie below float32 resolution, where the companion follows
  onnxruntime's (float32) choice, as torch float32 does, and float64 picks the other element;
- googlenet as exported (TorchScript, opset 17) on skimage's chelsea at 224 px, against torch
  float64 with its ReLU and MaxPool inputs aligned to onnxruntime's values (<= 1e-4; measured
  5.5e-7) and unaligned against the issue's allowance max(1e-4, 3 x torch float32's error).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from tests.fixtures.torchvision_models import export_torchscript

from .helpers import build_checked, rel_err, session
from .test_models import _align, kink_inputs, patched_relu


def _single_node_model(
    nodes: list[onnx.NodeProto],
    x_shape: tuple[int, ...],
    dtype: int = TensorProto.FLOAT,
    inits: list[onnx.TensorProto] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info("x", dtype, list(x_shape))],
        [helper.make_tensor_value_info("y", dtype, None)],
        inits or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _companion_grad(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    companion, spec = build_checked(model, [], input_gradient=True, score="y")
    outs = session(companion).run([spec.input_gradient], {spec.image_input: x, spec.seed: seed})
    return outs[0]


def _torch_grad(
    fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, seed: np.ndarray, dtype
) -> np.ndarray:
    xt = torch.from_numpy(x).to(dtype).requires_grad_()
    (g,) = torch.autograd.grad((fn(xt) * torch.from_numpy(seed).to(dtype)).sum(), xt)
    return g.numpy()


# (id, op, spatial size, kernel, stride, pad, ceil_mode, count_include_pad)
POOLS = [
    # googlenet maxpool1/2/3: 3x3/2 ceil on even sizes: the last window is partial
    ("max-3s2-ceil-even", "MaxPool", 12, 3, 2, 0, 1, 0),
    ("max-3s2-ceil-odd", "MaxPool", 11, 3, 2, 0, 1, 0),
    # googlenet inception branch 4: 3x3/1 pad 1 ceil
    ("max-3s1p1-ceil", "MaxPool", 7, 3, 1, 1, 1, 0),
    # googlenet maxpool4: 2x2/2 ceil on an odd size
    ("max-2s2-ceil-odd", "MaxPool", 7, 2, 2, 0, 1, 0),
    # inception_v3 stem and reductions: 3x3/2, no padding, floor
    ("max-3s2-floor", "MaxPool", 12, 3, 2, 0, 0, 0),
    # inception_v3 branch_pool (count_include_pad=1), timm inception_v4's (=0)
    ("avg-3s1p1-incl", "AveragePool", 7, 3, 1, 1, 0, 1),
    ("avg-3s1p1-excl", "AveragePool", 7, 3, 1, 1, 0, 0),
    ("avg-3s2-ceil-excl", "AveragePool", 8, 3, 2, 0, 1, 0),
]


@pytest.mark.parametrize(
    ("op", "size", "k", "s", "p", "ceil", "incl"),
    [case[1:] for case in POOLS],
    ids=[case[0] for case in POOLS],
)
@pytest.mark.parametrize("levels", [2, 3], ids=["ties01", "ties012"])
def test_inception_pools_with_exact_ties(
    op: str, size: int, k: int, s: int, p: int, ceil: int, incl: int, levels: int
) -> None:
    """Exact ties everywhere (values in {0..levels-1}): the gradient must go where torch's
    per-window first maximum sends it, partial and overlapping windows included."""
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": [p] * 4, "ceil_mode": ceil}
    if op == "AveragePool":
        attrs["count_include_pad"] = incl

        def fn(t: torch.Tensor) -> torch.Tensor:
            return F.avg_pool2d(t, k, s, p, ceil_mode=bool(ceil), count_include_pad=bool(incl))
    else:

        def fn(t: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(t, k, s, p, ceil_mode=bool(ceil))

    rng = np.random.default_rng(levels * 1000 + size)
    x = rng.integers(0, levels, size=(2, 3, size, size)).astype(np.float32)
    model = _single_node_model([helper.make_node(op, ["x"], ["y"], **attrs)], x.shape)
    out_shape = fn(torch.from_numpy(x)).shape
    seed = rng.normal(size=tuple(out_shape)).astype(np.float32)
    ref = _torch_grad(fn, x, seed, torch.float64)
    ours = _companion_grad(model, x, seed)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-6 * max(np.abs(ref).max(), 1.0)


def _transform_input_model() -> onnx.ModelProto:
    """googlenet/inception_v3's transform_input as the TorchScript exporter writes it: per
    channel Gather(axis=1) -> Unsqueeze -> Mul -> Add, then Concat (float64 here)."""
    scales = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
    shifts = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)
    nodes, inits = [], [numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    for c in range(3):
        inits += [
            numpy_helper.from_array(np.array(c, np.int64), f"i{c}"),
            numpy_helper.from_array(np.array(scales[c], np.float64), f"s{c}"),
            numpy_helper.from_array(np.array(shifts[c], np.float64), f"b{c}"),
        ]
        nodes += [
            helper.make_node("Gather", ["x", f"i{c}"], [f"g{c}"], axis=1),
            helper.make_node("Unsqueeze", [f"g{c}", "ax1"], [f"u{c}"]),
            helper.make_node("Mul", [f"u{c}", f"s{c}"], [f"m{c}"]),
            helper.make_node("Add", [f"m{c}", f"b{c}"], [f"a{c}"]),
        ]
    nodes.append(helper.make_node("Concat", ["a0", "a1", "a2"], ["t"], axis=1))
    # A nonlinear consumer, so that a channel mix-up cannot cancel out in the check.
    nodes.append(helper.make_node("Mul", ["t", "t"], ["y"]))
    return _single_node_model(nodes, (2, 3, 5, 6), TensorProto.DOUBLE, inits)


def _torch_transform_input(x: torch.Tensor) -> torch.Tensor:
    ch0 = torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5
    ch1 = torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5
    ch2 = torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5
    t = torch.cat((ch0, ch1, ch2), 1)
    return t * t


def test_transform_input_float64() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 6))
    seed = rng.normal(size=(2, 3, 5, 6))
    model = _transform_input_model()
    ours = _companion_grad(model, x, seed)
    ref = _torch_grad(_torch_transform_input, x, seed, torch.float64)
    assert rel_err(ours, ref) <= 1e-12
    # Central finite differences of the forward model in a random direction.
    forward = session(model)
    v = rng.normal(size=x.shape)
    eps = 1e-6
    plus = forward.run(None, {"x": x + eps * v})[0]
    minus = forward.run(None, {"x": x - eps * v})[0]
    fd = float(((plus - minus) / (2 * eps) * seed).sum())
    assert abs(float((ours * v).sum()) - fd) <= 1e-7 * max(abs(fd), 1.0)


def test_near_tie_follows_the_forward_that_ran() -> None:
    """The issue's mechanism on one window: two values 1e-9 apart in float64 are equal in
    float32. float64 sends the gradient to the larger (second) one; onnxruntime's float32
    forward sees a tie and the first maximum wins, exactly as torch float32 does. A gradient
    entry moves by the whole seed although no rule is wrong."""
    x64 = np.zeros((1, 1, 2, 2))
    x64[0, 0, 0, 0] = 1.0
    x64[0, 0, 0, 1] = 1.0 + 1e-9
    x32 = x64.astype(np.float32)
    assert x32[0, 0, 0, 0] == x32[0, 0, 0, 1]
    model = _single_node_model(
        [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        x32.shape,
    )
    seed = np.ones((1, 1, 1, 1), np.float32)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(t, 2, 2)

    ours = _companion_grad(model, x32, seed)
    np.testing.assert_array_equal(ours, _torch_grad(pool, x32, seed, torch.float32))
    f64 = _torch_grad(pool, x64, seed.astype(np.float64), torch.float64)
    assert ours[0, 0, 0, 0] == 1 and f64[0, 0, 0, 1] == 1


# --- googlenet as exported ---------------------------------------------------------------


def _chelsea(size: int = 224) -> np.ndarray:
    """skimage's chelsea, bilinear-resized and ImageNet-normalised, (1, 3, size, size)."""
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea()).resize((size, size), Image.BILINEAR)
    array = np.asarray(image, np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1)[None], np.float32)


def _googlenet(x: np.ndarray) -> torch.nn.Module:
    """Seeded random googlenet (init_weights=True) with BatchNorm statistics calibrated on
    ``x`` and its mirror. (With init_weights' 0.01-std weights and fixed (mean, var)
    statistics every BatchNorm channel is nearly the constant -mean/sqrt(var): all max-pool
    windows are near-ties and torch float32 itself is 0.6 off float64; calibrated statistics
    give a network whose gradients mean something.)"""
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.googlenet(
            weights=None, transform_input=True, aux_logits=False, init_weights=True
        )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly the calibration batch's
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.concatenate([x, x[..., ::-1].copy()])))
    return model.eval()


def _aligned_float64_grad(
    module: torch.nn.Module, model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray
) -> np.ndarray:
    """torch float64 autograd with every ReLU and MaxPool input replaced by onnxruntime's
    value (straight-through): the backward rules under test, the forward rounding removed."""
    relus = iter([v.astype(np.float64) for v in kink_inputs(model, x, "Relu")])
    pool_values = iter([v.astype(np.float64) for v in kink_inputs(model, x, "MaxPool")])
    pools = [m for m in module.modules() if isinstance(m, torch.nn.MaxPool2d)]
    hooks = [
        p.register_forward_pre_hook(lambda _m, args: (_align(args[0], next(pool_values)),))
        for p in pools
    ]
    try:
        xt = torch.from_numpy(x).double().requires_grad_()
        with patched_relu("standard", relus):
            logits = module(xt)
        assert next(relus, None) is None and next(pool_values, None) is None
        (g,) = torch.autograd.grad((logits * torch.from_numpy(seed).double()).sum(), xt)
    finally:
        for h in hooks:
            h.remove()
    return g.numpy()


@pytest.mark.slow
def test_googlenet_torchscript_chelsea() -> None:
    import copy

    x = _chelsea()
    module = _googlenet(x)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        model = onnx.load_from_string(export_torchscript(module, torch.from_numpy(x)))
    double = copy.deepcopy(module).double()

    xt = torch.from_numpy(x).double().requires_grad_()
    logits = double(xt)
    cls = int(logits.argmax())
    (ref,) = torch.autograd.grad(logits[0, cls], xt)
    ref = ref.numpy()
    x32 = torch.from_numpy(x).requires_grad_()
    (g32,) = torch.autograd.grad(module(x32)[0, cls], x32)
    seed = np.zeros((1, 1000), np.float32)
    seed[0, cls] = 1.0

    companion, spec = build_checked(model, [], input_gradient=True)
    (ours,) = session(companion).run([spec.input_gradient], {spec.image_input: x, spec.seed: seed})
    # The rules: exact given onnxruntime's forward (measured 5.5e-7).
    aligned = _aligned_float64_grad(double, model, x, seed.astype(np.float64))
    assert rel_err(ours, aligned) <= 1e-4
    # The criterion (measured 8.2e-3 against an allowance of 3.6e-2).
    allowance = max(1e-4, 3.0 * rel_err(g32.numpy(), ref))
    assert rel_err(ours, ref) <= allowance
