"""The Fourier and pixel parameterisations: round trips, the 1/f spectrum, exact adjoints."""

from __future__ import annotations

import numpy as np
import pytest

from service.featurevis.param import ImageParam, irfft2_adjoint, spectrum_scale


@pytest.mark.parametrize("kind", ["fourier", "pixels"])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 20), (9, 7)])
def test_an_image_round_trips(kind: str, h: int, w: int) -> None:
    img = np.random.default_rng(0).uniform(0.05, 0.95, size=(2, 3, h, w))
    p = ImageParam(kind, 2, h, w)
    p.set_image(img)
    np.testing.assert_allclose(p.image(), img, atol=1e-9)


def test_the_spectrum_scale_is_one_over_f() -> None:
    h, w = 32, 48
    s = spectrum_scale(h, w)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    mask = f > 1 / max(h, w)
    np.testing.assert_allclose(s[mask] * f[mask], 1.0)
    assert s[0, 0] == max(h, w)  # DC clamped at f = 1 / max(h, w)


def test_random_init_has_a_one_over_f_amplitude_spectrum() -> None:
    """White noise in parameter space -> an image whose radially averaged amplitude falls as
    1/f (slope -1 on log-log), before the colour mixing and the sigmoid."""
    h = w = 64
    p = ImageParam("fourier", 64, h, w, decorrelate=False)
    p.randomize(np.random.default_rng(0), sd=1.0)
    spectrum = (p.params[..., 0] + 1j * p.params[..., 1]) * p._scale
    x = np.fft.irfft2(spectrum, s=(h, w), norm="ortho")
    amp = np.abs(np.fft.rfft2(x, norm="ortho")).mean(axis=(0, 1))
    f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    sel = (f > 2 / h) & (f < 0.4)
    slope = np.polyfit(np.log(f[sel]), np.log(amp[sel]), 1)[0]
    assert -1.1 < slope < -0.9, slope


@pytest.mark.parametrize("w", [8, 9])
def test_irfft2_adjoint_dot_product(w: int) -> None:
    rng = np.random.default_rng(1)
    h = 6
    s = rng.normal(size=(h, w // 2 + 1)) + 1j * rng.normal(size=(h, w // 2 + 1))
    y = rng.normal(size=(h, w))
    lhs = float((np.fft.irfft2(s, s=(h, w), norm="ortho") * y).sum())
    adj = irfft2_adjoint(y, w)
    rhs = float((s.real * adj.real).sum() + (s.imag * adj.imag).sum())
    assert lhs == pytest.approx(rhs, rel=1e-10)


@pytest.mark.parametrize("kind", ["fourier", "pixels"])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_backward_is_the_gradient(kind: str, decorrelate: bool) -> None:
    rng = np.random.default_rng(2)
    p = ImageParam(kind, 1, 10, 11, decorrelate=decorrelate)
    p.randomize(rng, sd=0.5)
    g = rng.normal(size=(1, 3, 10, 11))
    base = p.params.copy()
    grad = p.backward(g) if p.image() is not None else None
    d = rng.normal(size=base.shape)
    eps = 1e-6
    p.params = base + eps * d
    up = float((p.image() * g).sum())
    p.params = base - eps * d
    down = float((p.image() * g).sum())
    assert (up - down) / (2 * eps) == pytest.approx(float((grad * d).sum()), rel=1e-5)
