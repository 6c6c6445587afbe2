"""From raw model outputs to ranked, labelled classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.card import ModelCard


@dataclass(frozen=True)
class ClassScore:
    index: int
    label: str | None
    score: float
    probability: float


def probabilities(scores: np.ndarray, card: ModelCard) -> np.ndarray:
    """Per-class probabilities of a (batch, classes) output, whatever the graph already applied."""
    scores = scores.astype(np.float64)
    if card.output.activation != "none":
        return scores
    if card.task == "multiclass" or (card.task == "binary" and scores.shape[1] == 2):
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-scores))


def ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """(batch, min(k, classes)) class indices, best first: by score, ties to the lower index.
    The order of the probabilities too (softmax and sigmoid are monotonic), without the ties
    their saturation makes."""
    scores = np.asarray(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, scores.shape[1])]


def top_k(scores: np.ndarray, card: ModelCard, k: int) -> list[list[ClassScore]]:
    probs = probabilities(scores, card)
    return [
        [class_score(int(i), row_scores, row_probs, card) for i in order]
        for order, row_scores, row_probs in zip(ranked(scores, k), scores, probs, strict=True)
    ]


def class_score(index: int, scores: np.ndarray, probs: np.ndarray, card: ModelCard) -> ClassScore:
    label = card.labels[index] if card.labels else None
    return ClassScore(index, label, float(scores[index]), float(probs[index]))
