"""Grids of small images: activation maps (one tile per channel) and convolution kernels.

Layout: tiles of one size in ``columns`` columns, separated and framed by a 2 px gutter of
:data:`BACKGROUND`; optional label strip under each tile and a title row on top, written with
Pillow's built-in bitmap font (no font files, identical output everywhere).

Kernels (:func:`filter_mosaic`) are normalised symmetrically around 0 per output filter:
``0.5 + w / (2 max|w|)``, so a zero weight is always mid-gray (128) and excitatory and
inhibitory weights of equal size are equally far from it — per-kernel min-max would move
"zero" from filter to filter and hide the sign.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.errors import ProblemError
from service.imaging.colormaps import apply_colormap, colormap_table
from service.imaging.render import EPS, resize_map

__all__ = ["BACKGROUND", "GUTTER", "MAX_TILES", "filter_mosaic", "tile_grid"]

GUTTER = 2
BACKGROUND = (24, 24, 24)
TEXT = (230, 230, 230)
MAX_TILES = 4096


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    loader = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1: bitmap font
    return loader() if loader is not None else ImageFont.load_default()


def _text_height() -> int:
    bottom = _font().getbbox("Ag0123")[3]
    return int(bottom) + 2


def _fit_tile(tile: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    """Resize a tile: nearest when enlarging (keeps feature cells crisp), bilinear otherwise."""
    if tile.shape[:2] == tile_hw:
        return tile
    enlarging = tile.shape[0] <= tile_hw[0] and tile.shape[1] <= tile_hw[1]
    return resize_map(tile, tile_hw, "nearest" if enlarging else "bilinear")


def _tile_shape(first: np.ndarray, tile_size: int) -> tuple[int, int]:
    """Longer side = tile_size, aspect ratio of the first map kept."""
    h, w = first.shape[:2]
    if h >= w:
        return tile_size, max(1, round(tile_size * w / h))
    return max(1, round(tile_size * h / w)), tile_size


def _layout(
    tiles: Sequence[np.ndarray],
    columns: int,
    labels: Sequence[str] | None,
    title: str | None,
) -> np.ndarray:
    th, tw = tiles[0].shape[:2]
    cols = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    label_h = _text_height() if labels else 0
    title_h = _text_height() + GUTTER if title else 0
    width = GUTTER + cols * (tw + GUTTER)
    height = title_h + GUTTER + rows * (th + label_h + GUTTER)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y = title_h + GUTTER + r * (th + label_h + GUTTER)
        x = GUTTER + c * (tw + GUTTER)
        canvas[y : y + th, x : x + tw] = tile
    if not labels and not title:
        return canvas
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = _font()
    if title:
        draw.text((GUTTER, GUTTER), title, fill=TEXT, font=font)
    for i, label in enumerate(labels or ()):
        r, c = divmod(i, cols)
        y = title_h + GUTTER + r * (th + label_h + GUTTER) + th + 1
        x = GUTTER + c * (tw + GUTTER)
        draw.text((x, y), str(label), fill=TEXT, font=font)
    return np.asarray(image)


def _check_count(n: int) -> None:
    if n == 0:
        raise ProblemError("nothing to tile: no maps")
    if n > MAX_TILES:
        raise ProblemError(f"{n} tiles requested; the limit is {MAX_TILES}")


def tile_grid(
    maps: Sequence[np.ndarray],
    columns: int = 8,
    tile_size: int = 64,
    colormap: str = "viridis",
    normalize: Literal["per_channel", "global"] = "per_channel",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Maps (each HxW, or HxWx3 RGB) -> one HxWx3 uint8 mosaic.

    HxW maps are min-max normalised (each on its own, or all with one min and max for
    ``global``; constant maps become 0), then coloured. HxWx3 maps are taken as RGB: uint8 as
    is, floats normalised like HxW maps. Every tile is resized to the first map's aspect ratio
    with its longer side ``tile_size``.
    """
    _check_count(len(maps))
    if labels is not None and len(labels) != len(maps):
        raise ValueError(f"{len(labels)} labels for {len(maps)} maps")
    if columns < 1 or tile_size < 1:
        raise ValueError(f"columns ({columns}) and tile_size ({tile_size}) must be positive")
    colormap_table(colormap)  # unknown names fail before any work
    arrays = [np.asarray(m) for m in maps]
    for a in arrays:
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"tile_grid maps must be HxW or HxWx3, got shape {a.shape}")
    if normalize == "global":
        finite = [np.nan_to_num(a.astype(np.float64)) for a in arrays if a.dtype != np.uint8]
        lo = min((float(a.min()) for a in finite), default=0.0)
        hi = max((float(a.max()) for a in finite), default=1.0)
    elif normalize != "per_channel":
        raise ValueError(f"normalize must be per_channel or global, not {normalize!r}")
    tile_hw = _tile_shape(arrays[0], tile_size)
    tiles = []
    for a in arrays:
        if a.dtype == np.uint8 and a.ndim == 3:
            tiles.append(np.clip(np.floor(_fit_tile(a, tile_hw) + 0.5), 0, 255).astype(np.uint8))
            continue
        x = np.nan_to_num(a.astype(np.float64))
        if normalize == "per_channel":
            lo, hi = float(x.min()), float(x.max())
        unit = (x - lo) / (hi - lo + EPS)
        unit = np.clip(_fit_tile(unit, tile_hw), 0.0, 1.0)
        if unit.ndim == 2:
            tiles.append(apply_colormap(unit, colormap))
        else:
            tiles.append(np.floor(unit * 255.0 + 0.5).astype(np.uint8))
    return _layout(tiles, columns, labels, title)


def _symmetric_unit(w: np.ndarray) -> np.ndarray:
    return 0.5 + w / (2.0 * float(np.abs(w).max()) + EPS)


def filter_mosaic(
    weights: np.ndarray,
    columns: int = 8,
    tile_size: int = 32,
    reduce: Literal["none", "mean"] = "none",
    *,
    bgr: bool = False,
    labels: bool = False,
    title: str | None = None,
) -> np.ndarray:
    """Convolution weights (M, C, kh, kw) -> HxWx3 uint8 mosaic.

    * C == 3 and ``reduce="none"``: one RGB patch per output filter (AlexNet-style); ``bgr``
      says the kernels' input channels are in BGR order (they are flipped for display).
    * otherwise ``reduce="none"``: one gray tile per (filter, input channel), filter-major;
      ``reduce="mean"``: one gray tile per filter, the mean over input channels.
    Each output filter is normalised on its own, symmetric around 0 (see module docstring).
    Kernels are enlarged with nearest-neighbour sampling so each weight stays a square.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4:
        raise ValueError(f"filter_mosaic expects (M, C, kh, kw) weights, got shape {w.shape}")
    m, c, _, _ = w.shape
    gray = colormap_table("gray")
    rgb_patches = c == 3 and reduce == "none"
    if reduce == "mean":
        count = m
    elif reduce == "none":
        count = m if rgb_patches else m * c
    else:
        raise ValueError(f"reduce must be none or mean, not {reduce!r}")
    _check_count(count)
    tiles: list[np.ndarray] = []
    names: list[str] = []
    for f in range(m):
        unit = _symmetric_unit(w[f])  # (C, kh, kw), one scale per output filter
        if rgb_patches:
            patch = unit.transpose(1, 2, 0)[:, :, ::-1] if bgr else unit.transpose(1, 2, 0)
            tiles.append(patch)
            names.append(str(f))
        elif reduce == "mean":
            tiles.append(_symmetric_unit(w[f].mean(axis=0)))
            names.append(str(f))
        else:
            tiles.extend(unit[k] for k in range(c))
            names.extend(f"{f}.{k}" for k in range(c))
    tile_hw = _tile_shape(tiles[0], tile_size)
    rendered = []
    for t in tiles:
        big = np.clip(resize_map(t, tile_hw, "nearest"), 0.0, 1.0)
        index = np.floor(big * 255.0 + 0.5).astype(np.uint8)
        rendered.append(index if index.ndim == 3 else gray[index])
    return _layout(rendered, columns, names if labels else None, title)
