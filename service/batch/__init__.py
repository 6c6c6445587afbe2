"""Whole datasets: the service's explain pipeline over a folder or a manifest, in shards
written as Parquet, on one process or on Ray actors (docs/batch.md)."""
