import numpy as np
import pytest

from service.errors import ProblemError
from service.imaging.colormaps import COLORMAPS, apply_colormap, colormap_table

# Published end points of each map (RGB, 0..255).
ENDS = {
    "jet": ((0, 0, 128), (128, 0, 0)),
    "gray": ((0, 0, 0), (255, 255, 255)),
    "viridis": ((68, 1, 84), (253, 231, 37)),
    "inferno": ((0, 0, 4), (252, 255, 164)),
    "magma": ((0, 0, 4), (252, 253, 191)),
    "plasma": ((13, 8, 135), (240, 249, 33)),
    "turbo": ((48, 18, 59), (122, 4, 3)),
    "coolwarm": ((59, 76, 192), (180, 4, 38)),
}


def luminance(table: np.ndarray) -> np.ndarray:
    return table.astype(float) @ [0.2126, 0.7152, 0.0722]


@pytest.mark.parametrize("name", sorted(ENDS))
def test_tables_and_ends(name):
    table = COLORMAPS[name]
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert not table.flags.writeable
    assert tuple(table[0]) == ENDS[name][0]
    assert tuple(table[255]) == ENDS[name][1]


def test_gray_is_exact_identity():
    np.testing.assert_array_equal(COLORMAPS["gray"], np.repeat(np.arange(256)[:, None], 3, 1))


def test_jet_classic_anchors():
    jet = COLORMAPS["jet"].astype(int)
    # Anchors at x = 1/8, 3/8, 5/8, 7/8 fall between table entries: within 1 level.
    for index, rgb in [(32, [0, 0, 255]), (96, [0, 255, 255]), (159, [255, 255, 0])]:
        assert np.abs(jet[index] - rgb).max() <= 1, index
    assert jet[223].tolist() == [255, 0, 0]
    # Symmetric about the middle (light green): entry i is entry 255 - i with red/blue swapped.
    assert np.abs(jet[::-1][:, ::-1] - jet).max() <= 1
    assert jet[127].tolist() == [126, 255, 130]


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma", "plasma", "gray"])
def test_perceptual_maps_have_increasing_luminance(name):
    lum = luminance(COLORMAPS[name])
    assert np.all(np.diff(lum) > -1.0)  # monotonic up to 8-bit quantisation
    assert lum[-1] - lum[0] > 150


def test_jet_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    ref = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[:, 0, ::-1].astype(int)  # BGR -> RGB
    assert np.abs(COLORMAPS["jet"].astype(int) - ref).max() <= 1
    ref = cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO)[:, 0, ::-1].astype(int)
    assert np.abs(COLORMAPS["turbo"].astype(int) - ref).max() <= 1


def test_coolwarm_diverges_from_a_light_grey_middle():
    table = COLORMAPS["coolwarm"].astype(int)
    lum = luminance(COLORMAPS["coolwarm"])
    middle = int(np.argmax(lum))
    assert 120 <= middle <= 135  # brightest near 0.5: zero attribution is the lightest colour
    assert np.ptp(table[127]) <= 3  # and nearly grey
    assert table[0, 2] > table[0, 0] and table[255, 0] > table[255, 2]  # blue below, red above


@pytest.mark.parametrize("name", ["viridis", "inferno", "magma", "plasma", "turbo", "coolwarm"])
def test_close_to_matplotlib(name):
    mpl = pytest.importorskip("matplotlib")
    ref = np.floor(mpl.colormaps[name](np.arange(256))[:, :3] * 255 + 0.5)
    assert np.abs(COLORMAPS[name].astype(int) - ref).max() <= 2


def test_apply_colormap_quantises_by_rounding_and_clips():
    m = np.array([[0.0, 1.0, 0.5, 1 / 255], [-3.0, 7.0, np.nan, 0.5 / 255 - 1e-9]])
    out = apply_colormap(m, "gray")
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    assert out[..., 0].tolist() == [[0, 255, 128, 1], [0, 255, 0, 0]]
    assert apply_colormap(np.ones((1, 1)), "jet")[0, 0].tolist() == [128, 0, 0]


def test_unknown_colormap_is_a_client_error():
    with pytest.raises(ProblemError, match=r"unknown colormap 'rainbow'.*viridis"):
        colormap_table("rainbow")
    with pytest.raises(ValueError, match="HxW"):
        apply_colormap(np.zeros((2, 2, 3)), "jet")
