"""Fixtures for the method tests: four torchvision architectures with seeded random weights,
exported once per session (TorchScript exporter, opset 17, dynamic batch), two real photos,
and runners over the exported graphs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.fixtures.torchvision_models import export_torchscript

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

SIZE = 112  # small inputs keep the suite inside its CPU budget
os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam progress bars
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def cpu_session(level: ort.GraphOptimizationLevel) -> Callable[[Path], ort.InferenceSession]:
    cache: dict[Path, ort.InferenceSession] = {}

    def open_session(path: Path) -> ort.InferenceSession:
        if path not in cache:
            options = ort.SessionOptions()
            options.graph_optimization_level = level
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            cache[path] = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return cache[path]

    return open_session


# The service's level (service/runtime/sessions.py leaves onnxruntime's default,
# ORT_ENABLE_ALL): parity is checked on the graphs as the service runs them.
open_cpu_session = cpu_session(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)


def photos(size: int = SIZE) -> np.ndarray:
    """chelsea and coffee, resized to size x size, ImageNet-normalised, NCHW float32."""
    from PIL import Image
    from skimage import data

    rows = []
    for img in (data.chelsea(), data.coffee()):
        pil = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR)
        arr = (np.asarray(pil, dtype=np.float32) / 255.0 - MEAN) / STD
        rows.append(arr.transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(rows))


@dataclass
class Zoo:
    name: str
    net: Any  # torch module, eval mode, no in-place ReLU
    path: Path
    layer: str  # ONNX tensor equal to `module`'s output
    module: Any  # the torch module pytorch-grad-cam / captum hook
    x: np.ndarray
    targets: list[int]

    def runner(self, derived: Path, open_session: Callable[[Path], Any] = open_cpu_session) -> Any:
        from service.runtime.runner import ModelRunner

        return ModelRunner(self.path, derived, f"sha-{self.name}", "input", "logits", open_session)


# (constructor, torch module whose output is the CAM layer, ONNX tensor name)
ARCHS: dict[str, tuple[str, Callable[[Any], Any], str]] = {
    "resnet18": ("resnet18", lambda n: n.layer4, "/layer4/layer4.1/relu_1/Relu_output_0"),
    "mobilenet_v2": (
        "mobilenet_v2",
        lambda n: n.features,
        "/features/features.18/features.18.2/Clip_output_0",
    ),
    # torchvision's DenseNet applies F.relu(features, inplace=True) after `features`, which
    # rewrites the activation pytorch-grad-cam stored from its hook; the same network
    # rebuilt as features + ReLU module + pool + classifier has a hookable post-ReLU tensor.
    "densenet121": ("densenet121", lambda n: n[0], "/0/relu_final/Relu_output_0"),
    "squeezenet1_1": (
        "squeezenet1_1",
        lambda n: n.features,
        "/features/features.12/Concat_output_0",
    ),
}


def _no_inplace(net: Any) -> None:
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False


def build_zoo(name: str, root: Path) -> Zoo:
    ctor, module_of, layer = ARCHS[name]
    torch.manual_seed(0)
    net = getattr(torchvision.models, ctor)(weights=None).eval()
    if name == "densenet121":
        net.features.add_module("relu_final", torch.nn.ReLU())
        nn = torch.nn
        net = nn.Sequential(
            net.features, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(1), net.classifier
        ).eval()
    _no_inplace(net)
    x = photos()
    data = export_torchscript(net, torch.from_numpy(x))
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    model = onnx.load_from_string(data)
    assert any(layer in n.output for n in model.graph.node), f"{layer} not in {name}"
    path = root / f"{name}.onnx"
    path.write_bytes(data)
    return Zoo(name, net, path, layer, module_of(net), x, [int(t) for t in logits.argmax(1)])


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("explain-zoo")


_ZOO: dict[str, Zoo] = {}


@pytest.fixture(scope="session")
def zoo(zoo_dir: Path) -> Callable[[str], Zoo]:
    """zoo(name) -> the exported architecture (built on first use, once per session)."""

    def get(name: str) -> Zoo:
        if name not in _ZOO:
            _ZOO[name] = build_zoo(name, zoo_dir)
        return _ZOO[name]

    return get


_RUNNERS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def runner_for(zoo: Callable[[str], Zoo], zoo_dir: Path) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        if name not in _RUNNERS:
            _RUNNERS[name] = zoo(name).runner(zoo_dir / f"derived-{name}")
        return _RUNNERS[name]

    return get
