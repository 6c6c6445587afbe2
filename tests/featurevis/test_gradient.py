"""ModelRunner.objective_gradient against torch autograd (float64) on a small exported net."""

from __future__ import annotations

import numpy as np
import pytest

from tests.featurevis.conftest import DEEP, MID, SIZE

torch = pytest.importorskip("torch")


def _torch_grad(net, x: np.ndarray, upto: int, seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    net64 = net.double()
    try:
        xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
        a = net64[:upto](xt)
        (a * torch.from_numpy(seed.astype(np.float64))).sum().backward()
        return a.detach().numpy(), xt.grad.numpy()
    finally:
        net.float()


@pytest.mark.parametrize(("tensor", "upto"), [(MID, 3), (DEEP, 7)])
def test_internal_tensor_gradient_matches_autograd(small, tensor: str, upto: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    shape = small.runner.forward(x, [tensor])[1][0].shape
    seed = rng.normal(size=shape).astype(np.float32)
    value, grad = small.runner.objective_gradient(x, tensor, seed)
    ref_value, ref_grad = _torch_grad(small.net, x, upto, seed)
    np.testing.assert_allclose(value, ref_value, rtol=1e-4, atol=1e-4)
    scale = np.abs(ref_grad).max()
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-4 * scale)


def test_one_companion_per_tensor_and_rule(small) -> None:
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    seed = np.ones((1, 8, SIZE, SIZE), np.float32)
    small.runner.objective_gradient(x, MID, seed)
    before = sorted(p.name for p in small.runner.derived_dir.glob("companion-*.onnx"))
    for _ in range(3):
        small.runner.objective_gradient(x, MID, seed)
    after = sorted(p.name for p in small.runner.derived_dir.glob("companion-*.onnx"))
    assert before == after
