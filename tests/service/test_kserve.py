"""KServe v1 and the Open Inference Protocol (v2), including the real tritonclient."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.imaging.preprocess import preprocess
from service.settings import Settings
from tests.conftest import png_bytes, serving, tiny_card, tiny_classifier

RNG = np.random.default_rng(3)
PIXELS = [RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
PNGS = [png_bytes(p) for p in PIXELS]
B64 = [base64.b64encode(p).decode() for p in PNGS]


@pytest.fixture(scope="module")
def kstore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models_store.store import ModelStore

    root = tmp_path_factory.mktemp("kserve-store")
    ModelStore(root).add(tiny_classifier(), tiny_card())
    return root


@pytest.fixture(scope="module")
def kclient(kstore: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(store=kstore))) as client:
        yield client


def reference_top1(client: TestClient) -> list[int]:
    body = {"images": B64, "top_k": 1}
    return [
        row[0]["index"]
        for row in client.post("/v1/models/tiny/predict", json=body).json()["predictions"]
    ]


def test_v1_predict_all_instance_shapes(kclient: TestClient) -> None:
    expected = reference_top1(kclient)
    for instances in (B64, [{"data": b} for b in B64], [{"b64": b} for b in B64]):
        response = kclient.post("/v1/models/tiny:predict", json={"instances": instances})
        assert response.status_code == 200, response.text
        assert [row[0]["index"] for row in response.json()["predictions"]] == expected
    inputs = kclient.post("/v1/models/tiny:predict", json={"inputs": B64}).json()
    assert [row[0]["index"] for row in inputs["predictions"]] == expected


def test_v1_explain_with_per_instance_targets(kclient: TestClient) -> None:
    body = {
        "instances": [{"data": B64[0], "target": 2}, {"data": B64[1], "target": "red"}],
        "method": "gradcam",
    }
    response = kclient.post("/v1/models/tiny:explain", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [e["target"]["index"] for e in data["explanations"]] == [2, 0]
    assert "heatmap" in data["explanations"][0] and "stats" in data["explanations"][0]
    assert len(data["predictions"]) == 2


def test_v1_errors_are_problems(kclient: TestClient) -> None:
    response = kclient.post("/v1/models/tiny:predict", json={"instances": []})
    assert response.status_code == 422 and "non-empty" in response.json()["detail"]
    assert kclient.post("/v1/models/nope:predict", json={"instances": B64}).status_code == 404
    for bad in ("3", 0, 1.5, True, 10**6):
        response = kclient.post("/v1/models/tiny:predict", json={"instances": B64, "top_k": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"].startswith("top_k must be an integer in [1, ")


def test_v2_parameters_are_validated(kclient: TestClient) -> None:
    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": B64[:1]}
    for params, field in (
        ({"top_k": "five"}, "parameters.top_k"),
        ({"top_k": 0}, "parameters.top_k"),
    ):
        response = kclient.post(
            "/v2/models/tiny/infer", json={"inputs": [image], "parameters": params}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith(field)
    classification = kclient.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [image],
            "outputs": [{"name": "logits", "parameters": {"classification": 9}}],
        },
    )
    assert classification.status_code == 422
    assert "classification must be an integer in [1, 3]" in classification.json()["error"]


def test_v2_health_metadata_ready(kclient: TestClient) -> None:
    assert kclient.get("/v2/health/live").json() == {"live": True}
    assert kclient.get("/v2/health/ready").json() == {"ready": True}
    meta = kclient.get("/v2/models/tiny").json()
    assert meta["platform"] == "onnx_onnxv1" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert meta["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "top_k_index", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "top_k_probability", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "top_k_label", "datatype": "BYTES", "shape": [-1, -1]},
    ]
    assert kclient.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    missing = kclient.get("/v2/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_v2_infer_bytes_and_fp32_agree(kclient: TestClient) -> None:
    expected = reference_top1(kclient)
    as_bytes = kclient.post(
        "/v2/models/tiny/infer",
        json={
            "id": "req-1",
            "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": B64}],
            "parameters": {"top_k": 1},
        },
    ).json()
    assert as_bytes["id"] == "req-1" and as_bytes["model_name"] == "tiny"
    outputs = {o["name"]: o for o in as_bytes["outputs"]}
    meta = kclient.get("/v2/models/tiny").json()["outputs"]
    assert [o["name"] for o in meta] == list(outputs)  # metadata and inference agree
    for declared in meta:
        sent = outputs[declared["name"]]
        assert sent["datatype"] == declared["datatype"]
        assert len(sent["shape"]) == len(declared["shape"])
        assert all(d in (-1, s) for d, s in zip(declared["shape"], sent["shape"], strict=True))
    assert outputs["top_k_index"]["data"] == expected
    from PIL import Image

    x = preprocess([Image.fromarray(p) for p in PIXELS], tiny_card().input)
    as_fp32 = kclient.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "logits"}],
        },
    ).json()
    assert [o["name"] for o in as_fp32["outputs"]] == ["logits"]
    np.testing.assert_allclose(as_fp32["outputs"][0]["data"], outputs["logits"]["data"], rtol=1e-5)
    bad = kclient.post(
        "/v2/models/tiny/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.0] * 48}
            ]
        },
    )
    assert bad.status_code == 422 and "[N, 3, 8, 8]" in bad.json()["error"]


@pytest.fixture(scope="module")
def live_server(kstore: Path) -> Iterator[str]:
    with serving(kstore) as address:
        yield address


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient_round_trip(live_server: str, kclient: TestClient, binary: bool) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(live_server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.get_model_metadata("tiny")["platform"] == "onnx_onnxv1"

    images = np.array([p for p in PNGS], dtype=np.object_)
    tensor = httpclient.InferInput("image", [len(PNGS)], "BYTES")
    tensor.set_data_from_numpy(
        images if binary else np.array(B64, dtype=np.object_), binary_data=binary
    )
    result = client.infer("tiny", [tensor], parameters={"top_k": 1}, request_id="t-1")
    assert result.get_response()["id"] == "t-1"
    assert result.as_numpy("top_k_index").reshape(-1).tolist() == reference_top1(kclient)

    explained = client.infer(
        "tiny",
        [tensor],
        parameters={"method": "gradcam"},
        outputs=[httpclient.InferRequestedOutput("heatmap", binary_data=False)],
    )
    heatmap = explained.as_numpy("heatmap")
    assert heatmap.shape == (2, 8, 8) and heatmap.min() >= 0 and heatmap.max() <= 1


def test_tritonclient_with_names_from_the_metadata(live_server: str, kclient: TestClient) -> None:
    """Everything named here is read from the metadata: input name, datatype and shape, the
    score output; the answers are checked against our own predict endpoint."""
    import tritonclient.http as httpclient
    from PIL import Image

    client = httpclient.InferenceServerClient(live_server)
    meta = client.get_model_metadata("tiny")
    (declared,) = meta["inputs"]
    scores_name = meta["outputs"][0]["name"]
    x = preprocess([Image.fromarray(p) for p in PIXELS], tiny_card().input)
    assert list(x.shape[1:]) == declared["shape"][1:]
    tensor = httpclient.InferInput(declared["name"], list(x.shape), declared["datatype"])
    tensor.set_data_from_numpy(x.astype(np.float32), binary_data=True)

    everything = client.infer("tiny", [tensor])  # no outputs named: all of them, binary
    assert everything.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0
    reference = kclient.post("/v1/models/tiny/predict", json={"images": B64, "top_k": 3}).json()
    for out in meta["outputs"]:
        assert everything.as_numpy(out["name"]) is not None, out["name"]
    scores = everything.as_numpy(scores_name)
    assert scores.shape == (2, 3)
    assert scores.argmax(axis=1).tolist() == [row[0]["index"] for row in reference["predictions"]]
    labels = everything.as_numpy("top_k_label")
    assert labels[:, 0].tolist() == [row[0]["label"].encode() for row in reference["predictions"]]

    classified = client.infer(
        "tiny",
        [tensor],
        outputs=[httpclient.InferRequestedOutput(scores_name, binary_data=False, class_count=2)],
    )
    rows = classified.as_numpy(scores_name)
    assert rows.shape == (2, 2)
    for row, expected, raw in zip(rows, reference["predictions"], scores, strict=True):
        value, index, label = (
            row[0].decode().split(":") if isinstance(row[0], bytes) else (row[0].split(":"))
        )
        assert int(index) == expected[0]["index"] and label == expected[0]["label"]
        assert float(value) == pytest.approx(float(raw.max()), abs=1e-5)


def test_protocol_explanations_reach_monitoring(
    kclient: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 :explain and v2 infer with a method feed the monitor like /explain does."""
    seen: list[list[int]] = []
    monitor = kclient.app.state.cnnvis.monitor  # type: ignore[attr-defined]
    monkeypatch.setattr(monitor, "observe", lambda obs, source="request": seen.append(
        [o.target for o in obs]))  # fmt: skip
    body = {"instances": [{"data": B64[0], "target": 2}], "method": "gradcam"}
    assert kclient.post("/v1/models/tiny:explain", json=body).status_code == 200
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": B64[:1]}
    infer = {"inputs": [tensor], "parameters": {"method": "gradcam", "target": 1}}
    assert kclient.post("/v2/models/tiny/infer", json=infer).status_code == 200
    assert seen == [[2], [1]]
