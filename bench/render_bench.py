"""Rendering steps, previous implementation vs current, in one run (issue 10).

    .venv/bin/python bench/render_bench.py [--repeat 50] [--big-repeat 3] [--no-big]

The skimage cat at 224x224 with a smooth blob map, then the same at 12 megapixels (the cat
upscaled to 4000x3000, the 224x224 map taken to the original size). The previous versions
(float64 colormap, float64 blend, Pillow's PNG encoder, dense resize weights, the dense
einsum of ``to_original``) are kept inline here. Milliseconds are
medians; "peak MiB" is the largest numpy allocation total (tracemalloc) during one call.
"""

from __future__ import annotations

import argparse
import io
import os
import time
import tracemalloc
import zlib
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from _common import p50, time_it
from PIL import Image

from service.imaging import render
from service.imaging.colormaps import apply_colormap, colormap_index, colormap_table
from service.imaging.preprocess import Geometry, to_original
from service.imaging.render import (
    encode_colormapped_png,
    encode_png,
    overlay,
    overlay_map,
    resize_map,
)

# ---- the previous implementations ----------------------------------------------------------


def old_index(map01: np.ndarray) -> np.ndarray:
    m = np.asarray(map01, dtype=np.float64)
    return np.floor(np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def old_apply(map01: np.ndarray, name: str) -> np.ndarray:
    return colormap_table(name)[old_index(map01)]


def old_overlay(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    blend = (1.0 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def old_encode_png(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, format="PNG", compress_level=6, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def old_encode_colormapped_png(map01: np.ndarray, colormap: str) -> bytes:
    index = old_index(map01)
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    image.putpalette(colormap_table(colormap).reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def old_resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    def weights(n_in: int, n_out: int) -> np.ndarray:
        lo, hi, frac = render._linear_taps(n_in, n_out)
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
        np.add.at(w, (np.arange(n_out), hi), frac)
        return w

    wy, wx = weights(m.shape[0], size[0]), weights(m.shape[1], size[1])
    return (wy @ np.asarray(m, dtype=np.float64) @ wx.T).astype(np.float32)


def old_to_original(m: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The previous to_original: dense float64 weights, one einsum without a contraction
    order (work grows with out_h * out_w * h * w)."""
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box

    def axis(n_out: int, n_resized: int, offset: int, n_map: int) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_resized / n_out) - 0.5 - offset
        inside = (pos >= -0.5) & (pos <= n_map - 0.5)
        pos = np.clip(pos, 0.0, n_map - 1)
        lo = np.floor(pos).astype(np.intp)
        w = np.zeros((n_out, n_map))
        np.add.at(w, (np.arange(n_out), lo), 1.0 - (pos - lo))
        np.add.at(w, (np.arange(n_out), np.minimum(lo + 1, n_map - 1)), pos - lo)
        return w, inside

    wy, inside_y = axis(oh, rh, top, m.shape[0])
    wx, inside_x = axis(ow, rw, left, m.shape[1])
    out = np.einsum("ih,hw...,jw->ij...", wy, np.asarray(m, np.float64), wx)
    out[~(inside_y[:, None] & inside_x[None, :])] = 0.0
    return out.astype(np.float32)


# ---- measuring -----------------------------------------------------------------------------


def peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


class Table:
    def __init__(self, title: str, repeat: int, memory: bool) -> None:
        self.repeat, self.memory = repeat, memory
        head = "| step | old ms | new ms | speed-up |"
        rule = "| --- | ---: | ---: | ---: |"
        if memory:
            head += " old peak MiB | new peak MiB |"
            rule += " ---: | ---: |"
        print(f"\n### {title}\n\n{head}\n{rule}", flush=True)

    def row(self, step: str, old: Callable[[], object] | None, new: Callable[[], object]) -> None:
        warm = 1 if self.repeat > 5 else 0
        t_new = p50(time_it(new, self.repeat, warmup=warm))
        t_old = p50(time_it(old, self.repeat, warmup=warm)) if old else float("nan")
        cells = f"| {step} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}x |"
        if self.memory:
            m_old = peak_mib(old) if old else float("nan")
            cells += f" {m_old:.0f} | {peak_mib(new):.0f} |"
        print(cells.replace("nan", "-").replace("-x", "-"), flush=True)


def blob(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, s = 0.45 * h, 0.55 * w, 0.18 * min(h, w)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s)).astype(np.float32)


def small(repeat: int) -> None:
    from skimage import data

    cat = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)))
    m = blob(224, 224)
    heat = apply_colormap(m, "jet")
    photo = overlay(cat, heat, 0.5)
    table = Table("224x224 map, 224x224 backdrop (jet)", repeat, memory=False)
    map_steps(table, cat, m, heat, photo)
    sizes(photo, m)


def map_steps(
    table: Table, cat: np.ndarray, m: np.ndarray, heat: np.ndarray, ov: np.ndarray
) -> None:
    """The rows both sizes time: colour, blend and encode the map ``m`` over ``cat``."""
    table.row("colormap_index", lambda: old_index(m), lambda: colormap_index(m))
    table.row(
        "apply_colormap (RGB heat)", lambda: old_apply(m, "jet"), lambda: apply_colormap(m, "jet")
    )
    table.row(
        "overlay blend, alpha 0.5",
        lambda: old_overlay(cat, heat, 0.5),
        lambda: overlay(cat, heat, 0.5),
    )
    table.row(
        "overlay blend, alpha 0.35",
        lambda: old_overlay(cat, heat, 0.35),
        lambda: overlay(cat, heat, 0.35),
    )
    table.row(
        "colormap + blend (overlay_map)",
        lambda: old_overlay(cat, old_apply(m, "jet"), 0.5),
        lambda: overlay_map(cat, m, "jet", 0.5),
    )
    table.row("encode RGB overlay PNG", lambda: old_encode_png(ov), lambda: encode_png(ov))
    table.row(
        "**heatmap PNG** (palette, index + encode)",
        lambda: old_encode_colormapped_png(m, "jet"),
        lambda: encode_colormapped_png(m, "jet"),
    )
    table.row(
        "**overlay PNG** (colormap + blend + encode)",
        lambda: old_encode_png(old_overlay(cat, old_apply(m, "jet"), 0.5)),
        lambda: encode_png(overlay_map(cat, m, "jet", 0.5)),
    )


def sizes(photo: np.ndarray, m: np.ndarray) -> None:
    print("\n| PNG | old bytes | new bytes |\n| --- | ---: | ---: |")
    print(f"| overlay (RGB) | {len(old_encode_png(photo))} | {len(encode_png(photo))} |")
    old, new = old_encode_colormapped_png(m, "jet"), encode_colormapped_png(m, "jet")
    print(f"| heatmap (palette) | {len(old)} | {len(new)} |", flush=True)


def big(repeat: int) -> None:
    from skimage import data

    h, w = 3000, 4000
    photo_img = Image.fromarray(data.chelsea()).resize((w, h), Image.Resampling.BILINEAR)
    cat = np.asarray(photo_img)
    m224 = blob(224, 224)
    geometry = Geometry((h, w), (224, 224), (0, 0, 224, 224))  # stretch
    table = Table("12 MP: 224x224 map -> 3000x4000, 3000x4000 backdrop (jet)", repeat, memory=True)
    table.row(
        "resize_map 224 -> 3000x4000",
        lambda: old_resize_map(m224, (h, w)),
        lambda: resize_map(m224, (h, w)),
    )
    table.row("to_original (previous: below)", None, lambda: to_original(m224, geometry))
    m = to_original(m224, geometry)
    heat = apply_colormap(m, "jet")
    ov = overlay(cat, heat, 0.5)
    map_steps(table, cat, m, heat, ov)
    sizes(ov, m)
    # the previous to_original grows with out_h * out_w: time it on a small photo, scale up
    sh, sw = 150, 200
    g_small = Geometry((sh, sw), (224, 224), (0, 0, 224, 224))
    started = time.perf_counter()
    old_to_original(m224, g_small)
    small_ms = (time.perf_counter() - started) * 1000
    print(
        f"\nprevious to_original: {small_ms:.0f} ms at {sh}x{sw}, so about"
        f" {small_ms * h * w / (sh * sw) / 1000:.0f} s at {h}x{w} (it grows with out_h * out_w);"
        f" to_original now at {sh}x{sw}:"
        f" {p50(time_it(lambda: to_original(m224, g_small), 20)):.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--big-repeat", type=int, default=3)
    parser.add_argument("--no-big", action="store_true")
    args = parser.parse_args()
    backend = "ISA-L" if render._fast_zlib is not None else f"zlib {zlib.ZLIB_RUNTIME_VERSION}"
    print(f"deflate: {backend}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    small(args.repeat)
    if not args.no_big:
        big(args.big_repeat)


if __name__ == "__main__":
    main()
