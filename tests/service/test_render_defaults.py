"""Readable pictures by default (docs/methods.md, "Rendering defaults"), on the pretrained model
and chelsea: no method's default heatmap is the dark frame min-max gave gradient maps; the
default overlay is the posted photo's size; the survey's views hold their definitions."""

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
from service.explain.registry import METHODS
from service.imaging.colormaps import COLORMAPS
from service.settings import Settings

URL = "/v1/models/efficientnet-lite0/explain"
CHEAP = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}}
# the dark frame: almost every pixel at the bottom of the colormap, a few specks above it
LOW = 0.05  # the bottom 5 % of the colormap's range
MIN_VISIBLE = 0.25  # at least a quarter of the picture must rise above it


@pytest.fixture(scope="module")
def api(effnet_store: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=effnet_store))) as client:
        yield client


@pytest.fixture(scope="module")
def cat(chelsea_png: bytes) -> str:
    return base64.b64encode(chelsea_png).decode()


def post(api: TestClient, cat: str, method: str, **body: Any) -> dict[str, Any]:
    response = api.post(
        URL, json={"images": [cat], "method": method, "options": CHEAP.get(method, {}), **body}
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    result["render"] = response.json()["provenance"]["render"]
    return result


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGBA"))


def colormap_positions(picture: np.ndarray, colormap: str) -> np.ndarray:
    """Each opaque pixel's position in [0, 1] along the colormap (nearest table entry)."""
    table = COLORMAPS[colormap].astype(np.int32)
    rgb = picture[picture[..., 3] == 255][:, :3].astype(np.int32)
    nearest = np.argmin(((rgb[:, None, :] - table[None]) ** 2).sum(-1), axis=1)
    return nearest / 255.0


def visible_share(result: dict[str, Any]) -> float:
    positions = colormap_positions(pixels(result["heatmap"]), result["render"]["colormap"])
    if result["render"]["polarity"] == "both":  # diverging: distance from the middle colour
        positions = np.abs(2 * positions - 1) + LOW * (positions != 0.5)
        return float((positions > 0).mean())
    return float((positions > LOW).mean())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_default_heatmap_is_not_a_dark_frame(api: TestClient, cat: str, method: str) -> None:
    result = post(api, cat, method, outputs=["heatmap", "overlay"])
    assert visible_share(result) >= MIN_VISIBLE, result["render"]
    overlay = Image.open(io.BytesIO(base64.b64decode(result["overlay"])))
    assert overlay.size == (451, 300)  # the photo that was posted, not the 224 crop


@pytest.mark.parametrize("method", ["saliency", "guided_backprop", "inputxgradient"])
def test_the_old_default_was_a_dark_frame(api: TestClient, cat: str, method: str) -> None:
    """The check above can fail: min-max on jet, as before per-method defaults."""
    old = {"normalize": "minmax", "polarity": "positive", "colormap": "jet"}
    assert visible_share(post(api, cat, method, outputs=["heatmap"], render=old)) < MIN_VISIBLE


def test_overlay_outside_the_window_is_the_dimmed_photo(
    api: TestClient, cat: str, chelsea_png: bytes
) -> None:
    photo = np.asarray(Image.open(io.BytesIO(chelsea_png)).convert("RGB"))
    overlay = pixels(post(api, cat, "gradcam", outputs=["overlay"])["overlay"])[..., :3]
    # 451x300 -> shorter side 256 (384x256), centre crop 224: the window's columns in the
    # photo are (384 - 224) / 2 / (256 / 300) = 93.75 .. 356.25, rows 16.4 .. 283.6
    np.testing.assert_array_equal(overlay[:, :90], photo[:, :90] >> 1)
    np.testing.assert_array_equal(overlay[:14], photo[:14] >> 1)
    assert not np.array_equal(overlay[150, 150:300], photo[150, 150:300] >> 1)


def test_opacity_map_leaves_the_photo_where_the_map_is_zero(api: TestClient, cat: str) -> None:
    window = {"size": "input"}
    result = post(api, cat, "saliency", outputs=["overlay", "array"], render=window)
    assert result["render"]["opacity"] == "map"
    backdrop = post(api, cat, "saliency", outputs=["overlay"], render={**window, "alpha": 0.0})
    photo = pixels(backdrop["overlay"])[..., :3]
    m = np.frombuffer(base64.b64decode(result["array"]["data"]), "<f4").reshape(224, 224)
    overlay = pixels(result["overlay"])[..., :3]
    zero = m == 0
    assert zero.any()
    np.testing.assert_array_equal(overlay[zero], photo[zero])
    strong = m > 0.9
    assert (np.abs(overlay[strong].astype(int) - photo[strong]).sum(-1) > 0).mean() > 0.9


def test_rgb_view_is_the_gradient_image(api: TestClient, cat: str) -> None:
    window = {"size": "input", "reduce": "none"}
    raw = post(api, cat, "guided_backprop", outputs=["array"], render=window)["array"]
    g = np.frombuffer(base64.b64decode(raw["data"]), "<f4").reshape(raw["shape"])
    result = post(
        api, cat, "guided_backprop", outputs=["heatmap"], render={**window, "view": "rgb"}
    )
    picture = pixels(result["heatmap"])[..., :3].astype(int)
    expected = np.empty((224, 224, 3))
    for c in range(3):  # Springenberg's figures: each channel on its own scale, 0 at grey
        scale = np.percentile(np.abs(g[c]), 99.0)
        expected[..., c] = np.clip(0.5 + g[c] / (2 * scale), 0, 1)
    assert np.abs(picture - np.floor(expected * 255 + 0.5)).max() <= 1
    still = np.unravel_index(np.abs(g).sum(0).argmin(), (224, 224))
    assert np.abs(picture[still] - 128).max() <= 2  # no gradient: mid-grey


def test_rgb_view_needs_an_input_gradient(api: TestClient, cat: str) -> None:
    response = api.post(URL, json={"images": [cat], "render": {"view": "rgb"}})
    assert response.status_code == 422 and "view=rgb" in response.json()["detail"]


def test_outline_view_draws_the_top_region_border(api: TestClient, cat: str) -> None:
    window = {"size": "input"}
    plain = post(api, cat, "gradcam", outputs=["overlay", "array"], render={**window, "alpha": 0})
    photo = pixels(plain["overlay"])[..., :3]
    m = np.frombuffer(base64.b64decode(plain["array"]["data"]), "<f4").reshape(224, 224)
    view = {**window, "view": "outline", "outline_percent": 20}
    outlined = pixels(post(api, cat, "gradcam", outputs=["overlay"], render=view)["overlay"])
    changed = (outlined[..., :3] != photo).any(-1)
    top = m >= np.percentile(m, 80)
    assert changed.any() and not (changed & ~top).any()  # only inside the top 20 %
    assert changed.sum() < 0.5 * top.sum()  # a contour, not a fill
    red = COLORMAPS["jet"][255]
    assert (outlined[changed][:, :3] == red).all()
