"""Shared pieces of the benchmarks: models, a store, a server on loopback, timing helpers."""

from __future__ import annotations

import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export_torchvision(name: str, size: int = 224, seed: int = 0) -> bytes:
    """A torchvision classifier with seeded random weights, TorchScript exporter, opset 17."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, size, size),),
            buffer,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def torchvision_card(name: str, size: int = 224) -> object:
    from schemas.card import InputSpec, ModelCard

    return ModelCard(name=name, input=InputSpec(height=size, width=size, resize="stretch"))


def make_store(root: Path, models: dict[str, tuple[bytes, object]]) -> Path:
    from models_store.store import ModelStore

    store = ModelStore(root)
    for name, (data, card) in models.items():
        if name not in store.names():
            store.add(data, card)  # type: ignore[arg-type]
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``cnnvis serve`` in a subprocess on 127.0.0.1, with extra CNNVIS_* settings."""

    def __init__(self, store: Path, **settings: object) -> None:
        self.port = free_port()
        env = {**os.environ, "CNNVIS_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
        env.update({f"CNNVIS_{k.upper()}": str(v) for k, v in settings.items()})
        # the server's log goes to a file: a pipe nobody reads would stall it when full
        self.log = Path(store).parent / f"server-{self.port}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "--store",
                    str(store),
                    "serve",
                    "--port",
                    str(self.port),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait()

    def _wait(self) -> None:
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.log.read_text()[-2000:])
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def watch_peak(self) -> PeakRss:
        """A context manager that samples this server's RSS; ``.peak`` after it exits."""
        return PeakRss(self)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class PeakRss:
    def __init__(self, server: Server, interval: float = 0.05) -> None:
        self.server, self.interval = server, interval
        self.peak = server.rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_mib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_it(fn: Callable[[], object], repeat: int, warmup: int = 2) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def cat_png(size: int | None = None) -> bytes:
    from PIL import Image
    from skimage import data

    image = Image.fromarray(data.chelsea())
    if size:
        image = image.resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
