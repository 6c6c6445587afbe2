"""Session fixtures for the whole-model companion tests."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

from tests.fixtures.torchvision_models import TorchvisionZoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> TorchvisionZoo:
    return TorchvisionZoo(tmp_path_factory.mktemp("torchvision-onnx"))


@pytest.fixture(scope="session")
def error_report() -> Iterator[dict[str, float]]:
    """Worst relative error per (model, exporter, rule); written to $CNNVIS_COMPANION_REPORT."""
    report: dict[str, float] = {}
    yield report
    target = os.environ.get("CNNVIS_COMPANION_REPORT")
    if target:
        with open(target, "w") as f:
            json.dump(dict(sorted(report.items())), f, indent=1)
