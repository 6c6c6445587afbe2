"""Baselines and drift through HTTP, on the tiny model (tests/conftest.py)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import models_store.files
from service.app import create_app
from service.monitoring.baselines import Baseline, BaselineStore
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier

ADMIN = "s3cret-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
URL = "/v1/models/tiny"


def register(client: TestClient, card: dict[str, Any], model: bytes | None = None) -> Any:
    files = {
        "model": ("model.onnx", model or tiny_classifier(), "application/octet-stream"),
        "card": (None, json.dumps(card)),
    }
    return client.post("/v1/models", files=files, headers=AUTH)


def card(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"regions": {"top": [0.0, 0.0, 1.0, 0.25]}}
    fields.update(overrides)
    return tiny_card(**fields).model_dump(mode="json", exclude_none=True)


def images(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        base64.b64encode(png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))).decode()
        for _ in range(n)
    ]


def assert_problem(response: Any, status: int, fragment: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and fragment in body["detail"], body
    return body  # type: ignore[no-any-return]


def explain(client: TestClient, imgs: list[str], targets: list[int], version: str = "1") -> None:
    for i in range(0, len(imgs), 4):  # max_images=4
        response = client.post(
            f"{URL}/explain",
            params={"version": version},
            json={
                "images": imgs[i : i + 4],
                "targets": [[t] for t in targets[i : i + 4]],
                "outputs": ["stats"],
            },
        )
        assert response.status_code == 200, response.text
    assert client.app.state.cnnvis.monitor.flush(10)  # type: ignore[attr-defined]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(store=tmp_path / "store", admin_token=ADMIN, max_images=4)
    with TestClient(create_app(settings)) as client:
        yield client


def by_class(drift: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {c["class"]: c for c in drift["classes"]}


def test_post_a_baseline_then_watch_the_drift(api: TestClient) -> None:
    assert register(api, card()).status_code == 201
    drift = api.get(f"{URL}/drift").json()
    assert drift["classes"] == [] and "no gradcam baseline" in drift["message"]

    # 10 images in chunks of max_images=4; targets one per image, labels or indices
    targets: list[int | str] = ["green", 2] * 5
    body = {"images": images(10), "targets": targets}
    assert api.post(f"{URL}/baselines", json=body).status_code == 401  # admin only
    posted = api.post(f"{URL}/baselines", json=body, headers=AUTH)
    assert posted.status_code == 201, posted.text
    info = posted.json()
    counts = {c["class"]: c["count"] for c in info["classes"]}
    assert sum(counts.values()) + info["skipped"] == 10 and set(counts) <= {1, 2}
    assert info["grid"] == 7 and all(c["source"] == "posted" for c in info["classes"])
    assert {c["label"] for c in info["classes"]} <= {"green", "blue"}
    listed = api.get(f"{URL}/baselines").json()
    assert listed["model"] == {"name": "tiny", "version": "1"}
    assert listed["baselines"] == [info]

    drift = by_class(api.get(f"{URL}/drift").json())
    assert drift["*"]["window"] == {"count": 0, "first": None, "last": None}
    assert drift["*"]["jsd"] is None and drift["*"]["baseline"]["count"] == sum(counts.values())

    # the same images explained again: the window matches the baseline exactly
    explain(api, images(10), [1, 2] * 5)
    report = api.get(f"{URL}/drift").json()
    drift = by_class(report)
    for k, n in counts.items():
        assert drift[k]["window"]["count"] == n and drift[k]["baseline"]["count"] == n
        assert drift[k]["jsd"] == pytest.approx(0.0, abs=1e-9)
        assert drift[k]["region_shift"]["top"]["shift"] == pytest.approx(0.0, abs=1e-9)
    assert drift["*"]["window"]["count"] == sum(counts.values())
    assert drift["*"]["window"]["first"] <= drift["*"]["window"]["last"]
    assert drift["*"]["jsd"] == pytest.approx(0.0, abs=1e-9)

    # other images: the divergence is no longer zero
    explain(api, images(8, seed=7), [1, 2] * 4)
    drift = by_class(api.get(f"{URL}/drift").json())
    assert drift["*"]["jsd"] > 1e-4 and drift["*"]["window"]["count"] > sum(counts.values())

    # an unknown class for the card / the wrong number of targets: 422 naming the field
    bad = {"images": images(2), "targets": ["zebra", 1]}
    assert_problem(api.post(f"{URL}/baselines", json=bad, headers=AUTH), 422, "targets[0]")
    bad = {"images": images(2), "targets": [1]}
    problem = assert_problem(api.post(f"{URL}/baselines", json=bad, headers=AUTH), 422, "targets")
    assert problem["errors"][0]["loc"][-1] == "targets"
    bad = {"images": ["not base64!"], "method": "gradcam"}
    assert_problem(api.post(f"{URL}/baselines", json=bad, headers=AUTH), 422, "images[0]")
    bad = {"images": images(1), "method": "nope"}
    assert_problem(api.post(f"{URL}/baselines", json=bad, headers=AUTH), 422, "method")

    # delete: then there is nothing to compare against, and a second delete is a 404
    deleted = api.delete(f"{URL}/baselines", params={"method": "gradcam"}, headers=AUTH)
    assert deleted.json() == {"model": {"name": "tiny", "version": "1"}, "methods": ["gradcam"]}
    assert "no gradcam baseline" in api.get(f"{URL}/drift").json()["message"]
    assert_problem(api.delete(f"{URL}/baselines", headers=AUTH), 404, "no baselines")


def test_unknown_models_are_404(api: TestClient) -> None:
    body = {"images": images(1)}
    assert_problem(api.post("/v1/models/nope/baselines", json=body, headers=AUTH), 404, "nope")
    assert_problem(api.get("/v1/models/nope/drift"), 404, "nope")
    assert_problem(api.get("/v1/models/nope/baselines"), 404, "nope")
    assert register(api, card()).status_code == 201
    assert_problem(api.get(f"{URL}/drift", params={"version": "9"}), 404, "no version '9'")
    assert_problem(api.get(f"{URL}/drift", params={"method": "magic"}), 422, "method")


@pytest.mark.parametrize(
    ("monitoring", "labels", "fragment"),
    [
        ({"classes": ["green", "zebra"]}, None, "monitoring.classes[1]"),
        ({"classes": [3]}, None, "monitoring.classes[0]"),
        ({"classes": [-1]}, None, "monitoring.classes.0"),
        ({"baseline_requests": -1}, None, "monitoring.baseline_requests"),
        ({"classes": ["green"]}, "none", "monitoring.classes[0]"),
        ({"classes": [5]}, "none", "monitoring.classes.0"),  # checked against the graph
        ({"sampling": {"classes": ["zebra"]}}, None, "monitoring.sampling.classes"),
    ],
)
def test_bad_monitoring_blocks_are_422_naming_the_field(
    api: TestClient, monitoring: dict[str, Any], labels: str | None, fragment: str
) -> None:
    body = card()
    if labels == "none":
        del body["labels"]
    body["monitoring"] = monitoring
    problem = assert_problem(register(api, body), 422, "")
    where = problem["detail"] + json.dumps(problem.get("errors"))
    assert fragment in where or fragment in where.replace('", "', "."), problem
    assert api.get("/v1/models").json() == {"models": []}  # nothing stored


def test_baseline_from_the_first_requests(api: TestClient) -> None:
    monitoring = {"baseline_requests": 3, "classes": ["green"]}
    assert register(api, card(monitoring=monitoring)).status_code == 201
    explain(api, images(2), [1, 1])
    drift = api.get(f"{URL}/drift").json()
    assert drift["classes"] == [] and "wait for 3 explained requests" in drift["message"]
    assert drift["pending"] == [{"class": 1, "label": "green", "count": 2, "needed": 3}]
    explain(api, images(4, seed=3), [1, 1, 1, 1])  # the first one completes the baseline
    drift = by_class(api.get(f"{URL}/drift").json())
    assert drift[1]["baseline"] == {"count": 3, "source": "requests"}
    assert drift[1]["window"]["count"] == 3
    stored = api.get(f"{URL}/baselines").json()["baselines"][0]["classes"]
    assert [(c["class"], c["source"], c["count"]) for c in stored] == [(1, "requests", 3)]


def test_a_crash_while_writing_leaves_the_previous_baseline(
    api: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert register(api, card()).status_code == 201
    first = api.post(
        f"{URL}/baselines", json={"images": images(4), "targets": [1] * 4}, headers=AUTH
    )
    assert first.status_code == 201
    path = tmp_path / "store" / "tiny" / "1" / "baselines" / "gradcam.json"
    before = path.read_bytes()

    real_fdopen = os.fdopen

    class Torn:  # writes half of what it is given, then the disk is full
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Torn:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        models_store.files.os, "fdopen", lambda fd, *a, **k: Torn(real_fdopen(fd, *a, **k))
    )
    second = {"images": images(4, seed=9), "targets": [2] * 4, "replace": True}
    assert_problem(api.post(f"{URL}/baselines", json=second, headers=AUTH), 503, "previous one")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["gradcam.json"]  # no torn temp file
    assert api.get(f"{URL}/baselines").json()["baselines"] == [first.json()]
    assert {c["class"] for c in api.get(f"{URL}/drift").json()["classes"]} == {"*", 1}


def test_another_replica_s_write_is_picked_up(api: TestClient, tmp_path: Path) -> None:
    assert register(api, card()).status_code == 201
    posted = api.post(f"{URL}/baselines", json={"images": images(4), "targets": [0] * 4},
                      headers=AUTH)  # fmt: skip
    assert posted.status_code == 201
    other = BaselineStore(tmp_path / "store")  # a second replica on the shared store
    baseline = other.get("tiny", "1", "gradcam")
    assert baseline is not None
    baseline.classes[0].count = 123
    other.save(baseline)
    counts = [c["count"] for c in api.get(f"{URL}/baselines").json()["baselines"][0]["classes"]]
    assert counts == [123]
    assert Baseline.from_json(baseline.to_json()).classes[0].count == 123


def test_gauges_with_bounded_class_labels(api: TestClient) -> None:
    assert register(api, card(monitoring={"classes": ["green"]})).status_code == 201
    body = {"images": images(12), "targets": [0, 1, 2] * 4}
    assert api.post(f"{URL}/baselines", json=body, headers=AUTH).status_code == 201
    explain(api, images(6, seed=5), [0, 1, 2] * 2)
    text = api.get("/metrics").text
    jsd = [line for line in text.splitlines() if line.startswith("cnnvis_attribution_drift_jsd{")]
    classes = sorted(line.split('class="')[1].split('"')[0] for line in jsd)
    assert classes == ["*", "green"], jsd
    assert 'model="tiny"' in jsd[0] and 'method="gradcam"' in jsd[0] and 'version="1"' in jsd[0]
    sizes = [
        line for line in text.splitlines() if line.startswith("cnnvis_attribution_window_size{")
    ]
    assert len(sizes) == 2 and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in sizes)
    assert "cnnvis_attribution_region_shift{" in text and 'region="top"' in text
    assert "cnnvis_monitoring_dropped_total" in text or "cnnvis_monitoring_dropped" in text

    # a deleted baseline takes its gauges with it
    api.delete(f"{URL}/baselines", headers=AUTH)
    assert "cnnvis_attribution_drift_jsd{" not in api.get("/metrics").text


def test_baselines_belong_to_one_version(api: TestClient) -> None:
    assert register(api, card()).status_code == 201
    body = {"images": images(4), "targets": [1] * 4}
    assert api.post(f"{URL}/baselines", json=body, headers=AUTH).status_code == 201
    assert register(api, card()).status_code == 201  # version 2
    assert api.get(f"{URL}/baselines").json() == {
        "model": {"name": "tiny", "version": "2"},
        "baselines": [],
    }
    assert "no gradcam baseline for tiny@2" in api.get(f"{URL}/drift").json()["message"]
    assert len(api.get(f"{URL}/baselines", params={"version": "1"}).json()["baselines"]) == 1
    # explanations of version 2 do not touch version 1's window
    explain(api, images(2), [1, 1], version="2")
    v1 = by_class(api.get(f"{URL}/drift", params={"version": "1"}).json())
    assert v1[1]["window"]["count"] == 0
    # deleting version 1 deletes its baselines
    assert api.delete(f"{URL}@1", headers=AUTH).status_code == 200
    assert_problem(api.get(f"{URL}/baselines", params={"version": "1"}), 404, "no version")


def test_monitoring_switched_off(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "store", monitoring=False)
    with TestClient(create_app(settings)) as client:
        assert register(client, card()).status_code == 201
        assert_problem(client.get(f"{URL}/drift"), 503, "CNNVIS_MONITORING")
        explain(client, images(1), [1])  # explaining still works; nothing is watched
        assert "cnnvis_attribution_drift_jsd{" not in client.get("/metrics").text
