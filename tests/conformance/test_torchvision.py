"""Conformance, torchvision part (issue 9, "Any ONNX classifier, exactly").

Every classification family in ``torchvision.models`` (its smallest member, seeded random
weights, tests/fixtures/conformance_zoo.py), exported by both exporters (TorchScript at opset
17, dynamo at its default opset), built into a companion graph and run by onnxruntime's CPU
provider. Reference: torch autograd on the float64 copy of the same eval-mode model. A case
passes when max|ours - ref| / max|ref| <= max(1e-4, 3 x torch's own float32 error against its
float64), for

- the input gradient and the gradient at a mid-network layer (the ONNX tensor holding a
  chosen module's output, found by value), under the standard rule;
- guided backprop (the input gradient under the guided rule), against torch with the guided
  rule applied at every rectifier, functional ReLUs and ReLU6 included
  (tests/conformance/torch_reference.py).

No alignment of forward values to onnxruntime's (unlike tests/companion/test_models.py): a
float32 rounding that flips a ReLU mask or a max-pool choice is part of the error, and torch's
own float32 run pays the same price, which is what the allowance measures.

Every case is recorded in the conformance table (tests/conformance/table.py), whatever its
outcome. A case fails when the error exceeds the allowance or the builder refuses the model; it
is skipped (and recorded "export failed") only when the exporter itself fails.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models_store.companion import forward_model
from models_store.errors import UnsupportedModel
from tests.companion.helpers import build_checked, rel_err
from tests.companion.test_models import seeds
from tests.conformance.table import Row, allowance, record
from tests.conformance.torch_reference import Reference, forward_choices, gradients
from tests.fixtures.conformance_zoo import (
    EXPORTERS,
    FAMILIES,
    ConformanceZoo,
    Exported,
    ExportFailed,
    missing_families,
    photo,
)

SOURCE = "torchvision"
QUANTITIES = {
    "standard": ("input gradient", "mid-layer gradient"),
    "guided": ("guided backprop",),
}
CASES = [
    (name, exporter, rule) for name in FAMILIES for exporter in EXPORTERS for rule in QUANTITIES
]


@pytest.fixture(scope="session")
def conformance_zoo(tmp_path_factory: pytest.TempPathFactory) -> ConformanceZoo:
    return ConformanceZoo(tmp_path_factory.mktemp("conformance-torchvision"))


def open_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """The service's session options (service/runtime/sessions.py sets no optimisation level,
    so onnxruntime's default ORT_ENABLE_ALL applies), stated explicitly, on one thread."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


_REFERENCES: dict[tuple[str, int, int, str], tuple[Reference, Reference]] = {}


def references(
    exported: Exported, x: np.ndarray, seed: np.ndarray, rule: str
) -> tuple[Reference, Reference]:
    """(float64, float32) torch references, shared by both exporters when the input agrees."""
    key = (exported.family.name, exported.size, exported.batch, rule)
    if key not in _REFERENCES:
        mid = exported.family.mid if rule == "standard" else None
        _REFERENCES[key] = (
            gradients(exported.module, x, seed, mid, rule, torch.float64),
            gradients(exported.module, x, seed, mid, rule, torch.float32),
        )
    return _REFERENCES[key]


def find_layer(model: onnx.ModelProto, act: np.ndarray, x: np.ndarray) -> str:
    """The ONNX tensor holding a torch module's output (names differ between exporters): the
    first in graph order whose shape and values (to 1e-4 of its largest) agree. Tensors whose
    shape inference left unknown are tried too (TorchScript's Swin, MaxViT, ShuffleNet)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    known = {}
    for vi in inferred.graph.value_info:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = vi.type.tensor_type.shape.dim
            known[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]

    def compatible(name: str) -> bool:
        dims = known.get(name)
        if dims is None:
            return True
        if len(dims) != act.ndim:
            return False
        return all(d in (None, w) for d, w in zip(dims, act.shape, strict=True))

    candidates = [o for n in model.graph.node for o in n.output if o and compatible(o)]
    best = (np.inf, "")
    for start in range(0, len(candidates), 64):
        chunk = candidates[start : start + 64]
        values = open_session(forward_model(model, chunk)).run(None, {model.graph.input[0].name: x})
        for name, v in zip(chunk, values, strict=True):
            if v.shape != act.shape or v.dtype != act.dtype:
                continue
            err = rel_err(v, act)
            if err <= 1e-4:
                return name
            best = min(best, (err, name))
    raise AssertionError(
        f"no ONNX tensor matches the output of the torch module (shape {act.shape}); "
        f"closest {best[1]!r} at {best[0]:.1e}"
    )


def count_rectifiers(model: onnx.ModelProto) -> str:
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    relu = sum(n.op_type == "Relu" for n in model.graph.node)
    clip0 = 0
    for n in model.graph.node:
        if n.op_type == "Clip" and len(n.input) > 1 and n.input[1] in consts:
            clip0 += bool(np.all(consts[n.input[1]] == 0))
    return f"{relu} Relu + {clip0} Clip(0, M)"


def _rows(name: str, exporter: str, rule: str, **fields: Any) -> None:
    for quantity in QUANTITIES[rule]:
        record(Row(SOURCE, name, exporter, quantity, **fields))


def _message(exc: BaseException, path: bool = True) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if path else text.split("; path to the score")[0]


@pytest.mark.slow
def test_every_torchvision_family_is_covered() -> None:
    assert not missing_families(), missing_families()


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter", "rule"), CASES)
def test_companion_matches_torch_float64(
    conformance_zoo: ConformanceZoo, name: str, exporter: str, rule: str
) -> None:
    try:
        exported = conformance_zoo.get(name, exporter)
    except ExportFailed as exc:
        _rows(
            name,
            exporter,
            rule,
            error=None,
            allowance=None,
            status="export failed",
            note=str(exc),
        )
        pytest.skip(str(exc))
    model = onnx.load(str(exported.path))
    x = photo(exported.size, exported.batch)
    seed = seeds(exported.batch)
    ref64, ref32 = references(exported, x, seed, rule)
    assert np.abs(ref64.input_gradient).max() > 0, "vacuous reference: zero input gradient"
    where = f"{exported.size} px, batch {exported.batch}"

    failures = []
    layers = []
    if rule == "standard":
        try:
            layers = [find_layer(model, ref32.mid_activation, x)]
        except AssertionError as exc:  # the harness's failure, reported as such
            record(
                Row(
                    SOURCE,
                    name,
                    exporter,
                    "mid-layer gradient",
                    None,
                    None,
                    "FAIL",
                    f"harness: {exc}",
                )
            )
            failures.append(f"mid-layer gradient: {exc}")
    quantities = ["input gradient" if rule == "standard" else "guided backprop"]
    quantities += ["mid-layer gradient"] * len(layers)

    start = time.perf_counter()
    try:
        companion, spec = build_checked(model, layers, rule=rule, input_gradient=True)
        outputs = open_session(companion).run(
            list(spec.outputs), {spec.image_input: x, spec.seed: seed}
        )
    except Exception as exc:
        refused = isinstance(exc, UnsupportedModel)
        for quantity in quantities:
            record(
                Row(
                    SOURCE,
                    name,
                    exporter,
                    quantity,
                    None,
                    None,
                    "refused" if refused else "FAIL",
                    _message(exc, path=False),
                )
            )
        if refused:
            pytest.fail(f"builder refused {name}/{exporter}/{rule}: {_message(exc)}")
        raise
    outs = dict(zip(spec.outputs, outputs, strict=True))
    build_run_s = time.perf_counter() - start

    if rule == "guided":
        where += f", torch {ref64.rectifiers} rectifiers, ONNX {count_rectifiers(model)}"
    logits = rel_err(outs[spec.score].astype(np.float64), ref64.logits)
    checks = [(quantities[0], spec.input_gradient, ref64.input_gradient, ref32.input_gradient)]
    if layers:
        checks.append((quantities[1], spec.gradients[0], ref64.mid_gradient, ref32.mid_gradient))
    # the allowance: torch's own float32 rounding against the float64 truth
    checks = [
        (q, o, truth, allowance(rel_err(t32.astype(np.float64), truth)))
        for q, o, truth, t32 in checks
    ]
    if any(rel_err(outs[o].astype(np.float64), t) > lim for _, o, t, lim in checks):
        # a max pool's or ReLU's near-tie may have gone the other way in onnxruntime's float32
        # forward: the truth is then the float64 gradient of the route that forward took
        pools = forward_choices(open_session, model, x)
        mid = exported.family.mid if rule == "standard" else None
        aligned = gradients(exported.module, x, seed, mid, rule, torch.float64, pools)
        if pools.aligned and not pools.refused:
            where += f", {pools.aligned} near-tie max-pool/ReLU decisions as onnxruntime took"
            truths = [aligned.input_gradient, aligned.mid_gradient]
            checks = [(q, o, truths[i], lim) for i, (q, o, _, lim) in enumerate(checks)]
    for quantity, output, truth, limit in checks:
        ours = outs[output]
        assert ours.shape == truth.shape, (quantity, ours.shape, truth.shape)
        error = rel_err(ours.astype(np.float64), truth)
        status = "pass" if error <= limit else "FAIL"
        note = where if quantity != "mid-layer gradient" else f"{where}, layer {layers[0]}"
        note += f", logits {logits:.0e}, export {exported.export_s:.0f}s"
        note += f", build+run {build_run_s:.0f}s"
        record(Row(SOURCE, name, exporter, quantity, error, limit, status, note))
        if status != "pass":
            failures.append(f"{quantity}: {error:.2e} > {limit:.2e}")
    assert not failures, failures
