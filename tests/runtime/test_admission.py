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
        release = threading.Event()
        with pytest.raises(GatewayTimeout, match="0.1 s"):
            await admission.run("m", release.wait)
        assert admission.depth("m") == 1  # answered while the work still runs in its thread
        with pytest.raises(Overloaded):
            await admission.run("m", lambda: None)
        release.set()
        for _ in range(1000):  # the slot frees once the work has ended
            if admission.depth("m") == 0:
                break
            await asyncio.sleep(0.01)
        assert admission.depth("m") == 0

    asyncio.run(scenario())
    admission.close()


def _stoppable(started: threading.Event, stopped: list[str]) -> None:
    """Model work made of many runs: checks for cancellation between them."""
    from service.runtime.cancel import Cancelled, raise_if_cancelled

    started.set()
    try:
        for _ in range(200):
            raise_if_cancelled()
            time.sleep(0.01)
    except Cancelled:
        stopped.append("cancelled")
        raise
    stopped.append("finished")


def test_a_disconnected_client_stops_its_work() -> None:
    from service.runtime.admission import ClientGone

    admission = Admission(max_queue=1, timeout_s=10, threads=2)
    started, stopped = threading.Event(), []

    async def scenario() -> None:
        async def gone() -> bool:
            return started.is_set()

        with pytest.raises(ClientGone):
            await admission.run("m", _stoppable, started, stopped, disconnected=gone)
        await asyncio.sleep(0.2)
        assert stopped == ["cancelled"]  # well before its 2 s of work
        assert admission.depth("m") == 0

    asyncio.run(scenario())
    admission.close()


def test_the_deadline_also_stops_the_work() -> None:
    admission = Admission(max_queue=1, timeout_s=0.2, threads=2)
    started, stopped = threading.Event(), []

    async def scenario() -> None:
        with pytest.raises(GatewayTimeout):
            await admission.run("m", _stoppable, started, stopped)
        await asyncio.sleep(0.2)
        assert stopped == ["cancelled"]

    asyncio.run(scenario())
    admission.close()
