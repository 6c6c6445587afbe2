"""float16/bfloat16 models: the float32 upcast, registration refusals, predict and explain."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from models_store.dtypes import check_element_types, needs_upcast, upcast
from models_store.errors import InvalidModel
from models_store.store import ModelStore
from service.app import create_app
from service.runtime.runner import ModelRunner
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card, tiny_classifier

FP16 = TensorProto.FLOAT16
BF16 = TensorProto.BFLOAT16


def lowered(elem: int = FP16, *, boundary: bool = True) -> onnx.ModelProto:
    """tiny_classifier in float16 or bfloat16. ``boundary``: the graph's input and output are
    that type too (a ``model.half()`` export); else they stay float32 with a Cast at each end
    (mixed precision). Either way a Constant and a ConstantOfShape in the low type are added
    (x * 1 + zeros), so every place a float16 tensor can hide is exercised."""
    model = onnx.load_from_string(tiny_classifier())
    np_type = helper.tensor_dtype_to_np_dtype(elem)
    for i, t in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(t).astype(np_type)
        low = (
            numpy_helper.from_array(array, t.name)
            if elem == FP16
            else helper.make_tensor(t.name, BF16, array.shape, array.astype(np.float32).ravel())
        )
        model.graph.initializer[i].CopyFrom(low)
    nodes = list(model.graph.node)
    one = helper.make_tensor("one", elem, [], [1.0])
    zero = helper.make_tensor("zero", elem, [1], [0.0])
    extra = [
        helper.make_node("Constant", [], ["c_one"], value=one, name="c_one"),
        helper.make_node("Shape", ["conv"], ["conv_shape"], name="conv_shape"),
        helper.make_node("ConstantOfShape", ["conv_shape"], ["zeros"], value=zero, name="zeros"),
        helper.make_node("Mul", ["conv", "c_one"], ["conv1"], name="times_one"),
        helper.make_node("Add", ["conv1", "zeros"], ["conv2"], name="plus_zero"),
    ]
    nodes[1].input[0] = "conv2"  # relu reads conv * 1 + 0
    nodes = nodes[:1] + extra + nodes[1:]
    if boundary:
        model.graph.input[0].type.tensor_type.elem_type = elem
        model.graph.output[0].type.tensor_type.elem_type = elem
    else:
        nodes[0].input[0] = "input_low"
        nodes.insert(0, helper.make_node("Cast", ["input"], ["input_low"], to=elem, name="in"))
        nodes[-1].output[0] = "logits_low"
        nodes.append(helper.make_node("Cast", ["logits_low"], ["logits"], to=1, name="out"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.value_info.append(helper.make_tensor_value_info("relu", elem, ["N", 4, 8, 8]))
    onnx.checker.check_model(model)
    return model


X = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)


def run32(model: onnx.ModelProto, x: np.ndarray = X) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("elem", [FP16, BF16])
@pytest.mark.parametrize("boundary", [True, False])
def test_upcast_is_a_float32_model_with_the_same_answers(elem: int, boundary: bool) -> None:
    model = lowered(elem, boundary=boundary)
    before = model.SerializeToString()
    assert needs_upcast(model)
    copy = upcast(model)
    assert model.SerializeToString() == before  # a pure function: the input is untouched
    onnx.checker.check_model(copy, full_check=True)
    assert not needs_upcast(copy)
    assert [n.name for n in copy.graph.node] == [n.name for n in model.graph.node]
    assert all(t.data_type == TensorProto.FLOAT for t in copy.graph.initializer)
    for vi in [*copy.graph.input, *copy.graph.output, *copy.graph.value_info]:
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
    # the float32 model with weights rounded to the low type is the reference
    reference = onnx.load_from_string(tiny_classifier())
    for t in reference.graph.initializer:
        low = helper.tensor_dtype_to_np_dtype(elem)
        t.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(t).astype(low).astype(np.float32), t.name)
        )
    tol = 2e-2 if boundary or elem == BF16 else 1e-2  # the low-precision casts of the mixed one
    np.testing.assert_allclose(run32(copy), run32(reference), rtol=tol, atol=tol)
    assert not needs_upcast(onnx.load_from_string(tiny_classifier()))


def test_upcast_converts_subgraphs_and_casts() -> None:
    then = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value=helper.make_tensor("v", FP16, [1], [2]))],
        "then",
        [],
        [helper.make_tensor_value_info("t", FP16, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["e"], value=helper.make_tensor("w", FP16, [1], [3]))],
        "else",
        [],
        [helper.make_tensor_value_info("e", FP16, [1])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["cond"], ["y16"], then_branch=then, else_branch=other),
            helper.make_node("Cast", ["y16"], ["y"], to=1),
            helper.make_node("Cast", ["y"], ["z16"], to=FP16),
            helper.make_node("Cast", ["z16"], ["z"], to=1),
        ],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    copy = upcast(model)
    onnx.checker.check_model(copy, full_check=True)
    assert not needs_upcast(copy)
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"cond": np.array(True)})[0].tolist() == [2.0]
    assert session.run(None, {"cond": np.array(False)})[0].tolist() == [3.0]


def quantized() -> onnx.ModelProto:
    model = onnx.load_from_string(tiny_classifier())
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.05, np.float32), "q.scale"),
            numpy_helper.from_array(np.array(0, np.int8), "q.zero"),
        ]
    )
    nodes = list(model.graph.node)
    nodes[0].input[0] = "input_dq"
    q = [
        helper.make_node("QuantizeLinear", ["input", "q.scale", "q.zero"], ["input_q"], name="q"),
        helper.make_node(
            "DequantizeLinear", ["input_q", "q.scale", "q.zero"], ["input_dq"], name="dq"
        ),
    ]
    del model.graph.node[:]
    model.graph.node.extend(q + nodes)
    onnx.checker.check_model(model)
    return model


def float8_weight() -> onnx.ModelProto:
    model = onnx.load_from_string(tiny_classifier())
    model.graph.initializer.append(
        helper.make_tensor("fp8", TensorProto.FLOAT8E4M3FN, [2], [1.0, 2.0])
    )
    return model


def int_input() -> onnx.ModelProto:
    model = onnx.load_from_string(tiny_classifier())
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    nodes = list(model.graph.node)
    nodes[0].input[0] = "input_f"
    del model.graph.node[:]
    model.graph.node.extend([helper.make_node("Cast", ["input"], ["input_f"], to=1), *nodes])
    return model


REFUSED = {
    "quantized": (quantized, "QuantizeLinear"),
    "float8": (float8_weight, "float8e4m3fn"),
    "int32 input": (int_input, "int32"),
    "bfloat16 input": (lambda: lowered(BF16), "bfloat16"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_element_types_are_refused_with_the_reason(case: str) -> None:
    make, fragment = REFUSED[case]
    with pytest.raises(InvalidModel, match=fragment):
        check_element_types(make(), "input")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("dtypes")
    store = ModelStore(root)
    store.add(tiny_classifier(), tiny_card(name="fp32"))
    store.add(lowered(FP16).SerializeToString(), tiny_card(name="fp16"))
    store.add(lowered(FP16, boundary=False).SerializeToString(), tiny_card(name="mixed"))
    store.add(lowered(BF16, boundary=False).SerializeToString(), tiny_card(name="bf16"))
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_registration_answers_422(api: TestClient, case: str) -> None:
    make, fragment = REFUSED[case]
    card = tiny_card(name="refused").model_dump_json()
    response = api.post(
        "/v1/models",
        files={
            "model": ("m.onnx", make().SerializeToString(), "application/octet-stream"),
            "card": ("card.json", card, "application/json"),
        },
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert fragment.lower() in response.json()["detail"].lower()


def b64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array)).decode()


@pytest.mark.parametrize("name", ["fp16", "mixed", "bf16"])
def test_low_precision_models_predict_and_explain(api: TestClient, name: str) -> None:
    rng = np.random.default_rng(4)
    images = [b64(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(2)]
    for route, body in [
        ("predict", {"images": images, "top_k": 3}),
        ("explain", {"images": images, "method": "gradcam", "outputs": ["array"]}),
        ("explain", {"images": images, "method": "scorecam", "outputs": ["array"]}),
        ("explain", {"images": images, "method": "integrated_gradients", "outputs": ["array"]}),
    ]:
        want = api.post(f"/v1/models/fp32/{route}", json=body)
        got = api.post(f"/v1/models/{name}/{route}", json=body)
        assert got.status_code == 200, got.text[:400]
        if route == "predict":
            w, g = want.json()["predictions"], got.json()["predictions"]
            scores = [[c["score"] for c in row] for row in g]
            np.testing.assert_allclose(scores, [[c["score"] for c in r] for r in w], atol=0.1)
            assert got.json()["provider"] == "CPUExecutionProvider"
        else:
            for w, g in zip(want.json()["results"], got.json()["results"], strict=True):
                a = np.frombuffer(base64.b64decode(w["array"]["data"]), "<f4")
                b = np.frombuffer(base64.b64decode(g["array"]["data"]), "<f4")
                assert np.corrcoef(a, b)[0, 1] > 0.98, (name, body["method"])


def test_the_runner_derives_graphs_from_the_float32_copy(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(lowered(FP16).SerializeToString())

    def open_cpu(p: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])

    runner = ModelRunner(path, tmp_path / "derived", "abc", "input", "logits", open_cpu)
    assert runner.is_upcast
    assert runner.prepare(["relu"]).exists()  # the graph an ahead-of-time build leaves
    grads = runner.gradients(X, np.eye(3, dtype=np.float32)[[0, 1]], ["relu"])
    assert grads.gradients[0].dtype == np.float32
    files = sorted(p.name for p in (tmp_path / "derived").iterdir())
    assert any(f.startswith("model-float32-") for f in files), files
    # the plain forward runs the stored float16 model, fed float16 by the runner
    scores, _ = runner.forward(X)
    assert scores.dtype == np.float32
    copy = upcast(lowered(FP16))
    np.testing.assert_allclose(scores, run32(copy), rtol=2e-2, atol=2e-2)
    # a float32 runner of the same sha keys its graphs differently
    other = tmp_path / "f.onnx"
    other.write_bytes(tiny_classifier())
    plain = ModelRunner(other, tmp_path / "derived", "abc", "input", "logits", open_cpu)
    plain.gradients(X, np.eye(3, dtype=np.float32)[[0, 1]], ["relu"])
    assert len(list((tmp_path / "derived").glob("companion-*.onnx"))) == 2


def test_cpu_sessions_open_the_float32_copy(tmp_path: Path) -> None:
    from service.runtime.sessions import open_session

    settings = Settings(store=tmp_path, providers=["CPUExecutionProvider"])
    cases = {
        "fp16": (lowered(FP16), True),  # float16 inputs: the float32 copy
        "mixed": (lowered(FP16, boundary=False), False),  # float32 boundary: as stored
        "bf16": (lowered(BF16, boundary=False), None),  # as stored if onnxruntime can
        "fp32": (onnx.load_from_string(tiny_classifier()), False),
    }
    for name, (model, upcast_expected) in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model.SerializeToString())
        session = open_session(path, settings)
        if upcast_expected is not None:
            assert session.upcast is upcast_expected, name
        assert [i.type for i in session.inner.get_inputs()] == ["tensor(float)"], name
        (scores,) = session.run(None, {"input": X})
        assert scores.dtype == np.float32 and scores.shape == (2, 3), name
