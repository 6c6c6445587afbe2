"""Score-CAM and Ablation-CAM skip work for dead (constant) channels; the maps must equal the
plain per-channel definitions computed here without any shortcut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.explain import run_method
from service.explain.cam import resize_align_corners
from service.runtime.runner import ModelRunner
from tests.conftest import tiny_classifier

from .conftest import open_cpu_session

X = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)


@pytest.fixture
def dead(tmp_path: Path) -> ModelRunner:
    """The tiny classifier with conv channels 0 and 2 dead (bias -1e4: ReLU output all 0)."""
    model = onnx.load_from_string(tiny_classifier(seed=3))
    bias = next(t for t in model.graph.initializer if t.name == "conv.b")
    values = numpy_helper.to_array(bias).copy()
    values[[0, 2]] = -1e4
    bias.CopyFrom(numpy_helper.from_array(values, "conv.b"))
    path = tmp_path / "dead.onnx"
    path.write_bytes(model.SerializeToString())
    return ModelRunner(path, tmp_path / "derived", "dead", "input", "logits", open_cpu_session)


def test_scorecam_with_dead_channels_matches_the_definition(dead: ModelRunner) -> None:
    targets = [0, 2]
    got = run_method("scorecam", dead, X, targets, ["relu"], {}).maps[0]
    _, (a,) = dead.forward(X, extra=["relu"])
    assert (a[:, [0, 2]] == 0).all() and (a[:, [1, 3]] != 0).any()
    for r, c in enumerate(targets):
        up = resize_align_corners(a[r].astype(np.float64), (8, 8))
        lo = up.min(axis=(1, 2), keepdims=True)
        hi = up.max(axis=(1, 2), keepdims=True)
        masks = ((up - lo) / (hi - lo + 1e-8)).astype(np.float32)
        logits = np.stack([dead.forward(X[r][None] * m[None])[0][0] for m in masks])
        w = np.exp(logits[:, c] - logits[:, c].max())
        w /= w.sum()
        expected = np.einsum("k,khw->hw", w, a[r].astype(np.float64))
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-6)


def test_ablationcam_with_dead_channels_matches_the_definition(dead: ModelRunner) -> None:
    targets = [1, 0]
    got = run_method("ablationcam", dead, X, targets, ["relu"], {}).maps[0]
    scores, (a,) = dead.forward(X, extra=["relu"])
    for r, c in enumerate(targets):
        weights = []
        for k in range(a.shape[1]):
            ablated = a[r].copy()
            ablated[k] = 0.0
            score = dead.forward_from("relu", ablated[None])[0, c]
            weights.append((scores[r, c] - score) / scores[r, c])
        expected = np.einsum("k,khw->hw", np.asarray(weights), a[r].astype(np.float64))
        np.testing.assert_allclose(got[r], expected, rtol=1e-5, atol=1e-6)
