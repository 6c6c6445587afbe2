"""A small torch convnet exported to ONNX, its runner, and a Target over it (32 x 32 input)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.featurevis.model import Preprocess, Target
from service.runtime.runner import ModelRunner

torch = pytest.importorskip("torch")

SIZE = 32
MID = "/2/Relu_output_0"  # after the first conv + ReLU
DEEP = "/6/Relu_output_0"  # after the second conv + ReLU (8 x 8)


def _open(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def small_net() -> Any:
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(12, 5),
    )
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@dataclass
class Small:
    net: Any
    path: Path
    runner: ModelRunner
    target: Target


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    from tests.fixtures.torchvision_models import export_torchscript

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("featurevis")
    net = small_net()
    data = export_torchscript(net, torch.zeros(1, 3, SIZE, SIZE))
    path = root / "small.onnx"
    path.write_bytes(data)
    runner = ModelRunner(path, root / "derived", "small", "input", "logits", _open)
    pre = Preprocess(1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    return Small(net, path, runner, Target(runner, pre, (SIZE, SIZE)))


def random_images(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=(batch, 3, SIZE, SIZE))
