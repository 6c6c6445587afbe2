"""End to end with the real pretrained EfficientNet-Lite0 and real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def effnet_client(effnet_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=effnet_store))) as client:
        yield client


def test_chelsea_is_a_cat(effnet_client: TestClient, chelsea_png: bytes) -> None:
    response = effnet_client.post(
        "/v1/models/efficientnet-lite0/predict",
        params={"top_k": 3},
        files={"image": ("chelsea.png", chelsea_png, "image/png")},
    )
    assert response.status_code == 200, response.text
    top3 = response.json()["predictions"][0]
    assert top3[0]["index"] in CATS, top3
    assert {p["index"] for p in top3} & CATS
    assert top3[0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert 0.2 < top3[0]["probability"] <= 1


def test_coffee_is_espresso(effnet_client: TestClient) -> None:
    from skimage import data

    from tests.conftest import png_bytes

    response = effnet_client.post(
        "/v1/models/efficientnet-lite0/predict",
        files={"image": ("coffee.png", png_bytes(data.coffee()), "image/png")},
    )
    assert response.json()["predictions"][0][0]["label"] == "espresso"


def test_layers_and_default(effnet_client: TestClient) -> None:
    layers = effnet_client.get("/v1/models/efficientnet-lite0/layers").json()
    assert layers["default"] == "/_swish_1/Clip_output_0"  # ReLU6 after the head conv
    default = next(layer for layer in layers["layers"] if layer["name"] == layers["default"])
    assert default["shape"][1:] == [1280, 7, 7] and default["op_type"] == "Clip"
