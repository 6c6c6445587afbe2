"""Eigen-CAM's principal component: the SVD's, from the small Gram matrix, with a fixed sign."""

from __future__ import annotations

import numpy as np
import pytest

from service.explain.cam import first_component


@pytest.mark.parametrize("shape", [(3, 64, 7, 7), (2, 8, 14, 14), (1, 1, 4, 4), (1, 5, 1, 1)])
def test_projection_equals_numpy_svd_up_to_its_sign(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    t = np.maximum(rng.normal(size=shape), 0) + rng.random(shape[1])[None, :, None, None]
    ours = first_component(t)
    for r, item in enumerate(t):
        m = item.reshape(item.shape[0], -1).T
        m = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(m, full_matrices=False)  # pytorch-grad-cam's recipe
        ref = (m @ vt[0]).reshape(item.shape[1:])
        scale = np.abs(ref).max() + 1e-12
        err = min(np.abs(ours[r] - ref).max(), np.abs(ours[r] + ref).max()) / scale
        assert err <= 1e-5, (shape, r, err)
        # the fixed sign: positive correlation with the centred channel sum
        assert float(ours[r].ravel() @ m.sum(axis=1)) >= 0


def test_where_every_channel_is_more_active_the_map_is_positive() -> None:
    rng = np.random.default_rng(1)
    t = rng.random((1, 32, 6, 6))
    hot = np.zeros((6, 6))
    hot[1:3, 2:5] = 5.0  # every channel more active here
    t = t + hot[None, None]
    m = first_component(t)[0]
    assert m[1:3, 2:5].min() > 0 > m[4:, :].max()
