"""Bearer-token auth: registration behind CNNVIS_ADMIN_TOKEN, model endpoints behind
CNNVIS_API_TOKENS, tokens never logged, and comparisons that do not leak a token's prefix."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
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


# ---- timing -------------------------------------------------------------------------------
#
# A wrong token that shares a long prefix with the real one must take as long to refuse as one
# that differs at its first byte; otherwise an attacker learns the token byte by byte. Timing
# through HTTP is drowned in noise (milliseconds of jitter against nanoseconds of compare), so
# the test times the comparison itself, on long tokens that make any prefix dependence large:
# - a control proves the harness has the power to see a leak: plain `==` on the same inputs
#   shows a many-fold difference between the two medians;
# - hmac.compare_digest (what deps._check uses) shows none, within a generous 1.5x;
# - deps._check end to end (header parsing, encoding, compare) shows none either; a
#   per-character early-exit loop there would show milliseconds against microseconds.
# Samples alternate between the two inputs so that drift (other processes on a shared CPU)
# hits both alike, and medians ignore the outliers such drift makes.


def median_ratio(compare: Callable[[Any], object], near: Any, far: Any, rounds: int = 60) -> float:
    near_ns, far_ns = [], []
    for _ in range(rounds):
        for sample, times in ((near, near_ns), (far, far_ns)):
            start = time.perf_counter_ns()
            compare(sample)
            times.append(time.perf_counter_ns() - start)
    return statistics.median(near_ns) / max(statistics.median(far_ns), 1)


def prefix_variants(secret: bytes) -> tuple[bytes, bytes]:
    """Same length as ``secret``: one differs only in its last byte, one in its first."""
    near = secret[:-1] + bytes([secret[-1] ^ 1])
    far = bytes([secret[0] ^ 1]) + secret[1:]
    return near, far


def test_compare_time_does_not_depend_on_the_shared_prefix() -> None:
    secret = os.urandom(256 * 1024).hex().encode()  # 512 KiB of hex, like a token's alphabet
    near, far = prefix_variants(secret)

    leaky = median_ratio(lambda token: token == secret, near, far)
    assert leaky > 5, f"the harness cannot see an early-exit compare (ratio {leaky:.2f})"

    constant = median_ratio(lambda token: hmac.compare_digest(token, secret), near, far)
    assert 1 / 1.5 < constant < 1.5, f"compare_digest ratio {constant:.2f}"


def test_check_refuses_in_time_independent_of_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = os.urandom(64 * 1024).hex()
    near, far = prefix_variants(secret.encode())

    def request(token: bytes) -> Request:
        return Request({"type": "http", "headers": [(b"authorization", b"Bearer " + token)]})

    def refuse(req: Request) -> None:
        with pytest.raises(deps.Forbidden):
            deps._check(req, [secret], "the test")

    ratio = median_ratio(refuse, request(near), request(far), rounds=40)
    assert 1 / 1.5 < ratio < 1.5, f"deps._check ratio {ratio:.2f}"

    # and every configured token is compared, with compare_digest, even after a match
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    deps._check(request(b"one"), ["one", "two", "three"], "the test")
    assert [b for _, b in calls] == [b"one", b"two", b"three"]
