"""What one running service holds: settings, the model store, open sessions, graph summaries."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from models_store.graph import graph_inputs, graph_outputs
from models_store.inspect import GraphSummary, summarize
from models_store.store import ModelRecord, ModelStore
from service.runtime.sessions import Session, SessionCache
from service.settings import Settings


@dataclass
class AppState:
    settings: Settings
    store: ModelStore
    sessions: SessionCache
    _summaries: dict[str, GraphSummary] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> AppState:
        return cls(settings, ModelStore(settings.store), SessionCache(settings))

    def session(self, record: ModelRecord) -> Session:
        return self.sessions.get(record.model_path)

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
