"""Companion graphs that pick their own class: an all-zero seed row means "the top class".

Explaining the top class would otherwise take two runs: a forward to learn the class, then
the companion graph with its one-hot seed. Here the seed is rewritten inside the graph,
    seed' = where(sum(|seed|) == 0, onehot(argmax(score)), seed)     (per row)
so one run does both. The score is computed before the backward sweep needs the seed, so the
graph stays acyclic. A zero seed had no use before (its gradients are all zero).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .builder import CompanionSpec

_PREFIX = "cnnvis_autoseed/"


AUTOSEED_VERSION = "1"  # part of the cache key


def score_width(model: onnx.ModelProto, spec: CompanionSpec) -> int | None:
    """The static number of classes of the companion's score output, if declared."""
    for value in model.graph.output:
        if value.name == spec.score:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 0:
                return int(dims[1].dim_value)
    return None


def add_auto_seed(model: onnx.ModelProto, spec: CompanionSpec) -> onnx.ModelProto:
    """A copy of a companion graph whose zero seed rows select the top-scoring class; the
    graph unchanged when its score is not a static (batch, classes) tensor."""
    classes = score_width(model, spec)
    if classes is None:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    seed, effective = spec.seed, _PREFIX + "seed"
    for node in graph.node:  # the backward sweep now reads the effective seed
        node.input[:] = [effective if i == seed else i for i in node.input]
    # the score output is an Identity appended after the backward nodes: read its source,
    # and put the new nodes right after the node that produces that
    producers = {out: i for i, node in enumerate(graph.node) for out in node.output}
    logits = spec.score
    while graph.node[producers[logits]].op_type == "Identity":
        logits = graph.node[producers[logits]].input[0]
    score_producer = producers[logits]

    def name(suffix: str) -> str:
        return _PREFIX + suffix

    constants = [
        numpy_helper.from_array(np.array([1], np.int64), name("axis1")),
        numpy_helper.from_array(np.array(classes, np.int64), name("depth")),
        numpy_helper.from_array(np.array([0.0, 1.0], np.float32), name("values")),
        numpy_helper.from_array(np.array(0.0, np.float32), name("zero")),
    ]
    nodes = [
        helper.make_node("Abs", [seed], [name("abs")]),
        helper.make_node("ReduceSum", [name("abs"), name("axis1")], [name("rowsum")], keepdims=1),
        helper.make_node("Equal", [name("rowsum"), name("zero")], [name("unset")]),
        helper.make_node("ArgMax", [logits], [name("top")], axis=1, keepdims=0),
        helper.make_node(
            "OneHot", [name("top"), name("depth"), name("values")], [name("onehot")], axis=-1
        ),
        helper.make_node("Where", [name("unset"), name("onehot"), seed], [effective]),
    ]
    for offset, node in enumerate(nodes, start=1):  # keep the graph topologically sorted
        graph.node.insert(score_producer + offset, node)
    graph.initializer.extend(constants)
    return out
