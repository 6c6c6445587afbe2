"""Gradient and occlusion methods vs Captum on the same exported models: 1e-4 relative
(max |ours - captum| / max |captum|) on the raw (R, C, H, W) arrays."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

pytest.importorskip("captum")

from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)

from service.explain import run_method
from service.explain.gradients import smoothgrad_noise

from .conftest import torch

# DenseNet's last ReLU is torchvision's functional F.relu, which Captum's guided/deconvnet
# hooks (nn.ReLU modules only) do not see, while our rule applies to every Relu node; the
# rebuilt densenet in conftest has that ReLU as a module, so it is compared too.
# MobileNetV2 with seeded random weights is left out of the input-gradient comparisons: its
# activations shrink ~10x per block (median 2e-9 at features.18), so ReLU6 masks are decided
# by float rounding. Traced: at features.18 one of 40960 pre-activations is -1.9e-15 in torch
# and +1.8e-16 in onnxruntime; that single flipped unit changes the gradient at features.17
# by 3.5% of its maximum (we equal W^T (bn_scale * mask * g) to 6e-7 with onnxruntime's own
# mask) and the input gradient by ~1%. Not a bug on either side. Its CAM parity
# (test_cam_parity, gradients at the last layer) is exact.
MODELS = ["resnet18", "densenet121", "squeezenet1_1"]


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-30))


def captum_attr(algo: Any, z: Any, rows: int = 2, dtype: Any = None, **kwargs: Any) -> np.ndarray:
    x = torch.from_numpy(z.x[:rows].copy())
    x = (x if dtype is None else x.to(dtype)).requires_grad_(True)
    out = algo.attribute(x, target=list(z.targets[:rows]), **kwargs)
    return out.detach().numpy()


def ours(
    method: str, z: Any, runner: Any, options: dict[str, Any] | None = None, rows: int = 2
) -> Any:
    return run_method(method, runner, z.x[:rows], z.targets[:rows], [z.layer], options or {})


@pytest.mark.parametrize("model", MODELS)
def test_saliency_inputxgradient_guided_deconvnet(model: str, zoo: Any, runner_for: Any) -> None:
    z, runner = zoo(model), runner_for(model)
    cases = {
        "saliency": (Saliency(z.net), {"abs": False}, {}),
        "saliency_abs": (Saliency(z.net), {"abs": True}, {}),
        "inputxgradient": (InputXGradient(z.net), {}, {}),
        "guided_backprop": (GuidedBackprop(z.net), {}, {}),
        "deconvnet": (Deconvolution(z.net), {}, {}),
    }
    for name, (algo, kw, opts) in cases.items():
        method = "saliency" if name.startswith("saliency") else name
        ref = captum_attr(algo, z, **kw)
        got = ours(method, z, runner, {"abs": True} if name == "saliency_abs" else opts).maps[0]
        err = rel_err(got, ref)
        print(f"\n{name:16s} {model:14s} rel err {err:.2e}")
        assert got.shape == ref.shape
        assert err <= 1e-4, f"{name} on {model}: {err:.2e}"


# Captum upsamples with torch's legacy nearest (floor(i * in / out)), our `nearest` is
# half-pixel (OpenCV INTER_NEAREST_EXACT); they agree for integer factors: 4 -> 112 here.
@pytest.mark.parametrize("model", ["resnet18"])
def test_guided_gradcam(model: str, zoo: Any, runner_for: Any) -> None:
    z, runner = zoo(model), runner_for(model)
    ref = captum_attr(GuidedGradCam(z.net, z.module), z)  # nearest upsampling
    got = ours("guided_gradcam", z, runner, {"interpolation": "nearest"}).maps[0]
    err = rel_err(got, ref)
    print(f"\nguided_gradcam   {model:14s} rel err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("model", ["resnet18", "squeezenet1_1"])
@pytest.mark.parametrize("rule", ["riemann_trapezoid", "gausslegendre"])
def test_integrated_gradients(model: str, rule: str, zoo: Any, runner_for: Any) -> None:
    z, runner = zoo(model), runner_for(model)
    steps = 16
    ref = captum_attr(
        IntegratedGradients(z.net),
        z,
        n_steps=steps,
        method=rule,
        baselines=torch.zeros(2, *z.x.shape[1:]),
    )
    # IG's path runs through scaled images alpha * x whose small pre-activations sit within
    # float32 rounding of ReLU kinks: judged against Captum in float64, with the allowance
    # max(1e-4, 3 x Captum's own float32 error) (the conformance suite's criterion).
    ref64 = captum_attr(
        IntegratedGradients(copy.deepcopy(z.net).double()),
        z,
        dtype=torch.float64,
        n_steps=steps,
        method=rule,
        baselines=torch.zeros(2, *z.x.shape[1:], dtype=torch.float64),
    )
    allowance = max(1e-4, 3 * rel_err(ref, ref64))
    out = ours("integrated_gradients", z, runner, {"steps": steps, "method": rule})
    err = rel_err(out.maps[0], ref64)
    gaps = out.extras["completeness_gap"]
    print(f"\nIG {rule:17s} {model:14s} rel err {err:.2e} (allowance {allowance:.1e}) gap {gaps}")
    assert err <= allowance
    # completeness: sum(attr) ~ S(X) - S(0) up to the quadrature error; it is reported
    gap = np.abs(out.extras["completeness_gap"])
    expected = out.scores[[0, 1], z.targets[:2]] - np.array(out.extras["baseline_score"])
    ref_gap = np.abs(ref.reshape(2, -1).sum(1) - expected)
    np.testing.assert_allclose(gap, ref_gap, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


@pytest.mark.parametrize("model", ["resnet18", "squeezenet1_1"])
def test_occlusion(model: str, zoo: Any, runner_for: Any) -> None:
    z, runner = zoo(model), runner_for(model)
    ref = captum_attr(
        Occlusion(z.net),
        z,
        sliding_window_shapes=(3, 32, 32),
        strides=(3, 16, 16),
        baselines=0.0,
        perturbations_per_eval=32,
    )
    got = ours("occlusion", z, runner, {"window": 32, "stride": 16, "baseline": 0.0})
    assert got.maps[0].shape == (2, 1, *z.x.shape[2:])
    np.testing.assert_allclose(ref[:, :1], ref[:, 1:2], rtol=0, atol=0)  # same per channel
    err = rel_err(np.broadcast_to(got.maps[0], ref.shape), ref)
    print(f"\nocclusion        {model:14s} rel err {err:.2e}")
    assert err <= 1e-4


def test_smoothgrad_fixed_seed_equals_saliency_at_the_same_noise(zoo: Any, runner_for: Any) -> None:
    """With a fixed seed the noise is documented (smoothgrad_noise, rows in order): the map is
    the mean of Captum's raw saliency at those noisy inputs.

    Known, explained discrepancy: on 2 of the 16 noisy resnet18 inputs our input gradient
    differs from torch's by up to 2% of its maximum (the other 14 agree to 1e-6). Traced on
    noisy input 1: the gradients agree at layer3.0's output and differ at one element of its
    pre-ReLU sum (conv2 + identity), whose value is 1.8e-6 in onnxruntime (activations there
    are O(1)) and <= 0 in torch: a ReLU kink decided by float rounding, after which the one
    flipped element spreads through two convolutions to a region of the input. Not a bug on
    either side; such flips occur on noisy inputs, so the bound here is 3e-2 relative on the
    averaged map, not 1e-4."""
    z, runner = zoo("resnet18"), runner_for("resnet18")
    n, noise = 8, 0.15
    out = ours("smoothgrad", z, runner, {"samples": n, "noise": noise, "seed": 7})
    rng = np.random.default_rng(7)
    sal = Saliency(z.net)
    for r in range(2):
        noisy = z.x[r][None] + smoothgrad_noise(z.x[r], n, noise, rng)
        xs = torch.from_numpy(noisy).requires_grad_(True)
        ref = sal.attribute(xs, target=[z.targets[r]] * n, abs=False).detach().numpy().mean(0)
        err = rel_err(out.maps[0][r], ref)
        share = float((np.abs(out.maps[0][r] - ref) > 1e-4 * np.abs(ref).max()).mean())
        print(f"\nsmoothgrad fixed seed row {r}: rel err {err:.2e}, share > 1e-4 {share:.3%}")
        assert err <= 3e-2


def test_smoothgrad_matches_captum_noise_tunnel_in_expectation(zoo: Any, runner_for: Any) -> None:
    """Different random streams, same distribution: per pixel, our mean and Captum's
    NoiseTunnel(Saliency) mean over n samples each differ by N(0, 2 s^2 / n) where s is the
    per-pixel std of the noisy gradient (estimated from our own samples). |z| > 4 has
    probability 6e-5 per pixel; allow 0.5% of pixels beyond it, and require the sum over
    pixels of z^2 / count to be ~1 (chi-square mean; 0.8..1.25 for this many pixels)."""
    z, runner = zoo("squeezenet1_1"), runner_for("squeezenet1_1")
    n, noise = 48, 0.1
    x = z.x[:1]
    sigma = noise * float(x.max() - x.min())
    rng = np.random.default_rng(3)
    noisy = x + smoothgrad_noise(x[0], n, noise, rng)
    res = runner.gradients(
        noisy, np.eye(1000, dtype=np.float32)[[z.targets[0]] * n], (), input_gradient=True
    )
    samples = res.input_gradient.astype(np.float64)
    s = samples.std(axis=0, ddof=1)
    torch.manual_seed(0)
    tunnel = NoiseTunnel(Saliency(z.net))
    ref = tunnel.attribute(
        torch.from_numpy(x.copy()).requires_grad_(True),
        nt_type="smoothgrad",
        nt_samples=n,
        stdevs=sigma,
        target=z.targets[0],
        abs=False,
    )
    ours_mean = ours(
        "smoothgrad", z, runner, {"samples": n, "noise": noise, "seed": 3}, rows=1
    ).maps[0][0]
    np.testing.assert_allclose(ours_mean, samples.mean(0), rtol=1e-5, atol=1e-7)
    se = np.sqrt(2.0 * s**2 / n)
    keep = se > 0
    zscores = (ours_mean - ref.detach().numpy()[0])[keep] / se[keep]
    beyond = float((np.abs(zscores) > 4).mean())
    chi = float((zscores**2).mean())
    print(f"\nsmoothgrad: share |z|>4 {beyond:.4%}, mean z^2 {chi:.3f}")
    assert beyond < 0.005
    assert 0.8 < chi < 1.25
