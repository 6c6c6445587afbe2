"""Request ids, access logs in JSON and the Prometheus metrics after real traffic."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.logs import JsonFormatter, log_config, redact
from service.settings import Settings
from tests.service.test_api_models import card_dict, register

METRIC_NAMES = {
    "cnnvis_requests",
    "cnnvis_request_duration_seconds",
    "cnnvis_requests_in_flight",
    "cnnvis_onnxruntime_run_seconds",
    "cnnvis_companion_builds",
    "cnnvis_companion_build_seconds",
    "cnnvis_batch_size",
    "cnnvis_queue_duration_seconds",
    "cnnvis_queue_depth",
    "cnnvis_requests_shed",
}


def samples(client: TestClient, name: str) -> list[tuple[dict[str, str], float]]:
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=")
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name == name
    ]


def test_metrics_after_traffic(client: TestClient, tiny_model: bytes) -> None:
    register(client, tiny_model, card_dict())
    png_free = {"images": ["x"]}
    client.post("/v1/models/tiny/predict", json=png_free)  # 422: not an image
    client.post(
        "/v1/models/tiny/predict", params={"method": "gradcam"}, files={"other": ("a.txt", b"x")}
    )
    client.get("/v1/models/no-such-model")

    families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families >= METRIC_NAMES

    counts = samples(client, "cnnvis_requests_total")
    by_route = {
        (s["route"], s["http_method"], s["model"], s["cnnvis_method"], s["status"]): v
        for s, v in counts
    }
    assert by_route[("/v1/models", "POST", "-", "-", "201")] == 1
    assert by_route[("/v1/models/{name}/predict", "POST", "tiny", "-", "422")] == 1
    # the query string's method= labels multipart requests
    assert by_route[("/v1/models/{name}/predict", "POST", "tiny", "gradcam", "422")] == 1
    # an unknown name is not a label value (a client must not mint time series)
    assert by_route[("/v1/models/{name}", "GET", "-", "-", "404")] == 1
    assert not any("/v1/models/tiny" in s["route"] for s, _ in counts), "raw paths as labels"

    latency = samples(client, "cnnvis_request_duration_seconds_count")
    assert sum(v for _, v in latency) >= 4
    # the scrape itself is the only request in flight
    assert samples(client, "cnnvis_requests_in_flight") == [({}, 1.0)]


def test_request_id_honoured_replaced_and_echoed_on_errors(client: TestClient) -> None:
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc.DEF_1-2"}).headers["x-request-id"]
        == "abc.DEF_1-2"
    )
    for bad in ("has space", "x" * 129, "semi;colon", "ünï"):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad.encode()}).headers[
            "x-request-id"
        ]
        assert echoed != bad and len(echoed) == 32
    fresh = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(fresh) == 3
    # errors from the app and from the body limit (before routing) carry it too
    assert (
        client.get("/v1/models/nope", headers={"X-Request-ID": "r404"}).headers["x-request-id"]
        == "r404"
    )
    too_big = client.post(
        "/v1/models/tiny/predict",
        content=b"0" * (33 * 1024 * 1024),
        headers={"X-Request-ID": "r413", "content-type": "application/json"},
    )
    assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "r413"
    counts = samples(client, "cnnvis_requests_total")
    assert any(
        s["route"] == "/v1/models/{name}/predict" and s["status"] == "413" for s, _ in counts
    )


def test_unexpected_error_carries_the_request_id(
    store_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(store=store_root))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaput")

    with TestClient(app, raise_server_exceptions=False) as client:
        with caplog.at_level(logging.INFO):
            response = client.get("/boom", headers={"X-Request-ID": "r500"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "r500"
        assert response.json()["status"] == 500
        # the error is logged with the request id in context
        formatted = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
        assert any(line["request_id"] == "r500" and "exc" in line for line in formatted)
        assert samples(client, "cnnvis_requests_in_flight") == [({}, 1.0)]


def test_access_lines_are_json_with_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cnnvis.access"):
        client.get("/healthz?secret=1", headers={"X-Request-ID": "line-1"})
    (record,) = [r for r in caplog.records if r.name == "cnnvis.access"]
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {
        "ts",
        "level",
        "logger",
        "msg",
        "request_id",
        "method",
        "path",
        "status",
        "duration_ms",
    }
    assert line["request_id"] == "line-1" and line["path"] == "/healthz"
    assert line["method"] == "GET" and line["status"] == 200 and line["duration_ms"] >= 0
    assert "secret" not in json.dumps(line)  # no query strings
    assert line["ts"].endswith("+00:00")


def test_registries_are_per_app(tmp_path: Path) -> None:
    one, two = (create_app(Settings(store=tmp_path / n)) for n in "ab")
    with TestClient(one) as a, TestClient(two) as b:
        a.get("/healthz")
        a.get("/healthz")
        b.get("/healthz")
        count = [v for s, v in samples(a, "cnnvis_requests_total") if s["route"] == "/healthz"]
        assert count == [2.0]
        count = [v for s, v in samples(b, "cnnvis_requests_total") if s["route"] == "/healthz"]
        assert count == [1.0]


def test_label_values_are_bounded(tmp_path: Path) -> None:
    from service.metrics import Metrics

    metrics = Metrics(max_label_values=2)
    assert [metrics.bounded("model", v) for v in ("a", "b", "c", "a", None)] == [
        "a",
        "b",
        "other",
        "a",
        "-",
    ]


def test_log_config_and_redaction() -> None:
    import logging.config

    # the dotted names uvicorn's dictConfig will import resolve (not applied: global state)
    config = log_config("info", "json")
    resolve = logging.config.BaseConfigurator({}).resolve
    assert resolve(config["formatters"]["main"]["()"]) is JsonFormatter
    assert resolve(config["filters"]["request_id"]["()"])().filter(
        logging.makeLogRecord({"msg": "x"})
    )
    assert config["root"] == {"handlers": ["stderr"], "level": "INFO"}
    assert log_config("debug", "text")["formatters"]["main"]["()"] == "service.logs.TextFormatter"
    assert redact("Authorization: Bearer s3cr3t-tok.en, next") == (
        "Authorization: Bearer [redacted], next"
    )


def test_runtime_metrics_after_traffic(tmp_path: Path) -> None:
    """Batch sizes, queue time, onnxruntime time and queue depth per model after real work."""
    from fastapi.testclient import TestClient

    from models_store.store import ModelStore
    from service.app import create_app
    from service.settings import Settings
    from tests.conftest import png_bytes, tiny_card, tiny_classifier

    ModelStore(tmp_path).add(tiny_classifier(), tiny_card())
    image = png_bytes(np.zeros((8, 8, 3), np.uint8))
    with TestClient(create_app(Settings(store=tmp_path, max_queue=1))) as client:
        files = {"image": ("a.png", image, "image/png")}
        assert client.post("/v1/models/tiny/predict", files=files).status_code == 200
        explained = client.post(
            "/v1/models/tiny/explain", params={"method": "gradcam"}, files=files
        )
        assert explained.status_code == 200
        text = client.get("/metrics").text
    for needle in (
        'cnnvis_batch_size_count{model="tiny"}',
        'cnnvis_queue_duration_seconds_count{model="tiny"}',
        'cnnvis_onnxruntime_run_seconds_count{graph="forward",model="tiny"}',
        'cnnvis_onnxruntime_run_seconds_count{graph="derived",model="tiny"}',
        'cnnvis_queue_depth{model="tiny"} 0.0',
        'cnnvis_method="gradcam"',
    ):
        assert needle in text, needle
