"""Geometric transformations of an image, of a map and of a layer's grid, and their inverses.

A transformation is a 3x3 affine matrix ``T`` on continuous pixel coordinates of the model's
input (x right, y down, pixel ``i`` spanning ``[i, i + 1)``), taking a point of the original
to where it lands. :func:`warp` computes ``out(p) = in(T^-1 p)`` at every output pixel centre,
bilinearly; samples more than half a pixel outside the source are ``fill``. On a grid of
(h, w) cells over the same window (a layer's feature map) the same transformation is
``S T S^-1`` with ``S = diag(w / W, h / H)`` (:func:`on_grid`). Flips and whole-pixel shifts
land every centre on a centre, so they warp and map back exactly.
"""

from __future__ import annotations

import math

import numpy as np

from schemas.probes import Flip, Rotate, Scale, Shift


def matrix(t: Shift | Rotate | Scale | Flip, height: int, width: int) -> np.ndarray:
    """``T`` of one transformation on an image of ``height`` x ``width`` pixels."""
    cx, cy = width / 2.0, height / 2.0
    if isinstance(t, Shift):
        return np.array([[1.0, 0.0, t.dx], [0.0, 1.0, t.dy], [0.0, 0.0, 1.0]])
    if isinstance(t, Flip):
        if t.type == "hflip":
            return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        return np.array([[1.0, 0.0, 0.0], [0.0, -1.0, height], [0.0, 0.0, 1.0]])
    if isinstance(t, Rotate):  # counter-clockwise on screen (y points down)
        a = math.radians(t.degrees)
        c, s = math.cos(a), math.sin(a)
        linear = np.array([[c, s], [-s, c]])
    else:
        linear = np.eye(2) * t.factor
    centre = np.array([cx, cy])
    out = np.eye(3)
    out[:2, :2] = linear
    out[:2, 2] = centre - linear @ centre
    return out


def on_grid(t: np.ndarray, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """``T`` (for an image of ``size``) on a grid of ``grid`` cells over the same window."""
    s = np.diag([grid[1] / size[1], grid[0] / size[0], 1.0])
    return s @ t @ np.linalg.inv(s)


def exact(t: np.ndarray) -> bool:
    """Whether ``t`` maps pixel centres onto pixel centres (a flip or whole-pixel shift)."""
    linear, offset = t[:2, :2], t[:2, 2]
    signs = np.allclose(np.abs(linear), np.eye(2), atol=1e-9) and np.allclose(
        linear, np.diag(np.diag(linear)), atol=1e-9
    )
    # a flip x -> n - x sends centre i + 0.5 to n - i - 0.5: whole offsets keep centres
    return bool(signs and np.allclose(offset, np.round(offset), atol=1e-9))


def warp_hw(a: np.ndarray, t: np.ndarray, fill: float) -> np.ndarray:
    """Warp the leading (H, W) axes of ``a`` by ``t`` (trailing axes carried along)."""
    h, w = a.shape[:2]
    inverse = np.linalg.inv(t)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    sx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2] - 0.5
    sy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2] - 0.5
    # snap what is a whole sample up to rounding (flips, shifts, right angles)
    sx = np.where(np.abs(sx - np.rint(sx)) < 1e-9, np.rint(sx), sx)
    sy = np.where(np.abs(sy - np.rint(sy)) < 1e-9, np.rint(sy), sy)
    inside = (sx >= -0.5) & (sx <= w - 0.5) & (sy >= -0.5) & (sy <= h - 0.5)
    sx, sy = np.clip(sx, 0, w - 1), np.clip(sy, 0, h - 1)
    x0, y0 = np.floor(sx).astype(np.intp), np.floor(sy).astype(np.intp)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = sx - x0, sy - y0
    extra = (slice(None), slice(None)) + (None,) * (a.ndim - 2)
    fx, fy = fx[extra], fy[extra]
    top = a[y0, x0] * (1 - fx) + a[y0, x1] * fx
    bottom = a[y1, x0] * (1 - fx) + a[y1, x1] * fx
    out = top * (1 - fy) + bottom * fy
    out[~inside] = fill
    return out


def warp_image(rgb: np.ndarray, t: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 image transformed; uncovered pixels black."""
    return np.clip(np.rint(warp_hw(np.asarray(rgb, np.float64), t, 0.0)), 0, 255).astype(np.uint8)


def unwarp_channels(a: np.ndarray, t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (K, h, w) layer tensor of the transformed image mapped back onto the original's grid
    (``t`` for the image of ``size``); NaN where the original's cells were not covered."""
    grid_t = on_grid(t, size, (a.shape[1], a.shape[2]))
    back = warp_hw(np.moveaxis(np.asarray(a, np.float64), 0, -1), np.linalg.inv(grid_t), np.nan)
    return np.moveaxis(back, -1, 0)
