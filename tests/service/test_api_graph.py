"""GET /v1/models/{name}/graph against the models' own ONNX graphs, counted by hand."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from fastapi.testclient import TestClient

from models_store.store import ModelStore
from service.app import create_app
from service.settings import Settings
from tests.conftest import tiny_card, tiny_classifier


def test_tiny_graph_nodes_shapes_params(tmp_path: Path) -> None:
    ModelStore(tmp_path).add(tiny_classifier(), tiny_card())
    with TestClient(create_app(Settings(store=tmp_path))) as api:
        graph = api.get("/v1/models/tiny/graph").json()
        schema = api.get("/openapi.json").json()
    assert "/v1/models/{name}/graph" in schema["paths"]
    ops = [n for n in graph["nodes"] if n["kind"] == "op"]
    # Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, plus the input and the output
    assert [n["op_type"] for n in ops] == ["Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm"]
    assert len(graph["nodes"]) == 7
    by_name = {n["name"]: n for n in ops}
    assert by_name["conv"]["shapes"] == [["N", 4, 8, 8]]
    assert by_name["gap"]["shapes"] == [["N", 4, 1, 1]]
    assert by_name["fc"]["shapes"] == [["N", 3]]
    assert by_name["conv"]["params"] == 4 * 3 * 3 * 3 + 4
    assert by_name["fc"]["params"] == 3 * 4 + 3
    assert graph["params"] == 112 + 15
    assert by_name["conv"]["layer"] == "conv" and by_name["fc"]["layer"] is None
    chain = [(e["source"], e["target"]) for e in graph["edges"]]
    ids = [n["id"] for n in graph["nodes"]]
    assert chain == list(itertools.pairwise(ids))


def test_unknown_model_is_a_problem(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(store=tmp_path))) as api:
        response = api.get("/v1/models/nope/graph")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


def test_pretrained_graph_counts(effnet_store: Path) -> None:
    with TestClient(create_app(Settings(store=effnet_store))) as api:
        graph = api.get("/v1/models/efficientnet-lite0/graph").json()
        layers = api.get("/v1/models/efficientnet-lite0/layers").json()
    model = onnx.load(next(effnet_store.glob("efficientnet-lite0/*/model.onnx")))
    non_constant = [n for n in model.graph.node if n.op_type != "Constant"]
    assert sum(n["kind"] == "op" for n in graph["nodes"]) == len(non_constant)
    assert graph["params"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    spatial = {layer["name"] for layer in layers["layers"] if layer["spatial"]}
    assert {n["layer"] for n in graph["nodes"] if n["layer"]} == spatial
    assert len({n["group"] for n in graph["nodes"] if n["group"]}) > 10  # the blocks
