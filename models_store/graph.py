"""Small readers over an ONNX graph: its real inputs and outputs with their shapes."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

Dim = int | str | None  # static size, symbolic name, or unknown


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy name, e.g. "float32"
    shape: tuple[Dim, ...]

    def static_shape(self) -> tuple[int, ...] | None:
        return tuple(self.shape) if all(isinstance(d, int) for d in self.shape) else None  # type: ignore[arg-type]


def value_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    shape: list[Dim] = []
    if tensor_type.HasField("shape"):
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                shape.append(dim.dim_param)
            else:
                shape.append(None)
    try:
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
    except (KeyError, ValueError):
        dtype = "unknown"
    return TensorInfo(value.name, dtype, tuple(shape))


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Inputs that are fed at run time (initializers listed as inputs are weights)."""
    weights = {t.name for t in model.graph.initializer}
    return [value_info(v) for v in model.graph.input if v.name not in weights]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [value_info(v) for v in model.graph.output]
