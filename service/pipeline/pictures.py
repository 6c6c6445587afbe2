"""One result's pictures: the heatmap and the overlay PNGs, from its finished map.

The single place a rendering request turns into pixels, in one pass: where the pictures lie
(the posted photo's grid for ``size`` auto/original, the model's window otherwise), what
colours the map gets (``view``), how it meets the photo (``opacity``, ``outline``), and what
lies outside the model's window (dimmed photo, transparent heatmap).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models_store.errors import ProblemError
from schemas.explain import Render
from service.imaging import views
from service.imaging.colormaps import colormap_table
from service.imaging.decode import to_8bit
from service.imaging.preprocess import Geometry, input_window, to_original, window_mask
from service.imaging.render import (
    encode_colormapped_png,
    encode_png,
    overlay_map,
    resize_map,
    unit_interval,
)

# rgb view: each channel's scale is this percentile of |g_c| when the map is percentile-
# normalised, its maximum otherwise
RGB_HIGH_PERCENTILE = 99.0


@dataclass
class Pictures:
    heatmap: bytes | None = None
    overlay: bytes | None = None


def on_photo(render: Render) -> bool:
    """Pictures on the posted image's grid (``size`` auto or original)."""
    return render.size in ("auto", "original")


def render_pictures(
    window_map: np.ndarray,
    attribution: np.ndarray | None,
    image: Image.Image,
    geometry: Geometry,
    render: Render,
    wanted: Set[str],
    *,
    bgr: bool = False,
) -> Pictures:
    """``window_map``: the finished 2-D map over the model's window (input or feature size);
    ``attribution``: the method's (C, H, W) input attribution (None for CAM-like maps), for
    ``view: rgb``. ``render`` has every default filled in (heatmaps.resolve_render)."""
    out = Pictures()
    if not wanted & {"heatmap", "overlay"}:
        return out
    assert render.polarity is not None and render.colormap is not None
    assert render.alpha is not None
    feature = render.size == "feature"
    unit = unit_interval(window_map, render.polarity)
    rgb = None
    if render.view == "rgb":
        if attribution is None or attribution.ndim != 3 or attribution.shape[0] != 3:
            raise ProblemError(
                "render.view=rgb needs a gradient method on a 3-channel input (the picture is"
                " the gradient image itself); use view=colormap"
            )
        high = RGB_HIGH_PERCENTILE if render.normalize == "percentile" else None
        rgb = views.rgb_gradient(attribution, high, bgr=bgr)

    inside = None
    if on_photo(render):
        unit = to_original(unit, geometry, fill=0.0)
        if rgb is not None:
            rgb = to_original(rgb, geometry, fill=0.5)
        inside = window_mask(geometry)  # no second resize: the same masks
        if inside.all():
            inside = None
    plain = render.view == "colormap" and inside is None
    if "heatmap" in wanted:
        if plain:  # the fast path: a palette PNG of the map's colours
            out.heatmap = encode_colormapped_png(unit, render.colormap)
        else:
            heat = _colours(unit, rgb, render)
            out.heatmap = encode_png(heat if inside is None else views.heat_rgba(heat, inside))
    if "overlay" not in wanted:
        return out

    rgb_image = to_8bit(image, "RGB")
    photo = np.asarray(rgb_image)
    backdrop = photo if on_photo(render) else np.asarray(input_window(rgb_image, geometry))
    if feature:  # blocks of the layer's cells over the input window
        unit = resize_map(unit, backdrop.shape[:2], "nearest")
    if render.view == "outline":
        reference = _reference(window_map, unit, render.polarity)
        region = views.top_region(unit, render.outline_percent, reference)
        colour = colormap_table(render.colormap)[255]
        width = max(1, round(min(backdrop.shape[:2]) / 150))
        blended = views.outline(backdrop, region, colour, width)
    elif plain and render.opacity == "constant":  # the fast path: blended block by block
        blended = overlay_map(backdrop, unit, render.colormap, render.alpha)
    else:
        heat = _colours(unit, rgb, render)
        if render.opacity == "map":
            strength = np.abs(2.0 * unit - 1.0) if render.polarity == "both" else unit
        else:
            strength = np.ones(unit.shape, dtype=np.float32)
        blended = views.blend_weighted(backdrop, heat, strength, render.alpha)
    if inside is not None:
        blended[~inside] = photo[~inside] >> 1  # outside the window: the photo, dimmed
    out.overlay = encode_png(blended)
    return out


def _colours(unit: np.ndarray, rgb: np.ndarray | None, render: Render) -> np.ndarray:
    if rgb is not None:
        return views.to_uint8(rgb)
    assert render.colormap is not None
    return views.colormapped(unit, render.colormap)


def _reference(window_map: np.ndarray, unit: np.ndarray, polarity: str) -> np.ndarray | None:
    """The outline's percentile is taken over the model's window only (not the border the
    photo grid adds around it): the window map, brought to colormap positions."""
    if window_map.shape == unit.shape:
        return None
    return unit_interval(window_map, polarity)  # type: ignore[arg-type]
