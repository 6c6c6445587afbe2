"""Ranked classes for a batch of decoded images."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models_store.store import ModelRecord
from service.imaging.preprocess import preprocess
from service.pipeline.layout import input_plan, to_input_dtype
from service.scores import ClassScore, top_k
from service.state import AppState


@dataclass
class Predicted:
    scores: np.ndarray  # (N, K) raw model outputs
    ranked: list[list[ClassScore]]
    provider: str
    inference_ms: float


def predict_images(
    state: AppState, record: ModelRecord, images: list[Image.Image], k: int
) -> Predicted:
    return predict_tensor(state, record, preprocess(images, input_plan(record).spec), k)


def predict_tensor(state: AppState, record: ModelRecord, x: np.ndarray, k: int) -> Predicted:
    """``x``: the preprocessed batch in the model's input layout (float; cast here to the
    dtype the graph input declares)."""
    card = record.card
    plan = input_plan(record)
    x = to_input_dtype(x, plan)
    session = state.session(record)
    started = time.perf_counter()
    (scores,) = state.batched(record.model_path).run(
        [card.output.name],  # type: ignore[list-item]
        {plan.image: x},
    )
    took = (time.perf_counter() - started) * 1000
    return Predicted(scores, top_k(scores, card, k), session.provider, took)
