"""Picture views, each against its definition written out by hand (float64 loops, small arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging import views

RNG = np.random.default_rng(11)


def test_blend_weighted_is_the_per_pixel_definition():
    image = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    heat = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    weight = RNG.random((5, 7))
    weight[0, 0], weight[1, 1] = 0.0, 1.0
    out = views.blend_weighted(image, heat, weight, 0.8)
    for y in range(5):
        for x in range(7):
            a = 0.8 * weight[y, x]
            expected = np.floor((1 - a) * image[y, x] + a * heat[y, x].astype(float) + 0.5)
            assert np.abs(out[y, x].astype(int) - expected).max() <= 1  # float32 arithmetic
    np.testing.assert_array_equal(out[0, 0], image[0, 0])  # weight 0: the photo untouched


def test_rgb_gradient_zero_is_mid_grey_and_channels_scale_apart():
    g = np.zeros((3, 2, 2), dtype=np.float32)
    g[0, 0, 0], g[0, 1, 1] = 4.0, -2.0  # red channel: max |g| = 4
    g[1, 0, 1] = 0.001  # green: tiny, but its own scale
    g[2, 1, 0] = -1.0
    rgb = views.rgb_gradient(g)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(rgb[1, 1], [0.25, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(rgb[0, 1], [0.5, 1.0, 0.5], atol=1e-4)
    np.testing.assert_allclose(rgb[1, 0], [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_array_equal(views.rgb_gradient(g, bgr=True), rgb[..., ::-1])
    assert views.to_uint8(np.full((1, 1, 3), 0.5)).tolist() == [[[128, 128, 128]]]
    with pytest.raises(ValueError, match="3, H, W"):
        views.rgb_gradient(np.zeros((1, 2, 2)))


def test_rgb_gradient_percentile_clips_outliers():
    g = np.zeros((3, 10, 10), dtype=np.float32)
    g[:, :, :] = np.linspace(0, 1, 100).reshape(10, 10)
    g[:, 9, 9] = 100.0  # one outlier
    rgb = views.rgb_gradient(g, 99.0)
    scale = np.percentile(np.abs(g[0]), 99.0)
    np.testing.assert_allclose(rgb[5, 5, 0], 0.5 + g[0, 5, 5] / (2 * scale), atol=1e-5)
    assert rgb[9, 9, 0] == 1.0


def test_top_region_and_outline():
    m = np.zeros((12, 12), dtype=np.float32)
    m[3:9, 4:10] = 1.0  # 36 of 144 pixels: 25 %
    region = views.top_region(m, 25.0)
    np.testing.assert_array_equal(region, m == 1.0)
    assert not views.top_region(np.ones((4, 4)), 10.0).any()  # a flat map has no top
    image = np.zeros((12, 12, 3), dtype=np.uint8)
    out = views.outline(image, region, np.array([255, 0, 0], np.uint8), width=1)
    painted = out[..., 0] == 255
    border = region.copy()
    border[4:8, 5:9] = False  # the region minus its interior
    np.testing.assert_array_equal(painted, border)
    thick = views.outline(image, region, np.array([255, 0, 0], np.uint8), width=2)
    assert (thick[..., 0] == 255).sum() == 36 - 4  # two rings: only the 2x2 centre left


def test_dim_and_rgba_outside_the_window():
    image = np.full((2, 3, 3), 201, dtype=np.uint8)
    inside = np.array([[True, False, True], [False, True, True]])
    out = views.dim(image, inside)
    assert out[0, 1].tolist() == [100, 100, 100] and out[0, 0].tolist() == [201, 201, 201]
    rgba = views.heat_rgba(image, inside)
    assert rgba.shape == (2, 3, 4) and rgba[..., 3].tolist() == [[255, 0, 255], [0, 255, 255]]
