"""From a method's raw maps to what a client sees: one 2-D map per result, at the asked size.

CAM-like maps (one (h, w) map per layer) follow pytorch-grad-cam's order: ReLU, per-layer
min-max, upsample, fuse layers, normalise. Gradient-like maps (C, H, W) are reduced over
channels first (``render.reduce``), then signed per ``render.polarity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models_store.errors import ProblemError
from schemas.explain import Render
from service.explain.cam import fuse_maps
from service.explain.registry import Picture, get_method
from service.imaging.render import (
    Normalize,
    Polarity,
    normalize,
    prepare_map,
    reduce_gradient,
    resize_map,
)

# What a null render field becomes, per the method's picture kind (docs/methods.md,
# "Rendering defaults"). Gradient magnitudes are heavy-tailed: min-max leaves a dark frame
# with a few specks, so they are clipped at the 99th percentile (Captum's visualiser drops the
# top 2%, Vertex AI clips at 99.9%; 99 keeps the faint structure visible on natural photos)
# and blended with an opacity that follows the map. Signed attributions keep their sign on a
# diverging colormap centred at zero, scaled by the 99th percentile of |map|.
PICTURE_DEFAULTS: dict[Picture, dict[str, Any]] = {
    "cam": {
        "normalize": "minmax",
        "colormap": "jet",
        "polarity": "positive",
        "opacity": "constant",
    },
    "magnitude": {
        "normalize": "percentile",
        "clip_percentiles": (0.0, 99.0),
        "colormap": "jet",
        "polarity": "positive",
        "opacity": "map",
    },
    "signed": {
        "normalize": "percentile",
        "clip_percentiles": (0.0, 99.0),
        "colormap": "coolwarm",
        "polarity": "both",
        "opacity": "map",
    },
}
# a map-following opacity leaves the photo untouched where the map is low, so its peak can
# be more opaque than a constant blend's without hiding the photo
ALPHA = {"constant": 0.5, "map": 0.8}
_DIVERGING_COLORMAP = "coolwarm"  # any map asked to be signed (polarity both) without a colormap


def resolve_render(render: Render, method: str) -> Render:
    """``render`` with every null field set to the method's default; explicit fields win.

    A CAM asked for ``polarity: both`` gets the diverging colormap too; ``clip_percentiles``
    is filled only where the normalisation is the default one (an explicit ``percentile``
    keeps the documented 1, 99)."""
    defaults = PICTURE_DEFAULTS[get_method(method).picture]
    fill: dict[str, Any] = {}
    for name in ("normalize", "polarity", "opacity"):
        if getattr(render, name) is None:
            fill[name] = defaults[name]
    polarity = fill.get("polarity", render.polarity)
    if render.colormap is None:
        fill["colormap"] = _DIVERGING_COLORMAP if polarity == "both" else defaults["colormap"]
    if render.alpha is None:
        opacity = fill.get("opacity", render.opacity)
        fill["alpha"] = ALPHA[str(opacity)]
    if render.clip_percentiles is None and render.normalize is None:
        fill["clip_percentiles"] = defaults.get("clip_percentiles")
    return render.model_copy(update=fill)


def signed(method: str) -> bool:
    """render.reduce = auto: signed sums for attributions that add up to a score difference
    (input x gradient, integrated gradients, occlusion), magnitude for the others."""
    return get_method(method).picture == "signed"


def fuse_cam_layers(
    maps: Sequence[np.ndarray], size: tuple[int, int], render: Render, fusion: str
) -> np.ndarray:
    """Per-layer (h, w) maps -> one (H, W) map: relu/polarity, min-max, resize, fuse."""
    normalize_mode, polarity = _filled(render)
    # one layer: keep the raw scale (normalize=none stays meaningful); several: scale each to
    # [0, 1] first so layers of different magnitudes count equally
    per_layer: Normalize = "none" if len(maps) == 1 else normalize_mode
    if polarity == "both":
        per_layer = normalize_mode  # the signed view is only defined after scaling
    scaled = []
    for m in maps:
        m = prepare_map(
            m,
            polarity=polarity,
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
        mode = "sum" if signed(method) else "abs_max"
    return reduce_gradient(attribution, mode)  # type: ignore[arg-type]


def finish(m: np.ndarray, render: Render, *, cam_like: bool) -> np.ndarray:
    """The final map the client receives: [0, 1], [-1, 1] with polarity both, or raw values
    with normalize=none."""
    normalize_mode, polarity = _filled(render)
    if cam_like:  # polarity and relu were applied before resizing, as pytorch-grad-cam does
        if polarity == "both":
            return m
        return normalize(m, normalize_mode, render.clip_percentiles)
    relu = polarity != "both"
    return prepare_map(
        m,
        polarity=polarity,
        relu=relu,
        normalize_mode=normalize_mode,
        clip_percentiles=render.clip_percentiles,
    )


def _filled(render: Render) -> tuple[Normalize, Polarity]:
    """normalize and polarity of a resolved render (resolve_render fills them)."""
    if render.normalize is None or render.polarity is None:
        raise ValueError("render defaults not resolved: call resolve_render first")
    return render.normalize, render.polarity
