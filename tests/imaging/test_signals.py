"""Map signals (service/imaging/signals.py) against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from service.imaging.signals import box_mask, box_to_map, region_shares, sparseness, top_share


def pairwise_gini(m: np.ndarray) -> float:
    """The textbook Gini: sum_ij |a_i - a_j| / (2 n sum a), with a = |m|."""
    a = np.abs(np.asarray(m, dtype=np.float64)).ravel()
    return float(sum(abs(p - q) for p, q in itertools.product(a, a)) / (2 * a.size * a.sum()))


def test_sparseness_of_uniform_and_one_hot_maps() -> None:
    assert sparseness(np.full((4, 5), 3.0)) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros((4, 5))
    one[2, 3] = 7.0
    assert sparseness(one) == pytest.approx(1 - 1 / 20)
    assert sparseness(np.zeros((3, 3))) == 0.0  # nothing at all: defined as 0


def test_sparseness_by_hand_on_2x2() -> None:
    # |m| = 1, 1, 2, 4 (sum 8); sorted c_k / 8 = 1/8, 1/8, 2/8, 4/8 with weights
    # (N - k + 1/2) / N = 3.5/4, 2.5/4, 1.5/4, 0.5/4:
    # 1 - 2 (3.5 + 2.5 + 3 + 2) / 32 = 1 - 22/32 = 0.3125
    m = np.array([[1.0, -2.0], [4.0, 1.0]])
    assert sparseness(m) == pytest.approx(0.3125)
    assert pairwise_gini(m) == pytest.approx(0.3125)  # the same index, another formula
    rng = np.random.default_rng(3)
    r = rng.normal(size=(6, 7))
    assert sparseness(r) == pytest.approx(pairwise_gini(r))


def test_top5_share_by_hand() -> None:
    m = np.ones(100)
    m[[3, 17, 42, 64, 99]] = 10.0
    m = m.reshape(10, 10)
    assert top_share(m) == pytest.approx(50 / 145)
    # 60 pixels: the top 5% is 3 pixels (0.05 * 60 is 3.0000000000000004 in floating point)
    n = np.ones(60)
    n[:4] = [8.0, 6.0, 5.0, 4.0]
    assert top_share(n.reshape(6, 10)) == pytest.approx(19 / (23 + 56))
    # negative values do not count; a single positive pixel holds all the mass
    neg = -np.ones((4, 4))
    neg[1, 1] = 2.0
    assert top_share(neg) == pytest.approx(1.0)
    assert top_share(-np.ones((4, 4))) is None
    assert top_share(np.zeros((4, 4))) is None


def shares_by_loop(m: np.ndarray, boxes: dict[str, tuple[float, ...]]) -> dict[str, float]:
    pos = np.maximum(m, 0.0)
    total = pos.sum()
    out = {}
    for name, (x0, y0, x1, y1) in boxes.items():
        inside = 0.0
        for y in range(m.shape[0]):
            for x in range(m.shape[1]):
                if x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1:
                    inside += pos[y, x]
        out[name] = inside / total
    return out


def test_region_shares_overlapping_and_tiling() -> None:
    rng = np.random.default_rng(5)
    m = rng.normal(size=(8, 12))
    normalised = {
        "left": (0.0, 0.0, 0.5, 1.0),
        "right": (0.5, 0.0, 1.0, 1.0),
        "top": (0.0, 0.0, 1.0, 0.25),  # overlaps both halves
        "corner": (0.75, 0.75, 1.0, 1.0),
    }
    boxes = {name: box_to_map(box, m.shape) for name, box in normalised.items()}
    assert boxes["right"] == (6.0, 0.0, 12.0, 8.0) and boxes["top"] == (0.0, 0.0, 12.0, 2.0)
    shares = region_shares(m, boxes)
    assert shares is not None
    expected = shares_by_loop(m, boxes)
    assert shares == pytest.approx(expected)
    assert shares["left"] + shares["right"] == pytest.approx(1.0)  # disjoint, tiling the map
    # each share on its own: the overlapping "top" is counted in the halves and by itself
    assert shares["left"] + shares["right"] + shares["top"] > 1.0
    top_left = region_shares(m, {"tl": box_to_map((0.0, 0.0, 0.5, 0.25), m.shape)})
    top_right = region_shares(m, {"tr": box_to_map((0.5, 0.0, 1.0, 0.25), m.shape)})
    assert top_left and top_right
    assert top_left["tl"] + top_right["tr"] == pytest.approx(shares["top"])


def test_region_shares_undefined_without_mass_or_boxes() -> None:
    assert region_shares(-np.ones((4, 4)), {"a": (0, 0, 2, 2)}) is None
    assert region_shares(np.zeros((4, 4)), {"a": (0, 0, 2, 2)}) is None
    assert region_shares(np.ones((4, 4)), {}) is None
    # a box between pixel centres holds nothing
    assert region_shares(np.ones((4, 4)), {"thin": (1.6, 0, 1.9, 4)}) == {"thin": 0.0}


def test_box_mask_uses_pixel_centres() -> None:
    mask = box_mask((3, 4), (0.5, 0.0, 2.5, 1.5))
    expected = np.zeros((3, 4), dtype=bool)
    expected[0, 0:2] = True  # centres 0.5, 1.5 are in [0.5, 2.5); 2.5 is not
    assert (mask == expected).all()


def test_box_to_original_inverts_box_to_input() -> None:
    from schemas.card import InputSpec
    from service.imaging.preprocess import box_to_input, box_to_original, plan_geometry

    # 300 x 451 photo, shorter side to 256 (256 x 384), centre crop 224: left 80, top 16
    geometry = plan_geometry(
        (300, 451), InputSpec(height=224, width=224, resize="center_crop", resize_shorter=256)
    )
    assert geometry.resized_size == (256, 384) and geometry.crop_box[:2] == (80, 16)
    box = box_to_map((0.25, 0.5, 1.0, 1.0), geometry.input_size)  # (56, 112, 224, 224)
    x0, y0, x1, y1 = box_to_original(box, geometry)
    assert (x0, y0) == pytest.approx(((56 + 80) * 451 / 384, (112 + 16) * 300 / 256))
    assert (x1, y1) == pytest.approx(((224 + 80) * 451 / 384, (224 + 16) * 300 / 256))
    assert box_to_input((x0, y0, x1, y1), geometry) == pytest.approx(box)
    # a stretch is a plain rescale
    stretch = plan_geometry((30, 50), InputSpec(height=10, width=20, resize="stretch"))
    assert box_to_original((2, 1, 20, 10), stretch) == pytest.approx((5, 3, 50, 30))
