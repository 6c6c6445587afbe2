"""Explain's signals through the HTTP API: the new stats, named regions (card and request),
faithfulness checks, provenance, and the hand-over to monitoring."""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models_store.companion import BUILDER_VERSION
from models_store.store import ModelStore
from schemas.card import InputSpec
from service import __version__
from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier

CARD_REGIONS = {"top": (0.0, 0.0, 1.0, 0.25), "right": (0.5, 0.0, 1.0, 1.0)}
WIDE = (16, 24)  # the stretch model's input (height, width)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("signals-store")
    store = ModelStore(root)
    store.add(tiny_classifier(), tiny_card("tiny", regions=CARD_REGIONS))
    h, w = WIDE
    spec = InputSpec(height=h, width=w, resize="stretch")
    store.add(tiny_classifier(h, w, seed=4), tiny_card("wide", input=spec, regions=CARD_REGIONS))
    crop = InputSpec(height=16, width=16, resize="center_crop")
    store.add(tiny_classifier(16, 16, seed=5), tiny_card("crop", input=crop, regions=CARD_REGIONS))
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


def b64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array)).decode()


@pytest.fixture(scope="module")
def image() -> str:
    rng = np.random.default_rng(1)
    return b64(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def photo() -> str:
    """Smooth, not the model's aspect ratio (44 x 90 for a 16 x 24 input): a real stretch."""
    yy, xx = np.mgrid[0:44, 0:90]
    rgb = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 90 * np.cos(yy / 7.0), xx * 2.5], -1)
    return b64(np.clip(rgb, 0, 255).astype(np.uint8))


def post(api: TestClient, model: str, body: dict[str, Any], **kw: Any) -> Any:
    return api.post(f"/v1/models/{model}/explain", json=body, **kw)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def decode(array: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(array["data"]), "<f4").reshape(array["shape"])


def shares_by_loop(m: np.ndarray, boxes: dict[str, tuple[float, ...]]) -> dict[str, float]:
    """Share of max(m, 0) whose pixel centres lie in each normalised box."""
    h, w = m.shape
    pos = np.maximum(m.astype(np.float64), 0.0)
    out = {}
    for name, (x0, y0, x1, y1) in boxes.items():
        inside = sum(
            pos[y, x]
            for y, x in itertools.product(range(h), range(w))
            if x0 * w <= x + 0.5 < x1 * w and y0 * h <= y + 0.5 < y1 * h
        )
        out[name] = inside / pos.sum()
    return out


def problem(response: Any, *fragments: str) -> None:
    assert response.status_code == 422, response.text
    text = response.text
    for fragment in fragments:
        assert fragment in text, text


# ---- stats ---------------------------------------------------------------------------------


def test_stats_have_the_signals(api: TestClient, image: str) -> None:
    data = ok(post(api, "tiny", {"images": [image], "outputs": ["array", "stats"]}))
    result = data["results"][0]
    m = decode(result["array"]).astype(np.float64)
    stats = result["stats"]
    a = m.ravel()
    gini = sum(abs(p - q) for p, q in itertools.product(a, a)) / (2 * a.size * a.sum())
    assert stats["sparseness"] == pytest.approx(gini, abs=1e-6)
    top = np.sort(a)[::-1][: int(np.ceil(0.05 * a.size))]  # 4 of 64 pixels
    assert stats["top5_share"] == pytest.approx(top.sum() / a.sum(), abs=1e-6)
    assert stats["region_shares"] == pytest.approx(shares_by_loop(m, CARD_REGIONS), abs=1e-6)
    for key in ("confidence_drop", "deletion_auc", "insertion_curve"):
        assert stats[key] is None  # faithfulness only when asked for
    # without "stats" in outputs: none computed
    assert ok(post(api, "tiny", {"images": [image]}))["results"][0]["stats"] is None


def test_request_regions_add_to_and_override_the_card(api: TestClient, image: str) -> None:
    regions = {"right": [0.0, 0.0, 0.5, 1.0], "centre": [0.25, 0.25, 0.75, 0.75]}
    body = {"images": [image], "outputs": ["array", "stats"], "regions": regions}
    result = ok(post(api, "tiny", body))["results"][0]
    m = decode(result["array"])
    merged = {"top": CARD_REGIONS["top"], **{k: tuple(v) for k, v in regions.items()}}
    shares = result["stats"]["region_shares"]
    assert set(shares) == {"top", "right", "centre"}
    assert shares == pytest.approx(shares_by_loop(m, merged), abs=1e-6)
    card_right = ok(post(api, "tiny", {"images": [image], "outputs": ["stats"]}))
    # the card's "right" is the other half: the two halves tile the map
    assert shares["right"] + card_right["results"][0]["stats"]["region_shares"][
        "right"
    ] == pytest.approx(1.0)


def test_feature_size_regions(api: TestClient, image: str) -> None:
    body = {"images": [image], "outputs": ["array", "stats"], "render": {"size": "feature"}}
    result = ok(post(api, "tiny", body))["results"][0]
    m = decode(result["array"])
    assert m.shape == (8, 8)  # the layer of the tiny model keeps the input's resolution
    assert result["stats"]["region_shares"] == pytest.approx(shares_by_loop(m, CARD_REGIONS))


@pytest.mark.parametrize(("model", "window"), [("wide", WIDE), ("crop", (16, 16))])
def test_original_size_regions_agree_with_input_size(
    api: TestClient, photo: str, model: str, window: tuple[int, int]
) -> None:
    """Boxes of the input window land on the same content in the original image: under a
    stretch, and under a center crop (44 x 90 -> 16 x 32, the middle 16 x 16 cut out)."""
    regions = {"left": [0.0, 0.0, 0.5, 1.0], "middle": [0.25, 0.25, 0.75, 0.75]}
    shares = {}
    for size in ("input", "original"):
        body = {
            "images": [photo],
            "outputs": ["array", "stats"],
            "render": {"size": size},
            "regions": regions,
        }
        result = ok(post(api, model, body))["results"][0]
        shares[size] = result["stats"]["region_shares"]
        shape = decode(result["array"]).shape
        assert shape == (window if size == "input" else (44, 90))
    assert set(shares["input"]) == {"top", "right", "left", "middle"}
    for name, value in shares["input"].items():
        assert shares["original"][name] == pytest.approx(value, abs=0.03), name
    # the halves tile the window; under the crop a sliver of mass (to_original's half-pixel
    # edge) lies just outside the window's edges in the original
    halves = shares["original"]["left"] + shares["original"]["right"]
    assert halves == pytest.approx(1.0, abs=1e-6 if model == "wide" else 5e-3)


@pytest.mark.parametrize(
    ("regions", "fragment"),
    [
        ({"a": [0.0, 0.0, 1.5, 1.0]}, "regions.a"),
        ({"a": [-0.1, 0.0, 0.5, 1.0]}, "regions.a"),
        ({"a": [0.5, 0.0, 0.5, 1.0]}, "x1 > x0"),
        ({"a": [0.6, 0.0, 0.4, 1.0]}, "x1 > x0"),
        ({"a": [0.0, 0.0, 0.5]}, "regions.a"),
        ({"bad name!": [0.0, 0.0, 0.5, 0.5]}, "regions"),
    ],
)
def test_bad_regions_are_422s_naming_the_field(
    api: TestClient, image: str, regions: dict[str, Any], fragment: str
) -> None:
    response = post(api, "tiny", {"images": [image], "outputs": ["stats"], "regions": regions})
    problem(response, fragment)
    assert all("regions" in e["loc"] for e in response.json()["errors"])


# ---- faithfulness --------------------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_faithfulness_through_the_api(api: TestClient, image: str, tmp_path: Path) -> None:
    body = {
        "images": [image],
        "targets": [2],
        "outputs": ["array"],  # no "stats": faithfulness fills stats anyway
        "faithfulness": {"steps": 4},
    }
    data = ok(post(api, "tiny", body))
    stats = data["results"][0]["stats"]
    m = decode(data["results"][0]["array"]).astype(np.float64)
    assert stats["sparseness"] is not None and stats["region_shares"] is not None
    assert len(stats["deletion_curve"]) == len(stats["insertion_curve"]) == 5
    assert data["provenance"]["faithfulness"] == {
        "checks": ["confidence_drop", "deletion", "insertion"],
        "steps": 4,
        "baseline": "zero",
    }
    assert "faithfulness" in data["timings_ms"]
    # recompute from the definitions, on the same preprocessed input (stretch of an 8x8
    # image to 8x8 is the identity; the card's ImageNet normalisation)
    path = tmp_path / "tiny.onnx"
    path.write_bytes(tiny_classifier())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image))), dtype=np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((pixels / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)
    rel = m / m.max()
    p = lambda v: softmax(session.run(None, {"input": v[None].astype(np.float32)})[0])[0, 2]  # noqa: E731
    p_x, p_m = p(x), p(x * rel[None])
    assert stats["masked_probability"] == pytest.approx(p_m, rel=1e-4)
    assert stats["confidence_drop"] == pytest.approx((p_x - p_m) / p_x, rel=1e-4, abs=1e-6)
    order = sorted(range(64), key=lambda i: (-rel.ravel()[i], i))
    curve = []
    for k in range(5):
        v = x.copy()
        for i in order[: round(k * 64 / 4)]:
            v[:, i // 8, i % 8] = 0.0
        curve.append(p(v))
    assert stats["deletion_curve"] == pytest.approx(curve, rel=1e-4)
    area = sum((curve[k] + curve[k + 1]) / 2 / 4 for k in range(4))
    assert stats["deletion_auc"] == pytest.approx(area, rel=1e-4)
    assert stats["insertion_curve"][0] == pytest.approx(curve[-1], rel=1e-4)
    assert stats["insertion_curve"][-1] == pytest.approx(curve[0], rel=1e-4)


def test_faithfulness_on_feature_size_and_blur(api: TestClient, image: str) -> None:
    body = {
        "images": [image, image],
        "targets": {"top_k": 2},
        "outputs": ["stats"],
        "render": {"size": "feature"},
        "faithfulness": {"checks": ["deletion"], "steps": 3, "baseline": "blur"},
    }
    results = ok(post(api, "tiny", body))["results"]
    assert len(results) == 4
    for r in results:
        assert len(r["stats"]["deletion_curve"]) == 4
        assert r["stats"]["insertion_curve"] is None and r["stats"]["confidence_drop"] is None
        assert r["stats"]["deletion_curve"][0] == pytest.approx(r["target"]["probability"])


def test_faithfulness_is_skipped_for_png(api: TestClient, image: str) -> None:
    response = post(
        api,
        "tiny",
        {"images": [image], "faithfulness": {"steps": 50}},
        headers={"accept": "image/png"},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    ("faithfulness", "fragments"),
    [
        ({"steps": 51}, ["faithfulness.steps=51", "CNNVIS_MAX_FAITHFULNESS_STEPS=50"]),
        ({"steps": 0}, ["faithfulness", "steps"]),
        ({"checks": ["deletion", "pointing_game"]}, ["faithfulness.checks.1", "insertion"]),
        ({"checks": []}, ["faithfulness", "checks"]),
        ({"checks": ["deletion", "deletion"]}, ["faithfulness", "repeat", "deletion"]),
        ({"baseline": "noise"}, ["faithfulness", "baseline"]),
        ({"stride": 2}, ["faithfulness", "stride"]),
    ],
)
def test_bad_faithfulness_is_a_422_naming_the_field(
    api: TestClient, image: str, faithfulness: dict[str, Any], fragments: list[str]
) -> None:
    problem(post(api, "tiny", {"images": [image], "faithfulness": faithfulness}), *fragments)


def test_faithfulness_forwards_are_bounded(api: TestClient, image: str) -> None:
    # 16 images x 3 targets at 50 steps: 48 x (1 + 2 x 51) forwards, over 16 x 103
    body = {"images": [image] * 16, "targets": {"top_k": 3}, "faithfulness": {"steps": 50}}
    problem(post(api, "tiny", body), "4944 forwards", "1648", "CNNVIS_MAX_FAITHFULNESS_STEPS")
    # the most the bound allows: 16 one-target results at the step limit
    body = {"images": [image] * 16, "outputs": ["stats"], "faithfulness": {"steps": 50}}
    results = ok(post(api, "tiny", body))["results"]
    assert len(results) == 16 and len(results[0]["stats"]["deletion_curve"]) == 51


# ---- provenance ----------------------------------------------------------------------------


def test_provenance_names_everything(api: TestClient, image: str) -> None:
    body = {"images": [image], "method": "smoothgrad", "options": {"samples": 3}}
    data = ok(post(api, "tiny", body))
    prov = data["provenance"]
    record = api.get("/v1/models/tiny").json()
    assert prov["model"] == {
        "name": "tiny",
        "version": record["version"],
        "sha256": record["sha256"],
    }
    assert prov["cnnvis"] == __version__
    assert prov["onnxruntime"] == ort.__version__
    assert prov["companion_builder"] == BUILDER_VERSION
    assert prov["provider"] == data["provider"] == "CPUExecutionProvider"
    assert prov["method"] == "smoothgrad" and prov["layers"] == data["layers"]
    assert prov["options"]["samples"] == 3  # as posted
    assert prov["options"]["seed"] == 0 and prov["options"]["noise"] == 0.15  # defaults
    assert set(prov["options"]) >= {"samples", "noise", "squared", "seed", "batch_size"}
    assert prov["seed"] == 0
    # the render as used: a gradient magnitude's defaults filled in (docs/methods.md)
    assert prov["render"]["size"] == "auto" and prov["render"]["colormap"] == "jet"
    assert prov["render"]["normalize"] == "percentile" and prov["render"]["opacity"] == "map"
    assert prov["render"]["alpha"] == 0.8 and prov["render"]["clip_percentiles"] == [0.0, 99.0]
    assert prov["targets"] == "top1"
    assert prov["faithfulness"] is None
    assert prov["regions"] == {k: list(v) for k, v in CARD_REGIONS.items()}
    gradcam = ok(post(api, "tiny", {"images": [image], "targets": {"top_k": 2}}))["provenance"]
    assert gradcam["seed"] is None and gradcam["layers"] == ["relu"]
    assert gradcam["render"]["normalize"] == "minmax" and gradcam["render"]["alpha"] == 0.5
    assert gradcam["targets"] == {"top_k": 2}
    assert gradcam["options"]["fusion"] == "mean"  # a default, not posted


@pytest.mark.parametrize(
    "body",
    [
        {"method": "smoothgrad", "options": {"samples": 4, "seed": 7}, "targets": [1]},
        {"method": "gradcampp", "targets": {"top_k": 2}, "render": {"normalize": "none"}},
        {"method": "occlusion", "options": {"window": 4, "stride": 2}},
    ],
)
def test_provenance_reproduces_the_map(api: TestClient, image: str, body: dict[str, Any]) -> None:
    first = ok(post(api, "tiny", {"images": [image], "outputs": ["array"], **body}))
    prov = first["provenance"]
    again = {
        "images": [image],
        "outputs": ["array"],
        "method": prov["method"],
        "layer": prov["layers"],
        "options": prov["options"],
        "render": prov["render"],
        "targets": prov["targets"],
    }
    second = ok(post(api, "tiny", again))
    assert second["provenance"] == prov
    for a, b in zip(first["results"], second["results"], strict=True):
        assert a["target"] == b["target"]
        np.testing.assert_array_equal(decode(a["array"]), decode(b["array"]))


# ---- monitoring ----------------------------------------------------------------------------


def test_observations_reach_the_monitor(
    api: TestClient, photo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    monitor = api.app.state.cnnvis.monitor  # type: ignore[attr-defined]
    monkeypatch.setattr(monitor, "observe", lambda obs, *a, **k: seen.append(list(obs)))
    body = {
        "images": [photo],
        "targets": {"top_k": 2},
        "outputs": ["array"],
        "render": {"size": "original"},
        "regions": {"left": [0.0, 0.0, 0.5, 1.0]},
    }
    data = ok(post(api, "wide", body))
    assert len(seen) == 1 and len(seen[0]) == 2
    h, w = WIDE
    for obs, result in zip(seen[0], data["results"], strict=True):
        assert (obs.model, obs.method) == ("wide", "gradcam")
        assert obs.version == data["model"]["version"]
        assert obs.target == result["target"]["index"]
        assert obs.label == result["target"]["label"]
        assert obs.probability == pytest.approx(result["target"]["probability"])
        assert obs.attribution.shape == WIDE  # the input window, not the original size
        assert decode(result["array"]).shape == (44, 90)
        assert obs.regions == {
            "top": (0.0, 0.0, w, 0.25 * h),
            "right": (0.5 * w, 0.0, w, h),
            "left": (0.0, 0.0, 0.5 * w, h),
        }
    # the PNG path hands its result over too, and a feature-size map keeps its resolution
    seen.clear()
    response = api.post(
        "/v1/models/wide/explain",
        json={"images": [photo], "render": {"size": "feature"}},
        headers={"accept": "image/png"},
    )
    assert response.status_code == 200
    assert len(seen) == 1 and len(seen[0]) == 1 and seen[0][0].attribution.ndim == 2
