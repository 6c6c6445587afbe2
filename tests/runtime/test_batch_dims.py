"""Fixed batch dimensions: every run stays within what the model's input declares.

A model exported without dynamic axes declares batch 1 (or N); multi-image requests, top-k
rows, perturbation batches and the dynamic batcher must split and pad their runs to fit it,
and answer exactly what the dynamic-batch twin of the same model answers.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from models_store.store import ModelStore
from service.app import create_app
from service.runtime.batcher import BatchedSession, Batcher
from service.runtime.graphio import declared, model_batch_limit, run_padded
from service.runtime.runner import ModelRunner
from service.settings import Settings
from tests.conftest import png_bytes, tiny_card


def tiny_batched(batch: int | None, classes: int = 3, seed: int = 0) -> bytes:
    """Conv -> Relu -> GAP -> Reshape/Flatten -> Gemm with the batch dimension ``batch``
    (None: dynamic). A fixed batch also bakes it into a Reshape, as torch.onnx.export's
    tracing does, so a run of another size fails inside the graph, not only at its input."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "conv.w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "conv.b"),
        numpy_helper.from_array(rng.normal(size=(classes, 4)).astype(np.float32), "fc.w"),
        numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv.w", "conv.b"], ["conv"], pads=[1, 1, 1, 1], name="conv"
        ),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
    ]
    if batch is None:
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    else:
        weights.append(numpy_helper.from_array(np.array([batch, 4], np.int64), "flat.shape"))
        nodes.append(helper.make_node("Reshape", ["gap", "flat.shape"], ["flat"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    dim: int | str = "N" if batch is None else batch
    graph = helper.make_graph(
        nodes,
        "tiny_batched",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [dim, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, classes])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


# ---- reading and fitting ------------------------------------------------------------------------


def test_batch_limit_is_read_from_the_first_dimension() -> None:
    assert model_batch_limit(onnx.load_from_string(tiny_batched(None)), "input") is None
    assert model_batch_limit(onnx.load_from_string(tiny_batched(1)), "input") == 1
    assert model_batch_limit(onnx.load_from_string(tiny_batched(2)), "input") == 2
    unknown = onnx.load_from_string(tiny_batched(None))
    unknown.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    assert model_batch_limit(unknown, "input") is None
    for batch in (None, 1, 2):
        session = ort.InferenceSession(tiny_batched(batch), providers=["CPUExecutionProvider"])
        assert declared(session).batch == batch


def test_run_padded_chunks_pads_and_drops() -> None:
    shapes: list[int] = []

    def run(outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        shapes.append(feeds["x"].shape[0])
        return [feeds["x"] * 2, feeds["x"].sum(axis=1)]

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    doubled, sums = run_padded(run, None, {"x": x}, 2)
    assert shapes == [2, 2, 2]  # the last chunk of one row was padded to two
    np.testing.assert_array_equal(doubled, x * 2)
    np.testing.assert_array_equal(sums, x.sum(axis=1))
    shapes.clear()
    run_padded(run, None, {"x": x}, None)
    assert shapes == [5]


class Recording:
    """A real session that records every run's batch size and holds the graph a moment."""

    def __init__(self, model: bytes, delay: float = 0.02) -> None:
        self.inner = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.calls: list[int] = []
        self.delay = delay
        self._lock = threading.Lock()

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.calls.append(next(iter(feeds.values())).shape[0])
        time.sleep(self.delay)
        return self.inner.run(outputs, feeds)  # type: ignore[no-any-return]

    def get_inputs(self) -> Any:
        return self.inner.get_inputs()


@pytest.mark.parametrize("batch", [1, 2])
def test_the_batcher_never_merges_beyond_a_fixed_batch(batch: int) -> None:
    session = Recording(tiny_batched(batch))
    reference = ort.InferenceSession(tiny_batched(None), providers=["CPUExecutionProvider"])
    batched = BatchedSession(session, Batcher(max_batch_size=8, max_delay_s=0.01))
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1 + i % 3, 3, 8, 8)).astype(np.float32) for i in range(12)]
    results: list[Any] = [None] * len(inputs)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = batched.run(None, {"input": inputs[i]})[0]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[0]
    assert set(session.calls) == {batch}, session.calls  # every run exactly the fixed size
    for x, got in zip(inputs, results, strict=True):
        (want,) = reference.run(None, {"input": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if batch == 2:  # single rows of different requests were merged into pairs
        assert len(session.calls) < sum(x.shape[0] for x in inputs)


@pytest.mark.parametrize("batch", [1, 2])
def test_the_runner_fits_every_graph(tmp_path: Path, batch: int) -> None:
    """forward with extras, companion, head and masked graphs, with a plain session."""

    def open_cpu(path: Path) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    runners = {}
    for b in (None, batch):
        path = tmp_path / f"m{b}.onnx"
        path.write_bytes(tiny_batched(b))
        runners[b] = ModelRunner(path, tmp_path / f"d{b}", f"sha{b}", "input", "logits", open_cpu)
    assert runners[batch].batch_limit == batch and runners[None].batch_limit is None
    x = np.random.default_rng(2).normal(size=(5, 3, 8, 8)).astype(np.float32)
    seed = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    out = {}
    for b, r in runners.items():
        scores, (act,) = r.forward(x, extra=["relu"], batch_size=4)
        grads = r.gradients(x, seed, ["relu"], input_gradient=True, batch_size=3)
        head = r.forward_from("relu", act * 0.5) if r.can_split("relu") else None
        mask = np.ones((5, 4, 1, 1), np.float32)
        mask[:, 1] = 0
        masked = r.forward_masked(x, "relu", mask, batch_size=2)
        out[b] = (scores, act, grads.gradients[0], grads.input_gradient, head, masked)
    for want, got in zip(out[None], out[batch], strict=True):
        if want is None:
            assert got is None
            continue
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ---- through the service -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("batch-dims")
    store = ModelStore(root)
    store.add(tiny_batched(None), tiny_card(name="dynamic"))
    store.add(tiny_batched(1), tiny_card(name="fixed1"))
    store.add(tiny_batched(2), tiny_card(name="fixed2"))
    with TestClient(create_app(Settings(store=root, max_batch_size=8))) as client:
        yield client


def images(n: int) -> list[str]:
    rng = np.random.default_rng(3)
    return [
        base64.b64encode(png_bytes(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))).decode()
        for _ in range(n)
    ]


def decode(array: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(array["data"]), "<f4").reshape(array["shape"])


@pytest.mark.parametrize("model", ["fixed1", "fixed2"])
def test_predict_multi_image_top_k(api: TestClient, model: str) -> None:
    body = {"images": images(3), "top_k": 3}
    want = api.post("/v1/models/dynamic/predict", json=body)
    got = api.post(f"/v1/models/{model}/predict", json=body)
    assert want.status_code == 200 and got.status_code == 200, got.text[:300]
    for w_rows, g_rows in zip(want.json()["predictions"], got.json()["predictions"], strict=True):
        assert [c["index"] for c in g_rows] == [c["index"] for c in w_rows]
        for w, g in zip(w_rows, g_rows, strict=True):
            assert abs(w["score"] - g["score"]) < 1e-4


METHODS = {
    "gradcam": {},
    "gradcampp": {},
    "scorecam": {"batch_size": 3},
    "ablationcam": {"batch_size": 3},
    "occlusion": {"window": 4, "stride": 2, "batch_size": 3},
    "guided_backprop": {},
    "integrated_gradients": {"steps": 5},
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("model", ["fixed1", "fixed2"])
def test_explain_equals_the_dynamic_twin(api: TestClient, model: str, method: str) -> None:
    body = {
        "images": images(3),
        "method": method,
        "targets": {"top_k": 2},
        "options": METHODS[method],
        "outputs": ["array"],
    }
    want = api.post("/v1/models/dynamic/explain", json=body)
    got = api.post(f"/v1/models/{model}/explain", json=body)
    assert want.status_code == 200, want.text[:300]
    assert got.status_code == 200, got.text[:300]
    w_results, g_results = want.json()["results"], got.json()["results"]
    assert len(g_results) == len(w_results) == 6
    for w, g in zip(w_results, g_results, strict=True):
        np.testing.assert_allclose(decode(g["array"]), decode(w["array"]), rtol=1e-4, atol=1e-5)
