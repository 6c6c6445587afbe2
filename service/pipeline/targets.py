"""Which classes to explain: "top1", {"top_k": k}, or explicit indices / label names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_store.errors import ProblemError
from schemas.card import ModelCard
from schemas.explain import TopK
from service.scores import ranked

TargetSpec = str | TopK | list[int | str] | list[list[int | str]]


def requested_k(spec: TargetSpec, max_per_image: int) -> int | None:
    """k for "top1" and {"top_k": k}, checked against the limit; None for explicit classes."""
    if spec != "top1" and not isinstance(spec, TopK):
        return None
    k = 1 if spec == "top1" else spec.top_k  # type: ignore[union-attr]
    if k > max_per_image:
        raise ProblemError(f"top_k={k} exceeds the limit {max_per_image} (CNNVIS_MAX_TOP_K)")
    return k


def resolve_targets(
    spec: TargetSpec, scores: np.ndarray, card: ModelCard, max_per_image: int
) -> list[list[int]]:
    """One list of class indices per image, from the request and the model's scores."""
    k = requested_k(spec, max_per_image)
    if k is None:
        images, classes = scores.shape
        return explicit_targets(spec, images, classes, card, max_per_image)
    return ranked(scores, k).tolist()


def explicit_targets(
    spec: TargetSpec, images: int, classes: int, card: ModelCard, max_per_image: int
) -> list[list[int]]:
    """One list of class indices per image from explicit indices or labels: no run needed."""
    assert isinstance(spec, list)
    if not spec:
        raise ProblemError("targets is an empty list")
    lists = [t for t in spec if isinstance(t, list)]
    if len(lists) == len(spec):
        if len(spec) != images:
            raise ProblemError(
                f"targets has {len(spec)} lists but {images} images were posted;"
                " send one list per image, or one flat list for all"
            )
        per_image: list[list[int | str]] = lists
    elif lists:
        raise ProblemError("targets mixes lists and single classes")
    else:
        flat = [t for t in spec if not isinstance(t, list)]
        per_image = [flat] * images
    resolved = []
    for row in per_image:
        if not row:
            raise ProblemError("targets has an empty list for an image")
        if len(row) > max_per_image:
            raise ProblemError(
                f"{len(row)} targets for one image exceed the limit {max_per_image}"
                " (CNNVIS_MAX_TOP_K)"
            )
        resolved.append([class_index(t, card, classes) for t in row])
    return resolved


def class_index(target: int | str, card: ModelCard, classes: int) -> int:
    if isinstance(target, int):
        if not 0 <= target < classes:
            raise ProblemError(f"target class {target} is out of range 0..{classes - 1}")
        return target
    labels: Sequence[str] = card.labels or []
    if target in labels:
        return labels.index(target)
    folded = [label.casefold() for label in labels]
    if target.casefold() in folded:
        return folded.index(target.casefold())
    if target.isdigit():
        return class_index(int(target), card, classes)
    close = [label for label in labels if target.casefold() in label.casefold()][:5]
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ProblemError(f"target {target!r} is not a label of this model{hint}")
