"""Every transform's adjoint by the dot-product test <T x, y> = <x, T* y>."""

from __future__ import annotations

import numpy as np
import pytest

from service.featurevis import transforms as T


def _linear_part(t: T.Transform, x: np.ndarray, seed: int):
    """T's output at x minus its output at 0 (Pad is affine), with the same random draw."""
    y, adj = t(x, np.random.default_rng(seed))
    y0, _ = t(np.zeros_like(x), np.random.default_rng(seed))
    return y - y0, adj


CASES = [
    T.Pad(3),
    T.Jitter(4),
    T.RandomScale((0.9,)),
    T.RandomScale((1.1,)),
    T.RandomScale((0.92, 1.0, 1.08)),
    T.RandomRotate((7.0,)),
    T.RandomRotate((-10.0,)),
    T.Resize((37, 29)),
]


@pytest.mark.parametrize("t", CASES, ids=repr)
@pytest.mark.parametrize("seed", [0, 1])
def test_dot_product(t: T.Transform, seed: int) -> None:
    rng = np.random.default_rng(10 + seed)
    x = rng.normal(size=(2, 3, 20, 23))
    tx, adj = _linear_part(t, x, seed)
    y = rng.normal(size=tx.shape)
    assert float((tx * y).sum()) == pytest.approx(float((x * adj(y)).sum()), rel=1e-10)


def test_the_standard_chain_and_its_adjoint() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 3, 32, 32))
    chain = T.standard()
    y, adj = T.compose(chain, x, np.random.default_rng(5))
    y0, _ = T.compose(chain, np.zeros_like(x), np.random.default_rng(5))
    g = rng.normal(size=y.shape)
    assert float(((y - y0) * g).sum()) == pytest.approx(float((x * adj(g)).sum()), rel=1e-10)


def test_rotation_by_zero_and_resize_identity() -> None:
    x = np.random.default_rng(0).normal(size=(1, 3, 9, 9))
    sy, sx = T.rotation_sampling(9, 9, 0.0)
    np.testing.assert_allclose(T.warp(x, sy, sx)[0], x, atol=1e-12)
    np.testing.assert_allclose(T.resize(x, (9, 9))[0], x)
    # a 90-degree rotation of a square moves pixels exactly
    sy, sx = T.rotation_sampling(9, 9, 90.0)
    rotated = T.warp(x, sy, sx)[0]
    np.testing.assert_allclose(rotated, np.rot90(x, k=1, axes=(-2, -1)), atol=1e-9)
