"""Co-operative cancellation of model work whose answer nobody will read.

A request's work runs in a worker thread; onnxruntime runs cannot be interrupted, but a
method made of many runs (Score-CAM, ablation, occlusion, SmoothGrad, integrated gradients)
checks between them. The admission layer sets the flag when the client disconnects or the
deadline passes; the runner raises :class:`Cancelled` at its next run.
"""

from __future__ import annotations

import contextvars
import threading

CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "cnnvis_cancel", default=None
)


class Cancelled(Exception):
    """The request was abandoned (client gone or deadline passed); stop working on it."""


def raise_if_cancelled() -> None:
    flag = CANCEL.get()
    if flag is not None and flag.is_set():
        raise Cancelled
