"""The optimisation loops: feature visualisation / inversion (Adam on a parameterised image)
and DeepDream (normalised gradient ascent on a posted image, octave by octave)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .model import Target
from .objectives import Objective
from .param import ImageParam
from .transforms import Transform, compose, resize, standard

Progress = Callable[[int, int, float], None]  # (step, steps, objective value)


class Cancelled(Exception):
    """The job was cancelled (or ran past its deadline) between two steps."""


@dataclass
class Settings:
    """Lucid's defaults (docs/featurevis.md)."""

    steps: int = 512
    lr: float = 0.05
    size: int = 128  # the parameterised image's side; upsampled to the model's input size
    batch: int = 1
    param: str = "fourier"  # or "pixels"
    decorrelate: bool = True
    sd: float = 0.01  # initial parameters ~ N(0, sd^2)
    decay_power: float = 1.0
    transforms: Sequence[Transform] | str = "standard"  # a list, "standard" or "none"
    seed: int | None = None
    tv: float = 0.0  # weight of the total-variation prior (mean squared neighbour difference)
    l2: float = 0.0  # weight of the alpha-norm prior, mean |x - 0.5|^alpha
    alpha: float = 2.0
    init: np.ndarray | None = field(default=None, repr=False)  # (B, 3, s, s) in [0, 1]


@dataclass
class Result:
    images: np.ndarray  # (B, h, w, 3) uint8
    curve: list[float]  # objective at each step (the transformed image's)
    final: float  # objective of the final images, untransformed
    initial: float  # objective of the initial images, untransformed
    seconds: float


class Adam:
    """Adam (Kingma & Ba 2015) ascending: x += lr * m_hat / (sqrt(v_hat) + eps)."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(g), np.zeros_like(g)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        m_hat = self.m / (1 - self.b1**self.t)
        v_hat = self.v / (1 - self.b2**self.t)
        return x + self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def priors(img: np.ndarray, tv: float, l2: float, alpha: float) -> tuple[float, np.ndarray]:
    """-(tv * TV(img) + l2 * N_alpha(img)) and its gradient: TV the mean squared difference of
    neighbouring pixels, N_alpha the mean of |img - 0.5|^alpha (Mahendran & Vedaldi 2015)."""
    value, grad = 0.0, np.zeros_like(img)
    if tv:
        dy = img[..., 1:, :] - img[..., :-1, :]
        dx = img[..., :, 1:] - img[..., :, :-1]
        n = img.size
        value -= tv * (float((dy * dy).sum()) + float((dx * dx).sum())) / n
        g = np.zeros_like(img)
        g[..., 1:, :] += 2 * dy
        g[..., :-1, :] -= 2 * dy
        g[..., :, 1:] += 2 * dx
        g[..., :, :-1] -= 2 * dx
        grad -= tv * g / n
    if l2:
        c = img - 0.5
        n = img.size
        value -= l2 * float((np.abs(c) ** alpha).sum()) / n
        grad -= l2 * alpha * np.sign(c) * np.abs(c) ** (alpha - 1) / n
    return value, grad


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img.transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)


def _never() -> bool:
    return False


def visualize(
    target: Target,
    objective: Objective,
    settings: Settings,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = _never,
) -> Result:
    """Maximise ``objective`` over an image parameterised as ``settings`` says."""
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    param = ImageParam(
        settings.param,
        settings.batch,
        settings.size,
        settings.size,
        decorrelate=settings.decorrelate,
        decay_power=settings.decay_power,
    )
    if settings.init is not None:
        param.set_image(settings.init)
    else:
        param.randomize(rng, settings.sd)
    if isinstance(settings.transforms, str):
        chain = standard() if settings.transforms == "standard" else []
    else:
        chain = list(settings.transforms)
    opt = Adam(settings.lr)
    shapes: dict[str, tuple[int, ...]] = {}
    curve: list[float] = []

    def plain(img: np.ndarray) -> float:
        big, _ = resize(img, target.size)
        return target.step(objective, big, shapes)[0]

    initial = plain(param.image())
    for step in range(settings.steps):
        if cancelled():
            raise Cancelled(f"stopped after {step} of {settings.steps} steps")
        img = param.image().astype(np.float32)  # the transforms run in float32
        seen, adjoint = compose(chain, img, rng)
        big, up = resize(seen, target.size)
        value, grad = target.step(objective, big, shapes)
        grad = adjoint(up(grad))
        if settings.tv or settings.l2:
            prior, pgrad = priors(img, settings.tv, settings.l2, settings.alpha)
            value += prior
            grad = grad + pgrad
        param.params = opt.step(param.params, param.backward(grad))
        curve.append(float(value))
        if progress is not None:
            progress(step + 1, settings.steps, float(value))
    img = param.image()
    final = plain(img)
    return Result(_to_uint8(img), curve, final, initial, time.perf_counter() - started)


@dataclass
class DreamSettings:
    """The Keras DeepDream example's schedule, in [0, 1] pixel units."""

    octaves: int = 3
    octave_scale: float = 1.4
    steps: int = 20  # per octave
    step_size: float = 0.01
    max_value: float | None = None  # stop an octave once the objective passes this
    jitter: int = 8  # random roll, pixels
    seed: int | None = None


def deepdream(
    target: Target,
    objective: Objective,
    image: np.ndarray,
    settings: DreamSettings,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] = _never,
) -> Result:
    """DeepDream on ``image`` ((B, 3, H, W) in [0, 1]): at each octave, from the smallest,
    ``steps`` of img += step_size * g / mean|g|, then the detail lost by the downscaling is
    put back before the next, larger octave."""
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    original = np.asarray(image, dtype=np.float64)
    h, w = original.shape[-2:]
    shapes = [
        (max(8, round(h / settings.octave_scale**i)), max(8, round(w / settings.octave_scale**i)))
        for i in reversed(range(settings.octaves))
    ]
    total = settings.octaves * settings.steps
    tensor_shapes: dict[str, tuple[int, ...]] = {}

    def value_at(img: np.ndarray) -> float:
        return target.step(objective, resize(img, target.size)[0], tensor_shapes)[0]

    initial = value_at(original)
    shrunk = resize(original, shapes[0])[0]
    img = shrunk.copy()
    curve: list[float] = []
    done = 0
    for shape in shapes:
        img = resize(img, shape)[0]
        for _ in range(settings.steps):
            if cancelled():
                raise Cancelled(f"stopped after {done} of {total} steps")
            dy, dx = (int(v) for v in rng.integers(-settings.jitter, settings.jitter + 1, 2))
            rolled = np.roll(img, (dy, dx), axis=(-2, -1))
            big, up = resize(rolled, target.size)
            value, grad = target.step(objective, big, tensor_shapes)
            grad = np.roll(up(grad), (-dy, -dx), axis=(-2, -1))
            grad = grad / max(float(np.abs(grad).mean()), 1e-12)
            img = np.clip(img + settings.step_size * grad, 0.0, 1.0)
            done += 1
            curve.append(float(value))
            if progress is not None:
                progress(done, total, float(value))
            if settings.max_value is not None and value > settings.max_value:
                break
        upscaled = resize(shrunk, shape)[0]
        same = resize(original, shape)[0]
        img = np.clip(img + (same - upscaled), 0.0, 1.0)
        shrunk = same
    final = value_at(img)
    return Result(_to_uint8(img), curve, final, initial, time.perf_counter() - started)
