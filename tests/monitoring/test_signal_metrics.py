"""observe_signals: the per-result signals of hand-built maps in the Prometheus histograms.

Expected values are worked out by hand from the definitions (docs/monitoring.md):
- one hot pixel out of 16: Gini 1 - 1/16 = 0.9375, top-5% (1 pixel) share 1, entropy 0;
- a uniform 4x4 map: Gini 0, top-5% share 1/16, entropy log2(16) bits, i.e. 1 normalised.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.metrics import Metrics
from service.monitoring.observation import Observation
from service.monitoring.signal_metrics import observe_signals
from tests.conftest import tiny_card

LEFT_HALF = (0.0, 0.0, 0.5, 1.0)


def hot_pixel() -> np.ndarray:
    m = np.zeros((4, 4))
    m[0, 3] = 1.0  # right half
    return m


def obs(m: np.ndarray, target: int = 0, label: str | None = "red", **kw: object) -> Observation:
    fields: dict[str, object] = {
        "model": "tiny",
        "version": "1",
        "method": "gradcam",
        "target": target,
        "label": label,
        "probability": 0.8,
        "attribution": m,
        "regions": {},
    }
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


L_RED = {"model": "tiny", "method": "gradcam", "class": "red", "source": "request"}


@pytest.fixture
def card():  # type: ignore[no-untyped-def]
    return tiny_card(monitoring={"classes": ["red", 2]}, regions={"left": list(LEFT_HALF)})


def test_hot_pixel_values(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    observe_signals(metrics, card, "gradcam", obs(hot_pixel()), "request")
    assert value(metrics, "cnnvis_signal_sparseness_sum", **L_RED) == pytest.approx(0.9375)
    assert value(metrics, "cnnvis_signal_sparseness_count", **L_RED) == 1
    # 0.9375 falls in (0.9, 0.95]
    assert value(metrics, "cnnvis_signal_sparseness_bucket", **L_RED, le="0.9") == 0
    assert value(metrics, "cnnvis_signal_sparseness_bucket", **L_RED, le="0.95") == 1
    assert value(metrics, "cnnvis_signal_top5_share_sum", **L_RED) == pytest.approx(1.0)
    assert value(metrics, "cnnvis_signal_entropy_sum", **L_RED) == pytest.approx(0.0)
    assert value(metrics, "cnnvis_signal_entropy_count", **L_RED) == 1
    assert value(metrics, "cnnvis_signal_probability_sum", **L_RED) == pytest.approx(0.8)
    left = {**L_RED, "region": "left"}
    assert value(metrics, "cnnvis_signal_region_share_sum", **left) == pytest.approx(0.0)
    assert value(metrics, "cnnvis_signal_region_share_count", **left) == 1


def test_uniform_values_and_sampled_source(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    observe_signals(metrics, card, "gradcam", obs(np.ones((4, 4))), "sampled")
    labels = {**L_RED, "source": "sampled"}
    assert value(metrics, "cnnvis_signal_sparseness_sum", **labels) == pytest.approx(0.0)
    assert value(metrics, "cnnvis_signal_top5_share_sum", **labels) == pytest.approx(1 / 16)
    assert value(metrics, "cnnvis_signal_entropy_sum", **labels) == pytest.approx(1.0)
    left = {**labels, "region": "left"}
    assert value(metrics, "cnnvis_signal_region_share_sum", **left) == pytest.approx(0.5)
    assert value(metrics, "cnnvis_signal_sparseness_count", **L_RED) is None  # not "request"


def test_no_positive_mass_observes_only_defined_signals(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    observe_signals(metrics, card, "gradcam", obs(-np.ones((4, 4))), "request")
    # |m| is uniform: Gini 0; shares and entropy of the positive part are undefined
    assert value(metrics, "cnnvis_signal_sparseness_count", **L_RED) == 1
    assert value(metrics, "cnnvis_signal_top5_share_count", **L_RED) is None
    assert value(metrics, "cnnvis_signal_entropy_count", **L_RED) is None
    assert value(metrics, "cnnvis_signal_region_share_count", **L_RED, region="left") is None


def test_class_label_only_for_allow_listed_classes(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    m = np.ones((4, 4))
    observe_signals(metrics, card, "gradcam", obs(m, 0, "red"), "request")  # by label
    observe_signals(metrics, card, "gradcam", obs(m, 1, "green"), "request")  # not listed
    observe_signals(metrics, card, "gradcam", obs(m, 2, "blue"), "request")  # by index
    count = "cnnvis_signal_probability_count"
    assert value(metrics, count, **L_RED) == 1
    assert value(metrics, count, **{**L_RED, "class": "blue"}) == 1
    assert value(metrics, count, **{**L_RED, "class": "-"}) == 1
    assert value(metrics, count, **{**L_RED, "class": "green"}) is None
    # a card without a monitoring block: every class is "-"
    plain = Metrics()
    observe_signals(plain, tiny_card(), "gradcam", obs(m, 0, "red"), "request")
    assert value(plain, count, **{**L_RED, "class": "-"}) == 1
    assert value(plain, count, **L_RED) is None


def test_request_regions_are_not_exported(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics()
    m = np.ones((4, 4))
    # the request adds "mine" and redefines "left" as the whole map; the card's "left" box is
    # the one measured (0.5 of a uniform map, not 1.0), and "mine" is no label value
    regions = {"mine": (0.0, 0.0, 4.0, 4.0), "left": (0.0, 0.0, 4.0, 4.0)}
    observe_signals(metrics, card, "gradcam", obs(m, regions=regions), "request")
    left = {**L_RED, "region": "left"}
    assert value(metrics, "cnnvis_signal_region_share_sum", **left) == pytest.approx(0.5)
    exported = {
        s.labels.get("region")
        for family in metrics.registry.collect()
        if family.name == "cnnvis_signal_region_share"
        for s in family.samples
    }
    assert exported == {"left"}


def test_model_and_method_labels_are_bounded(card) -> None:  # type: ignore[no-untyped-def]
    metrics = Metrics(max_label_values=2)
    m = np.ones((4, 4))
    for name in ("a", "b", "c"):
        observe_signals(metrics, card, f"method-{name}", obs(m, model=name), "request")
    count = "cnnvis_signal_sparseness_count"
    base = {"class": "red", "source": "request"}
    assert value(metrics, count, **base, model="a", method="method-a") == 1
    assert value(metrics, count, **base, model="b", method="method-b") == 1
    assert value(metrics, count, **base, model="other", method="other") == 1
    assert value(metrics, count, **base, model="c", method="method-c") is None


def test_no_metrics_is_a_no_op(card) -> None:  # type: ignore[no-untyped-def]
    observe_signals(None, card, "gradcam", obs(np.ones((4, 4))), "request")


# ---- through the app: the middleware's explanation counter, the monitor's histograms ---------


def test_request_explanations_counted_and_observed(client, tiny_model: bytes) -> None:  # type: ignore[no-untyped-def]
    from tests.service.test_api_models import card_dict, register

    card = card_dict(regions={"left": list(LEFT_HALF)})
    card["monitoring"] = {"classes": ["red", "green", "blue"]}
    assert register(client, tiny_model, card).status_code == 201
    png = png_image()
    url = "/v1/models/tiny/explain"
    files = {"image": ("a.png", png, "image/png")}
    ok = client.post(url, params={"method": "gradcam", "outputs": "stats"}, files=files)
    assert ok.status_code == 200, ok.text
    label = ok.json()["results"][0]["target"]["label"]
    bad = client.post(url, params={"method": "gradcam", "targets": "[7]"}, files=files)
    assert bad.status_code == 422, bad.text
    state = client.app.state.cnnvis
    state.admission.max_queue = 0  # every request is refused: 503
    shed = client.post(url, params={"method": "gradcam"}, files=files)
    assert shed.status_code == 503, shed.text
    state.admission.max_queue = 32
    assert state.monitor.flush(10)

    registry = client.app.state.metrics.registry
    count = "cnnvis_explanations_total"
    base = {"model": "tiny", "method": "gradcam", "source": "request"}
    assert registry.get_sample_value(count, {**base, "outcome": "ok"}) == 1
    assert registry.get_sample_value(count, {**base, "outcome": "client_error"}) == 1
    assert registry.get_sample_value(count, {**base, "outcome": "shed"}) == 1
    # predict is not an explanation
    assert client.post("/v1/models/tiny/predict", files=files).status_code == 200
    total = sum(
        s.value
        for family in registry.collect()
        if family.name == "cnnvis_explanations"
        for s in family.samples
    )
    assert total == 3
    # the explained result reached the histograms, labelled with its (allow-listed) class
    labels = {"model": "tiny", "method": "gradcam", "class": label, "source": "request"}
    assert registry.get_sample_value("cnnvis_signal_sparseness_count", labels) == 1
    share = registry.get_sample_value(
        "cnnvis_signal_region_share_count", {**labels, "region": "left"}
    )
    assert share == 1


def png_image() -> bytes:
    from tests.conftest import png_bytes

    return png_bytes(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
