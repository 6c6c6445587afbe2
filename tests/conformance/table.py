"""The conformance table: one row per (family, exporter, quantity), printed after the run.

Tests call :func:`record` for every case they check — passed, failed, refused or not
exported — so the table that ``make test`` prints (and docs/companion.md carries) has a row
for every case, never a silent skip. Set ``CNNVIS_CONFORMANCE_TABLE=path.md`` to also write
the table to a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

# Set by tests/conftest.py in the main pytest process: every process (pytest-xdist workers
# included) appends its rows there, and the main process prints them all.
ROWS_DIR = "CNNVIS_CONFORMANCE_ROWS"


@dataclass(frozen=True)
class Row:
    source: str  # "torchvision", "keras", "timm"
    family: str  # the architecture (its smallest member)
    exporter: str  # "torchscript", "dynamo", "tf2onnx", ...
    quantity: str  # "input gradient", "mid-layer gradient", "guided backprop", ...
    error: float | None  # max|ours - ref| / max|ref| against the float64 reference
    allowance: float | None  # max(1e-4, 3 x the framework's own float32 error)
    status: str  # "pass", "FAIL", "refused", "export failed"
    note: str = ""


ROWS: list[Row] = []


def allowance(framework_f32_error: float) -> float:
    """The pass threshold: max(1e-4, 3 x the framework's own float32 error vs float64)."""
    return max(1e-4, 3.0 * framework_f32_error)


def record(row: Row) -> None:
    ROWS.append(row)
    folder = os.environ.get(ROWS_DIR)
    if folder:
        with open(Path(folder) / f"{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(asdict(row)) + "\n")


def collected() -> list[Row]:
    """Every process's rows (this process's alone when no folder is set)."""
    folder = os.environ.get(ROWS_DIR)
    if not folder:
        return list(ROWS)
    return [
        Row(**json.loads(line))
        for path in sorted(Path(folder).glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def markdown() -> str:
    lines = [
        "| source | family | exporter | quantity | error | allowance | status | note |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    order = sorted(collected(), key=lambda r: (r.source, r.family, r.exporter, r.quantity))
    for r in order:
        note = r.note.replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(
            f"| {r.source} | {r.family} | {r.exporter} | {r.quantity} | {_fmt(r.error)} "
            f"| {_fmt(r.allowance)} | {r.status} | {note} |"
        )
    return "\n".join(lines)


def write_if_asked() -> str | None:
    if not collected():
        return None
    text = markdown()
    target = os.environ.get("CNNVIS_CONFORMANCE_TABLE")
    if target:
        Path(target).write_text(text + "\n")
    return text
