"""Objectives: what the optimisation maximises, as functions of tensors of the graph.

Each objective reads one or more tensors (canonical layout: (B, K, ...) with the channels on
axis 1) and returns, for per-row weights ``rows`` (B,), its value sum_b rows_b * v_b and the
gradient of that value with respect to each tensor it reads. The default ``rows`` are 1 / B,
so a value is the batch mean. The gradient is the *seed* the companion graph of that tensor
turns into d value / d image.

``linear`` objectives have a gradient that does not depend on the activations (neuron,
channel, class, direction and their sums): one companion run per tensor per step. The others
(layer / DeepDream, diversity, feature matching) need the activations first: one forward, then
the companion runs with the seeds computed from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Acts = Mapping[str, np.ndarray]
Grads = dict[str, np.ndarray]


class Objective:
    linear: bool = True

    @property
    def tensors(self) -> tuple[str, ...]:
        raise NotImplementedError

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        raise NotImplementedError

    def __call__(self, acts: Acts, rows: np.ndarray | None = None) -> tuple[float, Grads]:
        batch = next(iter(acts.values())).shape[0]
        if rows is None:
            rows = np.full(batch, 1.0 / batch)
        return self.evaluate(acts, rows)

    # algebra: a + b, a - b, w * a
    def __add__(self, other: Objective) -> Objective:
        return Sum((self, other), (1.0, 1.0))

    def __sub__(self, other: Objective) -> Objective:
        return Sum((self, other), (1.0, -1.0))

    def __mul__(self, weight: float) -> Objective:
        return Sum((self,), (float(weight),))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Sum((self,), (-1.0,))


def _rows(rows: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``rows`` shaped to broadcast against the (B, ...) array ``a``."""
    return rows.reshape((-1,) + (1,) * (a.ndim - 1))


@dataclass(frozen=True)
class Neuron(Objective):
    """A[b, channel, y, x]: one unit; ``y`` and ``x`` default to the centre (h // 2, w // 2)."""

    layer: str
    channel: int
    x: int | None = None
    y: int | None = None

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def index(self, a: np.ndarray) -> tuple[slice | int, ...]:
        if a.ndim == 2:
            return (slice(None), self.channel)
        centre = [d // 2 for d in a.shape[2:]]
        pos = list(centre)
        if len(pos) >= 2:
            pos[-2] = self.y if self.y is not None else centre[-2]
            pos[-1] = self.x if self.x is not None else centre[-1]
        return (slice(None), self.channel, *pos)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer]
        at = self.index(a)
        g = np.zeros_like(a, dtype=np.float64)
        g[at] = rows
        return float(np.sum(rows * a[at])), {self.layer: g}


@dataclass(frozen=True)
class Channel(Objective):
    """mean over space of A[b, channel]."""

    layer: str
    channel: int

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer]
        plane = a[:, self.channel]
        size = max(1, int(np.prod(plane.shape[1:])))
        g = np.zeros_like(a, dtype=np.float64)
        g[:, self.channel] = _rows(rows, plane) / size
        values = plane.reshape(a.shape[0], -1).mean(axis=1)
        return float(np.sum(rows * values)), {self.layer: g}


@dataclass(frozen=True)
class Class(Objective):
    """The pre-softmax score of class ``index``: column ``index`` of the score tensor."""

    logits: str
    index: int

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.logits,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.logits].reshape(acts[self.logits].shape[0], -1)
        g = np.zeros_like(a, dtype=np.float64)
        g[:, self.index] = rows
        return float(np.sum(rows * a[:, self.index])), {
            self.logits: g.reshape(acts[self.logits].shape)
        }


@dataclass(frozen=True)
class Direction(Objective):
    """mean over space of sum_k v_k A[b, k]: a direction in the layer's channel space."""

    layer: str
    vector: tuple[float, ...]

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer]
        v = np.asarray(self.vector, dtype=np.float64).reshape((1, -1) + (1,) * (a.ndim - 2))
        size = max(1, int(np.prod(a.shape[2:])))
        values = (a * v).reshape(a.shape[0], -1).sum(axis=1) / size
        g = np.broadcast_to(v, a.shape) * _rows(rows, a) / size
        return float(np.sum(rows * values)), {self.layer: np.ascontiguousarray(g)}


@dataclass(frozen=True)
class LayerEnergy(Objective):
    """DeepDream: mean over channels and space of A^2."""

    layer: str
    linear = False

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer].astype(np.float64)
        size = max(1, int(np.prod(a.shape[1:])))
        values = (a * a).reshape(a.shape[0], -1).mean(axis=1)
        return float(np.sum(rows * values)), {self.layer: 2.0 * a * _rows(rows, a) / size}


@dataclass(frozen=True)
class FeatureMatch(Objective):
    """Inversion (Mahendran & Vedaldi 2015): -||A - A0||^2 / ||A0||^2, A0 the features of the
    image to invert (one target row, or one per batch row)."""

    layer: str
    target: np.ndarray
    linear = False

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer].astype(np.float64)
        t = np.broadcast_to(self.target.astype(np.float64), a.shape)
        norm = np.maximum((t * t).reshape(a.shape[0], -1).sum(axis=1), 1e-12)
        diff = a - t
        values = -(diff * diff).reshape(a.shape[0], -1).sum(axis=1) / norm
        g = -2.0 * diff * _rows(rows / norm, a)
        return float(np.sum(rows * values)), {self.layer: g}


@dataclass(frozen=True)
class Diversity(Objective):
    """-(1/B) sum_{i != j} <g_i, g_j>, g_b the Frobenius-normalised Gram matrix of row b's
    channels (K x K, over space): rewards a batch whose rows differ in style."""

    layer: str
    linear = False

    @property
    def tensors(self) -> tuple[str, ...]:
        return (self.layer,)

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        a = acts[self.layer].astype(np.float64)
        b, k = a.shape[:2]
        weight = float(np.sum(rows))
        if b < 2:
            return 0.0, {self.layer: np.zeros_like(a)}
        f = a.reshape(b, k, -1)
        grams = np.matmul(f, f.transpose(0, 2, 1))
        norms = np.maximum(np.sqrt((grams * grams).sum(axis=(1, 2))), 1e-12)
        unit = grams / norms[:, None, None]
        total = unit.sum(axis=0)
        value = -(float((total * total).sum()) - float((unit * unit).sum())) / b
        p = -2.0 / b * (total[None] - unit)  # d value / d unit_i
        dots = (p * unit).sum(axis=(1, 2))
        dgram = (p - dots[:, None, None] * unit) / norms[:, None, None]
        df = 2.0 * np.matmul(dgram, f)  # the Gram matrices are symmetric
        return weight * value, {self.layer: weight * df.reshape(a.shape)}


@dataclass(frozen=True)
class Sum(Objective):
    """sum_i w_i * o_i: sums, differences (w = -1) and weighted mixes."""

    terms: tuple[Objective, ...]
    weights: tuple[float, ...]

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return all(t.linear for t in self.terms)

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(n for t in self.terms for n in t.tensors))

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        value = 0.0
        grads: Grads = {}
        for term, w in zip(self.terms, self.weights, strict=True):
            v, g = term.evaluate(acts, rows * w)
            value += v
            for name, arr in g.items():
                grads[name] = grads[name] + arr if name in grads else arr
        return value, grads


@dataclass(frozen=True)
class Interpolate(Objective):
    """Row b of the batch maximises (1 - t_b) * a + t_b * b, t_b = b / (B - 1): a morph from
    one objective to the other across the batch."""

    a: Objective
    b: Objective

    @property
    def linear(self) -> bool:  # type: ignore[override]
        return self.a.linear and self.b.linear

    @property
    def tensors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.a.tensors, *self.b.tensors)))

    def evaluate(self, acts: Acts, rows: np.ndarray) -> tuple[float, Grads]:
        n = rows.shape[0]
        t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        va, ga = self.a.evaluate(acts, rows * (1 - t))
        vb, gb = self.b.evaluate(acts, rows * t)
        for name, arr in gb.items():
            ga[name] = ga[name] + arr if name in ga else arr
        return va + vb, ga


def tensors_of(objectives: Sequence[Objective]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for o in objectives for n in o.tensors))
