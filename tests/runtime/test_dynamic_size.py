"""Models exported with dynamic height and width: derived graphs are built for the fed size.

The companion builder needs static sizes (a mean's count, Concat's split points); with the
image's non-batch dims symbolic it refuses. The runner pins them to the size the service feeds
(the card's) in a derived copy, and the gradients equal those of the same model exported at
that size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models_store.companion import build_companion
from models_store.errors import UnsupportedModel
from service.runtime.runner import ModelRunner, pin_input_dims
from tests.conftest import tiny_classifier


def _dynamic_size(model_bytes: bytes) -> onnx.ModelProto:
    model = onnx.load_from_string(model_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, name in zip(dims[2:], ("H", "W"), strict=True):
        d.ClearField("dim_value")
        d.dim_param = name
    del model.graph.value_info[:]
    return model


def _open(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _runner(tmp_path: Path, model: onnx.ModelProto, dims: tuple[int, ...] | None) -> ModelRunner:
    path = tmp_path / f"model-{len(list(tmp_path.iterdir()))}.onnx"
    onnx.save(model, str(path))
    derived = tmp_path / f"derived-{path.stem}"
    return ModelRunner(path, derived, path.stem, "input", "logits", _open, input_dims=dims)


def test_symbolic_spatial_dims_are_refused_by_the_bare_builder() -> None:
    with pytest.raises(UnsupportedModel, match="static shape"):
        build_companion(_dynamic_size(tiny_classifier(8, 8)), ["relu"], input_gradient=True)


def test_runner_builds_for_the_fed_size(tmp_path: Path) -> None:
    dynamic = _dynamic_size(tiny_classifier(8, 8))
    static = onnx.load_from_string(tiny_classifier(8, 8))
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    seed = np.eye(2, 3, dtype=np.float32)
    ours = _runner(tmp_path, dynamic, (3, 8, 8)).gradients(x, seed, ["relu"], input_gradient=True)
    ref = _runner(tmp_path, static, None).gradients(x, seed, ["relu"], input_gradient=True)
    np.testing.assert_allclose(ours.input_gradient, ref.input_gradient, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours.gradients[0], ref.gradients[0], rtol=1e-6, atol=1e-7)
    assert list(tmp_path.glob("derived-*/model-pinned-*.onnx"))


def test_pinning_leaves_static_models_and_other_ranks_alone() -> None:
    static = onnx.load_from_string(tiny_classifier(8, 8))
    assert pin_input_dims(static, "input", (3, 8, 8)) is None
    assert pin_input_dims(_dynamic_size(tiny_classifier(8, 8)), "input", (8, 8)) is None
    pinned = pin_input_dims(_dynamic_size(tiny_classifier(8, 8)), "input", (3, 8, 8))
    assert pinned is not None
    dims = pinned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 8, 8]
