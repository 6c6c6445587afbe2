"""Proves a model runs before it is stored: one onnxruntime CPU forward at the card's size."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from models_store.errors import InvalidCard, InvalidModel
from models_store.graph import TensorInfo
from schemas.card import ModelCard


def probe_forward(data: bytes, card: ModelCard, image: TensorInfo, score: str) -> int:
    """Run a zero image through the model on CPU; return the width of the score output."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModel(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    spec = card.input
    shape = (
        (1, spec.channels, spec.height, spec.width)
        if spec.layout == "NCHW"
        else (1, spec.height, spec.width, spec.channels)
    )
    dtype = np.float16 if image.dtype == "float16" else np.float32
    if image.dtype not in ("float32", "float16"):
        raise InvalidModel(
            f"input {image.name!r} has dtype {image.dtype}; float32 or float16 images are supported"
        )
    try:
        (out,) = session.run([score], {image.name: np.zeros(shape, dtype)})
    except Exception as exc:
        raise InvalidCard(
            f"the model does not run on a {shape} input built from the card: {_first_line(exc)}"
        ) from None
    if out.ndim != 2 or out.shape[0] != 1:
        raise InvalidModel(
            f"output {score!r} has shape {list(out.shape)} for one image; a classifier must"
            " return (batch, classes) scores"
        )
    return int(out.shape[1])


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
