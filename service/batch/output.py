"""Parquet output in shards: ``<out>/shards/part-NNNNN.parquet``, each written to a temporary
name and renamed into place, so a shard is either whole or absent. A re-run skips the shards
that exist: a kill at any point never leaves a half shard or a duplicated row."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("label", pa.string()),
        ("error", pa.string()),
        ("rank", pa.int32()),
        ("prediction", pa.int64()),
        ("prediction_label", pa.string()),
        ("target", pa.int64()),
        ("target_label", pa.string()),
        ("score", pa.float64()),
        ("probability", pa.float64()),
        ("entropy", pa.float64()),
        ("sparseness", pa.float64()),
        ("top5_share", pa.float64()),
        ("peak", pa.list_(pa.int32())),
        ("region_shares", pa.string()),
        ("map_shape", pa.list_(pa.int32())),
        ("map", pa.list_(pa.float32())),
    ]
)


def shard_path(out: Path, k: int) -> Path:
    return out / "shards" / f"part-{k:05d}.parquet"


def done_shards(out: Path) -> set[int]:
    folder = out / "shards"
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")}


def write_shard(out: Path, k: int, rows: list[dict[str, Any]]) -> Path:
    path = shard_path(out, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{name: row.get(name) for name in SCHEMA.names} for row in rows], schema=SCHEMA
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)  # atomic on one file system
    return path


def read_output(out: Path) -> pa.Table:
    """Every finished shard, in shard order."""
    paths = sorted((out / "shards").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p, schema=SCHEMA) for p in paths])
