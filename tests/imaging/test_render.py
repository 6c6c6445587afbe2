import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.imaging.render import (
    encode_array,
    encode_png,
    map_stats,
    normalize,
    overlay,
    prepare_map,
    reduce_gradient,
    resize_map,
    to_base64,
    unit_interval,
)

RNG = np.random.default_rng(7)


# ---- normalise and polarity ----------------------------------------------------------------


def test_minmax_follows_pytorch_grad_cam_formula():
    m = np.array([[2.0, 4.0], [6.0, 10.0]], dtype=np.float32)
    expected = (m - 2.0) / (1e-7 + 8.0)
    np.testing.assert_allclose(normalize(m, "minmax"), expected, rtol=1e-6)


def test_minmax_matches_pytorch_grad_cam_when_installed():
    image_utils = pytest.importorskip("pytorch_grad_cam.utils.image")
    cams = RNG.normal(size=(2, 7, 7)).astype(np.float32)
    ref = image_utils.scale_cam_image(cams)
    for cam, expected in zip(cams, ref, strict=True):
        np.testing.assert_allclose(normalize(cam), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["minmax", "percentile"])
def test_constant_and_nan_maps_stay_finite(mode):
    assert not normalize(np.full((3, 3), 5.0), mode).any()
    out = normalize(np.array([[np.nan, 1.0], [np.inf, 3.0]]), mode)
    assert np.isfinite(out).all()


def test_percentile_clips_outliers():
    m = np.arange(100, dtype=np.float32).reshape(10, 10)
    m[0, 0] = -1000
    m[9, 9] = 1000
    out = normalize(m, "percentile", (5, 95))
    lo, hi = np.percentile(m, [5, 95])
    assert out[0, 0] == 0.0 and out[9, 9] == pytest.approx(1.0, abs=1e-6)
    assert out[5, 0] == pytest.approx((50 - lo) / (hi - lo), rel=1e-5)


def test_normalize_none_is_identity():
    m = RNG.normal(size=(4, 4)).astype(np.float32)
    np.testing.assert_array_equal(normalize(m, "none"), m)


def test_polarity_positive_negative_both():
    m = np.array([[-2.0, 0.0, 1.0, 4.0]], dtype=np.float32)
    pos = prepare_map(m, polarity="positive", relu=True)
    np.testing.assert_allclose(pos, [[0.0, 0.0, 0.25, 1.0]], atol=1e-6)
    neg = prepare_map(m, polarity="negative", relu=True)
    np.testing.assert_allclose(neg, [[1.0, 0.0, 0.0, 0.0]], atol=1e-6)
    signed = prepare_map(m, polarity="positive", relu=False)  # plain min-max of the map
    np.testing.assert_allclose(signed, [[0.0, 2 / 6, 3 / 6, 1.0]], atol=1e-6)
    both = prepare_map(m, polarity="both")  # signed, over max|m| = 4
    np.testing.assert_allclose(both, [[-0.5, 0.0, 0.25, 1.0]], atol=1e-6)
    assert prepare_map(np.zeros((2, 2)), polarity="both").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # pictures: zero at the colormap's middle
    np.testing.assert_allclose(unit_interval(both, "both"), [[0.25, 0.5, 0.625, 1.0]], atol=1e-6)
    assert unit_interval(pos, "positive") is pos
    # percentile: the high percentile of |m| is the scale, beyond it clipped
    wide = np.array([[-100.0, *range(-49, 50)]], dtype=np.float32)  # |m| mostly <= 49
    clipped = prepare_map(wide, polarity="both", normalize_mode="percentile")
    limit = np.percentile(np.abs(wide), 99)
    np.testing.assert_allclose(clipped[0, 1:], np.clip(wide[0, 1:] / limit, -1, 1), atol=1e-6)
    assert clipped[0, 0] == -1.0


def test_reduce_gradient():
    g = np.array([[[1.0, -5.0]], [[-3.0, 2.0]]])  # (C=2, H=1, W=2)
    assert reduce_gradient(g, "abs_max").tolist() == [[3.0, 5.0]]
    assert reduce_gradient(g, "sum").tolist() == [[-2.0, -3.0]]
    assert reduce_gradient(g, "none").shape == (2, 1, 2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        reduce_gradient(np.zeros((2, 2)), "sum")


# ---- resize --------------------------------------------------------------------------------

SIZES = [
    ((7, 7), (224, 224)),
    ((7, 9), (20, 13)),
    ((50, 40), (17, 23)),
    ((10, 10), (5, 5)),
    ((1, 4), (3, 8)),
    ((6, 6), (6, 6)),
]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_bilinear_matches_opencv(src, dst):
    cv2 = pytest.importorskip("cv2")
    m = RNG.random(src).astype(np.float32)
    ref = cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(resize_map(m, dst), ref.reshape(dst), atol=1e-5)


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_nearest_matches_opencv_nearest_exact(src, dst):
    cv2 = pytest.importorskip("cv2")
    m = RNG.random(src).astype(np.float32)
    ref = cv2.resize(m, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(resize_map(m, dst, "nearest"), ref.reshape(dst))


@pytest.mark.parametrize(("src", "dst"), [((7, 7), (224, 224)), ((5, 9), (12, 31))])
def test_upsampling_matches_torch(src, dst):
    torch = pytest.importorskip("torch")
    m = RNG.random(src).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(m)[None, None], size=dst, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resize_map(m, dst), ref, atol=1e-5)


def test_resize_rgb_and_constant():
    m = np.full((3, 4, 3), 0.25)
    out = resize_map(m, (9, 2))
    assert out.shape == (9, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25)
    with pytest.raises(ValueError, match="interpolation"):
        resize_map(m, (2, 2), "cubic")


# ---- overlay and encoding ------------------------------------------------------------------


def test_overlay_alpha_arithmetic_exact():
    image = np.array([[[10, 200, 0], [255, 255, 255]]], dtype=np.uint8)
    heat = np.array([[[21, 100, 255], [0, 0, 0]]], dtype=np.uint8)
    assert overlay(image, heat, 0.5).tolist() == [[[16, 150, 128], [128, 128, 128]]]
    assert overlay(image, heat, 0.0).tolist() == image.tolist()
    assert overlay(image, heat, 1.0).tolist() == heat.tolist()
    assert overlay(image, heat, 0.25).tolist() == [[[13, 175, 64], [191, 191, 191]]]
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heat, 1.5)


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4), (1, 1, 1)])
def test_png_round_trip_lossless(shape):
    arr = RNG.integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(arr)
    assert data.startswith(b"\x89PNG")
    back = np.asarray(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(back, arr.reshape(back.shape))
    assert base64.b64decode(to_base64(data)) == data


def test_encode_png_rejects_floats():
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2)))


def test_encode_array_is_little_endian_float32():
    a = np.array([[1.5, -2.0], [0.0, 3.25]])
    enc = encode_array(a)
    assert enc["shape"] == [2, 2] and enc["dtype"] == "float32"
    raw = base64.b64decode(enc["data"])
    assert raw[:4] == b"\x00\x00\xc0\x3f"  # 1.5 as little-endian IEEE 754
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(2, 2), a)


# ---- statistics ----------------------------------------------------------------------------


def test_stats_single_peak():
    m = np.zeros((4, 6))
    m[1, 4] = 3.0
    stats = map_stats(m, roi_box=[4, 1, 5, 2], regions={"hot": [4, 1, 5, 2], "left": [0, 0, 3, 4]})
    assert stats == {
        "peak": [1, 4],
        "center_of_mass": [1.0, 4.0],
        "entropy": 0.0,
        "roi_fraction": 1.0,
        "sparseness": pytest.approx(1 - 1 / 24),  # one hot pixel of 24
        "top5_share": 1.0,  # the top 2 pixels (5% of 24, rounded up) hold everything
        "region_shares": {"hot": 1.0, "left": 0.0},
    }


def test_stats_uniform_map_entropy_in_bits():
    stats = map_stats(np.ones((4, 8)), roi_box=[0, 0, 4, 2])
    assert stats["entropy"] == pytest.approx(5.0)  # log2(32)
    assert stats["sparseness"] == pytest.approx(0.0, abs=1e-12)
    assert stats["top5_share"] == pytest.approx(2 / 32)  # ceil(0.05 * 32) = 2 pixels
    assert stats["region_shares"] is None  # no regions
    assert stats["center_of_mass"] == pytest.approx([1.5, 3.5])
    assert stats["roi_fraction"] == pytest.approx(8 / 32)


def test_stats_use_positive_part_only():
    m = np.array([[-10.0, 1.0], [3.0, -4.0]])
    stats = map_stats(m, roi_box=[0, 0, 2, 1])  # top row
    assert stats["peak"] == [1, 0]
    assert stats["roi_fraction"] == pytest.approx(0.25)
    assert stats["center_of_mass"] == pytest.approx([0.75, 0.25])
    p = np.array([0.25, 0.75])
    assert stats["entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()))


def test_stats_without_positive_attribution():
    stats = map_stats(-np.ones((3, 3)), roi_box=[0, 0, 1, 1], regions={"a": [0, 0, 1, 1]})
    assert stats == {
        "peak": [0, 0],
        "center_of_mass": None,
        "entropy": None,
        "roi_fraction": None,
        "sparseness": pytest.approx(0.0, abs=1e-12),  # |m| is uniform
        "top5_share": None,
        "region_shares": None,
    }
    assert map_stats(np.ones((2, 2)))["roi_fraction"] is None


def test_colormapped_png_has_the_pixels_of_the_rgb_rendering() -> None:
    import io

    from PIL import Image

    from service.imaging.colormaps import apply_colormap
    from service.imaging.render import encode_colormapped_png

    m = np.random.default_rng(5).random((37, 53))
    m[0, 0], m[0, 1] = 0.0, 1.0
    for name in ("jet", "viridis", "gray", "turbo"):
        decoded = Image.open(io.BytesIO(encode_colormapped_png(m, name)))
        assert decoded.mode == "P"
        np.testing.assert_array_equal(np.asarray(decoded.convert("RGB")), apply_colormap(m, name))
