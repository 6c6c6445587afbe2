"""Feature visualisation on a ViT token layer, read as its patch grid: the seed goes back to
the patch tokens (zero at the class token), the gradient checked by finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from service.featurevis import objectives as O
from service.featurevis.model import Preprocess, Target
from service.featurevis.optimize import Settings, visualize
from tests.service.test_token_models import MEAN, SIZE, STD, VIT_LAYER, token  # noqa: F401


@pytest.fixture(scope="module")
def vit(token):  # noqa: F811
    t = token("vit")
    return Target(t.runner, Preprocess(1 / 255, list(MEAN), list(STD)), (SIZE, SIZE))


@pytest.mark.parametrize(
    "objective", [O.Channel(VIT_LAYER, 5), O.Neuron(VIT_LAYER, 3, x=2, y=6)], ids=repr
)
def test_the_gradient_by_finite_differences(vit: Target, objective: O.Objective) -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, size=(1, 3, SIZE, SIZE))
    shapes: dict[str, tuple[int, ...]] = {}
    _, grad = vit.step(objective, img, shapes)
    assert shapes[VIT_LAYER][1:] == (64, 8, 8)  # channels, the 8 x 8 patch grid
    d = rng.normal(size=img.shape)
    eps = 1e-3
    up = vit.step(objective, img + eps * d, shapes)[0]
    down = vit.step(objective, img - eps * d, shapes)[0]
    assert float((grad * d).sum()) == pytest.approx((up - down) / (2 * eps), rel=2e-2)


def test_a_token_channel_rises(vit: Target) -> None:
    result = visualize(vit, O.Channel(VIT_LAYER, 5), Settings(steps=30, size=SIZE, seed=0))
    assert result.final > result.initial
