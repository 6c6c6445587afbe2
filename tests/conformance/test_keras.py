"""Keras applications exported by tf2onnx: companion gradients vs tf.GradientTape in float64.

Issue 9 ("Any ONNX classifier, exactly"): for each application (random weights, NHWC input)
the input gradient and a mid-layer gradient of ``sum(seed * logits)`` must match the float64
reference to max(1e-4, 3 x Keras' own float32 error against that reference), relative to the
reference's max. The mid layer is a Keras layer's output; tf2onnx moves most activations to
NCHW between its Transposes, so the ONNX tensor holding it is found by value in either layout
and its gradient is transposed back to NHWC before comparing. TensorFlow runs in a child
process (tests/fixtures/keras_models.py); this process sees only ONNX files and arrays.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from models_store.companion import forward_model
from models_store.errors import UnsupportedModel
from tests.companion.helpers import build_checked, rel_err, session
from tests.conformance.table import Row, allowance, record
from tests.fixtures.keras_models import ARCHS, ExportFailed, KerasExported, KerasZoo

NCHW_TO_NHWC = (0, 2, 3, 1)
QUANTITIES = ("input gradient", "mid-layer gradient")


@pytest.fixture(scope="session")
def keras_zoo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KerasZoo:
    """Exports, in one child process, exactly the applications this session selected.
    Set CNNVIS_KERAS_EXPORTS=folder to keep the exports (and references) between sessions."""
    here = Path(__file__)
    wanted = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.path == here and hasattr(item, "callspec") and "name" in item.callspec.params
    ]
    kept = os.environ.get("CNNVIS_KERAS_EXPORTS")  # a folder to keep exports across sessions
    root = Path(kept) if kept else tmp_path_factory.mktemp("keras-onnx")
    return KerasZoo(root, wanted or list(ARCHS))


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def mid_tensor(model: onnx.ModelProto, exported: KerasExported) -> tuple[str, str]:
    """The ONNX tensor holding the Keras mid layer's output, and its layout ("NHWC"/"NCHW").

    Candidates are the tensors of the NHWC or NCHW shape; those named after the Keras layer
    (tf2onnx keeps TensorFlow's op names, ``model/LAYER_1/Op:0``) are tried first. The last one
    in graph order whose value equals Keras' float32 activation is the layer's output."""
    act = exported.ref["mid32"]
    _, h, w, c = act.shape
    layouts = {(h, w, c): "NHWC", (c, h, w): "NCHW"}
    shapes = _shapes(model)
    produced = [o for node in model.graph.node for o in node.output]
    by_shape = [o for o in produced if shapes.get(o, (None,))[1:] in layouts]
    pattern = re.compile(rf"/{re.escape(exported.arch.mid)}(_\d+)?/")
    named = [o for o in by_shape if pattern.search(o)]
    x = exported.ref["x"]
    scale = float(np.abs(act).max())
    for candidates in (named, by_shape):
        if not candidates:
            continue
        values = session(forward_model(model, candidates)).run(None, {model.graph.input[0].name: x})
        matches = []
        for name, value in zip(candidates, values, strict=True):
            layout = layouts[tuple(value.shape[1:])]
            nhwc = value.transpose(NCHW_TO_NHWC) if layout == "NCHW" else value
            if nhwc.shape == act.shape and np.abs(nhwc - act).max() <= 1e-4 * scale:
                matches.append((name, layout))
        if matches:
            return matches[-1]
    raise AssertionError(f"no ONNX tensor holds {exported.arch.mid}'s output {act.shape}")


def _exported(zoo: KerasZoo, name: str) -> KerasExported:
    try:
        return zoo.get(name)
    except ExportFailed as exc:
        for quantity in QUANTITIES:
            record(Row("keras", name, "tf2onnx", quantity, None, None, "export failed", str(exc)))
        pytest.skip(str(exc))


def _failed(name: str, note: str) -> None:
    for quantity in QUANTITIES:
        record(Row("keras", name, "tf2onnx", quantity, None, None, "FAIL", note))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHS))
def test_keras_gradients_match_float64(keras_zoo: KerasZoo, name: str) -> None:
    exported = _exported(keras_zoo, name)
    ref = exported.ref
    model = onnx.load(str(exported.path))
    try:
        layer, layout = mid_tensor(model, exported)
    except AssertionError as exc:
        _failed(name, f"test harness: {exc}")
        raise
    where = f"{layer} ({layout})"
    try:
        companion, spec = build_checked(model, [layer], input_gradient=True)
    except UnsupportedModel as exc:
        for quantity in QUANTITIES:
            record(Row("keras", name, "tf2onnx", quantity, None, None, "refused", str(exc)))
        pytest.fail(f"builder refused {name}: {exc}")
    except Exception as exc:
        _failed(name, f"builder raised {type(exc).__name__}: {exc}")
        raise
    try:
        outputs = session(companion).run(
            list(spec.outputs), {spec.image_input: ref["x"], spec.seed: ref["seed"]}
        )
    except Exception as exc:
        _failed(name, f"onnxruntime (ORT_ENABLE_ALL) on the companion: {exc}")
        raise
    outs = dict(zip(spec.outputs, outputs, strict=True))
    grad_mid = outs[spec.gradients[0]]
    if layout == "NCHW":
        grad_mid = grad_mid.transpose(NCHW_TO_NHWC)
    cases = {
        "input gradient": (outs[spec.input_gradient], "grad_x", "NHWC input"),
        "mid-layer gradient": (grad_mid, "grad_mid", where),
    }
    failures = []
    for quantity, (ours, key, note) in cases.items():
        assert ours.shape == ref[f"{key}64"].shape, (quantity, ours.shape)
        error = rel_err(ours, ref[f"{key}64"])
        limit = allowance(rel_err(ref[f"{key}32"], ref[f"{key}64"]))
        status = "pass" if error <= limit else "FAIL"
        record(Row("keras", name, "tf2onnx", quantity, error, limit, status, note))
        if status == "FAIL":
            failures.append(f"{quantity}: {error:.2e} > {limit:.2e} ({note})")
    score_limit = allowance(rel_err(ref["logits32"], ref["logits64"]))
    score_error = rel_err(outs[spec.score], ref["logits64"])
    assert score_error <= score_limit, f"logits: {score_error:.2e} > {score_limit:.2e}"
    assert not failures, failures
