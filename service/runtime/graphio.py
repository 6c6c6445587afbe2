"""What a graph's inputs declare, and runs made to fit it: batch limits, padding, feed types.

The batch limit of a graph is read from the first dimension of its inputs (the ONNX
ValueInfo, or an onnxruntime session's ``get_inputs()``): a ``dim_value`` N means exactly N
rows per run; a ``dim_param`` or an unknown dimension means any number. Every run is split
into chunks of at most N rows, and a chunk with fewer than N rows is padded to N by repeating
its last row; the padded rows' outputs are dropped.

Float feeds are cast between float32 and float16 to what the graph declares (a float16 model
run natively, e.g. on CUDA, or the float32 copy of one fed float16), and float16 outputs come
back as float32, so callers always deal in float32. Other dtypes are passed as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

__all__ = ["Declared", "declared", "model_batch_limit", "run_fitted", "run_padded"]

Run = Callable[[list[str] | None, dict[str, np.ndarray]], Sequence[np.ndarray]]

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float16)": np.dtype(np.float16),
    "tensor(float)": np.dtype(np.float32),
}
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32))


@dataclass(frozen=True)
class Declared:
    """A graph's batch limit (None = dynamic) and the feeds it wants in another dtype."""

    batch: int | None = None
    casts: dict[str, np.dtype] = field(default_factory=dict)


def _first_dim_onnx(vi: onnx.ValueInfoProto) -> int | None:
    tensor = vi.type.tensor_type
    if not tensor.HasField("shape") or not tensor.shape.dim:
        return None
    dim = tensor.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


def model_batch_limit(model: onnx.ModelProto, input_name: str | None = None) -> int | None:
    """The fixed batch of ``input_name`` (or of every runtime input), None when dynamic."""
    weights = {t.name for t in model.graph.initializer}
    fixed = [
        _first_dim_onnx(vi)
        for vi in model.graph.input
        if vi.name not in weights and (input_name is None or vi.name == input_name)
    ]
    known = [f for f in fixed if f is not None]
    return min(known) if known else None


def declared(session: Any) -> Declared:
    """Read from a session with onnxruntime's ``get_inputs()``; nothing known otherwise."""
    get_inputs = getattr(session, "get_inputs", None)
    if get_inputs is None:
        return Declared()
    try:
        inputs = list(get_inputs())
    except Exception:  # a stand-in session without real metadata
        return Declared()
    fixed: list[int] = []
    casts: dict[str, np.dtype] = {}
    for arg in inputs:
        shape = getattr(arg, "shape", None)
        if (
            isinstance(shape, (list, tuple))
            and shape
            and isinstance(shape[0], int)
            and shape[0] > 0
        ):
            fixed.append(int(shape[0]))
        want = _ORT_TYPES.get(str(getattr(arg, "type", "")))
        if want is not None:
            casts[str(arg.name)] = want
    return Declared(min(fixed) if fixed else None, casts)


def cast_feeds(feeds: dict[str, np.ndarray], casts: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    if not casts:
        return feeds
    return {
        k: v.astype(casts[k]) if k in casts and v.dtype in _FLOATS and v.dtype != casts[k] else v
        for k, v in feeds.items()
    }


def float32_outputs(outputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [
        o.astype(np.float32) if isinstance(o, np.ndarray) and o.dtype == np.float16 else o
        for o in outputs
    ]


def _rows(feeds: dict[str, np.ndarray]) -> int | None:
    rows = {v.shape[0] for v in feeds.values() if getattr(v, "ndim", 0)}
    return rows.pop() if len(rows) == 1 else None


def run_padded(
    run: Run, outputs: list[str] | None, feeds: dict[str, np.ndarray], batch: int | None
) -> list[np.ndarray]:
    """``run(outputs, feeds)`` in chunks of at most ``batch`` rows, each padded to ``batch``.

    Without a fixed batch, or when the feeds do not share one row count, one plain run."""
    n = _rows(feeds)
    if batch is None or n is None or n == batch:
        return list(run(outputs, feeds))
    parts: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        chunk = {k: v[start:stop] for k, v in feeds.items()}
        short = batch - (stop - start)
        if short:
            chunk = {
                k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in chunk.items()
            }
        result = list(run(outputs, chunk))
        parts.append([r[: stop - start] if getattr(r, "ndim", 0) else r for r in result])
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(p, axis=0) for p in zip(*parts, strict=True)]


def run_fitted(
    session: Any,
    outputs: list[str] | None,
    feeds: dict[str, np.ndarray],
    batch: int | None = None,
) -> list[np.ndarray]:
    """One logical run of ``session`` made to fit what it declares (see the module docstring).

    ``batch`` is the caller's limit (the source model's); the session's own declaration wins
    where it has one."""
    info = declared(session)
    limit = info.batch if info.batch is not None else batch
    out = run_padded(session.run, outputs, cast_feeds(feeds, info.casts), limit)
    return float32_outputs(out)
