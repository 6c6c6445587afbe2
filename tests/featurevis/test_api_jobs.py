"""The job endpoints on a tiny model: 202 + Location, progress, results, cancellation,
bounded queue, restarts, and 422s that name the field before any job exists."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from models_store.store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card


def tiny_with_constant() -> bytes:
    """tiny_classifier plus a Constant branch (a tensor that does not depend on the image):
    Conv(3->4) -> Add(const) -> Relu -> GAP -> Flatten -> Gemm(4->3), 16 x 16 input."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "fc.b"),
    ]
    const = numpy_helper.from_array(np.full((1, 4, 1, 1), 0.1, np.float32), "c")
    nodes = [
        helper.make_node("Constant", [], ["offset"], value=const, name="offset"),
        helper.make_node("Conv", ["input", "conv.w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Add", ["conv", "offset"], ["shifted"], name="add"),
        helper.make_node("Relu", ["shifted"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-const",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _card():
    from schemas.card import InputSpec

    return tiny_card(input=InputSpec(height=16, width=16, resize="stretch"))


def _client(root: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(store=root, **settings)))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    ModelStore(root).add(tiny_with_constant(), _card())
    return root


@pytest.fixture
def client(root: Path) -> Iterator[TestClient]:
    with _client(root) as c:
        yield c


QUICK = {"steps": 12, "size": 16, "seed": 0, "transforms": {"pad": 2, "jitter": 2, "jitter2": 1}}
CHANNEL = {"type": "channel", "layer": "relu", "channel": 1}


def _wait(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['state']}")


def test_featurevis_job_runs_to_a_png_with_monotonic_progress(client: TestClient) -> None:
    r = client.post("/v1/models/tiny/featurevis", json={"objective": CHANNEL, **QUICK, "steps": 60})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] in ("queued", "running") and job["progress"]["steps"] == 60
    steps = []
    while job["state"] in ("queued", "running"):
        job = client.get(f"/v1/jobs/{job['id']}").json()
        steps.append(job["progress"]["step"])
        if job["state"] == "running":
            assert job["progress"]["elapsed_s"] >= 0
    assert steps == sorted(steps)
    assert job["state"] == "done", job
    assert job["progress"] == {**job["progress"], "step": 60, "steps": 60, "remaining_s": 0.0}
    result = job["result"]
    assert len(result["curve"]) == 60 and result["final"] > result["initial"]
    img = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
    assert img.size == (16, 16) and img.mode == "RGB"
    png = client.get(f"/v1/jobs/{job['id']}/images/0")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["result"]["images"] == []


def test_cancel_stops_a_running_job(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny/featurevis", json={"objective": CHANNEL, **QUICK, "steps": 4000}
    )
    job_id = r.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gone = client.delete(f"/v1/jobs/{job_id}")
    assert gone.status_code == 200 and gone.json()["state"] == "cancelled"
    stopped = gone.json()["progress"]["step"]
    assert 3 <= stopped < 4000
    time.sleep(0.2)
    assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] == stopped
    # a finished job's DELETE removes it
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_a_full_queue_answers_503_with_retry_after(root: Path) -> None:
    with _client(root, max_running_jobs=1, max_queued_jobs=1) as client:
        body = {"objective": CHANNEL, **QUICK, "steps": 4000}
        first = client.post("/v1/models/tiny/featurevis", json=body).json()["id"]
        second = client.post("/v1/models/tiny/featurevis", json=body)
        assert second.status_code == 202
        third = client.post("/v1/models/tiny/featurevis", json=body)
        assert third.status_code == 503 and int(third.headers["retry-after"]) >= 1
        assert third.json()["type"].endswith("/overloaded")
        client.delete(f"/v1/jobs/{second.json()['id']}")
        client.delete(f"/v1/jobs/{first}")


def test_finished_results_survive_a_restart_and_running_ones_are_interrupted(
    root: Path,
) -> None:
    with _client(root) as client:
        done = client.post("/v1/models/tiny/featurevis", json={"objective": CHANNEL, **QUICK})
        job = _wait(client, done.json()["id"])
        assert job["state"] == "done"
    # a job that was running when the process died
    jobs_dir = root / ".jobs"
    dead = json.loads((jobs_dir / job["id"] / "job.json").read_text())
    dead.update(id="f" * 32, state="running", finished=None, images=0)
    (jobs_dir / dead["id"]).mkdir()
    (jobs_dir / dead["id"] / "job.json").write_text(json.dumps(dead))
    with _client(root) as client:
        again = client.get(f"/v1/jobs/{job['id']}").json()
        assert again["state"] == "done" and again["result"]["images"] == job["result"]["images"]
        lost = client.get(f"/v1/jobs/{'f' * 32}").json()
        assert lost["state"] == "interrupted" and "stopped" in lost["error"]
        assert client.get("/v1/models").json()["models"] == ["tiny"]  # .jobs is no model


def test_results_expire_after_the_retention(root: Path) -> None:
    with _client(root, job_retention_s=0.2) as client:
        job = _wait(
            client,
            client.post("/v1/models/tiny/featurevis", json={"objective": CHANNEL, **QUICK}).json()[
                "id"
            ],
        )
        assert job["state"] == "done"
        time.sleep(0.3)
        assert client.get("/v1/jobs").json()["jobs"] == []
        assert not (root / ".jobs" / job["id"]).exists()


def test_a_job_past_its_deadline_fails(root: Path) -> None:
    with _client(root, job_deadline_s=0.3) as client:
        r = client.post(
            "/v1/models/tiny/featurevis", json={"objective": CHANNEL, **QUICK, "steps": 4000}
        )
        job = _wait(client, r.json()["id"])
        assert job["state"] == "failed" and "deadline" in job["error"]


def test_deepdream_and_invert_jobs(client: TestClient) -> None:
    photo = png_bytes(np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8))
    image = base64.b64encode(photo).decode()
    r = client.post("/v1/models/tiny/deepdream", json={
        "images": [image], "objective": {"type": "layer", "layer": "relu"},
        "octaves": 2, "steps": 5, "seed": 0})  # fmt: skip
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done" and job["progress"]["steps"] == 10
    assert job["result"]["final"] > job["result"]["initial"]
    dream = Image.open(io.BytesIO(base64.b64decode(job["result"]["images"][0])))
    assert max(dream.size) == 16  # the model's size by default, the aspect kept
    # multipart, fields in the query string
    r = client.post(
        "/v1/models/tiny/invert?layer=relu&steps=40&size=16&seed=0&priors.tv=0.01"
        "&transforms.enabled=false",
        files={"image": ("p.png", photo, "image/png")},
    )
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done" and job["result"]["final"] > job["result"]["initial"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"objective": {"type": "channel", "layer": "nope", "channel": 0}}, "objective.layer"),
        ({"objective": {"type": "channel", "layer": "relu", "channel": 4}}, "objective.channel"),
        (
            {"objective": {"sum": [CHANNEL, {"type": "neuron", "layer": "relu", "channel": 9}]}},
            "objective.sum.1.channel",
        ),
        ({"objective": {"type": "channel", "layer": "offset", "channel": 0}}, "objective.layer"),
        ({"objective": {"type": "class", "class": 7}}, "objective.class"),
        ({"objective": {"type": "class", "class": "purple"}}, "objective.class"),
        ({"objective": {"type": "neuron", "layer": "relu", "channel": 0, "x": 99}}, "objective.x"),
        (
            {"objective": {"type": "direction", "layer": "relu", "vector": [1, 2]}},
            "objective.vector",
        ),
        ({"objective": CHANNEL, "steps": 10_000}, "steps"),
        ({"objective": CHANNEL, "steps": "many"}, "steps"),  # the schema's own check
        ({"objective": CHANNEL, "size": 4096}, "size"),
        ({"objective": CHANNEL, "batch": 99}, "batch"),
        ({"objective": {"type": "channel", "channel": 0}}, "objective.layer"),
    ],
)
def test_bad_requests_are_422s_naming_the_field(client: TestClient, body: dict, loc: str) -> None:
    r = client.post("/v1/models/tiny/featurevis", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert loc in problem["detail"] or any(
        ".".join(e["loc"]) == loc for e in problem.get("errors", [])
    ), problem
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_the_constant_branch_is_named_as_not_reaching_the_input(client: TestClient) -> None:
    r = client.post(
        "/v1/models/tiny/featurevis", json={"objective": {"type": "layer", "layer": "offset"}}
    )
    assert r.status_code == 422 and "does not depend on the image input" in r.json()["detail"]


def test_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404
