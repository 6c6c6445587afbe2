"""Stored companion graphs read an all-zero seed row as "the top class", in the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models_store.companion import load_or_build
from models_store.store import ModelStore
from tests.conftest import tiny_card, tiny_classifier


def test_zero_rows_seed_the_top_class_and_others_are_untouched(tmp_path: Path) -> None:
    record = ModelStore(tmp_path).add(tiny_classifier(seed=4), tiny_card())
    path, spec = load_or_build(
        record.derived_dir, record.model_path, record.sha256, ["relu"], "standard", True
    )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    scores = session.run(
        [spec.score], {spec.image_input: x, spec.seed: np.eye(3, dtype=np.float32)}
    )[0]
    top = scores.argmax(axis=1)

    explicit = np.zeros((3, 3), np.float32)
    explicit[np.arange(3), top] = 1.0
    mixed = explicit.copy()
    mixed[[0, 2]] = 0.0  # rows 0 and 2: "top class"; row 1 keeps its explicit seed
    mixed[1] = 0.0
    mixed[1, (top[1] + 1) % 3] = 2.5  # and a seed that is not the top class, scaled
    expected_seed = explicit.copy()
    expected_seed[1] = mixed[1]

    want = session.run(None, {spec.image_input: x, spec.seed: expected_seed})
    got = session.run(None, {spec.image_input: x, spec.seed: mixed})
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)
    assert np.any(got[spec.outputs.index(spec.gradients[0])][0] != 0)
