"""JobManager on its own: shutdown interrupts, failures are recorded, restarts keep state."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from models_store.errors import ProblemError
from service.errors import Overloaded
from service.featurevis.optimize import Cancelled, Result
from service.jobs import JobManager


def _work(steps: int, gate: threading.Event | None = None, fail: Exception | None = None):
    def work(progress, cancelled):
        for step in range(1, steps + 1):
            if cancelled():
                raise Cancelled("stop")
            if gate is not None:
                gate.wait(0.01)
            if fail is not None and step == 2:
                raise fail
            progress(step, steps, float(step))
        return Result(np.zeros((1, 4, 4, 3), np.uint8), [float(s) for s in range(steps)],
                      1.0, 0.0, 0.1)  # fmt: skip

    return work


def test_shutdown_interrupts_running_and_queued_jobs(tmp_path: Path) -> None:
    jobs = JobManager(tmp_path, max_running=1, max_queued=2)
    running = jobs.submit("featurevis", {"name": "m"}, {}, 10**6, _work(10**6))
    queued = jobs.submit("featurevis", {"name": "m"}, {}, 5, _work(5))
    deadline = time.monotonic() + 60
    while running.step < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    jobs.close()
    assert running.state == "interrupted" and "stopped" in (running.error or "")
    assert queued.state == "interrupted"
    saved = json.loads((tmp_path / running.id / "job.json").read_text())
    assert saved["state"] == "interrupted"
    again = JobManager(tmp_path)
    assert again.get(running.id).state == "interrupted" and again.get(queued.id).steps == 5


def test_failures_are_recorded(tmp_path: Path) -> None:
    jobs = JobManager(tmp_path)
    a = jobs.submit("featurevis", {}, {}, 5, _work(5, fail=ProblemError("bad layer")))
    b = jobs.submit("featurevis", {}, {}, 5, _work(5, fail=RuntimeError("boom")))
    assert jobs.wait(a.id, 10).state == "failed" and a.error == "bad layer"
    assert jobs.wait(b.id, 10).state == "failed" and "RuntimeError: boom" in (b.error or "")
    jobs.close()


def test_queue_bound(tmp_path: Path) -> None:
    jobs = JobManager(tmp_path, max_running=1, max_queued=0)
    first = jobs.submit("featurevis", {}, {}, 10**6, _work(10**6))
    with pytest.raises(Overloaded) as refused:
        jobs.submit("featurevis", {}, {}, 5, _work(5))
    assert int(refused.value.headers["Retry-After"]) >= 1
    jobs.cancel(first.id)
    assert jobs.wait(first.id, 10).state == "cancelled"
    done = jobs.submit("featurevis", {}, {}, 3, _work(3))  # room again
    assert jobs.wait(done.id, 10).state == "done" and jobs.images(done)[0][:4] == b"\x89PNG"
    jobs.close()
