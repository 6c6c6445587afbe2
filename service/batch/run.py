"""Run a batch explain job: the shards not yet written, on this process or on Ray actors.

Both engines call the same :func:`service.batch.work.explain_shard` per shard; Ray only
decides where it runs (one stateful actor per core holds its onnxruntime sessions)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from service.batch.inputs import Item, list_inputs, shards
from service.batch.output import done_shards, write_shard
from service.batch.work import Job, close_state, explain_shard, open_state

Engine = Literal["local", "ray"]


def run_job(
    job: Job,
    source: Path,
    out: Path,
    *,
    engine: Engine = "local",
    shard_size: int = 8,
    actors: int = 1,
    progress: bool = True,
) -> dict[str, float]:
    """Explain every image under ``source`` into ``out``; returns images, seconds, images/s
    of this run (skipped shards excluded)."""
    items = list_inputs(source)
    todo = [(k, s) for k, s in enumerate(shards(items, shard_size)) if k not in done_shards(out)]
    images = sum(len(s) for _, s in todo)
    started = time.perf_counter()
    runs = _local(job, out, todo) if engine == "local" else _ray(job, out, todo, actors)
    bar = _bar(images, progress)
    for count in runs:
        bar.update(count)
    bar.close()
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}


def _bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="img", disable=not enabled, smoothing=0.1)


def _local(job: Job, out: Path, todo: list[tuple[int, list[Item]]]) -> Iterator[int]:
    state = open_state(job)
    try:
        for k, items in todo:
            write_shard(out, k, explain_shard(state, job, items))
            yield len(items)
    finally:
        close_state(state)


class ShardActor:
    """A Ray Data actor: one service state (sessions, companion graphs) for its lifetime."""

    def __init__(self, job: dict[str, Any], out: str) -> None:
        self.job = Job(**{**job, "store": Path(job["store"])})
        self.out = Path(out)
        self.state = open_state(self.job)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts = []
        for k, paths, relatives, labels in zip(
            batch["shard"], batch["paths"], batch["relatives"], batch["labels"], strict=True
        ):
            items = [
                Item(p, r, None if lab == "" else lab)
                for p, r, lab in zip(paths, relatives, labels, strict=True)
            ]
            write_shard(self.out, int(k), explain_shard(self.state, self.job, items))
            counts.append(len(items))
        return {"shard": batch["shard"], "images": counts}


def init_ray(num_cpus: int | None = None) -> None:
    """A cluster through RAY_ADDRESS, else a small local Ray."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
    )


def _ray(job: Job, out: Path, todo: list[tuple[int, list[Item]]], actors: int) -> Iterator[int]:
    import ray.data

    init_ray()
    if not todo:
        return
    rows = [
        {
            "shard": k,
            "paths": [i.path for i in items],
            "relatives": [i.relative for i in items],
            "labels": ["" if i.label is None else i.label for i in items],
        }
        for k, items in todo
    ]
    spec = {**asdict(job), "store": str(job.store.resolve())}
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardActor,
        batch_size=1,
        concurrency=actors,
        num_cpus=1,
        fn_constructor_kwargs={"job": spec, "out": str(out.resolve())},
    )
    for row in dataset.iter_rows():
        yield int(row["images"])
