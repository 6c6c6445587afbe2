"""Proves a model runs before it is stored: one onnxruntime CPU forward at the card's size."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from models_store.errors import InvalidCard, InvalidModel
from models_store.graph import TensorInfo
from models_store.validate import INPUT_DTYPES, input_layout
from schemas.card import ModelCard


def probe_forward(data: bytes, card: ModelCard, image: TensorInfo, score: str) -> int:
    """Run a zero image through the model on CPU, in the input's layout (the card's, or the
    one detected from the graph) and dtype; return the width of the score output."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InvalidModel(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    spec = card.input
    layout = input_layout(onnx.load_model_from_string(data), card, image.name)
    # a fixed batch dimension N (an export without dynamic axes) is run with exactly N rows
    rows = image.shape[0] if image.shape and isinstance(image.shape[0], int) else 1
    rows = max(rows, 1)
    shape = (
        (rows, spec.channels, spec.height, spec.width)
        if layout == "NCHW"
        else (rows, spec.height, spec.width, spec.channels)
    )
    if image.dtype not in INPUT_DTYPES:
        raise InvalidModel(
            f"input {image.name!r} has dtype {image.dtype}; supported image inputs are"
            f" {', '.join(INPUT_DTYPES)}"
        )
    dtype = np.dtype(image.dtype)
    try:
        (out,) = session.run([score], {image.name: np.zeros(shape, dtype)})
    except Exception as exc:
        raise InvalidCard(
            f"the model does not run on a {shape} input built from the card: {_first_line(exc)}"
        ) from None
    if out.ndim != 2 or out.shape[0] != rows:
        raise InvalidModel(
            f"output {score!r} has shape {list(out.shape)} for one image; a classifier must"
            " return (batch, classes) scores"
        )
    return int(out.shape[1])


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
