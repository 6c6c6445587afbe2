"""Channels-last (NHWC) models end to end, checked against NCHW twins.

Two hand-built NHWC classifiers, each with an NCHW twin holding the same weights:

* ``first`` (the PyTorch-to-Keras shape): NHWC image -> Transpose -> Conv -> Relu -> GAP ->
  Gemm; its twin is tests/conftest.py's tiny_classifier (the same graph without the Transpose);
* ``keras`` (what tf2onnx leaves): NHWC image -> Transpose -> Conv -> Relu -> Transpose back to
  NHWC -> Relu (an NHWC layer tensor, the default layer) -> ReduceMean over axes 1, 2 ->
  MatMul + Add; its twin does the same in NCHW (ReduceMean over 2, 3).

Every method, with every output, must answer on the NHWC model exactly what it answers on the
twin for the same image: maps, arrays, statistics with a region of interest. That is not
circular: the twin never goes through the layout code.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from models_store.errors import InvalidCard
from models_store.inspect import detect_input_layout, tensor_layouts
from models_store.store import ModelStore
from schemas.card import InputSpec, ModelCard, OutputSpec
from schemas.explain import ExplainRequest
from service.app import create_app
from service.imaging.preprocess import preprocess
from service.settings import Settings
from tests.conftest import TINY_LABELS, png_bytes, tiny_classifier

METHODS = ExplainRequest.model_fields["method"].annotation.__args__  # type: ignore[union-attr]
OPTIONS = {
    "smoothgrad": {"samples": 3},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 4, "stride": 2},
}
H, W = 8, 10  # not square: a swapped H and W would show
OUTPUTS = ["heatmap", "overlay", "array", "stats"]


def _model(nodes: list, inputs: list, outputs: list, weights: list, opset: int = 17) -> bytes:
    graph = helper.make_graph(nodes, "nhwc", inputs, outputs, initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _weights(seed: int = 0, classes: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)  # the draw order of tiny_classifier
    return [
        rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        rng.normal(size=(4,)).astype(np.float32),
        rng.normal(size=(classes, 4)).astype(np.float32),
        rng.normal(size=(classes,)).astype(np.float32),
    ]


def first_transpose(
    height: int = H, width: int = W, dims: list | None = None, dtype: int = TensorProto.FLOAT
) -> bytes:
    """tiny_classifier behind a Transpose from NHWC (``dims`` overrides the input's shape;
    a uint8 ``dtype`` reads the pixels through Cast and scales them in the graph)."""
    cw, cb, fw, fb = _weights()
    weights = [
        numpy_helper.from_array(cw, "conv.w"),
        numpy_helper.from_array(cb, "conv.b"),
        numpy_helper.from_array(fw, "fc.w"),
        numpy_helper.from_array(fb, "fc.b"),
    ]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    if dtype == TensorProto.UINT8:  # pixels 0..255 in, ImageNet normalisation inside
        mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
        std = np.array([0.229, 0.224, 0.225], np.float32) * 255
        weights += [numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std")]
        nodes = [
            helper.make_node("Cast", ["pixels"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Sub", ["as_float", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["image"]),
            *nodes,
        ]
    name = "pixels" if dtype == TensorProto.UINT8 else "image"
    shape = dims or ["N", height, width, 3]
    return _model(
        nodes,
        [helper.make_tensor_value_info(name, dtype, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        weights,
    )


def keras_style(nhwc: bool, softmax: bool = False) -> bytes:
    """The tf2onnx shape (``nhwc``) or its NCHW twin (same weights, same layer names);
    ``softmax``: the trailing Softmax every Keras classifier has."""
    cw, cb, fw, fb = _weights()
    weights = [
        numpy_helper.from_array(cw, "conv.w"),
        numpy_helper.from_array(cb, "conv.b"),
        numpy_helper.from_array(np.ascontiguousarray(fw.T), "fc.w"),
        numpy_helper.from_array(fb, "fc.b"),
    ]
    conv_in = "nchw" if nhwc else "image"
    nodes = [
        helper.make_node("Conv", [conv_in, "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
    ]
    if nhwc:
        nodes.insert(0, helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        nodes.append(helper.make_node("Transpose", ["relu"], ["relu_nhwc"], perm=[0, 2, 3, 1]))
    nodes += [
        helper.make_node("Relu", ["relu_nhwc" if nhwc else "relu"], ["act"]),
        helper.make_node(
            "ReduceMean", ["act"], ["pooled"], axes=[1, 2] if nhwc else [2, 3], keepdims=0
        ),
        helper.make_node("MatMul", ["pooled", "fc.w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    shape = ["N", H, W, 3] if nhwc else ["N", 3, H, W]
    return _model(
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info(
                "probs" if softmax else "logits", TensorProto.FLOAT, ["N", 3]
            )
        ],
        weights,
    )


def card(name: str, **fields: object) -> ModelCard:
    spec = InputSpec.model_validate({"height": H, "width": W, **fields})
    return ModelCard(name=name, input=spec, labels=TINY_LABELS)


MODELS = {
    # name: (NHWC model, its twin, the layers both requests name)
    "first": (first_transpose(), tiny_classifier(H, W), ["relu"]),
    "keras": (keras_style(True), keras_style(False), ["act"]),
}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("nhwc")
    store = ModelStore(root)
    for name, (nhwc, twin, _) in MODELS.items():
        store.add(nhwc, card(f"{name}-nhwc"))  # no layout in the card: detected
        store.add(twin, card(f"{name}-nchw"))
    store.add(first_transpose(dtype=TensorProto.UINT8), card("first-uint8"))
    softmax = card("keras-softmax").model_copy(update={"output": OutputSpec(activation="softmax")})
    store.add(keras_style(True, softmax=True), softmax)
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


def _image(seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (13, 17, 3), dtype=np.uint8)
    return base64.b64encode(png_bytes(pixels)).decode()


def _array(result: dict) -> np.ndarray:
    a = result["array"]
    return np.frombuffer(base64.b64decode(a["data"]), "<f4").reshape(a["shape"])


def _png(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), np.int16)


def _explain(api: TestClient, model: str, body: dict) -> list[dict]:
    response = api.post(f"/v1/models/{model}/explain", json=body)
    assert response.status_code == 200, (model, response.text[:500])
    return response.json()["results"]


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_the_nchw_twin(api: TestClient, kind: str, method: str) -> None:
    body = {
        "images": [_image(0), _image(1)],
        "method": method,
        "targets": {"top_k": 2},
        "layer": MODELS[kind][2],
        "options": OPTIONS.get(method, {}),
        "outputs": OUTPUTS,
        "roi": {"box": [2, 1, 9, 7]},
        "render": {"size": "original"},
    }
    ours = _explain(api, f"{kind}-nhwc", body)
    twin = _explain(api, f"{kind}-nchw", body)
    assert len(ours) == len(twin) == 4
    for a, b in zip(ours, twin, strict=True):
        assert a["target"]["index"] == b["target"]["index"]
        assert a["target"]["score"] == pytest.approx(b["target"]["score"], abs=1e-5)
        assert a["array"]["shape"] == [13, 17]
        np.testing.assert_allclose(_array(a), _array(b), atol=2e-5)
        for key in ("peak", "center_of_mass", "entropy", "roi_fraction"):
            if b["stats"][key] is None:
                assert a["stats"][key] is None
            else:
                assert a["stats"][key] == pytest.approx(b["stats"][key], abs=1e-3), key
        for out in ("heatmap", "overlay"):
            diff = np.abs(_png(a[out]) - _png(b[out]))
            assert diff.max() <= 8, (out, diff.max())  # a colormap step at most
        assert a.get("extras") is None or set(a["extras"]) == set(b.get("extras") or {})


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize(
    "method", ["saliency", "guided_backprop", "integrated_gradients", "smoothgrad"]
)
def test_raw_gradients_come_back_channels_first(api: TestClient, kind: str, method: str) -> None:
    body = {
        "images": [_image(2)],
        "method": method,
        "options": OPTIONS.get(method, {}),
        "outputs": ["array"],
        "render": {"reduce": "none"},
    }
    (ours,) = _explain(api, f"{kind}-nhwc", body)
    (twin,) = _explain(api, f"{kind}-nchw", body)
    assert ours["array"]["shape"] == [3, H, W]
    np.testing.assert_allclose(_array(ours), _array(twin), atol=2e-5)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("size", ["input", "feature"])
def test_png_answers_and_feature_size(api: TestClient, kind: str, size: str) -> None:
    for output in ("overlay", "heatmap"):
        response = api.post(
            f"/v1/models/{kind}-nhwc/explain",
            json={"images": [_image(3)], "method": "gradcam", "render": {"size": size}},
            params={"output": output},
            headers={"accept": "image/png"},
        )
        assert response.status_code == 200, response.text[:300]
        assert Image.open(io.BytesIO(response.content)).size[::-1] == (H, W)  # layer = input


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_predict_and_activations_match_the_twin(api: TestClient, kind: str) -> None:
    layer = MODELS[kind][2][0]
    files = [("image", ("a.png", base64.b64decode(_image(4)), "image/png"))]
    ours = api.post(f"/v1/models/{kind}-nhwc/predict", files=files).json()
    twin = api.post(f"/v1/models/{kind}-nchw/predict", files=files).json()
    for a, b in zip(ours["predictions"][0], twin["predictions"][0], strict=True):
        assert a["index"] == b["index"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    body = {"images": [_image(4)], "layers": [layer], "channels": "all"}
    ours = api.post(f"/v1/models/{kind}-nhwc/activations", json=body)
    twin = api.post(f"/v1/models/{kind}-nchw/activations", json=body)
    assert ours.status_code == twin.status_code == 200, ours.text[:300]
    a, b = ours.json()["results"][0], twin.json()["results"][0]
    assert a["shape"] == b["shape"] == [4, H, W]
    for key in ("mean", "max", "sparsity"):
        assert a["stats"][key] == pytest.approx(b["stats"][key], abs=1e-5)
    for x, y in zip(a["stats"]["per_channel"], b["stats"]["per_channel"], strict=True):
        assert x == pytest.approx(y, abs=1e-5)
    assert a["tiles"] == b["tiles"]
    filters = api.get(f"/v1/models/{kind}-nhwc/filters", params={"layer": "conv"})
    assert filters.status_code == 200, filters.text[:300]
    assert filters.json()["shape"] == [4, 3, 3, 3]


def test_layers_report_their_layout(api: TestClient) -> None:
    for model, layout in (("keras-nhwc", "NHWC"), ("keras-nchw", "NCHW")):
        info = api.get(f"/v1/models/{model}").json()
        assert info["card"]["input"]["layout"] == layout  # auto, shown as detected
    layers = api.get("/v1/models/keras-nhwc/layers").json()
    layouts = {layer["name"]: layer["layout"] for layer in layers["layers"]}
    assert layouts == {"nchw": "NCHW", "conv": "NCHW", "relu": "NCHW", "relu_nhwc": "NHWC",
                       "act": "NHWC"}  # fmt: skip
    assert layers["default"] == "act"


def test_uint8_input_gets_raw_pixels(api: TestClient) -> None:
    """A uint8 NHWC input with normalisation inside the graph equals the float twin that the
    card normalises: predict feeds uint8, the methods a float32 copy of the same pixels."""
    files = [("image", ("a.png", base64.b64decode(_image(5)), "image/png"))]
    ours = api.post("/v1/models/first-uint8/predict", files=files).json()
    twin = api.post("/v1/models/first-nchw/predict", files=files).json()
    for a, b in zip(ours["predictions"][0], twin["predictions"][0], strict=True):
        assert a["index"] == b["index"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
    for method in METHODS:
        body = {
            "images": [_image(5)],
            "method": method,
            "layer": "relu",
            "options": OPTIONS.get(method, {}),
            "outputs": OUTPUTS,
        }
        (result,) = _explain(api, "first-uint8", body)
        assert result["array"]["shape"] == [H, W]
        # the layer methods see the same layer; the perturbations and gradients work in the
        # model's input space, here raw pixels (baseline 0 = a black pixel, not the mean)
        if method in ("gradcam", "layercam", "ablationcam", "eigencam", "cam"):
            (reference,) = _explain(api, "first-nchw", body)
            np.testing.assert_allclose(_array(result), _array(reference), atol=1e-4, err_msg=method)


def test_uint8_card_with_a_scaling_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidCard, match="uint8"):
        ModelStore(tmp_path).add(first_transpose(dtype=TensorProto.UINT8), card("u8", scale=0.5))
    ModelStore(tmp_path).add(
        first_transpose(dtype=TensorProto.UINT8), card("u8", scale=1.0, mean=[0.0], std=[1.0])
    )


# -- detection --------------------------------------------------------------------------------


def _graph(data: bytes) -> onnx.ModelProto:
    return onnx.load_model_from_string(data)


def test_detection_from_the_shape_and_from_the_structure() -> None:
    assert detect_input_layout(_graph(first_transpose()), "image") == "NHWC"
    assert detect_input_layout(_graph(tiny_classifier(H, W)), "input") == "NCHW"
    # all dims dynamic: the Transpose in front of the Conv tells NHWC, a direct Conv NCHW
    dynamic = first_transpose(dims=["N", "h", "w", "c"])
    assert detect_input_layout(_graph(dynamic), "image") == "NHWC"
    twin = onnx.load_model_from_string(tiny_classifier(H, W))
    for d in twin.graph.input[0].type.tensor_type.shape.dim[1:]:
        d.dim_param = "x"
    assert detect_input_layout(twin, "input") == "NCHW"
    layouts = tensor_layouts(_graph(keras_style(True)), "image", "NHWC")
    assert layouts["relu"] == "NCHW" and layouts["act"] == "NHWC"


def test_card_without_layout_is_detected_and_an_override_is_honoured(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    assert InputSpec().layout == "auto"
    with pytest.raises(InvalidCard, match="layout NCHW"):
        store.add(first_transpose(), card("forced", layout="NCHW"))  # the shape says NHWC
    store.add(first_transpose(), card("explicit", layout="NHWC"))

    # (N, 3, 8, 3): the shape is ambiguous; the structure says NHWC (H=3, W=8); the card can
    # say NCHW instead (H=8, W=3), and each is fed as it says
    ambiguous = first_transpose(dims=["N", 3, 8, 3])
    auto = store.add(ambiguous, ModelCard(name="auto", input=InputSpec(height=3, width=8)))
    forced = store.add(
        ambiguous, ModelCard(name="nchw", input=InputSpec(height=8, width=3, layout="NCHW"))
    )
    photo = Image.fromarray(np.random.default_rng(7).integers(0, 255, (9, 11, 3), np.uint8))
    session = ort.InferenceSession(ambiguous, providers=["CPUExecutionProvider"])
    with TestClient(create_app(Settings(store=tmp_path))) as client:
        for record, layout in ((auto, "NHWC"), (forced, "NCHW")):
            spec = record.card.input.model_copy(update={"layout": layout})
            (expected,) = session.run(None, {"image": preprocess([photo], spec)})
            buffer = io.BytesIO()
            photo.save(buffer, format="PNG")
            files = [("image", ("p.png", buffer.getvalue(), "image/png"))]
            got = client.post(f"/v1/models/{record.name}/predict", files=files).json()
            best = got["predictions"][0][0]
            assert best["index"] == int(expected[0].argmax())
            assert best["score"] == pytest.approx(float(expected[0].max()), abs=1e-5)
            explained = client.post(
                f"/v1/models/{record.name}/explain",
                files=files,
                params={"method": "occlusion", "options": '{"window": 2, "stride": 1}'},
            )
            assert explained.status_code == 200, explained.text[:300]


def test_cam_through_a_trailing_softmax(api: TestClient) -> None:
    """CAM reads the classifier weights past the Softmax of a Keras head: the map of the
    logit, as on the same model without it."""
    body = {"images": [_image(6)], "method": "cam", "targets": [1], "outputs": ["array"]}
    (ours,) = _explain(api, "keras-softmax", body)
    (plain,) = _explain(api, "keras-nhwc", body)
    np.testing.assert_allclose(_array(ours), _array(plain), atol=1e-6)


def test_v2_fp32_tensor_in_the_model_layout(api: TestClient) -> None:
    """The Open Inference Protocol's FP32 input is the preprocessed tensor in the model's own
    layout: [N, H, W, C] for the NHWC model, [N, C, H, W] for its twin, the same scores."""
    photo = Image.open(io.BytesIO(base64.b64decode(_image(8))))
    scores = {}
    for model, layout in (("first-nhwc", "NHWC"), ("first-nchw", "NCHW")):
        x = preprocess([photo], InputSpec(height=H, width=W, layout=layout))  # type: ignore[arg-type]
        tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32"}
        response = api.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{**tensor, "data": x.reshape(-1).tolist()}]},
        )
        assert response.status_code == 200, response.text[:300]
        # the first output is the scores, under the graph's own output name (the metadata's)
        scores[layout] = response.json()["outputs"][0]["data"]
        wrong = [1, 3, H, W] if layout == "NHWC" else [1, H, W, 3]
        bad = api.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{**tensor, "shape": wrong, "data": x.reshape(-1).tolist()}]},
        )
        assert bad.status_code == 422, bad.text[:300]
    np.testing.assert_allclose(scores["NHWC"], scores["NCHW"], rtol=1e-5, atol=1e-6)
