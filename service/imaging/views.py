"""Picture views beyond "map through a colormap": opacity that follows the map, the RGB
gradient image, the outline of the top region, and what lies outside the model's window.

Conventions (docs/methods.md, "Rendering defaults"):

* ``blend_weighted``: ``round((1 - a) * image + a * heat)`` per pixel, ``a = alpha * w`` with
  ``w`` in [0, 1] (the map's strength), in float32: where the map is 0 the photo is untouched.
* ``rgb_gradient``: Springenberg et al.'s and Selvaraju et al.'s figures: each channel of a
  (3, H, W) gradient divided by twice its own scale (max or high percentile of ``|g_c|``), plus
  0.5, so zero is mid-grey and the hue says which colour channel the evidence is in.
* ``outline``: the border pixels of a boolean region (inside, but with a 4-neighbour outside
  it, ``width`` times over) painted one colour.
* ``dim``: outside the model's window a photo is shown at half brightness (``p >> 1``), not
  cut away and not painted with the colormap's zero colour.
"""

from __future__ import annotations

import numpy as np

from service.imaging.colormaps import colormap_index, colormap_table, row_blocks

__all__ = ["blend_weighted", "dim", "heat_rgba", "outline", "rgb_gradient", "top_region"]


def blend_weighted(
    image: np.ndarray, heat: np.ndarray, weight: np.ndarray, alpha: float
) -> np.ndarray:
    """uint8 HxWx3 ``image`` and ``heat``, ``weight`` HxW in [0, 1] -> the blended uint8 image."""
    if image.shape != heat.shape or weight.shape != image.shape[:2]:
        raise ValueError(f"blend needs matching sizes: {image.shape}, {heat.shape}, {weight.shape}")
    out = np.empty(image.shape, dtype=np.uint8)
    for rows in row_blocks(image.shape[0], image.shape[1] * 3):
        a = np.clip(np.asarray(weight[rows], dtype=np.float32), 0.0, 1.0)[..., None]
        a *= np.float32(alpha)
        img = image[rows].astype(np.float32)
        blend = img + a * (heat[rows].astype(np.float32) - img)
        out[rows] = np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)
    return out


def colormapped(unit: np.ndarray, colormap: str) -> np.ndarray:
    """A [0, 1] map -> uint8 HxWx3 through ``colormap``'s table."""
    return np.take(colormap_table(colormap), colormap_index(unit), axis=0)


def rgb_gradient(
    attribution: np.ndarray, high_percentile: float | None = None, *, bgr: bool = False
) -> np.ndarray:
    """A (3, H, W) gradient -> float32 (H, W, 3) in [0, 1], RGB order, zero at 0.5.

    ``high_percentile``: scale each channel by that percentile of ``|g_c|`` (clipping what
    lies beyond) instead of its maximum. ``bgr``: the model's channels are B, G, R."""
    g = np.nan_to_num(np.asarray(attribution, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if g.ndim != 3 or g.shape[0] != 3:
        raise ValueError(f"the RGB gradient view needs a (3, H, W) gradient, got {g.shape}")
    out = np.empty((g.shape[1], g.shape[2], 3), dtype=np.float32)
    for c in range(3):
        magnitude = np.abs(g[c])
        if high_percentile is None:
            scale = float(magnitude.max())
        else:
            scale = float(np.percentile(magnitude, high_percentile))
        out[..., c] = np.clip(0.5 + g[c] / (2.0 * scale + 1e-7), 0.0, 1.0)
    return out[..., ::-1].copy() if bgr else out


def to_uint8(unit_rgb: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by ``floor(255 x + 0.5)`` (NaN -> 0)."""
    x = np.nan_to_num(np.asarray(unit_rgb, dtype=np.float32), nan=0.0)
    return np.floor(np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def top_region(m: np.ndarray, percent: float, reference: np.ndarray | None = None) -> np.ndarray:
    """Pixels of ``m`` at or above the (100 - percent)th percentile of ``reference`` (default
    ``m``): the brightest ``percent`` % of the map. A constant map has no region."""
    ref = np.asarray(m if reference is None else reference, dtype=np.float32)
    if float(ref.max()) <= float(ref.min()):
        return np.zeros(np.shape(m), dtype=bool)
    threshold = float(np.percentile(ref, 100.0 - percent))
    return np.asarray(m) >= threshold


def outline(image: np.ndarray, region: np.ndarray, color: np.ndarray, width: int) -> np.ndarray:
    """``image`` with the border of ``region`` (HxW bool) painted ``color``, ``width`` px deep."""
    inner = region.copy()
    for _ in range(max(1, width)):  # erode by one 4-neighbour step per pass
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    out = np.array(image, dtype=np.uint8, copy=True)
    out[region & ~inner] = color
    return out


def dim(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``image`` (uint8 HxWx3) halved in brightness where ``inside`` (HxW bool) is False."""
    out = np.array(image, dtype=np.uint8, copy=True)
    out[~inside] >>= 1
    return out


def heat_rgba(heat: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 colours -> RGBA, transparent outside the window."""
    out = np.empty((*heat.shape[:2], 4), dtype=np.uint8)
    out[..., :3] = heat
    out[..., 3] = np.where(inside, 255, 0).astype(np.uint8)
    return out
