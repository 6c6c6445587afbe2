"""The engine's contract: outputs, score resolution, pruning, errors, batch, cache."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models_store.companion import (
    BUILDER_VERSION,
    REGISTRY,
    CompanionSpec,
    build_companion,
    forward_model,
    load_or_build,
)
from models_store.companion.context import vjp
from models_store.errors import LayerNotFound, UnsupportedModel

from .helpers import build_checked, scan_emitted, session


def tiny(
    head: str | None = "Softmax", extra: list[onnx.NodeProto] | None = None, opset: int = 17
) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm [-> head]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1, name="fc"),
        *(extra or []),
    ]
    out = "logits"
    if head:
        nodes.append(helper.make_node(head, ["logits"], ["probs"], name="head"))
        nodes.append(helper.make_node("Identity", ["probs"], ["output"], name="out"))
        out = "output"
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run(companion: onnx.ModelProto, spec: CompanionSpec, x: np.ndarray, seed: np.ndarray):
    outs = session(companion).run(list(spec.outputs), {spec.image_input: x, spec.seed: seed})
    return dict(zip(spec.outputs, outs, strict=True))


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid", "LogSoftmax", None])
def test_score_is_the_logits_before_a_probability_head(head: str | None) -> None:
    model = tiny(head)
    companion, spec = build_checked(model, ["relu"], input_gradient=True)
    assert spec.outputs == ("score", "relu", "gradient_0", "input_gradient")
    assert [o.name for o in companion.graph.output] == list(spec.outputs)
    assert [i.name for i in companion.graph.input] == ["image", "seed"]
    x = np.random.default_rng(1).normal(size=(3, 3, 6, 6)).astype(np.float32)
    seed = np.eye(3, 5, dtype=np.float32)
    outs = run(companion, spec, x, seed)
    (logits,) = session(forward_model(model, ["logits"])).run(None, {"image": x})
    np.testing.assert_allclose(outs["score"], logits, rtol=1e-6)
    (relu,) = session(forward_model(model, ["relu"])).run(None, {"image": x})
    np.testing.assert_allclose(outs[spec.activations[0]], relu, rtol=1e-6)


def test_batch_dimension_stays_dynamic_and_rows_take_their_own_seed() -> None:
    companion, spec = build_checked(tiny(), ["relu"])
    seed_dim = companion.graph.input[1].type.tensor_type.shape.dim[0]
    assert seed_dim.dim_param == "N"
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 3, 6, 6)).astype(np.float32)
    seed = np.zeros((4, 5), np.float32)
    seed[np.arange(4), [0, 3, 1, 4]] = 1
    batched = run(companion, spec, x, seed)["gradient_0"]
    for row in range(4):
        single = run(companion, spec, x[row : row + 1], seed[row : row + 1])["gradient_0"]
        np.testing.assert_allclose(batched[row : row + 1], single, rtol=1e-6, atol=1e-7)


def test_only_the_path_to_the_score_is_differentiated() -> None:
    # A side branch from the image that does not reach the score gets no backward nodes.
    side = [helper.make_node("Sigmoid", ["image"], ["side"], name="side")]
    companion, _ = build_checked(tiny(extra=side), ["gap"])
    ops = [n.op_type for n in companion.graph.node]
    # gap's gradient needs only Gemm and Flatten backward: no ConvTranspose, no Relu mask
    assert "ConvTranspose" not in ops and "Where" not in ops and "Sigmoid" not in ops


def test_unknown_layer_is_layer_not_found() -> None:
    with pytest.raises(LayerNotFound, match="nope"):
        build_companion(tiny(), ["nope"])


def test_layer_that_does_not_reach_the_score_is_refused() -> None:
    side = [helper.make_node("Sigmoid", ["conv"], ["side"], name="side")]
    with pytest.raises(UnsupportedModel, match="does not influence the score"):
        build_companion(tiny(extra=side), ["side"])


def test_op_without_rule_names_op_node_and_path() -> None:
    model = tiny(head=None)
    # an op we have no rule for, between the layer and the score
    model.graph.node[1].op_type = "Selu"
    model.graph.node[1].name = "odd"
    with pytest.raises(UnsupportedModel) as err:
        build_companion(model, ["conv"])
    detail = err.value.detail
    assert "'Selu'" in detail and "'odd'" in detail
    assert "'conv' -> Selu 'odd' -> GlobalAveragePool 'gap'" in detail
    assert "score 'logits'" in detail


def test_registry_refuses_duplicates() -> None:
    assert "Conv" in REGISTRY
    with pytest.raises(ValueError, match="duplicate"):
        vjp("Conv")(lambda ctx: [])


def test_old_opset_is_lifted_to_13() -> None:
    companion, _ = build_companion(tiny(head=None, opset=11), ["relu"], input_gradient=True)
    assert {o.domain: o.version for o in companion.opset_import}[""] == 13
    onnx.checker.check_model(companion)


def test_scan_catches_forbidden_constructs() -> None:
    companion, _ = build_companion(tiny(), ["relu"], input_gradient=True)
    assert scan_emitted(companion, 17) == []
    bad = onnx.ModelProto()
    bad.CopyFrom(companion)
    bad.graph.node.append(helper.make_node("ScatterND", ["a", "b", "c"], ["d"]))
    bad.graph.node.append(helper.make_node("ConvTranspose", ["a", "b"], ["e"], pads=[0, 0, 1, 1]))
    bad.graph.node.append(helper.make_node("FusedConv", ["a"], ["f"], domain="com.microsoft"))
    problems = scan_emitted(bad, 17)
    assert len(problems) == 3, problems


def _build_in_process(args: tuple[str, str]) -> str:
    derived, model_path = args
    path, spec = load_or_build(Path(derived), Path(model_path), "abc", ["relu"], "guided", True)
    return json.dumps([str(path), spec.gradients])


def test_cache_builds_once_and_is_keyed(tmp_path: Path) -> None:
    model_path = tmp_path / "model.onnx"
    onnx.save(tiny(), str(model_path))
    derived = tmp_path / "derived"
    path, spec = load_or_build(derived, model_path, "abc", ["relu"], "standard", False)
    assert path.exists() and spec.layers == ("relu",)
    mtime = path.stat().st_mtime_ns
    again, spec2 = load_or_build(derived, model_path, "abc", ["relu"], "standard", False)
    assert again == path and spec2 == spec and path.stat().st_mtime_ns == mtime
    other, _ = load_or_build(derived, model_path, "abc", ["relu"], "guided", False)
    assert other != path
    assert len(list(derived.glob("*.onnx"))) == 2
    assert not list(derived.glob(".*"))  # no temporary files left behind
    assert BUILDER_VERSION


def test_cache_ignores_an_entry_without_its_spec(tmp_path: Path) -> None:
    model_path = tmp_path / "model.onnx"
    onnx.save(tiny(), str(model_path))
    derived = tmp_path / "derived"
    path, _ = load_or_build(derived, model_path, "abc", ["relu"], "standard", False)
    path.with_suffix(".json").unlink()
    path.write_bytes(b"half written")
    path2, spec = load_or_build(derived, model_path, "abc", ["relu"], "standard", False)
    assert path2 == path and spec.layers == ("relu",)
    onnx.checker.check_model(onnx.load(str(path)))


def test_cache_is_safe_under_concurrent_builds(tmp_path: Path) -> None:
    model_path = tmp_path / "model.onnx"
    onnx.save(tiny(), str(model_path))
    derived = tmp_path / "derived"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_build_in_process, [(str(derived), str(model_path))] * 4)
    assert len(set(results)) == 1
    path = Path(json.loads(results[0])[0])
    onnx.checker.check_model(onnx.load(str(path)))
    assert not list(derived.glob(".*"))


def test_keras_style_nhwc_graph_matches_torch() -> None:
    """What tf2onnx emits for a Keras classifier: NHWC input and a Transpose, preprocessing
    arithmetic, a SAME-style stride-2 convolution as an explicit asymmetric Pad, ReduceMean
    global pooling, MatMul + Add, and a final Softmax (the score is its input)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(4, 6)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    f32 = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("Sub", ["image", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["scaled"]),
        helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Pad", ["nchw", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "w"], ["conv"], strides=[2, 2]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("ReduceMean", ["relu", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "keras",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 6])],
        initializer=[
            f32("mean", [0.5, 0.4, 0.3]),
            f32("std", [0.2, 0.25, 0.3]),
            f32("w", w),
            f32("fc", fc),
            f32("bias", bias),
            i64("pads", [0, 0, 0, 0, 0, 0, 1, 1]),
            i64("axes", [2, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    companion, spec = build_checked(model, ["relu"], input_gradient=True)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    seed = np.eye(2, 6, dtype=np.float32)
    outs = run(companion, spec, x, seed)

    xt = torch.from_numpy(x).double().requires_grad_()
    mean, std = torch.tensor([0.5, 0.4, 0.3]).double(), torch.tensor([0.2, 0.25, 0.3]).double()
    nchw = ((xt - mean) / std).permute(0, 3, 1, 2)
    relu = F.relu(F.conv2d(F.pad(nchw, (0, 1, 0, 1)), torch.from_numpy(w).double(), stride=2))
    logits = relu.mean((2, 3)) @ torch.from_numpy(fc).double() + torch.from_numpy(bias).double()
    g_x, g_relu = torch.autograd.grad((logits * torch.from_numpy(seed)).sum(), [xt, relu])
    np.testing.assert_allclose(outs["score"], logits.detach().numpy(), rtol=1e-5, atol=1e-5)
    for ours, ref in ((outs["input_gradient"], g_x), (outs["gradient_0"], g_relu)):
        assert np.abs(ours - ref.numpy()).max() <= 1e-5 * np.abs(ref.numpy()).max()


def _uint8_twin() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """tiny() fed uint8 pixels with its preprocessing ((p / 255 - 0.5) / 0.25) in the graph,
    and the float model that preprocessing feeds."""
    float_model = tiny(head=None)
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    graph = model.graph
    pre = [
        helper.make_node("Cast", ["pixels"], ["pixels_f"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Div", ["pixels_f", "k255"], ["unit"], name="scale"),
        helper.make_node("Sub", ["unit", "half"], ["centred"], name="centre"),
        helper.make_node("Div", ["centred", "quarter"], ["image"], name="normalise"),
    ]
    nodes = [*pre, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    for name, value in (("k255", 255.0), ("half", 0.5), ("quarter", 0.25)):
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 3, 6, 6]))
    return model, float_model


def test_integer_pixels_differentiate_from_the_first_float_tensor() -> None:
    model, float_model = _uint8_twin()
    companion, spec = build_checked(model, ["relu"], input_gradient=True)
    reference, ref_spec = build_checked(float_model, ["relu"], input_gradient=True)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 3, 6, 6)).astype(np.uint8)
    image = ((pixels.astype(np.float32) / 255 - 0.5) / 0.25).astype(np.float32)
    seed = np.eye(2, 5, dtype=np.float32)
    ours = session(companion).run(None, {"pixels": pixels, spec.seed: seed})
    ref = session(reference).run(None, {"image": image, ref_spec.seed: seed})
    # d/d(cast pixels) = d/d(image) / (255 * 0.25): the chain rule through the preprocessing
    np.testing.assert_allclose(ours[-1], ref[-1] / (255 * 0.25), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours[2], ref[2], rtol=1e-5, atol=1e-6)  # the layer gradient
