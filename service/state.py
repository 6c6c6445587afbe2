"""What one running service holds: settings, the model store, open sessions, graph summaries."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from models_store.graph import graph_inputs, graph_outputs
from models_store.inspect import GraphSummary, summarize
from models_store.store import ModelRecord, ModelStore
from models_store.validate import input_layout
from service.metrics import Metrics
from service.monitoring.monitor import Monitor
from service.runtime.admission import Admission
from service.runtime.batcher import BatchedSession, Batcher
from service.runtime.runner import ModelRunner
from service.runtime.sessions import Session, SessionCache
from service.settings import Settings


def fed_dims(record: ModelRecord, image: str) -> tuple[int, int, int]:
    """The image's non-batch dims as the service feeds them: the card's size and channels in
    the model's layout."""
    spec = record.card.input
    if input_layout(record.model, record.card, image) == "NHWC":
        return (spec.height, spec.width, spec.channels)
    return (spec.channels, spec.height, spec.width)


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    sessions: SessionCache
    batcher: Batcher
    admission: Admission
    metrics: Metrics | None = None
    monitor: Monitor = field(default_factory=Monitor)
    _summaries: dict[str, GraphSummary] = field(default_factory=dict)
    _runners: dict[str, ModelRunner] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings, metrics: Metrics | None = None) -> AppState:
        def observe(label: str, rows: int, queued_s: float, run_s: float) -> None:
            if metrics is not None:
                model, _, graph = label.partition(":")
                metrics.batch_size.labels(model).observe(rows)
                metrics.queue_seconds.labels(model).observe(queued_s)
                metrics.ort_run_seconds.labels(model, graph).observe(run_s)

        store = ModelStore(settings.store)
        return cls(
            settings,
            store,
            SessionCache(settings),
            Batcher(settings.max_batch_size, settings.max_batch_delay_ms / 1000, observe),
            Admission(
                settings.max_queue, settings.request_timeout_s, settings.worker_threads, metrics
            ),
            metrics=metrics,
            monitor=Monitor(
                store,
                grid=settings.monitoring_grid,
                window=settings.monitoring_window,
                queue_size=settings.monitoring_queue,
                metrics=metrics,
            )
            if settings.monitoring
            else Monitor(),
        )

    def session(self, record: ModelRecord) -> Session:
        return self.sessions.get(record.model_path)

    def batched(self, path: Path) -> BatchedSession:
        """The session of ``path`` with its runs merged across concurrent requests."""
        relative = (
            path.relative_to(self.store.root) if path.is_relative_to(self.store.root) else path
        )
        model = relative.parts[0] if len(relative.parts) > 1 else "-"
        graph = "forward" if path.name == "model.onnx" else "derived"
        session = self.sessions.get(path)
        return BatchedSession(session.inner, self.batcher, f"{model}:{graph}")

    def summary(self, record: ModelRecord) -> GraphSummary:
        """Candidate layers and the default layer, computed once per model file."""
        with self._lock:
            cached = self._summaries.get(record.sha256)
        if cached is None:
            image = record.card.input.name or graph_inputs(record.model)[0].name
            score = record.card.output.name or graph_outputs(record.model)[0].name
            cached = summarize(record.model, image, score)
            with self._lock:
                self._summaries[record.sha256] = cached
        return cached

    def default_layer(self, record: ModelRecord) -> str | None:
        return record.card.default_layer or self.summary(record).default_layer

    def runner(self, record: ModelRecord) -> ModelRunner:
        """The model's runner: forward and companion graphs, built once, cached on disk."""
        key = str(record.path)
        with self._lock:
            runner = self._runners.get(key)
            if runner is None or runner.sha256 != record.sha256:
                image = record.card.input.name or graph_inputs(record.model)[0].name
                runner = ModelRunner(
                    record.model_path,
                    record.derived_dir,
                    record.sha256,
                    image,
                    record.card.output.name or graph_outputs(record.model)[0].name,
                    open_session=self.batched,
                    input_dims=fed_dims(record, image),
                )
                self._runners[key] = runner
        return runner

    def forget(self, folder: Path) -> None:
        """Drop everything cached for models under ``folder`` (after a delete)."""
        self.sessions.evict(folder)
        with self._lock:
            for key in [k for k in self._runners if Path(k).is_relative_to(folder)]:
                del self._runners[key]
        if self.monitor.store is not None and folder.parent == self.store.root:
            self.monitor.forget(folder.name)
