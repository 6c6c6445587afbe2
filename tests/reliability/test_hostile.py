"""Hostile images and hostile models over HTTP: each refused with a reason, the server healthy
and the store unchanged afterwards."""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier

URL = "/v1/models/tiny/predict"


@pytest.fixture
def api(tmp_path: Path) -> Any:
    from models_store.store import ModelStore

    ModelStore(tmp_path).add(tiny_classifier(), tiny_card())
    with TestClient(
        create_app(
            Settings(
                store=tmp_path, max_image_bytes=4 * 1024 * 1024, max_body_bytes=8 * 1024 * 1024
            )
        )
    ) as client:
        yield client


def encode(image: Image.Image, fmt: str, **kw: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)  # a sliver of the claimed 30 GB of pixels
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
JPEG = encode(RGB, "JPEG")
PNG = encode(RGB, "PNG")
GIF = encode(
    RGB.convert("P"), "GIF", save_all=True, append_images=[Image.new("P", (32, 32), 3)], duration=10
)

REFUSED = {
    "zero bytes": (b"", 422),
    "truncated png": (PNG[: len(PNG) // 2], 422),
    "truncated jpeg": (JPEG[: len(JPEG) // 2], 422),
    "png bomb header 100000x100000": (png_claiming(100_000, 100_000), 413),
    "svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', 415),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415),
    "noise that is no image": (np.random.default_rng(1).bytes(5000), 422),
    "20 MB of noise": (np.random.default_rng(2).bytes(20 * 1024 * 1024), 413),
}
ACCEPTED = {
    "16-bit grey": encode(
        Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)), "PNG"
    ),
    "palette": encode(RGB.convert("P"), "PNG"),
    "cmyk jpeg": encode(RGB.convert("CMYK"), "JPEG"),
    "grey with alpha": encode(RGB.convert("LA"), "PNG"),
    "animated gif": GIF,
    "1x1": png_bytes(np.zeros((1, 1, 3), np.uint8)),
    "tiff": encode(RGB, "TIFF"),
    "webp": encode(RGB, "WEBP"),
    "bmp": encode(RGB, "BMP"),
}


def healthy(api: TestClient) -> None:
    assert api.get("/healthz").status_code == 200
    ok = api.post(URL, files={"image": ("ok.png", PNG, "image/png")})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("name", list(REFUSED))
def test_hostile_image_refused(api: TestClient, name: str) -> None:
    data, status = REFUSED[name]
    response = api.post(URL, files={"image": ("x", data, "application/octet-stream")})
    assert response.status_code == status, (name, response.status_code, response.text[:300])
    problem = response.json()
    assert problem["status"] == status and problem["detail"]
    healthy(api)


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_awkward_but_valid_images_work(api: TestClient, name: str) -> None:
    response = api.post(URL, files={"image": ("x", ACCEPTED[name], "application/octet-stream")})
    assert response.status_code == 200, (name, response.text[:300])


def test_json_body_hostility(api: TestClient) -> None:
    b64 = base64.b64encode(PNG).decode()
    cases = [
        ({"images": ["%%%not base64%%%"]}, 422, "base64"),
        ({"images": [f"data:text/html;base64,{b64}"]}, 415, "text/html"),
        ({"images": [b64] * 64}, 413, "limit is 16"),
        ({"images": [b64], "top_k": -1}, 422, "top_k"),
    ]
    for body, status, fragment in cases:
        response = api.post(URL, json=body)
        assert response.status_code == status, (body.keys(), response.text[:300])
        assert fragment in response.text
    no_image = api.post(URL, files={"other": ("a.txt", b"hello", "text/plain")})
    assert no_image.status_code == 422 and "'image' file part" in no_image.json()["detail"]
    healthy(api)


def model_with(mutate: Any) -> bytes:
    model = onnx.load_from_string(tiny_classifier())
    mutate(model)
    return model.SerializeToString()


def external(location: str) -> Any:
    def mutate(model: onnx.ModelProto) -> None:
        weight = model.graph.initializer[0]
        weight.ClearField("raw_data")
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location

    return mutate


def huge_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**40


def huge_initializer(model: onnx.ModelProto) -> None:
    model.graph.initializer[0].dims[:] = [2**20, 2**20, 1, 1]


def custom_op(model: onnx.ModelProto) -> None:
    model.graph.node[1].domain = "com.evil"
    model.opset_import.append(helper.make_opsetid("com.evil", 1))


def no_inputs(model: onnx.ModelProto) -> None:
    del model.graph.input[:]


def two_inputs(model: onnx.ModelProto) -> None:
    model.graph.input.append(
        helper.make_tensor_value_info("second", TensorProto.FLOAT, ["N", 3, 8, 8])
    )


HOSTILE_MODELS = {
    "random bytes": (np.random.default_rng(3).bytes(4096), {}, "not an ONNX model"),
    "truncated onnx": (tiny_classifier()[:300], {}, "ONNX"),
    "external data ../../etc/passwd": (
        model_with(external("../../etc/passwd")),
        {},
        "external data",
    ),
    "external data absolute path": (model_with(external("/etc/passwd")), {}, "external data"),
    "2^40 input dimension": (model_with(huge_input), {}, "1099511627776"),
    "2^40-element initializer": (model_with(huge_initializer), {}, "claims"),
    "custom-domain op": (model_with(custom_op), {}, "com.evil"),
    "no inputs": (model_with(no_inputs), {}, "onnx.checker"),
    "two image inputs": (model_with(two_inputs), {}, "2 inputs"),
    "card lies about the input size": (
        tiny_classifier(),
        {"input": {"height": 32, "width": 32}},
        "H=32",
    ),
    "card with 1000 labels": (
        tiny_classifier(),
        {"labels": [str(i) for i in range(1000)]},
        "1000 labels",
    ),
    "name with a path separator": (tiny_classifier(), {"name": "../x"}, "name"),
    "name with a slash": (tiny_classifier(), {"name": "a/b"}, "name"),
    "unicode look-alike name": (tiny_classifier(), {"name": "tіny"}, "name"),  # Cyrillic і
}


def register(api: TestClient, data: bytes, card: dict[str, Any]) -> Any:
    text = json.dumps(card)
    return api.post("/v1/models", files={"model": ("m.onnx", data), "card": (None, text)})


@pytest.mark.parametrize("name", list(HOSTILE_MODELS))
def test_hostile_model_refused_store_unchanged(api: TestClient, tmp_path: Path, name: str) -> None:
    data, overrides, fragment = HOSTILE_MODELS[name]
    card = tiny_card(name="victim").model_dump(exclude_none=True)
    card.update(overrides)
    before = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "derived" not in p.parts
    )
    response = register(api, data, card)
    assert response.status_code == 422, (name, response.status_code, response.text[:300])
    assert fragment in response.json()["detail"], response.json()["detail"]
    after = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "derived" not in p.parts
    )
    assert after == before
    healthy(api)


def test_ten_clients_register_one_name_concurrently(api: TestClient) -> None:
    card = tiny_card(name="race").model_dump(exclude_none=True)
    codes: list[int] = []

    def post() -> None:
        codes.append(register(api, tiny_classifier(), card).status_code)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [201] * 10
    versions = api.get("/v1/models/race").json()["versions"]
    assert versions == [str(i) for i in range(1, 11)]
