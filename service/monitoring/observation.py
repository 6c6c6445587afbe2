"""What the explain pipeline hands to monitoring for each result it produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Observation:
    """One explained (image, class): the finished map and where the watched regions lie on it.

    ``attribution`` is the 2-D map as rendered for the client (render settings applied), at the
    resolution it was rendered at, covering the model's input window (never ``size=original``:
    the pipeline hands the input-window map). ``regions`` are the card's and the request's
    boxes in ``attribution``'s pixel coordinates.
    """

    model: str
    version: str
    method: str
    target: int
    label: str | None
    probability: float
    attribution: np.ndarray
    regions: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
