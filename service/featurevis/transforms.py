"""Random transformations applied to the image at every step, each with its exact adjoint.

Transformation robustness (Olah et al. 2017): the objective is optimised for the image as
seen through a random small pad, jitter, scale and rotation, so what survives is a pattern,
not adversarial pixel noise. Each transform maps a (B, C, H, W) array to another and returns,
with its output, the adjoint of that (linear, or affine) map for the gradient; the dot-product
test <T x, y> = <x, T* y> holds for each (tests/featurevis/test_transforms.py).

Lucid's ``standard_transforms``: pad 12 (constant 0.5), jitter 8, scale 0.9..1.1 (in steps
of 0.02), rotate -10..10 degrees (0 five times more often), jitter 4; then a bilinear resize
(align_corners) to the model's input size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Adjoint = Callable[[np.ndarray], np.ndarray]


class Transform:
    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        raise NotImplementedError


@dataclass(frozen=True)
class Pad(Transform):
    """Pad ``width`` pixels each side with ``value`` (an affine map; its adjoint crops)."""

    width: int
    value: float = 0.5

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        n = self.width
        if n <= 0:
            return x, lambda g: g
        pads = [(0, 0)] * (x.ndim - 2) + [(n, n), (n, n)]
        y = np.pad(x, pads, mode="constant", constant_values=self.value)
        return y, lambda g: g[..., n:-n, n:-n]


@dataclass(frozen=True)
class Jitter(Transform):
    """Crop ``d`` pixels off in total, at a random integer offset in [0, d) on each axis."""

    d: int

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        d = self.d
        if d <= 0:
            return x, lambda g: g
        h, w = x.shape[-2:]
        oy, ox = (int(v) for v in rng.integers(0, d, size=2))
        y = x[..., oy : oy + h - d, ox : ox + w - d]

        def adjoint(g: np.ndarray) -> np.ndarray:
            out = np.zeros(x.shape, dtype=g.dtype)
            out[..., oy : oy + h - d, ox : ox + w - d] = g
            return out

        return y, adjoint


@functools.lru_cache(maxsize=256)
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of 1-D linear interpolation with aligned corners (cached:
    do not modify)."""
    m = np.zeros((n_out, n_in))
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    pos = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    rows = np.arange(n_out)
    m[rows, lo] = 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def resize(x: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Adjoint]:
    """Bilinear resize (align_corners=True) as two matrix products, and its adjoint."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x, lambda g: g
    ry, rx = _matrix(h, size[0], x.dtype), _matrix(w, size[1], x.dtype)
    return _separable(x, ry, rx), lambda g: _separable(g, ry.T, rx.T)


@functools.lru_cache(maxsize=256)
def _matrix(n_in: int, n_out: int, dtype: np.dtype) -> np.ndarray:
    """resize_matrix in the working precision (float32 images stay float32)."""
    return resize_matrix(n_in, n_out).astype(dtype if dtype == np.float32 else np.float64)


def _separable(x: np.ndarray, ry: np.ndarray, rx: np.ndarray) -> np.ndarray:
    """ry @ x @ rx.T on the last two axes, as two large matrix products."""
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    n = int(np.prod(lead))
    t = (x.reshape(n * h, w) @ rx.T).reshape(n, h, -1)  # (n, h, wo)
    t = ry @ t.transpose(1, 0, 2).reshape(h, -1)  # (ho, n * wo)
    return t.reshape(ry.shape[0], n, -1).transpose(1, 0, 2).reshape(*lead, ry.shape[0], -1)


@dataclass(frozen=True)
class Resize(Transform):
    size: tuple[int, int]

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        return resize(x, self.size)


@dataclass(frozen=True)
class RandomScale(Transform):
    """Resize by a factor drawn from ``scales`` (bilinear, aligned corners; the new size
    rounded up), then zero-pad back by ceil((old - new) / 2) each side where it shrank."""

    scales: tuple[float, ...]

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        s = float(self.scales[int(rng.integers(len(self.scales)))])
        h, w = x.shape[-2:]
        nh, nw = math.ceil(s * h), math.ceil(s * w)
        y, back = resize(x, (nh, nw))
        py, px = max(0, math.ceil((h - nh) / 2)), max(0, math.ceil((w - nw) / 2))
        if py == 0 and px == 0:
            return y, back
        pads = [(0, 0)] * (x.ndim - 2) + [(py, py), (px, px)]
        y = np.pad(y, pads)
        return y, lambda g: back(g[..., py : py + nh, px : px + nw])


def _bilinear(sy: np.ndarray, sx: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat source indices (4, n) and weights (4, n) of bilinear sampling at (sy, sx); corners
    outside the image get weight 0 (zero padding)."""
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    idx, wts = [], []
    for dy, dx, wt in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        yy = np.clip(yy, 0, h - 1).astype(np.int64)
        xx = np.clip(xx, 0, w - 1).astype(np.int64)
        idx.append((yy * w + xx).ravel())
        wts.append(np.where(inside, wt, 0.0).ravel())
    return np.stack(idx), np.stack(wts)


def rotation_sampling(h: int, w: int, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of each output pixel for a rotation by ``degrees`` (counter-clockwise
    as displayed) about the centre ((w - 1) / 2, (h - 1) / 2)."""
    a, b = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    return b * xx + a * yy + cy, a * xx - b * yy + cx


@functools.lru_cache(maxsize=128)
def _rotation_table(h: int, w: int, degrees: float) -> tuple[np.ndarray, ...]:
    sy, sx = rotation_sampling(h, w, degrees)
    return (sy, sx, *_bilinear(sy, sx, h, w))


def warp(
    x: np.ndarray,
    sy: np.ndarray,
    sx: np.ndarray,
    table: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, Adjoint]:
    """Bilinear sampling of ``x`` at (sy, sx) (zeros outside), and its adjoint; ``table`` is
    the precomputed ``_bilinear(sy, sx, h, w)``."""
    shape = x.shape
    h, w = shape[-2:]
    idx, wts = table if table is not None else _bilinear(sy, sx, h, w)
    flat = x.reshape(-1, h * w)
    if x.dtype == np.float32:
        wts = wts.astype(np.float32)
    y = np.einsum("kn,bkn->bn", wts, flat[:, idx]).reshape(*shape[:-2], *sy.shape)
    order = idx.ravel()

    def adjoint(g: np.ndarray) -> np.ndarray:
        rows = g.reshape(-1, sy.size)
        out = np.empty((rows.shape[0], h * w), dtype=x.dtype)
        for r in range(rows.shape[0]):
            out[r] = np.bincount(order, weights=(wts * rows[r]).ravel(), minlength=h * w)
        return out.reshape(shape)

    return y, adjoint


@dataclass(frozen=True)
class RandomRotate(Transform):
    """Rotate by an angle (degrees) drawn from ``angles``, bilinear, zeros outside."""

    angles: tuple[float, ...]

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Adjoint]:
        angle = float(self.angles[int(rng.integers(len(self.angles)))])
        if angle == 0:
            return x, lambda g: g
        h, w = x.shape[-2:]
        sy, sx, idx, wts = _rotation_table(h, w, angle)
        return warp(x, sy, sx, (idx, wts))


def standard(
    pad: int = 12,
    jitter: int = 8,
    scales: Sequence[float] | None = None,
    angles: Sequence[float] | None = None,
    jitter2: int = 4,
) -> list[Transform]:
    """Lucid's standard_transforms (module docstring)."""
    scales = tuple(scales) if scales is not None else tuple(1 + (i - 5) / 50 for i in range(11))
    angles = tuple(angles) if angles is not None else tuple(range(-10, 11)) + (0,) * 5
    out: list[Transform] = [Pad(pad), Jitter(jitter)]
    if scales:
        out.append(RandomScale(scales))
    if angles:
        out.append(RandomRotate(angles))
    out.append(Jitter(jitter2))
    return out


def compose(
    transforms: Sequence[Transform], x: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, Adjoint]:
    """Apply ``transforms`` in order; the adjoint applies theirs in reverse."""
    adjoints: list[Adjoint] = []
    for t in transforms:
        x, adj = t(x, rng)
        adjoints.append(adj)

    def adjoint(g: np.ndarray) -> np.ndarray:
        for adj in reversed(adjoints):
            g = adj(g)
        return g

    return x, adjoint
