"""Faithfulness checks: does the model's score follow the map when the input is perturbed?

Definitions (docs/methods.md, "Signals"), per row r with image x (C, H, W) in the canonical
NCHW preprocessed space, target class c, p(.) the class-c probability
(:func:`service.scores.probabilities` with the card) and M the map at input resolution:

* M is the positive part of the map divided by its maximum (an all-zero map stays zero).
* ``confidence_drop`` = (p(x) - p(x * M)) / p(x), M broadcast over channels
  (Chattopadhay et al. 2018, "average drop" before averaging and clipping); can be negative.
* ``deletion`` / ``insertion`` (Petsiuk et al. 2018, RISE): pixels ranked by M descending, ties
  by row-major index (a stable argsort of -M); at step k = 0..steps the first
  n_k = round(k H W / steps) pixels are set to the baseline (deletion) or, starting from the
  baseline, put back (insertion), in every channel; the curve is p per step and the AUC the
  trapezoid over the fraction k / steps: (sum(curve) - (curve[0] + curve[-1]) / 2) / steps.
* baseline ``zero`` is 0 in the preprocessed space (the card's mean colour); ``blur`` is the
  preprocessed input blurred by a Gaussian of sigma :data:`BLUR_SIGMA` input pixels.

Every perturbed input of a call goes through the model in one ``runner.forward`` call (run
in chunks of :data:`BATCH_SIZE` rows). Inputs that coincide are run once: deletion's step 0
and insertion's last step are x itself, deletion's last and insertion's first the baseline,
so a row costs 2 * steps + 1 forwards (+1 for the confidence drop), never more than
1 + 2 * (steps + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from schemas.card import ModelCard
from schemas.explain import Faithfulness
from service.explain.gradients import gaussian_blur
from service.runtime.runner import ModelRunner
from service.scores import probabilities

__all__ = ["BATCH_SIZE", "BLUR_SIGMA", "faithfulness", "forwards", "relevance", "removal_order"]

BLUR_SIGMA = 5.0  # input pixels; RISE's reference code blurs with sigma 5 (kernel 11)
BATCH_SIZE = 32  # rows per onnxruntime run, as the perturbation methods


def relevance(m: np.ndarray) -> np.ndarray:
    """M: the positive part of an (H, W) map over its maximum, float32 (zeros if none)."""
    x = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x = np.maximum(x, 0.0)
    peak = float(x.max()) if x.size else 0.0
    if peak <= 0.0:
        return np.zeros(x.shape, dtype=np.float32)
    return (x / peak).astype(np.float32)


def removal_order(relevance_map: np.ndarray) -> np.ndarray:
    """Row-major pixel indices, most relevant first, ties to the lower index."""
    return np.argsort(-np.asarray(relevance_map).ravel(), kind="stable")


def step_counts(pixels: int, steps: int) -> list[int]:
    """n_k = round(k * pixels / steps) for k = 0..steps (Python's round: half to even)."""
    return [round(k * pixels / steps) for k in range(steps + 1)]


def forwards(rows: int, options: Faithfulness) -> int:
    """The bound on the forwards one request's checks may run (``check_work``)."""
    return rows * (1 + 2 * (options.steps + 1))


def faithfulness(
    runner: ModelRunner,
    x: np.ndarray,
    maps: Sequence[np.ndarray],
    targets: Sequence[int],
    card: ModelCard,
    options: Faithfulness,
) -> list[dict[str, Any]]:
    """The asked checks for each row: ``x`` (R, C, H, W) NCHW preprocessed rows, ``maps`` one
    (H, W) map per row at the input resolution (any scale; :func:`relevance` is applied),
    ``targets`` the class of each row. Returns per row a dict with the keys of the asked
    checks: ``confidence_drop`` and ``masked_probability``; ``deletion_auc`` and
    ``deletion_curve``; ``insertion_auc`` and ``insertion_curve`` (steps + 1 floats)."""
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"expected NCHW rows (R, C, H, W), got shape {x.shape}")
    rows, channels, h, w = x.shape
    if len(maps) != rows or len(targets) != rows:
        raise ValueError(f"{len(maps)} maps and {len(targets)} targets for {rows} rows")
    checks = set(options.checks)
    steps = int(options.steps)
    curves = bool(checks & {"deletion", "insertion"})
    counts = step_counts(h * w, steps)
    middle = steps - 1  # deletion/insertion steps that are neither x nor the baseline

    # per row: x, [x * M], [baseline, deletion 1..steps-1, insertion 1..steps-1]
    masked_at = 1 if "confidence_drop" in checks else None
    base_at = 1 + (masked_at is not None)
    deletion_at = base_at + 1
    insertion_at = deletion_at + (middle if "deletion" in checks else 0)
    per_row = insertion_at + (middle if "insertion" in checks else 0) if curves else base_at
    batch = np.empty((rows, per_row, channels, h, w), dtype=np.float32)
    baseline = gaussian_blur(x, BLUR_SIGMA) if options.baseline == "blur" else np.zeros_like(x)
    for r in range(rows):
        m = relevance(maps[r])
        if m.shape != (h, w):
            raise ValueError(f"map {r} is {m.shape}, the input is {(h, w)}")
        batch[r, 0] = x[r]
        if masked_at is not None:
            np.multiply(x[r], m[None], out=batch[r, masked_at])
        if not curves:
            continue
        batch[r, base_at] = baseline[r]
        # rank[i] = place of pixel i in the removal order: removed at step k iff rank < n_k
        rank = np.empty(h * w, dtype=np.intp)
        rank[removal_order(m)] = np.arange(h * w)
        rank = rank.reshape(h, w)
        for j, k in enumerate(range(1, steps)):
            gone = (rank < counts[k])[None]
            if "deletion" in checks:
                np.copyto(batch[r, deletion_at + j], np.where(gone, baseline[r], x[r]))
            if "insertion" in checks:
                np.copyto(batch[r, insertion_at + j], np.where(gone, x[r], baseline[r]))

    scores, _ = runner.forward(batch.reshape(rows * per_row, channels, h, w), (), BATCH_SIZE)
    probs = probabilities(np.asarray(scores), card).reshape(rows, per_row, -1)

    out = []
    for r in range(rows):
        p = probs[r, :, int(targets[r])]
        result: dict[str, Any] = {}
        if masked_at is not None:
            p_x, p_masked = float(p[0]), float(p[masked_at])
            result["masked_probability"] = p_masked
            result["confidence_drop"] = (p_x - p_masked) / p_x if p_x > 0.0 else None
        if "deletion" in checks:
            curve = [p[0], *p[deletion_at : deletion_at + middle], p[base_at]]
            result["deletion_curve"] = [float(v) for v in curve]
            result["deletion_auc"] = auc(result["deletion_curve"])
        if "insertion" in checks:
            curve = [p[base_at], *p[insertion_at : insertion_at + middle], p[0]]
            result["insertion_curve"] = [float(v) for v in curve]
            result["insertion_auc"] = auc(result["insertion_curve"])
        out.append(result)
    return out


def auc(curve: Sequence[float]) -> float:
    """Trapezoid area of a curve sampled at k / steps, k = 0..steps, over [0, 1]."""
    steps = len(curve) - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return float((sum(curve) - (curve[0] + curve[-1]) / 2.0) / steps)
