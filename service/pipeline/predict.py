"""Ranked classes for a batch of decoded images."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models_store.store import ModelRecord
from service.imaging.preprocess import preprocess
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
    return predict_tensor(state, record, preprocess(images, record.card.input), k)


def predict_tensor(state: AppState, record: ModelRecord, x: np.ndarray, k: int) -> Predicted:
    card = record.card
    session = state.session(record)
    started = time.perf_counter()
    (scores,) = state.batched(record.model_path).run(
        [card.output.name],
        {card.input.name: x},  # type: ignore[dict-item]
    )
    took = (time.perf_counter() - started) * 1000
    return Predicted(scores, top_k(scores, card, k), session.provider, took)
