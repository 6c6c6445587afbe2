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


def add_auto_seed(model: onnx.ModelProto, spec: CompanionSpec, classes: int) -> onnx.ModelProto:
    """A copy of a companion graph whose zero seed rows select the top-scoring class."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    seed, effective = spec.seed, _PREFIX + "seed"
    for node in graph.node:  # the backward sweep now reads the effective seed
        node.input[:] = [effective if name == seed else name for name in node.input]
    score_producer = next(i for i, node in enumerate(graph.node) if spec.score in node.output)

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
        helper.make_node("ArgMax", [spec.score], [name("top")], axis=1, keepdims=0),
        helper.make_node(
            "OneHot", [name("top"), name("depth"), name("values")], [name("onehot")], axis=-1
        ),
        helper.make_node("Where", [name("unset"), name("onehot"), seed], [effective]),
    ]
    for offset, node in enumerate(nodes, start=1):  # keep the graph topologically sorted
        graph.node.insert(score_producer + offset, node)
    graph.initializer.extend(constants)
    return out
