"""What can be checked about the container without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = match.group(2)
            stages[current] = [match.group(1)]
        elif current and line.strip() and not line.startswith("#"):
            stages[current].append(line)
    return stages


def test_dockerfile_stages() -> None:
    stages = dockerfile_stages()
    assert {"wheels", "store", "cpu", "gpu"} <= set(stages)
    gpu = "\n".join(stages["gpu"])
    assert stages["gpu"][0].startswith("nvidia/cuda:13.") and "cudnn" in stages["gpu"][0]
    assert "onnxruntime-gpu==1.31.1" in gpu and "pip uninstall -y onnxruntime" in gpu
    for name in ("cpu", "gpu"):
        text = "\n".join(stages[name])
        assert re.search(r"^USER cnnvis", text, re.M), f"{name} runs as root"
        assert "HEALTHCHECK" in text and "/healthz" in text
        assert 'VOLUME ["/store"]' in text
    assert list(stages)[-1] == "gpu"  # the default target


def test_compose_reserves_one_gpu_and_mounts_the_store() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["cnnvis"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "store:/store" in service["volumes"]
    assert service["environment"]["CNNVIS_STORE"] == "/store"
    assert service["ports"] == ["8000:8000"]


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    missing = [n for n in Settings.model_fields if f"`CNNVIS_{n.upper()}`" not in doc]
    assert not missing, f"settings missing from docs/operations.md: {missing}"
