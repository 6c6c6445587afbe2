"""Whole torchvision classifiers, both exporters: companion gradients vs torch.autograd.grad.

Criterion (issue 3): max|ours - torch| <= 1e-4 * max|torch| for the input gradient and two
internal layers, on a batch whose rows seed different classes. Guided backprop and deconvnet
are compared with a torch model whose ReLU backward is overridden.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from models_store.companion import forward_model
from tests.fixtures.torchvision_models import (
    ARCHS,
    EXPORTERS,
    Exported,
    ExportFailed,
    TorchvisionZoo,
    export_torchscript,
    images,
)

from .helpers import DeconvRelu, GuidedRelu, build_checked, rel_err, session

TOLERANCE = 1e-4
CLASSES = (3, 7)  # one class per batch row


@contextlib.contextmanager
def patched_relu(rule: str, aligned: Iterator[np.ndarray]) -> Iterator[None]:
    """Route every torch ReLU (nn.ReLU and F.relu both call torch.nn.functional.relu) through
    the requested backward rule, with its input aligned to onnxruntime's value."""
    fn = {"standard": None, "guided": GuidedRelu, "deconvnet": DeconvRelu}[rule]
    original = F.relu

    def relu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        x = _align(x, next(aligned))
        return original(x) if fn is None else fn.apply(x)

    F.relu = relu  # type: ignore[assignment]
    try:
        yield
    finally:
        F.relu = original


def _align(x: torch.Tensor, value: np.ndarray) -> torch.Tensor:
    """x with onnxruntime's forward value but torch's own gradient path (straight-through)."""
    target = torch.from_numpy(value)
    assert target.shape == x.shape
    gap = float((target - x.detach()).abs().max())
    assert gap <= 1e-4 * max(float(target.abs().max()), 1e-6), gap
    return x + (target - x).detach()


def kink_inputs(
    model: onnx.ModelProto,
    x: np.ndarray,
    op: str,
    open_session: Callable[[onnx.ModelProto], Any] = session,
) -> list[np.ndarray]:
    """onnxruntime's values at the input of every ``op`` node, in graph order."""
    names = [n.input[0] for n in model.graph.node if n.op_type == op]
    if not names:
        return []
    return open_session(forward_model(model, names)).run(None, {model.graph.input[0].name: x})


def seeds(batch: int = 2, classes: int = 1000) -> np.ndarray:
    seed = np.zeros((batch, classes), np.float32)
    for row, cls in enumerate(CLASSES[:batch]):
        seed[row, cls] = 1.0
    return seed


def torch_reference(
    exported: Exported,
    model: onnx.ModelProto,
    x: np.ndarray,
    seed: np.ndarray,
    rule: str,
    open_session: Callable[[onnx.ModelProto], Any] = session,
):
    """Logits, activations and gradients (input, mid, last) from torch autograd.

    ReLU and max pooling are discontinuous in their gradient: a float32 difference of 1e-6
    between the two runtimes' forward passes flips a ReLU mask or moves a max-pool gradient to
    another element wherever a value sits that close to a kink (measured at random inputs:
    1.4e-2 on resnet50's layer2, 3e-2 on squeezenet1_1). To compare backward rules rather
    than forward rounding, the input *value* of every torch ReLU and MaxPool2d is replaced by
    onnxruntime's (straight-through: the gradient still flows through torch's own tensor).
    The alignment asserts that the two values agree to 1e-4 relative first.
    """
    module = exported.module
    relus = iter(kink_inputs(model, x, "Relu", open_session))
    pool_values = kink_inputs(model, x, "MaxPool", open_session)
    pools = [m for m in module.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == len(pool_values), "MaxPool count differs between torch and ONNX"
    pool_iter = iter(pool_values)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        pool.register_forward_pre_hook(lambda _m, args: (_align(args[0], next(pool_iter)),))
        for pool in pools
    ]
    hooks += [
        module.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: captured.__setitem__(path, out)
        )
        for path in (exported.arch.mid, exported.arch.last)
    ]
    try:
        xt = torch.from_numpy(x).requires_grad_()
        with patched_relu(rule, relus):
            logits = module(xt)
        assert next(relus, None) is None, "ReLU count differs between torch and ONNX"
        acts = [captured[exported.arch.mid], captured[exported.arch.last]]
        act_values = [a.detach().numpy().copy() for a in acts]
        grads = torch.autograd.grad((logits * torch.from_numpy(seed)).sum(), [xt, *acts])
    finally:
        for h in hooks:
            h.remove()
    return logits.detach().numpy(), act_values, [g.numpy() for g in grads]


_LAYER_CACHE: dict[tuple[str, str], tuple[str, str]] = {}


def onnx_layers(
    exported: Exported, model: onnx.ModelProto, acts: list[np.ndarray], x: np.ndarray
) -> tuple[str, str]:
    """The ONNX tensors holding the torch modules' outputs, found by value (names differ
    between exporters): the first tensor in graph order with the same shape and values."""
    key = (exported.arch.name, exported.exporter)
    if key in _LAYER_CACHE:
        return _LAYER_CACHE[key]
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in inferred.graph.value_info:
        dims = [
            d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
        ]
        shapes[vi.name] = tuple(dims[1:])
    found = []
    for act in acts:
        want = tuple(act.shape[1:])
        candidates = [o for n in model.graph.node for o in n.output if shapes.get(o) == want]
        assert candidates, f"no tensor of shape {want}"
        values = session(forward_model(model, candidates)).run(None, {model.graph.input[0].name: x})
        scale = float(np.abs(act).max())
        match = next(
            (
                name
                for name, v in zip(candidates, values, strict=True)
                if np.abs(v - act).max() <= 1e-5 * scale
            ),
            None,
        )
        assert match is not None, f"no tensor matches the torch activation of shape {want}"
        found.append(match)
    _LAYER_CACHE[key] = (found[0], found[1])
    return _LAYER_CACHE[key]


def _exported(zoo: TorchvisionZoo, name: str, exporter: str) -> Exported:
    try:
        return zoo.get(name, exporter)
    except ExportFailed as exc:
        pytest.skip(str(exc))


def run_companion(exported: Exported, rule: str, report: dict[str, float]) -> None:
    model = onnx.load(str(exported.path))
    x = images(exported.size)
    seed = seeds()
    logits, acts, torch_grads = torch_reference(exported, model, x, seed, rule)
    layers = onnx_layers(exported, model, acts, x)
    companion, spec = build_checked(model, layers, rule=rule, input_gradient=True)
    sess = session(companion)
    outs = dict(
        zip(
            spec.outputs,
            sess.run(list(spec.outputs), {spec.image_input: x, spec.seed: seed}),
            strict=True,
        )
    )
    assert rel_err(outs[spec.score], logits) <= TOLERANCE
    ours = [outs[spec.input_gradient], *(outs[g] for g in spec.gradients)]
    errors = {}
    for what, mine, ref in zip(("input", "mid", "last"), ours, torch_grads, strict=True):
        assert mine.shape == ref.shape, what
        errors[what] = rel_err(mine, ref)
    for act, name in zip(acts, spec.activations, strict=True):
        assert rel_err(outs[name], act) <= TOLERANCE
    key = f"{exported.arch.name}/{exported.exporter}/{rule}"
    report[key] = max(errors.values())
    assert all(e <= TOLERANCE for e in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(ARCHS))
def test_gradients_match_torch(
    zoo: TorchvisionZoo, error_report: dict[str, float], name: str, exporter: str
) -> None:
    run_companion(_exported(zoo, name, exporter), "standard", error_report)


# Architectures with ReLUs (mobilenet_v2 uses ReLU6, efficientnet SiLU, convnext GELU: the
# rule changes nothing there, see docs/companion.md).
RELU_CASES = [
    *[
        (name, "torchscript")
        for name in (
            "resnet18",
            "vgg11_bn",
            "alexnet",
            "densenet121",
            "squeezenet1_1",
            "mobilenet_v3_large",
        )
    ],
    ("resnet18", "dynamo"),
    ("squeezenet1_1", "dynamo"),
]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
@pytest.mark.parametrize(("name", "exporter"), RELU_CASES)
def test_relu_rules_match_torch(
    zoo: TorchvisionZoo, error_report: dict[str, float], name: str, exporter: str, rule: str
) -> None:
    run_companion(_exported(zoo, name, exporter), rule, error_report)


@pytest.mark.slow
def test_layout_optimisation_changes_rounding_not_gradients(tmp_path: Any) -> None:
    """onnxruntime's ORT_ENABLE_ALL (NCHWc convolutions, fused Conv+Relu) and
    ORT_ENABLE_EXTENDED give input gradients that differ by ~5% on this resnet18 (default
    BatchNorm statistics, 112 px, seed 0): their float32 forwards round differently, which
    flips ReLU masks and max-pool choices near ties. Each is nonetheless the exact gradient
    of its own forward pass: both match torch aligned to that level's forward values."""

    import onnxruntime as ort
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx.load_from_string(export_torchscript(net, torch.from_numpy(x)))
    exported = Exported(ARCHS["resnet18"], "torchscript", tmp_path, 112, net)
    companion, spec = build_checked(model, input_gradient=True)
    seed = np.zeros((2, 1000), np.float32)
    seed[:, 3] = 1

    def opener(level: ort.GraphOptimizationLevel) -> Callable[[onnx.ModelProto], Any]:
        def open_session(m: onnx.ModelProto) -> ort.InferenceSession:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.graph_optimization_level = level
            return ort.InferenceSession(
                m.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )

        return open_session

    grads = {}
    for level in (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    ):
        open_session = opener(level)
        (grads[level],) = open_session(companion).run(
            [spec.input_gradient], {spec.image_input: x, spec.seed: seed}
        )
        _, _, reference = torch_reference(exported, model, x, seed, "standard", open_session)
        assert rel_err(grads[level], reference[0]) <= TOLERANCE, level
