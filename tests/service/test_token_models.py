"""Token models (torchvision ViT and Swin): the CAM family on the token grid, checked against
pytorch-grad-cam, and every method through the HTTP API.

Small instances of torchvision's own ``VisionTransformer`` and ``SwinTransformer`` classes
(the same modules and export path as vit_b_16 / swin_t, fewer and narrower layers) keep the
file within its CPU budget; seeded random weights, the ViT head re-initialised (torchvision
zero-initialises it, which would make every gradient zero). TorchScript exporter, opset 17,
with the MHA fast path off (the exporter has no rule for aten::_native_multi_head_attention).

* Parity: our maps on the ONNX export vs pytorch-grad-cam on the torch module with its
  documented ``reshape_transform`` (ViT: drop the class token, tokens -> (N, C, h, w); Swin:
  (N, H, W, C) -> (N, C, H, W)), on chelsea and coffee: Pearson >= 0.99 under its rendering at
  input size, raw maps at feature size within 1e-4 of the reference's largest magnitude (as
  tests/explain/test_cam_parity.py). That is not circular: the reference never sees our
  graph or our reshaping.
* API: every registered method answers 200 on the ViT (``cam`` a 422 naming the missing
  global-average-pool step: a class-token head has none), the automatic layer is the input of
  the last attention (``encoder.layers[-1].ln_1``, pytorch-grad-cam's recommendation), token
  layers report their grid, tensors inside attention are refused with a reason, and a Swin
  answers 200 for the CAM family and the gradients.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam progress bars
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # ~50 s for the file on one core: exports and two APIs
torchvision = pytest.importorskip("torchvision")
pgc = pytest.importorskip("pytorch_grad_cam")


from models_store.errors import UnsupportedModel  # noqa: E402
from models_store.inspect import summarize  # noqa: E402
from models_store.store import ModelStore  # noqa: E402
from schemas.card import InputSpec, ModelCard  # noqa: E402
from schemas.explain import ExplainRequest  # noqa: E402
from service.explain import run_method  # noqa: E402
from service.explain.layout import CanonicalRunner  # noqa: E402
from service.imaging.render import prepare_map, resize_map  # noqa: E402
from service.runtime.runner import ModelRunner  # noqa: E402
from tests.conftest import png_bytes  # noqa: E402
from tests.fixtures.eigen import orient_reference  # noqa: E402
from tests.fixtures.grad_cam import pgc_maps  # noqa: E402
from tests.fixtures.torchvision_models import export_torchscript  # noqa: E402

SIZE = 64
CLASSES = 10
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
METHODS = ExplainRequest.model_fields["method"].annotation.__args__  # type: ignore[union-attr]
OPTIONS = {
    "smoothgrad": {"samples": 2},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"window": 16, "stride": 16},
    "scorecam": {"max_channels": 8},
    "ablationcam": {"max_channels": 8},
}
VIT_LAYER = "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0"
VIT_SOFTMAX = "/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0"
GRADIENT_CAMS = {
    "gradcam": pgc.GradCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam_elementwise": pgc.GradCAMElementWise,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
}


def vit_reshape(t: Any) -> Any:  # pytorch-grad-cam's documented ViT recipe
    grid = round((t.shape[1] - 1) ** 0.5)
    return t[:, 1:, :].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)


def swin_reshape(t: Any) -> Any:  # torchvision Swin keeps (N, H, W, C) inside `features`
    return t.permute(0, 3, 1, 2)


@dataclass
class Token:
    name: str
    net: Any
    data: bytes
    layer: str  # the ONNX tensor pytorch-grad-cam's module output equals
    module: Any
    reshape: Callable[[Any], Any]
    x: np.ndarray
    targets: list[int]
    runner: CanonicalRunner


def photos(size: int = SIZE) -> np.ndarray:
    from PIL import Image
    from skimage import data

    rows = []
    for img in (data.chelsea(), data.coffee()):
        pil = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
        rows.append(((np.asarray(pil, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(rows))


def open_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def small_vit() -> Any:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        image_size=SIZE,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=CLASSES,
    ).eval()
    torch.nn.init.normal_(net.heads.head.weight, std=0.05)
    return net


def small_swin() -> Any:
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(
        patch_size=[4, 4],
        embed_dim=32,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=[4, 4],
        num_classes=CLASSES,
    ).eval()


def _build(name: str, root: Path) -> Token:
    torch.set_num_threads(1)
    torch.backends.mha.set_fastpath_enabled(False)
    if name == "vit":
        net = small_vit()
        module, layer, reshape = net.encoder.layers[-1].ln_1, VIT_LAYER, vit_reshape
    else:
        net = small_swin()
        # features[-1] is the last stage; its output is the last block's residual sum
        module, reshape = net.features, swin_reshape
        layer = "/features/features.3/features.3.1/Add_1_output_0"
    x = photos()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        data = export_torchscript(net, torch.from_numpy(x))
    model = onnx.load_from_string(data)
    assert any(layer in n.output for n in model.graph.node), layer
    path = root / f"{name}.onnx"
    path.write_bytes(data)
    with torch.no_grad():
        targets = [int(t) for t in net(torch.from_numpy(x)).argmax(1)]
    summary = summarize(model, "input", "logits")
    layouts = {layer.name: layer.layout for layer in summary.layers if layer.grid is None}
    inner = ModelRunner(path, root / f"derived-{name}", f"sha-{name}", "input", "logits",
                        open_session)  # fmt: skip
    runner = CanonicalRunner(inner, "NCHW", layouts, summary.token_grids())
    return Token(name, net, data, layer, module, reshape, x, targets, runner)


_BUILT: dict[str, Token] = {}


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Token]:
    root = tmp_path_factory.mktemp("token-models")

    def get(name: str) -> Token:
        if name not in _BUILT:
            _BUILT[name] = _build(name, root)
        return _BUILT[name]

    return get


# -- parity with pytorch-grad-cam -------------------------------------------------------------


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64) - a.mean()
    b = b.ravel().astype(np.float64) - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / denom)


def reference(cls: Any, t: Token) -> tuple[np.ndarray, np.ndarray]:
    """(rendered maps at input size, raw maps at feature size) from pytorch-grad-cam."""
    return pgc_maps(cls, t.net, t.module, t.x, t.targets, reshape_transform=t.reshape)


RESULTS: dict[tuple[str, str], tuple[float, float]] = {}


def check(method: str, t: Token, cls: Any, options: dict[str, Any] | None = None) -> None:
    out = run_method(method, t.runner, t.x, t.targets, [t.layer], options or {})
    ref_rendered, ref_raw = reference(cls, t)
    ours = out.maps[0]
    assert ours.shape == ref_raw.shape
    if method in ("eigencam", "eigengradcam"):  # the component's sign is a convention
        ref_raw, ref_rendered = orient_reference(ours, ref_raw, ref_rendered)
    scale = np.abs(ref_raw).max() + 1e-12
    rel = float(np.abs(ours - ref_raw).max() / scale)
    rendered = [resize_map(prepare_map(m, relu=True, normalize_mode="minmax"), (SIZE, SIZE))
                for m in ours]  # fmt: skip
    worst = min(pearson(rendered[r], ref_rendered[r]) for r in range(len(ours)))
    RESULTS[(method, t.name)] = (worst, rel)
    print(f"\n{method:20s} {t.name:5s} pearson {worst:.6f} feature rel err {rel:.2e}")
    assert worst >= 0.99, f"{method} on {t.name}: Pearson {worst:.4f} < 0.99"
    assert rel <= 1e-4, f"{method} on {t.name}: feature-size relative error {rel:.2e}"


@pytest.mark.parametrize("method", list(GRADIENT_CAMS))
def test_vit_token_grid_matches_pytorch_grad_cam(token: Callable[[str], Token], method: str):
    t = token("vit")
    assert t.runner.token_grids[t.layer].layout == "N(1+8x8)C"
    check(method, t, GRADIENT_CAMS[method])


def test_vit_scorecam_matches_pytorch_grad_cam(token: Callable[[str], Token]) -> None:
    check("scorecam", token("vit"), pgc.ScoreCAM, {"batch_size": 64})


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "eigencam"])
def test_swin_channels_last_stage_matches_pytorch_grad_cam(
    token: Callable[[str], Token], method: str
) -> None:
    t = token("swin")
    assert t.runner.layer_layout(t.layer) == "NHWC"
    check(method, t, GRADIENT_CAMS[method])


def test_vit_automatic_layer_and_refusals(token: Callable[[str], Token]) -> None:
    t = token("vit")
    summary = summarize(onnx.load_from_string(t.data), "input", "logits")
    assert summary.default_layer == VIT_LAYER  # encoder.layers[-1].ln_1, as pgc recommends
    grids = summary.token_grids()
    last = "/encoder/ln/LayerNormalization_output_0"
    assert grids[last].prefix == 1 and (grids[last].height, grids[last].width) == (8, 8)
    # after the last attention only the class token reaches the score: Grad-CAM there would
    # be 0, which is refused with the reason; Eigen-CAM (no gradient) is defined there
    with pytest.raises(UnsupportedModel, match="zero gradient"):
        run_method("gradcam", t.runner, t.x, t.targets, [last], {})
    out = run_method("eigencam", t.runner, t.x, t.targets, [last], {})
    assert out.maps[0].shape == (2, 8, 8) and np.abs(out.maps[0]).max() > 0
    assert any("Softmax" in name for name in summary.refused)


# -- the HTTP API -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, token: Callable[[str], Token]
) -> Iterator[TestClient]:
    from service.app import create_app
    from service.settings import Settings

    root: Path = tmp_path_factory.mktemp("token-api")
    store = ModelStore(root)
    spec = InputSpec(height=SIZE, width=SIZE, mean=MEAN.tolist(), std=STD.tolist())
    for name in ("vit", "swin"):
        store.add(token(name).data, ModelCard(name=name, input=spec))
    with TestClient(create_app(Settings(store=root))) as client:
        yield client


def _image(seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    return base64.b64encode(png_bytes(pixels)).decode()


def test_vit_layers_list_token_grids(api: TestClient) -> None:
    listed = api.get("/v1/models/vit/layers").json()
    assert listed["default"] == VIT_LAYER
    layouts = {layer["name"]: layer["layout"] for layer in listed["layers"]}
    assert layouts[VIT_LAYER] == "N(1+8x8)C"
    assert not any("Softmax" in name for name in layouts)  # attention internals: no layers


@pytest.mark.parametrize("method", METHODS)
def test_vit_every_method_through_the_api(api: TestClient, method: str) -> None:
    body = {
        "images": [_image(0), _image(1)],
        "method": method,
        "options": OPTIONS.get(method, {}),
        "outputs": ["heatmap", "array", "stats"],
    }
    response = api.post("/v1/models/vit/explain", json=body)
    if method == "cam":  # a class-token head has no global average pool to read CAM from
        assert response.status_code == 422, response.text[:300]
        problem = response.json()
        assert VIT_LAYER in problem["detail"] and "gradcam" in problem["detail"]
        return
    assert response.status_code == 200, (method, response.text[:500])
    done = response.json()
    assert done["layers"] == [VIT_LAYER] or get_kind(method) != "cam"
    for result in done["results"]:
        assert result["array"]["shape"] == [SIZE, SIZE]
        array = np.frombuffer(base64.b64decode(result["array"]["data"]), "<f4")
        assert np.isfinite(array).all()


def get_kind(method: str) -> str:
    from service.explain import get_method

    return get_method(method).kind


def test_vit_refused_layers_name_the_reason(api: TestClient) -> None:
    listed = api.get("/v1/models/vit/layers").json()
    names = [layer["name"] for layer in listed["layers"]]
    inside = VIT_SOFTMAX
    tokens_first = "/encoder/layers/encoder_layer_1/self_attention/Transpose_output_0"
    for layer in (inside, tokens_first):
        assert layer not in names
        response = api.post(
            "/v1/models/vit/explain",
            json={"images": [_image(2)], "method": "gradcam", "layer": layer},
        )
        assert response.status_code == 422, response.text[:300]
        problem = response.json()
        assert layer in problem["detail"] and "not a spatial map" in problem["detail"]
        assert response.headers["content-type"].startswith("application/problem+json")
    past = "/encoder/ln/LayerNormalization_output_0"  # after the last attention
    assert past in names
    response = api.post(
        "/v1/models/vit/explain",
        json={"images": [_image(2)], "method": "layercam", "layer": past},
    )
    assert response.status_code == 422, response.text[:300]
    assert past in response.json()["detail"] and "zero gradient" in response.json()["detail"]


def test_vit_activation_tiles_on_the_grid(api: TestClient) -> None:
    body = {"images": [_image(3)], "layers": [VIT_LAYER], "channels": {"top_k": 4}}
    response = api.post("/v1/models/vit/activations", json=body)
    assert response.status_code == 200, response.text[:300]
    (result,) = response.json()["results"]
    assert result["shape"] == [64, 8, 8] and result["tiles"]
    bad = api.post(
        "/v1/models/vit/activations",
        json={
            **body,
            "layers": ["/encoder/layers/encoder_layer_1/self_attention/Softmax_output_0"],
        },
    )
    assert bad.status_code == 422 and "not a spatial map" in bad.json()["detail"]


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcampp", "layercam", "eigencam", "saliency", "guided_gradcam"]
)
def test_swin_smoke(api: TestClient, method: str) -> None:
    body = {"images": [_image(4)], "method": method, "outputs": ["array"]}
    response = api.post("/v1/models/swin/explain", json=body)
    assert response.status_code == 200, response.text[:300]
    assert response.json()["results"][0]["array"]["shape"] == [SIZE, SIZE]


def test_cam_on_a_pooled_token_grid(tmp_path: Path) -> None:
    """A token model without a class token whose head averages the tokens (ReduceMean over
    axis 1 -> Gemm): ``cam`` reads the classifier there; the reference is the tokens
    (onnx's reference evaluator) reshaped by hand and weighted by the Gemm's rows."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    cw = rng.normal(size=(8, 3, 4, 4)).astype(np.float32)
    fw = rng.normal(size=(CLASSES, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "cw"], ["patches"], strides=[4, 4]),
        helper.make_node("Reshape", ["patches", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["tokens"], ["act"]),
        helper.make_node("ReduceMean", ["act"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Gemm", ["pooled", "fw"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "gap-tokens",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [
            numpy_helper.from_array(cw, "cw"),
            numpy_helper.from_array(fw, "fw"),
            numpy_helper.from_array(np.array([0, 8, 12], np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "gap.onnx"
    path.write_bytes(model.SerializeToString())
    summary = summarize(model, "input", "logits")
    assert summary.default_layer == "act"
    grid = summary.token_grids()["act"]
    assert (grid.prefix, grid.height, grid.width, grid.suffix) == (0, 4, 3, 0)  # 16x12 / 4
    inner = ModelRunner(path, tmp_path / "derived", "sha-gap", "input", "logits", open_session)
    runner = CanonicalRunner(inner, "NCHW", {}, summary.token_grids())
    x = rng.normal(size=(2, 3, 16, 12)).astype(np.float32)
    out = run_method("cam", runner, x, [1, 4], ["act"], {})
    (tokens,) = ReferenceEvaluator(forward_tokens(model)).run(None, {"input": x})
    grid_hwc = tokens.reshape(2, 4, 3, 8)  # row-major patches: (h, w, C)
    expected = np.einsum("rhwc,rc->rhw", grid_hwc.astype(np.float64), fw[[1, 4]])
    np.testing.assert_allclose(out.maps[0], expected, rtol=1e-5, atol=1e-5)


def forward_tokens(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    copy.graph.output.extend([onnx.helper.make_tensor_value_info("act", 1, None)])
    return copy
