"""Prometheus metrics of one running app, on the app's own registry.

Every app gets its own :class:`Metrics` (``app.state.metrics``) on its own
``CollectorRegistry``, so tests that create many apps never collide on the global registry.
The HTTP middleware (service/observability.py) fills the request metrics; the runtime (the
session runner, the companion builder, the dynamic batcher) observes the others::

    metrics = request.app.state.metrics          # or passed in at construction
    with metrics.ort_run_seconds.labels(model="resnet50", graph="companion").time():
        session.run(...)
    metrics.batch_size.labels(model="resnet50").observe(len(batch))

Label values that come from clients (model names, explanation methods) go through
:meth:`Metrics.bounded` so that a client cannot grow the number of time series without bound.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# no `*_created` twin of every counter and histogram (process-wide switch of prometheus_client)
disable_created_metrics()

# seconds: from a cached tiny-model predict to a Score-CAM on a large batch
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
REQUEST_LABELS = ("route", "http_method", "model", "cnnvis_method", "status")
# attribution signals, all in [0, 1] (service/monitoring/signal_metrics.py)
SIGNAL_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
SIGNAL_LABELS = ("model", "method", "class", "source")
EXPLANATION_LABELS = ("model", "method", "outcome", "source")
NONE = "-"  # the label value when a request has no model or no explanation method
OTHER = "other"  # the label value once a label has seen too many distinct values


class Metrics:
    """All metric objects of one app; attributes are prometheus_client metrics."""

    def __init__(self, registry: CollectorRegistry | None = None, max_label_values: int = 200):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.max_label_values = max_label_values
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        r = self.registry

        # HTTP, filled by the middleware
        self.requests = Counter(
            "cnnvis_requests",
            "HTTP requests answered, by route template, model, explanation method and status.",
            REQUEST_LABELS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "cnnvis_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its response.",
            REQUEST_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cnnvis_requests_in_flight", "HTTP requests being served now.", registry=r
        )

        # onnxruntime and companion graphs, observed by the runtime
        self.ort_run_seconds = Histogram(
            "cnnvis_onnxruntime_run_seconds",
            "Time inside one onnxruntime InferenceSession.run (graph: forward | companion).",
            ("model", "graph"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.companion_builds = Counter(
            "cnnvis_companion_builds",
            "Companion graphs derived (outcome: built | cached | error).",
            ("model", "outcome"),
            registry=r,
        )
        self.companion_build_seconds = Histogram(
            "cnnvis_companion_build_seconds",
            "Time to derive one companion graph.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # dynamic batching and backpressure, observed by the batcher
        self.batch_size = Histogram(
            "cnnvis_batch_size",
            "Rows in one merged onnxruntime run.",
            ("model",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "cnnvis_queue_duration_seconds",
            "Time a request waited in a model's queue before its run started.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "cnnvis_queue_depth", "Requests waiting in a model's queue.", ("model",), registry=r
        )
        self.shed = Counter(
            "cnnvis_requests_shed",
            "Requests refused or dropped without a full run (reason:"
            " queue_full | deadline | disconnected).",
            ("model", "reason"),
            registry=r,
        )

        # monitoring signals: one observation per explained (image, class), filled by
        # service/monitoring/signal_metrics.py (source: request | sampled); the explanation
        # counter by the middleware (requests) and the sampler (sampled explanations)
        def signal(name: str, what: str, labels: tuple[str, ...] = SIGNAL_LABELS) -> Histogram:
            return Histogram(name, what, labels, buckets=SIGNAL_BUCKETS, registry=r)

        self.signal_sparseness = signal(
            "cnnvis_signal_sparseness", "Gini index of |attribution| (0 uniform, ~1 one pixel)."
        )
        self.signal_top5_share = signal(
            "cnnvis_signal_top5_share", "Share of positive attribution in the brightest 5%."
        )
        self.signal_entropy = signal(
            "cnnvis_signal_entropy",
            "Entropy of the positive attribution over log2(pixels) (0 one pixel, 1 uniform).",
        )
        self.signal_region_share = signal(
            "cnnvis_signal_region_share",
            "Share of positive attribution inside a card region.",
            (*SIGNAL_LABELS, "region"),
        )
        self.signal_probability = signal(
            "cnnvis_signal_probability", "Probability of the explained class."
        )
        self.explanations = Counter(
            "cnnvis_explanations",
            "Explanations by outcome (request: ok | client_error | error | shed;"
            " sampled: ok | error | dropped | stale).",
            EXPLANATION_LABELS,
            registry=r,
        )
        self.sampling_queue_depth = Gauge(
            "cnnvis_sampling_queue_depth", "Sampled images waiting to be explained.", registry=r
        )

        # attribution drift (service/monitoring/monitor.py): the drift and window gauges are
        # computed at scrape time by the monitor's collector, registered on this registry
        self.monitoring_dropped = Counter(
            "cnnvis_monitoring_dropped",
            "Observations dropped because the monitor's queue was full (source: request |"
            " sampled).",
            ("source",),
            registry=r,
        )
        self.monitoring_skipped = Counter(
            "cnnvis_monitoring_skipped",
            "Observations left out of drift (reason: no_positive_mass | unknown_model | error).",
            ("reason",),
            registry=r,
        )
        self.monitoring_queue_depth = Gauge(
            "cnnvis_monitoring_queue_depth", "Observations waiting for the monitor.", registry=r
        )

    def bounded(self, label: str, value: str | None) -> str:
        """``value`` as a label value, or ``other`` once ``label`` has seen too many values."""
        if not value:
            return NONE
        with self._lock:
            seen = self._seen.setdefault(label, set())
            if value in seen:
                return value
            if len(seen) >= self.max_label_values:
                return OTHER
            seen.add(value)
            return value
