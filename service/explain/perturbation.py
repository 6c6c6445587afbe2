"""Perturbation methods: Score-CAM, Ablation-CAM and occlusion, batched through onnxruntime.

Score-CAM and Ablation-CAM give one (R, h, w) map per layer (CAM kind, at layer resolution);
occlusion gives an (R, 1, H, W) attribution at input resolution.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from models_store.errors import ProblemError
from service.runtime.runner import ModelRunner

from .cam import FUSION, _weighted, resize_align_corners
from .registry import (
    PERTURBATION_BATCH,
    MethodOutput,
    Option,
    choice,
    integer,
    number,
    pair,
    register,
)
from .targets import distinct_rows, resolve_ranks

MASK_EPS = 1e-8  # pytorch-grad-cam's, in the per-channel min-max of Score-CAM masks


def _softmax(s: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _channels(a: np.ndarray, max_channels: int | None) -> np.ndarray:
    """Indices of the channels to perturb for one row: all, or the ``max_channels`` with the
    largest spatial mean activation (the others get weight 0)."""
    k = a.shape[0]
    if max_channels is None or max_channels >= k:
        return np.arange(k)
    means = a.reshape(k, -1).mean(axis=1)
    return np.sort(np.argsort(-means, kind="stable")[:max_channels])


def _batches(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@register(
    "scorecam",
    "perturbation",
    {
        "batch_size": PERTURBATION_BATCH,
        "fusion": FUSION,
        "score": Option(
            "logit",
            choice("logit", "logit_minus_baseline", "probability"),
            "what is scored for each masked input (see docs/methods.md)",
        ),
        "max_channels": Option(
            None,
            integer(1, 1_000_000),
            "perturb only the channels with the largest mean activation",
        ),
    },
    ranked=True,
)
def scorecam(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Score-CAM (Wang et al. 2020): each A_k upsampled to the input (bilinear, aligned
    corners), min-maxed to [0, 1] into M_k; S_k = score(X * M_k); w = softmax_k(S_k) for
    ``score: logit`` (pytorch-grad-cam); softmax_k of class probabilities for
    ``probability``; S_k - S(zeros) without softmax for ``logit_minus_baseline``."""
    bs = options["batch_size"]
    unique, of_row = distinct_rows(x)  # the masked runs score every class: once per image
    scores, acts = runner.forward(unique, extra=layers, batch_size=bs)
    classes = resolve_ranks(targets, scores[of_row])
    size = (x.shape[2], x.shape[3])
    mode = options["score"]
    base = None
    if mode == "logit_minus_baseline":
        base = runner.forward(np.zeros_like(x[:1]))[0][0]
    maps = []
    for a in acts:
        weights = np.zeros((len(x), a.shape[1]), dtype=np.float64)
        for u in range(len(unique)):
            channels = _channels(a[u], options["max_channels"])
            up = resize_align_corners(a[u, channels].astype(np.float64), size)
            lo = up.min(axis=(1, 2), keepdims=True)
            hi = up.max(axis=(1, 2), keepdims=True)
            masks = ((up - lo) / (hi - lo + MASK_EPS)).astype(np.float32)
            # A constant channel (ReLU-dead ones: ~65% of EfficientNet-Lite0's last layer on
            # a photo) has an all-zero mask, so its masked input is all zeros: score it once.
            constant = (hi - lo).reshape(-1) == 0
            varying = np.flatnonzero(~constant)
            logits = np.empty((len(channels), scores.shape[1]), dtype=np.float64)
            for sl in _batches(len(varying), bs):
                batch = unique[u][None] * masks[varying[sl], None]
                logits[varying[sl]] = runner.forward(batch)[0]
            if constant.any():
                logits[constant] = runner.forward(np.zeros_like(unique[u][None]))[0][0]
            for r in np.flatnonzero(of_row == u):
                c = classes[r]
                if mode == "logit":
                    w = _softmax(logits[:, c])
                elif mode == "probability":
                    w = _softmax(_softmax(logits, axis=1)[:, c])
                else:
                    assert base is not None
                    w = logits[:, c] - base[c]
                weights[r, channels] = w
        maps.append(_weighted(weights, a[of_row].astype(np.float64)).astype(np.float32))
    return MethodOutput("perturbation", maps, scores[of_row], targets=classes)


@register(
    "ablationcam",
    "perturbation",
    {
        "batch_size": PERTURBATION_BATCH,
        "fusion": FUSION,
        "max_channels": Option(
            None, integer(1, 1_000_000), "ablate only the channels with the largest mean activation"
        ),
    },
    ranked=True,
)
def ablationcam(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Ablation-CAM (Desai & Ramaswamy 2020): w_k = (S - S_without_k) / S, channel k set to
    zero at the layer. Only the head (layer -> score) is re-run when the graph can be cut at
    the layer; otherwise the full forward with the layer multiplied by a channel mask."""
    bs = options["batch_size"]
    unique, of_row = distinct_rows(x)  # the ablated runs score every class: once per image
    scores, acts = runner.forward(unique, extra=layers, batch_size=bs)
    classes = resolve_ranks(targets, scores[of_row])
    maps = []
    for layer, a in zip(layers, acts, strict=False):
        split = runner.can_split(layer)
        weights = np.zeros((len(x), a.shape[1]), dtype=np.float64)
        for u in range(len(unique)):
            channels = _channels(a[u], options["max_channels"])
            # zeroing an all-zero channel changes nothing, and its map contribution is
            # w_k * A_k = 0 whatever w_k: only the live channels are run
            channels = channels[a[u, channels].reshape(len(channels), -1).any(axis=1)]
            if not len(channels):  # every channel is dead: the map is zero
                continue
            ablated = []
            for sl in _batches(len(channels), bs):
                chosen = channels[sl]
                if split:
                    batch = np.repeat(a[u][None], len(chosen), axis=0)
                    batch[np.arange(len(chosen)), chosen] = 0.0
                    ablated.append(runner.forward_from(layer, batch))
                else:
                    mask = np.ones((len(chosen), a.shape[1], 1, 1), dtype=np.float32)
                    mask[np.arange(len(chosen)), chosen] = 0.0
                    xs = np.repeat(unique[u][None], len(chosen), axis=0)
                    ablated.append(runner.forward_masked(xs, layer, mask))
            ablated_scores = np.concatenate(ablated).astype(np.float64)  # (channels, classes)
            for r in np.flatnonzero(of_row == u):
                c = classes[r]
                original = float(scores[u, c])
                drop = original - ablated_scores[:, c]
                weights[r, channels] = drop / original if original != 0 else drop
        maps.append(_weighted(weights, a[of_row].astype(np.float64)).astype(np.float32))
    return MethodOutput("perturbation", maps, scores[of_row], targets=classes)


@register(
    "occlusion",
    "perturbation",
    {
        "batch_size": PERTURBATION_BATCH,
        "window": Option(16, pair(1, 4096), "occluding window, pixels: int or [h, w]"),
        "stride": Option(8, pair(1, 4096), "window step, pixels: int or [h, w]"),
        "baseline": Option(0.0, number(-1e6, 1e6), "value written into the window, in model space"),
    },
    uses_layers=False,
    picture="signed",
)
def occlusion(
    runner: ModelRunner,
    x: np.ndarray,
    targets: Sequence[int],
    layers: Sequence[str],
    options: dict[str, Any],
) -> MethodOutput:
    """Occlusion (Zeiler & Fergus 2014): S(X) - S(X with the window, across all channels,
    set to ``baseline``), averaged over the windows covering each pixel (0 where none)."""
    (wh, ww), (sh, sw) = options["window"], options["stride"]
    _, _, h, w = x.shape
    if wh > h or ww > w:
        raise ProblemError(f"options.window {[wh, ww]} must fit in the input ({h}x{w} pixels)")
    bs = options["batch_size"]
    scores, _ = runner.forward(x, batch_size=bs)
    tops = range(0, h - wh + 1, sh)
    lefts = range(0, w - ww + 1, sw)
    positions = [(t, lf) for t in tops for lf in lefts]
    count = np.zeros((h, w), dtype=np.float64)
    for t, lf in positions:
        count[t : t + wh, lf : lf + ww] += 1.0
    out = np.zeros((x.shape[0], 1, h, w), dtype=np.float64)
    for r in range(x.shape[0]):
        c = targets[r]
        total = np.zeros((h, w), dtype=np.float64)
        for sl in _batches(len(positions), bs):
            chunk = positions[sl]
            batch = np.repeat(x[r][None], len(chunk), axis=0)
            for i, (t, lf) in enumerate(chunk):
                batch[i, :, t : t + wh, lf : lf + ww] = options["baseline"]
            drops = float(scores[r, c]) - runner.forward(batch)[0][:, c].astype(np.float64)
            for d, (t, lf) in zip(drops, chunk, strict=False):
                total[t : t + wh, lf : lf + ww] += d
        out[r, 0] = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return MethodOutput(
        "perturbation",
        [out.astype(np.float32)],
        scores,
        {"windows": len(positions)},
        resolution="input",
    )
