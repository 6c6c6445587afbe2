"""Shared fixtures: tiny hand-built models, the pretrained EfficientNet-Lite0, real photos."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from schemas.card import InputSpec, ModelCard

TINY_LABELS = ["red", "green", "blue"]


def tiny_classifier(
    height: int = 8, width: int = 8, classes: int = 3, seed: int = 0, opset: int = 17
) -> bytes:
    """Conv(3->4, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->classes)."""
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
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_card(name: str = "tiny", **overrides: object) -> ModelCard:
    spec = InputSpec(height=8, width=8, resize="stretch")
    fields: dict[str, object] = {"name": name, "input": spec, "labels": TINY_LABELS}
    fields.update(overrides)
    return ModelCard.model_validate(fields)


@contextlib.contextmanager
def serving(store: Path) -> Iterator[str]:
    """A real uvicorn server over ``store`` on a free local port, in a thread: "host:port"."""
    import socket
    import threading
    import time

    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        create_app(Settings(store=store)), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_model() -> bytes:
    return tiny_classifier()


@pytest.fixture(scope="session")
def effnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, ModelCard]:
    """The pretrained EfficientNet-Lite0 exported once per test session."""
    from service.zoo import efficientnet_lite0

    return efficientnet_lite0()


@pytest.fixture(scope="session")
def effnet_store(tmp_path_factory: pytest.TempPathFactory, effnet: tuple[bytes, ModelCard]) -> Path:
    """A store holding efficientnet-lite0, shared read-only by tests."""
    from models_store.store import ModelStore

    root = tmp_path_factory.mktemp("effnet-store")
    ModelStore(root).add(*effnet)
    return root


@pytest.fixture(scope="session")
def chelsea_png() -> bytes:
    from skimage import data

    return png_bytes(data.chelsea())


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def client(store_root: Path) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(store=store_root))
    with TestClient(app) as test_client:
        yield test_client


def pytest_configure(config: pytest.Config) -> None:
    """The main process gives every process (xdist workers inherit the environment) one
    folder to record conformance rows in."""
    import os
    import tempfile

    from tests.conformance.table import ROWS_DIR

    if not hasattr(config, "workerinput"):
        os.environ[ROWS_DIR] = tempfile.mkdtemp(prefix="cnnvis-conformance-")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the conformance table (tests/conformance) when any of its cases ran."""
    from tests.conformance.table import write_if_asked

    text = write_if_asked()
    if text:
        terminalreporter.section("companion conformance")
        terminalreporter.write_line(text)
