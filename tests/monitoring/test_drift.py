"""Attribution drift numerics: pooled grids, Jensen-Shannon divergence, windows, and the
monitor's path from observations to a drift report, on synthetic maps."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from models_store.store import ModelStore
from service.monitoring.baselines import ReferenceSet, baseline_class
from service.monitoring.drift import (
    ALL_CLASSES,
    Profile,
    Summary,
    Window,
    jensen_shannon,
    pooled_grid,
    region_shifts,
)
from service.monitoring.monitor import Monitor
from service.monitoring.observation import Observation
from tests.conftest import tiny_card, tiny_classifier

SIZE = 32
BORDER = (0.0, 0.0, 1.0, 0.125)  # the top strip, 4 of 32 rows: a normalised box
BORDER_PX = (0.0, 0.0, float(SIZE), 4.0)  # the same in map pixels


# ---- pooled grid -------------------------------------------------------------------------


def test_pooled_grid_by_hand() -> None:
    # 3 rows onto 2 cells: centres 0.5, 1.5, 2.5 -> floor(c * 2 / 3) = 0, 1, 1
    m = np.array([[1.0, 2.0, 0.0], [0.0, 3.0, -5.0], [4.0, 0.0, 1.0]])
    expected = np.array([[1.0, 2.0], [4.0, 4.0]]) / 11.0  # negative pixel left out
    np.testing.assert_allclose(pooled_grid(m, 2), expected, rtol=0, atol=1e-15)


def test_pooled_grid_centre_on_a_boundary_goes_up() -> None:
    # 5 columns onto 2 cells: centre 2.5 * 2 / 5 = 1.0 -> cell 1
    m = np.zeros((1, 5))
    m[0, 2] = 1.0
    np.testing.assert_array_equal(pooled_grid(m, 2), [[0.0, 0.0], [0.0, 1.0]])


def test_pooled_grid_sums_to_one_and_skips_empty_maps() -> None:
    rng = np.random.default_rng(0)
    grid = pooled_grid(rng.normal(size=(37, 23)), 7)
    assert grid is not None and grid.shape == (7, 7)
    assert math.isclose(grid.sum(), 1.0, rel_tol=1e-12)
    assert pooled_grid(-np.abs(rng.normal(size=(8, 8))), 7) is None
    assert pooled_grid(np.full((8, 8), np.nan), 7) is None


def test_identity_grid_is_the_map_itself() -> None:
    m = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_allclose(pooled_grid(m, 4), m / m.sum())


# ---- Jensen-Shannon ----------------------------------------------------------------------


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def test_jsd_against_the_entropy_form() -> None:
    # JSD = H((p + q) / 2) - (H(p) + H(q)) / 2, another formula than the code's KL sum
    rng = np.random.default_rng(1)
    for _ in range(20):
        p, q = rng.random(49), rng.random(49)
        p[rng.random(49) < 0.3] = 0
        p, q = p / p.sum(), q / q.sum()
        expected = _entropy_bits((p + q) / 2) - (_entropy_bits(p) + _entropy_bits(q)) / 2
        assert math.isclose(jensen_shannon(p, q), expected, abs_tol=1e-12)


def test_jsd_by_hand_identical_and_disjoint() -> None:
    # m = [1/4, 1/2, 1/4]: KL(p||m) = 1/2 log2 2 + 1/2 log2 1 = 1/2, same for q
    assert math.isclose(jensen_shannon([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]), 0.5, abs_tol=1e-15)
    p = np.array([0.2, 0.3, 0.5])
    assert jensen_shannon(p, p) == 0.0
    assert jensen_shannon([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.7]) == 1.0
    with pytest.raises(ValueError):
        jensen_shannon([1.0, 0.0], [0.0, 0.0])


# ---- synthetic maps -----------------------------------------------------------------------


def blob(rng: np.random.Generator, border: bool) -> np.ndarray:
    """A gaussian blob: centred in the image's middle band (the baseline's habit), or inside
    the top border strip (the drift)."""
    cy = rng.uniform(0.5, 3.5) if border else rng.normal(SIZE / 2, 3.0)
    cx = rng.normal(SIZE / 2, 4.0)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    sigma = 1.5 if border else 3.0
    return np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))


def border_share(m: np.ndarray) -> float:
    return float(m[:4].sum() / m.sum())


def window_of(maps: list[np.ndarray], limit: int = 500) -> Window:
    window = Window(limit, 7)
    for t, m in enumerate(maps):
        pooled = pooled_grid(m, 7)
        assert pooled is not None
        window.add(Summary(float(t), pooled, {"border": border_share(m)}))
    return window


def test_drift_is_small_within_one_distribution_and_rises_with_border_mass() -> None:
    rng = np.random.default_rng(2)
    baseline = Profile(7)
    for _ in range(400):
        m = blob(rng, border=False)
        baseline.add(pooled_grid(m, 7), {"border": border_share(m)})  # type: ignore[arg-type]
    base_regions = baseline.region_means()

    same = window_of([blob(rng, border=False) for _ in range(500)])
    assert jensen_shannon(same.pooled_mean(), baseline.pooled_mean()) < 0.01  # type: ignore[arg-type]
    assert abs(region_shifts(same.region_means(), base_regions)["border"].shift) < 0.01

    jsds, shifts = [], []
    for step in range(6):  # 0%, 20%, ... 100% of the window's maps look at the border
        fraction = step / 5
        maps = [blob(rng, border=rng.random() < fraction) for _ in range(500)]
        window = window_of(maps)
        jsds.append(jensen_shannon(window.pooled_mean(), baseline.pooled_mean()))  # type: ignore[arg-type]
        shifts.append(region_shifts(window.region_means(), base_regions)["border"].shift)
    assert jsds[0] < 0.01 and jsds[-1] > 0.3
    assert all(b > a for a, b in itertools.pairwise(jsds)), jsds
    assert all(b > a for a, b in itertools.pairwise(shifts)), shifts
    assert shifts[-1] > 0.5


def test_region_shift_by_hand() -> None:
    # baseline maps have nothing in the border; half the window's maps only the border
    inside = np.zeros((SIZE, SIZE))
    inside[10:20, 10:20] = 1
    border = np.zeros((SIZE, SIZE))
    border[:4] = 1
    baseline = Profile(7)
    for _ in range(3):
        baseline.add(pooled_grid(inside, 7), {"border": border_share(inside)})  # type: ignore[arg-type]
    window = window_of([inside, border, inside, border])
    shift = region_shifts(window.region_means(), baseline.region_means())["border"]
    assert (shift.baseline, shift.window, shift.shift) == (0.0, 0.5, 0.5)
    # a region only one side knows is not compared
    assert region_shifts({"roi": 0.3}, baseline.region_means()) == {}


def test_window_keeps_the_last_w_with_exact_means() -> None:
    rng = np.random.default_rng(3)
    maps = [rng.random((8, 8)) for _ in range(25)]
    window = window_of(maps, limit=10)
    assert len(window) == 10 and (window.first, window.last) == (15.0, 24.0)
    expected = np.mean([pooled_grid(m, 7) for m in maps[15:]], axis=0)
    np.testing.assert_allclose(window.pooled_mean(), expected, atol=1e-12)
    share = np.mean([border_share(m) for m in maps[15:]])
    assert math.isclose(window.region_means()["border"], share, rel_tol=1e-12)


# ---- the monitor ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    store.add(tiny_classifier(), tiny_card(regions={"border": BORDER}))
    return store


def observation(m: np.ndarray, target: int = 1, version: str = "1") -> Observation:
    return Observation("tiny", version, "gradcam", target, "green", 0.9, m, {"border": BORDER_PX})


def test_monitor_compares_its_window_with_a_stored_baseline(store: ModelStore) -> None:
    rng = np.random.default_rng(4)
    reference = ReferenceSet(7)
    reference.add(observation(blob(rng, border=False)) for _ in range(200))
    record = store.get("tiny")
    monitor = Monitor(store, grid=7, window=50)
    try:
        monitor.store_posted(record, "gradcam", reference, replace=True)
        drifted = [blob(rng, border=True) for _ in range(80)]
        monitor.observe([observation(m) for m in drifted])
        monitor.observe([observation(np.zeros((SIZE, SIZE)))])  # nothing positive: skipped
        monitor.observe([observation(blob(rng, border=False), target=2)])  # no baseline
        assert monitor.flush(10)
        report = monitor.report(record, "gradcam")
    finally:
        monitor.close()
    assert report.message is None and report.skipped == 1
    everything, green = report.classes
    assert (everything.class_, green.class_) == (ALL_CLASSES, 1)
    assert green.window.count == 50 and green.baseline.count == 200  # bounded at W
    assert green.baseline.source == "posted" and green.label == "green"
    assert green.jsd is not None and green.jsd > 0.3
    expected_share = np.mean([border_share(m) for m in drifted[-50:]])
    shift = green.region_shift["border"]
    assert math.isclose(shift.window, expected_share, rel_tol=1e-9)
    assert shift.shift > 0.5
    assert everything.jsd == pytest.approx(green.jsd)  # one class: the same comparison


def test_all_classes_baseline_is_count_weighted(store: ModelStore) -> None:
    left = np.zeros((SIZE, SIZE))
    left[:, :8] = 1
    right = np.zeros((SIZE, SIZE))
    right[:, -8:] = 1
    reference = ReferenceSet(7)
    reference.add([observation(left, 0)] * 3 + [observation(right, 2)])
    monitor = Monitor(store, grid=7)
    try:
        stored = monitor.store_posted(store.get("tiny"), "gradcam", reference, replace=True)
    finally:
        monitor.close()
    combined = stored.combined()
    assert combined is not None and combined.count == 4
    np.testing.assert_allclose(
        combined.pooled,
        (3 * pooled_grid(left, 7) + pooled_grid(right, 7)) / 4,  # type: ignore[operator]
    )


def test_baseline_from_requests_freezes_after_n(store: ModelStore, tmp_path: Path) -> None:
    card = tiny_card(monitoring={"baseline_requests": 5})
    store.add(tiny_classifier(), card.model_copy(update={"version": "2"}))
    rng = np.random.default_rng(5)
    monitor = Monitor(store, grid=7)
    try:
        first = [blob(rng, border=False) for _ in range(5)]
        monitor.observe([observation(m, version="2") for m in first[:4]])
        assert monitor.flush(10)
        record = store.get("tiny", "2")
        report = monitor.report(record, "gradcam")
        assert report.classes == [] and "baseline_requests" in (report.message or "")
        assert [(p.class_, p.count, p.needed) for p in report.pending] == [(1, 4, 5)]
        monitor.observe([observation(first[4], version="2")])
        monitor.observe([observation(blob(rng, border=True), version="2") for _ in range(3)])
        assert monitor.flush(10)
        report = monitor.report(record, "gradcam")
    finally:
        monitor.close()
    green = report.classes[1]
    assert green.baseline.source == "requests" and green.baseline.count == 5
    assert green.window.count == 3 and report.pending == []
    path = tmp_path / "store" / "tiny" / "2" / "baselines" / "gradcam.json"
    stored = ReferenceSet(7)
    stored.add(observation(m) for m in first)
    expected = baseline_class(stored.profiles[1], "green", "requests")
    from service.monitoring.baselines import Baseline

    on_disk = Baseline.from_json(path.read_bytes()).classes[1]
    np.testing.assert_allclose(on_disk.pooled, expected.pooled, atol=1e-12)
    # version 1 has no baseline_requests: nothing is collected there
    assert not (tmp_path / "store" / "tiny" / "1" / "baselines").exists()


def test_a_full_queue_drops_and_counts(store: ModelStore) -> None:
    monitor = Monitor(store, grid=7, queue_size=2)
    monitor.close()  # a closed monitor takes nothing
    monitor.observe([observation(np.ones((4, 4)))])
    assert monitor.report(store.get("tiny"), "gradcam").dropped == 0

    blocked = Monitor(store, grid=7, queue_size=2)
    gate = __import__("threading").Event()
    original = blocked._process
    blocked._process = lambda *a: (gate.wait(5), original(*a))  # type: ignore[method-assign]
    try:
        blocked.observe([observation(np.ones((4, 4)))] * 6)
        # the thread holds one, the queue two: three dropped
        assert blocked.report(store.get("tiny"), "gradcam").dropped in (3, 4)
    finally:
        gate.set()
        assert blocked.flush(10)
        blocked.close()


def test_the_worker_survives_a_bad_observation(store: ModelStore) -> None:
    monitor = Monitor(store, grid=7)
    try:
        bad = Observation("tiny", "1", "gradcam", 1, None, 0.5, np.ones((2, 2, 2)), {})
        monitor.observe([bad])
        reference = ReferenceSet(7)
        reference.add([observation(np.ones((SIZE, SIZE)))])
        monitor.store_posted(store.get("tiny"), "gradcam", reference, replace=True)
        monitor.observe([observation(np.ones((SIZE, SIZE)))])
        assert monitor.flush(10)
        report = monitor.report(store.get("tiny"), "gradcam")
    finally:
        monitor.close()
    assert report.classes[1].window.count == 1 and report.classes[1].jsd == 0.0
