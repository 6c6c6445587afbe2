"""Dynamic batching merges concurrent runs and gives each caller exactly its own rows."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.runtime.batcher import BatchedSession, Batcher
from tests.conftest import tiny_classifier


class SlowSession:
    """A real onnxruntime session that records batch sizes and holds the graph for a while."""

    def __init__(self, delay: float = 0.05) -> None:
        self.inner = ort.InferenceSession(tiny_classifier(), providers=["CPUExecutionProvider"])
        self.calls: list[int] = []
        self.delay = delay

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls.append(next(iter(feeds.values())).shape[0])
        time.sleep(self.delay)
        return self.inner.run(outputs, feeds)  # type: ignore[no-any-return]


def concurrently(n: int, fn: Any) -> list[Any]:
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_runs_merge_and_unmerge() -> None:
    session = SlowSession()
    batched = BatchedSession(session, Batcher(max_batch_size=8, max_delay_s=0.0))
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=(1 + i % 3, 3, 8, 8)).astype(np.float32) for i in range(16)]
    expected = [session.inner.run(None, {"input": x})[0] for x in inputs]

    got = concurrently(16, lambda i: batched.run(None, {"input": inputs[i]})[0])

    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
    assert sum(session.calls) == sum(x.shape[0] for x in inputs)
    assert len(session.calls) < 16, session.calls  # something was merged
    assert max(session.calls) <= 8


class SumSession:
    """Any input shape: returns each row's sum and remembers the shapes it was run on."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["input"]
        self.shapes.append(x.shape)
        time.sleep(0.02)
        return [x.reshape(x.shape[0], -1).sum(axis=1)]


def test_different_shapes_never_merge() -> None:
    session = SumSession()
    batched = BatchedSession(session, Batcher(max_batch_size=8, max_delay_s=0.01))

    def call(i: int) -> Any:
        size = 2 if i % 2 else 4
        return batched.run(None, {"input": np.ones((1, size, size), np.float32)})[0]

    results = concurrently(8, call)
    assert sorted(float(r[0]) for r in results) == [4.0] * 4 + [16.0] * 4
    assert {s[1:] for s in session.shapes} == {(2, 2), (4, 4)}
    assert sum(s[0] for s in session.shapes) == 8


def test_a_failed_run_fails_every_member_and_the_next_batch_works() -> None:
    session = SlowSession(delay=0.02)
    batched = BatchedSession(session, Batcher(max_batch_size=4, max_delay_s=0.05))
    bad = {"input": np.ones((1, 3, 8, 8), np.float64)}  # wrong dtype: onnxruntime refuses
    with pytest.raises(Exception, match="(?i)type"):
        batched.run(None, bad)
    good = batched.run(None, {"input": np.ones((2, 3, 8, 8), np.float32)})[0]
    assert good.shape == (2, 3)


def test_large_requests_bypass_the_batcher() -> None:
    session = SlowSession(delay=0.0)
    # waiting for company would take an hour: the run must not wait at all
    batched = BatchedSession(session, Batcher(max_batch_size=4, max_delay_s=3600.0))
    worker = threading.Thread(
        target=batched.run, args=(None, {"input": np.ones((4, 3, 8, 8), np.float32)}), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive() and session.calls == [4]
