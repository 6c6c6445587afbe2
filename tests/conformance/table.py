"""The conformance table: one row per (family, exporter, quantity), printed after the run.

Tests call :func:`record` for every case they check — passed, failed, refused or not
exported — so the table that ``make test`` prints (and docs/companion.md carries) has a row
for every case, never a silent skip. Set ``CNNVIS_CONFORMANCE_TABLE=path.md`` to also write
the table to a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1e}"


def markdown() -> str:
    lines = [
        "| source | family | exporter | quantity | error | allowance | status | note |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    order = sorted(ROWS, key=lambda r: (r.source, r.family, r.exporter, r.quantity))
    for r in order:
        note = r.note.replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(
            f"| {r.source} | {r.family} | {r.exporter} | {r.quantity} | {_fmt(r.error)} "
            f"| {_fmt(r.allowance)} | {r.status} | {note} |"
        )
    return "\n".join(lines)


def write_if_asked() -> str | None:
    if not ROWS:
        return None
    text = markdown()
    target = os.environ.get("CNNVIS_CONFORMANCE_TABLE")
    if target:
        Path(target).write_text(text + "\n")
    return text
