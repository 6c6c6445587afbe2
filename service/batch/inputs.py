"""What a batch job reads: a folder tree of images, or a CSV/Parquet manifest of paths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Item:
    path: str  # absolute
    relative: str  # under the input folder (or as the manifest wrote it): the output key
    label: str | None = None


def list_inputs(source: Path) -> list[Item]:
    """Items in a stable order (sorted by relative path): shard k is the same k on every
    run, which is what makes a re-run resumable."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and _is_image_name(p))
        return [Item(str(p.resolve()), p.relative_to(source).as_posix()) for p in files]
    if source.suffix.lower() in (".csv", ".parquet"):
        return _manifest(source)
    raise ValueError(f"input {source}: not a folder, a .csv or a .parquet manifest")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _manifest(source: Path) -> list[Item]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pcsv.read_csv(source) if source.suffix.lower() == ".csv" else pq.read_table(source)
    if "path" not in table.column_names:
        raise ValueError(f"manifest {source}: needs a 'path' column")
    paths = [str(p) for p in table.column("path").to_pylist()]
    labels = (
        [None if v is None else str(v) for v in table.column("label").to_pylist()]
        if "label" in table.column_names
        else [None] * len(paths)
    )
    items = []
    for path, label in zip(paths, labels, strict=True):
        full = Path(path) if Path(path).is_absolute() else source.parent / path
        items.append(Item(str(full.resolve()), path, label))
    return sorted(items, key=lambda item: item.relative)


def shards(items: list[Item], size: int) -> list[list[Item]]:
    return [items[k : k + size] for k in range(0, len(items), size)]
