"""Multipart requests: the query string carries the fields, with lists and nesting."""

from __future__ import annotations

import base64

import numpy as np
from fastapi.testclient import TestClient

from schemas.activations import ActivationsRequest
from schemas.explain import ExplainRequest
from service.api.body import query_fields
from tests.conftest import png_bytes
from tests.service.test_api_models import card_dict, register


def test_lists_nesting_and_json() -> None:
    fields = query_fields(
        [
            ("outputs", "stats,heatmap"),
            ("targets", "281, tabby"),
            ("render.colormap", "turbo"),
            ("render.relu", "false"),
            ("layer", "495"),  # a numeric tensor name stays a string
        ],
        ExplainRequest,
    )
    assert fields == {
        "outputs": ["stats", "heatmap"],
        "targets": [281, "tabby"],
        "render": {"colormap": "turbo", "relu": False},
        "layer": "495",
    }
    repeated = query_fields([("outputs", "stats"), ("outputs", "array")], ExplainRequest)
    assert repeated == {"outputs": ["stats", "array"]}
    assert query_fields([("targets", "top1")], ExplainRequest) == {"targets": "top1"}
    assert query_fields([("targets", "281")], ExplainRequest) == {"targets": [281]}
    assert query_fields([("targets", '{"top_k": 2}')], ExplainRequest) == {"targets": {"top_k": 2}}
    assert query_fields([("layer", "a,b")], ExplainRequest) == {"layer": ["a", "b"]}
    assert query_fields([("outputs", "stats")], ExplainRequest) == {"outputs": ["stats"]}
    assert "layers" in query_fields([("layers", "a,b")], ActivationsRequest)


def test_multipart_explain_takes_the_same_request_as_json(
    client: TestClient, tiny_model: bytes
) -> None:
    register(client, tiny_model, card_dict())
    png = png_bytes(np.random.default_rng(1).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    as_json = client.post(
        "/v1/models/tiny/explain",
        json={
            "images": [base64.b64encode(png).decode()],
            "targets": [2, "red"],
            "outputs": ["stats", "array"],
            "render": {"normalize": "none"},
        },
    )
    assert as_json.status_code == 200, as_json.text
    multipart = client.post(
        "/v1/models/tiny/explain?targets=2,red&outputs=stats,array&render.normalize=none",
        files=[("image", ("a.png", png, "image/png"))],
    )
    assert multipart.status_code == 200, multipart.text
    for a, b in zip(as_json.json()["results"], multipart.json()["results"], strict=True):
        assert a["target"] == b["target"] and a["array"] == b["array"]
        assert a["stats"]["peak"] == b["stats"]["peak"]
    bad = client.post(
        "/v1/models/tiny/explain?outputs=stats,nonsense",
        files=[("image", ("a.png", png, "image/png"))],
    )
    assert bad.status_code == 422 and "outputs" in bad.text
