"""Probes API: compare self-agreement and 422s naming the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("probes-store")
    store = ModelStore(root)
    store.add(tiny_classifier(), tiny_card())
    store.add(tiny_classifier(seed=1), tiny_card())
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


IMG = base64.b64encode(
    png_bytes(np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8))
).decode()


def test_compare_self_is_identical(api) -> None:
    r = api.post("/v1/models/tiny@1/compare", json={"images": [IMG], "against": "tiny@1"})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["agreement"]["top1"] is True
    assert res["agreement"]["top5_overlap"] == pytest.approx(1.0)
    sim = res["similarity"]
    assert sim["pearson"] == pytest.approx(1.0, abs=1e-6)
    assert sim["spearman"] == pytest.approx(1.0, abs=1e-6)
    assert sim["iou_top"] == pytest.approx(1.0, abs=1e-6)


def test_unknown_version_is_rejected(api) -> None:
    r = api.post("/v1/models/tiny@1/compare", json={"images": [IMG], "against": "tiny@9"})
    assert 400 <= r.status_code < 500, r.text


def test_epsilon_over_limit_names_field(api) -> None:
    r = api.post("/v1/models/tiny/adversarial", json={"images": [IMG], "epsilon": 999})
    assert r.status_code == 422, r.text
    assert "epsilon" in r.text
