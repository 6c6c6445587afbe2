"""SIGTERM drain: `cnnvis serve` stops accepting, finishes the request in flight, exits 0.

A real server process on 127.0.0.1 and a free port. The request is slow because the model is
(a stack of 3x3 convolutions on 256x256 inputs, 16 images, one onnxruntime thread), not because
of any test-only delay in the service.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models_store.store import ModelStore
from schemas.card import InputSpec
from tests.conftest import png_bytes, tiny_card

SIZE = 256
GRACE_S = 20
ROOT = Path(__file__).resolve().parents[2]


def slow_classifier(size: int = SIZE, channels: int = 32, depth: int = 8) -> bytes:
    """``depth`` x (Conv 3x3 -> Relu) at full resolution, then GAP -> Gemm to 3 classes."""
    rng = np.random.default_rng(0)
    weights, nodes, previous, fan_in = [], [], "input", 3
    for i in range(depth):
        w = rng.normal(size=(channels, fan_in, 3, 3)) / np.sqrt(fan_in * 9)
        weights.append(numpy_helper.from_array(w.astype(np.float32), f"conv{i}.w"))
        nodes.append(
            helper.make_node(
                "Conv", [previous, f"conv{i}.w"], [f"conv{i}"], pads=[1, 1, 1, 1], name=f"conv{i}"
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        previous, fan_in = f"relu{i}", channels
    weights.append(
        numpy_helper.from_array(rng.normal(size=(3, channels)).astype(np.float32), "fc.w")
    )
    weights.append(numpy_helper.from_array(np.zeros(3, np.float32), "fc.b"))
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition, timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"server exited ({proc.returncode}) while waiting for {what}:\n"
                + log.read_text()[-3000:]
            )
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n" + log.read_text()[-3000:])


def in_flight(base: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith("cnnvis_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_sigterm_drains_the_request_in_flight_and_exits_0(tmp_path: Path) -> None:
    store = tmp_path / "store"
    card = tiny_card(name="slow", input=InputSpec(height=SIZE, width=SIZE, resize="stretch"))
    ModelStore(store).add(slow_classifier(), card)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "CNNVIS_PROVIDERS": '["CPUExecutionProvider"]',
        "CNNVIS_INTRA_OP_THREADS": "1",
        "CNNVIS_SHUTDOWN_GRACE_S": str(GRACE_S),
        "CNNVIS_LOG_FORMAT": "json",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service.cli",
                "--store",
                str(store),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200,
            60,
            "readiness",
            proc,
            log,
        )
        images = [
            base64.b64encode(png_bytes(np.full((SIZE, SIZE, 3), i * 9, np.uint8))).decode()
            for i in range(16)
        ]
        outcome: dict[str, object] = {}

        def predict() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{base}/v1/models/slow/predict",
                    json={"images": images},
                    headers={"X-Request-ID": "drain-me"},
                    timeout=GRACE_S + 30,
                )
            except Exception as exc:  # reported below
                outcome["error"] = exc
            outcome["done"] = time.monotonic()

        worker = threading.Thread(target=predict)
        worker.start()
        # the scrape counts itself: 2 means the predict is being served
        wait_until(lambda: in_flight(base) >= 2, 30, "the predict to be in flight", proc, log)
        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(f"{base}/healthz", timeout=2)

        worker.join(GRACE_S + 30)
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert isinstance(response, httpx.Response)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 16
        assert response.headers["x-request-id"] == "drain-me"
        assert outcome["done"] > signalled  # it really was drained, not finished before

        assert proc.wait(timeout=GRACE_S) == 0
        assert time.monotonic() - signalled < GRACE_S
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x["logger"] == "cnnvis.access" and x["request_id"] == "drain-me"]
    assert [(x["path"], x["status"]) for x in access] == [("/v1/models/slow/predict", 200)]
    assert any(x["logger"].startswith("uvicorn") for x in lines)  # uvicorn's lines are JSON too
