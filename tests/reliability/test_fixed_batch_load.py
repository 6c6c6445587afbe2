"""Load on a fixed-batch-1 model: concurrent requests against a real server answer 200 or 503.

A model exported without ``dynamic_axes`` declares batch 1. With a small queue and many
concurrent Grad-CAM and multi-image predict requests, the dynamic batcher has company to merge;
it must never hand onnxruntime more rows than the graph declares (that was a 500: "Got invalid
dimensions for input"). Bounded: 48 requests, each retried at most 20 times after a 503;
loopback only.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from models_store.store import ModelStore
from schemas.card import InputSpec, ModelCard
from tests.conftest import png_bytes
from tests.reliability.test_crash import ROOT, free_port

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 64
REQUESTS = 48  # sent at once; a refused one is retried after a pause, at most RETRIES times
RETRIES = 20
SERVE = [sys.executable, "-m", "service.cli"]


def fixed_batch_resnet18() -> bytes:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    buffer = io.BytesIO()
    with torch.no_grad():  # no dynamic_axes: the batch dimension is exported as 1
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, SIZE, SIZE),),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    data = buffer.getvalue()
    dim = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.HasField("dim_value") and dim.dim_value == 1
    return data


def start(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "CNNVIS_LOG_LEVEL": "warning",
        "CNNVIS_MAX_QUEUE": "4",
        "CNNVIS_MAX_BATCH_SIZE": "8",
        "CNNVIS_MAX_BATCH_DELAY_MS": "5",
        "CNNVIS_WORKER_THREADS": "8",
        "CNNVIS_INTRA_OP_THREADS": "1",
        "CNNVIS_PROVIDERS": '["CPUExecutionProvider"]',
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*SERVE, "--store", str(store), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"server did not start: {log.read_text()[-2000:]}")


async def storm(url: str, pngs: list[bytes]) -> Counter[int | str]:
    statuses: Counter[int | str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int) -> None:
            files = [("image", (f"{k}.png", p, "image/png")) for k, p in enumerate(pngs)]
            if i % 2:
                route, params = "predict", {"top_k": 3}
            else:  # Grad-CAM of one image, two targets: two companion rows
                route, params = "explain", {"method": "gradcam", "targets": '{"top_k": 2}'}
                files = files[:1]
            for _ in range(RETRIES + 1):
                try:
                    r = await client.post(f"/v1/models/fixed/{route}", params=params, files=files)
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    return
                statuses[r.status_code] += 1
                if r.status_code != 503:
                    return
                await asyncio.sleep(0.05 + 0.01 * (i % 7))  # keeps the queue full

        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    return statuses


def test_fixed_batch_model_under_load_answers_only_200_and_503(tmp_path: Path) -> None:
    store = tmp_path / "store"
    card = ModelCard(name="fixed", input=InputSpec(height=SIZE, width=SIZE, resize="stretch"))
    ModelStore(store).add(fixed_batch_resnet18(), card)
    rng = np.random.default_rng(0)
    pngs = [png_bytes(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(3)]
    log = tmp_path / "server.log"
    process, url = start(store, log)
    try:
        statuses = asyncio.run(storm(url, pngs))
        print(f"fixed-batch-1 resnet18, {REQUESTS} concurrent requests: {dict(statuses)}")
        assert set(statuses) <= {200, 503}, (statuses, log.read_text()[-3000:])
        assert statuses[200] >= REQUESTS // 2, statuses
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
