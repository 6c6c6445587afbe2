"""Bearer-token auth: registration behind CNNVIS_ADMIN_TOKEN, model endpoints behind
CNNVIS_API_TOKENS, tokens never logged, and comparisons that do not leak a token's prefix."""

from __future__ import annotations

import base64
import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from service.api import deps
from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings
from tests.conftest import png_bytes
from tests.service.test_api_models import card_dict, register

ADMIN = "adm1n-T0ken.only-for-tests"
API = ["api-token-one-9f8e7d", "api-token-two-1a2b3c"]
IMAGE = base64.b64encode(png_bytes(np.zeros((8, 8, 3), np.uint8))).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(store_root: Path) -> Iterator[TestClient]:
    app = create_app(Settings(store=store_root, admin_token=ADMIN, api_tokens=API))
    with TestClient(app) as client:
        yield client


def assert_status(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if status in (401, 403):
        assert response.headers["content-type"].startswith("application/problem+json")


def test_registration_and_deletion_need_the_admin_token(
    secured: TestClient, tiny_model: bytes
) -> None:
    card = card_dict()
    files = {
        "model": ("m.onnx", tiny_model, "application/octet-stream"),
        "card": (None, json.dumps(card)),
    }
    assert_status(secured.post("/v1/models", files=files), 401)
    assert_status(secured.post("/v1/models", files=files, headers=bearer("wrong")), 403)
    assert_status(secured.post("/v1/models", files=files, headers=bearer(ADMIN + "x")), 403)
    # an API token is not an admin token; a non-bearer scheme is no token at all
    assert_status(secured.post("/v1/models", files=files, headers=bearer(API[0])), 403)
    basic = {"Authorization": "Basic " + base64.b64encode(f"u:{ADMIN}".encode()).decode()}
    assert_status(secured.post("/v1/models", files=files, headers=basic), 401)
    assert secured.get("/v1/models").json() == {"models": []}  # nothing registered

    assert_status(secured.post("/v1/models", files=files, headers=bearer(ADMIN)), 201)
    assert_status(secured.delete("/v1/models/tiny"), 401)
    assert_status(secured.delete("/v1/models/tiny", headers=bearer("nope")), 403)
    assert secured.get("/v1/models").json() == {"models": ["tiny"]}
    assert_status(secured.delete("/v1/models/tiny", headers=bearer(ADMIN)), 200)
    assert secured.get("/v1/models").json() == {"models": []}


def test_model_endpoints_need_an_api_token(secured: TestClient, tiny_model: bytes) -> None:
    files = {
        "model": ("m.onnx", tiny_model, "application/octet-stream"),
        "card": (None, json.dumps(card_dict())),
    }
    assert_status(secured.post("/v1/models", files=files, headers=bearer(ADMIN)), 201)
    body = {"images": [IMAGE]}
    protected = [
        ("POST", "/v1/models/tiny/predict", body),
        ("POST", "/v1/models/tiny/explain", {**body, "method": "gradcam"}),
        ("POST", "/v1/models/tiny/activations", body),
        ("GET", "/v1/models/tiny/filters", None),
    ]
    for method, url, payload in protected:
        assert_status(secured.request(method, url, json=payload), 401)
        assert_status(secured.request(method, url, json=payload, headers=bearer("x")), 403)
        assert_status(secured.request(method, url, json=payload, headers=bearer(API[1][:-1])), 403)
    # every configured token works
    for token in API:
        answer = secured.post("/v1/models/tiny/predict", json=body, headers=bearer(token))
        assert_status(answer, 200)
    # health, readiness, metrics and the read-only registry stay open
    for url in ("/healthz", "/readyz", "/metrics", "/v1/models", "/v1/models/tiny"):
        assert secured.get(url).status_code == 200, url


def test_without_tokens_everything_is_open(client: TestClient, tiny_model: bytes) -> None:
    assert register(client, tiny_model, card_dict()).status_code == 201
    answer = client.post("/v1/models/tiny/predict", json={"images": [IMAGE]})
    assert_status(answer, 200)
    assert client.delete("/v1/models/tiny").status_code == 200


def test_tokens_never_reach_the_logs(
    secured: TestClient,
    tiny_model: bytes,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = {
        "model": ("m.onnx", tiny_model, "application/octet-stream"),
        "card": (None, json.dumps(card_dict())),
    }
    wrong = "wrong-token-" + "z" * 20
    with caplog.at_level(logging.DEBUG):
        secured.post("/v1/models", files=files, headers=bearer(wrong))
        secured.post("/v1/models", files=files, headers=bearer(ADMIN))
        secured.post("/v1/models/tiny/predict", json={"images": [IMAGE]}, headers=bearer(API[0]))
        secured.post("/v1/models/tiny/predict", json={"images": ["!!"]}, headers=bearer(API[1]))
        secured.delete("/v1/models/tiny", headers=bearer(ADMIN))
        logging.getLogger("cnnvis.test").warning("client sent Authorization: Bearer %s", wrong)
    assert len(caplog.records) >= 5  # the access lines at least
    rendered = [JsonFormatter().format(r) for r in caplog.records]
    captured = capsys.readouterr()
    for secret in (ADMIN, *API):
        assert secret not in caplog.text
        assert not any(secret in repr(vars(r)) for r in caplog.records)
        assert secret not in captured.out + captured.err
    # even a careless log call of a header value comes out redacted
    assert not any(wrong in line for line in rendered)
    assert any("Bearer [redacted]" in line for line in rendered)


# ---- constant-time comparison ------------------------------------------------------------
#
# A wrong token that shares a long prefix with the real one must take as long to refuse as one
# that differs at its first byte. That is a property of the comparison, so the test pins the
# comparison: every configured token goes through hmac.compare_digest, whole, even after a
# match. The timing itself is measured in bench/auth_timing.py (wall-clock ratios do not
# belong in a suite that runs on busy machines).


def test_every_token_is_compared_whole_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    def request(token: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", b"Bearer " + token)]})

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    deps._check(request(b"one"), ["one", "two", "three"], "the test")
    assert calls == [(b"one", b"one"), (b"one", b"two"), (b"one", b"three")]
    calls.clear()
    with pytest.raises(deps.Forbidden):
        deps._check(request(b"on"), ["one", "two"], "the test")
    assert calls == [(b"on", b"one"), (b"on", b"two")]
