"""Static sizes that ONNX shape inference leaves symbolic, recovered from the runtime.

Inference gives up where a size flows through run-time arithmetic: torch's
``x.view(x.size(0), groups, -1, h, w)`` exports as Shape -> Gather -> Div -> Concat -> Reshape,
``torch.chunk`` computes its Slice bounds from Shape, and tf2onnx's Keras graphs are full of
both. Gradient rules need those sizes (Concat's split points, Slice's bounds, the count of a
mean). onnxruntime knows every one of them, so :func:`settle` runs the model on a probe input
at two batch sizes:

* a tensor computed from input *shapes* only (never from input values) whose value is the same
  at both batch sizes is frozen into an initializer; the graph is folded and inferred again,
  so its consumers see constants (a Reshape's target, a Slice's bounds);
* the tensors whose shapes are still incomplete get them from the probe: an axis of the same
  size in both runs is static, an axis that follows the batch takes the input's batch symbol,
  anything else stays unknown.

This needs every graph input's non-batch dims to be static (the card's size is the graph's
size); otherwise, or where the model cannot run on a probe, the graph is left as it was and the
rules refuse what they cannot do, naming the op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .context import Shape

_PROBE_BATCHES = (2, 3)
_FREEZE_LIMIT = 4096  # shape plumbing is small; never freeze a big tensor into the graph
_SHAPE_OPS = ("Shape", "Size")

FoldAndInfer = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, list[onnx.ValueInfoProto]]]


def shape_of(vi_type: onnx.TypeProto) -> Shape | None:
    """A value info's shape: ints, symbols (str) or None per axis; None when unranked."""
    if not vi_type.HasField("tensor_type") or not vi_type.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in vi_type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def settle(
    model: onnx.ModelProto,
    value_infos: list[onnx.ValueInfoProto],
    fold_and_infer: FoldAndInfer,
) -> tuple[onnx.ModelProto, list[onnx.ValueInfoProto]]:
    """Freeze batch-independent shape arithmetic and complete shapes (module docstring)."""
    inputs = _runtime_inputs(model)
    batches, symbol = _probe_plan(inputs)
    if batches is None:
        return model, value_infos
    shape_only = _shape_only(model)
    incomplete = _incomplete(model, value_infos, symbol)
    if not shape_only and not incomplete:
        return model, value_infos
    runs = _probe(model, inputs, sorted(shape_only | incomplete), batches)
    if runs is None:
        return model, value_infos
    frozen = {
        name: runs[0][name]
        for name in shape_only
        if runs[0][name].size <= _FREEZE_LIMIT
        and all(np.array_equal(r[name], runs[0][name]) for r in runs[1:])
    }
    if frozen:  # the probe's values stay valid: freezing changes no tensor's value
        model, value_infos = fold_and_infer(_freeze(model, frozen))
        incomplete = _incomplete(model, value_infos, symbol) & incomplete
    return model, _complete(value_infos, incomplete, runs, batches, symbol)


def correct_ceil_pools(
    model: onnx.ModelProto, value_infos: list[onnx.ValueInfoProto]
) -> list[onnx.ValueInfoProto]:
    """Output sizes of ceil_mode pools as the runtime computes them.

    onnx's inference keeps a last window that would start inside the end padding (width 8,
    kernel 3, stride 3, pad 1: it says 4); onnxruntime and PyTorch drop it (3). The rule is
    ``o = ceil((H + pb + pe - eff) / s) + 1``, less one when ``(o - 1) s >= H + pb``.
    """
    infos = {vi.name: vi for vi in [*model.graph.input, *value_infos]}
    corrected: dict[str, onnx.ValueInfoProto] = {}
    for node in model.graph.node:
        if node.op_type not in ("MaxPool", "AveragePool", "LpPool") or not node.output:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not attrs.get("ceil_mode") or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", ""):
            continue
        x, y = infos.get(node.input[0]), infos.get(node.output[0])
        x_shape = None if x is None else shape_of(x.type)
        y_shape = None if y is None else shape_of(y.type)
        if not x_shape or not y_shape or len(x_shape) != len(y_shape):
            continue
        kernel = list(attrs["kernel_shape"])
        n = len(kernel)
        strides = list(attrs.get("strides", [1] * n))
        dilations = list(attrs.get("dilations", [1] * n))
        pads = list(attrs.get("pads", [0] * (2 * n)))
        dims = list(y_shape)
        for i in range(n):
            size = x_shape[2 + i]
            if not isinstance(size, int):
                continue
            eff = (kernel[i] - 1) * dilations[i] + 1
            span = size + pads[i] + pads[n + i] - eff
            out = -(-span // strides[i]) + 1
            if (out - 1) * strides[i] >= size + pads[i]:
                out -= 1
            dims[2 + i] = out
        if dims != list(y_shape):
            elem = y.type.tensor_type.elem_type  # type: ignore[union-attr]
            fixed = helper.make_tensor_value_info(node.output[0], elem, dims)
            infos[node.output[0]] = corrected[node.output[0]] = fixed
    present = {vi.name for vi in value_infos}
    return [corrected.get(vi.name, vi) for vi in value_infos] + [
        vi for name, vi in corrected.items() if name not in present
    ]


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _probe_plan(inputs: Sequence[onnx.ValueInfoProto]) -> tuple[tuple[int, ...] | None, str]:
    """The batch sizes to probe at (None: unprobeable) and the batch symbol."""
    if not inputs:
        return None, ""
    shapes = [shape_of(vi.type) for vi in inputs]
    if any(not s or any(not isinstance(d, int) for d in s[1:]) for s in shapes):
        return None, ""
    lead = shapes[0][0]  # type: ignore[index]
    if isinstance(lead, int):
        return (lead,), ""
    return _PROBE_BATCHES, lead if isinstance(lead, str) else "N"


def _shape_only(model: onnx.ModelProto) -> set[str]:
    """Node outputs computed from input shapes but never from input values."""
    initializers = {t.name for t in model.graph.initializer}
    runtime = {vi.name for vi in model.graph.input if vi.name not in initializers}
    dynamic, valued = set(runtime), set(runtime)
    result = set()
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        ins = [i for i in node.input if i]
        outs = [o for o in node.output if o]
        if any(i in dynamic for i in ins):
            dynamic.update(outs)
            if node.op_type not in _SHAPE_OPS and any(i in valued for i in ins):
                valued.update(outs)
            elif any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
                valued.update(outs)  # subgraphs may read input values from the outer scope
            else:
                result.update(outs)
    return result


def _incomplete(
    model: onnx.ModelProto, value_infos: Sequence[onnx.ValueInfoProto], batch: str
) -> set[str]:
    """Node outputs whose shape is unknown, symbolic beyond the batch axis, or whose first
    axis is a symbol other than the input's batch (inference's fresh ``unk__`` names)."""
    shapes = {vi.name: shape_of(vi.type) for vi in value_infos}
    result = set()
    for node in model.graph.node:
        for out in node.output:
            shape = shapes.get(out)
            if not out:
                continue
            if (
                shape is None
                or any(not isinstance(d, int) for d in shape[1:])
                or (shape and not isinstance(shape[0], int) and shape[0] != batch)
            ):
                result.add(out)
    return result


def _probe(
    model: onnx.ModelProto,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[str],
    batches: Sequence[int],
) -> list[dict[str, np.ndarray]] | None:
    """One run per batch size exposing ``outputs``; None if the model cannot run."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in outputs)
    del probe.graph.value_info[:]
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rng = np.random.default_rng(0)
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        runs = []
        for batch in batches:
            feeds = {vi.name: _probe_input(vi, batch, rng) for vi in inputs}
            values = session.run(list(outputs), feeds)
            runs.append({n: np.asarray(v) for n, v in zip(outputs, values, strict=True)})
    except Exception:  # a model that cannot run on a probe keeps inference's shapes
        return None
    return runs


def _probe_input(vi: onnx.ValueInfoProto, batch: int, rng: np.random.Generator) -> np.ndarray:
    dims = shape_of(vi.type) or ()
    shape = (
        tuple(d if isinstance(d, int) else batch for d in dims[:1])
        + tuple(
            int(d)  # type: ignore[arg-type]
            for d in dims[1:]
        )
    )
    dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    if np.issubdtype(dtype, np.floating):
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.integers(0, 128, size=shape).astype(dtype)


def _freeze(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the producers of ``values`` replaced by initializers (a node goes only
    when all its outputs are frozen)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = []
    added: list[onnx.NodeProto] = []
    for node in out.graph.node:
        outs = [o for o in node.output if o]
        if outs and all(o in values for o in outs):
            added.extend(numpy_helper.from_array(values[o], o) for o in outs)
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(added)
    return out


def _complete(
    value_infos: Sequence[onnx.ValueInfoProto],
    incomplete: set[str],
    runs: Sequence[dict[str, np.ndarray]],
    batches: Sequence[int],
    symbol: str,
) -> list[onnx.ValueInfoProto]:
    completed = {vi.name: vi for vi in value_infos}
    for name in incomplete:
        arrays = [r[name] for r in runs]
        if any(a.ndim != arrays[0].ndim for a in arrays):
            continue
        dims: list[int | str | None] = []
        for axis in range(arrays[0].ndim):
            sizes = [int(a.shape[axis]) for a in arrays]
            if len(set(sizes)) == 1:  # also every axis of a fixed-batch model
                dims.append(sizes[0])
            elif sizes == list(batches):
                dims.append(symbol)
            else:
                dims.append(None)
        elem = helper.np_dtype_to_tensor_dtype(arrays[0].dtype)
        completed[name] = helper.make_tensor_value_info(name, elem, dims)
    return list(completed.values())
