"""Faithfulness checks against a direct per-step implementation: each perturbed image built
by hand in a Python loop and run through the model on its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from schemas.explain import Faithfulness
from service.explain.faithfulness import faithfulness
from service.explain.gradients import gaussian_blur
from service.explain.layout import CanonicalRunner
from service.runtime.runner import ModelRunner
from tests.conftest import tiny_card, tiny_classifier


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def make_runner(
    tmp_path: Path, name: str, **shape: int
) -> tuple[CanonicalRunner, ort.InferenceSession]:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(tiny_classifier(**shape))
    derived = tmp_path / f"{name}-derived"
    derived.mkdir()
    inner = ModelRunner(path, derived, f"sha-{name}", "input", "logits", open_session)
    return CanonicalRunner(inner), open_session(path)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z.astype(np.float64) - z.max())
    return e / e.sum()


def reference(
    session: ort.InferenceSession,
    x: np.ndarray,
    m: np.ndarray,
    target: int,
    steps: int,
    baseline: str,
) -> dict[str, object]:
    """The definitions of docs/methods.md, one image per model run."""

    def prob(image: np.ndarray) -> float:
        logits = session.run(None, {"input": image[None].astype(np.float32)})[0][0]
        return float(softmax(logits)[target])

    _, h, w = x.shape
    pos = np.maximum(m.astype(np.float64), 0.0)
    rel = pos / pos.max() if pos.max() > 0 else np.zeros_like(pos)
    rel = rel.astype(np.float32)
    # sigma 5 input pixels, as documented
    base = gaussian_blur(x[None], 5.0)[0] if baseline == "blur" else np.zeros_like(x)
    # order: by relevance descending, equal values in row-major order (sorted by hand)
    flat = rel.ravel()
    order = sorted(range(h * w), key=lambda i: (-float(flat[i]), i))
    p = prob(x)
    masked = prob(x * rel[None])
    deletion, insertion = [], []
    for k in range(steps + 1):
        n = round(k * h * w / steps)
        chosen = order[:n]
        deleted, inserted = x.copy(), base.copy()
        for i in chosen:
            y, xx = divmod(i, w)
            deleted[:, y, xx] = base[:, y, xx]
            inserted[:, y, xx] = x[:, y, xx]
        deletion.append(prob(deleted))
        insertion.append(prob(inserted))

    def trapezoid(curve: list[float]) -> float:
        return sum((curve[k] + curve[k + 1]) / 2 / steps for k in range(steps))

    return {
        "confidence_drop": (p - masked) / p,
        "masked_probability": masked,
        "deletion_curve": deletion,
        "insertion_curve": insertion,
        "deletion_auc": trapezoid(deletion),
        "insertion_auc": trapezoid(insertion),
    }


def check(got: dict[str, object], want: dict[str, object]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize(
    ("shape", "steps", "baseline"),
    [
        ({}, 20, "zero"),
        ({}, 7, "blur"),
        ({"height": 24, "width": 40, "classes": 5, "seed": 3}, 20, "zero"),
        ({"height": 24, "width": 40, "classes": 5, "seed": 3}, 9, "blur"),
    ],
)
def test_matches_a_per_step_loop(
    tmp_path: Path, shape: dict[str, int], steps: int, baseline: str
) -> None:
    runner, session = make_runner(tmp_path, "m", **shape)
    h, w = shape.get("height", 8), shape.get("width", 8)
    classes = shape.get("classes", 3)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(3, 3, h, w)).astype(np.float32)
    maps = [rng.normal(size=(h, w)).astype(np.float32) for _ in range(3)]
    targets = [0, classes - 1, 1]
    options = Faithfulness(steps=steps, baseline=baseline)
    got = faithfulness(runner, x, maps, targets, tiny_card(), options)
    assert len(got) == 3
    for r in range(3):
        assert len(got[r]["deletion_curve"]) == steps + 1
        check(got[r], reference(session, x[r], maps[r], targets[r], steps, baseline))


def test_ties_and_a_single_step(tmp_path: Path) -> None:
    runner, session = make_runner(tmp_path, "tiny")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    # few distinct values: the order of equal pixels decides the curves
    tied = np.repeat(np.array([[0.0, 1.0, 1.0, 2.0]]), 16, axis=0).reshape(8, 8)
    flat = np.zeros((8, 8))  # no positive part: M = 0, every pixel tied
    for steps in (1, 3, 5):
        got = faithfulness(runner, x, [tied, flat], [2, 0], tiny_card(), Faithfulness(steps=steps))
        check(got[0], reference(session, x[0], tied, 2, steps, "zero"))
        check(got[1], reference(session, x[1], flat, 0, steps, "zero"))
        if steps == 1:  # the trapezoid of two points
            d = got[0]["deletion_curve"]
            assert got[0]["deletion_auc"] == pytest.approx((d[0] + d[1]) / 2)
    # an all-zero map masks everything: x * M is the zero baseline
    assert got[1]["masked_probability"] == pytest.approx(got[1]["deletion_curve"][-1], abs=1e-6)


def test_only_the_asked_checks_and_one_model_run(tmp_path: Path) -> None:
    runner, session = make_runner(tmp_path, "tiny")
    calls = []
    forward = runner.forward

    def counting(batch: np.ndarray, *args: object) -> object:
        calls.append(batch.shape[0])
        return forward(batch, *args)

    runner.forward = counting  # type: ignore[method-assign]
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    maps = [np.arange(64.0).reshape(8, 8)] * 2
    only = Faithfulness(checks=["insertion"], steps=4)
    got = faithfulness(runner, x, maps, [1, 2], tiny_card(), only)
    assert set(got[0]) == {"insertion_auc", "insertion_curve"}
    check(
        got[1],
        {
            k: v
            for k, v in reference(session, x[1], maps[1], 2, 4, "zero").items()
            if k.startswith("insertion")
        },
    )
    drop = faithfulness(
        runner, x, maps, [1, 2], tiny_card(), Faithfulness(checks=["confidence_drop"])
    )
    assert set(drop[0]) == {"confidence_drop", "masked_probability"}
    every = faithfulness(runner, x, maps, [1, 2], tiny_card(), Faithfulness(steps=4))
    assert set(every[0]) == {
        "confidence_drop",
        "masked_probability",
        "deletion_auc",
        "deletion_curve",
        "insertion_auc",
        "insertion_curve",
    }
    # one runner call per request; coinciding inputs run once: x, [x * M], the baseline and
    # the steps - 1 inner steps of each curve
    assert calls == [2 * (1 + 1 + 3), 2 * 2, 2 * (1 + 1 + 1 + 2 * 3)]
    assert all(c <= 2 * (1 + 2 * (4 + 1)) for c in calls)
