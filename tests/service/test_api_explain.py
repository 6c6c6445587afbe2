"""Explain, activations and filters through the HTTP API, on the pretrained model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

URL = "/v1/models/efficientnet-lite0"
DEFAULT = "/_swish_1/Clip_output_0"
STEM = "/_swish/Clip_output_0"


@pytest.fixture(scope="module")
def api(effnet_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=effnet_store))) as client:
        yield client


@pytest.fixture(scope="module")
def cat_b64(chelsea_png: bytes) -> str:
    return base64.b64encode(chelsea_png).decode()


def decode_png(b64_or_bytes: str | bytes) -> Image.Image:
    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    return Image.open(io.BytesIO(data))


def decode_array(array: dict[str, Any]) -> np.ndarray:
    assert array["dtype"] == "float32"
    return np.frombuffer(base64.b64decode(array["data"]), "<f4").reshape(array["shape"])


def test_overlay_png_for_curl(api: TestClient, chelsea_png: bytes) -> None:
    response = api.post(
        f"{URL}/explain",
        params={"method": "gradcam"},
        headers={"accept": "image/png"},
        files={"image": ("cat.png", chelsea_png, "image/png")},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = decode_png(response.content)
    assert image.size == (451, 300) and image.mode == "RGB"  # the posted photo's size
    window = api.post(
        f"{URL}/explain",
        params={"method": "gradcam", "render.size": "input"},
        headers={"accept": "image/png"},
        files={"image": ("cat.png", chelsea_png, "image/png")},
    )
    assert decode_png(window.content).size == (224, 224)  # the model's window, as asked


def test_json_targets_arrays_stats(api: TestClient, cat_b64: str) -> None:
    body = {
        "images": [cat_b64, cat_b64],
        "method": "gradcam",
        "targets": {"top_k": 2},
        "outputs": ["heatmap", "array", "stats"],
        "roi": {"box": [100, 0, 400, 300]},
    }
    response = api.post(f"{URL}/explain", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["layers"] == [DEFAULT] and data["provider"] == "CPUExecutionProvider"
    assert [(r["image"], r["target"]["index"]) for r in data["results"]][:2] == [
        (0, data["results"][0]["target"]["index"]),
        (0, data["results"][1]["target"]["index"]),
    ]
    assert [r["image"] for r in data["results"]] == [0, 0, 1, 1]  # image-major
    first = data["results"][0]
    assert first["target"]["index"] in {281, 282, 285}
    heat = decode_array(first["array"])
    assert heat.shape == (224, 224) and heat.min() >= 0 and heat.max() <= 1
    assert first["stats"]["peak"] == list(np.unravel_index(heat.argmax(), heat.shape))
    assert 0 < first["stats"]["roi_fraction"] <= 1
    # pictures at the posted photo's size, transparent outside the model's window
    picture = decode_png(first["heatmap"])
    assert picture.size == (451, 300) and picture.mode == "RGBA"
    assert set(data["timings_ms"]) >= {"decode", "preprocess", "method", "render", "total"}


def test_sizes_feature_and_original(api: TestClient, cat_b64: str) -> None:
    feature = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64],
            "outputs": ["array"],
            "render": {"size": "feature", "normalize": "none", "relu": False},
        },
    ).json()
    raw = decode_array(feature["results"][0]["array"])
    scaled = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64],
            "outputs": ["array"],
            "render": {"size": "feature"},
        },
    ).json()["results"][0]
    minmax = decode_array(scaled["array"])
    assert raw.shape == minmax.shape == (7, 7)
    relu = np.maximum(raw, 0)
    expected = (relu - relu.min()) / (relu.max() - relu.min() + 1e-7)
    np.testing.assert_allclose(minmax, expected, atol=1e-5)
    assert not np.isclose(raw.max(), 1.0)  # normalize=none really is the raw scale
    original = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64],
            "outputs": ["array", "overlay"],
            "render": {"size": "original"},
        },
    ).json()["results"][0]
    assert decode_array(original["array"]).shape == (300, 451)
    assert decode_png(original["overlay"]).size == (451, 300)


def test_gradient_map_raw_and_reduced(api: TestClient, cat_b64: str) -> None:
    raw = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64],
            "method": "saliency",
            "outputs": ["array"],
            "render": {"reduce": "none"},
        },
    ).json()["results"][0]
    assert decode_array(raw["array"]).shape == (3, 224, 224)
    ig = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64],
            "method": "integrated_gradients",
            "options": {"steps": 8},
            "outputs": ["stats"],
        },
    )
    assert ig.status_code == 200, ig.text
    assert "completeness_gap" in ig.json()["results"][0]["extras"]


def test_explicit_labels_and_per_image_targets(api: TestClient, cat_b64: str) -> None:
    data = api.post(
        f"{URL}/explain",
        json={
            "images": [cat_b64, cat_b64],
            "targets": [["tabby", 285], ["Tiger Cat"]],
            "outputs": ["stats"],
        },
    ).json()
    assert [r["target"]["index"] for r in data["results"]] == [281, 285, 282]
    assert data["results"][0]["target"]["label"] == "tabby"


def assert_problem(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert fragment in response.json()["detail"], response.json()["detail"]


def test_explain_errors(api: TestClient, cat_b64: str) -> None:
    post = lambda **kw: api.post(f"{URL}/explain", json={"images": [cat_b64], **kw})  # noqa: E731
    assert_problem(post(method="magic"), 422, "method")
    assert_problem(post(layer="nope"), 422, "/layers")
    assert_problem(post(targets=["tabbby"]), 422, "'tabbby' is not a label")
    assert_problem(post(targets=[5000]), 422, "out of range 0..999")
    assert_problem(post(targets=[[1], [2]]), 422, "2 lists but 1 images")
    assert_problem(post(targets={"top_k": 1000}), 422, "limit 100")
    assert_problem(post(method="gradcam", options={"bogus": 1}), 422, "bogus")
    assert_problem(post(method="saliency", render={"size": "feature"}), 422, "feature")
    assert_problem(post(render={"alpha": 3}), 422, "alpha")
    many = api.post(
        f"{URL}/explain",
        json={"images": [cat_b64], "targets": {"top_k": 2}},
        headers={"accept": "image/png"},
    )
    assert_problem(many, 406, "2 results")


def test_activation_tiles_of_two_layers(api: TestClient, cat_b64: str) -> None:
    response = api.post(
        f"{URL}/activations",
        json={
            "images": [cat_b64],
            "layers": [STEM, "auto"],
            "channels": {"top_k": 8},
            "render": {"columns": 4, "tile_size": 32},
        },
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["layer"], r["shape"]) for r in results] == [
        (STEM, [32, 112, 112]),
        (DEFAULT, [1280, 7, 7]),
    ]
    for result in results:
        assert len(result["channels"]) == 8
        means = [c["mean"] for c in result["stats"]["per_channel"]]
        assert means == sorted(means, reverse=True)  # top-k by mean activation
        assert 0 <= result["stats"]["sparsity"] <= 1
        tiles = decode_png(result["tiles"])
        assert tiles.width >= 4 * 32 and tiles.height >= 2 * 32
    # ReLU6 outputs: a trained network has exact zeros
    assert results[1]["stats"]["sparsity"] > 0.05
    bad = api.post(f"{URL}/activations", json={"images": [cat_b64], "channels": [5000]})
    assert_problem(bad, 422, "out of range")


def test_first_layer_filters(api: TestClient) -> None:
    response = api.get(f"{URL}/filters", params={"layer": "/_conv_stem/Conv_output_0"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["shape"] == [32, 3, 3, 3]
    assert decode_png(data["tiles"]).mode == "RGB"
    png = api.get(
        f"{URL}/filters", params={"layer": data["weight"]}, headers={"accept": "image/png"}
    )
    assert png.headers["content-type"] == "image/png"
    assert_problem(api.get(f"{URL}/filters", params={"layer": "nope"}), 422, "no Conv")


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcampp", "saliency", "guided_gradcam", "cam", "eigencam"]
)
def test_top1_chosen_in_graph_equals_explicit_target(
    api: TestClient, cat_b64: str, method: str
) -> None:
    """top1 runs once (the companion graph seeds its own top class); naming that class
    explicitly (forward first, then a one-hot seed) must give the same map."""
    body = {
        "images": [cat_b64, cat_b64],
        "method": method,
        "outputs": ["array"],
        "render": {"normalize": "none", "reduce": "none", "size": "input"},
    }
    auto = api.post(f"{URL}/explain", json=body).json()["results"]
    chosen = [r["target"]["index"] for r in auto]
    explicit = api.post(f"{URL}/explain", json={**body, "targets": [chosen[0]]}).json()
    assert chosen[0] in {281, 282, 285}
    same = explicit["results"][0]["target"]
    assert (
        auto[0]["target"]["index"] == same["index"] and auto[0]["target"]["label"] == same["label"]
    )
    assert auto[0]["target"]["score"] == pytest.approx(same["score"], rel=1e-5)
    np.testing.assert_allclose(
        decode_array(auto[0]["array"]),
        decode_array(explicit["results"][0]["array"]),
        rtol=1e-5,
        atol=1e-7,
    )
