"""The store: versioning, atomic writes, and every refusal leaving the store unchanged."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from models_store.errors import InvalidCard, InvalidModel, ModelConflict, ModelNotFound
from models_store.store import ModelStore, version_key
from tests.conftest import tiny_card, tiny_classifier


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_add_get_and_versions(store_root: Path, tiny_model: bytes) -> None:
    store = ModelStore(store_root)
    first = store.add(tiny_model, tiny_card())
    second = store.add(tiny_classifier(seed=1), tiny_card())
    assert (first.version, second.version) == ("1", "2")
    assert store.get("tiny").version == "2"  # newest by default
    assert store.get("tiny", "1").sha256 == first.sha256 != second.sha256
    assert store.resolve("tiny@1").version == "1"
    assert store.names() == ["tiny"]
    assert first.model_path.read_bytes() == tiny_model
    assert first.derived_dir.is_dir()
    # the stored card records what the graph names
    assert first.card.input.name == "input" and first.card.output.name == "logits"


def test_explicit_version_conflict(store_root: Path, tiny_model: bytes) -> None:
    store = ModelStore(store_root)
    store.add(tiny_model, tiny_card(version="2024.1"))
    before = snapshot(store_root)
    with pytest.raises(ModelConflict, match="already has version '2024.1'"):
        store.add(tiny_model, tiny_card(version="2024.1"))
    assert snapshot(store_root) == before


def test_natural_version_order() -> None:
    assert sorted(["10", "2", "1"], key=version_key) == ["1", "2", "10"]
    assert sorted(["1.10", "1.2"], key=version_key) == ["1.2", "1.10"]


def test_remove_one_version_then_all(store_root: Path, tiny_model: bytes) -> None:
    store = ModelStore(store_root)
    store.add(tiny_model, tiny_card())
    store.add(tiny_model, tiny_card())
    assert store.remove("tiny", "1") == ["1"]
    assert store.versions("tiny") == ["2"]
    assert store.remove("tiny") == ["2"]
    assert store.names() == []
    assert not (store_root / "tiny").exists()
    with pytest.raises(ModelNotFound):
        store.get("tiny")


def test_unknown_names_are_404(store_root: Path) -> None:
    store = ModelStore(store_root)
    for ref in ("nope", "../etc", "UPPER"):
        with pytest.raises(ModelNotFound):
            store.resolve(ref)


def test_interrupted_write_is_cleaned_on_open(store_root: Path, tiny_model: bytes) -> None:
    store = ModelStore(store_root)
    store.add(tiny_model, tiny_card())
    # what a kill -9 mid-upload leaves: a staging folder under .tmp
    staging = store_root / ".tmp" / "deadbeef"
    (staging / "derived").mkdir(parents=True)
    (staging / "model.onnx").write_bytes(tiny_model[:100])
    reopened = ModelStore(store_root)
    assert not any((store_root / ".tmp").iterdir())
    assert reopened.names() == ["tiny"]


def test_concurrent_unversioned_adds_get_distinct_versions(
    store_root: Path, tiny_model: bytes
) -> None:
    stores = [ModelStore(store_root)] + [ModelStore.__new__(ModelStore) for _ in range(9)]
    for s in stores[1:]:  # ten independent writers (separate locks), one folder
        s.__dict__.update(stores[0].__dict__, _lock=threading.Lock())
    results: list[str] = []
    errors: list[Exception] = []

    def register(store: ModelStore) -> None:
        try:
            results.append(store.add(tiny_model, tiny_card()).version)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results, key=int) == [str(i) for i in range(1, 11)]
    assert stores[0].versions("tiny") == [str(i) for i in range(1, 11)]


def _refused(store_root: Path, data: bytes, card: object, error: type, match: str) -> None:
    store = ModelStore(store_root)
    store.add(tiny_classifier(), tiny_card(name="keep"))
    before = snapshot(store_root)
    with pytest.raises(error, match=match):
        store.add(data, card)  # type: ignore[arg-type]
    assert snapshot(store_root) == before
    assert not any((store_root / ".tmp").iterdir())


def test_refuses_non_onnx(store_root: Path) -> None:
    _refused(store_root, os.urandom(2000), tiny_card(), InvalidModel, "not an ONNX model")


def test_refuses_empty(store_root: Path) -> None:
    _refused(store_root, b"", tiny_card(), InvalidModel, "empty")


def test_refuses_truncated(store_root: Path, tiny_model: bytes) -> None:
    _refused(store_root, tiny_model[: len(tiny_model) // 2], tiny_card(), InvalidModel, "ONNX")


def test_refuses_label_count_mismatch(store_root: Path) -> None:
    card = tiny_card(labels=["a", "b", "c"])
    _refused(
        store_root,
        tiny_classifier(classes=10),
        card,
        InvalidCard,
        "3 labels but the model outputs 10 scores",
    )


def test_refuses_card_input_size_mismatch(store_root: Path, tiny_model: bytes) -> None:
    card = tiny_card(input={"height": 224, "width": 224})
    _refused(store_root, tiny_model, card, InvalidCard, "H=224")


def test_refuses_external_data(store_root: Path, tiny_model: bytes) -> None:
    model = onnx.load_from_string(tiny_model)
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    _refused(store_root, model.SerializeToString(), tiny_card(), InvalidModel, "external data")


def test_refuses_huge_initializer_claim(store_root: Path, tiny_model: bytes) -> None:
    model = onnx.load_from_string(tiny_model)
    model.graph.initializer[0].dims[:] = [2**20, 2**20, 1, 1]
    _refused(store_root, model.SerializeToString(), tiny_card(), InvalidModel, "claims")


def test_refuses_custom_domain_op(store_root: Path, tiny_model: bytes) -> None:
    model = onnx.load_from_string(tiny_model)
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    _refused(store_root, model.SerializeToString(), tiny_card(), InvalidModel, "com.example")


def test_refuses_two_inputs(store_root: Path, tiny_model: bytes) -> None:
    model = onnx.load_from_string(tiny_model)
    model.graph.input.append(
        helper.make_tensor_value_info("other", TensorProto.FLOAT, ["N", 3, 8, 8])
    )
    _refused(store_root, model.SerializeToString(), tiny_card(), InvalidModel, "2 inputs")
