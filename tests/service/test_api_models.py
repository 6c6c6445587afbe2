"""The registry and predict endpoints through FastAPI's TestClient."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi.testclient import TestClient

from tests.conftest import png_bytes, tiny_card, tiny_classifier


def register(client: TestClient, model: bytes, card: dict[str, Any] | str) -> Any:
    text = card if isinstance(card, str) else json.dumps(card)
    files = {"model": ("model.onnx", model, "application/octet-stream"), "card": (None, text)}
    return client.post("/v1/models", files=files)


def card_dict(**overrides: Any) -> dict[str, Any]:
    return tiny_card(**overrides).model_dump(exclude_none=True)


def assert_problem(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"]
    assert fragment in body["detail"], body["detail"]


def test_health_and_ready(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert "CPUExecutionProvider" in health["providers_available"]
    assert client.get("/readyz").status_code == 200


def test_register_list_get_delete(client: TestClient, tiny_model: bytes) -> None:
    created = register(client, tiny_model, card_dict())
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["name"] == "tiny" and info["version"] == "1" and info["ready"] is True
    assert info["providers"][0] == "CPUExecutionProvider"
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert info["default_layer"] == "relu"

    assert client.get("/v1/models").json() == {"models": ["tiny"]}
    verbose = client.get("/v1/models", params={"verbose": "true"}).json()
    assert verbose["models"][0]["sha256"] == info["sha256"]
    assert client.get("/v1/models/tiny@1").json()["version"] == "1"
    assert_problem(client.get("/v1/models/tiny@7"), 404, "no version '7'")

    layers = client.get("/v1/models/tiny/layers").json()
    assert layers["default"] == "relu"
    spatial = {layer["name"]: layer["spatial"] for layer in layers["layers"]}
    assert spatial == {"conv": True, "relu": True, "gap": False}
    assert layers["layers"][0] == {
        "name": "conv",
        "op_type": "Conv",
        "shape": ["N", 4, 8, 8],
        "spatial": True,
        "layout": "NCHW",
    }

    deleted = client.delete("/v1/models/tiny")
    assert deleted.json() == {"name": "tiny", "versions": ["1"]}
    assert_problem(client.get("/v1/models/tiny"), 404, "no model named 'tiny'")


def test_refusals_leave_store_unchanged(client: TestClient, store_root: Path) -> None:
    assert register(client, tiny_classifier(), card_dict(name="keep")).status_code == 201
    before = sorted(p.name for p in store_root.rglob("*"))
    cases = [
        (register(client, b"not onnx at all", card_dict()), 422, "not an ONNX model"),
        (
            register(client, tiny_classifier(classes=1000), card_dict()),
            422,
            "3 labels but the model outputs 1000 scores",
        ),
        (register(client, tiny_classifier(), card_dict(name="x") | {"name": "../x"}), 422, "name"),
        (register(client, tiny_classifier(), "{not json"), 422, "not valid JSON"),
        (client.post("/v1/models", files={"card": (None, "{}")}), 422, "'model' file part"),
    ]
    for response, status, fragment in cases:
        assert_problem(response, status, fragment)
    assert sorted(p.name for p in store_root.rglob("*")) == before


def test_predict_json_and_multipart(client: TestClient, tiny_model: bytes) -> None:
    register(client, tiny_model, card_dict())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    png = png_bytes(image)

    # the expected answer straight from onnxruntime on the preprocessed pixels
    x = ((image / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).astype(np.float32)
    session = ort.InferenceSession(tiny_model, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.transpose(2, 0, 1)[None]})
    best = int(np.argmax(logits[0]))

    body = {"images": [base64.b64encode(png).decode()], "top_k": 2}
    as_json = client.post("/v1/models/tiny/predict", json=body).json()
    first = as_json["predictions"][0][0]
    assert first["index"] == best and first["label"] == ["red", "green", "blue"][best]
    assert abs(first["score"] - float(logits[0, best])) < 1e-4
    probs = np.exp(logits[0] - logits[0].max())
    assert abs(first["probability"] - probs[best] / probs.sum()) < 1e-5
    assert len(as_json["predictions"][0]) == 2
    assert as_json["provider"] == "CPUExecutionProvider"

    multipart = client.post(
        "/v1/models/tiny/predict",
        params={"top_k": 2},
        files=[("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))],
    ).json()
    assert multipart["predictions"] == [as_json["predictions"][0]] * 2


def test_predict_errors(client: TestClient, tiny_model: bytes) -> None:
    register(client, tiny_model, card_dict())
    url = "/v1/models/tiny/predict"
    assert_problem(client.post("/v1/models/nope/predict", json={"images": ["x"]}), 404, "nope")
    assert_problem(client.post(url, json={"images": []}), 422, "images")
    assert_problem(client.post(url, json={"images": ["!!!"]}), 422, "base64")
    junk = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 30).decode()
    assert_problem(client.post(url, json={"images": [junk]}), 422, "")
    assert_problem(
        client.post(url, content=b"{", headers={"content-type": "application/json"}),
        422,
        "not valid JSON",
    )
    assert_problem(client.post(url, files={"other": ("a.txt", b"x")}), 422, "'image' file part")
    too_many = {"images": ["x"] * 17}
    assert_problem(client.post(url, json=too_many), 413, "limit is 16")
    assert_problem(
        client.post(url, content=b"x", headers={"content-type": "text/plain"}), 415, "text/plain"
    )
    assert_problem(client.post(url, json={"images": ["x"], "bogus": 1}), 422, "bogus")
