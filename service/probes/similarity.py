"""How alike two attribution maps are (docs/probes.md, "Similarity").

* ``pearson`` and ``spearman``: correlation of the two maps pooled onto a coarse grid
  (``service.monitoring.drift.pooled_grid``: the positive mass per cell), so a one-pixel
  shift of a peak does not count as disagreement;
* ``iou_top``: intersection over union of the brightest ``TOP_REGION`` share of pixels of each
  map, at full resolution (``service.imaging.signals.top_count`` pixels each);

Maps may carry NaN where they are undefined (outside a transformation's image): such pixels
are left out of both maps. A constant grid has no defined correlation (``None``).
"""

from __future__ import annotations

import math

import numpy as np

from service.imaging.signals import top_count
from service.monitoring.drift import pooled_grid

TOP_REGION = 0.10  # iou_top: the brightest 10% of pixels


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two equally shaped arrays (flattened); None when either is constant."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {np.shape(a)} and {np.shape(b)}")
    x = x - x.mean()
    y = y - y.mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    if denominator <= 0.0 or not math.isfinite(denominator):
        return None
    return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, ties given their mean rank."""
    v = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(v, kind="stable")
    sorted_v = v[order]
    # the first index of each run of equal values, and the run lengths
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    lengths = np.diff(np.r_[starts, v.size])
    mean_rank = starts + (lengths + 1) / 2.0
    out = np.empty(v.size)
    out[order] = np.repeat(mean_rank, lengths)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho: Pearson's r of the ranks (ties at their mean rank)."""
    return pearson(ranks(a), ranks(b))


def top_mask(m: np.ndarray, fraction: float = TOP_REGION) -> np.ndarray:
    """The ``top_count(n, fraction)`` largest finite pixels (ties broken by position)."""
    flat = np.asarray(m, dtype=np.float64).ravel()
    finite = np.isfinite(flat)
    k = top_count(int(finite.sum()), fraction)
    order = np.argsort(-np.where(finite, flat, -np.inf), kind="stable")[:k]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order] = True
    return mask.reshape(np.shape(m))


def iou_top(a: np.ndarray, b: np.ndarray, fraction: float = TOP_REGION) -> float:
    """IoU of the top ``fraction`` pixels of each map."""
    ta, tb = top_mask(a, fraction), top_mask(b, fraction)
    union = int((ta | tb).sum())
    return float((ta & tb).sum() / union) if union else 1.0


def map_similarity(a: np.ndarray, b: np.ndarray, grid: int) -> dict[str, float | None]:
    """``pearson`` and ``spearman`` on the ``grid`` x ``grid`` pooled maps, ``iou_top`` at
    full resolution; pixels that are NaN in either map are left out (set to 0 for pooling)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (H, W) maps of one shape, got {a.shape} and {b.shape}")
    valid = np.isfinite(a) & np.isfinite(b)
    a0, b0 = np.where(valid, a, 0.0), np.where(valid, b, 0.0)
    side = max(1, min(grid, *a.shape))
    pa, pb = pooled_grid(a0, side), pooled_grid(b0, side)
    both = pa is not None and pb is not None
    return {
        "pearson": pearson(pa, pb) if both else None,  # type: ignore[arg-type]
        "spearman": spearman(pa, pb) if both else None,  # type: ignore[arg-type]
        "iou_top": iou_top(np.where(valid, a, np.nan), np.where(valid, b, np.nan)),
    }
