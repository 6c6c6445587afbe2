"""Backpressure: a bounded number of requests per model, a deadline per request.

Model work runs on a dedicated thread pool. A request that finds its model's queue full is
refused at once with 503 and Retry-After; one that runs past its deadline is answered 504,
and its slot is held until the thread really finishes (onnxruntime runs cannot be
interrupted), so overload shows as refusals, never as unbounded memory.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from models_store.errors import ProblemError
from service.errors import GatewayTimeout, Overloaded
from service.metrics import Metrics
from service.runtime.cancel import CANCEL

POLL_S = 0.1  # how often a waiting request checks its client and its deadline


class ClientGone(ProblemError):
    """Nobody is listening any more (nginx's 499); the answer is never read."""

    status = 499
    title = "Client closed request"
    slug = "client-closed-request"


T = TypeVar("T")


class Admission:
    def __init__(
        self, max_queue: int, timeout_s: float, threads: int, metrics: Metrics | None = None
    ) -> None:
        self.metrics = metrics
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cnnvis-work")
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}

    def depth(self, model: str) -> int:
        with self._lock:
            return self._active.get(model, 0)

    def _enter(self, model: str) -> None:
        with self._lock:
            active = self._active.get(model, 0)
            if active >= self.max_queue:
                self._shed(model, "queue_full")
                raise Overloaded(
                    f"model {model!r} has {active} requests in progress, the limit"
                    f" (CNNVIS_MAX_QUEUE) is {self.max_queue}; retry shortly",
                    headers={"Retry-After": "1"},
                )
            self._active[model] = active + 1
            self._report(model)

    def _leave(self, model: str) -> None:
        with self._lock:
            self._active[model] -= 1
            self._report(model)
            if not self._active[model]:
                del self._active[model]

    def _report(self, model: str) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels(model).set(self._active[model])

    async def run(
        self,
        model: str,
        fn: Callable[..., T],
        *args: Any,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> T:
        """Run ``fn(*args)`` on the pool under the model's admission limit and the deadline.

        ``disconnected`` (e.g. ``request.is_disconnected``) is polled while the work runs;
        when it says yes, or the deadline passes, the work is told to stop at its next
        onnxruntime run (service/runtime/cancel.py)."""
        self._enter(model)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the request id follows the work into the thread
        cancel = threading.Event()
        context.run(CANCEL.set, cancel)
        try:
            future = loop.run_in_executor(self.executor, context.run, fn, *args)
        except BaseException:
            self._leave(model)
            raise

        def finished(f: asyncio.Future[T]) -> None:
            self._leave(model)
            if not f.cancelled():
                f.exception()  # retrieved: a late failure after a 504 is not logged as lost

        future.add_done_callback(finished)
        deadline = loop.time() + self.timeout_s
        while True:
            remaining = deadline - loop.time()
            done, _ = await asyncio.wait({future}, timeout=min(POLL_S, max(remaining, 0)))
            if done:
                return future.result()
            if loop.time() >= deadline:
                cancel.set()
                self._shed(model, "deadline")
                raise GatewayTimeout(
                    f"the request took longer than {self.timeout_s:g} s (CNNVIS_REQUEST_TIMEOUT_S)"
                )
            if disconnected is not None and await disconnected():
                cancel.set()
                self._shed(model, "disconnected")
                raise ClientGone("the client disconnected; its work was stopped")

    def _shed(self, model: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.shed.labels(model, reason).inc()

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
