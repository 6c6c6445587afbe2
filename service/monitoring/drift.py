"""Attribution drift: where a model looks now against where it looked in its baseline.

Every map is summarised as its **pooled grid**: the positive part pooled onto G x G cells and
normalised to sum 1, a probability distribution over where the evidence lies. A baseline and a
window are means of such grids (plus the mean share of each named region); their distance is
the Jensen-Shannon divergence in bits, 0 for the same distribution and 1 for disjoint ones.
Formulas and the reasons behind them: docs/monitoring.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from service.imaging.signals import positive_part, region_shares

ALL_CLASSES = "*"
_RESUM_EVERY = 4096  # a window's running sums are recomputed exactly this often


def pooled_grid(m: np.ndarray, grid: int) -> np.ndarray | None:
    """The positive part of the (H, W) map ``m`` summed onto ``grid`` x ``grid`` cells and
    normalised to sum 1; None when the map has no positive mass.

    Exact area pooling: every pixel belongs to the one cell that holds its centre, row cell
    ``floor((i + 0.5) * grid / H)`` and column cell ``floor((j + 0.5) * grid / W)``, so maps of
    any resolution over the same window pool alike."""
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    p = positive_part(m)
    h, w = p.shape
    total = float(p.sum())
    if total <= 0.0 or not math.isfinite(total):
        return None
    rows = np.floor((np.arange(h) + 0.5) * grid / h).astype(np.int64)
    cols = np.floor((np.arange(w) + 0.5) * grid / w).astype(np.int64)
    cells = rows[:, None] * grid + cols[None, :]
    pooled = np.bincount(cells.ravel(), weights=p.ravel(), minlength=grid * grid)
    return (pooled / total).reshape(grid, grid)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """JSD(p, q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2, in bits (log base 2),
    so in [0, 1]. ``p`` and ``q`` are renormalised to sum 1; 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64).ravel()
    q = np.asarray(q, dtype=np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"distributions of different sizes: {p.size} and {q.size}")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("a distribution with no mass has no divergence")
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(min(1.0, max(0.0, (kl(p) + kl(q)) / 2)))


@dataclass
class Profile:
    """Running mean of pooled grids and region shares: what a baseline is made of."""

    grid: int
    count: int = 0
    pooled_sum: np.ndarray = field(init=False)
    region_sum: dict[str, float] = field(default_factory=dict)
    region_count: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pooled_sum = np.zeros((self.grid, self.grid))

    def add(self, pooled: np.ndarray, shares: Mapping[str, float] | None) -> None:
        self.count += 1
        self.pooled_sum += pooled
        for name, share in (shares or {}).items():
            self.region_sum[name] = self.region_sum.get(name, 0.0) + share
            self.region_count[name] = self.region_count.get(name, 0) + 1

    def add_mean(
        self, count: int, pooled_mean: np.ndarray, regions: Mapping[str, tuple[float, int]]
    ) -> None:
        """Fold in an existing summary of ``count`` maps (a stored baseline)."""
        self.count += count
        self.pooled_sum += count * np.asarray(pooled_mean, dtype=np.float64)
        for name, (mean, n) in regions.items():
            self.region_sum[name] = self.region_sum.get(name, 0.0) + mean * n
            self.region_count[name] = self.region_count.get(name, 0) + n

    def pooled_mean(self) -> np.ndarray:
        return self.pooled_sum / max(self.count, 1)

    def region_means(self) -> dict[str, tuple[float, int]]:
        return {
            name: (self.region_sum[name] / n, n) for name, n in self.region_count.items() if n > 0
        }


@dataclass(frozen=True)
class Summary:
    """One map reduced to what drift needs."""

    time: float
    pooled: np.ndarray
    shares: dict[str, float]


def summarize(
    m: np.ndarray, regions: Mapping[str, tuple[float, float, float, float]], grid: int, t: float
) -> Summary | None:
    """The pooled grid and region shares of a map (regions in its pixel coordinates); None
    when the map has no positive mass."""
    pooled = pooled_grid(m, grid)
    if pooled is None:
        return None
    return Summary(t, pooled, region_shares(m, regions) or {})


class Window:
    """The last ``limit`` summaries of one (model version, method, class), with running sums
    so that adding one and reading the mean are O(cells), whatever the limit."""

    def __init__(self, limit: int, grid: int) -> None:
        self.limit = limit
        self.grid = grid
        self._items: deque[Summary] = deque()
        self._sum = np.zeros((grid, grid))
        self._region_sum: dict[str, float] = {}
        self._region_count: dict[str, int] = {}
        self._adds = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: Summary) -> None:
        self._items.append(item)
        self._sum += item.pooled
        for name, share in item.shares.items():
            self._region_sum[name] = self._region_sum.get(name, 0.0) + share
            self._region_count[name] = self._region_count.get(name, 0) + 1
        while len(self._items) > self.limit:
            old = self._items.popleft()
            self._sum -= old.pooled
            for name, share in old.shares.items():
                self._region_sum[name] -= share
                self._region_count[name] -= 1
                if self._region_count[name] == 0:
                    del self._region_sum[name], self._region_count[name]
        self._adds += 1
        if self._adds % _RESUM_EVERY == 0:  # subtracting floats drifts; start over exactly
            self._sum = np.sum([i.pooled for i in self._items], axis=0)
            self._region_sum = {
                n: math.fsum(i.shares[n] for i in self._items if n in i.shares)
                for n in self._region_count
            }

    @property
    def first(self) -> float | None:
        return self._items[0].time if self._items else None

    @property
    def last(self) -> float | None:
        return self._items[-1].time if self._items else None

    def pooled_mean(self) -> np.ndarray | None:
        return self._sum / len(self._items) if self._items else None

    def region_means(self) -> dict[str, float]:
        return {n: self._region_sum[n] / c for n, c in self._region_count.items() if c > 0}


@dataclass(frozen=True)
class RegionShift:
    baseline: float
    window: float

    @property
    def shift(self) -> float:
        return self.window - self.baseline


def region_shifts(
    window: Mapping[str, float], baseline: Mapping[str, tuple[float, int]]
) -> dict[str, RegionShift]:
    """Per region present in both: the window's mean share minus the baseline's."""
    return {
        name: RegionShift(baseline[name][0], share)
        for name, share in sorted(window.items())
        if name in baseline
    }
