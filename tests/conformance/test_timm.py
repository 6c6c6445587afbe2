"""timm architectures outside torchvision: companion gradients vs torch autograd in float64.

Issue 9 ("Any ONNX classifier, exactly"): for each architecture (random weights, TorchScript
export) the input gradient and a mid-layer gradient (a module's output, found in the ONNX
graph by value) of ``sum(seed * logits)`` must match ``model.double()``'s autograd to
max(1e-4, 3 x torch's own float32 error against it), relative to the reference's max.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import onnx
import pytest
import torch

from models_store.companion import forward_model
from models_store.errors import UnsupportedModel
from tests.companion.helpers import build_checked, rel_err, session
from tests.conformance.table import Row, allowance, record
from tests.conformance.torch_reference import ForwardChoices, forward_choices
from tests.fixtures.timm_models import ARCHS, ExportFailed, TimmExported, TimmZoo, images

CLASSES = (3, 7)  # one class per batch row
QUANTITIES = ("input gradient", "mid-layer gradient")


@pytest.fixture(scope="session")
def timm_zoo(tmp_path_factory: pytest.TempPathFactory) -> TimmZoo:
    return TimmZoo(tmp_path_factory.mktemp("timm-onnx"))


def seeds(batch: int, classes: int) -> np.ndarray:
    seed = np.zeros((batch, classes), np.float32)
    for row, cls in enumerate(CLASSES[:batch]):
        seed[row, cls] = 1.0
    return seed


def autograd(
    module: torch.nn.Module,
    mid: str,
    x: np.ndarray,
    seed: np.ndarray,
    dtype: torch.dtype,
    pools: ForwardChoices | None = None,
) -> dict[str, np.ndarray]:
    """Logits, the mid module's output, and the gradients of sum(seed * logits) w.r.t. the
    input and that output, computed by torch in ``dtype`` (max pools following ``pools`` at
    near-ties, when given)."""
    captured: list[torch.Tensor] = []
    hook = module.get_submodule(mid).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        xt = torch.from_numpy(x).to(dtype).requires_grad_()
        with pools if pools is not None else contextlib.nullcontext():
            logits = module(xt)
        (act,) = captured
        grad_x, grad_mid = torch.autograd.grad(
            (logits * torch.from_numpy(seed).to(dtype)).sum(), [xt, act]
        )
    finally:
        hook.remove()
    return {
        "logits": logits.detach().numpy(),
        "mid": act.detach().numpy(),
        "grad_x": grad_x.numpy(),
        "grad_mid": grad_mid.numpy(),
    }


def find_layer(model: onnx.ModelProto, act: np.ndarray, x: np.ndarray) -> str:
    """The first ONNX tensor, in graph order, with the module output's shape and values."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in inferred.graph.value_info:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    want = tuple(act.shape[1:])
    candidates = [o for n in model.graph.node for o in n.output if shapes.get(o, ())[1:] == want]
    assert candidates, f"no tensor of shape {want}"
    values = session(forward_model(model, candidates)).run(None, {model.graph.input[0].name: x})
    scale = float(np.abs(act).max())
    for name, value in zip(candidates, values, strict=True):
        if value.shape == act.shape and np.abs(value - act).max() <= 1e-4 * scale:
            return name
    raise AssertionError(f"no ONNX tensor matches the module output of shape {act.shape}")


def _rows(name: str, exporter: str, status: str, note: str) -> None:
    for quantity in QUANTITIES:
        record(Row("timm", name, exporter, quantity, None, None, status, note))


def _exported(zoo: TimmZoo, name: str) -> TimmExported:
    try:
        return zoo.get(name)
    except ExportFailed as exc:
        _rows(name, "torchscript", "export failed", str(exc))
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_timm_gradients_match_float64(timm_zoo: TimmZoo, name: str) -> None:
    exported = _exported(timm_zoo, name)
    module, mid = exported.module, exported.arch.mid
    model = onnx.load(str(exported.path))
    x = images(exported.size)
    classes = int(model.graph.output[0].type.tensor_type.shape.dim[1].dim_value)
    seed = seeds(x.shape[0], classes)
    ref64 = autograd(copy.deepcopy(module).double(), mid, x, seed, torch.float64)
    ref32 = autograd(module, mid, x, seed, torch.float32)
    try:
        layer = find_layer(model, ref32["mid"], x)
    except AssertionError as exc:
        _rows(name, exported.exporter, "FAIL", f"test harness: {exc}")
        raise
    try:
        companion, spec = build_checked(model, [layer], input_gradient=True)
    except UnsupportedModel as exc:
        _rows(name, exported.exporter, "refused", str(exc))
        pytest.fail(f"builder refused {name}: {exc}")
    except Exception as exc:
        _rows(name, exported.exporter, "FAIL", f"builder raised {type(exc).__name__}: {exc}")
        raise
    try:
        outputs = session(companion).run(list(spec.outputs), {spec.image_input: x, spec.seed: seed})
    except Exception as exc:
        _rows(name, exported.exporter, "FAIL", f"onnxruntime (ORT_ENABLE_ALL): {exc}")
        raise
    outs = dict(zip(spec.outputs, outputs, strict=True))
    cases = {
        "input gradient": (outs[spec.input_gradient], "grad_x", "NCHW input"),
        "mid-layer gradient": (outs[spec.gradients[0]], "grad_mid", f"{mid} = {layer}"),
    }
    failures = []
    # the allowance: torch's own float32 rounding against the float64 truth
    limits = {key: allowance(rel_err(ref32[key], ref64[key])) for key in ("grad_x", "grad_mid")}
    truth = ref64
    if any(rel_err(o, ref64[k]) > limits[k] for o, k, _ in cases.values()):
        # a max-pool or ReLU near-tie onnxruntime's float32 forward took the other way (see
        # torch_reference.ForwardChoices): the truth is the float64 gradient of its route
        pools = forward_choices(session, model, x)
        aligned = autograd(copy.deepcopy(module).double(), mid, x, seed, torch.float64, pools)
        if pools.aligned and not pools.refused:
            truth = aligned
            cases = {
                q: (
                    o,
                    k,
                    f"{n}, {pools.aligned} near-tie max-pool/ReLU decisions as onnxruntime took",
                )
                for q, (o, k, n) in cases.items()
            }
    for quantity, (ours, key, note) in cases.items():
        assert ours.shape == truth[key].shape, (quantity, ours.shape)
        error = rel_err(ours, truth[key])
        limit = limits[key]
        status = "pass" if error <= limit else "FAIL"
        record(Row("timm", name, exported.exporter, quantity, error, limit, status, note))
        if status == "FAIL":
            failures.append(f"{quantity}: {error:.2e} > {limit:.2e} ({note})")
    score_limit = allowance(rel_err(ref32["logits"], ref64["logits"]))
    score_error = rel_err(outs[spec.score], ref64["logits"])
    assert score_error <= score_limit, f"logits: {score_error:.2e} > {score_limit:.2e}"
    assert not failures, failures
