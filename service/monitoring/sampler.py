"""Sampled explanations: /predict images explained in the background for monitoring
(docs/monitoring.md, "Sampled explanations").

The predict route, once it has its predictions, calls :func:`offer` with the images it
already decoded and the ranked classes. For a model whose card has ``monitoring.sampling``
(schemas/sampling.py), each image whose top class passes the policy's filters is drawn with
probability ``fraction`` and queued: a reference to the decoded image, its top class and the
time, O(1), no copy. One background thread per app explains the queue with the policy's
method on the predicted class (``outputs=["stats"]``, no PNG) and hands the observations to
``state.monitor.observe(..., source="sampled")``.

The thread never holds up /predict:
- the queue is bounded (``CNNVIS_SAMPLING_QUEUE`` images and ``CNNVIS_SAMPLING_QUEUE_MIB`` of
  decoded pixels); an image that does not fit is dropped and counted (outcome ``dropped``);
- with ``CNNVIS_SAMPLING_IDLE_ONLY`` (the default) a sample waits until its model has no
  request in progress (``Admission.depth``); one older than ``CNNVIS_SAMPLING_MAX_AGE_S`` is
  dropped and counted (outcome ``stale``);
- the thread spends at most ``CNNVIS_SAMPLING_BUDGET`` of its time explaining: after an
  explanation of D seconds it rests ``D (1 - budget) / budget``, at most the max age (a
  sample that grows stale meanwhile is dropped as such), which bounds the share of requests
  that arrive while a sampled explanation runs. The first explanation of a model version,
  method and layer (which builds and opens the companion graph) is not followed by a rest;
- on Linux the thread runs at ``nice CNNVIS_SAMPLING_NICE`` (threads it starts inherit it,
  so do the onnxruntime thread pools of sessions it is the first to open);
- sampled work does not go through the admission queue, so it never takes a request's slot.

The draw is ``random.Random(CNNVIS_SAMPLING_SEED)`` per app: reproducible with a seed, a new
sequence every start without.

The sampler is created on first use, one per :class:`~service.state.AppState` (an attribute
set under a lock), so that nothing else has to construct it; its thread exits after
``IDLE_EXIT_S`` without work and starts again with the next sample.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from models_store.store import ModelRecord
from schemas.sampling import SamplingPolicy
from service.metrics import Metrics
from service.scores import ClassScore

log = logging.getLogger("cnnvis.sampling")

IDLE_EXIT_S = 30.0  # the worker thread exits after this long without work
BUSY_POLL_S = 0.01  # idle-only: how often a waiting sample checks its model again
LOG_EVERY_S = 60.0  # a model's failing samples are logged once a minute at most
_ATTRIBUTE = "_cnnvis_sampler"
_CREATE = threading.Lock()


def sampling_policy(record: ModelRecord) -> SamplingPolicy | None:
    monitoring = getattr(record.card, "monitoring", None)
    return getattr(monitoring, "sampling", None)


def sampler_of(state: Any) -> Sampler:
    """The app's sampler, created on first use."""
    sampler = getattr(state, _ATTRIBUTE, None)
    if sampler is None:
        with _CREATE:
            sampler = getattr(state, _ATTRIBUTE, None)
            if sampler is None:
                sampler = Sampler(state)
                setattr(state, _ATTRIBUTE, sampler)
    return sampler


def close_sampler(state: Any, timeout: float | None = None) -> None:
    """Stop the app's sampler, if it has one (queued samples are dropped)."""
    sampler = getattr(state, _ATTRIBUTE, None)
    if sampler is not None:
        sampler.close(timeout)


def offer(
    state: Any,
    record: ModelRecord,
    images: Sequence[Image.Image],
    ranked: Sequence[Sequence[ClassScore]],
) -> int:
    """Offer a /predict request's images to sampling; returns how many were queued. Never
    raises: sampling must not fail a prediction."""
    try:
        settings = state.settings
        if not settings.sampling or not getattr(settings, "monitoring", True):
            return 0  # switched off, or nobody would read the observations
        policy = sampling_policy(record)
        if policy is None or policy.fraction <= 0.0:
            return 0
        return sampler_of(state).offer(record, policy, images, ranked)
    except Exception:  # pragma: no cover - defensive: a bug here must not cost a prediction
        log.exception("sampling: offering images failed")
        return 0


_WIDE_MODES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def _pixel_bytes(image: Image.Image) -> int:
    return _WIDE_MODES.get(image.mode, max(1, len(image.getbands())))


def eligible(policy: SamplingPolicy, top: ClassScore) -> bool:
    """Whether a prediction with top class ``top`` passes the policy's filters."""
    if policy.below_confidence is not None and not top.probability < policy.below_confidence:
        return False
    if policy.classes is not None:
        return top.index in policy.classes or (
            top.label is not None and top.label in policy.classes
        )
    return True


@dataclass
class _Sample:
    at: float  # time.monotonic() when queued
    record: ModelRecord
    policy: SamplingPolicy
    image: Image.Image
    target: int
    nbytes: int


class Sampler:
    def __init__(self, state: Any) -> None:
        settings = state.settings
        self.state = state
        self.metrics: Metrics | None = getattr(state, "metrics", None)
        self.max_queue = settings.sampling_queue
        self.max_bytes = settings.sampling_queue_mib * 1024 * 1024
        self.max_age_s = settings.sampling_max_age_s
        self.idle_only = settings.sampling_idle_only
        self.nice = settings.sampling_nice
        self.budget = settings.sampling_budget
        self._not_before = 0.0  # monotonic time before which no explanation starts
        self._warm: set[tuple[str, str, str]] = set()  # (sha256, method, layer) explained
        self._random = random.Random(settings.sampling_seed)
        self._cond = threading.Condition()
        self._queue: collections.deque[_Sample] = collections.deque()
        self._bytes = 0
        self._busy = False  # the worker is processing a sample
        self._closed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()  # wakes a sample waiting for its model to be idle
        self._logged: dict[str, float] = {}  # model -> when its last failure was logged

    # ---- the request side ------------------------------------------------------------------

    def offer(
        self,
        record: ModelRecord,
        policy: SamplingPolicy,
        images: Sequence[Image.Image],
        ranked: Sequence[Sequence[ClassScore]],
    ) -> int:
        queued = 0
        now = time.monotonic()
        for image, classes in zip(images, ranked, strict=False):
            if not classes or not eligible(policy, classes[0]):
                continue
            with self._cond:
                if self._closed or not self._random.random() < policy.fraction:
                    continue
                nbytes = image.width * image.height * _pixel_bytes(image)
                if len(self._queue) >= self.max_queue or self._bytes + nbytes > self.max_bytes:
                    self._count(record.name, policy.method, "dropped")
                    continue
                self._queue.append(_Sample(now, record, policy, image, classes[0].index, nbytes))
                self._bytes += nbytes
                self._report()
                self._start_worker()
                self._cond.notify_all()
                queued += 1
        return queued

    # ---- control ---------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + int(self._busy)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued sample has been handled; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Drop what is queued, stop the worker (after the sample it is explaining)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._bytes = 0
            self._report()
            self._stop.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ---- the worker ------------------------------------------------------------------------

    def _start_worker(self) -> None:  # under self._cond
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="cnnvis-sampling", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(IDLE_EXIT_S) and not self._queue:
                        self._thread = None  # offer() starts another one
                        return
                if self._closed:
                    self._thread = None
                    return
                sample = self._queue.popleft()
                self._bytes -= sample.nbytes
                self._busy = True
                self._report()
            try:
                self._process(sample)
            except Exception:  # counted in _process; nothing may kill the thread
                log.exception("sampling: unexpected failure")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _lower_priority(self) -> None:
        if not self.nice or sys.platform != "linux":
            return
        try:  # Linux: the nice value is per thread; PRIO_PROCESS with a thread id sets one
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except OSError as exc:  # pragma: no cover - e.g. a sandbox refusing it
            log.warning("sampling: could not lower the thread's priority: %s", exc)

    def _stale(self, sample: _Sample) -> bool:
        return time.monotonic() - sample.at > self.max_age_s

    def _process(self, sample: _Sample) -> None:
        model, method = sample.record.name, sample.policy.method
        # the budget: after an explanation of D seconds, rest D (1 - budget) / budget
        while (rest := self._not_before - time.monotonic()) > 0:
            if self._stop.wait(min(rest, 1.0)):
                return  # closing
            if self._stale(sample):
                self._count(model, method, "stale")
                return
        if self._stale(sample):
            self._count(model, method, "stale")
            return
        if self.idle_only:
            while self.state.admission.depth(model) > 0:
                if self._stop.wait(BUSY_POLL_S):
                    return  # closing
                if self._stale(sample):
                    self._count(model, method, "stale")
                    return
        started = time.monotonic()
        try:
            done = self._explain(sample)
        except Exception as exc:
            self._count(model, method, "error")
            now = time.monotonic()
            if now - self._logged.get(model, -LOG_EVERY_S) >= LOG_EVERY_S:
                self._logged[model] = now  # a bad policy fails every sample: log it now and then
                log.warning("sampling: explaining a %s sample failed: %s", model, exc)
            return
        finally:
            ended = time.monotonic()
            key = (sample.record.sha256, method, str(sample.policy.layer))
            if key in self._warm:  # not the first: that one builds and opens the graphs
                rest = (ended - started) * (1 - self.budget) / self.budget
                self._not_before = ended + min(rest, self.max_age_s)
            else:
                self._warm.add(key)
        self._count(model, method, "ok")
        observations = getattr(done, "observations", None)
        if observations:
            self.state.monitor.observe(observations, source="sampled")

    def _explain(self, sample: _Sample) -> Any:
        from schemas.explain import ExplainRequest
        from service.pipeline import explain as pipeline

        policy = sample.policy
        targets: list[int | str] = [sample.target]
        body = ExplainRequest.model_construct(
            images=[],  # the decoded image goes in separately
            method=policy.method,
            targets=targets,
            layer=policy.layer,
            outputs=["stats"],
        )
        return pipeline.explain(self.state, sample.record, body, [sample.image])

    # ---- metrics ---------------------------------------------------------------------------

    def _count(self, model: str, method: str, outcome: str) -> None:
        m = self.metrics
        if m is not None:
            m.explanations.labels(
                m.bounded("model", model), m.bounded("cnnvis_method", method), outcome, "sampled"
            ).inc()

    def _report(self) -> None:  # under self._cond
        if self.metrics is not None:
            self.metrics.sampling_queue_depth.set(len(self._queue))
