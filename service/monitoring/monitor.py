"""The monitor of one running app: takes the explain pipeline's observations.

``observe`` never blocks a request: it puts the observations on a bounded queue
(``CNNVIS_MONITORING_QUEUE``) and returns; when the queue is full they are dropped and
counted (``cnnvis_monitoring_dropped_total``). One background thread takes them off and, for
each,

1. fills the signal histograms (``service.monitoring.signal_metrics``);
2. pools the map onto the drift grid and adds it to the window of its (model version, method,
   class) when that class has a baseline — or, when the card asks for baselines from requests
   (``monitoring.baseline_requests`` = N), collects it until N are there and then freezes and
   stores them as the class's baseline.

Windows live in this replica's memory; baselines in the shared model store (baselines.py). The
drift gauges are computed at scrape time by a collector on the app's registry, so /metrics
always compares against the baseline file as it is now (posted, replaced or deleted by any
replica), and only for the card's ``monitoring.classes`` plus ``class="*"``.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models_store.errors import ProblemError
from models_store.store import ModelRecord, ModelStore
from schemas.card import ModelCard
from schemas.monitoring import (
    BaselineRef,
    ClassDrift,
    DriftReport,
    PendingBaseline,
    RegionShiftOut,
    WindowInfo,
)
from service.metrics import Metrics
from service.monitoring.baselines import (
    Baseline,
    BaselineStore,
    ClassBaseline,
    ReferenceSet,
    baseline_class,
)
from service.monitoring.drift import (
    ALL_CLASSES,
    Profile,
    Window,
    jensen_shannon,
    region_shifts,
    summarize,
)
from service.monitoring.observation import Observation

log = logging.getLogger("cnnvis.monitoring")
Key = tuple[str, str, str]  # (model, version, method)
ClassKey = int | str  # a class index, or ALL_CLASSES
_STOP = object()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _signal_metrics() -> ModuleType | None:
    try:
        return importlib.import_module("service.monitoring.signal_metrics")
    except ImportError:
        return None


@dataclass
class _Collecting:
    """A class's baseline being collected from requests."""

    label: str | None
    profile: Profile


class Monitor:
    """Without a store (``Monitor()``) the monitor is inert: ``observe`` does nothing."""

    def __init__(
        self,
        store: ModelStore | None = None,
        *,
        grid: int = 7,
        window: int = 500,
        queue_size: int = 1024,
        metrics: Metrics | None = None,
    ) -> None:
        self.grid = grid
        self.window_limit = window
        self.metrics = metrics
        self.store = store
        self.baselines = BaselineStore(store.root) if store is not None else None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(threading.Lock())
        self._unfinished = 0
        self._closed = store is None
        self._windows: dict[Key, dict[ClassKey, Window]] = {}
        self._labels: dict[Key, dict[int, str | None]] = {}
        self._collecting: dict[Key, dict[int, _Collecting]] = {}
        self._memory: dict[Key, dict[int, ClassBaseline]] = {}  # frozen, not writable to disk
        self._skipped: dict[Key, int] = {}
        self._dropped = 0
        self._cards: dict[tuple[str, str], tuple[int, ModelCard]] = {}
        self._signals = _signal_metrics()
        self._thread: threading.Thread | None = None
        if store is not None:
            self._thread = threading.Thread(target=self._run, name="cnnvis-monitor", daemon=True)
            self._thread.start()
            if metrics is not None:
                self._collector: DriftCollector | None = DriftCollector(self)
                metrics.registry.register(self._collector)

    # ---- the caller's side ------------------------------------------------------------------

    def observe(self, observations: Sequence[Observation], source: str = "request") -> None:
        """Hand over the results of one explain run (source: request | sampled); never blocks
        the caller, and never fails it: a fault here is logged, the request's answer stands."""
        try:
            self._enqueue(observations, source)
        except Exception:  # pragma: no cover - the monitor's own bug, not the client's
            log.exception("monitor.observe failed")

    def _enqueue(self, observations: Sequence[Observation], source: str) -> None:
        if self._closed:
            return
        now = time.time()
        for obs in observations:
            with self._idle:
                self._unfinished += 1
            try:
                self._queue.put_nowait((obs, source, now))
            except queue.Full:
                self._finished()
                with self._lock:
                    self._dropped += 1
                if self.metrics is not None:
                    self.metrics.monitoring_dropped.labels(source).inc()
        self._depth()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every observation handed over so far is processed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after what is queued (up to ``timeout`` seconds)."""
        if self._closed or self._thread is None:
            self._closed = True
            return
        self._closed = True
        collector = getattr(self, "_collector", None)
        if collector is not None and self.metrics is not None:  # a new app state registers anew
            self.metrics.registry.unregister(collector)
            self._collector = None
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("monitor queue still full at shutdown; observations lost")
        self._thread.join(timeout)

    def forget(self, name: str) -> None:
        """Drop what this replica holds for versions of ``name`` that are gone."""
        assert self.store is not None
        try:
            alive = set(self.store.versions(name))
        except ProblemError:
            alive = set()
        with self._lock:
            for table in (self._windows, self._labels, self._collecting, self._memory):
                for key in [k for k in table if k[0] == name and k[1] not in alive]:
                    del table[key]  # type: ignore[attr-defined]
            for card_key in [k for k in self._cards if k[0] == name]:
                del self._cards[card_key]

    # ---- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._process(*item)
            except Exception:  # a bug here must not end monitoring
                log.exception("monitoring an observation failed")
                self._skip("error")
            finally:
                self._finished()
                self._depth()

    def _finished(self) -> None:
        with self._idle:
            self._unfinished -= 1
            if self._unfinished <= 0:
                self._idle.notify_all()

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.monitoring_queue_depth.set(self._queue.qsize())

    def _skip(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.monitoring_skipped.labels(reason).inc()

    def _process(self, obs: Observation, source: str, t: float) -> None:
        card = self.card(obs.model, obs.version)
        if card is None:
            self._skip("unknown_model")
            return
        if self._signals is not None and self.metrics is not None:
            try:
                self._signals.observe_signals(self.metrics, card, obs.method, obs, source)
            except Exception:
                log.exception("signal metrics of an observation failed")
        self.track(card, obs, t)

    def track(self, card: ModelCard, obs: Observation, t: float) -> None:
        """Add one observation to its window, or to the baseline being collected."""
        key: Key = (obs.model, obs.version, obs.method)
        summary = summarize(obs.attribution, obs.regions, self.grid, t)
        if summary is None:
            with self._lock:
                self._skipped[key] = self._skipped.get(key, 0) + 1
            self._skip("no_positive_mass")
            return
        baseline = self.baseline(key)
        if baseline is not None and obs.target in baseline.classes:
            with self._lock:
                windows = self._windows.setdefault(key, {})
                for k in (obs.target, ALL_CLASSES):
                    if k not in windows:
                        windows[k] = Window(self.window_limit, self.grid)
                    windows[k].add(summary)
                self._labels.setdefault(key, {})[obs.target] = obs.label
                # another replica (or a POST) stored this class meanwhile: stop collecting it
                self._collecting.get(key, {}).pop(obs.target, None)
            return
        needed = card.monitoring.baseline_requests if card.monitoring is not None else 0
        if needed <= 0 or (baseline is not None and baseline.grid != self.grid):
            return
        with self._lock:
            collecting = self._collecting.setdefault(key, {})
            entry = collecting.get(obs.target)
            if entry is None:
                entry = collecting[obs.target] = _Collecting(obs.label, Profile(self.grid))
            entry.profile.add(summary.pooled, summary.shares)
            if entry.profile.count < needed:
                return
            del collecting[obs.target]
        self._freeze(key, obs.target, baseline_class(entry.profile, entry.label, "requests"))

    def _freeze(self, key: Key, target: int, frozen: ClassBaseline) -> None:
        assert self.baselines is not None
        model, version, method = key
        try:
            self.baselines.merge(
                model,
                version,
                method,
                self.grid,
                {target: frozen},
                replace=False,
                keep_existing=True,
            )
        except (OSError, ProblemError) as exc:  # a read-only store: keep it in memory
            log.warning("baseline of %s@%s %s class %d not stored: %s", *key, target, exc)
            with self._lock:
                self._memory.setdefault(key, {})[target] = frozen

    # ---- reading ----------------------------------------------------------------------------

    def card(self, name: str, version: str) -> ModelCard | None:
        """The card of a stored version (cached by the card file's mtime); None when gone."""
        assert self.store is not None
        path = self.store.root / name / version / "card.json"
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            return None
        with self._lock:
            cached = self._cards.get((name, version))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            card = self.store.get(name, version).card
        except ProblemError:
            return None
        with self._lock:
            self._cards[(name, version)] = (stamp, card)
        return card

    def baseline(self, key: Key) -> Baseline | None:
        """The stored baseline of (model, version, method), with the classes this replica
        froze but could not store."""
        assert self.baselines is not None
        stored = self.baselines.get(*key)
        with self._lock:
            memory = dict(self._memory.get(key, {}))
        if not memory:
            return stored
        out = stored or Baseline(*key, grid=self.grid)
        extra = {k: v for k, v in memory.items() if k not in out.classes}
        if not extra:
            return out
        return Baseline(
            out.model,
            out.version,
            out.method,
            out.grid,
            {**out.classes, **extra},
            out.skipped,
            out.created,
        )

    def store_posted(
        self, record: ModelRecord, method: str, reference: ReferenceSet, replace: bool
    ) -> Baseline:
        """Store a posted reference set as (part of) the method's baseline."""
        assert self.baselines is not None
        classes = {
            k: baseline_class(p, reference.labels.get(k), "posted")
            for k, p in reference.profiles.items()
        }
        stored = self.baselines.merge(
            record.name,
            record.version,
            method,
            self.grid,
            classes,
            replace=replace,
            skipped=reference.skipped,
        )
        key: Key = (record.name, record.version, method)
        with self._lock:  # these classes are posted now; stop collecting them from requests
            for k in classes:
                self._collecting.get(key, {}).pop(k, None)
                self._memory.get(key, {}).pop(k, None)
        return stored

    def report(self, record: ModelRecord, method: str) -> DriftReport:
        """GET /drift: per baselined class, the window against the baseline."""
        key: Key = (record.name, record.version, method)
        baseline = self.baseline(key)
        with self._lock:
            windows = dict(self._windows.get(key, {}))
            snapshot = {k: _WindowView.of(w) for k, w in windows.items()}
            pending = [
                PendingBaseline(
                    class_=k,
                    label=c.label,
                    count=c.profile.count,
                    needed=record.card.monitoring.baseline_requests
                    if record.card.monitoring
                    else 0,
                )
                for k, c in sorted(self._collecting.get(key, {}).items())
            ]
            skipped = self._skipped.get(key, 0)
            dropped = self._dropped
        out = DriftReport(
            model={"name": record.name, "version": record.version},
            method=method,
            grid=self.grid,
            window_limit=self.window_limit,
            pending=pending,
            skipped=skipped,
            dropped=dropped,
        )
        if baseline is None or not baseline.classes:
            wait = record.card.monitoring.baseline_requests if record.card.monitoring else 0
            out.message = (
                f"no {method} baseline for {record.ref} yet: POST /v1/models/{record.name}"
                f"/baselines?version={record.version} with a reference set"
                + (
                    f", or wait for {wait} explained requests of a class"
                    " (monitoring.baseline_requests)"
                    if wait
                    else ", or set the card's monitoring.baseline_requests"
                )
            )
            return out
        if baseline.grid != self.grid:
            out.message = (
                f"the {method} baseline of {record.ref} is pooled on a {baseline.grid}x"
                f"{baseline.grid} grid but this service pools on {self.grid}x{self.grid}"
                " (CNNVIS_MONITORING_GRID); post the reference set again with replace=true"
            )
            return out
        combined = baseline.combined()
        assert combined is not None
        out.classes.append(_class_drift(ALL_CLASSES, None, combined, snapshot.get(ALL_CLASSES)))
        for k, c in sorted(baseline.classes.items()):
            out.classes.append(_class_drift(k, c.label, c, snapshot.get(k)))
        return out

    def gauges(self) -> Iterator[tuple[Key, ModelCard, Baseline, dict[ClassKey, _WindowView]]]:
        """Every (model, version, method) with a window here, for the collector."""
        with self._lock:
            keys = list(self._windows)
        for key in keys:
            card = self.card(key[0], key[1])
            baseline = self.baseline(key)
            if card is None or baseline is None or baseline.grid != self.grid:
                continue
            with self._lock:
                views = {k: _WindowView.of(w) for k, w in self._windows.get(key, {}).items()}
            yield key, card, baseline, views


@dataclass(frozen=True)
class _WindowView:
    """A window's figures, copied under the lock."""

    count: int
    first: float | None
    last: float | None
    pooled: Any  # np.ndarray | None
    regions: dict[str, float]

    @classmethod
    def of(cls, w: Window) -> _WindowView:
        mean = w.pooled_mean()
        return cls(len(w), w.first, w.last, None if mean is None else mean.copy(), w.region_means())


def _class_drift(
    k: ClassKey, label: str | None, base: ClassBaseline, view: _WindowView | None
) -> ClassDrift:
    jsd = None
    shifts: dict[str, RegionShiftOut] = {}
    if view is not None and view.count and view.pooled is not None:
        jsd = jensen_shannon(view.pooled, base.pooled)
        shifts = {
            name: RegionShiftOut(baseline=s.baseline, window=s.window, shift=s.shift)
            for name, s in region_shifts(view.regions, base.regions).items()
        }
    return ClassDrift(
        class_=k,
        label=label,
        baseline=BaselineRef(count=base.count, source=base.source),
        window=WindowInfo(
            count=view.count if view else 0,
            first=iso(view.first) if view else None,
            last=iso(view.last) if view else None,
        ),
        jsd=jsd,
        region_shift=shifts,
    )


class DriftCollector(Collector):
    """The drift gauges, computed when Prometheus scrapes: per (model, version, method) with
    a window on this replica, for ``class="*"`` and each class of the card's
    ``monitoring.classes`` that has a baseline."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> list[Any]:
        return []  # dynamic: nothing to check at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["model", "version", "method", "class"]
        jsd = GaugeMetricFamily(
            "cnnvis_attribution_drift_jsd",
            "Jensen-Shannon divergence (bits, 0..1) between this replica's window of pooled"
            " attribution maps and the baseline's.",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "cnnvis_attribution_window_size",
            "Maps in this replica's drift window (weights for averaging across replicas).",
            labels=labels,
        )
        base = GaugeMetricFamily(
            "cnnvis_attribution_baseline_size", "Maps averaged into the baseline.", labels=labels
        )
        shift = GaugeMetricFamily(
            "cnnvis_attribution_region_shift",
            "Mean share of a card region in the window minus in the baseline.",
            labels=[*labels, "region"],
        )
        for key, card, baseline, views in self.monitor.gauges():
            try:
                self._add(key, card, baseline, views, jsd, size, base, shift)
            except Exception:  # one bad entry must not take /metrics down
                log.exception("drift gauges of %s@%s %s failed", *key)
        yield from (jsd, size, base, shift)

    def _add(
        self,
        key: Key,
        card: ModelCard,
        baseline: Baseline,
        views: dict[ClassKey, _WindowView],
        jsd: GaugeMetricFamily,
        size: GaugeMetricFamily,
        base: GaugeMetricFamily,
        shift: GaugeMetricFamily,
    ) -> None:
        metrics = self.monitor.metrics
        model, version, method = key
        allowed = set(card.monitoring.classes if card.monitoring else ())
        model_label = metrics.bounded("model", model) if metrics else model
        watched: list[tuple[ClassKey, str, ClassBaseline | None]] = [
            (ALL_CLASSES, ALL_CLASSES, baseline.combined())
        ]
        for index, entry in sorted(baseline.classes.items()):
            if index in allowed or (entry.label is not None and entry.label in allowed):
                name = entry.label if entry.label is not None else str(index)
                watched.append((index, name, entry))
        for k, name, c in watched:
            if c is None:
                continue
            values = [model_label, version, method, name]
            view = views.get(k)
            size.add_metric(values, view.count if view else 0)
            base.add_metric(values, c.count)
            if view is None or not view.count or view.pooled is None:
                continue
            jsd.add_metric(values, jensen_shannon(view.pooled, c.pooled))
            for region, s in region_shifts(view.regions, c.regions).items():
                if region in card.regions:  # request-named regions mint no series
                    shift.add_metric([*values, region], s.shift)
