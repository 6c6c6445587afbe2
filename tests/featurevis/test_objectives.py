"""Objectives: each gradient against finite differences, and each value rising over a run."""

from __future__ import annotations

import numpy as np
import pytest

from service.featurevis import objectives as O
from service.featurevis.optimize import Cancelled, Settings, visualize
from tests.featurevis.conftest import DEEP, MID, SIZE

L = "layer"


def _all(acts: dict[str, np.ndarray]) -> list[O.Objective]:
    a = acts[L]
    return [
        O.Neuron(L, 2),
        O.Neuron(L, 1, x=0, y=3),
        O.Channel(L, 3),
        O.Class("logits", 1),
        O.Direction(L, tuple(np.linspace(-1, 1, a.shape[1]))),
        O.LayerEnergy(L),
        O.FeatureMatch(L, np.random.default_rng(5).normal(size=a.shape[1:])[None]),
        O.Diversity(L),
        O.Channel(L, 0) + 2.0 * O.Neuron(L, 1) - O.Class("logits", 0),
        O.Interpolate(O.Channel(L, 0), O.Class("logits", 2)),
    ]


@pytest.mark.parametrize("k", range(10))
def test_gradient_by_finite_differences(k: int) -> None:
    rng = np.random.default_rng(k)
    acts = {L: rng.normal(size=(3, 4, 5, 6)), "logits": rng.normal(size=(3, 4))}
    objective = _all(acts)[k]
    rows = rng.uniform(0.1, 1.0, size=3)
    _, grads = objective(acts, rows)
    for name, a in acts.items():
        d = rng.normal(size=a.shape)
        eps = 1e-6
        up = objective({**acts, name: a + eps * d}, rows)[0]
        down = objective({**acts, name: a - eps * d}, rows)[0]
        expected = (up - down) / (2 * eps)
        got = float((grads.get(name, np.zeros_like(a)) * d).sum())
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-8), name


def test_linear_objectives_say_so() -> None:
    assert O.Channel(L, 0).linear and (O.Channel(L, 0) - O.Neuron(L, 1)).linear
    assert not O.LayerEnergy(L).linear and not (O.Channel(L, 0) + O.Diversity(L)).linear


QUICK = {"steps": 40, "size": SIZE, "seed": 0, "lr": 0.05}


def _objectives(small) -> dict[str, O.Objective]:
    acts = small.target.activations(np.full((1, 3, SIZE, SIZE), 0.5), [DEEP])
    target = small.target.activations(
        np.random.default_rng(3).uniform(size=(1, 3, SIZE, SIZE)), [MID]
    )[MID]
    k = acts[DEEP].shape[1]
    return {
        "neuron": O.Neuron(DEEP, 3),
        "channel": O.Channel(DEEP, 5),
        "layer": O.LayerEnergy(MID),
        "class": O.Class("logits", 2),
        "direction": O.Direction(DEEP, tuple(np.random.default_rng(0).normal(size=k))),
        "sum": O.Channel(DEEP, 1) + 0.5 * O.Neuron(MID, 2),
        "difference": O.Channel(DEEP, 1) - O.Channel(DEEP, 4),
        "interpolate": O.Interpolate(O.Channel(DEEP, 1), O.Channel(DEEP, 2)),
        "diversity": O.Channel(DEEP, 1) + 0.1 * O.Diversity(MID),
        "invert": O.FeatureMatch(MID, target),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "neuron",
        "channel",
        "layer",
        "class",
        "direction",
        "sum",
        "difference",
        "interpolate",
        "diversity",
        "invert",
    ],
)
def test_the_objective_rises_over_the_run(small, kind: str) -> None:
    objective = _objectives(small)[kind]
    batch = 3 if kind in ("interpolate", "diversity") else 1
    extra = {"tv": 0.1, "l2": 0.1} if kind == "invert" else {}
    result = visualize(small.target, objective, Settings(batch=batch, **QUICK, **extra))
    curve = np.array(result.curve)
    assert len(curve) == QUICK["steps"]
    assert curve[-8:].mean() > curve[:8].mean(), curve
    assert result.final > result.initial, (result.initial, result.final)


@pytest.mark.parametrize("param", ["fourier", "pixels"])
def test_a_fixed_seed_reproduces_the_run(small, param: str) -> None:
    s = Settings(steps=5, size=SIZE, seed=7, param=param)
    a = visualize(small.target, O.Channel(DEEP, 0), s)
    b = visualize(small.target, O.Channel(DEEP, 0), s)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.curve == b.curve
    c = visualize(small.target, O.Channel(DEEP, 0), Settings(steps=5, size=SIZE, seed=8))
    assert not np.array_equal(a.images, c.images)


def test_progress_is_monotonic_and_cancel_stops(small) -> None:
    seen: list[int] = []

    def progress(step: int, steps: int, value: float) -> None:
        seen.append(step)

    visualize(small.target, O.Channel(DEEP, 0), Settings(steps=6, size=SIZE), progress)
    assert seen == [1, 2, 3, 4, 5, 6]
    seen.clear()
    with pytest.raises(Cancelled):
        visualize(
            small.target,
            O.Channel(DEEP, 0),
            Settings(steps=50, size=SIZE),
            progress,
            cancelled=lambda: len(seen) >= 3,
        )
    assert seen == [1, 2, 3]


def test_a_zero_seed_row_has_no_gradient_even_at_the_score(small) -> None:
    """Interpolating from a class to a channel gives the last row a zero seed at the logits;
    the score's companion graph would read it as the top class (autoseed)."""
    img = np.random.default_rng(0).uniform(size=(3, 3, SIZE, SIZE))
    shapes: dict[str, tuple[int, ...]] = {}
    obj = O.Interpolate(O.Class("logits", 1), O.Channel(DEEP, 0))
    small.target.step(obj, img, shapes)  # fills the shapes
    _, grad = small.target.step(obj, img, shapes)
    _, only_channel = small.target.step(O.Channel(DEEP, 0) * (1 / 3), img[2:], {})
    np.testing.assert_allclose(grad[2:], only_channel, rtol=1e-5, atol=1e-9)
