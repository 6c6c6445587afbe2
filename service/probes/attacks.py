"""FGSM and PGD on the posted pixels (docs/probes.md, "Adversarial probes").

The loss is the cross-entropy of the model's softmax where the scores are logits of a
multiclass model (untargeted: ascend the loss of the original class; targeted: descend the
loss of the target); otherwise (multilabel, binary with one output, a graph that ends in its
own activation) the score of the class itself (down, or the target's up). Its gradient at the
logits is the companion graph's seed, so one run gives the gradient at the model input, and
``PixelMap.adjoint`` carries it to the pixels.

* FGSM (Goodfellow et al. 2015): ``u' = clip(u + eps * sign(g), 0, 255)``.
* PGD (Madry et al. 2018, without the random start): ``steps`` of
  ``u <- clip(Proj_eps(u + alpha * sign(g)), 0, 255)``.

The iterates are real-valued pixels; the result is rounded to the nearest level, the change
clipped to ``±floor(eps)``, so the PNG's pixels keep the budget exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas.card import ModelCard
from service.explain.cam import onehot
from service.explain.layout import CanonicalRunner
from service.probes.pixels import PixelMap


def loss_seed(
    scores: np.ndarray, card: ModelCard, labels: Sequence[int], targets: Sequence[int | None]
) -> np.ndarray:
    """Rows of d(objective)/d(scores), the objective to ascend (see the module docstring),
    each scaled to a largest entry of 1: only the sign of the pixel gradient is used, and an
    all-zero row would make the companion graph seed the top class instead."""
    classes = scores.shape[1]
    truth = onehot(list(labels), classes).astype(np.float64)
    aimed = onehot([t if t is not None else 0 for t in targets], classes).astype(np.float64)
    is_targeted = np.array([t is not None for t in targets])[:, None]
    fallback = np.where(is_targeted, aimed, -truth)
    if card.task == "multiclass" and card.output.activation == "none":
        chosen = np.where(is_targeted, aimed, truth)
        p = _softmax_others(np.asarray(scores, dtype=np.float64), chosen)
        # d CE(c) / d z = p - onehot(c), its c entry written as -(sum of the others) so a
        # confident model (p_c == 1.0 in floating point) keeps a direction
        grad = p - p.sum(axis=1, keepdims=True) * chosen
        seed = np.where(is_targeted, -grad, grad)
    else:
        seed = fallback
    peak = np.abs(seed).max(axis=1, keepdims=True)
    seed = np.where(peak > 0, seed / np.where(peak > 0, peak, 1.0), fallback)
    return seed.astype(np.float32)


def _softmax_others(z: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Softmax probabilities of every class but the chosen one (its entry 0), in float64."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return np.where(chosen > 0, 0.0, p)


def pixel_gradients(
    runner: CanonicalRunner,
    maps: Sequence[PixelMap],
    pixels: Sequence[np.ndarray],
    card: ModelCard,
    labels: Sequence[int],
    targets: Sequence[int | None],
) -> list[np.ndarray]:
    """The objective's gradient at each row's pixels (H, W, 3)."""
    x = np.stack([m.forward(u) for m, u in zip(maps, pixels, strict=True)])
    scores, _ = runner.forward(x)
    seed = loss_seed(scores, card, labels, targets)
    result = runner.gradients(x, seed, (), input_gradient=True)
    assert result.input_gradient is not None
    return [m.adjoint(g) for m, g in zip(maps, result.input_gradient, strict=True)]


def attack(
    runner: CanonicalRunner,
    maps: Sequence[PixelMap],
    originals: Sequence[np.ndarray],
    card: ModelCard,
    labels: Sequence[int],
    targets: Sequence[int | None],
    budgets: Sequence[float],
    steps: int,
    step_sizes: Sequence[float],
) -> list[np.ndarray]:
    """The perturbed uint8 pixels of each row (one row per image and budget)."""
    u0 = [np.asarray(u, dtype=np.float64) for u in originals]
    u = [a.copy() for a in u0]
    for _ in range(steps):
        grads = pixel_gradients(runner, maps, u, card, labels, targets)
        for r, g in enumerate(grads):
            stepped = u[r] + step_sizes[r] * np.sign(g)
            u[r] = np.clip(np.clip(stepped, u0[r] - budgets[r], u0[r] + budgets[r]), 0, 255)
    out = []
    for r, a in enumerate(u):
        limit = np.floor(budgets[r])
        delta = np.clip(np.rint(a - u0[r]), -limit, limit)
        out.append(np.clip(u0[r] + delta, 0, 255).astype(np.uint8))
    return out


def amplified(change: np.ndarray, epsilon: float) -> np.ndarray:
    """A perturbation (levels) for viewing: 128 + change * 127 / floor(epsilon), uint8."""
    scale = 127.0 / max(1.0, np.floor(epsilon))
    return np.clip(np.rint(128.0 + np.asarray(change, np.float64) * scale), 0, 255).astype(np.uint8)
