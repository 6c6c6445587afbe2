"""The acceptance checks on the pretrained EfficientNet-Lite0, default settings: a mid-layer
channel visualisation runs its 512 steps and raises its channel, and "tabby" (281) becomes the
top-1 class. How long the channel takes is measured by bench/featurevis_bench.py and reported in
docs/featurevis.md ("Measured"), not asserted here: wall clocks belong in bench/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from schemas.featurevis import FeatureVisRequest
from service.featurevis.jobs import featurevis_work, make_target
from service.featurevis.transforms import resize
from service.settings import Settings
from service.state import AppState

pytestmark = pytest.mark.slow

TABBY = 281
MID = "/_blocks.7/Add_output_0"  # block 7 of 16 (stage 4, 80 channels, 14 x 14)


@pytest.fixture(scope="module")
def state(effnet_store: Path):
    state = AppState.open(Settings(store=effnet_store, monitoring=False, sampling=False))
    yield state
    state.admission.close()


def _run(state: AppState, objective: dict) -> tuple[object, np.ndarray]:
    record = state.store.resolve("efficientnet-lite0")
    body = FeatureVisRequest.model_validate({"objective": objective, "seed": 0})
    result = featurevis_work(state, record, body)(lambda *a: None, lambda: False)
    target = make_target(state, record, "standard")
    pixels = result.images.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    return result, target.scores(resize(pixels, target.size)[0])


def test_a_mid_layer_channel_visualisation(state: AppState) -> None:
    assert MID in {layer.name for layer in state.summary(
        state.store.resolve("efficientnet-lite0")).layers}  # fmt: skip
    result, _ = _run(state, {"type": "channel", "layer": MID, "channel": 7})
    print(f"mid-layer channel visualisation: {result.seconds:.1f} s for 512 steps")
    assert len(result.curve) == 512
    assert result.final > result.initial


def test_tabby_becomes_the_top_class(state: AppState) -> None:
    result, scores = _run(state, {"type": "class", "class": "tabby"})
    top = int(np.argmax(scores[0]))
    print(f"class visualisation: top-1 {top}, logit {scores[0, TABBY]:.2f}, {result.seconds:.1f} s")
    assert top == TABBY
