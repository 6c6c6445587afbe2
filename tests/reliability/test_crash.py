"""Crash safety: kill -9 during an upload and during a companion build, then restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import onnx
import pytest

from models_store.store import ModelStore
from tests.conftest import tiny_card, tiny_classifier

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--store", str(store), "serve", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CNNVIS_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError("server did not start")


def test_kill_during_upload_leaves_only_completed_models(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelStore(store).add(tiny_classifier(), tiny_card(name="done"))
    process, url = start_server(store)
    try:
        # an upload that announces 5 MB and sends a part of it, then the server is killed
        body = b"x" * 100_000
        boundary = "cnnvisboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model";'
            f' filename="m.onnx"\r\n\r\n'
        ).encode()
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as conn:
            conn.sendall(
                b"POST /v1/models HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
                + b"Content-Length: 5000000\r\n\r\n"
                + head
                + body
            )
            time.sleep(0.3)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    # and a staging folder left by a kill during the write itself
    staging = store / ".tmp" / "interrupted"
    (staging / "derived").mkdir(parents=True)
    (staging / "model.onnx").write_bytes(tiny_classifier()[:200])

    process, url = start_server(store)
    try:
        assert httpx.get(f"{url}/v1/models").json() == {"models": ["done"]}
        assert list((store / ".tmp").iterdir()) == []
    finally:
        process.terminate()
        process.wait(timeout=30)


def _build_command(store: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "service.cli",
        "--store",
        str(store),
        "models",
        "build",
        "tiny",
        "--input-gradient",
    ]


def _assert_complete_or_absent(derived: Path) -> None:
    assert not list(derived.glob(".*.tmp"))
    for graph in derived.glob("companion-*.onnx"):
        onnx.checker.check_model(onnx.load(str(graph)))  # complete, never half written


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_kill_during_companion_build(tmp_path: Path, fraction: float) -> None:
    """Kill the builder at a fraction of its measured run time; whatever is left is either
    nothing or a complete graph, and the next build works."""
    store = tmp_path / "store"
    record = ModelStore(store).add(tiny_classifier(), tiny_card())
    started = time.perf_counter()
    subprocess.run(
        _build_command(tmp_path / "probe-store-does-not-exist"),
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )  # same imports, no build: the lead-in
    lead_in = time.perf_counter() - started
    process = subprocess.Popen(
        _build_command(store), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(lead_in * fraction)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)

    ModelStore(store)  # what a restart does: sweep leftovers
    _assert_complete_or_absent(record.derived_dir)
    done = subprocess.run(
        _build_command(store), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    graphs = list(record.derived_dir.glob("companion-*.onnx"))
    assert len(graphs) == 1
    assert json.loads(graphs[0].with_suffix(".json").read_text())["input_gradient"]


def test_states_a_kill_can_leave_are_recovered(tmp_path: Path) -> None:
    """The two states a kill mid-build can leave, made deterministically: a temporary file
    (killed while writing) and a graph without its spec (killed between the two renames)."""
    from models_store.companion import load_or_build

    store = tmp_path / "store"
    record = ModelStore(store).add(tiny_classifier(), tiny_card())
    path, _ = load_or_build(
        record.derived_dir, record.model_path, record.sha256, ["relu"], "standard", True
    )
    complete = path.read_bytes()
    (record.derived_dir / f".{path.name}.abc123.tmp").write_bytes(complete[:100])
    path.with_suffix(".json").unlink()  # the spec is written last
    path.write_bytes(complete[: len(complete) // 3])  # and pretend the graph is half there

    ModelStore(store)
    assert not list(record.derived_dir.glob(".*.tmp"))
    rebuilt, spec = load_or_build(
        record.derived_dir, record.model_path, record.sha256, ["relu"], "standard", True
    )
    assert rebuilt.read_bytes() == complete  # rebuilt, not loaded
    assert spec.input_gradient
