"""onnxruntime sessions: provider choice from settings, and a small LRU cache of open sessions.

The provider actually in use is read back from each session (onnxruntime silently falls back to
CPU when CUDA libraries or a device are missing), and that is what the API reports.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.settings import Settings

log = logging.getLogger("cnnvis.runtime")


@dataclass
class Session:
    """An open onnxruntime session and the names it was built with."""

    inner: ort.InferenceSession
    path: Path

    @property
    def providers(self) -> list[str]:
        return list(self.inner.get_providers())

    @property
    def provider(self) -> str:
        return self.providers[0]

    def run(self, outputs: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.inner.run(outputs, feeds)  # type: ignore[no-any-return]


def provider_list(settings: Settings) -> list[str | tuple[str, dict[str, Any]]]:
    """The preferred providers that this onnxruntime build has, with their options."""
    available = set(ort.get_available_providers())
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    for name in settings.providers:
        if name not in available:
            continue
        if name == "CUDAExecutionProvider":
            chosen.append(
                (
                    name,
                    {
                        "device_id": settings.gpu_device_id,
                        "cudnn_conv_algo_search": settings.cudnn_conv_algo_search,
                        "arena_extend_strategy": "kSameAsRequested",
                    },
                )
            )
        else:
            chosen.append(name)
    if not chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def open_session(path: Path, settings: Settings) -> Session:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    if settings.inter_op_threads:
        options.inter_op_num_threads = settings.inter_op_threads
    inner = ort.InferenceSession(str(path), options, providers=provider_list(settings))
    session = Session(inner, path)
    log.info("opened %s on %s", path, ",".join(session.providers))
    return session


class SessionCache:
    """Keeps the most recently used sessions open; opens each path at most once at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sessions: OrderedDict[Path, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._opening: dict[Path, threading.Lock] = {}

    def get(self, path: Path) -> Session:
        key = path
        with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                self._sessions.move_to_end(key)
                return session
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:  # concurrent requests for one new graph wait for a single open
            with self._lock:
                session = self._sessions.get(key)
            if session is None:
                session = open_session(path, self.settings)
                with self._lock:
                    self._sessions[key] = session
                    while len(self._sessions) > self.settings.session_cache_size:
                        self._sessions.popitem(last=False)
        with self._lock:
            self._opening.pop(key, None)
        return session

    def evict(self, prefix: Path) -> None:
        """Forget sessions of files under ``prefix`` (a deleted model)."""
        with self._lock:
            for key in [k for k in self._sessions if k.is_relative_to(prefix)]:
                del self._sessions[key]

    def providers_in_use(self) -> list[str]:
        with self._lock:
            return sorted({s.provider for s in self._sessions.values()})
