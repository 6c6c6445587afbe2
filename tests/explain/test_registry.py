"""Option validation, CAM from the classifier's weights, and runner caching on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models_store.errors import ProblemError, UnsupportedModel
from service.explain import METHODS, run_method
from service.runtime.runner import ModelRunner
from tests.conftest import tiny_classifier

from .conftest import open_cpu_session


@pytest.fixture
def tiny(tmp_path: Path) -> ModelRunner:
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_classifier())
    return ModelRunner(path, tmp_path / "derived", "tiny", "input", "logits", open_cpu_session)


X = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)


def test_every_method_has_a_kind_and_documented_defaults() -> None:
    assert len(METHODS) == 19
    for m in METHODS.values():
        assert m.kind in ("cam", "gradient", "perturbation")
        assert m.doc
        for opt in m.options.values():
            assert opt.doc


def test_cam_equals_classifier_weights_times_activations(tiny: ModelRunner) -> None:
    out = run_method("cam", tiny, X, [0, 2], ["relu"], {})
    _, (a,) = tiny.forward(X, extra=["relu"])
    w = out.extras["weights"][0]
    np.testing.assert_allclose(out.maps[0], np.einsum("rk,rkhw->rhw", w, a), rtol=1e-6)
    # on a GAP -> Linear head Grad-CAM is CAM divided by h*w
    g = run_method("gradcam", tiny, X, [0, 2], ["relu"], {})
    np.testing.assert_allclose(g.maps[0] * 64, out.maps[0], rtol=1e-4, atol=1e-5)


def test_cam_refuses_a_layer_without_gap_linear_head(tiny: ModelRunner) -> None:
    with pytest.raises(UnsupportedModel, match="gradcam"):
        run_method("cam", tiny, X, [0, 1], ["conv"], {})


def test_unknown_option_lists_the_valid_ones(tiny: ModelRunner) -> None:
    with pytest.raises(ProblemError, match="valid options: .*samples"):
        run_method("smoothgrad", tiny, X, [0, 1], [], {"sample": 3})


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("smoothgrad", {"samples": 0}, r"options.samples must be an integer in \[1, 1000\]"),
        ("integrated_gradients", {"method": "simpson"}, "options.method must be one of"),
        ("occlusion", {"window": [8, 8, 8]}, "options.window must be an integer or"),
        ("occlusion", {"window": 9}, r"must fit in the input \(8x8"),
        ("scorecam", {"score": "softmax"}, "options.score must be one of"),
        ("gradcam", {"fusion": "sum"}, "options.fusion must be one of"),
    ],
)
def test_bad_options_name_the_option_and_range(
    tiny: ModelRunner, method: str, options: dict, message: str
) -> None:
    with pytest.raises(ProblemError, match=message):
        run_method(method, tiny, X, [0, 1], ["relu"], options)


def test_runner_builds_each_graph_once(tiny: ModelRunner, tmp_path: Path) -> None:
    run_method("gradcam", tiny, X, [0, 1], ["relu"], {})
    run_method("gradcam", tiny, X, [1, 1], ["relu"], {})
    built = sorted(p.name.split("-")[0] for p in (tmp_path / "derived").glob("*.onnx"))
    assert built == ["companion"]
    again = ModelRunner(
        tiny.model_path, tmp_path / "derived", "tiny", "input", "logits", open_cpu_session
    )
    mtime = {p: p.stat().st_mtime_ns for p in (tmp_path / "derived").iterdir()}
    run_method("gradcam", again, X, [0, 1], ["relu"], {})
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "derived").iterdir()} == mtime


def test_perturbation_methods_batch(tiny: ModelRunner) -> None:
    a = run_method("scorecam", tiny, X, [0, 1], ["relu"], {"batch_size": 1})
    b = run_method("scorecam", tiny, X, [0, 1], ["relu"], {"batch_size": 64})
    np.testing.assert_allclose(a.maps[0], b.maps[0], rtol=1e-5)
    o = run_method("occlusion", tiny, X, [0, 1], [], {"window": 4, "stride": 2, "batch_size": 3})
    assert o.maps[0].shape == (2, 1, 8, 8)
