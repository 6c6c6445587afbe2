"""Quality signals of one attribution map, beyond ``map_stats``: how concentrated it is and
where its mass lies. Formulas in docs/methods.md ("Signals").

All of them read the map's positive part ``p = max(m, 0)`` (NaN and infinities as 0), as
``map_stats`` does; a map with no positive mass has no defined shares (``None``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TOP_FRACTION = 0.05  # top5_share: the brightest 5% of pixels


def positive_part(m: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if x.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {x.shape}")
    return np.maximum(x, 0.0)


def sparseness(m: np.ndarray) -> float:
    """Gini index of ``|m|`` (Hurley & Rickard 2009): 0 for a uniform map, ``1 - 1/N`` for one
    hot pixel out of N. With ``c`` sorted ascending, ``1 - 2 sum_k (c_k / |c|_1)
    (N - k + 1/2) / N`` (k = 1..N); 0 for an all-zero map."""
    c = np.sort(
        np.abs(np.nan_to_num(np.asarray(m, dtype=np.float64), posinf=0.0, neginf=0.0)), None
    )
    total = float(c.sum())
    if total <= 0.0 or not math.isfinite(total):
        return 0.0
    n = c.size
    weights = (n - np.arange(1, n + 1) + 0.5) / n
    return float(1.0 - 2.0 * float((c / total) @ weights))


def top_share(m: np.ndarray, fraction: float = TOP_FRACTION) -> float | None:
    """Share of the positive mass in the ``ceil(fraction * N)`` largest pixels; None when the
    map has no positive mass."""
    p = positive_part(m).ravel()
    total = float(p.sum())
    if total <= 0.0 or not math.isfinite(total):
        return None
    k = top_count(p.size, fraction)
    top = np.partition(p, p.size - k)[p.size - k :]
    return float(min(1.0, top.sum() / total))


def top_count(n: int, fraction: float = TOP_FRACTION) -> int:
    """``ceil(fraction * n)`` (at least 1), immune to float products such as 0.05 * 60 =
    3.0000000000000004."""
    return max(1, math.ceil(round(fraction * n, 9)))


def box_to_map(box: Sequence[float], shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """A normalised ``[x0, y0, x1, y1]`` box in pixel coordinates of a map of ``shape``
    (H, W) that covers the model's input window."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 * w, y0 * h, x1 * w, y1 * h)


def box_mask(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Pixels whose centres ``(i + 0.5)`` lie in ``[x0, x1) x [y0, y1)`` (pixel coordinates)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    ys = np.arange(shape[0]) + 0.5
    xs = np.arange(shape[1]) + 0.5
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def region_shares(m: np.ndarray, boxes: Mapping[str, Sequence[float]]) -> dict[str, float] | None:
    """Share of the positive mass inside each box (pixel coordinates of ``m``); boxes may
    overlap, so the shares need not sum to 1. None when there are no boxes or no positive
    mass."""
    if not boxes:
        return None
    p = positive_part(m)
    total = float(p.sum())
    if total <= 0.0 or not math.isfinite(total):
        return None
    return {name: float(p[box_mask(p.shape, box)].sum() / total) for name, box in boxes.items()}
