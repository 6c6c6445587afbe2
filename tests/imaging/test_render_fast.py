"""The fast rendering paths (issue 10) against the definitions they replace."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from service.imaging import render
from service.imaging.colormaps import COLORMAPS, apply_colormap, colormap_index
from service.imaging.preprocess import Geometry, to_original
from service.imaging.render import (
    encode_colormapped_png,
    encode_png,
    overlay,
    overlay_map,
    resize_map,
)

RNG = np.random.default_rng(11)


def blend_definition(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    blend = (1.0 - alpha) * image.astype(np.float64) + alpha * heat.astype(np.float64)
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def index_definition(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return np.floor(np.clip(np.nan_to_num(m, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# ---- colormap ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_colormap_index_matches_definition(dtype):
    m = RNG.random((300, 301)).astype(dtype) * 1.2 - 0.1  # several blocks, values past [0, 1]
    m.flat[:6] = [np.nan, np.inf, -np.inf, 0.5 / 255, 1.5 / 255, 1.0]
    # the rounding boundaries (k + 0.5) / 255 and their float neighbours
    edges = ((np.arange(255) + 0.5) / 255).astype(dtype)
    m.flat[6 : 6 + 3 * 255] = np.concatenate(
        [edges, np.nextafter(edges, dtype(0)), np.nextafter(edges, dtype(1))]
    )
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(colormap_index(m), index_definition(m))


def test_apply_colormap_is_the_table_lookup():
    m = RNG.random((40, 50))
    for name, table in COLORMAPS.items():
        np.testing.assert_array_equal(apply_colormap(m, name), table[index_definition(m)])


# ---- overlay -------------------------------------------------------------------------------

ALL_PAIRS = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).astype(
    np.uint8
)  # (256, 256, 2): every (image, heat) value pair


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 1 / 3, 0.4, 0.5, 0.6, 0.7, 0.999, 1.0])
def test_overlay_is_exact_for_every_value_pair(alpha):
    image = np.repeat(ALL_PAIRS[..., :1], 3, axis=2)
    heat = np.repeat(ALL_PAIRS[..., 1:], 3, axis=2)
    np.testing.assert_array_equal(overlay(image, heat, alpha), blend_definition(image, heat, alpha))


def test_overlay_of_non_uint8_arrays_keeps_the_definition():
    image = RNG.integers(0, 256, (4, 5, 3)).astype(np.float32)
    heat = RNG.integers(0, 256, (4, 5, 3))
    np.testing.assert_array_equal(overlay(image, heat, 0.3), blend_definition(image, heat, 0.3))


@pytest.mark.parametrize("alpha", [0.5, 0.35])
@pytest.mark.parametrize("name", ["jet", "viridis", "gray"])
def test_overlay_map_equals_colormap_then_overlay(name, alpha):
    image = RNG.integers(0, 256, (230, 300, 3), dtype=np.uint8)  # several blocks
    m = RNG.random((230, 300)).astype(np.float32)
    expected = overlay(image, apply_colormap(m, name), alpha)
    np.testing.assert_array_equal(overlay_map(image, m, name, alpha), expected)


def test_overlay_map_nearest_equals_resized_heat():
    image = RNG.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    m = RNG.random((7, 9))
    heat = apply_colormap(m, "jet")
    heat = resize_map(heat.astype(np.float32), (224, 224), "nearest").astype(np.uint8)
    out = overlay_map(image, m, "jet", 0.5, nearest=True)
    np.testing.assert_array_equal(out, overlay(image, heat, 0.5))
    with pytest.raises(ValueError, match="differ"):
        overlay_map(image, m, "jet", 0.5)
    with pytest.raises(ValueError, match="alpha"):
        overlay_map(image, np.zeros((224, 224)), "jet", 2.0)


# ---- PNG writer ----------------------------------------------------------------------------

SHAPES = [(1, 1), (1, 9), (9, 1), (37, 53), (37, 53, 3), (37, 53, 4), (1, 1, 3), (2, 3, 4)]


@pytest.mark.parametrize("kind", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_png_round_trip_every_filter(monkeypatch, shape, kind):
    monkeypatch.setattr(render, "_choose_filter", lambda rows, bpp: kind)
    arr = RNG.integers(0, 256, shape, dtype=np.uint8)
    back = decode(encode_png(arr))
    assert back.mode == {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else shape[2]]
    np.testing.assert_array_equal(np.asarray(back), arr)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_round_trip_several_blocks(monkeypatch, fast, level):
    if not fast:
        monkeypatch.setattr(render, "_fast_zlib", None)
    yy, xx = np.mgrid[0:700, 0:640]
    smooth = np.stack([yy % 256, xx % 256, (yy + xx) % 256], -1).astype(np.uint8)
    noisy = RNG.integers(0, 256, (700, 640, 3), dtype=np.uint8)  # 1.3 MB: two deflate blocks
    for arr in (smooth, noisy, np.ascontiguousarray(smooth[:, ::-1, 0])):
        data = encode_png(arr, compress_level=level)
        np.testing.assert_array_equal(np.asarray(decode(data)), arr)


def test_png_chunks_are_well_formed():
    data = encode_png(RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, tags = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert crc == zlib.crc32(tag + body)
        tags.append(tag)
        pos += 12 + length
    assert tags == [b"IHDR", b"IDAT", b"IEND"]


def test_filter_choice_follows_the_image():
    yy, xx = np.mgrid[0:64, 0:64]
    rows_vary = np.repeat((yy * 37 % 256).astype(np.uint8)[..., None], 3, 2).reshape(64, -1)
    cols_vary = np.repeat((xx * 37 % 256).astype(np.uint8)[..., None], 3, 2).reshape(64, -1)
    assert render._choose_filter(rows_vary, 3) == 1  # constant along each row: Sub
    assert render._choose_filter(cols_vary, 3) == 2  # constant down each column: Up
    assert render._choose_filter(np.zeros((5, 6), np.uint8), 1) == 0


def test_colormapped_png_is_a_palette_of_the_indices():
    m = RNG.random((61, 43))
    for name in ("jet", "turbo"):
        decoded = decode(encode_colormapped_png(m, name))
        assert decoded.mode == "P"
        np.testing.assert_array_equal(np.asarray(decoded), colormap_index(m))
        palette = np.frombuffer(decoded.palette.tobytes(), np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(palette[:256], COLORMAPS[name])


def test_png_sizes_stay_close_to_pillows():
    skdata = pytest.importorskip("skimage.data")
    cat = np.asarray(Image.fromarray(skdata.chelsea()).resize((224, 224)))
    yy, xx = np.mgrid[0:224, 0:224]
    m = np.exp(-((yy - 100) ** 2 + (xx - 120) ** 2) / (2 * 40.0**2))
    photo = overlay_map(cat, m, "jet", 0.5)
    pillow = io.BytesIO()
    Image.fromarray(photo).save(pillow, format="PNG", compress_type=zlib.Z_RLE)
    assert len(encode_png(photo)) <= 1.15 * len(pillow.getvalue())
    pillow = io.BytesIO()
    Image.fromarray(colormap_index(m)).convert("P").save(pillow, format="PNG", compress_level=1)
    assert len(encode_colormapped_png(m, "jet")) <= len(pillow.getvalue())


def test_png_rejects_empty_and_bad_levels():
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_png(np.zeros((0, 4), np.uint8))
    with pytest.raises(ValueError, match="compress_level"):
        encode_png(np.zeros((2, 2), np.uint8), compress_level=10)


# ---- resizing ------------------------------------------------------------------------------


def dense_resize(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The previous resize_map: dense float64 weight matrices."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        lo, hi, frac = render._linear_taps(n_in, n_out)
        w = np.zeros((n_out, n_in))
        np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
        np.add.at(w, (np.arange(n_out), hi), frac)
        return w

    wy, wx = weights(m.shape[0], size[0]), weights(m.shape[1], size[1])
    return np.einsum("ih,hw...,jw->ij...", wy, m.astype(np.float64), wx, optimize=True).astype(
        np.float32
    )


@pytest.mark.parametrize(
    ("src", "dst"), [((7, 7), (224, 224)), ((224, 224), (600, 900)), ((50, 40), (17, 23))]
)
def test_resize_matches_dense_weights(src, dst):
    m = RNG.random(src).astype(np.float32)
    np.testing.assert_allclose(resize_map(m, dst), dense_resize(m, dst), rtol=0, atol=1e-7)
    rgb = RNG.random((*src, 3))
    np.testing.assert_allclose(resize_map(rgb, dst), dense_resize(rgb, dst), rtol=0, atol=1e-7)


def dense_to_original(m: np.ndarray, geometry: Geometry, fill: float) -> np.ndarray:
    """The definition: every original pixel centre, mapped back through the resize and the
    crop, sampled bilinearly from the map (dense float64 weights); "outside" beyond half a
    map pixel off the map."""
    (oh, ow), (rh, rw) = geometry.original_size, geometry.resized_size
    left, top, _, _ = geometry.crop_box

    def axis(n_out: int, n_resized: int, offset: int, n_map: int):
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
    out = wy @ m.astype(np.float64) @ wx.T
    out[~(inside_y[:, None] & inside_x[None, :])] = fill
    return out


GEOMETRIES = [
    Geometry((30, 40), (16, 16), (0, 0, 16, 16)),  # stretch
    Geometry((31, 45), (24, 34), (9, 4, 25, 20)),  # resize shorter + centre crop
    Geometry((10, 5), (40, 20), (-4, 12, 16, 28)),  # crop wider than the image
    Geometry((7, 9), (21, 27), (2, 3, 19, 24)),  # enlarging
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_to_original_matches_the_dense_definition(geometry):
    m = RNG.random(geometry.input_size).astype(np.float32)
    ref = dense_to_original(m, geometry, 0.0)
    np.testing.assert_allclose(to_original(m, geometry), ref, atol=3e-7)
    ours, theirs = to_original(m, geometry, np.nan), dense_to_original(m, geometry, np.nan)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    assert ours.dtype == np.float32 and ours.shape == geometry.original_size
    with pytest.raises(ValueError, match="input size"):
        to_original(np.zeros((3, 3)), geometry)


def test_to_original_of_a_12_megapixel_photo_is_bounded():
    """A 224x224 map on a 3000x4000 photo: float32 output, no (out_h*out_w*h*w) work."""
    g = Geometry((3000, 4000), (224, 224), (0, 0, 224, 224))
    m = RNG.random((224, 224)).astype(np.float32)
    out = to_original(m, g)
    assert out.shape == (3000, 4000) and out.dtype == np.float32
    rows = [0, 1234, 2999]
    ref = dense_to_original(m, Geometry((3000, 4000), (224, 224), (0, 0, 224, 224)), 0.0)[rows]
    np.testing.assert_allclose(out[rows], ref, atol=3e-7)
