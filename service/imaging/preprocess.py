"""Decoded images -> the model's input tensor, plus the geometry to map results back.

The pipeline reproduces torchvision's PIL path exactly, so a card written for a torchvision
model feeds the ONNX export the same tensor (tests check 1e-6 parity):

* ``stretch``: ``Resize((height, width))``.
* ``center_crop``: ``Resize(resize_shorter)`` (shorter side to that length, the longer one
  ``int(resize_shorter * long / short)``) then ``CenterCrop((height, width))`` with offsets
  ``int(round((size - crop) / 2.0))`` (Python's round-half-even) and zero padding where the crop
  is larger than the resized image. ``resize_shorter: null`` means ``max(height, width)`` so
  the crop always fits (equal to the crop size for the usual square crops).
* Resampling: Pillow's bilinear filter (``Image.resize(..., BILINEAR)``, which antialiases when
  shrinking) — the filter torchvision's ``Resize`` uses on PIL images.
* Values: colour conversion (RGB, BGR = reversed RGB, or L = ITU-R 601-2 luma) first, then
  ``x * scale`` and ``(x - mean) / std`` in float32, ``mean``/``std`` in the model's channel
  order.

Geometry convention: a map at the model's input size covers the crop box of the resized
image. :func:`to_original` samples it at every original pixel centre (half-pixel mapping, the
same centres Pillow and OpenCV use), bilinearly, with edge values replicated up to half a pixel
outside the map; original pixels that the crop cut away get ``fill`` (default 0.0, i.e. "no
attribution", so maps stay NaN-free for colouring and statistics; pass ``np.nan`` to tell
"outside" from "zero").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from schemas.card import InputSpec
from service.imaging.decode import to_8bit
from service.imaging.render import Taps, separable_resize

__all__ = [
    "Geometry",
    "box_to_input",
    "box_to_original",
    "input_window",
    "plan_geometry",
    "preprocess",
    "preprocess_with_geometry",
    "scale_box",
    "to_original",
]


@dataclass(frozen=True)
class Geometry:
    """Where the model's input window lies on one original image.

    Sizes are (height, width); ``crop_box`` is ``(left, top, right, bottom)`` in the resized
    image's pixels and may extend past it (zero padding) when the crop is larger.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    crop_box: tuple[int, int, int, int]

    @property
    def input_size(self) -> tuple[int, int]:
        left, top, right, bottom = self.crop_box
        return (bottom - top, right - left)


def _shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    # torchvision's _compute_resized_output_size for an int size: long side truncated.
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def _crop_offset(size: int, crop: int) -> int:
    if crop > size:  # torchvision pads (crop - size) // 2 before, the rest after
        return -((crop - size) // 2)
    return round((size - crop) / 2.0)  # Python's round: half to even, as torchvision


def plan_geometry(original_size: tuple[int, int], spec: InputSpec) -> Geometry:
    """The resize and crop ``spec`` applies to an image of ``original_size`` (height, width)."""
    height, width = original_size
    if spec.resize == "stretch":
        return Geometry(
            original_size=(height, width),
            resized_size=(spec.height, spec.width),
            crop_box=(0, 0, spec.width, spec.height),
        )
    shorter = spec.resize_shorter or max(spec.height, spec.width)
    rh, rw = _shorter_side_size(height, width, shorter)
    top = _crop_offset(rh, spec.height)
    left = _crop_offset(rw, spec.width)
    return Geometry(
        original_size=(height, width),
        resized_size=(rh, rw),
        crop_box=(left, top, left + spec.width, top + spec.height),
    )


def input_window(img: Image.Image, geometry: Geometry) -> Image.Image:
    """The part of ``img`` the model sees, at the model's input size (for overlays)."""
    return _resize_and_crop(img, geometry)


def _resize_and_crop(img: Image.Image, geometry: Geometry) -> Image.Image:
    rh, rw = geometry.resized_size
    if img.size != (rw, rh):
        img = img.resize((rw, rh), Image.Resampling.BILINEAR)
    if geometry.crop_box != (0, 0, rw, rh):
        img = img.crop(geometry.crop_box)  # areas outside the image come back as 0
    return img


def _per_channel(values: Sequence[float], channels: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    return np.broadcast_to(arr, (channels,)) if arr.size == 1 else arr


def preprocess_with_geometry(
    images: Sequence[Image.Image], spec: InputSpec
) -> tuple[np.ndarray, list[Geometry]]:
    """:func:`preprocess` that also returns each image's :class:`Geometry`."""
    if not images:
        raise ValueError("preprocess needs at least one image")
    mode: Literal["RGB", "L"] = "L" if spec.color == "L" else "RGB"
    mean = _per_channel(spec.mean, spec.channels)
    std = _per_channel(spec.std, spec.channels)
    scale = np.float32(spec.scale)
    batch = np.empty((len(images), spec.height, spec.width, spec.channels), dtype=np.float32)
    geometries = []
    for i, image in enumerate(images):
        img = image if image.mode == mode else to_8bit(image, mode)
        geometry = plan_geometry((img.height, img.width), spec)
        pixels = np.asarray(_resize_and_crop(img, geometry), dtype=np.uint8)
        if mode == "L":
            pixels = pixels[:, :, None]
        elif spec.color == "BGR":
            pixels = pixels[:, :, ::-1]
        batch[i] = (pixels.astype(np.float32) * scale - mean) / std
        geometries.append(geometry)
    if spec.layout != "NHWC":  # NCHW, or auto: resolving it needs the graph (service.pipeline)
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return batch, geometries


def preprocess(images: Sequence[Image.Image], spec: InputSpec) -> np.ndarray:
    """Images -> float32 (N, C, H, W) or (N, H, W, C) per ``spec.layout`` (``auto``, which
    only the graph can resolve, gives NCHW; service.pipeline.layout passes the resolved one)."""
    return preprocess_with_geometry(images, spec)[0]


def _axis_taps(
    n_out: int, n_orig_resized: float, n_orig: int, offset: int, n_map: int
) -> tuple[Taps, np.ndarray]:
    """Two-tap bilinear weights from map samples to original pixels, and a validity mask.

    Original pixel i has its centre at resized coordinate (i + 0.5) * resized / original - 0.5,
    which is map coordinate that minus ``offset`` (the crop's start); more than half a map
    pixel outside the map, it is "outside".
    """
    pos = (np.arange(n_out) + 0.5) * (n_orig_resized / n_orig) - 0.5 - offset
    inside = (pos >= -0.5) & (pos <= n_map - 0.5)
    pos = np.clip(pos, 0.0, n_map - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n_map - 1)
    return (lo, hi, pos - lo), inside


def to_original(map_hw: np.ndarray, geometry: Geometry, fill: float = 0.0) -> np.ndarray:
    """A map at the model's input size (h, w) -> float32 map on the original image's grid.

    Separable two-tap interpolation in float32, rows then column blocks: ~90 ms for a
    224x224 map on a 12-megapixel photo (bench/render_bench.py)."""
    m = np.asarray(map_hw, dtype=np.float32)
    if m.shape[:2] != geometry.input_size:
        raise ValueError(f"map is {m.shape[:2]}, expected the input size {geometry.input_size}")
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box
    ty, inside_y = _axis_taps(oh, rh, oh, top, m.shape[0])
    tx, inside_x = _axis_taps(ow, rw, ow, left, m.shape[1])
    out = separable_resize(m, ty, tx, np.float32)
    out[~inside_y] = fill
    out[:, ~inside_x] = fill
    return out


def window_mask(geometry: Geometry) -> np.ndarray:
    """(H, W) bool on the original image: True where :func:`to_original` samples the map,
    False where it writes ``fill`` (outside the model's input window)."""
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box
    h, w = geometry.input_size
    _, inside_y = _axis_taps(oh, rh, oh, top, h)
    _, inside_x = _axis_taps(ow, rw, ow, left, w)
    return inside_y[:, None] & inside_x[None, :]


def box_to_input(box: Sequence[float], geometry: Geometry) -> tuple[float, float, float, float]:
    """An ``[x0, y0, x1, y1]`` box in original pixels -> the same box in input-map pixels.

    Edges are continuous coordinates (pixel i spans [i, i + 1)); the result is clipped to the
    input window, so a box entirely outside it comes back empty (x0 == x1 or y0 == y1).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {list(box)} must have x0 <= x1 and y0 <= y1")
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box
    h, w = geometry.input_size
    sx, sy = rw / ow, rh / oh

    def clip(v: float, hi: int) -> float:
        return float(min(max(v, 0.0), hi))

    return (
        clip(x0 * sx - left, w),
        clip(y0 * sy - top, h),
        clip(x1 * sx - left, w),
        clip(y1 * sy - top, h),
    )


def box_to_original(box: Sequence[float], geometry: Geometry) -> tuple[float, float, float, float]:
    """An ``[x0, y0, x1, y1]`` box in input-map pixels -> the same box in original pixels: the
    inverse of :func:`box_to_input` (``x_orig = (x_in + left) * original / resized``), clipped
    to the original image (a center_crop larger than the resized image pads outside it)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {list(box)} must have x0 <= x1 and y0 <= y1")
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box
    sx, sy = ow / rw, oh / rh

    def clip(v: float, hi: int) -> float:
        return float(min(max(v, 0.0), hi))

    return (
        clip((x0 + left) * sx, ow),
        clip((y0 + top) * sy, oh),
        clip((x1 + left) * sx, ow),
        clip((y1 + top) * sy, oh),
    )


def scale_box(
    box: Sequence[float], from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Rescale an ``[x0, y0, x1, y1]`` box between two grids covering the same area, e.g. from
    the input map (``geometry.input_size``) to a layer's (h, w) feature map."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
