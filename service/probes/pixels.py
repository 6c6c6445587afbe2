"""The preprocessing as a linear map of the posted pixels, and its adjoint.

``service.imaging.preprocess`` turns an RGB image ``u`` (H, W, 3) into the model's input
``x`` (C, h, w): colour conversion, Pillow's bilinear resize (antialiased when shrinking),
the crop (zero padding where it is larger than the resized image), then
``(x * scale - mean) / std``. Up to the rounding of Pillow's 8-bit passes every step is linear
in the pixels, so the whole path is

    x[c] = (Ry @ (sum_k K[c, k] u[:, :, k]) @ Rx^T * scale - mean[c]) / std[c]

with ``Ry`` (h, H) and ``Rx`` (w, W) the resize-and-crop matrices of each axis and ``K`` the
colour conversion (identity for RGB, reversed for BGR, ITU-R 601-2 luma for L). The resize
matrices are Pillow's own filter, read by resizing one-hot rows of a float ("F") image, so the
adjoint is that of exactly the operation the service applies. A gradient at ``x`` becomes a
gradient at the posted pixels with :meth:`PixelMap.adjoint`; an attack therefore moves the
pixels the user sent (docs/probes.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from schemas.card import InputSpec
from service.imaging.preprocess import Geometry, plan_geometry

LUMA = np.array([0.299, 0.587, 0.114])  # Pillow's RGB -> L (ITU-R 601-2)
_ROWS = 256  # one-hot rows resized per Pillow call


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of Pillow's bilinear resize along one axis."""
    if n_in == n_out:
        return np.eye(n_out, dtype=np.float64)
    columns = []
    for start in range(0, n_in, _ROWS):
        stop = min(start + _ROWS, n_in)
        onehot = np.zeros((stop - start, n_in), dtype=np.float32)
        onehot[np.arange(stop - start), np.arange(start, stop)] = 1.0
        img = Image.fromarray(onehot, mode="F")  # width n_in, one row per input position
        out = np.asarray(img.resize((n_out, stop - start), Image.Resampling.BILINEAR))
        columns.append(out.astype(np.float64))
    return np.concatenate(columns, axis=0).T


def _cropped(matrix: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows ``start .. start + size`` of ``matrix``; rows outside it are zero (padding)."""
    out = np.zeros((size, matrix.shape[1]))
    rows = np.arange(start, start + size)
    inside = (rows >= 0) & (rows < matrix.shape[0])
    out[inside] = matrix[rows[inside]]
    return out


def colour_matrix(spec: InputSpec) -> np.ndarray:
    """(C, 3): the model's channels from R, G, B."""
    if spec.color == "L":
        return LUMA[None, :].copy()
    if spec.color == "BGR":
        return np.eye(3)[::-1].copy()
    return np.eye(3)


@dataclass(frozen=True)
class PixelMap:
    """The preprocessing of one image size as a linear map (see the module docstring)."""

    geometry: Geometry
    rows: np.ndarray  # (h, H)
    cols: np.ndarray  # (w, W)
    colour: np.ndarray  # (C, 3)
    gain: np.ndarray  # (C,) scale / std
    offset: np.ndarray  # (C,) mean / std

    @classmethod
    def plan(cls, size: tuple[int, int], spec: InputSpec) -> PixelMap:
        """The map for an RGB image of ``size`` (height, width) under ``spec``."""
        geometry = plan_geometry(size, spec)
        (height, width), (rh, rw) = size, geometry.resized_size
        left, top, right, bottom = geometry.crop_box
        rows = _cropped(resize_matrix(height, rh), top, bottom - top)
        cols = _cropped(resize_matrix(width, rw), left, right - left)
        colour = colour_matrix(spec)
        channels = colour.shape[0]
        mean = np.broadcast_to(np.asarray(spec.mean, dtype=np.float64), (channels,))
        std = np.broadcast_to(np.asarray(spec.std, dtype=np.float64), (channels,))
        return cls(geometry, rows, cols, colour, spec.scale / std, mean / std)

    def forward(self, u: np.ndarray) -> np.ndarray:
        """RGB pixels (H, W, 3), any real values -> the model input (C, h, w), float32."""
        mixed = np.einsum("ck,hwk->chw", self.colour, np.asarray(u, dtype=np.float64))
        resized = self.rows @ mixed @ self.cols.T
        x = resized * self.gain[:, None, None] - self.offset[:, None, None]
        return x.astype(np.float32)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """A gradient at the model input (C, h, w) -> the gradient at the pixels (H, W, 3)."""
        scaled = np.asarray(g, dtype=np.float64) * self.gain[:, None, None]
        spread = self.rows.T @ scaled @ self.cols
        return np.einsum("ck,chw->hwk", self.colour, spread)
