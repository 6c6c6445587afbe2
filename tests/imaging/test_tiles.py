import numpy as np
import pytest

from service.errors import ProblemError
from service.imaging.colormaps import COLORMAPS
from service.imaging.tiles import BACKGROUND, GUTTER, MAX_TILES, filter_mosaic, tile_grid


def tile_at(grid: np.ndarray, index: int, columns: int, th: int, tw: int, top: int = 0):
    r, c = divmod(index, columns)
    y = top + GUTTER + r * (th + GUTTER)
    x = GUTTER + c * (tw + GUTTER)
    return grid[y : y + th, x : x + tw]


def test_grid_layout_and_per_channel_normalisation():
    maps = [np.array([[0.0, 1.0], [2.0, 3.0]]) * (i + 1) for i in range(5)]
    grid = tile_grid(maps, columns=3, tile_size=4, colormap="gray")
    assert grid.shape == (GUTTER + 2 * (4 + GUTTER), GUTTER + 3 * (4 + GUTTER), 3)
    assert grid.dtype == np.uint8
    assert tuple(grid[0, 0]) == BACKGROUND
    for i in range(5):
        tile = tile_at(grid, i, 3, 4, 4)[..., 0]
        # each 2x2 map enlarged with nearest: 2x2 blocks of 0, 85, 170, 255
        expected = np.kron(np.array([[0, 85], [170, 255]]), np.ones((2, 2), dtype=int))
        np.testing.assert_array_equal(tile, expected)
    assert (tile_at(grid, 5, 3, 4, 4) == BACKGROUND).all()  # empty slot


def test_global_normalisation_keeps_relative_strength():
    maps = [np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.array([[0.0, 0.0], [0.0, 3.0]])]
    grid = tile_grid(maps, columns=3, tile_size=2, colormap="gray", normalize="global")
    assert tile_at(grid, 0, 3, 2, 2)[0, 0, 0] == 85
    assert tile_at(grid, 1, 3, 2, 2)[0, 0, 0] == 255
    per = tile_grid(maps, columns=3, tile_size=2, colormap="gray")
    assert tile_at(per, 0, 3, 2, 2)[0, 0, 0] == 0  # constant map -> 0, no NaN


def test_colormap_applied_and_large_maps_shrink():
    maps = [np.repeat(np.arange(64.0)[None, :] >= 32, 64, axis=0).astype(float)]
    grid = tile_grid(maps, columns=8, tile_size=16, colormap="viridis")
    assert grid.shape == (16 + 2 * GUTTER, 16 + 2 * GUTTER, 3)
    tile = tile_at(grid, 0, 1, 16, 16)
    assert tile[0, 0].tolist() == COLORMAPS["viridis"][0].tolist()
    assert tile[-1, -1].tolist() == COLORMAPS["viridis"][255].tolist()


def test_non_square_maps_keep_aspect():
    grid = tile_grid([np.zeros((4, 8))], tile_size=16, colormap="gray")
    assert grid.shape == (8 + 2 * GUTTER, 16 + 2 * GUTTER, 3)


def test_labels_and_title_add_text_rows():
    maps = [np.random.default_rng(i).random((3, 3)) for i in range(4)]
    plain = tile_grid(maps, columns=2, tile_size=12)
    labelled = tile_grid(
        maps, columns=2, tile_size=12, labels=["0", "1", "2", "3"], title="layer4.relu"
    )
    assert labelled.shape[1] == plain.shape[1]
    assert labelled.shape[0] > plain.shape[0] + 2 * 8
    title_band = labelled[: labelled.shape[0] - plain.shape[0]]
    assert (title_band != BACKGROUND).any()  # text was drawn
    with pytest.raises(ValueError, match="labels"):
        tile_grid(maps, labels=["only one"])


def test_rgb_tiles_pass_through():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    grid = tile_grid([rgb], tile_size=2)
    assert grid[GUTTER, GUTTER].tolist() == [255, 0, 0]


def test_limits_and_bad_names():
    with pytest.raises(ProblemError, match="no maps"):
        tile_grid([])
    with pytest.raises(ProblemError, match="unknown colormap"):
        tile_grid([np.zeros((2, 2))], colormap="nope")
    with pytest.raises(ProblemError, match=f"limit is {MAX_TILES}"):
        filter_mosaic(np.zeros((MAX_TILES + 1, 1, 1, 1)))


def test_rgb_filters_symmetric_around_zero():
    w = np.zeros((2, 3, 1, 2))
    w[0, 0, 0, 0] = 2.0  # red +, max |w| of filter 0 is 2
    w[0, 2, 0, 1] = -2.0  # blue -
    w[1] = 0.5  # constant filter
    grid = filter_mosaic(w, columns=2, tile_size=2)
    assert grid.shape == (1 + 2 * GUTTER, 2 * 2 + 3 * GUTTER, 3)
    first = tile_at(grid, 0, 2, 1, 2)
    assert first[0, 0].tolist() == [255, 128, 128]
    assert first[0, 1].tolist() == [128, 128, 0]
    assert tile_at(grid, 1, 2, 1, 2)[0, 0].tolist() == [255, 255, 255]
    bgr = filter_mosaic(w, columns=2, tile_size=2, bgr=True)
    assert tile_at(bgr, 0, 2, 1, 2)[0, 0].tolist() == [128, 128, 255]


def test_gray_filters_per_channel_and_mean():
    w = np.zeros((2, 4, 3, 3))
    w[0, 1, 1, 1] = -1.0
    w[1, :, 0, 0] = 1.0
    grid = filter_mosaic(w, columns=4, tile_size=3)
    assert grid.shape == (GUTTER + 2 * (3 + GUTTER), GUTTER + 4 * (3 + GUTTER), 3)
    assert tile_at(grid, 1, 4, 3, 3)[1, 1].tolist() == [0, 0, 0]
    assert tile_at(grid, 1, 4, 3, 3)[0, 0].tolist() == [128, 128, 128]
    assert tile_at(grid, 6, 4, 3, 3)[0, 0].tolist() == [255, 255, 255]
    mean = filter_mosaic(w, columns=4, tile_size=6, reduce="mean")
    assert mean.shape == (6 + 2 * GUTTER, GUTTER + 2 * (6 + GUTTER), 3)
    assert tile_at(mean, 1, 4, 6, 6)[:2, :2].tolist() == [[[255] * 3] * 2] * 2  # nearest x2
    three_as_gray = filter_mosaic(np.ones((1, 3, 2, 2)), tile_size=2, reduce="mean")
    assert three_as_gray.shape == (2 + 2 * GUTTER, 2 + 2 * GUTTER, 3)
