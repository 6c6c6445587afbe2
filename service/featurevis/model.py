"""The model side of a step: image in [0, 1] -> the model's input -> objective and gradient.

``Target`` wraps the runner the explain methods use (a CanonicalRunner: NCHW rows whatever
the model's layout) and the card's preprocessing. One step of a linear objective is one
companion run per tensor it reads (``ModelRunner.objective_gradient``: the companion graph
whose score is that tensor, built once per (tensor, rule)); other objectives first run the
forward that exposes their tensors, to compute their seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models_store.inspect import TokenGrid
from service.explain.layout import CanonicalRunner
from service.runtime.runner import ModelRunner

from .objectives import Objective

RGB_TO_GRAY = np.array([0.299, 0.587, 0.114])


@dataclass
class Preprocess:
    """pixels in [0, 1] RGB -> ((255 * p) * scale - mean) / std in the card's colour order."""

    scale: float
    mean: Sequence[float]
    std: Sequence[float]
    color: str = "RGB"

    def _affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        mean = np.resize(np.asarray(self.mean, dtype=np.float64), channels)
        std = np.resize(np.asarray(self.std, dtype=np.float64), channels)
        gain = 255.0 * self.scale / std
        return gain.reshape(1, -1, 1, 1), (mean / std).reshape(1, -1, 1, 1)

    def forward(self, img: np.ndarray) -> np.ndarray:
        if self.color == "BGR":
            img = img[:, ::-1]
        elif self.color == "L":
            img = np.einsum("c,bchw->bhw", RGB_TO_GRAY, img)[:, None]
        gain, offset = self._affine(img.shape[1])
        return (img * gain - offset).astype(np.float32)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        gain, _ = self._affine(g.shape[1])
        g = g * gain.astype(g.dtype)  # float32 stays float32
        if self.color == "BGR":
            return np.ascontiguousarray(g[:, ::-1])
        if self.color == "L":
            return RGB_TO_GRAY.reshape(1, 3, 1, 1).astype(g.dtype) * g
        return g

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """The model's input -> pixels in [0, 1] (for tests and round trips)."""
        gain, offset = self._affine(x.shape[1])
        img = (x + offset) / gain
        return img[:, ::-1] if self.color == "BGR" else img


def grid_seed_to_tokens(grid: TokenGrid, seed: np.ndarray) -> np.ndarray:
    """A seed on a token layer's (R, C, h, w) patch grid -> the (R, L, C) token tensor: the
    patch tokens row-major, zero at the extra (class) tokens, which the grid does not show."""
    r, c, h, w = seed.shape
    out = np.zeros((r, grid.tokens, c), dtype=seed.dtype)
    out[:, grid.prefix : grid.prefix + h * w] = seed.transpose(0, 2, 3, 1).reshape(r, h * w, c)
    return out


class Target:
    """One model seen as a differentiable function of an image in [0, 1]."""

    def __init__(
        self,
        runner: ModelRunner | CanonicalRunner,
        preprocess: Preprocess,
        size: tuple[int, int],
        rule: str = "standard",
    ) -> None:
        self.runner = runner
        self.preprocess = preprocess
        self.size = size  # the model's input (height, width)
        self.rule = rule

    @property
    def logits(self) -> str:
        return str(self.runner.score_output)

    def _gradient(self, x: np.ndarray, tensor: str, seed: np.ndarray) -> tuple[np.ndarray, ...]:
        r = self.runner
        if isinstance(r, CanonicalRunner):
            grid = r.token_grids.get(tensor)
            if grid is not None:  # the patch grid's seed back into the (R, L, C) tokens
                seed_model = grid_seed_to_tokens(grid, seed)
            elif seed.ndim == 4:
                seed_model = r.layer_from_nchw(tensor, seed)
            else:
                seed_model = seed
            value, grad = r.inner.objective_gradient(
                r.to_model(x), tensor, seed_model, rule=self.rule
            )
            if grid is not None or value.ndim == 4:
                value = r.layer_to_nchw(tensor, value)
            grad = r.from_model(grad)
        else:
            value, grad = r.objective_gradient(x, tensor, seed, rule=self.rule)
        # A row whose seed is all zero has a zero gradient; the score's companion graph reads
        # such a row as "the top class" (models_store/companion/autoseed.py), so say it here.
        unset = ~np.asarray(seed).reshape(seed.shape[0], -1).any(axis=1)
        if unset.any():
            grad = np.array(grad, copy=True)
            grad[unset] = 0.0
        return value, grad

    def activations(self, img: np.ndarray, tensors: Sequence[str]) -> dict[str, np.ndarray]:
        """The (canonical) values of ``tensors`` at the images ``img`` (model size)."""
        x = self.preprocess.forward(img)
        extra = [t for t in tensors if t != self.logits]
        scores, acts = self.runner.forward(x, extra)
        found = dict(zip(extra, acts, strict=True))
        found[self.logits] = scores
        return {t: found[t] for t in tensors}

    def scores(self, img: np.ndarray) -> np.ndarray:
        return self.runner.forward(self.preprocess.forward(img))[0]

    def step(
        self,
        objective: Objective,
        img: np.ndarray,
        shapes: dict[str, tuple[int, ...]],
    ) -> tuple[float, np.ndarray]:
        """The objective at ``img`` (B, C, H, W) in [0, 1], model size, and its gradient with
        respect to ``img``. ``shapes`` caches each tensor's canonical shape (filled here)."""
        x = self.preprocess.forward(img)
        tensors = objective.tensors
        if objective.linear and all(t in shapes for t in tensors):
            _, seeds = objective({t: np.zeros(shapes[t]) for t in tensors})
            acts: dict[str, np.ndarray] = {}
            grad = np.zeros(x.shape, np.float32)
            for t in tensors:
                value, g = self._gradient(x, t, seeds[t])
                acts[t] = value
                grad += g
            total, _ = objective(acts)
            return total, self.preprocess.adjoint(grad)
        acts = self.activations(img, tensors)
        for t, a in acts.items():
            shapes[t] = a.shape
        total, seeds = objective(acts)
        grad = np.zeros(x.shape, np.float32)
        for t in tensors:
            grad += self._gradient(x, t, seeds[t])[1]
        return total, self.preprocess.adjoint(grad)
