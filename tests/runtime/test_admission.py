"""Backpressure: a full queue answers 503 at once; a slow request answers 504."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.errors import GatewayTimeout, Overloaded
from service.runtime.admission import Admission


def test_full_queue_is_refused_then_frees() -> None:
    admission = Admission(max_queue=2, timeout_s=5, threads=4)
    gate = threading.Event()

    async def scenario() -> None:
        first = asyncio.ensure_future(admission.run("m", gate.wait))
        second = asyncio.ensure_future(admission.run("m", gate.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await admission.run("m", lambda: None)
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        assert "limit (CNNVIS_MAX_QUEUE) is 2" in refused.value.detail
        assert await admission.run("other", lambda: 7) == 7  # queues are per model
        gate.set()
        await asyncio.gather(first, second)
        assert admission.depth("m") == 0
        assert await admission.run("m", lambda: 3) == 3

    asyncio.run(scenario())
    admission.close()


def test_deadline_is_504_and_the_slot_is_held_until_the_work_ends() -> None:
    admission = Admission(max_queue=1, timeout_s=0.1, threads=2)

    async def scenario() -> None:
        started = time.perf_counter()
        with pytest.raises(GatewayTimeout, match="0.1 s"):
            await admission.run("m", time.sleep, 0.5)
        assert time.perf_counter() - started < 0.4
        assert admission.depth("m") == 1  # still running in its thread
        with pytest.raises(Overloaded):
            await admission.run("m", lambda: None)
        await asyncio.sleep(0.6)
        assert admission.depth("m") == 0

    asyncio.run(scenario())
    admission.close()
