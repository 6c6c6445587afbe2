"""onnxruntime sessions: provider choice from settings, and a small LRU cache of open sessions.

The provider actually in use is read back from each session (onnxruntime silently falls back to
CPU when CUDA libraries or a device are missing), and that is what the API reports.

float16 and bfloat16 models: on the CPU provider a session runs the model's float32 copy
(``models_store.dtypes.upcast``, converted in memory when the session opens; the stored
file is untouched). onnxruntime's CPU kernels are float32 (it would otherwise insert casts around
every float16 node, or fail to load a bfloat16 graph), and the float32 copy is what the
explanation graphs are built from. On CUDA the model runs as stored, natively in float16;
feeds are cast to float16 and outputs back to float32 (``graphio``). A model whose inputs
and outputs are float32 but which holds float16 nodes inside (mixed precision) runs as stored
on either provider; onnxruntime computes the float16 nodes it has no CPU kernel for through
casts it inserts itself. A bfloat16 model, or one onnxruntime cannot open as stored, runs its
float32 copy on every provider. The CUDA path is written but was not measured here: no GPU
was lent to the session that wrote it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from models_store.dtypes import needs_upcast, upcast
from service.settings import Settings

log = logging.getLogger("cnnvis.runtime")


@dataclass
class Session:
    """An open onnxruntime session and the names it was built with."""

    inner: ort.InferenceSession
    path: Path
    upcast: bool = False  # runs the float32 copy of a float16/bfloat16 model

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
    if not settings.thread_spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = provider_list(settings)
    inner: ort.InferenceSession | None = None
    try:
        inner = ort.InferenceSession(str(path), options, providers=providers)
    except Exception:
        if not _low_precision(path):
            raise
    io = _io_types(inner) if inner is not None else set()
    cpu = inner is not None and inner.get_providers()[0] == "CPUExecutionProvider"
    if inner is None or "tensor(bfloat16)" in io or (cpu and "tensor(float16)" in io):
        # CPU runs float32, and nobody feeds bfloat16: run the model's float32 copy
        data = upcast(onnx.load(str(path))).SerializeToString()
        inner = ort.InferenceSession(data, options, providers=providers)
        session = Session(inner, path, upcast=True)
        log.info("opened %s on %s (float32 copy)", path, ",".join(session.providers))
        return session
    session = Session(inner, path)
    log.info("opened %s on %s", path, ",".join(session.providers))
    return session


def _io_types(inner: ort.InferenceSession) -> set[str]:
    """Element types of the graph's inputs and outputs (a float32-boundary mixed-precision
    model runs as stored: onnxruntime computes its float16 nodes through inserted casts)."""
    return {str(a.type) for a in [*inner.get_inputs(), *inner.get_outputs()]}


def _low_precision(path: Path) -> bool:
    """Whether the graph at ``path`` holds float16/bfloat16 tensors (the proto is parsed)."""
    return needs_upcast(onnx.load(str(path)))


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
