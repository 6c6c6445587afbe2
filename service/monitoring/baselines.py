"""Attribution baselines on disk, beside the model version they describe.

``<store>/<name>/<version>/baselines/<method>.json``: one file per explanation method, one
entry per class (mean pooled grid, mean region shares, count, where it came from). A file is
replaced in one atomic rename (temporary file, fsync, rename), so a reader — this replica or
another one on the shared store — sees the old baseline or the whole new one, never a torn one.
Readers cache a file by its modification time and size and reload it when either changes.
Deleting a model version deletes its baselines with it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from models_store.errors import ProblemError
from models_store.files import write_atomic
from service.monitoring.drift import Profile, summarize
from service.monitoring.observation import Observation

log = logging.getLogger("cnnvis.monitoring")
BASELINES_DIR = "baselines"
FORMAT = 1
Source = Literal["posted", "requests"]
_STALE_TMP_S = 3600.0  # a temporary file this old is a crashed write's leftover


@dataclass
class ClassBaseline:
    label: str | None
    count: int
    pooled: np.ndarray  # (grid, grid), sums to 1
    regions: dict[str, tuple[float, int]]  # region -> (mean share, maps that had it)
    source: Source
    updated: float

    def profile(self) -> Profile:
        profile = Profile(self.pooled.shape[0])
        profile.add_mean(self.count, self.pooled, self.regions)
        return profile


@dataclass
class Baseline:
    model: str
    version: str
    method: str
    grid: int
    classes: dict[int, ClassBaseline] = field(default_factory=dict)
    skipped: int = 0  # reference maps with no positive mass
    created: float = field(default_factory=time.time)

    def combined(self) -> ClassBaseline | None:
        """The all-classes baseline: the count-weighted mean of the class baselines."""
        if not self.classes:
            return None
        profile = Profile(self.grid)
        for c in self.classes.values():
            profile.add_mean(c.count, c.pooled, c.regions)
        sources = {c.source for c in self.classes.values()}
        return ClassBaseline(
            None,
            profile.count,
            profile.pooled_mean(),
            profile.region_means(),
            sources.pop() if len(sources) == 1 else "posted",
            max(c.updated for c in self.classes.values()),
        )

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "model": self.model,
                "version": self.version,
                "method": self.method,
                "grid": self.grid,
                "created": self.created,
                "skipped": self.skipped,
                "classes": {
                    str(k): {
                        "label": c.label,
                        "count": c.count,
                        "source": c.source,
                        "updated": c.updated,
                        "pooled": np.round(c.pooled, 12).tolist(),
                        "regions": {
                            n: {"mean": m, "count": k2} for n, (m, k2) in c.regions.items()
                        },
                    }
                    for k, c in sorted(self.classes.items())
                },
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Baseline:
        raw = json.loads(data)
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown baseline format {raw.get('format')!r}")
        grid = int(raw["grid"])
        classes = {}
        for key, c in raw["classes"].items():
            pooled = np.asarray(c["pooled"], dtype=np.float64)
            if pooled.shape != (grid, grid):
                raise ValueError(f"class {key}: pooled grid of shape {pooled.shape}")
            if not (np.isfinite(pooled).all() and (pooled >= 0).all() and pooled.sum() > 0):
                raise ValueError(f"class {key}: the pooled grid is not a distribution")
            classes[int(key)] = ClassBaseline(
                c.get("label"),
                int(c["count"]),
                pooled,
                {n: (float(r["mean"]), int(r["count"])) for n, r in c["regions"].items()},
                c["source"],
                float(c["updated"]),
            )
        return cls(
            raw["model"],
            raw["version"],
            raw["method"],
            grid,
            classes,
            int(raw.get("skipped", 0)),
            float(raw["created"]),
        )


def baseline_class(
    profile: Profile, label: str | None, source: Source, now: float | None = None
) -> ClassBaseline:
    return ClassBaseline(
        label,
        profile.count,
        profile.pooled_mean(),
        profile.region_means(),
        source,
        time.time() if now is None else now,
    )


class ReferenceSet:
    """Posted reference maps, accumulated per class."""

    def __init__(self, grid: int) -> None:
        self.grid = grid
        self.profiles: dict[int, Profile] = {}
        self.labels: dict[int, str | None] = {}
        self.skipped = 0

    @property
    def count(self) -> int:
        return sum(p.count for p in self.profiles.values())

    def add(self, observations: Iterable[Observation]) -> None:
        for obs in observations:
            summary = summarize(obs.attribution, obs.regions, self.grid, 0.0)
            if summary is None:
                self.skipped += 1
                continue
            if obs.target not in self.profiles:
                self.profiles[obs.target] = Profile(self.grid)
            self.profiles[obs.target].add(summary.pooled, summary.shares)
            self.labels[obs.target] = obs.label


class BaselineStore:
    """Reads and writes baseline files under a model store root; safe across threads, and
    across replicas sharing the store (every write is one atomic rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: dict[Path, tuple[tuple[int, int, int], Baseline]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # read-modify-write of one replica
        now = time.time()
        for stale in self.root.glob(f"*/*/{BASELINES_DIR}/.*.tmp"):
            try:
                if now - stale.stat().st_mtime > _STALE_TMP_S:
                    stale.unlink()
            except OSError:
                pass

    def folder(self, name: str, version: str) -> Path:
        return self.root / name / version / BASELINES_DIR

    def path(self, name: str, version: str, method: str) -> Path:
        return self.folder(name, version) / f"{method}.json"

    def get(self, name: str, version: str, method: str) -> Baseline | None:
        """The stored baseline, reloaded when its file changed; None when there is none (or
        it is unreadable, which is logged)."""
        path = self.path(name, version, method)
        try:
            st = path.stat()
        except OSError:
            with self._lock:
                self._cache.pop(path, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            baseline = Baseline.from_json(path.read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("baseline %s is unreadable: %s", path, exc)
            return None
        with self._lock:
            self._cache[path] = (stamp, baseline)
        return baseline

    def methods(self, name: str, version: str) -> list[str]:
        folder = self.folder(name, version)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith("."))

    def save(self, baseline: Baseline) -> None:
        path = self.path(baseline.model, baseline.version, baseline.method)
        path.parent.mkdir(exist_ok=True)
        write_atomic(path, baseline.to_json())

    def merge(
        self,
        name: str,
        version: str,
        method: str,
        grid: int,
        classes: Mapping[int, ClassBaseline],
        *,
        replace: bool,
        skipped: int = 0,
        keep_existing: bool = False,
    ) -> Baseline:
        """Write ``classes`` into the method's baseline and return what was stored.

        ``replace``: the file then holds only ``classes``. Otherwise a posted class folds into
        the stored posted class of the same index (count-weighted) and replaces one that came
        from requests; ``keep_existing`` (the request path) adds only classes the file lacks,
        so the first replica to freeze a class wins."""
        with self._write_lock:
            current = None if replace else self.get(name, version, method)
            if current is not None and current.grid != grid:
                raise GridMismatch(
                    f"the stored {method} baseline of {name}@{version} is pooled on a"
                    f" {current.grid}x{current.grid} grid, this service pools on {grid}x{grid};"
                    " post the reference set again with replace=true"
                )
            out = current or Baseline(name, version, method, grid)
            out.skipped += skipped
            for index, new in classes.items():
                old = out.classes.get(index)
                if old is None:
                    out.classes[index] = new
                elif keep_existing:
                    continue
                elif old.source == "posted" and new.source == "posted":
                    profile = old.profile()
                    profile.add_mean(new.count, new.pooled, new.regions)
                    out.classes[index] = baseline_class(profile, new.label, "posted", new.updated)
                else:
                    out.classes[index] = new
            self.save(out)
            return out

    def delete(self, name: str, version: str, method: str | None) -> list[str]:
        doomed = [method] if method else self.methods(name, version)
        removed = []
        for m in doomed:
            try:
                self.path(name, version, m).unlink()
            except FileNotFoundError:
                continue
            removed.append(m)
        return removed


class GridMismatch(ProblemError):
    """A stored baseline was pooled on another grid than the service's setting."""

    status = 409
    title = "Baseline grid mismatch"
    slug = "baseline-grid-mismatch"
