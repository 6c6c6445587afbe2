"""Acceptance: a float16 torchvision resnet18 export predicts and explains on the CPU provider.

``model.half()`` then ``torch.onnx.export`` (TorchScript, opset 17) gives a graph whose input,
output and weights are float16. The service runs its float32 copy on CPU; Grad-CAM of the
float16 model must match Grad-CAM of the float32 model with the same (seeded) weights.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from schemas.card import InputSpec, ModelCard
from service.app import create_app
from service.settings import Settings

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def export_resnet18(half: bool) -> bytes:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.zeros(1, 3, 224, 224)
    if half:
        model, x = model.half(), x.half()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def card(name: str) -> ModelCard:
    return ModelCard(name=name, input=InputSpec(height=224, width=224, resize="stretch"))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, ModelStore]]:
    root = tmp_path_factory.mktemp("fp16-resnet")
    store = ModelStore(root)
    half = export_resnet18(half=True)
    graph = onnx.load_from_string(half)
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {t.data_type for t in graph.graph.initializer} == {onnx.TensorProto.FLOAT16}
    store.add(export_resnet18(half=False), card("resnet18"))
    store.add(half, card("resnet18-fp16"))
    with TestClient(create_app(Settings(store=root))) as client:
        yield client, store


def array(result: dict[str, Any]) -> np.ndarray:
    a = result["array"]
    return np.frombuffer(base64.b64decode(a["data"]), "<f4").reshape(a["shape"])


def test_float16_resnet18_predicts_and_explains_on_cpu(
    api: tuple[TestClient, ModelStore], chelsea_png: bytes
) -> None:
    client, store = api
    image = base64.b64encode(chelsea_png).decode()
    predicted = {
        name: client.post(f"/v1/models/{name}/predict", json={"images": [image], "top_k": 5})
        for name in ("resnet18", "resnet18-fp16")
    }
    for response in predicted.values():
        assert response.status_code == 200, response.text[:300]
    assert predicted["resnet18-fp16"].json()["provider"] == "CPUExecutionProvider"
    full = predicted["resnet18"].json()["predictions"][0]
    half = predicted["resnet18-fp16"].json()["predictions"][0]
    assert half[0]["index"] == full[0]["index"]
    assert abs(half[0]["score"] - full[0]["score"]) < 0.05 * max(1.0, abs(full[0]["score"]))

    body = {"images": [image], "method": "gradcam", "outputs": ["array"]}
    maps = {}
    for name in ("resnet18", "resnet18-fp16"):
        response = client.post(f"/v1/models/{name}/explain", json=body)
        assert response.status_code == 200, response.text[:300]
        maps[name] = array(response.json()["results"][0])
    pearson = float(np.corrcoef(maps["resnet18"].ravel(), maps["resnet18-fp16"].ravel())[0, 1])
    print(f"float16 vs float32 resnet18 Grad-CAM Pearson: {pearson:.6f}")
    assert pearson >= 0.99, pearson
    derived = store.get("resnet18-fp16").derived_dir
    assert list(derived.glob("model-float32-*.onnx"))  # explained through the float32 copy
    assert not list(store.get("resnet18").derived_dir.glob("model-float32-*.onnx"))
