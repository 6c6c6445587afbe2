"""From a method's raw maps to what a client sees: one 2-D map per result, at the asked size.

CAM-like maps (one (h, w) map per layer) follow pytorch-grad-cam's order: ReLU, per-layer
min-max, upsample, fuse layers, normalise. Gradient-like maps (C, H, W) are reduced over
channels first (``render.reduce``), then signed per ``render.polarity``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models_store.errors import ProblemError
from schemas.explain import Render
from service.explain.cam import fuse_maps
from service.imaging.render import normalize, prepare_map, reduce_gradient, resize_map

# render.reduce = auto: magnitude for sign-free gradient maps, signed sums for attributions
# that add up to a score difference (input x gradient, integrated gradients, occlusion).
SIGNED_METHODS = {"inputxgradient", "integrated_gradients", "occlusion"}


def fuse_cam_layers(
    maps: Sequence[np.ndarray], size: tuple[int, int], render: Render, fusion: str
) -> np.ndarray:
    """Per-layer (h, w) maps -> one (H, W) map: relu/polarity, min-max, resize, fuse."""
    # one layer: keep the raw scale (normalize=none stays meaningful); several: scale each to
    # [0, 1] first so layers of different magnitudes count equally
    per_layer = "none" if len(maps) == 1 else render.normalize
    if render.polarity == "both":
        per_layer = render.normalize  # the diverging view is only defined after scaling
    scaled = []
    for m in maps:
        m = prepare_map(
            m,
            polarity=render.polarity,
            relu=render.relu,
            normalize_mode=per_layer,
            clip_percentiles=render.clip_percentiles,
        )
        scaled.append(resize_map(m, size, render.interpolation) if m.shape != size else m)
    if len(scaled) == 1:
        return scaled[0]
    try:
        return fuse_maps(scaled, fusion)
    except ValueError as exc:
        raise ProblemError(f"options.fusion: {exc}") from None


def gradient_map(attribution: np.ndarray, method: str, render: Render) -> np.ndarray:
    """A (C, H, W) attribution -> (H, W) per render.reduce (``none`` keeps (C, H, W))."""
    mode = render.reduce
    if mode == "auto":
        mode = "sum" if method in SIGNED_METHODS else "abs_max"
    return reduce_gradient(attribution, mode)  # type: ignore[arg-type]


def finish(m: np.ndarray, render: Render, *, cam_like: bool) -> np.ndarray:
    """The final [0, 1] (or raw, with normalize=none) map the client receives."""
    if cam_like:  # polarity and relu were applied before resizing, as pytorch-grad-cam does
        if render.polarity == "both":
            return m
        return normalize(m, render.normalize, render.clip_percentiles)
    relu = render.polarity != "both"
    return prepare_map(
        m,
        polarity=render.polarity,
        relu=relu,
        normalize_mode=render.normalize,
        clip_percentiles=render.clip_percentiles,
    )
