"""Dynamic batching: concurrent runs of one graph at one input shape become one onnxruntime run.

Every request runs in a worker thread. Callers of the same (session, outputs, per-row input
shapes) join an open *group*; the first caller of a group leads it. The leader waits for the
graph to be free (the previous batch still running is what lets a queue build up), optionally
up to ``max_delay`` more for company, closes the group, concatenates every member's inputs
along axis 0, runs once and hands each member its rows of every output. Per-row inputs (the
seeds of the companion graph) keep each request's own target. A failed run fails every member
with the same error; nothing is retried.

A graph whose input declares a fixed batch N (``graphio``) never gets more than N rows in one
run: groups close at N rows, a larger request runs in chunks of N, and a run of fewer than N
rows is padded to N (the padded rows' outputs are dropped). :class:`BatchedSession` also casts
float feeds between float32 and float16 to what the graph declares, and float16 outputs to
float32.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from service.runtime.graphio import cast_feeds, declared, float32_outputs, run_padded


class SessionLike(Protocol):
    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[Any]: ...


@dataclass
class _Member:
    feeds: dict[str, np.ndarray]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    result: list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _Group:
    members: list[_Member] = field(default_factory=list)
    rows: int = 0
    closed: bool = False
    full: threading.Event = field(default_factory=threading.Event)


# (label, batch rows, seconds the leader queued, seconds inside onnxruntime)
Observer = Callable[[str, int, float, float], None]


class Batcher:
    def __init__(
        self, max_batch_size: int, max_delay_s: float, observe: Observer | None = None
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.observe = observe
        self._lock = threading.Lock()
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._busy: dict[tuple[Any, ...], threading.Lock] = {}

    def run(
        self,
        session: SessionLike,
        outputs: Sequence[str] | None,
        feeds: dict[str, np.ndarray],
        label: str = "",
        batch: int | None = None,
    ) -> list[np.ndarray]:
        """One logical run; ``batch`` is the graph's fixed batch size (None: dynamic)."""
        cap = self.max_batch_size if batch is None else min(self.max_batch_size, batch)
        rows = {v.shape[0] if v.ndim else -1 for v in feeds.values()}
        if cap <= 1 or len(rows) != 1 or min(rows) >= cap:
            started = time.perf_counter()
            names = list(outputs) if outputs else None
            results = run_padded(session.run, names, feeds, batch)
            if self.observe is not None:
                self.observe(label, max(rows), 0.0, time.perf_counter() - started)
            return results
        key = (
            id(session),
            batch,
            tuple(outputs or ()),
            tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items())),
        )
        member = _Member(feeds, rows.pop())
        with self._lock:
            group = self._groups.get(key)
            leader = group is None or group.closed or group.rows + member.rows > cap
            if leader:
                group = _Group()
                self._groups[key] = group
            assert group is not None
            group.members.append(member)
            group.rows += member.rows
            if group.rows >= cap:
                group.full.set()
            busy = self._busy.setdefault(key, threading.Lock())
        if leader:
            self._lead(key, group, busy, session, outputs, label, batch)
        member.done.wait()
        if member.error is not None:
            raise member.error
        assert member.result is not None
        return member.result

    def _lead(
        self,
        key: tuple[Any, ...],
        group: _Group,
        busy: threading.Lock,
        session: SessionLike,
        outputs: Sequence[str] | None,
        label: str,
        batch: int | None = None,
    ) -> None:
        queued = time.perf_counter()
        with busy:  # while the previous batch runs, this group fills up
            if self.max_delay_s > 0 and not group.full.is_set():
                group.full.wait(self.max_delay_s)
            with self._lock:
                group.closed = True
                if self._groups.get(key) is group:
                    del self._groups[key]
            waited = time.perf_counter() - queued
            members = group.members
            try:
                feeds = {
                    name: np.concatenate([m.feeds[name] for m in members])
                    if len(members) > 1
                    else members[0].feeds[name]
                    for name in members[0].feeds
                }
                started = time.perf_counter()
                results = run_padded(session.run, list(outputs) if outputs else None, feeds, batch)
                if self.observe is not None:
                    self.observe(label, group.rows, waited, time.perf_counter() - started)
                start = 0
                for m in members:
                    m.result = [r[start : start + m.rows] for r in results]
                    start += m.rows
            except BaseException as exc:  # every member sees the failure
                for m in members:
                    m.error = exc
            finally:
                for m in members:
                    m.done.set()


class BatchedSession:
    """Looks like an onnxruntime session; routes run() through a shared Batcher."""

    def __init__(self, inner: SessionLike, batcher: Batcher, label: str = "") -> None:
        self.inner = inner
        self.batcher = batcher
        self.label = label  # names the graph in metrics

    def run(
        self,
        outputs: list[str] | None,
        feeds: dict[str, np.ndarray],
        batch: int | None = None,
    ) -> list[np.ndarray]:
        """Like ``InferenceSession.run``, fitted to the graph: its declared batch (else
        ``batch``, the caller's limit) and its float16 inputs."""
        info = declared(self.inner)
        limit = info.batch if info.batch is not None else batch
        feeds = cast_feeds(feeds, info.casts)
        return float32_outputs(self.batcher.run(self.inner, outputs, feeds, self.label, limit))

    def __getattr__(self, name: str) -> Any:  # get_inputs(), get_providers(), ...
        return getattr(self.inner, name)
