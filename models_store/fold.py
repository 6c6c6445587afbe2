"""Constant folding: evaluate every node whose inputs are all constants, once, at build time.

Exporters leave shape plumbing in graphs (TorchScript's same-padding builds its Pad amounts
from ConstantOfShape, Concat, Transpose and Cast). Folding it turns those into initializers,
so shape inference sees static shapes and the companion builder sees constant attributes.
"""

from __future__ import annotations

import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Ops whose value is not a function of their inputs.
_NOT_FOLDABLE = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every constant-only node replaced by an initializer."""
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    foldable: list[onnx.NodeProto] = []
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        has_subgraph = any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute)
        if (
            node.domain in ("", "ai.onnx")
            and node.op_type not in _NOT_FOLDABLE
            and not has_subgraph
            and all(not i or i in constants for i in node.input)
        ):
            foldable.append(node)
            constants.update(o for o in node.output if o)
        else:
            kept.append(node)
    if not foldable:
        return model

    produced = {o for n in foldable for o in n.output if o}
    used = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    wanted = sorted(produced & used)
    folded_values: list[onnx.TensorProto] = []
    if wanted:
        sub = helper.make_graph(
            foldable,
            "fold",
            [],
            [helper.make_empty_tensor_value_info(name) for name in wanted],
            initializer=list(graph.initializer),
        )
        sub_model = helper.make_model(sub, opset_imports=list(model.opset_import))
        sub_model.ir_version = model.ir_version
        values = ReferenceEvaluator(sub_model).run(None, {})
        folded_values = [
            numpy_helper.from_array(value, name) for name, value in zip(wanted, values, strict=True)
        ]

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    still_used = used | {i for n in kept for i in n.input}
    initializers = [t for t in graph.initializer if t.name in still_used] + folded_values
    del out.graph.initializer[:]
    out.graph.initializer.extend(initializers)
    weights = {t.name for t in initializers}
    inputs = [v for v in graph.input if v.name not in constants or v.name in weights]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    del out.graph.value_info[:]
    return out
