"""Expensive explain requests are refused before any work, naming the setting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    ModelStore(tmp_path).add(tiny_classifier(), tiny_card())
    settings = Settings(
        store=tmp_path,
        max_cam_channels=3,
        max_occlusion_windows=10,
        max_smoothgrad_samples=5,
        max_ig_steps=8,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "options", "fragment"),
    [
        (
            "scorecam",
            {},
            "4 channels per image; pass options.max_channels: over the limit"
            " CNNVIS_MAX_CAM_CHANNELS=3",
        ),
        ("ablationcam", {}, "CNNVIS_MAX_CAM_CHANNELS=3"),
        (
            "occlusion",
            {"window": 2, "stride": 2},
            "16 windows per image; use a larger stride:"
            " over the limit CNNVIS_MAX_OCCLUSION_WINDOWS=10",
        ),
        (
            "smoothgrad",
            {"samples": 6},
            "options.samples=6: over the limit CNNVIS_MAX_SMOOTHGRAD_SAMPLES=5",
        ),
        ("integrated_gradients", {"steps": 9}, "CNNVIS_MAX_IG_STEPS=8"),
    ],
)
def test_over_the_limit_is_refused(
    api: TestClient, method: str, options: dict[str, object], fragment: str
) -> None:
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    import json

    response = api.post(
        "/v1/models/tiny/explain",
        params={"method": method, "options": json.dumps(options)},
        files={"image": ("a.png", image, "image/png")},
    )
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("scorecam", {"max_channels": 3}),
        ("occlusion", {"window": 4, "stride": 2}),
        ("smoothgrad", {"samples": 5}),
        ("integrated_gradients", {"steps": 8}),
    ],
)
def test_at_the_limit_is_served(api: TestClient, method: str, options: dict[str, object]) -> None:
    import json

    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    response = api.post(
        "/v1/models/tiny/explain",
        params={"method": method, "options": json.dumps(options)},
        files={"image": ("a.png", image, "image/png")},
    )
    assert response.status_code == 200, response.text
