"""Sampled explanations of /predict traffic: the policy's filters, the bounded queue, the
hand-over to the monitor, and that /predict never waits for any of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.monitoring.sampler import sampler_of
from service.pipeline import explain as explain_pipeline
from service.settings import Settings
from tests.conftest import TINY_LABELS, png_bytes, tiny_classifier
from tests.service.test_api_models import assert_problem, card_dict, register


def solid(rgb: tuple[int, int, int]) -> bytes:
    return png_bytes(np.full((8, 8, 3), rgb, dtype=np.uint8))


# solid colours on which the tiny model of seed 3 predicts all three classes
IMAGES = [solid((r, g, b)) for r in (0, 128, 255) for g in (0, 255) for b in (0, 255)]


@pytest.fixture(scope="module")
def tiny_model() -> bytes:
    return tiny_classifier(seed=3)


@pytest.fixture
def app_client(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TestClient]:
    overrides = getattr(request, "param", {})
    fields = {"sampling_seed": 0, "sampling_budget": 1.0, **overrides}  # no rests by default
    settings = Settings(store=tmp_path / "store", **fields)
    with TestClient(create_app(settings)) as client:
        yield client


def state_of(client: TestClient) -> Any:
    return client.app.state.cnnvis  # type: ignore[attr-defined]


def add(client: TestClient, model: bytes, name: str, sampling: dict[str, Any] | None) -> None:
    card = card_dict(name=name)
    if sampling is not None:
        card["monitoring"] = {"sampling": sampling}
    response = register(client, model, card)
    assert response.status_code == 201, response.text


def predict(client: TestClient, name: str, images: list[bytes]) -> list[dict[str, Any]]:
    response = client.post(
        f"/v1/models/{name}/predict",
        files=[("image", (f"{i}.png", png, "image/png")) for i, png in enumerate(images)],
    )
    assert response.status_code == 200, response.text
    return [row[0] for row in response.json()["predictions"]]  # the top class per image


def sampled(client: TestClient, name: str, outcome: str) -> float:
    registry = client.app.state.metrics.registry  # type: ignore[attr-defined]
    labels = {"model": name, "method": "gradcam", "outcome": outcome, "source": "sampled"}
    return registry.get_sample_value("cnnvis_explanations_total", labels) or 0.0


@pytest.fixture
def observed(app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """What reaches state.monitor.observe: (observation, source) pairs."""
    seen: list[tuple[Any, str]] = []
    monitor = state_of(app_client).monitor
    monkeypatch.setattr(
        monitor, "observe", lambda obs, source="request": seen.extend((o, source) for o in obs)
    )
    return seen


def flush(client: TestClient) -> None:
    assert sampler_of(state_of(client)).flush(timeout=60), "the sampler did not finish"


def test_fraction_zero_explains_nothing(
    app_client: TestClient, tiny_model: bytes, observed: list[Any]
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 0.0})
    predict(app_client, "tiny", IMAGES[:4])
    flush(app_client)
    assert observed == []
    assert sampled(app_client, "tiny", "ok") == 0


def test_fraction_one_explains_every_image_with_its_predicted_class(
    app_client: TestClient, tiny_model: bytes, observed: list[tuple[Any, str]]
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    tops = predict(app_client, "tiny", IMAGES[:3]) + predict(app_client, "tiny", IMAGES[3:5])
    flush(app_client)
    assert sampled(app_client, "tiny", "ok") == 5
    assert len(observed) == 5
    assert {source for _, source in observed} == {"sampled"}
    # one worker, first in first out: the observations come in the order of the images
    assert [o.target for o, _ in observed] == [t["index"] for t in tops]
    assert [o.label for o, _ in observed] == [t["label"] for t in tops]
    assert all(o.method == "gradcam" and o.attribution.shape == (8, 8) for o, _ in observed)


def test_below_confidence_and_classes_filters(
    app_client: TestClient, tiny_model: bytes, observed: list[tuple[Any, str]]
) -> None:
    add(app_client, tiny_model, "plain", None)
    tops = predict(app_client, "plain", IMAGES)
    probabilities = sorted(t["probability"] for t in tops)
    threshold = (probabilities[5] + probabilities[6]) / 2  # between the 6th and 7th
    labels = [t["label"] for t in tops]
    assert len(set(labels)) == 3, "the images should show every class"
    wanted = labels[0]
    other = next(label for label in labels if label != wanted)

    add(app_client, tiny_model, "unsure", {"fraction": 1.0, "below_confidence": threshold})
    add(app_client, tiny_model, "picked", {"fraction": 1.0, "classes": [wanted]})
    index = TINY_LABELS.index(other)
    add(app_client, tiny_model, "by-index", {"fraction": 1.0, "classes": [index]})
    for name in ("unsure", "picked", "by-index"):
        predict(app_client, name, IMAGES)
    flush(app_client)

    by_model: dict[str, list[int]] = {}
    for o, _ in observed:
        by_model.setdefault(o.model, []).append(o.target)
    unsure = [t["index"] for t in tops if t["probability"] < threshold]
    assert len(unsure) == 6 and by_model["unsure"] == unsure
    assert by_model["picked"] == [t["index"] for t in tops if t["label"] == wanted]
    assert by_model["by-index"] == [t["index"] for t in tops if t["label"] == other]


def test_a_failing_sample_is_counted_and_predict_unaffected(
    app_client: TestClient, tiny_model: bytes, observed: list[Any]
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0, "layer": "no-such-layer"})
    predict(app_client, "tiny", IMAGES[:2])
    flush(app_client)
    assert sampled(app_client, "tiny", "error") == 2
    assert sampled(app_client, "tiny", "ok") == 0 and observed == []


@pytest.mark.parametrize("app_client", [{"sampling": False}], indirect=True)
def test_global_switch_off(app_client: TestClient, tiny_model: bytes, observed: list[Any]) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    predict(app_client, "tiny", IMAGES[:3])
    flush(app_client)
    assert observed == [] and sampled(app_client, "tiny", "ok") == 0


class Blocker:
    """Holds the sampler's explain until released (a timer releases it anyway, so that a
    broken sampler fails the test instead of hanging it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.timer = threading.Timer(20, self.release.set)
        self.timer.start()
        real = explain_pipeline.explain

        def blocked(*args: Any, **kwargs: Any) -> Any:
            self.entered.set()
            self.release.wait()
            return real(*args, **kwargs)

        monkeypatch.setattr(explain_pipeline, "explain", blocked)

    def close(self) -> None:
        self.release.set()
        self.timer.cancel()


@pytest.fixture
def blocker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Blocker]:
    b = Blocker(monkeypatch)
    yield b
    b.close()


@pytest.mark.parametrize("app_client", [{"sampling_queue": 2}], indirect=True)
def test_full_queue_drops_and_counts_while_predict_answers(
    app_client: TestClient, tiny_model: bytes, observed: list[Any], blocker: Blocker
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    predict(app_client, "tiny", IMAGES[:1])
    assert blocker.entered.wait(10), "the worker never took the first sample"
    started = time.monotonic()
    predict(app_client, "tiny", IMAGES[1:5])  # 2 fit in the queue, 2 are dropped
    assert not blocker.release.is_set(), "predict waited for the blocked sampler"
    assert time.monotonic() - started < 10
    assert sampled(app_client, "tiny", "dropped") == 2
    registry = app_client.app.state.metrics.registry  # type: ignore[attr-defined]
    assert registry.get_sample_value("cnnvis_sampling_queue_depth") == 2
    blocker.release.set()
    flush(app_client)
    assert sampled(app_client, "tiny", "ok") == 3 and len(observed) == 3
    assert registry.get_sample_value("cnnvis_sampling_queue_depth") == 0


@pytest.mark.parametrize("app_client", [{"sampling_queue_mib": 1}], indirect=True)
def test_queue_bounded_in_decoded_bytes(
    app_client: TestClient, tiny_model: bytes, observed: list[Any]
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    big = png_bytes(np.zeros((600, 600, 3), dtype=np.uint8))  # 600 * 600 * 3 B > 1 MiB
    predict(app_client, "tiny", [big, IMAGES[0]])
    flush(app_client)
    assert sampled(app_client, "tiny", "dropped") == 1
    assert sampled(app_client, "tiny", "ok") == 1 and len(observed) == 1


@pytest.mark.parametrize("app_client", [{"sampling_max_age_s": 0.2}], indirect=True)
def test_stale_samples_are_dropped(
    app_client: TestClient, tiny_model: bytes, observed: list[Any], blocker: Blocker
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    predict(app_client, "tiny", IMAGES[:1])
    assert blocker.entered.wait(10)
    predict(app_client, "tiny", IMAGES[1:3])
    time.sleep(0.5)  # the two queued samples grow older than 0.2 s
    blocker.release.set()
    flush(app_client)
    assert sampled(app_client, "tiny", "ok") == 1
    assert sampled(app_client, "tiny", "stale") == 2
    assert len(observed) == 1


@pytest.mark.parametrize("app_client", [{"sampling_budget": 0.25}], indirect=True)
def test_budget_spaces_the_explanations(
    app_client: TestClient,
    tiny_model: bytes,
    observed: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts: list[float] = []
    real = explain_pipeline.explain

    def slow(*args: Any, **kwargs: Any) -> Any:
        starts.append(time.monotonic())
        time.sleep(0.1)  # an explanation of 0.1 s at a 25% budget: 0.3 s rest after it
        return real(*args, **kwargs)

    monkeypatch.setattr(explain_pipeline, "explain", slow)
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    predict(app_client, "tiny", IMAGES[:4])
    flush(app_client)
    assert len(observed) == 4
    gaps = np.diff(starts)
    # the first explanation (it builds the graphs) is not followed by a rest; the others
    # are at least 0.1 s / 0.25 apart from start to start
    assert gaps[0] < 0.3, gaps
    assert gaps[1:].min() >= 0.4 - 0.01, gaps


def test_waits_while_the_model_is_busy(
    app_client: TestClient, tiny_model: bytes, observed: list[Any]
) -> None:
    add(app_client, tiny_model, "tiny", {"fraction": 1.0})
    state = state_of(app_client)
    state.admission._enter("tiny")  # a request of this model in progress
    try:
        predict(app_client, "tiny", IMAGES[:1])  # admitted too: the queue limit is 32
        time.sleep(0.3)
        assert sampler_of(state).pending() == 1 and observed == []
    finally:
        state.admission._leave("tiny")
    flush(app_client)
    assert len(observed) == 1


@pytest.mark.parametrize(
    ("sampling", "fragment"),
    [
        ({"fraction": 1.5}, "fraction"),
        ({"fraction": -0.1}, "fraction"),
        ({"fraction": 0.5, "below_confidence": 2}, "below_confidence"),
        ({"fraction": 0.5, "classes": ["purple"]}, "'purple' is not one of the card's labels"),
        ({"fraction": 0.5, "classes": [7]}, "class index 7 is out of range"),
        ({"fraction": 0.5, "classes": []}, "classes"),
        ({"fraction": 0.5, "method": "nope"}, "method"),
        ({"fraction": 0.5, "rate": 3}, "rate"),
    ],
)
def test_registration_refuses_bad_policies(
    app_client: TestClient, tiny_model: bytes, sampling: dict[str, Any], fragment: str
) -> None:
    card = card_dict()
    card["monitoring"] = {"sampling": sampling}
    response = register(app_client, tiny_model, card)
    assert_problem(response, 422, fragment)
    assert "sampling" in response.json()["detail"]
    assert app_client.get("/v1/models").json() == {"models": []}
