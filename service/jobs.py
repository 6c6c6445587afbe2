"""Long-running jobs (feature visualisation, DeepDream, inversion) with progress, on disk.

A :class:`JobManager` runs submitted work on ``max_running`` daemon threads, with at most
``max_queued`` jobs waiting (then :class:`~service.errors.Overloaded`, 503 + Retry-After).
A job is independent of the request that created it: the client may disconnect and poll
``GET /v1/jobs/{id}`` later. Each job lives in ``<root>/<id>/``: ``job.json`` (state,
progress, parameters, the objective curve once done; written atomically) and the result
PNGs ``image-<k>.png``. On start the manager reads every job back: finished ones are served
as they were, ones that were queued or running when the process stopped are marked
``interrupted`` (never silently lost), and finished ones older than ``retention_s`` are
deleted (also checked on every submit and listing).

Work is a callable ``fn(progress, cancelled) -> Result`` (service.featurevis.optimize): it
reports each step and checks ``cancelled()`` between steps, which turns true on DELETE, at
the job's deadline, and on shutdown.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from models_store.errors import ProblemError
from models_store.files import write_atomic
from service.errors import Overloaded
from service.featurevis.optimize import Cancelled, Result
from service.imaging.render import encode_png
from service.runtime.cancel import CANCEL
from service.runtime.cancel import Cancelled as RunCancelled

log = logging.getLogger("cnnvis.jobs")

FINISHED = ("done", "failed", "cancelled", "interrupted")
STATE_FILE = "job.json"
SAVE_EVERY_S = 1.0  # progress is written to disk at most this often (and at every change)

Work = Callable[[Callable[[int, int, float], None], Callable[[], bool]], Result]


class JobNotFound(ProblemError):
    status = 404
    title = "Job not found"
    slug = "job-not-found"


@dataclass
class Job:
    id: str
    kind: str
    model: dict[str, str]
    request: dict[str, Any]
    steps: int
    created: float
    state: str = "queued"
    started: float | None = None
    finished: float | None = None
    step: int = 0
    objective: float | None = None
    error: str | None = None
    curve: list[float] = field(default_factory=list)
    initial: float | None = None
    final: float | None = None
    seconds: float | None = None
    images: int = 0
    fn: Work | None = field(default=None, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    why: str = field(default="", repr=False)  # "cancel" | "deadline" | "shutdown"
    saved: float = field(default=0.0, repr=False)

    _STORED: ClassVar[tuple[str, ...]] = (
        "id",
        "kind",
        "model",
        "request",
        "steps",
        "created",
        "state",
        "started",
        "finished",
        "step",
        "objective",
        "error",
        "curve",
        "initial",
        "final",
        "seconds",
        "images",
    )

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._STORED}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Job:
        return cls(**{k: raw[k] for k in cls._STORED if k in raw})

    def progress(self, now: float) -> dict[str, Any]:
        elapsed = 0.0
        if self.started is not None:
            elapsed = (self.finished or now) - self.started
        remaining = None
        if self.state == "running" and self.step > 0:
            remaining = elapsed / self.step * max(0, self.steps - self.step)
        elif self.state == "done":
            remaining = 0.0
        return {
            "step": self.step,
            "steps": self.steps,
            "objective": self.objective,
            "elapsed_s": round(elapsed, 3),
            "remaining_s": None if remaining is None else round(remaining, 3),
        }


class JobManager:
    def __init__(
        self,
        root: Path,
        *,
        max_running: int = 1,
        max_queued: int = 8,
        deadline_s: float = 900.0,
        retention_s: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.max_running = max_running
        self.max_queued = max_queued
        self.deadline_s = deadline_s
        self.retention_s = retention_s
        self.clock = clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._closing = False
        self._load()

    # -- persistence ------------------------------------------------------------------------

    def _load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.root.glob(f"*/{STATE_FILE}")):
            try:
                job = Job.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError, KeyError):
                log.warning("unreadable job state %s; removing it", path)
                shutil.rmtree(path.parent, ignore_errors=True)
                continue
            if job.state not in FINISHED:
                job.error = f"the service stopped while this job was {job.state}"
                job.state = "interrupted"
                job.finished = job.finished or self.clock()
                self._save(job)
            self._jobs[job.id] = job
        self._purge()

    def _dir(self, job: Job) -> Path:
        return self.root / job.id

    def _save(self, job: Job) -> None:
        folder = self._dir(job)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / STATE_FILE, json.dumps(job.to_json()).encode())
        job.saved = self.clock()

    def _purge(self) -> None:
        now = self.clock()
        with self._lock:
            old = [
                j
                for j in self._jobs.values()
                if j.state in FINISHED and (j.finished or j.created) + self.retention_s < now
            ]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            shutil.rmtree(self._dir(job), ignore_errors=True)

    # -- the API ----------------------------------------------------------------------------

    def submit(
        self, kind: str, model: dict[str, str], request: dict[str, Any], steps: int, fn: Work
    ) -> Job:
        self._purge()
        with self._lock:
            queued = sum(1 for j in self._jobs.values() if j.state == "queued")
            running = [j for j in self._jobs.values() if j.state == "running"]
            if self._closing:
                raise Overloaded("the service is shutting down", headers={"Retry-After": "5"})
            if queued + len(running) >= self.max_queued + self.max_running:
                raise Overloaded(
                    f"{len(running)} jobs are running and {queued} waiting, the limit"
                    f" (CNNVIS_MAX_QUEUED_JOBS) is {self.max_queued}; retry later",
                    headers={"Retry-After": str(self._retry_after(running))},
                )
            job = Job(uuid.uuid4().hex, kind, model, request, steps, self.clock(), fn=fn)
            self._jobs[job.id] = job
            self._save(job)
            self._start_workers()
        self._queue.put(job)
        return job

    def _retry_after(self, running: list[Job]) -> int:
        now = self.clock()
        left = [j.progress(now)["remaining_s"] for j in running if j.progress(now)["remaining_s"]]
        return max(1, min(600, int(min(left, default=10.0)) + 1))

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id!r} (finished jobs are kept for a while only)")
        return job

    def all(self) -> list[Job]:
        self._purge()
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def images(self, job: Job) -> list[bytes]:
        return [(self._dir(job) / f"image-{k}.png").read_bytes() for k in range(job.images)]

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (a running one stops at its next step); a finished
        one is deleted with its results."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                job.state, job.finished, job.error = "cancelled", self.clock(), "cancelled"
                self._save(job)
                return job
            if job.state == "running":
                job.why = job.why or "cancel"
                job.cancel.set()
                return job
            del self._jobs[job.id]
        shutil.rmtree(self._dir(job), ignore_errors=True)
        return job

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job has finished or ``timeout`` passed (tests, the CLI)."""
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job.state not in FINISHED and time.monotonic() < deadline:
            time.sleep(0.02)
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop: running jobs are told to stop and recorded as interrupted."""
        with self._lock:
            self._closing = True
            for job in self._jobs.values():
                if job.state == "running":
                    job.why = "shutdown"
                    job.cancel.set()
                elif job.state == "queued":
                    job.state, job.finished = "interrupted", self.clock()
                    job.error = "the service stopped before this job started"
                    self._save(job)
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout)

    # -- workers ----------------------------------------------------------------------------

    def _start_workers(self) -> None:
        while len(self._workers) < self.max_running:
            worker = threading.Thread(
                target=self._work, name=f"cnnvis-job-{len(self._workers)}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued":
                    continue
                job.state, job.started = "running", self.clock()
                self._save(job)
            flag = job.cancel
            CANCEL.set(flag)  # onnxruntime runs of this job stop at the next one too
            try:
                self._run(job)
            finally:
                CANCEL.set(None)
                job.fn = None

    def _run(self, job: Job) -> None:
        def progress(step: int, steps: int, value: float) -> None:
            job.step, job.steps, job.objective = step, steps, value
            if self.clock() - job.saved >= SAVE_EVERY_S:
                with self._lock:
                    self._save(job)

        def cancelled() -> bool:
            if job.started is not None and self.clock() - job.started > self.deadline_s:
                job.why = job.why or "deadline"
                job.cancel.set()
            return job.cancel.is_set()

        assert job.fn is not None
        try:
            result = job.fn(progress, cancelled)
        except (Cancelled, RunCancelled):
            state, error = {
                "shutdown": ("interrupted", "the service stopped while this job was running"),
                "deadline": (
                    "failed",
                    f"the job ran past its deadline of {self.deadline_s:g} s"
                    " (CNNVIS_JOB_DEADLINE_S)",
                ),
            }.get(job.why, ("cancelled", "cancelled"))
            self._finish(job, state, error)
            return
        except ProblemError as exc:
            self._finish(job, "failed", exc.detail)
            return
        except Exception as exc:  # a bug: logged, and the job says so
            log.exception("job %s failed", job.id)
            self._finish(job, "failed", f"internal error: {type(exc).__name__}: {exc}")
            return
        folder = self._dir(job)
        for k, image in enumerate(result.images):
            write_atomic(folder / f"image-{k}.png", encode_png(image))
        job.images = len(result.images)
        job.curve = [round(v, 6) for v in result.curve]
        job.initial, job.final, job.seconds = result.initial, result.final, result.seconds
        job.step = len(result.curve)
        job.steps = max(job.steps, job.step) if job.step else job.steps
        self._finish(job, "done", None)

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        with self._lock:
            job.state, job.error, job.finished = state, error, self.clock()
            self._save(job)
