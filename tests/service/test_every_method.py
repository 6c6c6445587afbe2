"""Every method answers JSON with every output, on a small NCHW model and its NHWC twin (layout
detected from the graph): a guard against results that render as PNG but cannot be serialised
(a numpy array left in `extras` once did) and against methods that assume NCHW."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from schemas.explain import ExplainRequest
from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier
from tests.service.test_nhwc import first_transpose

METHODS = ExplainRequest.model_fields["method"].annotation.__args__  # type: ignore[union-attr]
OPTIONS = {
    "smoothgrad": {"samples": 4},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 4, "stride": 4},
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("every-method")
    ModelStore(root).add(tiny_classifier(), tiny_card())
    ModelStore(root).add(first_transpose(8, 8), tiny_card("tiny-nhwc"))
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


@pytest.mark.parametrize("model", ["tiny", "tiny-nhwc"])
@pytest.mark.parametrize("method", METHODS)
def test_json_with_every_output(api: TestClient, method: str, model: str) -> None:
    image = base64.b64encode(
        png_bytes(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    ).decode()
    body = {
        "images": [image, image],
        "method": method,
        "targets": {"top_k": 2},
        "options": OPTIONS.get(method, {}),
        "outputs": ["heatmap", "overlay", "array", "stats"],
    }
    response = api.post(f"/v1/models/{model}/explain", json=body)
    assert response.status_code == 200, response.text[:500]
    results = response.json()["results"]
    assert len(results) == 4
    for result in results:
        assert result["heatmap"] and result["overlay"] and result["stats"]["peak"]
        assert result["array"]["shape"] == [8, 8]
        json.dumps(result.get("extras"))  # plain JSON values only
