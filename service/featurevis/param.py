"""Image parameterisations: an array of parameters -> a batch of RGB images in [0, 1].

* ``fourier``: the image is the inverse real FFT (orthonormal) of a spectrum scaled by 1/f
  (``scale = 1 / max(f, 1/max(h, w)) ** decay_power``, f in cycles per pixel), divided by 4;
* ``pixels``: the parameters are the pre-activation pixels themselves.

Either is then (``decorrelate``) mixed across colour channels by the square root of the
ImageNet colour covariance (normalised by its largest column norm) and squashed by a sigmoid
into [0, 1]. Each parameterisation has the exact adjoint of its Jacobian (``backward``), so
the optimiser steps in parameter space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# The square root of ImageNet's RGB covariance (Lucid's ``color_correlation_svd_sqrt``).
COLOR_SQRT = np.array(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float64
)
COLOR = COLOR_SQRT / np.max(np.linalg.norm(COLOR_SQRT, axis=0))
FFT_DIVISOR = 4.0  # Lucid's "magic" constant: keeps the initial image's contrast low


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> np.ndarray:
    """The (h, w // 2 + 1) per-frequency scale 1 / max(f, 1 / max(h, w)) ** decay_power."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fy * fy + fx * fx)
    return 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power


def _hermitian_weights(w: int) -> np.ndarray:
    """How often each rfft column appears in the full spectrum (1 for DC and Nyquist, else 2):
    the adjoint of irfft2 is rfft2 times these (both orthonormal)."""
    c = np.full(w // 2 + 1, 2.0)
    c[0] = 1.0
    if w % 2 == 0:
        c[-1] = 1.0
    return c


def irfft2_adjoint(g: np.ndarray, w: int) -> np.ndarray:
    """The adjoint of ``x = irfft2(S, s=(h, w), norm='ortho')`` for S seen as (re, im) pairs:
    the gradient of sum(g * x) with respect to S's real and imaginary parts, as a complex
    array (re + i im)."""
    return np.fft.rfft2(g, norm="ortho") * _hermitian_weights(w)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings


def _mix(x: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Per pixel y = matrix @ x over the channel axis of a (B, 3, h, w) array."""
    return np.einsum("ij,bjhw->bihw", matrix, x)


@dataclass
class ImageParam:
    """A batch of images parameterised in ``kind`` space (module docstring)."""

    kind: str  # "fourier" or "pixels"
    batch: int
    height: int
    width: int
    decorrelate: bool = True
    decay_power: float = 1.0
    params: np.ndarray = field(init=False, repr=False)
    _scale: np.ndarray = field(init=False, repr=False)
    _out: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("fourier", "pixels"):
            raise ValueError(f"unknown parameterisation {self.kind!r}")
        self._scale = spectrum_scale(self.height, self.width, self.decay_power)
        self.params = np.zeros(self.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "fourier":  # (re, im) of the half spectrum
            return (self.batch, 3, self.height, self.width // 2 + 1, 2)
        return (self.batch, 3, self.height, self.width)

    def randomize(self, rng: np.random.Generator, sd: float = 0.01) -> None:
        self.params = rng.normal(size=self.shape) * sd

    # -- forward ----------------------------------------------------------------------------

    def _linear(self, params: np.ndarray) -> np.ndarray:
        """Parameters -> decorrelated pre-sigmoid image (the linear part)."""
        if self.kind == "fourier":
            spectrum = (params[..., 0] + 1j * params[..., 1]) * self._scale
            x = np.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho")
            x = x / FFT_DIVISOR
        else:
            x = params
        return _mix(x, COLOR) if self.decorrelate else x

    def image(self) -> np.ndarray:
        """The (B, 3, h, w) images in [0, 1]."""
        self._out = sigmoid(self._linear(self.params))
        return self._out

    # -- adjoint ----------------------------------------------------------------------------

    def backward(self, grad: np.ndarray) -> np.ndarray:
        """d(sum(grad * image())) / d(params), at the parameters of the last ``image()``."""
        if self._out is None:
            self.image()
        assert self._out is not None
        g = grad * self._out * (1.0 - self._out)
        if self.decorrelate:
            g = _mix(g, COLOR.T)
        if self.kind == "pixels":
            return g
        spec = irfft2_adjoint(g / FFT_DIVISOR, self.width) * self._scale
        return np.stack([spec.real, spec.imag], axis=-1)

    # -- initialising from an image ----------------------------------------------------------

    def set_image(self, image: np.ndarray, eps: float = 1e-3) -> None:
        """Parameters whose ``image()`` is ``image`` ((B, 3, h, w) in [0, 1], clipped to
        [eps, 1 - eps] so the sigmoid can reach it): the inverse of each step."""
        image = np.clip(np.asarray(image, dtype=np.float64), eps, 1.0 - eps)
        x = np.log(image) - np.log1p(-image)
        if self.decorrelate:
            x = _mix(x, np.linalg.inv(COLOR))
        if self.kind == "pixels":
            self.params = x
            return
        spectrum = np.fft.rfft2(x * FFT_DIVISOR, norm="ortho") / self._scale
        self.params = np.stack([spectrum.real, spectrum.imag], axis=-1)
