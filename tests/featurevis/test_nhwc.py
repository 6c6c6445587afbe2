"""An NHWC model (tf2onnx's shape) and its NCHW twin give the same feature visualisation:
the seed goes back to the layer's own layout and the input gradient comes back NCHW."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models_store.store import ModelStore
from schemas.featurevis import FeatureVisRequest
from service.featurevis.jobs import featurevis_work
from service.settings import Settings
from service.state import AppState
from tests.service.test_nhwc import card, keras_style


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("fv-nhwc")
    store = ModelStore(root)
    store.add(keras_style(True), card("nhwc"))
    store.add(keras_style(False), card("nchw"))
    state = AppState.open(Settings(store=root, monitoring=False, sampling=False))
    yield state
    state.admission.close()


@pytest.mark.parametrize(
    "objective",
    [
        {"type": "channel", "layer": "act", "channel": 2},
        {"type": "neuron", "layer": "act", "channel": 1, "x": 3, "y": 5},
        {"type": "layer", "layer": "act"},
        {"type": "class", "class": 1},
    ],
)
def test_nhwc_matches_its_nchw_twin(state: AppState, objective: dict) -> None:
    body = FeatureVisRequest.model_validate(
        {"objective": objective, "steps": 15, "size": 12, "seed": 3,
         "transforms": {"pad": 2, "jitter": 2, "jitter2": 1}}
    )  # fmt: skip
    results = {}
    for name in ("nhwc", "nchw"):
        work = featurevis_work(state, state.store.resolve(name), body)
        results[name] = work(lambda *a: None, lambda: False)
    a, b = results["nhwc"], results["nchw"]
    np.testing.assert_allclose(a.curve, b.curve, rtol=1e-4, atol=1e-5)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1
    assert a.final > a.initial
